//! The server's configuration: one YAML file, validated completely before anything starts.
//!
//! Every rule that can be checked while parsing is checked while parsing, so that a bad file is
//! refused with the line of the offending value. `0` is never accepted as "unlimited".

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

mod artifact_store;
mod events;
mod images;
mod job_type;
mod network;
mod perimeter;
mod pipeline;
mod positive;
mod retention;
#[cfg(test)]
mod tests;

pub use artifact_store::{ArtifactStoreConfig, S3Location};
pub use events::{EventFormat, EventsConfig, NatsEvents, WebhooksConfig, parse_hook_url};
pub use images::{ImagesConfig, RegistryConfig, RegistryCredential};
pub use job_type::{
    BindConfig, CgroupLimit, DEFAULT_TOOL_ENV_VAR, IsolationTier, JobType, JobTypeName, Limits,
    RootMode, TOOL_BUNDLE_AT, is_valid_label,
};
pub use network::{
    Destination, EgressPolicy, EgressRule, NetworkPolicy, always_denied, parse_rule,
};
pub use perimeter::{
    AuthConfig, InlinePolicy, RateLimit, SecretSource, TenantConfig, is_valid_secret_name,
    is_valid_tenant,
};
pub use pipeline::{
    ARTIFACT_DIR_PREFIX, DEFAULT_SIZE_CAP_KB, JobKind, MAX_RESULT_PATTERNS, MAX_SIZE_CAP_KB,
    MAX_STAGES, REVIEW_PARAMS, Results, SUITE_PARAMS, Stage, SuitesConfig, check_review_params,
};
pub use positive::{Cpus, Positive};
pub use retention::{JobRetention, RetentionConfig, TenantRetention};

use crate::repo::{Transport, parse_repo_url};

/// The configuration warden runs with when no file is given: works out of the box on one machine.
pub const DEFAULT_CONFIG_YAML: &str = r#"# warden's built-in default configuration.
listen: 127.0.0.1:8080
data_dir: ./.warden
slots: 2
# Callers on this machine need no token (they act as tenant `default` with every scope). A
# configuration for a shared host leaves this out and gives every caller a token
# (`warden token create`).
auth: {loopback_trusted: true}
# Jobs run in warden's kernel sandbox: as root, or, for an ordinary user, rootless (user
# namespaces of that user). Where even that cannot be set up (warden checks at start and says so
# in a banner; `warden doctor` says why), this demo configuration runs jobs as plain supervised
# processes instead, and every such job records `unsafe_fallback: true` and is listed as
# UNSANDBOXED. It also lets jobs run where this user has no cgroup for their memory and process
# limits (recorded as LIMITS_NOT_ENFORCED). A config file that leaves this out does neither: it
# fails such jobs closed.
unsafe_fallback: true
job_types:
  local_echo:
    description: "demo: echo and uname -a"
    argv: ["/bin/sh", "-c", "echo hello from warden; uname -a"]
    timeout_s: 60
"#;

