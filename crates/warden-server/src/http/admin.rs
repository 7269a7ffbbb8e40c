//! `/whoami`, `/tokens`, `/audit`.

use axum::Json;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use warden_api::{AuditResponse, CreateTokenRequest, ErrorCode, TokensResponse};
use warden_store::AuditFilter;

use super::query::{parse_query, query_num};
use super::{AppState, JsonBody};
use crate::auth::Caller;
use crate::service::ServiceError;

pub async fn whoami(State(svc): State<AppState>, Extension(caller): Extension<Caller>) -> Response {
    Json(svc.whoami(&caller)).into_response()
}

pub async fn create_token(
    State(svc): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<CreateTokenRequest>,
) -> Result<Response, ServiceError> {
    let created = svc.create_token(&caller, req).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

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

pub async fn revoke_token(
    State(svc): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ServiceError> {
    Ok(Json(svc.revoke_token(&caller, &id).await?).into_response())
}

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
