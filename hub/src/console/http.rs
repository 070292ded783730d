//! The console's HTTP side: routes, sessions from cookies, login and logout, the response headers every page gets,
//! and the listener (plain on loopback, TLS through tokio-rustls elsewhere).
//!
//! Pages render on the blocking pool (they read the store); a request without a live session is sent to the login
//! page, never shown data.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, Path, Query, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use serde::Deserialize;

use super::cache::{Built, Cached};
use super::users::{Session, Sessions};
use super::{ConsoleConfig, ConsoleError, TlsFiles, render};
use crate::admin::Handler;
use crate::service::Hub;

/// The session cookie's name.
pub const COOKIE: &str = "outpost_session";

/// The login form's cookie: a random value the form repeats in a hidden field (a double submit). Being
/// `SameSite=Strict`, a login posted from another site arrives without it and is refused, so no site can log a
/// browser in under someone else's name.
pub const LOGIN_COOKIE: &str = "outpost_login";

/// What every request handler shares.
pub struct State {
    pub(super) config: ConsoleConfig,
    pub(super) hub: Arc<Hub>,
    pub(super) handler: Option<Arc<dyn Handler<Hub>>>,
    pub(super) after: Arc<dyn Fn() + Send + Sync>,
    pub(super) sessions: Sessions,
    pub(super) devices: super::index::LiveIndex,
    pub(super) releases: Cached<Vec<super::pages::ReleaseView>>,
    pub(super) history: render::History,
    /// Password checks running at once (each Argon2id check takes its memory cost: a flood of logins must not).
    logins: tokio::sync::Semaphore,
    /// Failed logins per user name.
    throttle: super::throttle::Throttle,
    secure: bool,
}

/// Why a page could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// What the URL names does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The request was malformed.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Reading the hub's state failed.
    #[error("the hub could not answer: {0}")]
    Hub(String),
}

impl PageError {
    fn status(&self) -> StatusCode {
        match self {
            PageError::NotFound(_) => StatusCode::NOT_FOUND,
            PageError::BadRequest(_) => StatusCode::BAD_REQUEST,
            PageError::Hub(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Any store or registry error, as the page says it.
pub fn hub_err(e: impl std::fmt::Display) -> PageError {
    PageError::Hub(e.to_string())
}

impl State {
    pub(super) fn new(
        config: ConsoleConfig,
        hub: Arc<Hub>,
        handler: Option<Arc<dyn Handler<Hub>>>,
        after: Arc<dyn Fn() + Send + Sync>,
        secure: bool,
    ) -> State {
        State {
            sessions: Sessions::new(config.sessions),
            devices: super::index::LiveIndex::default(),
            releases: Cached::new("releases", super::pages::build_releases),
            history: render::History::new(config.max_samples),
            logins: tokio::sync::Semaphore::new(config.max_concurrent_logins.max(1)),
            throttle: super::throttle::Throttle::new(config.login_throttle),
            config,
            hub,
            handler,
            after,
            secure,
        }
    }

    /// The device index, brought up to date (see `index`). Call from the blocking pool.
    pub fn index(&self) -> Result<std::sync::RwLockReadGuard<'_, Option<super::index::Current>>, PageError> {
        self.devices.read(&self.hub)
    }

    /// Every release with its status (see `cache`). Call from the blocking pool.
    pub fn releases(&self) -> Result<Arc<Built<Vec<super::pages::ReleaseView>>>, PageError> {
        self.releases.get(&self.hub, self.ages())
    }

    fn ages(&self) -> super::cache::Ages {
        super::cache::Ages { fresh: self.config.cache_max_age, stale: self.config.cache_stale_age }
    }

    /// Forgets the releases the pages cached (after an action; the device index follows the store's writes).
    pub fn invalidate(&self) {
        self.releases.invalidate();
    }

    /// The attribute every cookie of a console served over TLS carries.
    fn secure_attr(&self) -> &'static str {
        if self.secure { "; Secure" } else { "" }
    }

    /// The live session the request's cookie names.
    pub fn session(&self, headers: &HeaderMap) -> Option<Session> {
        let token = cookie(headers, COOKIE)?;
        let session = self.sessions.get(&token, self.hub.clock().wall())?;
        // A removed user, or one whose credential was re-issued, is logged out.
        let user = self.hub.store().ok()?.registry().console_user(&session.user).ok()??;
        if user.credential() != session.credential {
            self.sessions.close(&token);
            return None;
        }
        Some(session)
    }

    /// Renders a page for a logged-in user on the blocking pool, inside the layout, timed, refreshing itself in a
    /// browser with JavaScript every `live_refresh`.
    async fn page(
        self: Arc<Self>,
        headers: &HeaderMap,
        title: &'static str,
        body: impl FnOnce(&State, &Session) -> Result<Markup, PageError> + Send + 'static,
    ) -> Response {
        let Some(session) = self.session(headers) else { return Redirect::to("/login").into_response() };
        let st = self.clone();
        let rendered = tokio::task::spawn_blocking(move || {
            let started = st.hub.clock().monotonic();
            let body = body(&st, &session);
            let took = st.hub.clock().monotonic().saturating_sub(started);
            (body, took, session)
        })
        .await;
        match rendered {
            Ok((Ok(body), took, session)) => {
                let live = Some(self.config.live_refresh.as_secs().max(1));
                page_response(StatusCode::OK, render::layout_live(title, Some(&session), took, live, body))
            }
            Ok((Err(e), _, session)) => error_page(e.status(), Some(&session), &e.to_string()),
            Err(e) => error_page(StatusCode::INTERNAL_SERVER_ERROR, None, &format!("the page failed: {e}")),
        }
    }
}

/// A cookie's value from the request.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then(|| v.to_owned())
    })
}

