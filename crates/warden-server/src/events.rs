//! Events to NATS JetStream, from the store's outbox.
//!
//! The store writes an outbox entry in the transaction of every job state change and stored log
//! chunk (the triggers of its `events` migration, while `set_outbox(true)`); the [`Publisher`]
//! sends them, oldest first, and marks each published once JetStream has acknowledged it. A
//! crash between the acknowledgement and the mark sends that event again: its `Nats-Msg-Id`
//! (`warden-<job_id>-<seq>`) makes JetStream drop the repeat within the stream's duplicate
//! window, so a consumer sees each event once. One publisher at a time holds the store's outbox
//! lease, and it publishes one event after another (each acknowledged before the next is
//! sent), so each job's events reach the stream in the order its changes happened, across
//! NATS restarts.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use base64::Engine as _;
use bytes::Bytes;
use prost::Message as _;
use serde_json::json;
use warden_core::config::{EventFormat, NatsEvents};
use warden_store::{OutboxEvent, OutboxKind, Store, now_millis};

/// How long the publisher's lease lasts without renewal (renewed every [`LEASE_RENEW`] while it
/// runs): after a crash, another process publishes within it.
pub const LEASE_MS: i64 = 10_000;
/// How often a held lease is renewed (well inside [`LEASE_MS`]): not on every pass, which on
/// SQLite would be a write transaction beside every job's own.
const LEASE_RENEW: Duration = Duration::from_secs(2);
/// Events read from the outbox at once.
const BATCH: u32 = 256;
/// After a batch that was not full, this long before the next: events written meanwhile go in
/// one batch (fewer store transactions beside the jobs' own) at a small cost in latency.
const COALESCE: Duration = Duration::from_millis(25);
/// How long an empty outbox is left before it is read again.
const IDLE: Duration = Duration::from_millis(100);
/// Waiting for one acknowledgement, at most.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to JetStream with warden's two streams in place.
pub struct Sink {
    js: jetstream::Context,
    config: NatsEvents,
}

/// One event as it goes on the wire.
pub struct Wire {
    pub subject: String,
    pub msg_id: String,
    pub payload: Bytes,
    pub kind: &'static str,
}

/// An event's id: its `Nats-Msg-Id`, a webhook's `Warden-Event-Id` and the `event_id` of a
/// delivery on the API — the same on every publish, attempt and replay of the event.
pub fn event_id(job_id: warden_core::JobId, seq: u64) -> String {
    format!("warden-{job_id}-{seq}")
}

/// A NATS subject token for a tenant: tenant names may hold `.`, which separates tokens; `~`
/// (never in a tenant name) stands for it.
fn subject_token(tenant: &str) -> String {
    tenant.replace('.', "~")
}

/// A job event as JSON: its form with `format: json` and the body of a webhook.
pub fn json_body(e: &OutboxEvent) -> Vec<u8> {
    let at_ms = e.at.max(0) as u64;
    let value = match &e.kind {
        OutboxKind::Job {
            job_type,
            status,
            reason,
            exit_code,
            attempt,
        } => json!({
            "seq": e.seq, "job_id": e.job_id.to_string(), "tenant": e.tenant,
            "job_type": job_type, "status": status.as_str(), "reason": reason,
            "exit_code": exit_code, "attempt": attempt, "at_ms": at_ms,
        }),
        OutboxKind::Log {
            stream,
            offset,
            data,
            attempt,
        } => json!({
            "seq": e.seq, "job_id": e.job_id.to_string(), "tenant": e.tenant,
            "stream": stream.as_str(), "offset": offset, "attempt": attempt,
            "data": base64::engine::general_purpose::STANDARD.encode(data), "at_ms": at_ms,
        }),
    };
    serde_json::to_vec(&value).unwrap_or_default()
}

/// The event's subject, message id and payload.
pub fn wire(config: &NatsEvents, e: &OutboxEvent) -> Wire {
    use warden_proto::pb;
    let (kind, subjects) = match e.kind {
        OutboxKind::Job { .. } => ("job", "jobs"),
        OutboxKind::Log { .. } => ("log", "logs"),
    };
    let subject = format!(
        "{}.{subjects}.{}.{}",
        config.subject_prefix,
        subject_token(&e.tenant),
        e.job_id
    );
    let at_ms = e.at.max(0) as u64;
    let payload = match (&e.kind, config.format) {
        (
            OutboxKind::Job {
                job_type,
                status,
                reason,
                exit_code,
                attempt,
            },
            EventFormat::Protobuf,
        ) => pb::JobEvent {
            seq: e.seq,
            job_id: e.job_id.to_string(),
            tenant: e.tenant.clone(),
            job_type: job_type.clone(),
            status: warden_proto::status_to_pb(*status) as i32,
            reason: reason.clone(),
            exit_code: *exit_code,
            attempt: *attempt,
            at_ms,
        }
        .encode_to_vec(),
        (
            OutboxKind::Log {
                stream,
                offset,
                data,
                attempt,
            },
            EventFormat::Protobuf,
        ) => pb::LogEvent {
            seq: e.seq,
            job_id: e.job_id.to_string(),
            tenant: e.tenant.clone(),
            stream: warden_proto::stream_to_pb(*stream) as i32,
            offset: *offset,
            data: data.clone(),
            at_ms,
            attempt: *attempt,
        }
        .encode_to_vec(),
        (OutboxKind::Job { .. }, EventFormat::Json) => json_body(e),
        (OutboxKind::Log { .. }, EventFormat::Json) => json_body(e),
    };
    Wire {
        subject,
        msg_id: event_id(e.job_id, e.seq),
        payload: Bytes::from(payload),
        kind,
    }
}

