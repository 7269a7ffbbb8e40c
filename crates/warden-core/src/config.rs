//! The server's configuration: one YAML file, validated completely before anything starts.
//!
//! Every rule that can be checked while parsing is checked while parsing, so that a bad file is
//! refused with the line of the offending value. `0` is never accepted as "unlimited".

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use crate::params::{is_reserved, is_valid_param_name};
use crate::repo::{Transport, parse_repo_url};

/// The configuration warden runs with when no file is given: works out of the box on one machine.
pub const DEFAULT_CONFIG_YAML: &str = r#"# warden's built-in default configuration.
listen: 127.0.0.1:8080
data_dir: ./.warden
slots: 2
# Jobs run in warden's kernel sandbox. Where it cannot be set up on this host (warden checks at
# start; `warden doctor` says why), this demo configuration runs jobs as plain supervised
# processes instead, and every such job records `unsafe_fallback: true`. A config file that
# leaves this out refuses to run jobs without the sandbox.
unsafe_fallback: true
job_types:
  local_echo:
    description: "demo: echo and uname -a"
    argv: ["/bin/sh", "-c", "echo hello from warden; uname -a"]
    timeout_s: 60
"#;

/// Worker labels and job type labels: short, lowercase, no spaces.
pub fn is_valid_label(l: &str) -> bool {
    let b = l.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'.' | b'-')
        })
}

/// The shared secret between control plane and workers: `WARDEN_WORKER_TOKEN`, else `file`.
/// Never taken from argv (it would show in `ps`).
pub fn read_token(file: Option<&std::path::Path>) -> Result<Option<String>, String> {
    let token = match std::env::var("WARDEN_WORKER_TOKEN") {
        Ok(t) => t,
        Err(_) => match file {
            Some(f) => std::fs::read_to_string(f)
                .map_err(|e| format!("cannot read worker token file {}: {e}", f.display()))?,
            None => return Ok(None),
        },
    };
    let token = token.trim().to_string();
    if token.len() < 16 || token.chars().any(|c| c.is_control() || c == ' ') {
        return Err(
            "the worker token must be at least 16 characters without spaces or control \
             characters (e.g. `openssl rand -hex 32`)"
                .to_string(),
        );
    }
    Ok(Some(token))
}

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
    /// Host uid and gid that sandboxed jobs run as (uid 1000 inside their user namespace).
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
    /// TLS for the gRPC listener (rustls); without it gRPC is plaintext.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Where artifacts are kept: a directory every replica shares. Default `<data_dir>/artifacts`.
    #[serde(default)]
    pub artifact_dir: Option<PathBuf>,
}

/// PEM files for a TLS listener (or, on a worker, the CA that signed the server's certificate).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn default_grpc_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50051))
}