/// The headers every console response carries: no caching, no framing, no scripts or styles but our own.
fn harden(mut r: Response) -> Response {
    let h = r.headers_mut();
    let set = |h: &mut HeaderMap, k: header::HeaderName, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self' data:; \
         form-action 'self'; \
         frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, header::CACHE_CONTROL, "no-store");
    }
    r
}

/// An HTML response.
pub fn page_response(status: StatusCode, markup: Markup) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], markup.into_string()).into_response()
}

/// A page saying what went wrong, with `status`.
pub fn error_page(status: StatusCode, session: Option<&Session>, message: &str) -> Response {
    let body = html! { h1 { (status.canonical_reason().unwrap_or("Error")) } p.error { (message) } };
    page_response(status, render::layout("Error", session, std::time::Duration::ZERO, body))
}

/// Loads the certificate chain and key for TLS.
pub fn tls_acceptor(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor, ConsoleError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let err = |path: &std::path::Path, problem: String| ConsoleError::Tls { path: path.to_owned(), problem };
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| err(&files.cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(&files.cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(err(&files.cert, "no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| err(&files.key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(&files.cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| err(&files.key, e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// TLS connections from a TCP listener; a failed or slow handshake drops that connection only.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    timeout: std::time::Duration,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (tcp, addr) = match self.tcp.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "console: accept");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            match tokio::time::timeout(self.timeout, self.acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => return (tls, addr),
                Ok(Err(e)) => tracing::debug!(%addr, error = %e, "console: TLS handshake failed"),
                Err(_) => tracing::debug!(%addr, "console: TLS handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// Serves the console until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, tls: Option<tokio_rustls::TlsAcceptor>, state: Arc<State>) {
    let timeout = state.config.tls_handshake_timeout;
    let app = router(state);
    let served = match tls {
        Some(acceptor) => axum::serve(TlsListener { tcp: listener, acceptor, timeout }, app).await,
        None => axum::serve(listener, app).await,
    };
    if let Err(e) = served {
        tracing::error!(error = %e, "console");
    }
}

fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/releases") }))
        .route("/assets/console.css", get(css))
        .route("/assets/live.js", get(js))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/releases", get(releases))
        .route("/devices", get(devices))
        .route("/devices/{key}", get(device))
        .route("/sites", get(sites))
        .route("/packages", get(packages))
        .route("/packages/{digest}", get(package))
        .route("/audit", get(audit))
        .route("/releases/{id}/{action}", post(super::actions::release))
        .route("/devices/{key}/revoke", post(super::actions::revoke_device))
        .fallback(|| async { error_page(StatusCode::NOT_FOUND, None, "no such page") })
        .layer(axum::middleware::map_response(|r: Response| async move { harden(r) }))
        .with_state(state)
}

async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "max-age=3600")],
        include_str!("live.js"),
    )
        .into_response()
}

async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "max-age=3600")],
        include_str!("console.css"),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    user: String,
    password: String,
    /// The login form's token, repeating [`LOGIN_COOKIE`].
    #[serde(default)]
    login_csrf: String,
}

async fn login_form(AxState(st): AxState<Arc<State>>, headers: HeaderMap) -> Response {
    if st.session(&headers).is_some() {
        return Redirect::to("/releases").into_response();
    }
    login_page(&st, StatusCode::OK, None)
}

/// The login page with a fresh form token (and its cookie).
fn login_page(st: &State, status: StatusCode, error: Option<&str>) -> Response {
    let token = super::users::hex32(&mut **st.hub.rng());
    let mut r = page_response(status, render::login(error, &token));
    let secure = st.secure_attr();
    add_cookie(
        &mut r,
        &format!("{LOGIN_COOKIE}={token}; Path=/login; HttpOnly; SameSite=Strict; Max-Age=3600{secure}"),
    );
    r
}