impl Sink {
    /// Connects and creates the streams if they are missing.
    pub async fn connect(config: &NatsEvents) -> Result<Sink, String> {
        let urls: Vec<&str> = config.url.split(',').map(str::trim).collect();
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(ACK_TIMEOUT))
            .connect(urls.as_slice())
            .await
            .map_err(|e| format!("NATS at {}: {e}", config.url))?;
        let js = jetstream::new(client);
        for (suffix, kind) in [("JOBS", "jobs"), ("LOGS", "logs")] {
            let stream = jetstream::stream::Config {
                name: format!("{}_{suffix}", config.stream_prefix),
                subjects: vec![format!("{}.{kind}.>", config.subject_prefix)],
                duplicate_window: Duration::from_secs(config.duplicate_window_s.get()),
                ..Default::default()
            };
            js.get_or_create_stream(stream.clone())
                .await
                .map_err(|e| format!("JetStream stream {}: {e}", stream.name))?;
        }
        Ok(Sink {
            js,
            config: config.clone(),
        })
    }

    /// Publishes one event and waits for JetStream's acknowledgement; `true` when JetStream
    /// dropped it as a repeat.
    pub async fn publish(&self, e: &OutboxEvent) -> Result<bool, String> {
        let w = wire(&self.config, e);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", w.msg_id.as_str());
        headers.insert("Warden-Event", w.kind);
        headers.insert(
            "Content-Type",
            match self.config.format {
                EventFormat::Protobuf => "application/protobuf",
                EventFormat::Json => "application/json",
            },
        );
        let ack = self
            .js
            .publish_with_headers(w.subject, headers, w.payload)
            .await
            .map_err(|e| format!("publish: {e}"))?;
        let ack = tokio::time::timeout(ACK_TIMEOUT, ack.into_future())
            .await
            .map_err(|_| "no acknowledgement from JetStream".to_string())?
            .map_err(|e| format!("acknowledgement: {e}"))?;
        Ok(ack.duplicate)
    }

    /// Whether this event goes on the wire at all (`logs: false` keeps log chunks home).
    pub fn wants(&self, e: &OutboxEvent) -> bool {
        self.config.logs || matches!(e.kind, OutboxKind::Job { .. })
    }
}

/// The outbox lease as one process holds it: taken, then renewed every [`LEASE_RENEW`].
pub struct LeaseKeeper {
    pub owner: String,
    renewed: Option<tokio::time::Instant>,
}

impl LeaseKeeper {
    pub fn new(owner: String) -> LeaseKeeper {
        LeaseKeeper {
            owner,
            renewed: None,
        }
    }

    /// Whether this process holds the lease now (taking or renewing it when due).
    pub async fn hold(&mut self, store: &dyn Store) -> Result<bool, warden_store::StoreError> {
        if self.renewed.is_some_and(|t| t.elapsed() < LEASE_RENEW) {
            return Ok(true);
        }
        let held = store
            .outbox_lease(&self.owner, LEASE_MS, now_millis())
            .await?;
        self.renewed = held.then(tokio::time::Instant::now);
        Ok(held)
    }
}

/// The publisher of one server: drains the outbox into JetStream while the server runs.
pub struct Publisher {
    pub store: Arc<dyn Store>,
    /// `None`: no NATS; the outbox is still drained (marked published) for pruning.
    pub config: Option<NatsEvents>,
    /// Webhooks are configured: events stay until the webhook cursor has passed them.
    pub webhooks: bool,
    /// Published events are kept this long for a replay.
    pub keep: Duration,
    pub owner: String,
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Where published events and failed passes are counted (`/metrics`).
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl Publisher {
    pub fn start(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move { self.run().await })
    }

