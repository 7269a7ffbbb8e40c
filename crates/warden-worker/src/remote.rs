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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use warden_core::JobId;
use warden_proto::pb::server_message::Body as Out;
use warden_proto::pb::worker_error::Code as ErrCode;
use warden_proto::pb::worker_message::Body as In;
use warden_proto::pb::worker_service_client::WorkerServiceClient;
use warden_proto::{
    MAX_CHUNK, MAX_MESSAGE, assignment_from_pb, completion_to_pb, job_from_pb, lease_to_pb, pb,
    stream_to_pb,
};
use warden_store::{
    Claimed, Completion, HeartbeatReply, JobRecord, Lease, LogStream, Millis, StoreError,
};

use crate::{Coordinator, DataDir};

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
struct Conn {
    tx: mpsc::Sender<pb::WorkerMessage>,
    channel: Channel,
}

struct Inner {
    opts: RemoteOptions,
    endpoints: Vec<(String, Endpoint)>,
    next_id: AtomicU64,
    conn: watch::Sender<Option<Conn>>,
    registered: watch::Sender<Option<pb::Registered>>,
    /// Why the control plane refused this worker outright (token, sandbox, registration).
    refused: watch::Sender<Option<String>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Out>>>,
    cancels: mpsc::UnboundedSender<JobId>,
    data: DataDir,
}

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
        });
        tokio::spawn(session_loop(Arc::downgrade(&inner)));
        Ok((RemoteCoordinator { inner }, cancel_rx))
    }

    /// Waits for the first registration and returns what the server granted, or why a control
    /// plane refused this worker (a wrong token, no sandbox): retrying would not change that.
    /// (Once registered, refusals are retried instead: a token may be rotated on the server.)
    pub async fn registered(&self) -> Result<pb::Registered, String> {
        let mut rx = self.inner.registered.subscribe();
        let mut refused = self.inner.refused.subscribe();
        loop {
            if let Some(r) = rx.borrow_and_update().clone() {
                return Ok(r);
            }
            if let Some(why) = refused.borrow_and_update().clone() {
                return Err(why);
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

    /// Sends the job's artifact directory, file by file, under its lease. Symbolic links and
    /// special files are not sent (they are listed in the returned warnings).
    async fn upload_artifacts(&self, lease: &Lease, deadline: Instant) -> Result<(), String> {
        let dir = self.inner.data.artifacts(lease.job_id);
        let files = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || regular_files(&dir))
                .await
                .map_err(|e| e.to_string())?
        };
        if files.is_empty() {
            return Ok(());
        }
        loop {
            let conn = self.inner.conn.borrow().clone();
            let result = match conn {
                Some(conn) => self.upload_once(conn.channel, lease, &dir, &files).await,
                None => Err("not connected".to_string()),
            };
            match result {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(e) if e.contains("no longer held") => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    async fn upload_once(
        &self,
        channel: Channel,
        lease: &Lease,
        dir: &Path,
        files: &[PathBuf],
    ) -> Result<(), String> {
        let (tx, rx) = mpsc::channel::<pb::ArtifactUpload>(4);
        let (dir, files, pb_lease) = (dir.to_path_buf(), files.to_vec(), lease_to_pb(lease));
        let reader = tokio::task::spawn_blocking(move || -> Result<(), String> {
            use std::io::Read;
            for rel in files {
                let mut f = std::fs::File::open(dir.join(&rel)).map_err(|e| e.to_string())?;
                let mut offset = 0u64;
                let mut buf = vec![0u8; MAX_CHUNK];
                loop {
                    let n = f.read(&mut buf).map_err(|e| e.to_string())?;
                    if n == 0 && offset > 0 {
                        break;
                    }
                    let msg = pb::ArtifactUpload {
                        lease: Some(pb_lease.clone()),
                        path: rel.to_string_lossy().into_owned(),
                        offset,
                        data: buf[..n].to_vec(),
                    };
                    offset += n as u64;
                    if tx.blocking_send(msg).is_err() {
                        return Err("upload stream closed".into());
                    }
                    if n == 0 {
                        break;
                    }
                }
            }
            Ok(())
        });
        let mut client = WorkerServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        self.inner.authorize(&mut req);
        let sent = client.upload_artifacts(req).await;
        let read = reader.await.map_err(|e| e.to_string())?;
        match sent {
            Ok(_) => read,
            Err(s) => Err(s.message().to_string()),
        }
    }
}

fn endpoint(url: &str, tls_ca: Option<&[u8]>) -> Result<Endpoint, RemoteError> {
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| RemoteError::Url(url.to_string(), e.to_string()))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        // A control plane that vanished (host gone, kill -9 behind a proxy) is noticed in
        // seconds, and the session moves on.
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    if url.starts_with("https://") {
        let ca = tls_ca.ok_or(RemoteError::NeedsCa)?;
        endpoint = endpoint
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
            )
            .map_err(|e| RemoteError::Tls(e.to_string()))?;
    } else if !url.starts_with("http://") {
        return Err(RemoteError::Url(
            url.to_string(),
            "use http://host:port or https://host:port".into(),
        ));
    }
    Ok(endpoint)
}

impl Inner {
    fn authorize<T>(&self, req: &mut tonic::Request<T>) {
        if let Ok(v) = format!("Bearer {}", self.opts.token).parse() {
            req.metadata_mut().insert("authorization", v);
        }
    }

    fn fail_pending(&self) {
        // Dropping the senders wakes every waiter with "session broke".
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

/// The files to upload (relative paths), regular files only, `artifact.json` last.
fn regular_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            let path = e.path();
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file()
                && let Ok(rel) = path.strip_prefix(root)
                && !rel.to_string_lossy().starts_with(".artifact.json.")
            {
                out.push(rel.to_path_buf());
            }
        }
    }
    out.sort_by_key(|p| (p == Path::new("artifact.json"), p.clone()));
    out
}

