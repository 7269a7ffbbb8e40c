//! The one place where errors become HTTP answers.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use warden_api::{ErrorBody, ErrorCode, ErrorDetail};
use warden_store::StoreError;

/// An error as the caller sees it: a code and a message that says what to fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }

    /// warden's own fault: the details go to the log, the caller gets nothing internal.
    pub fn internal(context: &str, err: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %err, "{context}");
        ApiError::new(ErrorCode::Internal, "internal error; see the server log")
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound(id) => {
                ApiError::new(ErrorCode::JobNotFound, format!("job {id} not found"))
            }
            StoreError::IdempotencyConflict { key, existing } => ApiError::new(
                ErrorCode::IdempotencyConflict,
                format!(
                    "idempotency_key {key:?} was already used for job {existing} with a \
                     different request; use a new key or resend the original request"
                ),
            ),
            other => ApiError::internal("store error", other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        (status, Json(body)).into_response()
    }
}
