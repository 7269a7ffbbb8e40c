//! What every slot of a worker pool shares.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use warden_core::Config;
use warden_repo::Repos;

use crate::{Coordinator, DataDir, Events, Executor};

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Names this worker in leases.
    pub worker_id: String,
    pub slots: usize,
    pub lease_ms: i64,
    pub cancel_grace: Duration,
    /// How often an idle slot looks for work when nobody wakes it.
    pub idle_poll: Duration,
    /// Claim only these job types (those this worker's labels qualify it for); `None`: any.
    pub job_types: Option<Vec<String>>,
    /// The secrets this worker can grant (loaded at start: see [`Secrets::load`]).
    pub secrets: Arc<crate::secrets::Secrets>,
    /// The image cache jobs with an `image:` run from; `None`: such jobs fail closed.
    pub images: Option<Arc<warden_image::Images>>,
    /// Where a job's `tool_bundle` (a SHA-256) is looked up; `None`: such jobs fail closed.
    pub tool_bundles: Option<crate::tool_bundles::ToolBundles>,
}

impl WorkerConfig {
    pub fn from_config(config: &Config) -> WorkerConfig {
        WorkerConfig {
            worker_id: format!("embedded-{}", uuid::Uuid::now_v7().simple()),
            slots: config.slots.get() as usize,
            lease_ms: (config.lease_s.get() as i64).saturating_mul(1000),
            cancel_grace: Duration::from_secs(config.cancel_grace_s.get()),
            idle_poll: Duration::from_millis(500),
            job_types: None,
            secrets: Arc::default(),
            images: None,
            tool_bundles: config
                .tool_bundles
                .as_ref()
                .map(crate::tool_bundles::ToolBundles::new),
        }
    }

    /// Heartbeats go out three times per lease, so one lost beat never costs the lease.
    pub(crate) fn heartbeat_every(&self) -> Duration {
        Duration::from_millis((self.lease_ms / 3).max(10) as u64)
    }
}

/// What every slot shares.
#[derive(Clone)]
pub(crate) struct Shared {
    pub coordinator: Arc<dyn Coordinator>,
    pub executor: Arc<dyn Executor>,
    pub config: Arc<Config>,
    pub data: DataDir,
    pub events: Events,
    pub worker: WorkerConfig,
    pub repos: Arc<Repos>,
}

/// Signals the pool can send to a running job.
#[derive(Clone, Default)]
pub(crate) struct JobSignals {
    /// The caller cancelled it: SIGTERM, grace, SIGKILL; ends `cancelled`.
    pub cancel: CancellationToken,
    /// warden is stopping and the grace period is over: kill it and give it back to the queue.
    pub shutdown: CancellationToken,
}
