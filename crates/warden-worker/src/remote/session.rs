//! The one gRPC session a remote worker keeps open: connect (to each replica in turn),
//! register, route replies to their requests and pushed cancellations to the pool; reconnect
//! with backoff when it breaks.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::Endpoint;
use warden_proto::pb::server_message::Body as Out;
use warden_proto::pb::worker_message::Body as In;
use warden_proto::pb::worker_service_client::WorkerServiceClient;
use warden_proto::{MAX_MESSAGE, pb};

use super::link::{Conn, Inner, RemoteError};

pub(super) fn endpoint(url: &str, tls_ca: Option<&[u8]>) -> Result<Endpoint, RemoteError> {
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

/// Keeps one session open for as long as the coordinator lives.
pub(super) async fn session_loop(weak: std::sync::Weak<Inner>) {
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
