//! The console's state-changing requests: pause, resume, abort, retry-failed on a release and revoke a device.
//! Each needs a live session, that session's CSRF token, and an operator's role as the index holds it now; the
//! admin handler then runs it as the CLI command would, with the operator's name as the audit log's actor.

use std::sync::Arc;

use axum::extract::{Form, Path, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::http::{State, error_page};
use super::users::Role;
use super::{Action, actor};

/// A release action's form.
#[derive(Debug, Deserialize)]
pub struct ReleaseForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
}

/// `POST /releases/{id}/{pause|resume|abort|retry-failed}`.
pub async fn release(
    AxState(st): AxState<Arc<State>>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<ReleaseForm>,
) -> Response {
    let reason = form.reason.trim().to_owned();
    let action = match action.as_str() {
        "pause" => Action::Pause { release: id },
        "resume" => Action::Resume { release: id },
        "retry-failed" => Action::RetryFailed { release: id },
        "abort" if reason.is_empty() => {
            return error_page(StatusCode::BAD_REQUEST, st.session(&headers).as_ref(), "an abort needs a reason");
        }
        "abort" if reason.len() > st.config.max_reason_len => {
            let msg = format!("the reason is longer than {} bytes", st.config.max_reason_len);
            return error_page(StatusCode::BAD_REQUEST, st.session(&headers).as_ref(), &msg);
        }
        "abort" => Action::Abort { release: id, reason },
        _ => return error_page(StatusCode::NOT_FOUND, st.session(&headers).as_ref(), "no such release action"),
    };
    act(st, &headers, &form.csrf, action, "/releases").await
}

/// `POST /devices/{key}/revoke`.
pub async fn revoke_device(
    AxState(st): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(key): Path<String>,
    Form(form): Form<super::http::CsrfOnly>,
) -> Response {
    let back = format!("/devices/{key}");
    act(st, &headers, &form.csrf, Action::RevokeDevice { key }, &back).await
}

/// Checks session, CSRF token and role, then runs `action` through the admin handler; back to `back` on success.
async fn act(st: Arc<State>, headers: &HeaderMap, csrf: &str, action: Action, back: &str) -> Response {
    let Some(session) = st.session(headers) else {
        return error_page(StatusCode::UNAUTHORIZED, None, "refused: log in first");
    };
    if !session.csrf_matches(csrf) {
        tracing::warn!(user = %session.user, "console: refused an action without its CSRF token");
        return error_page(StatusCode::FORBIDDEN, Some(&session), "refused: the form's CSRF token is missing or wrong");
    }
    let Some(handler) = st.handler.clone() else {
        return error_page(StatusCode::SERVICE_UNAVAILABLE, Some(&session), "this console is read-only");
    };
    let s = st.clone();
    let user = session.user.clone();
    let ran = tokio::task::spawn_blocking(move || {
        // The role as the index holds it now: a demoted or removed operator's open session acts no more.
        let role = s.hub.store().ok().and_then(|st| st.registry().console_user(&user).ok().flatten()).map(|u| u.role);
        if role != Some(Role::Operator) {
            return Err(role);
        }
        let reply = handler.act(&s.hub, &actor(&user), &action);
        (s.after)();
        s.invalidate();
        Ok((reply, action))
    })
    .await;
    match ran {
        Ok(Err(_)) => {
            tracing::warn!(user = %session.user, "console: refused an action to a viewer");
            error_page(StatusCode::FORBIDDEN, Some(&session), "refused: only an operator may do this")
        }
        Ok(Ok((Ok(reply), action))) if reply.code == 0 => {
            tracing::info!(user = %session.user, ?action, "console: {} did {action:?}", session.user);
            Redirect::to(back).into_response()
        }
        Ok(Ok((Ok(reply), _))) => {
            let msg = format!("the hub refused: {}", reply.stderr.trim());
            error_page(StatusCode::CONFLICT, Some(&session), &msg)
        }
        Ok(Ok((Err(e), _))) => error_page(StatusCode::BAD_REQUEST, Some(&session), &e.to_string()),
        Err(e) => error_page(StatusCode::INTERNAL_SERVER_ERROR, Some(&session), &e.to_string()),
    }
}
