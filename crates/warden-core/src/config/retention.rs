//! `retention:` — how long finished jobs are kept, how much room they may take, and when an
//! unused git mirror is removed. What the collector (warden-server's `gc`) enforces.

use serde::Deserialize;

use super::positive::Positive;

/// The server-wide policy; a tenant's `retention:` overrides its two job limits.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// A finished job (record, logs, test results, artifacts) is deleted this many days after
    /// it ended. Absent: `jobs_days: 90`.
    #[serde(default = "default_jobs_days")]
    pub jobs_days: Positive,
    /// Most room a tenant's finished jobs' logs and artifacts may take, in MiB; over it its
    /// oldest finished jobs are deleted whole until it fits. Absent: no size budget.
    #[serde(default)]
    pub max_mb: Option<Positive>,
    /// A git mirror no job has used for this many days is removed (fetched again if a job
    /// needs it later). Absent: 30.
    #[serde(default = "default_mirrors_unused_days")]
    pub mirrors_unused_days: Positive,
    /// Seconds between the collector's passes. Absent: 600.
    #[serde(default = "default_interval_s")]
    pub interval_s: Positive,
    /// Jobs deleted per store transaction, so a pass never holds the queue up for long.
    #[serde(default = "default_batch")]
    pub batch: Positive,
}

/// A tenant's own limits (`tenants.<name>.retention:`); absent fields take the server's.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRetention {
    #[serde(default)]
    pub jobs_days: Option<Positive>,
    #[serde(default)]
    pub max_mb: Option<Positive>,
}

/// What applies to one tenant's finished jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobRetention {
    pub jobs_days: u64,
    pub max_bytes: Option<u64>,
}

impl RetentionConfig {
    /// The server's limits, overridden by a tenant's.
    pub fn for_tenant(&self, tenant: Option<&TenantRetention>) -> JobRetention {
        let t = tenant.cloned().unwrap_or_default();
        JobRetention {
            jobs_days: t.jobs_days.unwrap_or(self.jobs_days).get(),
            max_bytes: t
                .max_mb
                .or(self.max_mb)
                .map(|m| m.get().saturating_mul(1 << 20)),
        }
    }
}

impl Default for RetentionConfig {
    fn default() -> RetentionConfig {
        RetentionConfig {
            jobs_days: default_jobs_days(),
            max_mb: None,
            mirrors_unused_days: default_mirrors_unused_days(),
            interval_s: default_interval_s(),
            batch: default_batch(),
        }
    }
}

fn default_jobs_days() -> Positive {
    Positive(90)
}
fn default_mirrors_unused_days() -> Positive {
    Positive(30)
}
fn default_interval_s() -> Positive {
    Positive(600)
}
fn default_batch() -> Positive {
    Positive(500)
}
