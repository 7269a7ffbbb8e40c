//! `events:` — where warden publishes job state changes and log chunks as they are stored:
//! NATS JetStream. The store's outbox is the truth (see `warden-server`'s `events`).

use serde::Deserialize;

use super::positive::Positive;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// Publish to NATS JetStream.
    #[serde(default)]
    pub nats: Option<NatsEvents>,
    /// Published events are kept in the store this many days for `warden events replay`.
    /// Absent: 7.
    #[serde(default = "default_keep_days")]
    pub keep_days: Positive,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsEvents {
    /// `nats://host:port` (or `tls://`); a comma-separated list for a cluster.
    pub url: String,
    /// Streams `<prefix>_JOBS` and `<prefix>_LOGS`, created if missing. Absent: `WARDEN`.
    #[serde(default = "default_stream_prefix")]
    pub stream_prefix: String,
    /// Subjects `<prefix>.jobs.<tenant>.<job_id>` and `<prefix>.logs.<tenant>.<job_id>`.
    /// Absent: `warden`.
    #[serde(default = "default_subject_prefix")]
    pub subject_prefix: String,
    /// `protobuf` (`warden.v1.JobEvent` / `LogEvent`, the default) or `json`.
    #[serde(default)]
    pub format: EventFormat,
    /// Publish log chunks too (`LogEvent`). Absent: true.
    #[serde(default = "default_true")]
    pub logs: bool,
    /// JetStream's de-duplication window, in seconds: a repeat of an event published within it
    /// is dropped. Absent: 600.
    #[serde(default = "default_duplicate_window_s")]
    pub duplicate_window_s: Positive,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventFormat {
    #[default]
    Protobuf,
    Json,
}

impl Default for EventsConfig {
    fn default() -> EventsConfig {
        EventsConfig {
            nats: None,
            keep_days: default_keep_days(),
        }
    }
}

impl EventsConfig {
    /// What is wrong with the configuration, if anything.
    pub fn check(&self) -> Result<(), String> {
        let Some(nats) = &self.nats else {
            return Ok(());
        };
        if !nats.url.split(',').all(|u| {
            let u = u.trim();
            ["nats://", "tls://"]
                .iter()
                .any(|s| u.strip_prefix(s).is_some_and(|rest| !rest.is_empty()))
        }) {
            return Err(format!(
                "events.nats.url {:?}: expected nats://HOST:PORT or tls://HOST:PORT (comma-separated for a cluster)",
                nats.url
            ));
        }
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !name_ok(&nats.stream_prefix) {
            return Err(format!(
                "events.nats.stream_prefix {:?}: 1-64 of A-Z a-z 0-9 _ -",
                nats.stream_prefix
            ));
        }
        if !nats.subject_prefix.split('.').all(name_ok) {
            return Err(format!(
                "events.nats.subject_prefix {:?}: dot-separated tokens of A-Z a-z 0-9 _ - (no wildcards)",
                nats.subject_prefix
            ));
        }
        Ok(())
    }
}

fn default_keep_days() -> Positive {
    Positive(7)
}
fn default_stream_prefix() -> String {
    "WARDEN".into()
}
fn default_subject_prefix() -> String {
    "warden".into()
}
fn default_true() -> bool {
    true
}
fn default_duplicate_window_s() -> Positive {
    Positive(600)
}
