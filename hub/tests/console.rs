//! The web console over HTTP against a serving hub with a staged release: every page needs a session, renders for a
//! viewer, escapes what the store holds; an operator's pause and revoke change the hub's state and land in the
//! audit log under their name; a viewer's, or a form without its CSRF token, is refused; a clear-text console on a
//! non-loopback address is refused before it binds.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use outpost_hub::clock::{SystemClock, SystemRng};
use outpost_hub::console::{ConsoleConfig, ConsoleError};
use outpost_hub::service;
use outpost_shared::testkit::AffineManifest;
use support::console::{Reply, ServedConsole, post_login, request};
use support::{TestHub, publish_on_stable};

// The CLI's own command handlers, so the console's actions run exactly what `outpost-hub serve` runs.
#[allow(dead_code, unused_imports)]
#[path = "../src/cli/mod.rs"]
mod cli;

/// A serving hub with release `r1` of `affine@1.0.0` running on three devices, an operator `ana` and a viewer
/// `vic`, and its console on a loopback port.
struct Served {
    hub: TestHub,
    served: ServedConsole,
    passwords: std::collections::BTreeMap<&'static str, String>,
    digest: String,
}

impl Served {
    fn start() -> Served {
        Served::start_with(|_, _| {})
    }

    /// [`Served::start`] with the console's configuration changed by `adjust` (given the hub) first.
    fn start_with(adjust: impl FnOnce(&TestHub, &mut ConsoleConfig)) -> Served {
        let hub = TestHub::new();
        let (model, manifest) = hub.write_affine(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0));
        let digest = hub.ok(&["package", "add", model.to_str().unwrap(), "--manifest", manifest.to_str().unwrap()]);
        publish_on_stable(&hub, "affine@1.0.0");
        let plan = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/plans/canary.toml");
        assert_eq!(hub.ok(&["release", "start", "affine@1.0.0", "--plan", plan]).trim(), "r1");
        let mut passwords = std::collections::BTreeMap::new();
        for (name, role) in [("ana", "operator"), ("vic", "viewer")] {
            let out = hub.ok(&["console", "user", "add", name, "--role", role]);
            passwords.insert(name, out.trim().to_owned());
        }
        let served = support::console::serve_with(&hub, Arc::new(cli::Commands), |c| adjust(&hub, c));
        Served { hub, served, passwords, digest: digest.trim().to_owned() }
    }

    /// Logs `user` in; returns the session cookie and the session's CSRF token.
    fn login(&self, user: &str) -> (String, String) {
        let cookie = support::console::login(self.served.addr, user, &self.passwords[user]);
        let page = self.send("GET", "/releases", Some(&cookie), None);
        let csrf = page.body.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
        (cookie, csrf)
    }

    fn send(&self, method: &str, path: &str, cookie: Option<&str>, form: Option<&str>) -> Reply {
        request(self.served.addr, method, path, cookie, form)
    }

    fn paused(&self) -> bool {
        let reg = self.served.hub.store().unwrap().registry();
        outpost_hub::rollouts::get(reg, "r1").unwrap().rollout.paused
    }

    fn audit(&self) -> String {
        self.hub.ok(&["audit", "show"])
    }
}

#[test]
fn a_page_without_a_session_sends_the_browser_to_the_login_page() {
    let s = Served::start();
    for path in ["/releases", "/devices", "/sites", "/packages", "/audit", &format!("/devices/{}", "11".repeat(32))] {
        let r = s.send("GET", path, None, None);
        assert_eq!(r.status, 303, "{path}");
        assert_eq!(r.header("location").as_deref(), Some("/login"), "{path}");
    }
    let r = s.send("GET", "/releases", Some("outpost_session=forged"), None);
    assert_eq!(r.status, 303, "a made-up session is no session");
}

#[test]
fn a_wrong_password_is_refused() {
    let s = Served::start();
    let r = post_login(s.served.addr, "ana", "not-it");
    assert_eq!(r.status, 401);
    assert!(!r.header("set-cookie").unwrap_or_default().contains("outpost_session"), "no session");
    let r = post_login(s.served.addr, "nobody", "x");
    assert_eq!(r.status, 401);
}

#[test]
fn a_login_posted_without_its_forms_token_is_refused() {
    let s = Served::start();
    // Another site's form: the right password, but no login cookie (SameSite=Strict keeps it home) and no token.
    let forged = format!("user=ana&password={}", s.passwords["ana"]);
    let r = s.send("POST", "/login", None, Some(&forged));
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(!r.header("set-cookie").unwrap_or_default().contains("outpost_session"), "no session");
    // A token that does not match the cookie is refused too.
    let r = s.send("POST", "/login", Some("outpost_login=aaaa"), Some(&format!("{forged}&login_csrf=bbbb")));
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(post_login(s.served.addr, "ana", &s.passwords["ana"]).status, 303, "the real form logs in");
}

