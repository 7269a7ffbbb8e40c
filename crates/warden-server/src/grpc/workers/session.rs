//! One registered worker's session: its requests, its held-open claims, and the
//! cancellations pushed to it.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;
use warden_core::{Config, JobId};
use warden_proto::pb::server_message::Body as Out;
use warden_proto::pb::worker_error::Code as ErrCode;
use warden_proto::pb::worker_message::Body as In;
use warden_proto::{
    MAX_CHUNK, completion_from_pb, job_to_pb, lease_from_pb, lease_to_pb, pb, stream_from_pb,
};
use warden_store::{Lease, StoreError, now_millis};

use super::hub::{WorkerHub, error, store_error};

/// Longest a claim is held open.
const MAX_CLAIM_WAIT: Duration = Duration::from_secs(30);

/// One registered worker.
pub(super) struct Session {
    pub hub: Arc<WorkerHub>,
    /// The worker runs jobs without the kernel sandbox (allowed by `unsafe_fallback`).
    pub unsandboxed: bool,
    pub worker_id: String,
    pub job_types: Vec<String>,
    /// The job types it asked for and may not run here, with why.
    pub refused: Vec<String>,
    /// Jobs this session handed out or acted on, watched for cancellation.
    pub held: Mutex<HashSet<JobId>>,
    /// Jobs whose cancellation was already pushed.
    pub told: Mutex<HashSet<JobId>>,
    /// Claims held open, oldest first; [`Session::dispatch`] answers them.
    pub waiting: Mutex<VecDeque<oneshot::Sender<Result<warden_store::Claimed, StoreError>>>>,
    pub claim_wanted: tokio::sync::Notify,
    /// Cancelled when the worker's stream ends.
    pub ended: tokio_util::sync::CancellationToken,
    /// The connection may carry secrets: TLS, or a peer on loopback.
    pub secure: bool,
    pub peer: Option<std::net::SocketAddr>,
}