/// A rule that spans fields failed (checked after command-line overrides are applied).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidConfig(pub String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{}:{l}:{c}: {}", self.file, self.message),
            (Some(l), None) => write!(f, "{}:{l}: {}", self.file, self.message),
            _ => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// How many jobs run at once in the embedded worker.
    #[serde(default = "default_slots")]
    pub slots: Positive,
    /// Run jobs without the kernel sandbox. Recorded on every job that runs so.
    #[serde(default)]
    pub unsafe_fallback: bool,
    /// How many times a job whose worker died is tried before it ends `error: worker_lost`.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: Positive,
    /// How long a worker's claim on a job lasts without a heartbeat.
    #[serde(default = "default_lease_s")]
    pub lease_s: Positive,
    /// Time between SIGTERM and SIGKILL when a running job is cancelled.
    #[serde(default = "default_cancel_grace_s")]
    pub cancel_grace_s: Positive,
    /// How long running jobs may go on after the server is asked to stop; what is left is re-queued.
    #[serde(default = "default_shutdown_grace_s")]
    pub shutdown_grace_s: Positive,
    /// The first of `slots` host uids (and gids) sandboxed jobs run as, one per slot: the job in
    /// slot N runs as `sandbox_uid + N` (uid 1000 inside its user namespace), so that jobs
    /// running at once cannot signal each other or share a process count.
    #[serde(default = "default_sandbox_id")]
    pub sandbox_uid: u32,
    #[serde(default = "default_sandbox_id")]
    pub sandbox_gid: u32,
    #[serde(default)]
    pub job_types: BTreeMap<JobTypeName, JobType>,
    #[serde(default)]
    pub repos: BTreeMap<String, RepoConfig>,
    #[serde(default)]
    pub git: GitConfig,
    /// The gRPC listener (JobService, WorkerService, ArtifactService).
    #[serde(default = "default_grpc_listen")]
    pub grpc_listen: SocketAddr,
    /// A file holding the token remote workers present (`WARDEN_WORKER_TOKEN` takes precedence).
    #[serde(default)]
    pub worker_token_file: Option<PathBuf>,
    /// TLS for the HTTP and gRPC listeners (rustls). Required on a non-loopback address unless
    /// `auth.insecure_plaintext_behind_proxy` is set.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Authentication: tokens, loopback trust, rate limits.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Tenants and their policies. Empty: any tenant a token names, without quotas.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantConfig>,
    /// Operator-defined secrets, granted to job types by name.
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretSource>,
    /// How long audit entries are kept.
    #[serde(default = "default_audit_retention_days")]
    pub audit_retention_days: Positive,
    /// Where artifacts are kept: a directory every replica shares. Default `<data_dir>/artifacts`.
    #[serde(default)]
    pub artifact_dir: Option<PathBuf>,
    /// The egress gateway of jobs with a `network: {egress: [...]}` policy.
    #[serde(default)]
    pub egress: EgressGatewayConfig,
    /// Images job types run in: the cache, its caps, and how registries are reached.
    #[serde(default)]
    pub images: ImagesConfig,
    /// Where the gVisor tier (`isolation: gvisor`) finds `runsc`.
    #[serde(default)]
    pub gvisor: GvisorConfig,
    /// How long finished jobs are kept and how much room they take; unused mirrors.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Artifacts on S3-compatible storage (replicas then need no shared directory).
    #[serde(default)]
    pub artifact_store: Option<ArtifactStoreConfig>,
    /// Job state changes and log chunks published as they are stored (NATS JetStream).
    #[serde(default)]
    pub events: EventsConfig,
    /// A directory of tool-spec bundles (as `warden tools bundle` writes them) a submission may
    /// name by SHA-256 (`tool_bundle`). Unset: submissions name none.
    #[serde(default)]
    pub tool_bundles: Option<PathBuf>,
}

/// The gVisor tier's runtime.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GvisorConfig {
    /// The `runsc` binary (an absolute path); default: the first `runsc` in `/usr/local/bin`,
    /// `/usr/bin`, `/usr/sbin`.
    #[serde(default)]
    pub runsc: Option<PathBuf>,
}

impl GvisorConfig {
    /// The `runsc` to run: the configured one, or the first found where packages install it.
    /// `None` when there is none (a job type asking for the tier then fails closed).
    pub fn runsc(&self) -> Option<PathBuf> {
        match &self.runsc {
            Some(p) => Some(p.clone()),
            None => ["/usr/local/bin/runsc", "/usr/bin/runsc", "/usr/sbin/runsc"]
                .into_iter()
                .map(PathBuf::from)
                .find(|p| p.is_file()),
        }
    }
}

/// How the egress gateway reaches the outside.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressGatewayConfig {
    /// The DNS server that allowed names are resolved with (`IP:PORT`); default: the first
    /// `nameserver` of this host's `/etc/resolv.conf`.
    #[serde(default)]
    pub resolver: Option<SocketAddr>,
}

/// PEM files for a TLS listener (or, on a worker, the CA that signed the server's certificate).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn default_audit_retention_days() -> Positive {
    Positive(90)
}

