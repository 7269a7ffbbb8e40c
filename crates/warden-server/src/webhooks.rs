//! Webhooks, from the same outbox as the NATS events: each job state change POSTed as JSON to
//! its tenant's URL (`events.webhooks.tenants`) and to the job's own `callback_url`, signed,
//! retried with exponential backoff until delivered or `max_attempts` tried; every attempt is
//! recorded on the job (`GET /jobs/{id}/webhooks`).
//!
//! The dispatcher turns new job events of the outbox into deliveries (one per URL) and moves
//! its cursor in the same transaction, then sends what is due — per job and URL one delivery
//! at a time, oldest first, so a receiver sees a job's changes in order. It runs beside the
//! NATS publisher under the same outbox lease (the same owner), so one replica delivers.
//!
//! Signature: `Warden-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(key, "<t>.<body>")>`,
//! computed for each attempt; a receiver recomputes it over the raw body and refuses a stale
//! `t`. `Warden-Event-Id` (`warden-<job_id>-<seq>`) is the same on every attempt: receivers
//! de-duplicate on it.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hmac::{Hmac, Mac};
use warden_core::config::WebhooksConfig;
use warden_store::{Delivery, DeliveryOutcome, NewDelivery, Store, now_millis};

use crate::events::json_body;

/// Deliveries sent at once.
const PARALLEL: usize = 8;
/// One attempt, at most.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait between two attempts.
const MAX_BACKOFF_MS: i64 = 3_600_000;

/// The signature header's value for `body` at unix time `t`.
pub fn signature(key: &[u8], t: u64, body: &[u8]) -> String {
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("t={t},v1={hex}")
}

/// When the attempt after `attempts` failed ones is due: `base`, doubled each time, capped.
pub fn next_attempt(now: i64, base_ms: u64, attempts: u32) -> i64 {
    let wait = (base_ms as i64).saturating_mul(1i64 << attempts.saturating_sub(1).min(30));
    now.saturating_add(wait.min(MAX_BACKOFF_MS))
}

pub struct Dispatcher {
    pub store: Arc<dyn Store>,
    pub config: WebhooksConfig,
    /// The HMAC key (the value of the secret `config.secret` names).
    pub key: Vec<u8>,
    /// The outbox lease's owner: the same as the NATS publisher's of this process.
    pub owner: String,
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl Dispatcher {
    pub fn start(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move { self.run().await })
    }

    async fn run(self) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = match reqwest::Client::builder()
            // A redirect could lead anywhere: the allowlist names where deliveries go.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(ATTEMPT_TIMEOUT)
            .user_agent(concat!("warden/", env!("CARGO_PKG_VERSION")))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "webhooks: no HTTP client; nothing will be delivered");
                return;
            }
        };
        let mut failing = false;
        let mut lease = crate::events::LeaseKeeper::new(self.owner.clone());
        loop {
            let pause = match self.pass(&client, &mut lease).await {
                Ok(busy) => {
                    failing = false;
                    if busy {
                        Duration::ZERO
                    } else {
                        Duration::from_millis(200)
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "webhooks: a pass failed; retrying");
                    }
                    failing = true;
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    /// New events into deliveries, then what is due; `true` when there was work.
    async fn pass(
        &self,
        client: &reqwest::Client,
        lease: &mut crate::events::LeaseKeeper,
    ) -> Result<bool, String> {
        let err = |e: warden_store::StoreError| e.to_string();
        if !lease.hold(&*self.store).await.map_err(err)? {
            return Ok(false);
        }
        let (_, backlog) = self.store.webhook_backlog(256).await.map_err(err)?;
        let mut busy = !backlog.is_empty();
        if let Some((last, _)) = backlog.last() {
            let cursor = last.seq;
            let mut deliveries = Vec::new();
            for (e, callback) in &backlog {
                let body = json_body(e);
                let mut urls: Vec<&String> =
                    self.config.tenants.get(&e.tenant).into_iter().collect();
                if let Some(cb) = callback
                    && !urls.contains(&cb)
                {
                    urls.push(cb);
                }
                for url in urls {
                    deliveries.push(NewDelivery {
                        seq: e.seq,
                        job_id: e.job_id,
                        url: url.clone(),
                        body: body.clone(),
                    });
                }
            }
            self.store
                .add_deliveries(deliveries, cursor, now_millis())
                .await
                .map_err(err)?;
        }
        let due = self
            .store
            .due_deliveries(now_millis(), 64)
            .await
            .map_err(err)?;
        busy |= !due.is_empty();
        let results: Vec<(u64, DeliveryOutcome)> = futures::stream::iter(due)
            .map(|d| async move {
                let outcome = self.attempt(client, &d).await;
                (d.id, outcome)
            })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        for (id, outcome) in results {
            if let DeliveryOutcome::GaveUp { error, .. } = &outcome {
                tracing::warn!(delivery = id, %error, "webhooks: delivery given up");
            }
            self.store
                .delivery_attempted(id, outcome, now_millis())
                .await
                .map_err(err)?;
        }
        Ok(busy)
    }

    async fn attempt(&self, client: &reqwest::Client, d: &Delivery) -> DeliveryOutcome {
        let t = (now_millis() / 1000).max(0) as u64;
        let sent = client
            .post(&d.url)
            .header("content-type", "application/json")
            .header("warden-signature", signature(&self.key, t, &d.body))
            .header("warden-event-id", crate::events::event_id(d.job_id, d.seq))
            .body(d.body.clone())
            .send()
            .await;
        let (status, error) = match sent {
            Ok(resp) if resp.status().is_success() => {
                return DeliveryOutcome::Delivered {
                    status: resp.status().as_u16(),
                };
            }
            Ok(resp) => (
                Some(resp.status().as_u16()),
                format!("the receiver answered {}", resp.status()),
            ),
            Err(e) => (None, root_cause(&e)),
        };
        let attempts = d.attempts + 1;
        if u64::from(attempts) >= self.config.max_attempts.get() {
            DeliveryOutcome::GaveUp { status, error }
        } else {
            DeliveryOutcome::Failed {
                status,
                error,
                next_at: next_attempt(now_millis(), self.config.retry_base_ms.get(), attempts),
            }
        }
    }
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_of_time_and_body() {
        let s = signature(b"Jefe", 0, b"");
        assert!(s.starts_with("t=0,v1="), "{s}");
        assert_eq!(s.len(), "t=0,v1=".len() + 64);
        assert_ne!(signature(b"k", 1, b"a"), signature(b"k", 2, b"a"));
        assert_ne!(signature(b"k", 1, b"a"), signature(b"j", 1, b"a"));
        // HMAC-SHA256("key", "1.hello"), computed independently with openssl.
        assert_eq!(
            signature(b"key", 1, b"hello"),
            "t=1,v1=9233658ef5e21fe59dba8abb099c978547d7626f87090a6a585c26a2a98a91f8"
        );
    }

    #[test]
    fn backoff_doubles_from_the_base_and_is_capped() {
        assert_eq!(next_attempt(0, 1000, 1), 1000);
        assert_eq!(next_attempt(0, 1000, 2), 2000);
        assert_eq!(next_attempt(0, 1000, 3), 4000);
        assert_eq!(next_attempt(0, 1000, 40), MAX_BACKOFF_MS);
        assert_eq!(next_attempt(i64::MAX - 1, 1000, 1), i64::MAX);
    }
}