fn default_sandbox_id() -> u32 {
    65534
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
            message,
        })?;
        Ok(config)
    }

    /// The built-in default.
    pub fn builtin() -> Config {
        Config::from_yaml_str(DEFAULT_CONFIG_YAML, "<built-in default>")
            .expect("the built-in default configuration is valid")
    }

    /// Rules that span fields, checked again after command-line overrides are applied.
    pub fn validate(&self) -> Result<(), String> {
        if !self.listen.ip().is_loopback() {
            return Err(format!(
                "listen address {} is not loopback: binding beyond loopback requires \
                 authentication, which this version of warden does not provide yet; \
                 use 127.0.0.1 or ::1",
                self.listen
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err("data_dir must not be empty".to_string());
        }
        for (name, job_type) in &self.job_types {
            if job_type.requires_repo_allowlist && self.repos.is_empty() {
                return Err(format!(
                    "job type {name:?} sets requires_repo_allowlist but no repos are configured"
                ));
            }
        }
        Ok(())
    }

    /// The worker token: `WARDEN_WORKER_TOKEN`, else the contents of `worker_token_file`
    /// (surrounding whitespace trimmed). `Ok(None)` when neither is set.
    pub fn worker_token(&self) -> Result<Option<String>, String> {
        read_token(self.worker_token_file.as_deref())
    }

    pub fn job_type(&self, name: &str) -> Option<&JobType> {
        self.job_types.get(name)
    }
}

/// A whole number ≥ 1. Zero and negatives are configuration errors, never "unlimited".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Positive(pub u64);

impl Positive {
    pub fn get(self) -> u64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Positive {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Positive, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Positive;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number of at least 1")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Positive, E> {
                if v == 0 {
                    Err(E::custom("must be at least 1 (0 never means unlimited)"))
                } else {
                    Ok(Positive(v))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Positive, E> {
                if v <= 0 {
                    Err(E::custom(format!(
                        "must be at least 1, got {v} (0 or negative never means unlimited)"
                    )))
                } else {
                    Ok(Positive(v as u64))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A job type's name: `^[a-z0-9][a-z0-9_.-]{0,63}$`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobTypeName(pub String);

impl std::borrow::Borrow<str> for JobTypeName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobTypeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for JobTypeName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<JobTypeName, D::Error> {
        let s = String::deserialize(d)?;
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 64
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'.' | b'-')
            });
        if ok {
            Ok(JobTypeName(s))
        } else {
            Err(de::Error::custom(format!(
                "job type name {s:?} is invalid: names match ^[a-z0-9][a-z0-9_.-]{{0,63}}$"
            )))
        }
    }
}

/// An operator-defined, allowlisted recipe.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawJobType")]
pub struct JobType {
    pub description: Option<String>,
    pub argv: Vec<String>,
    pub timeout_s: Positive,
    pub requires_repo: bool,
    pub requires_repo_allowlist: bool,
    pub allowed_params: Vec<String>,
    pub limits: Limits,
    pub network: bool,
    /// Extra host paths bound read-only into the sandbox (e.g. a toolchain).
    pub binds: Vec<BindConfig>,
    /// A root filesystem directory to run in instead of the host's system directories.
    pub rootfs: Option<PathBuf>,
    /// `core.hooksPath` in the git directory the job sees (e.g. `.githooks`): set in the gitdir's
    /// config, never in the tree. warden itself never runs hooks.
    pub hooks_path: Option<String>,
    /// Labels a worker must have to be given this job type (e.g. `gpu`, `linux-x86_64`).
    pub labels: Vec<String>,
}

/// A read-only bind of a host path into the sandbox.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindConfig {
    pub host: PathBuf,
    pub at: PathBuf,
}

/// Places inside the sandbox that warden owns; a bind may not cover them.
const RESERVED_MOUNTS: &[&str] = &[
    "/",
    "/proc",
    "/dev",
    "/tmp",
    "/work",
    "/artifacts",
    "/etc",
    "/usr",
];

impl BindConfig {
    fn check(&self, i: usize) -> Result<(), String> {
        use std::path::Component;
        for (what, p) in [("host", &self.host), ("at", &self.at)] {
            if !p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir)) {
                return Err(format!(
                    "binds[{i}].{what} {p:?} must be an absolute path without '..'"
                ));
            }
        }
        if RESERVED_MOUNTS
            .iter()
            .any(|r| self.at == std::path::Path::new(r))
            || ["/proc/", "/dev/", "/work/", "/artifacts/", "/tmp/"]
                .iter()
                .any(|r| self.at.starts_with(r))
        {
            return Err(format!(
                "binds[{i}].at {:?} is a place warden manages itself",
                self.at
            ));
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJobType {
    #[serde(default)]
    description: Option<String>,
    argv: Vec<String>,
    timeout_s: Positive,
    #[serde(default)]
    requires_repo: bool,
    #[serde(default)]
    requires_repo_allowlist: bool,
    #[serde(default)]
    allowed_params: Vec<String>,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    network: bool,
    #[serde(default)]
    binds: Vec<BindConfig>,
    #[serde(default)]
    rootfs: Option<PathBuf>,
    #[serde(default)]
    hooks_path: Option<String>,
    #[serde(default)]
    labels: Vec<String>,
}

impl TryFrom<RawJobType> for JobType {
    type Error = String;

    fn try_from(raw: RawJobType) -> Result<JobType, String> {
        if raw.argv.is_empty() || raw.argv[0].is_empty() {
            return Err("argv must name a program: it is empty".to_string());
        }
        if raw.argv.iter().any(|a| a.contains('\0')) {
            return Err("argv must not contain NUL bytes".to_string());
        }
        if raw.requires_repo_allowlist && !raw.requires_repo {
            return Err("requires_repo_allowlist needs requires_repo: true".to_string());
        }
        for (i, name) in raw.allowed_params.iter().enumerate() {
            if !is_valid_param_name(name) {
                return Err(format!(
                    "allowed_params[{i}] {name:?} is not a valid param name: \
                     names match ^[A-Z][A-Z0-9_]{{0,63}}$"
                ));
            }
            if is_reserved(name) {
                return Err(format!(
                    "allowed_params[{i}] {name:?} is reserved: warden sets it for every job"
                ));
            }
            if raw.allowed_params[..i].contains(name) {
                return Err(format!("allowed_params lists {name:?} twice"));
            }
        }
        for (i, b) in raw.binds.iter().enumerate() {
            b.check(i)?;
        }
        if let Some(r) = &raw.rootfs
            && (!r.is_absolute()
                || r.components()
                    .any(|c| matches!(c, std::path::Component::ParentDir)))
        {
            return Err(format!(
                "rootfs {r:?} must be an absolute path without '..'"
            ));
        }
        if let Some(h) = &raw.hooks_path {
            let p = std::path::Path::new(h);
            if h.is_empty()
                || h.chars().any(char::is_control)
                || p.components().any(|c| {
                    matches!(
                        c,
                        std::path::Component::ParentDir | std::path::Component::RootDir
                    )
                })
            {
                return Err(format!(
                    "hooks_path {h:?} must be a path inside the worktree (relative, without '..')"
                ));
            }
            if !raw.requires_repo {
                return Err("hooks_path needs requires_repo: true".to_string());
            }
        }
        for (i, l) in raw.labels.iter().enumerate() {
            if !is_valid_label(l) {
                return Err(format!(
                    "labels[{i}] {l:?} is not a valid label: labels match ^[a-z0-9][a-z0-9_.-]{{0,63}}$"
                ));
            }
        }
        Ok(JobType {
            labels: raw.labels,
            hooks_path: raw.hooks_path,
            binds: raw.binds,
            rootfs: raw.rootfs,
            description: raw.description,
            argv: raw.argv,
            timeout_s: raw.timeout_s,
            requires_repo: raw.requires_repo,
            requires_repo_allowlist: raw.requires_repo_allowlist,
            allowed_params: raw.allowed_params,
            limits: raw.limits,
            network: raw.network,
        })
    }
}

/// Resource limits of a job type. Absent means warden's default, never unlimited for output.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub memory_mb: Option<Positive>,
    pub pids: Option<Positive>,
    /// Cap on stdout+stderr together; beyond it the job is killed (`output_limit`).
    #[serde(default = "default_output_mb")]
    pub output_mb: Positive,
    pub cpu_s: Option<Positive>,
    pub file_size_mb: Option<Positive>,
    pub open_files: Option<Positive>,
    pub tmpfs_mb: Option<Positive>,
}

fn default_output_mb() -> Positive {
    Positive(64)
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            memory_mb: None,
            pids: None,
            output_mb: default_output_mb(),
            cpu_s: None,
            file_size_mb: None,
            open_files: None,
            tmpfs_mb: None,
        }
    }
}

