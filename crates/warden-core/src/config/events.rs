//! `events:` — where warden publishes job state changes and log chunks as they are stored:
//! NATS JetStream. The store's outbox is the truth (see `warden-server`'s `events`).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::positive::Positive;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// Publish to NATS JetStream.
    #[serde(default)]
    pub nats: Option<NatsEvents>,
    /// Deliver job state changes as signed HTTP webhooks.
    #[serde(default)]
    pub webhooks: Option<WebhooksConfig>,
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

/// `events.webhooks:` — each job state change POSTed as JSON, signed, retried with backoff.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    /// A name under `secrets:`: the HMAC-SHA256 key every delivery is signed with.
    pub secret: String,
    /// Hosts a job's `callback_url` may name (`host` or `host:port`; `*.example.com` for its
    /// subdomains). Empty (the default): jobs may not name a callback URL.
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    /// A tenant's own URL: every job event of the tenant is delivered there.
    #[serde(default)]
    pub tenants: BTreeMap<String, String>,
    /// Attempts per delivery before it is given up. Absent: 8.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: Positive,
    /// The wait before the second attempt, doubled for each next one (at most an hour), in
    /// milliseconds. Absent: 1000.
    #[serde(default = "default_retry_base_ms")]
    pub retry_base_ms: Positive,
}

impl WebhooksConfig {
    /// Whether `url` may be a job's callback: an http(s) URL without credentials whose host
    /// (or host:port) `allow_hosts` lists. `Err` says what is wrong.
    pub fn check_callback(&self, raw: &str) -> Result<(), String> {
        let url = parse_hook_url(raw)?;
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let port = url.port_or_known_default().unwrap_or(0);
        let allowed = self.allow_hosts.iter().any(|a| {
            let a = a.to_ascii_lowercase();
            let (name, want_port) = match a.rsplit_once(':') {
                Some((n, p)) if !n.contains(']') || n.ends_with(']') => match p.parse::<u16>() {
                    Ok(p) => (n.to_string(), Some(p)),
                    Err(_) => (a.clone(), None),
                },
                _ => (a.clone(), None),
            };
            let name = name
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let host_ok = match name.strip_prefix("*.") {
                Some(suffix) => host.ends_with(&format!(".{suffix}")),
                None => host == name,
            };
            host_ok && want_port.is_none_or(|p| p == port)
        });
        if allowed {
            Ok(())
        } else if self.allow_hosts.is_empty() {
            Err("this server takes no callback_url (events.webhooks.allow_hosts is empty)".into())
        } else {
            Err(format!(
                "callback_url host {host}:{port} is not in events.webhooks.allow_hosts ({})",
                self.allow_hosts.join(", ")
            ))
        }
    }
}

/// An http(s) URL with a host and no user or password, at most 2048 bytes.
pub fn parse_hook_url(raw: &str) -> Result<url::Url, String> {
    if raw.len() > 2048 {
        return Err("a webhook URL is at most 2048 bytes".into());
    }
    let url = url::Url::parse(raw).map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{raw:?}: a webhook URL is http:// or https://"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{raw:?}: a webhook URL names a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{raw:?}: a webhook URL carries no credentials"));
    }
    Ok(url)
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
            webhooks: None,
            keep_days: default_keep_days(),
        }
    }
}

impl EventsConfig {
    /// What is wrong with the configuration, if anything.
    pub fn check(&self, secrets: &BTreeMap<String, super::SecretSource>) -> Result<(), String> {
        if let Some(hooks) = &self.webhooks {
            if !secrets.contains_key(&hooks.secret) {
                return Err(format!(
                    "events.webhooks.secret {:?} is not a name under secrets:",
                    hooks.secret
                ));
            }
            for (tenant, url) in &hooks.tenants {
                parse_hook_url(url)
                    .map_err(|e| format!("events.webhooks.tenants.{tenant}: {e}"))?;
            }
            for host in &hooks.allow_hosts {
                if host.is_empty() || host.contains(['/', '@', ' ']) {
                    return Err(format!(
                        "events.webhooks.allow_hosts {host:?}: a host or host:port"
                    ));
                }
            }
        }
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
fn default_max_attempts() -> Positive {
    Positive(8)
}
fn default_retry_base_ms() -> Positive {
    Positive(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hooks(allow: &[&str]) -> WebhooksConfig {
        WebhooksConfig {
            secret: "K".into(),
            allow_hosts: allow.iter().map(|s| s.to_string()).collect(),
            tenants: BTreeMap::new(),
            max_attempts: default_max_attempts(),
            retry_base_ms: default_retry_base_ms(),
        }
    }

    #[test]
    fn callbacks_go_only_to_listed_hosts() {
        let h = hooks(&["hooks.example.com", "127.0.0.1:8081", "*.corp.example"]);
        for ok in [
            "https://hooks.example.com/warden",
            "http://HOOKS.example.com:80/x",
            "http://127.0.0.1:8081/cb",
            "https://ci.corp.example/a?b=c",
        ] {
            assert_eq!(h.check_callback(ok), Ok(()), "{ok}");
        }
        for bad in [
            "https://evil.example/",
            "http://127.0.0.1:8082/cb",
            "https://corp.example/",
            "https://hooks.example.com.evil.example/",
            "https://user:pw@hooks.example.com/",
            "ftp://hooks.example.com/",
            "hooks.example.com/warden",
            "http:///nohost",
        ] {
            assert!(h.check_callback(bad).is_err(), "{bad}");
        }
        let none = hooks(&[])
            .check_callback("https://hooks.example.com/")
            .unwrap_err();
        assert!(none.contains("allow_hosts is empty"), "{none}");
    }
}
