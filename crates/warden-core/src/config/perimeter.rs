//! Who may use warden and with what: authentication, tenants and their quotas, secrets.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde::de::{self, Deserializer};

use super::positive::Positive;

/// `auth:` — how callers prove who they are.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// A caller on loopback without a token acts as tenant `default` with every scope. For one
    /// operator on one machine (the demo default); never for a shared host.
    #[serde(default)]
    pub loopback_trusted: bool,
    /// Serve HTTP and gRPC without TLS on a non-loopback address, because a reverse proxy in
    /// front terminates TLS. Logged at start.
    #[serde(default)]
    pub insecure_plaintext_behind_proxy: bool,
    /// Requests each token may make, refilled per second, and the burst above it.
    #[serde(default)]
    pub rate_limit: RateLimit,
}

/// A token bucket: `per_second` requests refill it, `burst` is its size.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    #[serde(default = "default_per_second")]
    pub per_second: Positive,
    #[serde(default = "default_burst")]
    pub burst: Positive,
}

fn default_per_second() -> Positive {
    Positive(50)
}
fn default_burst() -> Positive {
    Positive(200)
}

impl Default for RateLimit {
    fn default() -> RateLimit {
        RateLimit {
            per_second: default_per_second(),
            burst: default_burst(),
        }
    }
}

/// A tenant's name: `^[a-z0-9][a-z0-9_.-]{0,63}$`, like a job type's.
pub fn is_valid_tenant(name: &str) -> bool {
    super::is_valid_label(name)
}

/// One tenant's policy. Absent fields allow everything the server offers, without quota.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Job types this tenant may submit; absent: all.
    #[serde(default)]
    pub job_types: Option<Vec<String>>,
    /// Repositories (names from `repos:`) this tenant may use; absent: all.
    #[serde(default)]
    pub repos: Option<Vec<String>>,
    /// Its jobs running at once, over every worker; more wait in the queue.
    #[serde(default)]
    pub max_running: Option<Positive>,
    /// Its jobs waiting at once; a submission over it gets 429.
    #[serde(default)]
    pub max_queued: Option<Positive>,
    /// Its share of the slots when tenants compete (claims interleave by weight).
    #[serde(default = "default_weight")]
    pub weight: Positive,
    /// Lets this tenant submit its own argv, run under this job type's sandbox and limits.
    #[serde(default)]
    pub inline: Option<InlinePolicy>,
    /// Its own job retention (`jobs_days`, `max_mb`); absent: the server's `retention:`.
    #[serde(default)]
    pub retention: Option<super::TenantRetention>,
}

fn default_weight() -> Positive {
    Positive(1)
}

impl Default for TenantConfig {
    fn default() -> TenantConfig {
        TenantConfig {
            job_types: None,
            repos: None,
            max_running: None,
            max_queued: None,
            weight: default_weight(),
            inline: None,
            retention: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InlinePolicy {
    pub job_type: String,
}

impl TenantConfig {
    pub fn may_use_job_type(&self, name: &str) -> bool {
        self.job_types
            .as_ref()
            .is_none_or(|t| t.iter().any(|n| n == name))
    }

    pub fn may_use_repo(&self, name: &str) -> bool {
        self.repos
            .as_ref()
            .is_none_or(|t| t.iter().any(|n| n == name))
    }
}

/// A secret's name: `^[A-Z][A-Z0-9_]{0,63}$` (it becomes a file name and may become a variable).
pub fn is_valid_secret_name(name: &str) -> bool {
    crate::params::is_valid_param_name(name)
}

/// Where a secret's value comes from, read once when warden starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file owned by root or warden's user with mode 0600 or 0400 (checked at start).
    File(PathBuf),
    /// An environment variable of the warden process.
    Env(String),
}

impl<'de> Deserialize<'de> for SecretSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SecretSource, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            file: Option<PathBuf>,
            env: Option<String>,
        }
        let raw = Raw::deserialize(d)?;
        match (raw.file, raw.env) {
            (Some(f), None) if f.is_absolute() => Ok(SecretSource::File(f)),
            (Some(f), None) => Err(de::Error::custom(format!(
                "secret file {f:?} must be an absolute path"
            ))),
            (None, Some(v)) if !v.is_empty() && !v.contains(['=', '\0']) => {
                Ok(SecretSource::Env(v))
            }
            (None, Some(v)) => Err(de::Error::custom(format!(
                "secret env {v:?} is not a variable name"
            ))),
            _ => Err(de::Error::custom(
                "a secret is {file: /absolute/path} or {env: VARIABLE}, exactly one of them",
            )),
        }
    }
}

/// Checks the names of `tenants:` and `secrets:` maps and what they refer to.
pub(super) fn check(
    tenants: &BTreeMap<String, TenantConfig>,
    secrets: &BTreeMap<String, SecretSource>,
    job_types: &BTreeMap<super::JobTypeName, super::JobType>,
    repos: &BTreeMap<String, super::RepoConfig>,
) -> Result<(), String> {
    for (name, t) in tenants {
        if !is_valid_tenant(name) {
            return Err(format!(
                "tenant name {name:?} is invalid: names match ^[a-z0-9][a-z0-9_.-]{{0,63}}$"
            ));
        }
        for jt in t.job_types.iter().flatten() {
            if !job_types.contains_key(jt.as_str()) {
                return Err(format!(
                    "tenants.{name}.job_types names {jt:?}, which is not a configured job type"
                ));
            }
        }
        for r in t.repos.iter().flatten() {
            if !repos.contains_key(r) {
                return Err(format!(
                    "tenants.{name}.repos names {r:?}, which is not a configured repository"
                ));
            }
        }
        if let Some(inline) = &t.inline {
            if !job_types.contains_key(inline.job_type.as_str()) {
                return Err(format!(
                    "tenants.{name}.inline.job_type {:?} is not a configured job type",
                    inline.job_type
                ));
            }
            if !t.may_use_job_type(&inline.job_type) {
                return Err(format!(
                    "tenants.{name}.inline.job_type {:?} is not among the tenant's job_types",
                    inline.job_type
                ));
            }
        }
    }
    for name in secrets.keys() {
        if !is_valid_secret_name(name) {
            return Err(format!(
                "secret name {name:?} is invalid: names match ^[A-Z][A-Z0-9_]{{0,63}}$"
            ));
        }
    }
    for (name, repo) in repos {
        if let Some(c) = &repo.credential
            && !secrets.contains_key(&c.secret)
        {
            return Err(format!(
                "repos.{name}.credential.secret {:?} is not defined under secrets:",
                c.secret
            ));
        }
    }
    for (jt_name, jt) in job_types {
        for s in jt.secrets.iter().chain(jt.secret_env.values()) {
            if !secrets.contains_key(s) {
                return Err(format!(
                    "job type {jt_name:?} is granted secret {s:?}, which is not defined under \
                     secrets:"
                ));
            }
        }
    }
    Ok(())
}