fn default_grpc_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50051))
}

/// Far above the uids a distribution hands out (and the 65536-wide subordinate ranges of
/// rootless containers that start at 100000).
fn default_sandbox_id() -> u32 {
    2_000_000_000
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("./.warden")
}
fn default_slots() -> Positive {
    Positive(2)
}
fn default_max_attempts() -> Positive {
    Positive(3)
}
fn default_lease_s() -> Positive {
    Positive(30)
}
fn default_cancel_grace_s() -> Positive {
    Positive(5)
}
fn default_shutdown_grace_s() -> Positive {
    Positive(10)
}

impl Config {
    /// Parses and validates a configuration file's text; `file` names it in error messages.
    pub fn from_yaml_str(text: &str, file: &str) -> Result<Config, ConfigError> {
        // An empty file is an empty mapping, not an error: every key has a default.
        let text = if text.trim().is_empty() { "{}" } else { text };
        let config: Config = serde_norway::from_str(text).map_err(|e| {
            let location = e.location();
            let mut message = e.to_string();
            // The location is reported separately; keep the message itself short.
            if let Some(idx) = message.rfind(" at line ") {
                message.truncate(idx);
            }
            ConfigError {
                file: file.to_string(),
                line: location.as_ref().map(|l| l.line()),
                column: location.as_ref().map(|l| l.column()),
                message,
            }
        })?;
        config.validate().map_err(|message| ConfigError {
            file: file.to_string(),
            line: None,
            column: None,
            message: message.0,
        })?;
        Ok(config)
    }

    /// The built-in default.
    pub fn builtin() -> Config {
        Config::from_yaml_str(DEFAULT_CONFIG_YAML, "<built-in default>")
            .expect("the built-in default configuration is valid")
    }

    /// Rules that span fields, checked again after command-line overrides are applied.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        for (what, addr) in [("listen", self.listen), ("grpc_listen", self.grpc_listen)] {
            if !addr.ip().is_loopback()
                && self.tls.is_none()
                && !self.auth.insecure_plaintext_behind_proxy
            {
                return Err(InvalidConfig(format!(
                    "{what} {addr} is not loopback: beyond loopback warden serves only TLS \
                     (set tls: {{cert, key}}), or plaintext behind a TLS-terminating proxy \
                     (auth: {{insecure_plaintext_behind_proxy: true}})"
                )));
            }
        }
        perimeter::check(&self.tenants, &self.secrets, &self.job_types, &self.repos)
            .map_err(InvalidConfig)?;
        for (name, first) in [
            ("sandbox_uid", self.sandbox_uid),
            ("sandbox_gid", self.sandbox_gid),
        ] {
            let last = u64::from(first) + self.slots.get() - 1;
            if first == 0 || last >= u64::from(u32::MAX) {
                return Err(InvalidConfig(format!(
                    "{name} {first}: jobs run as {name} .. {name} + slots - 1, which must be \
                     host ids other than root (0) and below {}",
                    u32::MAX
                )));
            }
        }
        self.images.check(&self.secrets).map_err(InvalidConfig)?;
        if let Some(store) = &self.artifact_store {
            store.check(&self.secrets).map_err(InvalidConfig)?;
            if self.artifact_dir.is_some() {
                return Err(InvalidConfig(
                    "artifact_store and artifact_dir are two places for artifacts: set one".into(),
                ));
            }
        }
        self.events.check(&self.secrets).map_err(InvalidConfig)?;
        if let Some(runsc) = &self.gvisor.runsc
            && !runsc.is_absolute()
        {
            return Err(InvalidConfig(format!(
                "gvisor.runsc {runsc:?} must be an absolute path"
            )));
        }
        if let Some(dir) = &self.tool_bundles
            && !dir.is_absolute()
        {
            return Err(InvalidConfig(format!(
                "tool_bundles {dir:?} must be an absolute path"
            )));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(InvalidConfig("data_dir must not be empty".into()));
        }
        for (name, job_type) in &self.job_types {
            if job_type.requires_repo_allowlist && self.repos.is_empty() {
                return Err(InvalidConfig(format!(
                    "job type {name:?} sets requires_repo_allowlist but no repos are configured"
                )));
            }
        }
        Ok(())
    }

    pub fn job_type(&self, name: &str) -> Option<&JobType> {
        self.job_types.get(name)
    }

    /// A tenant's policy: as configured, or, when no tenants are configured, the default
    /// (everything, no quota). `None`: tenants are configured and this is not one of them.
    pub fn tenant(&self, name: &str) -> Option<std::borrow::Cow<'_, TenantConfig>> {
        if self.tenants.is_empty() {
            return Some(std::borrow::Cow::Owned(TenantConfig::default()));
        }
        self.tenants.get(name).map(std::borrow::Cow::Borrowed)
    }

    /// The retention that applies to a tenant's finished jobs.
    pub fn retention_for(&self, tenant: &str) -> JobRetention {
        self.retention
            .for_tenant(self.tenants.get(tenant).and_then(|t| t.retention.as_ref()))
    }
}