/// Adds a `Set-Cookie` header to `r` (a value that is not a valid header is left out).
fn add_cookie(r: &mut Response, cookie: &str) {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

async fn login(AxState(st): AxState<Arc<State>>, headers: HeaderMap, Form(form): Form<LoginForm>) -> Response {
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty()
        || aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_bytes(), form.login_csrf.as_bytes()).is_err()
    {
        tracing::warn!("console: refused a login without its form's token");
        let msg = "This login form expired or was posted from another site: log in again here.";
        return login_page(&st, StatusCode::FORBIDDEN, Some(msg));
    }
    if let Err(wait) = st.throttle.check(&form.user, st.hub.clock().wall()) {
        tracing::warn!(user = %form.user, wait, "console: a login refused while throttled");
        let msg = format!("Too many failed logins for this name: try again in {wait} s.");
        let mut r = login_page(&st, StatusCode::TOO_MANY_REQUESTS, Some(&msg));
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait));
        return r;
    }
    let Ok(_permit) = st.logins.acquire().await else {
        return error_page(StatusCode::SERVICE_UNAVAILABLE, None, "the console is shutting down");
    };
    let (s, name) = (st.clone(), form.user.clone());
    let checked = tokio::task::spawn_blocking(move || -> Result<Option<super::User>, PageError> {
        let store = s.hub.store().map_err(hub_err)?;
        let Some(user) = store.registry().console_user(&form.user).map_err(hub_err)? else { return Ok(None) };
        Ok(user.verify(&form.password).map_err(hub_err)?.then_some(user))
    })
    .await;
    let user = match checked {
        Ok(Ok(Some(user))) => user,
        Ok(Ok(None)) => {
            tracing::warn!(user = %name, "console: a login failed");
            st.throttle.failed(&name, st.hub.clock().wall());
            return login_page(&st, StatusCode::UNAUTHORIZED, Some("Wrong user name or password."));
        }
        Ok(Err(e)) => return error_page(e.status(), None, &e.to_string()),
        Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, None, &e.to_string()),
    };
    st.throttle.succeeded(&name);
    let (token, session) = st.sessions.open(&user, st.hub.clock().wall(), &mut **st.hub.rng());
    tracing::info!(user = %session.user, role = session.role.as_str(), "console: {} logged in", session.user);
    let (secure, ttl) = (st.secure_attr(), st.config.sessions.ttl_secs);
    let mut r = Redirect::to("/releases").into_response();
    add_cookie(&mut r, &format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={ttl}{secure}"));
    // The form's token is spent.
    add_cookie(&mut r, &format!("{LOGIN_COOKIE}=; Path=/login; Max-Age=0"));
    r
}

/// A state-changing form's CSRF field.
#[derive(Debug, Deserialize)]
pub struct CsrfOnly {
    /// The session's CSRF token.
    #[serde(default)]
    pub csrf: String,
}

async fn logout(AxState(st): AxState<Arc<State>>, headers: HeaderMap, Form(form): Form<CsrfOnly>) -> Response {
    if let (Some(session), Some(token)) = (st.session(&headers), cookie(&headers, COOKIE)) {
        if !session.csrf_matches(&form.csrf) {
            return error_page(
                StatusCode::FORBIDDEN,
                Some(&session),
                "refused: the form's CSRF token is missing or wrong",
            );
        }
        st.sessions.close(&token);
    }
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_static("outpost_session=; Path=/; Max-Age=0"));
    r
}

async fn releases(AxState(st): AxState<Arc<State>>, headers: HeaderMap) -> Response {
    st.page(&headers, "Releases", super::pages::releases).await
}

async fn devices(
    AxState(st): AxState<Arc<State>>,
    headers: HeaderMap,
    Query(q): Query<super::devices::DeviceQuery>,
) -> Response {
    st.page(&headers, "Devices", move |st, s| super::devices::list(st, s, &q)).await
}

async fn device(AxState(st): AxState<Arc<State>>, headers: HeaderMap, Path(key): Path<String>) -> Response {
    st.page(&headers, "Device", move |st, s| super::devices::page(st, s, &key)).await
}

async fn sites(AxState(st): AxState<Arc<State>>, headers: HeaderMap) -> Response {
    st.page(&headers, "Sites", super::pages::sites).await
}

async fn packages(AxState(st): AxState<Arc<State>>, headers: HeaderMap) -> Response {
    st.page(&headers, "Packages", super::packages::list).await
}

async fn package(AxState(st): AxState<Arc<State>>, headers: HeaderMap, Path(d): Path<String>) -> Response {
    st.page(&headers, "Package", move |st, s| super::packages::page(st, s, &d)).await
}

#[derive(Debug, Deserialize)]
pub(super) struct PageQuery {
    #[serde(default)]
    pub(super) page: Option<usize>,
}

async fn audit(AxState(st): AxState<Arc<State>>, headers: HeaderMap, Query(q): Query<PageQuery>) -> Response {
    st.page(&headers, "Audit log", move |st, s| super::pages::audit(st, s, q.page.unwrap_or(1))).await
}
