//! What the coordinator, its session task and its uploads share: how to reach the control
//! plane, the current connection, and the requests waiting for replies.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use tokio::sync::{mpsc, oneshot, watch};
use tonic::transport::{Channel, Endpoint};
use warden_core::JobId;
use warden_proto::pb;
use warden_proto::pb::server_message::Body as Out;

use crate::DataDir;

/// How a worker reaches and introduces itself to the control plane.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    /// `http://host:port` or `https://host:port`; several, comma-separated, are tried in turn
    /// (control-plane replicas: when one is lost, the session moves to the next).
    pub server: String,
    pub token: String,
    /// PEM of the CA that signed the server's certificate (for `https://`).
    pub tls_ca: Option<Vec<u8>>,
    pub worker_id: String,
    pub slots: u32,
    pub labels: Vec<String>,
    pub job_types: Vec<String>,
    pub sandbox: pb::SandboxCapabilities,
}

/// Why a control plane refused this worker outright (a wrong token, no sandbox).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("server URL {0:?} is invalid: {1}")]
    Url(String, String),
    #[error("https:// needs the CA certificate that signed the server's (--tls-ca)")]
    NeedsCa,
    #[error("TLS: {0}")]
    Tls(String),
}

#[derive(Clone)]
pub(super) struct Conn {
    pub(super) tx: mpsc::Sender<pb::WorkerMessage>,
    pub(super) channel: Channel,
}

pub(super) struct Inner {
    pub(super) opts: RemoteOptions,
    pub(super) endpoints: Vec<(String, Endpoint)>,
    pub(super) next_id: AtomicU64,
    pub(super) conn: watch::Sender<Option<Conn>>,
    pub(super) registered: watch::Sender<Option<pb::Registered>>,
    /// Why the control plane refused this worker outright (token, sandbox, registration).
    pub(super) refused: watch::Sender<Option<String>>,
    pub(super) pending: Mutex<HashMap<u64, oneshot::Sender<Out>>>,
    pub(super) cancels: mpsc::UnboundedSender<JobId>,
    pub(super) data: DataDir,
    /// Secrets sent with assignments, until the job's run takes them (memory only).
    pub(super) secrets: Mutex<HashMap<JobId, Result<crate::secrets::JobSecrets, String>>>,
}

impl Inner {
    pub(super) fn authorize<T>(&self, req: &mut tonic::Request<T>) {
        if let Ok(v) = format!("Bearer {}", self.opts.token).parse() {
            req.metadata_mut().insert("authorization", v);
        }
    }

    pub(super) fn fail_pending(&self) {
        // Dropping the senders wakes every waiter with "session broke".
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}
