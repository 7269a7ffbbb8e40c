//! Every rule about jobs, independent of the wire: the HTTP and gRPC handlers only translate.
//! The service speaks the `Store` trait and, when jobs run in this process, a [`LocalWorkers`]
//! handle; it knows neither SQLite nor the worker pool (`serve.rs` wires them).

mod artifacts;
mod error;
mod logs;
mod submit;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use warden_api::{ErrorCode, JobStatus, JobTypeView, JobView, rfc3339};
use warden_core::{Config, JobId};
use warden_repo::Repos;
use warden_store::{CancelOutcome, JobRecord, ListFilter, Store, now_millis};
use warden_worker::{DataDir, Events};

pub use error::ServiceError;
pub use logs::LogItem;

/// The tenant of every job until authentication arrives.
pub const DEFAULT_TENANT: &str = "default";

/// How often a log follower or job watcher looks again without being woken: a worker attached
/// to another replica writes without notifying this one (see the PostgreSQL store's triggers).
pub const FOLLOW_POLL: Duration = Duration::from_millis(250);

/// Jobs running in this process: what the service may ask of them.
#[tonic::async_trait]
pub trait LocalWorkers: Send + Sync + 'static {
    /// A job was queued: idle slots look now.
    fn wake(&self);
    /// Stops a job running here at once; false when it is not running here.
    fn cancel(&self, id: JobId) -> bool;
    /// Stops claiming, gives running jobs `grace`, then kills and re-queues what is left.
    async fn shutdown(&self, grace: Duration);
}

pub struct JobService {
    pub store: Arc<dyn Store>,
    pub config: Arc<Config>,
    pub data: DataDir,
    pub events: Events,
    pub repos: Arc<Repos>,
    workers: Option<Arc<dyn LocalWorkers>>,
    /// Jobs run without the kernel sandbox (recorded on each job).
    unsafe_fallback: bool,
    accepting: AtomicBool,
    /// Bumped whenever a job may be waiting (queued here, or on another replica): claims
    /// held open for remote workers look again.
    queued: tokio::sync::watch::Sender<u64>,
    /// Cancelled when the server stops: live log streams end.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// One page of a listing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListQuery {
    pub status: Option<JobStatus>,
    pub job_type: Option<String>,
    /// The cursor of the previous page: jobs older than this one.
    pub before: Option<JobId>,
    /// 1..=500.
    pub limit: u32,
}

impl JobService {
    pub fn new(
        store: Arc<dyn Store>,
        config: Arc<Config>,
        data: DataDir,
        events: Events,
        repos: Arc<Repos>,
        workers: Option<Arc<dyn LocalWorkers>>,
        unsafe_fallback: bool,
    ) -> JobService {
        JobService {
            unsafe_fallback,
            repos,
            store,
            config,
            data,
            events,
            workers,
            accepting: AtomicBool::new(true),
            queued: tokio::sync::watch::Sender::new(0),
            shutdown: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// Stops gracefully: new submissions get 503, running jobs get `grace` to finish before
    /// they are killed and re-queued, then live log streams end.
    pub async fn drain(&self, grace: Duration) {
        self.accepting.store(false, Ordering::SeqCst);
        if let Some(w) = &self.workers {
            w.shutdown(grace).await;
        }
        self.shutdown.cancel();
    }

    /// A job may be waiting: wake the in-process slots and the claims held open for workers.
    pub fn job_queued(&self) {
        self.queued.send_modify(|n| *n = n.wrapping_add(1));
        if let Some(w) = &self.workers {
            w.wake();
        }
    }

    /// Ticks on every [`job_queued`](Self::job_queued).
    pub fn queued_events(&self) -> tokio::sync::watch::Receiver<u64> {
        self.queued.subscribe()
    }

    pub fn parse_id(raw: &str) -> Result<JobId, ServiceError> {
        raw.parse().map_err(|e: warden_core::id::InvalidJobId| {
            ServiceError::new(ErrorCode::InvalidJobId, e.to_string())
        })
    }

    pub async fn get(&self, id: JobId) -> Result<JobRecord, ServiceError> {
        Ok(self.store.get(id).await?)
    }

    /// One page of the caller's jobs, newest first, and the cursor of the next page when this
    /// one is full.
    pub async fn list(
        &self,
        q: ListQuery,
    ) -> Result<(Vec<JobRecord>, Option<String>), ServiceError> {
        if !(1..=500).contains(&q.limit) {
            return Err(ServiceError::new(
                ErrorCode::InvalidQuery,
                format!("limit {} is out of range: 1..=500", q.limit),
            ));
        }
        let filter = ListFilter {
            tenant: Some(DEFAULT_TENANT.to_string()),
            status: q.status,
            job_type: q.job_type,
            before: q.before,
            limit: q.limit,
        };
        let jobs = self.store.list(&filter).await?;
        let next = (jobs.len() == q.limit as usize)
            .then(|| jobs.last().map(|j| j.id.to_string()))
            .flatten();
        Ok((jobs, next))
    }

    pub async fn cancel(&self, id: JobId) -> Result<JobRecord, ServiceError> {
        match self.store.request_cancel(id, now_millis()).await? {
            CancelOutcome::Cancelled(job) => {
                self.events.job_changed(id);
                Ok(job)
            }
            CancelOutcome::Requested(job) => {
                // In-process worker: stop it now rather than at its next heartbeat; a remote
                // worker's session hears of the change and pushes the cancellation.
                if let Some(w) = &self.workers {
                    w.cancel(id);
                }
                self.events.job_changed(id);
                Ok(job)
            }
            CancelOutcome::AlreadyFinished(job) => Err(ServiceError::new(
                ErrorCode::JobFinished,
                format!("job {id} already ended as {}", job.status),
            )),
        }
    }

    pub fn job_types(&self) -> Vec<JobTypeView> {
        self.config
            .job_types
            .iter()
            .map(|(name, t)| JobTypeView {
                name: name.0.clone(),
                argv: t.argv.clone(),
                timeout_s: t.timeout_s.get(),
                requires_repo: t.requires_repo,
                allowed_params: t.allowed_params.clone(),
                network: t.network,
            })
            .collect()
    }

    pub fn view(&self, job: &JobRecord) -> JobView {
        JobView {
            job_id: job.id.to_string(),
            tenant: job.tenant.clone(),
            job_type: job.job_type.clone(),
            status: job.status,
            reason: job.reason.clone(),
            repo_name: job.repo_name.clone(),
            remote_url: job.remote_url.clone(),
            sha: job.sha.clone(),
            git_ref: job.git_ref.clone(),
            params: job.params.clone(),
            idempotency_key: job.idempotency_key.clone(),
            invariants: job.invariants.clone(),
            exit_code: job.exit_code,
            signal: job.signal,
            attempts: job.attempts,
            max_attempts: job.max_attempts,
            cancel_requested: job.cancel_requested,
            unsafe_fallback: job.unsafe_fallback,
            warnings: job.warnings.clone(),
            created_at: rfc3339(job.created_at),
            started_at: job.started_at.map(rfc3339),
            finished_at: job.finished_at.map(rfc3339),
            stdout_bytes: job.stdout_bytes,
            stderr_bytes: job.stderr_bytes,
            log_truncated: job.log_truncated,
            resources: job.resources.clone(),
            enforcement: job.enforcement.clone(),
            artifact_dir: self.artifact_dir(job.id),
        }
    }

    pub fn artifact_dir(&self, id: JobId) -> String {
        self.data.artifacts(id).to_string_lossy().into_owned()
    }
}
