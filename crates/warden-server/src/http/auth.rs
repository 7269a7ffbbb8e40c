//! Every request but the probes, `/openapi.json` and the UI's sign-in page and assets names its
//! caller before it reaches a handler (refusals are audited by the
//! [`Authenticator`](crate::auth::Authenticator)). The caller is named by the `Authorization`
//! header or, for a browser signed in to the UI, by its session cookie; a change a browser asks
//! for from another origin is refused before either is looked at.

use std::net::SocketAddr;

use axum::extract::connect_info::MockConnectInfo;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use warden_api::ErrorCode;

use super::AppState;
use crate::service::ServiceError;
use crate::ui;

pub async fn authenticate(State(svc): State<AppState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let unsafe_method = ui::is_unsafe(req.method());
    if unsafe_method && ui::is_cross_origin(req.headers()) {
        return ServiceError::new(
            ErrorCode::Forbidden,
            "a change asked for by a page of another origin is refused",
        )
        .into_response();
    }
    if matches!(path, "/healthz" | "/readyz" | "/openapi.json") || ui::is_public(path) {
        return next.run(req).await;
    }
    let ext = req.extensions();
    let client = ext
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .or_else(|| ext.get::<MockConnectInfo<SocketAddr>>().map(|c| c.0));
    let target = format!("{} {}", req.method(), path);
    let page = ui::is_page(path, req.method());
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let header = match req.headers().get(header::AUTHORIZATION) {
        Some(h) => Some(h.as_bytes().to_vec()),
        None => match ui::session_token(req.headers()) {
            Some(token) => {
                if unsafe_method && !ui::csrf_ok(req.headers(), token) {
                    return ServiceError::new(
                        ErrorCode::Forbidden,
                        format!(
                            "a change made with the UI's session cookie must carry the \
                             {} header from /ui/session",
                            ui::CSRF_HEADER
                        ),
                    )
                    .into_response();
                }
                Some(format!("Bearer {token}").into_bytes())
            }
            None => None,
        },
    };
    let host = req
        .headers()
        .get(header::HOST)
        .map(|h| h.to_str().unwrap_or("\u{fffd}").to_string())
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    let to_loopback = crate::auth::addressed_to_loopback(host.as_deref());
    match svc
        .auth
        .authenticate_addressed(header.as_deref(), client, &target, to_loopback)
        .await
    {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) if page && e.code == ErrorCode::Unauthenticated => ui::to_login(&path_and_query),
        Err(e) => e.into_response(),
    }
}