#[test]
fn guessing_a_password_is_throttled_per_user_name() {
    let s = Served::start_with(|_, c| {
        c.login_throttle.free_failures = 3;
        c.login_throttle.first_cooldown_secs = 60;
    });
    for _ in 0..3 {
        assert_eq!(post_login(s.served.addr, "ana", "guess").status, 401);
    }
    let r = post_login(s.served.addr, "ana", &s.passwords["ana"]);
    assert_eq!(r.status, 429, "even the right password waits out the cool-down: {}", r.body);
    assert!(r.header("retry-after").is_some_and(|w| w.parse::<u64>().is_ok_and(|w| w > 0 && w <= 60)));
    assert!(r.body.contains("Too many failed logins"), "{}", r.body);
    assert_eq!(post_login(s.served.addr, "vic", &s.passwords["vic"]).status, 303, "another name logs in");
}

#[test]
fn every_page_renders_for_a_viewer_with_the_hubs_data() {
    let s = Served::start();
    let (cookie, _) = s.login("vic");
    let get = |path: &str| {
        let r = s.send("GET", path, Some(&cookie), None);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert!(r.header("content-security-policy").is_some_and(|c| c.contains("default-src 'none'")), "{path}");
        r.body
    };
    let releases = get("/releases");
    assert!(releases.contains("r1") && releases.contains("affine@1.0.0") && releases.contains("<svg class=\"bar\""));
    assert!(releases.contains("need an operator"), "a viewer is told, and offered no action form");
    assert!(!releases.contains("/releases/r1/pause"));
    assert!(releases.contains("offline targets key"), "the page says approving stays on the CLI");
    let devices = get("/devices");
    assert!(devices.contains("<span id=\"device-count\">3</span>"), "{devices}");
    assert!(get("/devices?channel=stable&state=approved").contains("<span id=\"device-count\">3</span>"));
    assert!(get("/devices?state=revoked").contains("<span id=\"device-count\">0</span>"));
    assert!(get("/devices?channel=nope").contains("<span id=\"device-count\">0</span>"));
    let device = get(&format!("/devices/{}", "22".repeat(32)));
    assert!(device.contains(&"22".repeat(32)) && device.contains("r1"), "{device}");
    get("/sites");
    assert!(get("/packages").contains("affine@1.0.0"));
    let package = get(&format!("/packages/{}", s.digest));
    assert!(package.contains("<svg") && package.contains("lineage") && package.contains("r1"), "{package}");
    let audit = get("/audit");
    assert!(audit.contains("Chain intact") && audit.contains("start"), "{audit}");
    assert_eq!(s.send("GET", "/devices/zz", Some(&cookie), None).status, 404);
    assert_eq!(s.send("GET", "/devices?tier=quantum", Some(&cookie), None).status, 400);
}

#[test]
fn an_operator_pauses_a_release_and_the_hub_state_changes_under_their_name() {
    let s = Served::start();
    let (cookie, csrf) = s.login("ana");
    assert!(!s.paused());
    let r = s.send("POST", "/releases/r1/pause", Some(&cookie), Some(&format!("csrf={csrf}")));
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(s.paused(), "the serving hub's release is paused");
    assert!(s.audit().lines().any(|l| l.contains("console:ana") && l.contains("pause") && l.contains("r1")));
    let page = s.send("GET", "/releases", Some(&cookie), None).body;
    assert!(page.contains("data-state=\"paused") && page.contains("/releases/r1/resume"), "{page}");
    let r = s.send("POST", "/releases/r1/resume", Some(&cookie), Some(&format!("csrf={csrf}")));
    assert_eq!(r.status, 303);
    assert!(!s.paused());
}

#[test]
fn a_viewer_cannot_pause_a_release() {
    let s = Served::start();
    let (cookie, csrf) = s.login("vic");
    let r = s.send("POST", "/releases/r1/pause", Some(&cookie), Some(&format!("csrf={csrf}")));
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("only an operator"));
    assert!(!s.paused());
    assert!(!s.audit().contains("console:vic"));
}