/// Keeps one session open for as long as the coordinator lives.
async fn session_loop(weak: std::sync::Weak<Inner>) {
    let mut backoff = Duration::from_millis(100);
    let mut next = 0usize;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let started = Instant::now();
        let (url, endpoint) = inner.endpoints[next % inner.endpoints.len()].clone();
        next += 1;
        match run_session(&inner, &url, endpoint).await {
            Ok(()) => {
                tracing::warn!(server = %url, "session with the control plane ended; reconnecting")
            }
            Err(SessionError::Refused(why)) if inner.registered.borrow().is_none() => {
                inner.refused.send_replace(Some(format!("{url}: {why}")));
            }
            Err(SessionError::Refused(e) | SessionError::Failed(e)) => {
                tracing::warn!(server = %url, error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot reach the control plane")
            }
        }
        inner.conn.send_replace(None);
        inner.fail_pending();
        // A session that lasted a while was healthy: start the backoff over.
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        drop(inner);
        // Jitter, so that many workers do not reconnect in lockstep.
        let jitter = Duration::from_millis(rand_below(backoff.as_millis() as u64 / 2 + 1));
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

fn rand_below(n: u64) -> u64 {
    let x = uuid::Uuid::now_v7().as_u128() as u64;
    x % n.max(1)
}

enum SessionError {
    /// The control plane said no to this worker (token, sandbox, registration).
    Refused(String),
    /// The network or the control plane failed.
    Failed(String),
}

impl From<String> for SessionError {
    fn from(s: String) -> SessionError {
        SessionError::Failed(s)
    }
}

fn status_error(s: tonic::Status) -> SessionError {
    use tonic::Code;
    let msg = format!("{:?}: {}", s.code(), s.message());
    match s.code() {
        Code::Unauthenticated
        | Code::PermissionDenied
        | Code::FailedPrecondition
        | Code::InvalidArgument => SessionError::Refused(msg),
        _ => SessionError::Failed(msg),
    }
}

async fn run_session(
    inner: &Arc<Inner>,
    url: &str,
    endpoint: Endpoint,
) -> Result<(), SessionError> {
    let channel = endpoint.connect().await.map_err(|e| {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg = format!("{msg}: {s}");
            src = s.source();
        }
        msg
    })?;
    let mut client = WorkerServiceClient::new(channel.clone())
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let (tx, rx) = mpsc::channel::<pb::WorkerMessage>(256);
    let o = &inner.opts;
    tx.send(pb::WorkerMessage {
        request_id: 0,
        body: Some(In::Register(pb::Register {
            worker_id: o.worker_id.clone(),
            slots: o.slots,
            labels: o.labels.clone(),
            job_types: o.job_types.clone(),
            sandbox: Some(o.sandbox.clone()),
            version: env!("CARGO_PKG_VERSION").to_string(),
        })),
    })
    .await
    .map_err(|_| "session closed".to_string())?;
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    inner.authorize(&mut req);
    let mut inbound = client
        .session(req)
        .await
        .map_err(status_error)?
        .into_inner();
    let first = inbound.message().await.map_err(status_error)?;
    let Some(pb::ServerMessage {
        body: Some(Out::Registered(reg)),
        ..
    }) = first
    else {
        return Err(SessionError::Failed(
            "the server did not answer Register".into(),
        ));
    };
    for r in &reg.refused {
        tracing::warn!(job_type = %r, "the control plane will not give this worker this job type");
    }
    tracing::info!(server = %url, job_types = ?reg.job_types, lease_ms = reg.lease_ms, "registered with the control plane");
    inner.registered.send_replace(Some(reg));
    inner.conn.send_replace(Some(Conn { tx, channel }));
    loop {
        match inbound.message().await {
            Ok(Some(m)) => match m.body {
                Some(Out::Cancel(c)) => {
                    if let Ok(id) = c.job_id.parse() {
                        let _ = inner.cancels.send(id);
                    }
                }
                Some(body) => {
                    let waiter = inner
                        .pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&m.request_id);
                    if let Some(w) = waiter {
                        let _ = w.send(body);
                    }
                }
                None => {}
            },
            Ok(None) => return Ok(()),
            Err(s) => {
                return Err(SessionError::Failed(format!(
                    "{:?}: {}",
                    s.code(),
                    s.message()
                )));
            }
        }
    }
}

fn lease_error(lease: &Lease, e: &pb::WorkerError) -> Option<StoreError> {
    (e.code == ErrCode::LeaseLost as i32).then_some(StoreError::LeaseLost(lease.job_id))
}

#[async_trait]
impl Coordinator for RemoteCoordinator {
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
            Ok(Out::Assignment(a)) => assignment_from_pb(a)
                .map(Some)
                .map_err(|e| StoreError::Backend(format!("bad assignment: {e}"))),
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
        let deadline = Instant::now() + Duration::from_millis(self.lease_ms() as u64);
        if let Err(e) = self.upload_artifacts(lease, deadline).await {
            if e.contains("no longer held") {
                return Err(StoreError::LeaseLost(lease.job_id));
            }
            tracing::error!(job = %lease.job_id, error = %e, "artifact upload failed");
            done.warnings.push("ARTIFACT_UPLOAD_FAILED".into());
        }
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
