//! `warden.v1.WorkerService`: one session per remote worker.
//!
//! The session is a translation of the worker's requests into the same store calls the
//! in-process worker makes, with the same lease and fencing rules: the server adds only the
//! claim's long poll (held open until a job is queued, so an idle worker starts a new job within
//! one notification), the worker's label restrictions, and cancellation pushed the moment a user
//! asks for it. A session that breaks leaves its leases alone: the worker may reconnect (to
//! any replica) and carry on while they hold; otherwise they expire and the reaper re-queues.

use std::collections::{HashSet, VecDeque};
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status, Streaming};
use warden_core::config::is_valid_label;
use warden_core::{Config, JobId};
use warden_proto::pb::server_message::Body as Out;
use warden_proto::pb::worker_error::Code as ErrCode;
use warden_proto::pb::worker_message::Body as In;
use warden_proto::{
    MAX_CHUNK, completion_from_pb, job_to_pb, lease_from_pb, lease_to_pb, pb, stream_from_pb,
};
use warden_store::{Lease, Store, StoreError, now_millis};
use warden_worker::{DataDir, Events};

use super::Auth;

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
}

pub(crate) struct Workers {
    hub: Arc<WorkerHub>,
    auth: Auth,
}

impl Workers {
    pub(crate) fn new(hub: Arc<WorkerHub>, auth: Auth) -> Workers {
        Workers { hub, auth }
    }
}

/// Longest a claim is held open.
const MAX_CLAIM_WAIT: Duration = Duration::from_secs(30);

fn error(code: ErrCode, message: impl Into<String>) -> Out {
    Out::Error(pb::WorkerError {
        code: code as i32,
        message: message.into(),
        log_len: 0,
    })
}