impl Session {
    /// Which of the worker's job types it may run here, and why the others are refused.
    pub(super) fn eligible(config: &Config, reg: &pb::Register) -> (Vec<String>, Vec<String>) {
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

    pub(super) async fn handle(self: &Arc<Self>, body: In) -> Out {
        match body {
            In::Register(_) => error(ErrCode::Invalid, "already registered"),
            In::Claim(c) => self.claim(Duration::from_millis(c.wait_ms as u64)).await,
            In::Heartbeat(h) => self.heartbeat(h).await,
            In::AppendLog(a) => self.append_log(a).await,
            In::AppendTests(a) => self.append_tests(a).await,
            In::Complete(c) => self.complete(c).await,
            In::Release(r) => self.release(r).await,
        }
    }

    /// The lease a request acts on, when it is well-formed and this worker's; otherwise the
    /// reply to send (built once per request, so its size does not matter).
    #[allow(clippy::result_large_err)]
    fn own_lease(&self, lease: Option<pb::Lease>) -> Result<Lease, Out> {
        let lease = lease_from_pb(lease).map_err(|e| error(ErrCode::Invalid, e.0))?;
        match self.refuse_foreign(&lease) {
            Some(out) => Err(out),
            None => Ok(lease),
        }
    }

    async fn heartbeat(&self, h: pb::HeartbeatRequest) -> Out {
        let lease = match self.own_lease(h.lease) {
            Ok(l) => l,
            Err(out) => return out,
        };
        let hub = &self.hub;
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

    async fn append_log(&self, a: pb::AppendLogRequest) -> Out {
        let stream = match stream_from_pb(a.stream) {
            Ok(s) => s,
            Err(e) => return error(ErrCode::Invalid, e.0),
        };
        if a.data.len() > MAX_CHUNK {
            return error(ErrCode::Invalid, "log chunks are at most 1 MiB");
        }
        let lease = match self.own_lease(a.lease) {
            Ok(l) => l,
            Err(out) => return out,
        };
        match self
            .hub
            .store
            .append_log(&lease, stream, a.offset, &a.data)
            .await
        {
            Ok(()) => {
                self.hub
                    .events
                    .log_appended(lease.job_id, stream, a.offset, &a.data);
                Out::Ack(pb::Ack {})
            }
            Err(e) => store_error(e),
        }
    }

    async fn append_tests(&self, a: pb::AppendTestsRequest) -> Out {
        let tests = match a
            .tests
            .into_iter()
            .map(warden_proto::test_from_pb)
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(t) => t,
            Err(e) => return error(ErrCode::Invalid, e.0),
        };
        let lease = match self.own_lease(a.lease) {
            Ok(l) => l,
            Err(out) => return out,
        };
        match self.hub.store.append_tests(&lease, a.first, tests).await {
            Ok(()) => Out::Ack(pb::Ack {}),
            Err(e) => store_error(e),
        }
    }

    async fn complete(&self, c: pb::CompleteRequest) -> Out {
        let mut done = match completion_from_pb(c.completion) {
            Ok(d) => d,
            Err(e) => return error(ErrCode::Invalid, e.0),
        };
        let lease = match self.own_lease(c.lease) {
            Ok(l) => l,
            Err(out) => return out,
        };
        if self.unsandboxed {
            done.warnings.push(format!(
                "UNSAFE_FALLBACK: ran without the kernel sandbox on worker {}",
                self.worker_id
            ));
        }
        // The worker's clock says when it ended; a wild one is clamped to ours.
        let now = now_millis();
        let at = if (c.finished_at_ms - now).abs() < 60_000 {
            c.finished_at_ms
        } else {
            now
        };
        let out = match self.hub.store.complete(&lease, done, at).await {
            Ok(job) => {
                self.hub.events.job_changed(job.id);
                Out::Completed(job_to_pb(&job))
            }
            Err(e) => store_error(e),
        };
        self.forget(lease.job_id);
        out
    }

    async fn release(&self, r: pb::ReleaseRequest) -> Out {
        let lease = match self.own_lease(r.lease) {
            Ok(l) => l,
            Err(out) => return out,
        };
        let out = match self.hub.store.release(&lease).await {
            Ok(()) => {
                // Someone else may take it now.
                self.hub.events.logs_reset(lease.job_id);
                Out::Ack(pb::Ack {})
            }
            Err(e) => store_error(e),
        };
        self.forget(lease.job_id);
        out
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
                let mut assignment = pb::Assignment {
                    job: Some(job_to_pb(&c.job)),
                    lease: Some(lease_to_pb(&c.lease)),
                    ..Default::default()
                };
                self.attach_secrets(&c.job, &mut assignment).await;
                self.attach_tool_bundle(&c.job, &mut assignment).await;
                Out::Assignment(assignment)
            }
            Some(Err(e)) => store_error(e),
            // Waited long enough (the sender is dropped unused at the deadline, or at shutdown).
            _ => Out::NoWork(pb::NoWork {}),
        }
    }

    /// The bytes of the tool bundle the job's submission chose. Without them (the bundle has
    /// left `tool_bundles:` since), the worker ends the job `error: tool_bundle_unavailable`.
    async fn attach_tool_bundle(&self, job: &warden_store::JobRecord, a: &mut pb::Assignment) {
        let (Some(chosen), Some(dir)) = (&job.tool_bundle, self.hub.config.tool_bundles.clone())
        else {
            return;
        };
        let found = warden_worker::tool_bundles::ToolBundles::new(dir)
            .find_async(chosen.sha256.clone())
            .await;
        match found {
            Ok(Some((_, bytes))) => a.tool_bundle = bytes,
            Ok(None) => {
                tracing::error!(job = %job.id, sha256 = %chosen.sha256, "tool bundle no longer in tool_bundles");
            }
            Err(e) => tracing::error!(job = %job.id, error = %e, "tool_bundles unreadable"),
        }
    }

    /// The job type's secrets, on a connection that may carry them (else marked withheld, and
    /// the worker ends the job `error: secret_unavailable`); each one sent is audited.
    async fn attach_secrets(&self, job: &warden_store::JobRecord, a: &mut pb::Assignment) {
        let Some(job_type) = self.hub.config.job_type(&job.job_type) else {
            return;
        };
        if job_type.secrets.is_empty() && job_type.secret_env.is_empty() {
            return;
        }
        if !self.secure {
            tracing::warn!(job = %job.id, worker = %self.worker_id, peer = ?self.peer,
                "secrets withheld: plaintext connection off loopback");
            a.secrets_withheld = true;
            return;
        }
        let (files, env) = match self.hub.secrets.wire_grant(job_type) {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(job = %job.id, error = %e, "secrets withheld");
                a.secrets_withheld = true;
                return;
            }
        };
        let mut names: Vec<String> = files.iter().map(|f| f.0.clone()).collect();
        names.extend(env.iter().map(|e| e.1.clone()));
        names.sort();
        names.dedup();
        a.secret_files = files
            .into_iter()
            .map(|(name, value)| pb::SecretFile { name, value })
            .collect();
        a.secret_env = env
            .into_iter()
            .map(|(var, name, value)| pb::SecretEnv { var, name, value })
            .collect();
        let entries = names
            .into_iter()
            .map(|name| warden_store::AuditEntry {
                at: warden_store::now_millis(),
                action: "secret.use".into(),
                tenant: Some(job.tenant.clone()),
                client: self.peer.map(|p| p.to_string()),
                target: Some(name),
                outcome: "ok".into(),
                detail: Some(format!(
                    "job {} ({}) on worker {}",
                    job.id, job.job_type, self.worker_id
                )),
                ..Default::default()
            })
            .collect();
        if let Err(e) = self.hub.store.append_audit(entries).await {
            tracing::error!(job = %job.id, error = %e, "could not audit the secrets sent");
        }
    }

    /// Serves the session's waiting claims: one `claim_many` for all of them whenever a job may
    /// have arrived (a wake-up, or the poll behind it), handing jobs to the oldest waiters.
    /// A worker with ten idle slots costs one statement per wake-up, not ten.
    pub(super) async fn dispatch(self: Arc<Self>) {
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
                        hub.events.logs_reset(c.job.id);
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
    pub(super) async fn push_cancellations(
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
