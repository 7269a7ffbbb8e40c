//! A remote worker's [`Coordinator`]: the control plane, over one gRPC session.
//!
//! The session is kept open by a background task that reconnects with exponential backoff
//! (to the same URL, behind which any replica may answer). Requests are matched to replies by
//! id. What a request does when the session breaks depends on what is at stake:
//! - a claim waits for the next session (the pool stops waiting at shutdown);
//! - log chunks, artifacts and the completion are retried on every new session until the lease
//!   would have expired, so a brief outage of the control plane loses nothing; a log chunk
//!   whose first send was applied (its reply lost) is recognised by the stream's length;
//! - a heartbeat is not retried: the next one is due soon, and the job keeps running.
//!
//! After a lease's worth of silence the job is the reaper's: the next heartbeat that gets
//! through answers `lease lost`, the pool kills the job, and a late completion is refused.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use warden_core::JobId;
use warden_proto::pb::server_message::Body as Out;
use warden_proto::pb::worker_error::Code as ErrCode;
use warden_proto::pb::worker_message::Body as In;
use warden_proto::{
    MAX_CHUNK, assignment_from_pb, completion_to_pb, job_from_pb, lease_to_pb, pb, stream_to_pb,
};
use warden_store::{
    Claimed, Completion, HeartbeatReply, JobRecord, Lease, LogStream, Millis, StoreError,
};

mod link;
mod session;
mod upload;

use self::link::Inner;
pub use self::link::{Refused, RemoteError, RemoteOptions};
use self::session::{endpoint, session_loop};
use self::upload::{UploadError, upload_artifacts};
use crate::{Coordinator, DataDir};

/// The control plane as a [`Coordinator`]. Cheap to clone.
#[derive(Clone)]
pub struct RemoteCoordinator {
    inner: Arc<Inner>,
}

/// Why a call did not get an answer.
enum CallError {
    /// No session within the call's deadline, or it broke and the deadline passed.
    Unreachable,
}

