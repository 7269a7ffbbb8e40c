//! What every worker session shares, and how store errors reach a worker.

use std::sync::Arc;

use warden_core::Config;
use warden_proto::pb;
use warden_proto::pb::server_message::Body as Out;
use warden_proto::pb::worker_error::Code as ErrCode;
use warden_store::{Store, StoreError};
use warden_worker::{DataDir, Events};

/// What every session shares.
pub struct WorkerHub {
    pub store: Arc<dyn Store>,
    pub config: Arc<Config>,
    pub events: Events,
    pub data: DataDir,
    /// Ticks when a job may be waiting.
    pub queued: tokio::sync::watch::Receiver<u64>,
    pub lease_ms: i64,
    /// Cancelled when the server stops: sessions end, workers reconnect elsewhere.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The secrets this control plane grants; sent with a job only over TLS or to loopback.
    pub secrets: Arc<warden_worker::secrets::Secrets>,
    /// Where uploaded artifacts go once received, when not the artifact directory.
    pub s3: Option<Arc<crate::artifact_store::S3Artifacts>>,
    /// Where open sessions are counted (`/metrics`).
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

pub(super) fn error(code: ErrCode, message: impl Into<String>) -> Out {
    Out::Error(pb::WorkerError {
        code: code as i32,
        message: message.into(),
        log_len: 0,
    })
}

pub(super) fn store_error(e: StoreError) -> Out {
    match e {
        StoreError::LeaseLost(id) => error(
            ErrCode::LeaseLost,
            format!("lease on job {id} is no longer held"),
        ),
        StoreError::LogOffset { offset, len, .. } => Out::Error(pb::WorkerError {
            code: ErrCode::LogOffset as i32,
            message: format!("offset {offset} does not continue the stream (length {len})"),
            log_len: len,
        }),
        StoreError::NotFound(id) => error(ErrCode::NotFound, format!("job {id} not found")),
        other => {
            tracing::error!(error = %other, "store error in a worker session");
            error(ErrCode::Unavailable, "store unavailable; retry")
        }
    }
}
