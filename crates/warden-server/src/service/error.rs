//! The service's error: a machine-readable code and a message that says what to fix. HTTP
//! (`http/error.rs`) and gRPC (`grpc/mod.rs`) each map it in one place.

use warden_api::ErrorCode;
use warden_store::StoreError;
use warden_worker::artifact_dir::ArtifactError;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ServiceError {
    pub code: ErrorCode,
    pub message: String,
    /// When to try again (`Retry-After`), for 429s.
    pub retry_after: Option<std::time::Duration>,
    /// A 401 that asks for a bearer token (`WWW-Authenticate: Bearer`).
    pub www_authenticate: bool,
}

impl ServiceError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ServiceError {
        ServiceError {
            code,
            message: message.into(),
            retry_after: None,
            www_authenticate: false,
        }
    }

    /// warden's own fault: the details go to the log, the caller gets nothing internal.
    pub fn internal(context: &str, err: impl std::fmt::Display) -> ServiceError {
        tracing::error!(error = %err, "{context}");
        ServiceError::new(ErrorCode::Internal, "internal error; see the server log")
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> ServiceError {
        match e {
            StoreError::NotFound(id) => {
                ServiceError::new(ErrorCode::JobNotFound, format!("job {id} not found"))
            }
            StoreError::IdempotencyConflict { key, existing } => ServiceError::new(
                ErrorCode::IdempotencyConflict,
                format!(
                    "idempotency_key {key:?} was already used for job {existing} with a \
                     different request; use a new key or resend the original request"
                ),
            ),
            StoreError::QueueFull { tenant, max } => {
                let mut e = ServiceError::new(
                    ErrorCode::QueueFull,
                    format!(
                        "tenant {tenant:?} already has {max} jobs queued (its max_queued); \
                         retry when some have started"
                    ),
                );
                e.retry_after = Some(std::time::Duration::from_secs(5));
                e
            }
            StoreError::LeaseLost(id) => ServiceError::new(
                ErrorCode::LeaseLost,
                format!("lease on job {id} is no longer held"),
            ),
            other => ServiceError::internal("store error", other),
        }
    }
}

impl From<ArtifactError> for ServiceError {
    fn from(e: ArtifactError) -> ServiceError {
        let code = match &e {
            ArtifactError::InvalidPath { .. } => ErrorCode::InvalidPath,
            ArtifactError::NotFound(_) => ErrorCode::ArtifactNotFound,
            ArtifactError::Link(_) | ArtifactError::NotAFile { .. } => ErrorCode::NotAFile,
            ArtifactError::Io { .. } => return ServiceError::internal("artifact", e),
        };
        ServiceError::new(code, e.to_string())
    }
}