fn store_error(e: StoreError) -> Out {
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

/// One registered worker.
struct Session {
    hub: Arc<WorkerHub>,
    /// The worker runs jobs without the kernel sandbox (allowed by `unsafe_fallback`).
    unsandboxed: bool,
    worker_id: String,
    job_types: Vec<String>,
    /// Jobs this session handed out or acted on, watched for cancellation.
    held: Mutex<HashSet<JobId>>,
    /// Jobs whose cancellation was already pushed.
    told: Mutex<HashSet<JobId>>,
    /// Claims held open, oldest first; [`Session::dispatch`] answers them.
    waiting: Mutex<VecDeque<oneshot::Sender<Result<warden_store::Claimed, StoreError>>>>,
    claim_wanted: tokio::sync::Notify,
    /// Cancelled when the worker's stream ends.
    ended: tokio_util::sync::CancellationToken,
}

impl Session {
    /// Which of the worker's job types it may run here, and why the others are refused.
    fn eligible(config: &Config, reg: &pb::Register) -> (Vec<String>, Vec<String>) {
        let (mut ok, mut refused) = (Vec::new(), Vec::new());
        for name in &reg.job_types {
            match config.job_type(name) {
                None => refused.push(format!("{name}: not configured on the control plane")),
                Some(t) => {
                    let missing: Vec<&String> = t
                        .labels
                        .iter()
                        .filter(|l| !reg.labels.contains(l))
                        .collect();
                    if missing.is_empty() {
                        ok.push(name.clone());
                    } else {
                        refused.push(format!("{name}: needs labels {missing:?}"));
                    }
                }
            }
        }
        (ok, refused)
    }

    /// Takes note of a lease this worker acts on; a refusal when the lease is another worker's.
    fn refuse_foreign(&self, lease: &Lease) -> Option<Out> {
        if lease.worker != self.worker_id {
            return Some(error(
                ErrCode::Invalid,
                format!(
                    "lease of job {} belongs to worker {:?}, not {:?}",
                    lease.job_id, lease.worker, self.worker_id
                ),
            ));
        }
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(lease.job_id);
        None
    }

    fn forget(&self, id: JobId) {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        self.told
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    async fn handle(self: &Arc<Self>, body: In) -> Out {
        let hub = &self.hub;
        match body {
            In::Register(_) => error(ErrCode::Invalid, "already registered"),
            In::Claim(c) => self.claim(Duration::from_millis(c.wait_ms as u64)).await,
            In::Heartbeat(h) => {
                let lease = match lease_from_pb(h.lease) {
                    Ok(l) => l,
                    Err(e) => return error(ErrCode::Invalid, e.0),
                };
                if let Some(out) = self.refuse_foreign(&lease) {
                    return out;
                }
                match hub
                    .store
                    .heartbeat(&lease, hub.lease_ms, now_millis())
                    .await
                {
                    Ok(r) => Out::Heartbeat(pb::HeartbeatReply {
                        cancel_requested: r.cancel_requested,
                    }),
                    Err(e) => {
                        if matches!(e, StoreError::LeaseLost(_)) {
                            self.forget(lease.job_id);
                        }
                        store_error(e)
                    }
                }
            }
            In::AppendLog(a) => {
                let lease = match lease_from_pb(a.lease) {
                    Ok(l) => l,
                    Err(e) => return error(ErrCode::Invalid, e.0),
                };
                let stream = match stream_from_pb(a.stream) {
                    Ok(s) => s,
                    Err(e) => return error(ErrCode::Invalid, e.0),
                };
                if a.data.len() > MAX_CHUNK {
                    return error(ErrCode::Invalid, "log chunks are at most 1 MiB");
                }
                if let Some(out) = self.refuse_foreign(&lease) {
                    return out;
                }
                match hub
                    .store
                    .append_log(&lease, stream, a.offset, &a.data)
                    .await
                {
                    Ok(()) => {
                        hub.events.job_changed(lease.job_id);
                        Out::Ack(pb::Ack {})
                    }
                    Err(e) => store_error(e),
                }
            }
            In::Complete(c) => {
                let lease = match lease_from_pb(c.lease) {
                    Ok(l) => l,
                    Err(e) => return error(ErrCode::Invalid, e.0),
                };
                let mut done = match completion_from_pb(c.completion) {
                    Ok(d) => d,
                    Err(e) => return error(ErrCode::Invalid, e.0),
                };
                if self.unsandboxed {
                    done.warnings.push(format!(
                        "UNSAFE_FALLBACK: ran without the kernel sandbox on worker {}",
                        self.worker_id
                    ));
                }
                if let Some(out) = self.refuse_foreign(&lease) {
                    return out;
                }
                // The worker's clock says when it ended; a wild one is clamped to ours.
                let now = now_millis();
                let at = if (c.finished_at_ms - now).abs() < 60_000 {
                    c.finished_at_ms
                } else {
                    now
                };
                let out = match hub.store.complete(&lease, done, at).await {
                    Ok(job) => {
                        hub.events.job_changed(job.id);
                        Out::Completed(job_to_pb(&job))
                    }
                    Err(e) => store_error(e),
                };
                self.forget(lease.job_id);
                out
            }
            In::Release(r) => {
                let lease = match lease_from_pb(r.lease) {
                    Ok(l) => l,
                    Err(e) => return error(ErrCode::Invalid, e.0),
                };
                if let Some(out) = self.refuse_foreign(&lease) {
                    return out;
                }
                let out = match hub.store.release(&lease).await {
                    Ok(()) => {
                        hub.events.job_changed(lease.job_id);
                        // Someone else may take it now.
                        Out::Ack(pb::Ack {})
                    }
                    Err(e) => store_error(e),
                };
                self.forget(lease.job_id);
                out
            }
        }
    }

    /// Claims a job for the worker, holding the request open up to `wait` for one to arrive.
    /// The session's waiting claims are served together (see [`Session::dispatch`]).
    async fn claim(self: &Arc<Self>, wait: Duration) -> Out {
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(tx);
        self.claim_wanted.notify_one();
        let mut rx = rx;
        let answer = match tokio::time::timeout(wait.min(MAX_CLAIM_WAIT), &mut rx).await {
            Ok(a) => a.ok(),
            // Closed first, then read: a job handed out in the same instant is not lost.
            Err(_) => {
                rx.close();
                rx.try_recv().ok()
            }
        };
        match answer {
            Some(Ok(c)) => {
                tracing::info!(job = %c.job.id, worker = %self.worker_id, job_type = %c.job.job_type, "job assigned");
                Out::Assignment(pb::Assignment {
                    job: Some(job_to_pb(&c.job)),
                    lease: Some(lease_to_pb(&c.lease)),
                })
            }
            Some(Err(e)) => store_error(e),
            // Waited long enough (the sender is dropped unused at the deadline, or at shutdown).
            _ => Out::NoWork(pb::NoWork {}),
        }
    }

    /// Serves the session's waiting claims: one `claim_many` for all of them whenever a job may
    /// have arrived (a wake-up, or the poll behind it), handing jobs to the oldest waiters.
    /// A worker with ten idle slots costs one statement per wake-up, not ten.
    async fn dispatch(self: Arc<Self>) {
        let hub = self.hub.clone();
        let mut queued = hub.queued.clone();
        loop {
            // Waiters whose claim timed out are gone.
            let n = {
                let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
                w.retain(|tx| !tx.is_closed());
                w.len()
            };
            if n == 0 {
                tokio::select! {
                    _ = self.claim_wanted.notified() => continue,
                    _ = hub.shutdown.cancelled() => return,
                    _ = self.ended.cancelled() => return,
                }
            }
            queued.borrow_and_update();
            let claimed = hub
                .store
                .claim_many(
                    &self.worker_id,
                    Some(&self.job_types),
                    n,
                    hub.lease_ms,
                    now_millis(),
                )
                .await;
            let found = match claimed {
                Ok(jobs) => {
                    let found = jobs.len();
                    for c in jobs {
                        self.held
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(c.job.id);
                        hub.events.job_changed(c.job.id);
                        self.hand_out(c).await;
                    }
                    found
                }
                Err(e) => {
                    tracing::error!(worker = %self.worker_id, error = %e, "claim failed");
                    let first = self
                        .waiting
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .pop_front();
                    if let Some(tx) = first {
                        let _ = tx.send(Err(e));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            if found == n {
                continue;
            }
            tokio::select! {
                _ = queued.changed() => {}
                _ = self.claim_wanted.notified() => {}
                // Polling fallback: a wake-up from another replica may have been lost.
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = hub.shutdown.cancelled() => return,
                _ = self.ended.cancelled() => return,
            }
        }
    }

    /// Gives a claimed job to the oldest waiting claim; if every waiter has gone meanwhile, the
    /// job goes back to the queue at once (without counting the attempt).
    async fn hand_out(&self, c: warden_store::Claimed) {
        let mut c = Some(c);
        while let Some(job) = c.take() {
            let tx = self
                .waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front();
            let Some(tx) = tx else {
                c = Some(job);
                break;
            };
            // A waiter that gave up hands the job back for the next one.
            if let Err(back) = tx.send(Ok(job)) {
                c = back.ok();
            } else {
                return;
            }
        }
        if let Some(c) = c {
            self.forget(c.job.id);
            if let Err(e) = self.hub.store.release(&c.lease).await {
                tracing::warn!(job = %c.job.id, error = %e, "could not give back an unclaimed job");
            }
            self.hub.events.job_changed(c.job.id);
        }
    }

    /// Pushes cancellation of held jobs as soon as it is requested (on any replica).
    async fn push_cancellations(
        self: Arc<Self>,
        out: mpsc::Sender<Result<pb::ServerMessage, Status>>,
    ) {
        let mut events = self.hub.events.subscribe_all();
        loop {
            let id = tokio::select! {
                id = events.next() => match id { Some(id) => id, None => return },
                _ = out.closed() => return,
                _ = self.hub.shutdown.cancelled() => return,
            };
            let held = self
                .held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&id);
            if !held
                || self
                    .told
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains(&id)
            {
                continue;
            }
            match self.hub.store.get(id).await {
                Ok(job) if job.cancel_requested && !job.status.is_terminal() => {
                    self.told
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(id);
                    let msg = pb::ServerMessage {
                        request_id: 0,
                        body: Some(Out::Cancel(pb::CancelJob {
                            job_id: id.to_string(),
                        })),
                    };
                    if out.send(Ok(msg)).await.is_err() {
                        return;
                    }
                }
                _ => {}
            }
        }
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
            ?job_types, ?refused, isolation = reg.sandbox.as_ref().map(|s| s.isolation.as_str()),
            "worker connected"
        );
        let session = Arc::new(Session {
            hub: hub.clone(),
            unsandboxed,
            worker_id: reg.worker_id.clone(),
            job_types: job_types.clone(),
            held: Mutex::default(),
            told: Mutex::default(),
            waiting: Mutex::default(),
            claim_wanted: tokio::sync::Notify::new(),
            ended: tokio_util::sync::CancellationToken::new(),
        });
        let (tx, rx) = mpsc::channel::<Result<pb::ServerMessage, Status>>(256);
        let registered = pb::ServerMessage {
            request_id: first.request_id,
            body: Some(Out::Registered(pb::Registered {
                job_types,
                lease_ms: hub.lease_ms,
                refused,
            })),
        };
        tx.send(Ok(registered))
            .await
            .map_err(|_| Status::cancelled("worker went away"))?;
        tokio::spawn(session.clone().push_cancellations(tx.clone()));
        tokio::spawn(session.clone().dispatch());
        tokio::spawn(async move {
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
                let Some(body) = msg.body else {
                    let _ = tx
                        .send(Ok(pb::ServerMessage {
                            request_id: msg.request_id,
                            body: Some(error(ErrCode::Invalid, "empty message")),
                        }))
                        .await;
                    continue;
                };
                // Each request on its own: a claim held open must not delay a heartbeat.
                let (session, tx) = (session.clone(), tx.clone());
                tokio::spawn(async move {
                    let body = session.handle(body).await;
                    let _ = tx
                        .send(Ok(pb::ServerMessage {
                            request_id: msg.request_id,
                            body: Some(body),
                        }))
                        .await;
                });
            }
            session.ended.cancel();
            tracing::info!(worker = %session.worker_id, "worker session ended");
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn upload_artifacts(
        &self,
        req: Request<Streaming<pb::ArtifactUpload>>,
    ) -> Result<Response<pb::UploadArtifactsResponse>, Status> {
        self.auth.check_worker(&req)?;
        let mut inbound = req.into_inner();
        let hub = &self.hub;
        let (mut files, mut bytes) = (0u32, 0u64);
        let mut checked: Option<Lease> = None;
        let mut open: Option<(PathBuf, std::fs::File, u64)> = None;
        while let Some(msg) = inbound.message().await? {
            let lease = lease_from_pb(msg.lease).map_err(|e| Status::invalid_argument(e.0))?;
            if checked.as_ref() != Some(&lease) {
                // The upload belongs to the current attempt only.
                let job = hub
                    .store
                    .get(lease.job_id)
                    .await
                    .map_err(|e| Status::not_found(e.to_string()))?;
                if job.status != warden_core::JobStatus::Running
                    || job.lease_token != lease.token
                    || job.lease_owner.as_deref() != Some(lease.worker.as_str())
                {
                    return Err(Status::failed_precondition(format!(
                        "lease on job {} is no longer held",
                        lease.job_id
                    )));
                }
                checked = Some(lease.clone());
            }
            if msg.data.len() > MAX_CHUNK {
                return Err(Status::invalid_argument(
                    "artifact pieces are at most 1 MiB",
                ));
            }
            let rel = artifact_rel(&msg.path)?;
            let dir = hub.data.artifacts(lease.job_id);
            let path = dir.join(&rel);
            let same = matches!(&open, Some((p, _, _)) if *p == path);
            if !same {
                if msg.offset != 0 {
                    return Err(Status::invalid_argument(format!(
                        "artifact {:?} must start at offset 0",
                        msg.path
                    )));
                }
                let p = path.clone();
                let file = tokio::task::spawn_blocking(move || create_beneath(&dir, &rel))
                    .await
                    .map_err(|e| Status::internal(e.to_string()))??;
                files += 1;
                open = Some((p, file, 0));
            }
            let Some((_, file, written)) = open.as_mut() else {
                continue;
            };
            if msg.offset != *written {
                return Err(Status::invalid_argument(format!(
                    "artifact {:?}: piece at offset {} does not follow {}",
                    msg.path, msg.offset, written
                )));
            }
            use std::io::Write;
            file.write_all(&msg.data)
                .map_err(|e| Status::internal(format!("write artifact: {e}")))?;
            *written += msg.data.len() as u64;
            bytes += msg.data.len() as u64;
        }
        Ok(Response::new(pb::UploadArtifactsResponse { files, bytes }))
    }
}

fn artifact_rel(raw: &str) -> Result<PathBuf, Status> {
    let p = Path::new(raw);
    if raw.is_empty()
        || raw.contains('\0')
        || !p.components().all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(Status::invalid_argument(format!(
            "artifact path {:?} must be relative, without '..'",
            raw.chars().take(200).collect::<String>()
        )));
    }
    Ok(p.to_path_buf())
}

/// Creates (truncating) `rel` beneath `dir`, making parent directories, never following a link.
fn create_beneath(dir: &Path, rel: &Path) -> Result<std::fs::File, Status> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let io = |e: std::io::Error| Status::internal(format!("create artifact: {e}"));
    if let Some(parent) = rel.parent() {
        std::fs::create_dir_all(dir.join(parent)).map_err(io)?;
    } else {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let root = rustix::fs::open(
        dir,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io(e.into()))?;
    let fd = rustix::fs::openat2(
        &root,
        rel,
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(|e| io(e.into()))?;
    Ok(std::fs::File::from(fd))
}
