//! `warden.v1.WorkerService`: one session per remote worker.
//!
//! The session is a translation of the worker's requests into the same store calls the
//! in-process worker makes, with the same lease and fencing rules: the server adds only the
//! claim's long poll (held open until a job is queued, so an idle worker starts a new job within
//! one notification), the worker's label restrictions, and cancellation pushed the moment a user
//! asks for it. A session that breaks leaves its leases alone: the worker may reconnect (to
//! any replica) and carry on while they hold; otherwise they expire and the reaper re-queues.

mod hub;
mod session;
mod upload;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};
use warden_core::config::is_valid_label;
use warden_proto::pb;
use warden_proto::pb::server_message::Body as Out;
use warden_proto::pb::worker_error::Code as ErrCode;
use warden_proto::pb::worker_message::Body as In;

pub use self::hub::WorkerHub;
use self::hub::error;
use self::session::Session;
use super::Auth;

pub(crate) struct Workers {
    hub: Arc<WorkerHub>,
    auth: Auth,
}

impl Workers {
    pub(crate) fn new(hub: Arc<WorkerHub>, auth: Auth) -> Workers {
        Workers { hub, auth }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn check_worker_id(id: &str) -> Result<(), Status> {
    if id.is_empty() || id.len() > 128 || id.chars().any(|c| c.is_control() || c == ' ') {
        return Err(Status::invalid_argument(
            "worker_id must be 1..=128 characters without spaces or control characters",
        ));
    }
    Ok(())
}

impl Workers {
    /// Checks a worker's `Register` and builds its session, or refuses it.
    fn register(&self, reg: pb::Register, peer: Option<SocketAddr>) -> Result<Session, Status> {
        check_worker_id(&reg.worker_id)?;
        if let Some(bad) = reg.labels.iter().find(|l| !is_valid_label(l)) {
            return Err(Status::invalid_argument(format!(
                "label {bad:?} is invalid: labels match ^[a-z0-9][a-z0-9_.-]{{0,63}}$"
            )));
        }
        let hub = self.hub.clone();
        // Fail closed: a worker that cannot give jobs the kernel sandbox gets none, unless this
        // control plane's operator allowed running without it.
        let isolation = reg
            .sandbox
            .as_ref()
            .map(|s| s.isolation.as_str())
            .unwrap_or("");
        let unsandboxed = isolation != "sandbox";
        if unsandboxed && !hub.config.unsafe_fallback {
            tracing::warn!(worker = %reg.worker_id, ?peer, isolation, "refused a worker without the kernel sandbox");
            return Err(Status::failed_precondition(format!(
                "this worker cannot provide the kernel sandbox (isolation {isolation:?}; run \
                 `warden doctor` on it), and the control plane does not allow unsafe_fallback"
            )));
        }
        let (job_types, refused) = Session::eligible(&hub.config, &reg);
        tracing::info!(
            worker = %reg.worker_id, ?peer, slots = reg.slots, labels = ?reg.labels,
            ?job_types, ?refused, isolation, "worker connected"
        );
        Ok(Session {
            hub,
            unsandboxed,
            worker_id: reg.worker_id,
            job_types,
            refused,
            held: Mutex::default(),
            told: Mutex::default(),
            waiting: Mutex::default(),
            claim_wanted: tokio::sync::Notify::new(),
            ended: tokio_util::sync::CancellationToken::new(),
            secure: self.hub.config.tls.is_some() || peer.is_some_and(|p| p.ip().is_loopback()),
            peer,
        })
    }
}

/// Reads the worker's requests until its stream ends (or the server stops), answering each on
/// its own task: a claim held open must not delay a heartbeat.
async fn serve_session(
    session: Arc<Session>,
    mut inbound: Streaming<pb::WorkerMessage>,
    tx: mpsc::Sender<Result<pb::ServerMessage, Status>>,
) {
    let hub = session.hub.clone();
    if let Some(m) = &hub.metrics {
        m.worker_sessions.inc();
    }
    loop {
        let msg = tokio::select! {
            m = inbound.message() => m,
            _ = hub.shutdown.cancelled() => break,
        };
        let msg = match msg {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(worker = %session.worker_id, error = %e, "session read failed");
                break;
            }
        };
        let (session, tx) = (session.clone(), tx.clone());
        tokio::spawn(async move {
            let body = match msg.body {
                Some(body) => session.handle(body).await,
                None => error(ErrCode::Invalid, "empty message"),
            };
            let _ = tx
                .send(Ok(pb::ServerMessage {
                    request_id: msg.request_id,
                    body: Some(body),
                }))
                .await;
        });
    }
    session.ended.cancel();
    if let Some(m) = &hub.metrics {
        m.worker_sessions.dec();
    }
    tracing::info!(worker = %session.worker_id, "worker session ended");
}

#[tonic::async_trait]
impl pb::worker_service_server::WorkerService for Workers {
    type SessionStream = BoxStream<pb::ServerMessage>;

    async fn session(
        &self,
        req: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        self.auth.check_worker(&req)?;
        let peer = req.remote_addr();
        let mut inbound = req.into_inner();
        let first = match inbound.message().await? {
            Some(m) => m,
            None => return Err(Status::invalid_argument("the stream ended before Register")),
        };
        let Some(In::Register(reg)) = first.body else {
            return Err(Status::invalid_argument(
                "the first message must be Register",
            ));
        };
        let session = Arc::new(self.register(reg, peer)?);
        let (tx, rx) = mpsc::channel::<Result<pb::ServerMessage, Status>>(256);
        let registered = pb::ServerMessage {
            request_id: first.request_id,
            body: Some(Out::Registered(pb::Registered {
                job_types: session.job_types.clone(),
                lease_ms: self.hub.lease_ms,
                refused: session.refused.clone(),
            })),
        };
        tx.send(Ok(registered))
            .await
            .map_err(|_| Status::cancelled("worker went away"))?;
        tokio::spawn(session.clone().push_cancellations(tx.clone()));
        tokio::spawn(session.clone().dispatch());
        tokio::spawn(serve_session(session, inbound, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn upload_artifacts(
        &self,
        req: Request<Streaming<pb::ArtifactUpload>>,
    ) -> Result<Response<pb::UploadArtifactsResponse>, Status> {
        self.upload(req).await
    }
}