    async fn run(self) {
        let mut sink: Option<Sink> = None;
        let mut lease = LeaseKeeper::new(self.owner.clone());
        let mut backoff = Duration::from_millis(100);
        let mut failing = false;
        let mut last_prune = tokio::time::Instant::now() - Duration::from_secs(3600);
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            let pause = match self.pass(&mut sink, &mut lease).await {
                Ok(n) => {
                    if failing {
                        tracing::info!("events: publishing again");
                    }
                    failing = false;
                    backoff = Duration::from_millis(100);
                    match n {
                        0 => IDLE,
                        n if n < BATCH as usize => COALESCE,
                        _ => Duration::ZERO,
                    }
                }
                Err(e) => {
                    if let Some(m) = &self.metrics {
                        m.events_publish_failures.inc();
                    }
                    if !failing {
                        tracing::warn!(error = %e, "events: publishing is paused; retrying");
                    }
                    failing = true;
                    // A fresh connection next time: NATS may have come back without the
                    // streams (they are created on connecting).
                    sink = None;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    backoff
                }
            };
            if last_prune.elapsed() > Duration::from_secs(600) {
                last_prune = tokio::time::Instant::now();
                let before = now_millis() - self.keep.as_millis() as i64;
                if let Err(e) = self.store.prune_outbox(before, self.webhooks).await {
                    tracing::warn!(error = %e, "events: pruning published events failed");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    /// One batch: how many events went out (0: nothing to do, or another replica publishes).
    async fn pass(
        &self,
        sink: &mut Option<Sink>,
        lease: &mut LeaseKeeper,
    ) -> Result<usize, String> {
        if !lease.hold(&*self.store).await.map_err(|e| e.to_string())? {
            return Ok(0);
        }
        let events = self
            .store
            .outbox_pending(BATCH)
            .await
            .map_err(|e| e.to_string())?;
        if events.is_empty() {
            return Ok(0);
        }
        let Some(config) = &self.config else {
            // Nowhere to publish: only the webhook dispatcher reads these events.
            let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
            self.store
                .outbox_published(&seqs, now_millis())
                .await
                .map_err(|e| e.to_string())?;
            return Ok(seqs.len());
        };
        if sink.is_none() {
            *sink = Some(Sink::connect(config).await?);
        }
        let Some(s) = sink.as_ref() else {
            return Ok(0);
        };
        let mut done = Vec::with_capacity(events.len());
        let mut failure = None;
        for e in &events {
            // A slow NATS must not let the lease lapse mid-batch (another replica would then
            // publish beside this one).
            if !lease.hold(&*self.store).await.map_err(|e| e.to_string())? {
                break;
            }
            if !s.wants(e) {
                done.push(e.seq);
                continue;
            }
            match s.publish(e).await {
                Ok(_) => {
                    done.push(e.seq);
                    if let Some(m) = &self.metrics {
                        m.events_published.inc();
                    }
                }
                Err(err) => {
                    failure = Some(err);
                    break;
                }
            }
        }
        if !done.is_empty() {
            self.store
                .outbox_published(&done, now_millis())
                .await
                .map_err(|e| e.to_string())?;
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(done.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_core::JobId;
    use warden_store::LogStream;

    fn config(format: EventFormat) -> NatsEvents {
        NatsEvents {
            url: "nats://127.0.0.1:4222".into(),
            stream_prefix: "WARDEN".into(),
            subject_prefix: "acme.warden".into(),
            format,
            logs: true,
            duplicate_window_s: warden_core::config::Positive(600),
        }
    }

    #[test]
    fn events_have_their_subject_id_and_payload() {
        let id = JobId::new();
        let job = OutboxEvent {
            seq: 7,
            job_id: id,
            tenant: "team.a".into(),
            at: 1_700_000_000_123,
            kind: OutboxKind::Job {
                job_type: "pytest".into(),
                status: warden_core::JobStatus::Failed,
                reason: Some("exit_code".into()),
                exit_code: Some(1),
                attempt: 2,
            },
        };
        let w = wire(&config(EventFormat::Protobuf), &job);
        assert_eq!(w.subject, format!("acme.warden.jobs.team~a.{id}"));
        assert_eq!(w.msg_id, format!("warden-{id}-7"));
        let decoded = warden_proto::pb::JobEvent::decode(w.payload).unwrap();
        assert_eq!(decoded.seq, 7);
        assert_eq!(decoded.job_id, id.to_string());
        assert_eq!(decoded.status, warden_proto::pb::JobStatus::Failed as i32);
        assert_eq!(decoded.exit_code, Some(1));
        assert_eq!(decoded.attempt, 2);
        assert_eq!(decoded.at_ms, 1_700_000_000_123);

        let log = OutboxEvent {
            seq: 8,
            job_id: id,
            tenant: "t".into(),
            at: 5,
            kind: OutboxKind::Log {
                stream: LogStream::Stderr,
                offset: 42,
                data: vec![0, 255, b'x'],
                attempt: 1,
            },
        };
        let w = wire(&config(EventFormat::Json), &log);
        assert_eq!(w.subject, format!("acme.warden.logs.t.{id}"));
        let v: serde_json::Value = serde_json::from_slice(&w.payload).unwrap();
        assert_eq!(v["stream"], "stderr");
        assert_eq!(v["offset"], 42);
        assert_eq!(v["data"], "AP94");
        assert_eq!(v["seq"], 8);
    }
}
