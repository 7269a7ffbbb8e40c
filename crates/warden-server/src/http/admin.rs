//! `/whoami`, `/tokens`, `/audit`.

use axum::Json;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
#[allow(unused_imports)] // the OpenAPI annotations name some of them
use warden_api::{
    AuditResponse, CreateTokenRequest, CreateTokenResponse, ErrorBody, ErrorCode, TokenView,
    TokensResponse, WhoamiResponse,
};
use warden_store::AuditFilter;

use super::query::{parse_query, query_num};
use super::{AppState, JsonBody};
use crate::auth::Caller;
use crate::service::ServiceError;

/// The caller as the server sees it: tenant, scopes, token id.
#[utoipa::path(get, path = "/whoami", tag = "admin",
    responses((status = 200, description = "The caller", body = WhoamiResponse)))]
pub async fn whoami(State(svc): State<AppState>, Extension(caller): Extension<Caller>) -> Response {
    Json(svc.whoami(&caller)).into_response()
}

/// Make a token (admin). The answer is the only time the token itself is shown.
#[utoipa::path(post, path = "/tokens", tag = "admin", request_body = CreateTokenRequest,
    responses(
        (status = 201, description = "The new token", body = CreateTokenResponse),
        (status = 400, description = "The body is not JSON (`malformed_json`)", body = ErrorBody),
        (status = 403, description = "The token lacks the `admin` scope", body = ErrorBody),
        (status = 413, description = "The body is over 1 MiB (`payload_too_large`)", body = ErrorBody),
        (status = 415, description = "The body is not `application/json` (`unsupported_media_type`)", body = ErrorBody),
        (status = 422, description = "A field is wrong (`unknown_field`, `invalid_request`)", body = ErrorBody),
    ))]
pub async fn create_token(
    State(svc): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<CreateTokenRequest>,
) -> Result<Response, ServiceError> {
    let created = svc.create_token(&caller, req).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// Tokens (admin), never the tokens themselves.
#[utoipa::path(get, path = "/tokens", tag = "admin",
    params(("tenant" = Option<String>, Query, description = "Only this tenant's tokens")),
    responses(
        (status = 200, description = "Tokens", body = TokensResponse),
        (status = 400, description = "A bad query parameter (`invalid_query`)", body = ErrorBody),
        (status = 403, description = "The token lacks the `admin` scope", body = ErrorBody),
    ))]
pub async fn list_tokens(
    State(svc): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ServiceError> {
    let q = parse_query(raw, &["tenant"])?;
    let tokens = svc
        .list_tokens(&caller, q.get("tenant").map(String::as_str))
        .await?;
    Ok(Json(TokensResponse { tokens }).into_response())
}

/// Revoke a token (admin); requests with it are refused from now on.
#[utoipa::path(post, path = "/tokens/{id}/revoke", tag = "admin",
    params(("id" = String, Path, description = "The token's id, as listed")),
    responses(
        (status = 200, description = "The token, revoked", body = TokenView),
        (status = 403, description = "The token lacks the `admin` scope", body = ErrorBody),
        (status = 404, description = "No such token (`not_found`)", body = ErrorBody),
    ))]
pub async fn revoke_token(
    State(svc): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ServiceError> {
    Ok(Json(svc.revoke_token(&caller, &id).await?).into_response())
}

/// The audit log (admin), newest first.
#[utoipa::path(get, path = "/audit", tag = "admin",
    params(
        ("tenant" = Option<String>, Query, description = "Only this tenant's entries"),
        ("action" = Option<String>, Query, description = "Only this action (`submit`, `cancel`, `token.create`, `auth`, ...)"),
        ("limit" = Option<u32>, Query, description = "Page size, 1 to 1000 (default 100)", minimum = 1, maximum = 1000),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "Audit entries", body = AuditResponse),
        (status = 400, description = "A bad query parameter (`invalid_query`)", body = ErrorBody),
        (status = 403, description = "The token lacks the `admin` scope", body = ErrorBody),
    ))]
pub async fn audit(
    State(svc): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ServiceError> {
    let q = parse_query(raw, &["tenant", "action", "limit", "cursor"])?;
    let before = match q.get("cursor") {
        None => None,
        Some(c) => Some(c.parse::<i64>().map_err(|_| {
            ServiceError::new(
                ErrorCode::InvalidQuery,
                format!("cursor={c:?} is not a cursor from a previous page"),
            )
        })?),
    };
    let filter = AuditFilter {
        tenant: q.get("tenant").cloned(),
        action: q.get("action").cloned(),
        before,
        limit: query_num(&q, "limit", 1u32..=1000)?.unwrap_or(100),
    };
    let (entries, next_cursor) = svc.list_audit(&caller, filter).await?;
    Ok(Json(AuditResponse {
        entries,
        next_cursor,
    })
    .into_response())
}