impl Limits {
    pub fn output_bytes(&self) -> u64 {
        self.output_mb.get().saturating_mul(1024 * 1024)
    }
}

/// One allowlisted repository.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawRepo")]
pub struct RepoConfig {
    pub url: String,
    pub transport: Transport,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRepo {
    url: String,
}

impl TryFrom<RawRepo> for RepoConfig {
    type Error = String;

    fn try_from(raw: RawRepo) -> Result<RepoConfig, String> {
        let transport = parse_repo_url(&raw.url)?;
        Ok(RepoConfig {
            url: raw.url,
            transport,
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

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUE_SHAPE: &str = r#"listen: 127.0.0.1:8080
data_dir: ./.warden
slots: 2
job_types:
  local_echo:
    argv: ["/bin/sh", "-c", "echo hello from warden; uname -a"]
    timeout_s: 60
  pytest:
    argv: ["python3", "-m", "pytest", "-q"]
    requires_repo: true
    requires_repo_allowlist: true
    allowed_params: [PYTEST_ADDOPTS]
    timeout_s: 1800
    limits: {memory_mb: 2048, pids: 256, output_mb: 64}
    network: false
repos:
  click: {url: "https://github.com/pallets/click.git"}
"#;

    #[test]
    fn the_documented_shape_is_accepted() {
        let c = Config::from_yaml_str(ISSUE_SHAPE, "warden.yaml").unwrap();
        assert_eq!(c.slots.get(), 2);
        assert!(
            !c.unsafe_fallback,
            "a file must opt in to running unsandboxed"
        );
        let py = c.job_type("pytest").unwrap();
        assert_eq!(py.limits.memory_mb, Some(Positive(2048)));
        assert_eq!(py.limits.output_bytes(), 64 << 20);
        assert_eq!(py.allowed_params, ["PYTEST_ADDOPTS"]);
        assert_eq!(c.repos["click"].url, "https://github.com/pallets/click.git");
    }

    #[test]
    fn builtin_default_has_the_demo_job_type() {
        let c = Config::builtin();
        assert!(c.unsafe_fallback);
        assert_eq!(c.job_type("local_echo").unwrap().timeout_s.get(), 60);
        assert!(c.listen.ip().is_loopback());
    }

    /// `check(yaml, line, fragment)`: the file is refused, at that line, saying that.
    fn check(yaml: &str, line: Option<usize>, fragment: &str) {
        let err = Config::from_yaml_str(yaml, "bad.yaml").unwrap_err();
        assert!(err.message.contains(fragment), "{err} lacks {fragment:?}");
        assert_eq!(err.line, line, "{err}");
        assert!(err.to_string().starts_with("bad.yaml"), "{err}");
    }

    #[test]
    fn bad_configs_are_refused_with_line_and_reason() {
        check("slots: 2\nbogus: 1\n", Some(2), "unknown field `bogus`");
        check("slots: two\n", Some(1), "invalid type: string \"two\"");
        check("slots: 0\n", Some(1), "0 never means unlimited");
        check("slots: -3\n", Some(1), "got -3");
        check(
            "job_types:\n  t:\n    argv: [x]\n    timeout_s: 0\n",
            Some(4),
            "0 never means unlimited",
        );
        check(
            "job_types:\n  t:\n    argv: [x]\n    timeout_s: -1\n",
            Some(4),
            "got -1",
        );
        check(
            "job_types:\n  t:\n    argv: [x]\n",
            Some(3),
            "missing field `timeout_s`",
        );
        check(
            "job_types:\n  t:\n    argv: []\n    timeout_s: 5\n",
            Some(2),
            "argv must name a program",
        );
        check(
            "job_types:\n  t:\n    argv: [x]\n    timeout_s: 5\n    allowed_params: [lower]\n",
            Some(2),
            "not a valid param name",
        );
        check(
            "job_types:\n  t:\n    argv: [x]\n    timeout_s: 5\n    allowed_params: [HOME]\n",
            Some(2),
            "reserved",
        );
        check(
            "job_types:\n  t:\n    argv: [x]\n    timeout_s: 5\n    limits: {memory_mb: 0}\n",
            Some(5),
            "0 never means unlimited",
        );
        check(
            "job_types:\n  t:\n    argv: [x]\n    timeout_s: 5\n    limits: {swap: 1}\n",
            Some(5),
            "unknown field `swap`",
        );
        check(
            "job_types:\n  Bad Name:\n    argv: [x]\n    timeout_s: 5\n",
            Some(2),
            "is invalid",
        );
        check("listen: nowhere\n", Some(1), "invalid socket address");
        check(
            "job_types:\n  t:\n    argv: [x]\n    timeout_s: 5\n    binds: [{host: /opt, at: /proc/x}]\n",
            Some(2),
            "a place warden manages itself",
        );
        check(
            "job_types:\n  t:\n    argv: [x]\n    timeout_s: 5\n    binds: [{host: opt, at: /opt}]\n",
            Some(2),
            "must be an absolute path",
        );
        check("listen: 0.0.0.0:8080\n", None, "not loopback");
        check(
            "job_types:\n  t:\n    argv: [x]\n    timeout_s: 5\n    allowed_params: [WARDEN_SHA]\n",
            Some(2),
            "reserved",
        );
        check(
            "job_types:\n  t:\n    argv: [x]\n    timeout_s: 5\n    allowed_params: [GIT_CONFIG_COUNT]\n",
            Some(2),
            "reserved",
        );
        check(
            "repos:\n  x: {url: \"ext::sh -c id\"}\n",
            Some(2),
            "transport \"ext\" is not allowed",
        );
        check(
            "repos:\n  x: {url: \"https://u:p@h/x\"}\n",
            Some(2),
            "credentials in a repository URL are refused",
        );
        check(
            "repos:\n  x: {url: \"https://h/x\", branch: main}\n",
            Some(2),
            "unknown field `branch`",
        );
        check(
            "git: {fetch_timeout_s: 0}\n",
            Some(1),
            "0 never means unlimited",
        );
        check(
            "job_types:\n  t:\n    argv: [x]\n    timeout_s: 5\n    requires_repo: true\n    hooks_path: ../x\n",
            Some(2),
            "must be a path inside the worktree",
        );
        check(
            "slots: 'unterminated\n",
            Some(2),
            "found unexpected end of stream",
        );
    }

    #[test]
    fn empty_file_means_defaults() {
        let c = Config::from_yaml_str("\n", "empty.yaml").unwrap();
        assert!(c.job_types.is_empty());
        assert_eq!(c.slots.get(), 2);
    }
}