/// One allowlisted repository.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawRepo")]
pub struct RepoConfig {
    pub url: String,
    pub transport: Transport,
    /// For a private https repository: `{username, secret}` (see [`RepoCredential`]).
    pub credential: Option<crate::repo::RepoCredential>,
    /// A CA bundle (PEM) for the repository's https server.
    pub ca_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRepo {
    url: String,
    #[serde(default)]
    credential: Option<RawCredential>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredential {
    username: String,
    secret: String,
}

impl TryFrom<RawRepo> for RepoConfig {
    type Error = String;

    fn try_from(raw: RawRepo) -> Result<RepoConfig, String> {
        let transport = parse_repo_url(&raw.url).map_err(|e| e.0)?;
        let https = transport == Transport::Https;
        if !https && (raw.credential.is_some() || raw.ca_file.is_some()) {
            return Err(format!(
                "credential and ca_file are for https repositories; {:?} is fetched over {} \
                 (ssh repositories log in with the agent's key)",
                raw.url, transport
            ));
        }
        let credential = raw
            .credential
            .map(|c| {
                let user_ok = !c.username.is_empty()
                    && c.username.len() <= 256
                    && !c.username.chars().any(|ch| ch.is_control());
                if !user_ok {
                    return Err(
                        "credential.username must be 1 to 256 characters, none of them a \
                         control character"
                            .to_string(),
                    );
                }
                Ok(crate::repo::RepoCredential {
                    username: c.username,
                    secret: c.secret,
                })
            })
            .transpose()?;
        if let Some(ca) = &raw.ca_file
            && !ca.is_absolute()
        {
            return Err(format!("ca_file {} must be an absolute path", ca.display()));
        }
        Ok(RepoConfig {
            url: raw.url,
            transport,
            credential,
            ca_file: raw.ca_file,
        })
    }
}

/// How warden keeps its git mirrors and checkouts.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitConfig {
    /// A fetch that takes longer is killed; the job ends `error: fetch_timeout`.
    #[serde(default = "default_fetch_timeout_s")]
    pub fetch_timeout_s: Positive,
    /// The largest pack one fetch may write; a bigger fetch is killed (`fetch_too_large`).
    #[serde(default = "default_fetch_max_mb")]
    pub fetch_max_mb: Positive,
    /// Size budget of the checkout cache; least recently used trees not in use are evicted.
    #[serde(default = "default_checkout_cache_mb")]
    pub checkout_cache_mb: Positive,
}

fn default_fetch_timeout_s() -> Positive {
    Positive(600)
}
fn default_fetch_max_mb() -> Positive {
    Positive(4096)
}
fn default_checkout_cache_mb() -> Positive {
    Positive(10 * 1024)
}

impl Default for GitConfig {
    fn default() -> GitConfig {
        GitConfig {
            fetch_timeout_s: default_fetch_timeout_s(),
            fetch_max_mb: default_fetch_max_mb(),
            checkout_cache_mb: default_checkout_cache_mb(),
        }
    }
}