impl RemoteCoordinator {
    /// Starts the session task. `cancels` receives the jobs the server asks to stop.
    pub fn start(
        opts: RemoteOptions,
        data: DataDir,
    ) -> Result<(RemoteCoordinator, mpsc::UnboundedReceiver<JobId>), RemoteError> {
        let mut endpoints = Vec::new();
        for url in opts
            .server
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
        {
            endpoints.push((url.to_string(), endpoint(url, opts.tls_ca.as_deref())?));
        }
        if endpoints.is_empty() {
            return Err(RemoteError::Url(opts.server.clone(), "no URL given".into()));
        }
        let (cancels, cancel_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            opts,
            endpoints,
            next_id: AtomicU64::new(1),
            conn: watch::Sender::new(None),
            registered: watch::Sender::new(None),
            refused: watch::Sender::new(None),
            pending: Mutex::default(),
            cancels,
            data,
            secrets: Mutex::default(),
        });
        tokio::spawn(session_loop(Arc::downgrade(&inner)));
        Ok((RemoteCoordinator { inner }, cancel_rx))
    }

    /// Waits for the first registration and returns what the server granted, or why a control
    /// plane refused this worker (a wrong token, no sandbox): retrying would not change that.
    /// (Once registered, refusals are retried instead: a token may be rotated on the server.)
    pub async fn registered(&self) -> Result<pb::Registered, Refused> {
        let mut rx = self.inner.registered.subscribe();
        let mut refused = self.inner.refused.subscribe();
        loop {
            if let Some(r) = rx.borrow_and_update().clone() {
                return Ok(r);
            }
            if let Some(why) = refused.borrow_and_update().clone() {
                return Err(Refused(why));
            }
            tokio::select! {
                _ = rx.changed() => {}
                _ = refused.changed() => {}
            }
        }
    }

    fn lease_ms(&self) -> i64 {
        self.inner
            .registered
            .borrow()
            .as_ref()
            .map(|r| r.lease_ms)
            .unwrap_or(30_000)
    }

    /// Uploads the job's artifacts, heartbeating its lease meanwhile: a gigabyte can take
    /// longer than a lease to reach the control plane (and its bucket), and a job that ended
    /// well must not be taken back for it. Failed uploads are retried for one lease.
    async fn upload_under_lease(&self, lease: &Lease) -> Result<(), UploadError> {
        let lease_ms = self.lease_ms();
        let retry_until = Instant::now() + Duration::from_millis(lease_ms as u64);
        let upload = upload_artifacts(&self.inner, lease, retry_until);
        tokio::pin!(upload);
        let every = Duration::from_millis((lease_ms / 3).max(10) as u64);
        let mut beat = tokio::time::interval_at(Instant::now() + every, every);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                done = &mut upload => return done,
                _ = beat.tick() => {
                    match self.heartbeat(lease, lease_ms, warden_store::now_millis()).await {
                        Ok(_) => {}
                        Err(StoreError::LeaseLost(_)) => return Err(UploadError::LeaseLost),
                        Err(e) => tracing::warn!(
                            job = %lease.job_id, error = %e,
                            "heartbeat during the artifact upload failed"
                        ),
                    }
                }
            }
        }
    }

    /// Sends `body` and waits for its reply. With a deadline, a broken session is waited out
    /// and the request re-sent until then; without, it waits for a session indefinitely but
    /// gives up on the first break. `tries` counts the sends.
    async fn call(
        &self,
        body: In,
        deadline: Option<Instant>,
        reply_within: Duration,
        tries: &mut u32,
    ) -> Result<Out, CallError> {
        let inner = &self.inner;
        let mut conn_rx = inner.conn.subscribe();
        loop {
            let conn = loop {
                if let Some(c) = conn_rx.borrow_and_update().clone() {
                    break c;
                }
                let wait = conn_rx.changed();
                match deadline {
                    Some(d) => match tokio::time::timeout_at(d, wait).await {
                        Ok(Ok(())) => {}
                        _ => return Err(CallError::Unreachable),
                    },
                    None => {
                        if wait.await.is_err() {
                            return Err(CallError::Unreachable);
                        }
                    }
                }
            };
            let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            inner
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, tx);
            *tries += 1;
            let sent = conn
                .tx
                .send(pb::WorkerMessage {
                    request_id: id,
                    body: Some(body.clone()),
                })
                .await;
            let answer = match sent {
                Ok(()) => tokio::time::timeout(reply_within, rx)
                    .await
                    .ok()
                    .and_then(Result::ok),
                Err(_) => None,
            };
            inner
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            match answer {
                // The store behind the control plane is down (a database restart): wait it out
                // like a broken session.
                Some(Out::Error(e))
                    if e.code == ErrCode::Unavailable as i32
                        && deadline.is_some_and(|d| Instant::now() < d) =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Some(out) => return Ok(out),
                // The session broke (or stalled) before the reply.
                None => {
                    if deadline.is_none_or(|d| Instant::now() >= d) {
                        return Err(CallError::Unreachable);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn unexpected(what: &str, out: Out) -> StoreError {
        match out {
            Out::Error(e) => StoreError::Backend(format!("{what}: {}", e.message)),
            other => StoreError::Backend(format!("{what}: unexpected reply {other:?}")),
        }
    }

    fn unreachable(what: &str) -> StoreError {
        StoreError::Backend(format!("{what}: the control plane is unreachable"))
    }
}

fn lease_error(lease: &Lease, e: &pb::WorkerError) -> Option<StoreError> {
    (e.code == ErrCode::LeaseLost as i32).then_some(StoreError::LeaseLost(lease.job_id))
}

#[async_trait]
impl Coordinator for RemoteCoordinator {
    fn take_secrets(&self, job: JobId) -> Option<Result<crate::secrets::JobSecrets, String>> {
        self.inner
            .secrets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&job)
    }

    async fn claim(
        &self,
        _worker: &str,
        _job_types: Option<&[String]>,
        _lease_ms: i64,
        _now: Millis,
    ) -> Result<Option<Claimed>, StoreError> {
        // The server holds the claim open up to 20 s for a job to arrive.
        let wait = pb::ClaimRequest { wait_ms: 20_000 };
        let mut tries = 0;
        match self
            .call(In::Claim(wait), None, Duration::from_secs(30), &mut tries)
            .await
        {
            Ok(Out::Assignment(mut a)) => {
                let sent = if a.secrets_withheld {
                    Some(Err(
                        "the control plane sends secrets only over TLS or to a loopback \
                              peer, and this connection is neither"
                            .to_string(),
                    ))
                } else if a.secret_files.is_empty() && a.secret_env.is_empty() {
                    None
                } else {
                    let files = std::mem::take(&mut a.secret_files)
                        .into_iter()
                        .map(|f| (f.name, f.value))
                        .collect();
                    let env = std::mem::take(&mut a.secret_env)
                        .into_iter()
                        .map(|e| (e.var, e.name, e.value))
                        .collect();
                    Some(crate::secrets::JobSecrets::from_wire(files, env))
                };
                let bundle = std::mem::take(&mut a.tool_bundle);
                let claimed = assignment_from_pb(a)
                    .map_err(|e| StoreError::Backend(format!("bad assignment: {e}")))?;
                if !bundle.is_empty() {
                    // Kept by its SHA-256; the job finds it there, or ends
                    // `tool_bundle_unavailable` when what came is not what it chose.
                    let bundles =
                        crate::tool_bundles::ToolBundles::new(self.inner.data.tool_bundles());
                    if let Err(e) = bundles.store(&bundle) {
                        tracing::error!(job = %claimed.job.id, error = %e, "could not keep the job's tool bundle");
                    }
                }
                if let Some(sent) = sent {
                    self.inner
                        .secrets
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(claimed.job.id, sent);
                }
                Ok(Some(claimed))
            }
            Ok(Out::NoWork(_)) => Ok(None),
            Ok(other) => Err(Self::unexpected("claim", other)),
            Err(CallError::Unreachable) => Err(Self::unreachable("claim")),
        }
    }

    async fn heartbeat(
        &self,
        lease: &Lease,
        _lease_ms: i64,
        _now: Millis,
    ) -> Result<HeartbeatReply, StoreError> {
        let body = In::Heartbeat(pb::HeartbeatRequest {
            lease: Some(lease_to_pb(lease)),
        });
        let within = Duration::from_millis((self.lease_ms() / 3).max(1000) as u64);
        let mut tries = 0;
        match self
            .call(body, Some(Instant::now()), within, &mut tries)
            .await
        {
            Ok(Out::Heartbeat(h)) => Ok(HeartbeatReply {
                cancel_requested: h.cancel_requested,
            }),
            Ok(Out::Error(e)) if lease_error(lease, &e).is_some() => {
                Err(StoreError::LeaseLost(lease.job_id))
            }
            Ok(other) => Err(Self::unexpected("heartbeat", other)),
            Err(CallError::Unreachable) => Err(Self::unreachable("heartbeat")),
        }
    }

    async fn append_tests(
        &self,
        lease: &Lease,
        first: u32,
        tests: Vec<warden_store::TestResult>,
    ) -> Result<(), StoreError> {
        let deadline = Instant::now() + Duration::from_millis(self.lease_ms() as u64);
        // Pieces well under a message's cap: a record is at most a few KiB.
        let mut at = 0usize;
        while at < tests.len() {
            let mut bytes = 0usize;
            let mut end = at;
            while end < tests.len() && (end == at || bytes < MAX_CHUNK / 2) {
                let t = &tests[end];
                bytes += 64
                    + t.suite.len()
                    + t.classname.len()
                    + t.name.len()
                    + t.message.as_ref().map_or(0, String::len);
                end += 1;
            }
            let body = In::AppendTests(pb::AppendTestsRequest {
                lease: Some(lease_to_pb(lease)),
                first: first + at as u32,
                tests: tests[at..end]
                    .iter()
                    .map(warden_proto::test_to_pb)
                    .collect(),
            });
            let mut tries = 0;
            match self
                .call(body, Some(deadline), Duration::from_secs(10), &mut tries)
                .await
            {
                Ok(Out::Ack(_)) => {}
                Ok(Out::Error(e)) if lease_error(lease, &e).is_some() => {
                    return Err(StoreError::LeaseLost(lease.job_id));
                }
                Ok(other) => return Err(Self::unexpected("append tests", other)),
                Err(CallError::Unreachable) => return Err(Self::unreachable("append tests")),
            }
            at = end;
        }
        Ok(())
    }

    async fn append_log(
        &self,
        lease: &Lease,
        stream: LogStream,
        offset: u64,
        data: &[u8],
    ) -> Result<(), StoreError> {
        let deadline = Instant::now() + Duration::from_millis(self.lease_ms() as u64);
        for (i, piece) in data.chunks(MAX_CHUNK).enumerate() {
            let at = offset + (i * MAX_CHUNK) as u64;
            let body = In::AppendLog(pb::AppendLogRequest {
                lease: Some(lease_to_pb(lease)),
                stream: stream_to_pb(stream) as i32,
                offset: at,
                data: piece.to_vec(),
            });
            let mut tries = 0;
            match self
                .call(body, Some(deadline), Duration::from_secs(10), &mut tries)
                .await
            {
                Ok(Out::Ack(_)) => {}
                Ok(Out::Error(e)) if lease_error(lease, &e).is_some() => {
                    return Err(StoreError::LeaseLost(lease.job_id));
                }
                // Re-sent after a lost reply: the first send was applied.
                Ok(Out::Error(e))
                    if e.code == ErrCode::LogOffset as i32
                        && tries > 1
                        && e.log_len >= at + piece.len() as u64 => {}
                Ok(Out::Error(e)) if e.code == ErrCode::LogOffset as i32 => {
                    return Err(StoreError::LogOffset {
                        job: lease.job_id,
                        offset: at,
                        len: e.log_len,
                    });
                }
                Ok(other) => return Err(Self::unexpected("append log", other)),
                Err(CallError::Unreachable) => return Err(Self::unreachable("append log")),
            }
        }
        Ok(())
    }

    async fn complete(
        &self,
        lease: &Lease,
        mut done: Completion,
        now: Millis,
    ) -> Result<JobRecord, StoreError> {
        if let Err(e) = self.upload_under_lease(lease).await {
            if matches!(e, UploadError::LeaseLost) {
                return Err(StoreError::LeaseLost(lease.job_id));
            }
            tracing::error!(job = %lease.job_id, error = %e, "artifact upload failed");
            done.warnings.push("ARTIFACT_UPLOAD_FAILED".into());
        }
        // From the upload's end: it may have taken longer than a lease.
        let deadline = Instant::now() + Duration::from_millis(self.lease_ms() as u64);
        let body = In::Complete(pb::CompleteRequest {
            lease: Some(lease_to_pb(lease)),
            completion: Some(completion_to_pb(&done)),
            finished_at_ms: now,
        });
        let mut tries = 0;
        let result = match self
            .call(body, Some(deadline), Duration::from_secs(10), &mut tries)
            .await
        {
            Ok(Out::Completed(job)) => job_from_pb(job, None)
                .map_err(|e| StoreError::Backend(format!("bad completion reply: {e}"))),
            Ok(Out::Error(e)) if lease_error(lease, &e).is_some() => {
                Err(StoreError::LeaseLost(lease.job_id))
            }
            Ok(other) => Err(Self::unexpected("complete", other)),
            Err(CallError::Unreachable) => Err(Self::unreachable("complete")),
        };
        // Delivered (or no longer ours): the local copy of the artifacts has served.
        if !matches!(result, Err(StoreError::Backend(_))) {
            let dir = self.inner.data.artifacts(lease.job_id);
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        }
        result
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let body = In::Release(pb::ReleaseRequest {
            lease: Some(lease_to_pb(lease)),
        });
        let mut tries = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        match self
            .call(body, Some(deadline), Duration::from_secs(5), &mut tries)
            .await
        {
            Ok(Out::Ack(_)) => Ok(()),
            Ok(Out::Error(e)) if lease_error(lease, &e).is_some() => {
                Err(StoreError::LeaseLost(lease.job_id))
            }
            Ok(other) => Err(Self::unexpected("release", other)),
            Err(CallError::Unreachable) => Err(Self::unreachable("release")),
        }
    }
}
