//! The gRPC API: `JobService` and `ArtifactService` translate to the same [`JobService`] the
//! HTTP API uses; `WorkerService` is the remote workers' session ([`workers`]).

mod artifacts;
mod jobs;
pub mod workers;

use std::net::SocketAddr;
use std::sync::Arc;

use tonic::{Code, Request, Status};
use warden_api::ErrorCode;
pub use warden_proto::ERROR_CODE_KEY;
use warden_proto::pb;
use warden_proto::{MAX_MESSAGE, WireError};

use crate::service::{JobService, ServiceError};

pub use workers::WorkerHub;

/// The gRPC code for each of warden's error codes.
fn grpc_code(code: ErrorCode) -> Code {
    match code {
        ErrorCode::MalformedJson
        | ErrorCode::InvalidRequest
        | ErrorCode::UnknownField
        | ErrorCode::PayloadTooLarge
        | ErrorCode::UnsupportedMediaType
        | ErrorCode::UnknownJobType
        | ErrorCode::UnknownParam
        | ErrorCode::InvalidParam
        | ErrorCode::InvalidJobId
        | ErrorCode::InvalidQuery
        | ErrorCode::InvalidPath
        | ErrorCode::RepoRequired
        | ErrorCode::RepoNotAllowed
        | ErrorCode::CallbackNotAllowed
        | ErrorCode::ToolBundleUnknown
        | ErrorCode::InvalidRef
        | ErrorCode::NotAFile => Code::InvalidArgument,
        ErrorCode::JobNotFound | ErrorCode::ArtifactNotFound | ErrorCode::NotFound => {
            Code::NotFound
        }
        ErrorCode::MethodNotAllowed => Code::Unimplemented,
        ErrorCode::Unauthenticated => Code::Unauthenticated,
        ErrorCode::Forbidden => Code::PermissionDenied,
        ErrorCode::QueueFull | ErrorCode::RateLimited => Code::ResourceExhausted,
        ErrorCode::IdempotencyConflict | ErrorCode::JobFinished | ErrorCode::LeaseLost => {
            Code::FailedPrecondition
        }
        ErrorCode::RepoUnavailable | ErrorCode::ImageUnavailable | ErrorCode::ShuttingDown => {
            Code::Unavailable
        }
        ErrorCode::Internal => Code::Internal,
    }
}

/// The one place where service errors become gRPC statuses, with warden's code in the
/// `warden-error-code` metadata.
pub(crate) fn status(e: ServiceError) -> Status {
    let mut status = Status::new(grpc_code(e.code), e.message);
    if let Ok(v) = e.code.as_str().parse() {
        status.metadata_mut().insert(ERROR_CODE_KEY, v);
    }
    if let Some(after) = e.retry_after
        && let Ok(v) = after.as_secs().max(1).to_string().parse()
    {
        status.metadata_mut().insert("retry-after", v);
    }
    status
}

/// The caller of a `JobService` or `ArtifactService` call: its `authorization: Bearer` token,
/// or a trusted loopback peer where the configuration allows (as over HTTP).
pub(crate) async fn caller<T>(
    svc: &JobService,
    req: &Request<T>,
    method: &str,
) -> Result<crate::auth::Caller, Status> {
    let header = req.metadata().get("authorization").map(|v| v.as_bytes());
    svc.auth
        .authenticate(header, req.remote_addr(), method)
        .await
        .map_err(status)
}

pub(crate) fn invalid(e: WireError) -> Status {
    status(ServiceError::new(ErrorCode::InvalidRequest, e.0))
}

/// Which workers may attach: every worker presents the worker token. (Callers of the job and
/// artifact services present API tokens instead: see [`caller`].)
#[derive(Clone)]
pub struct Auth {
    token: Option<Arc<str>>,
}

impl Auth {
    pub fn new(token: Option<String>) -> Auth {
        Auth {
            token: token.map(Arc::from),
        }
    }

    fn bearer_ok<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let Some(token) = &self.token else {
            return Err(Status::unauthenticated(
                "this server has no worker token configured: set WARDEN_WORKER_TOKEN or \
                 worker_token_file on the server",
            ));
        };
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => Ok(()),
            Some(_) => Err(Status::unauthenticated("the worker token is wrong")),
            None => Err(Status::unauthenticated(
                "missing `authorization: Bearer <worker token>`",
            )),
        }
    }

    /// For `WorkerService`: always the token.
    pub(crate) fn check_worker<T>(&self, req: &Request<T>) -> Result<(), Status> {
        self.bearer_ok(req)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// All three services, ready for a tonic server.
pub fn routes(service: Arc<JobService>, hub: Arc<WorkerHub>, auth: Auth) -> tonic::service::Routes {
    let jobs = pb::job_service_server::JobServiceServer::new(jobs::Jobs::new(service.clone()))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let artifacts =
        pb::artifact_service_server::ArtifactServiceServer::new(artifacts::Artifacts::new(service))
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
    let workers =
        pb::worker_service_server::WorkerServiceServer::new(workers::Workers::new(hub, auth))
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
    tonic::service::Routes::new(jobs)
        .add_service(artifacts)
        .add_service(workers)
}

/// Whether a gRPC listen address needs the worker token for every caller.
pub fn is_public(addr: SocketAddr) -> bool {
    !addr.ip().is_loopback()
}