#[test]
fn a_pause_without_its_csrf_token_is_refused() {
    let s = Served::start();
    let (cookie, _) = s.login("ana");
    for form in ["", "csrf=", &format!("csrf={}", "0".repeat(64))] {
        let r = s.send("POST", "/releases/r1/pause", Some(&cookie), Some(form));
        assert_eq!(r.status, 403, "{form}: {}", r.body);
        assert!(r.body.contains("CSRF"));
    }
    // Another session's token is no good either.
    let (_, other) = s.login("ana");
    let r = s.send("POST", "/releases/r1/pause", Some(&cookie), Some(&format!("csrf={other}")));
    assert_eq!(r.status, 403);
    assert!(!s.paused());
    let r = s.send("POST", "/releases/r1/pause", None, Some("csrf=x"));
    assert_eq!(r.status, 401, "no session, no action");
}

#[test]
fn an_abort_reason_is_escaped_on_the_page_and_recorded() {
    let s = Served::start();
    let (cookie, csrf) = s.login("ana");
    let form = format!("csrf={csrf}&reason=%3Cscript%3Ealert(1)%3C%2Fscript%3E");
    assert_eq!(s.send("POST", "/releases/r1/abort", Some(&cookie), Some(&form)).status, 303);
    let page = s.send("GET", "/releases", Some(&cookie), None).body;
    assert!(page.contains("ABORTED") && page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{page}");
    assert!(!page.contains("<script>"));
    assert!(s.audit().lines().any(|l| l.contains("console:ana") && l.contains("abort")));
    let no_reason = s.send("POST", "/releases/r1/abort", Some(&cookie), Some(&format!("csrf={csrf}&reason=")));
    assert_eq!(no_reason.status, 400);
}

#[test]
fn an_operator_revokes_a_device_and_it_is_audited_under_their_name() {
    let s = Served::start();
    let (cookie, csrf) = s.login("ana");
    let key = "33".repeat(32);
    let r = s.send("POST", &format!("/devices/{key}/revoke"), Some(&cookie), Some(&format!("csrf={csrf}")));
    assert_eq!(r.status, 303, "{}", r.body);
    let device = s.served.hub.store().unwrap().devices().device(&key).unwrap().unwrap();
    assert_eq!(device.status, outpost_hub::registry::DeviceStatus::Revoked);
    assert!(s.audit().lines().any(|l| l.contains("console:ana") && l.contains("revoke") && l.contains(&key)));
    let list = s.send("GET", "/devices?state=revoked", Some(&cookie), None).body;
    assert!(list.contains("<span id=\"device-count\">1</span>"), "the list shows it at once: {list}");
}

#[test]
fn a_reissued_credential_ends_the_old_session() {
    let s = Served::start();
    let (cookie, _) = s.login("vic");
    assert_eq!(s.send("GET", "/releases", Some(&cookie), None).status, 200);
    s.hub.ok(&["console", "user", "add", "vic", "--role", "viewer"]);
    assert_eq!(s.send("GET", "/releases", Some(&cookie), None).status, 303);
}

#[test]
fn a_removed_user_is_logged_out_and_cannot_log_in_again() {
    let s = Served::start();
    let (cookie, _) = s.login("vic");
    assert!(s.hub.ok(&["console", "user", "list"]).contains("vic"));
    s.hub.ok(&["console", "user", "remove", "vic"]);
    assert!(!s.hub.ok(&["console", "user", "list"]).contains("vic"));
    assert_eq!(s.send("GET", "/releases", Some(&cookie), None).status, 303);
    let again = post_login(s.served.addr, "vic", &s.passwords["vic"]);
    assert_eq!(again.status, 401);
    assert!(!s.hub.cli(&["console", "user", "remove", "vic"]).status.success(), "removing nobody is an error");
}

#[test]
fn a_clear_text_console_on_a_non_loopback_address_is_refused() {
    let hub = TestHub::new();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let h = Arc::new(service::Hub::load(&hub.dir(), Arc::new(SystemClock), Box::new(SystemRng)).unwrap());
    let bind: SocketAddr = "0.0.0.0:0".parse().unwrap();
    let refused =
        runtime.block_on(outpost_hub::console::Console::bind(ConsoleConfig::new(bind), h, None, Arc::new(|| {})));
    assert!(matches!(refused, Err(ConsoleError::NotLoopbackWithoutTls { addr }) if addr == bind), "{refused:?}");
}

#[test]
fn with_console_tls_the_console_serves_https_and_its_cookie_is_secure() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Served::start_with(|hub, c| {
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let (cert_path, key_path) = (hub.tmp.path().join("console.crt"), hub.tmp.path().join("console.key"));
        std::fs::write(&cert_path, cert.cert.pem()).unwrap();
        std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
        c.tls = Some(outpost_hub::console::TlsFiles { cert: cert_path, key: key_path });
    });
    let pem = std::fs::read(s.hub.tmp.path().join("console.crt")).unwrap();
    let der = CertificateDer::from_pem_slice(&pem).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let addr = s.served.addr;
    let config = Arc::new(config);
    let exchange = |request: String| {
        let config = config.clone();
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = ServerName::IpAddress(addr.ip().into());
            let mut tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.unwrap();
            tls.write_all(request.as_bytes()).await.unwrap();
            let mut out = String::new();
            let _ = tls.read_to_string(&mut out).await; // the server may close without close_notify
            out
        })
    };
    let set_cookie =
        |answer: &str| answer.lines().find(|l| l.to_ascii_lowercase().starts_with("set-cookie:")).unwrap().to_owned();
    let form = exchange("GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".to_owned());
    let login_cookie = set_cookie(&form);
    assert!(login_cookie.contains("; Secure"), "{login_cookie}");
    let login_cookie = login_cookie.split_once(':').unwrap().1.trim().split(';').next().unwrap().to_owned();
    let token = form.split("name=\"login_csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap();
    let body = format!("user=vic&password={}&login_csrf={token}", s.passwords["vic"]);
    let answer = exchange(format!(
        "POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nCookie: {login_cookie}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    assert!(answer.starts_with("HTTP/1.1 303"), "{answer}");
    let cookie = set_cookie(&answer);
    assert!(
        cookie.contains("outpost_session=") && cookie.contains("; Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    // Clear text to the TLS port gets no page.
    let plain = std::panic::catch_unwind(|| request_plain(addr)).unwrap_or_default();
    assert!(!plain.contains("200 OK") && !plain.contains("303"), "{plain}");
}

/// A clear-text request, for a port that speaks TLS: whatever comes back (likely nothing).
fn request_plain(addr: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let _ = s.write_all(b"GET /login HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The real binary: `serve --console` logs the console's URL and serves it; a non-loopback address without TLS
/// stops `serve` with the error that says what to do.
#[test]
#[allow(clippy::disallowed_methods)] // deadlines for a real process
fn the_binary_serves_the_console_it_is_asked_for_and_refuses_clear_text_off_loopback() {
    use std::io::{BufRead, BufReader};
    let hub = TestHub::new();
    let offline = hub.tmp.path().join("offline");
    hub.ok(&["keys", "generate", "--offline-dir", offline.to_str().unwrap()]);
    let refused = hub.cli(&["serve", "--bind", "127.0.0.1:0", "--console", "0.0.0.0:0"]);
    assert!(!refused.status.success());
    let err = support::stderr(&refused);
    assert!(err.contains("in clear text") && err.contains("--console-tls CERT KEY"), "{err}");

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_outpost-hub"))
        .arg("--data-dir")
        .arg(hub.dir())
        .args(["serve", "--bind", "127.0.0.1:0", "--console", "127.0.0.1:0"])
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let url = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx.recv_timeout(left).expect("`console on` within 30 s");
        if let Some(rest) = line.split("console on ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    let addr: SocketAddr = url.trim_start_matches("http://").trim_end_matches('/').parse().unwrap();
    let login = request(addr, "GET", "/login", None, None);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(login.status, 200, "{}", login.body);
    assert!(login.body.contains("Log in"));
}

/// The chart of devices per state over time is stored as it is sampled: a console started again on the same
/// store draws it at once from what was sampled before, instead of starting from nothing.
#[test]
#[allow(clippy::disallowed_methods)] // waits on a real server's sampler
fn the_releases_chart_survives_a_restart_of_the_hub() {
    let s = Served::start_with(|_, c| c.sample_period = std::time::Duration::from_millis(50));
    let stored = |hub: &outpost_hub::service::Hub| hub.store().unwrap().registry().console_charts().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while stored(&s.served.hub).is_empty() {
        assert!(std::time::Instant::now() < deadline, "no chart sample was stored");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(stored(&s.served.hub)[0].0, "r1");
    // The next console's sample falls on a later second than the stored one.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let Served { hub, served, passwords, .. } = s;
    drop(served);
    // The stopped service's runtime winds down in the background: wait until its admin socket answers no more.
    let admin = hub.dir().join("admin.sock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&admin).is_ok() {
        assert!(std::time::Instant::now() < deadline, "the first service still answers on its admin socket");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // One sample from this console (at its start), none after: a chart needs the stored one too.
    let again = support::console::serve_with(&hub, Arc::new(cli::Commands), |c| {
        c.sample_period = std::time::Duration::from_secs(3600);
    });
    let cookie = support::console::login(again.addr, "vic", &passwords["vic"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let page = request(again.addr, "GET", "/releases", Some(&cookie), None).body;
        if !page.contains("fills in as the console samples") {
            assert!(page.contains("<svg class=\"chart\""), "{page}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the restarted console drew no chart: {page}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
