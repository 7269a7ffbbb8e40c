//! Every rule about jobs, independent of the wire: the HTTP and gRPC handlers only translate.
//! The service speaks the `Store` trait and, when jobs run in this process, a [`LocalWorkers`]
//! handle; it knows neither SQLite nor the worker pool (`serve.rs` wires them).

pub mod admin;
mod artifacts;
mod error;
mod logs;
pub mod readers;
mod submit;
mod tests;

pub use tests::{DEFAULT_TESTS_LIMIT, MAX_TESTS_LIMIT};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use warden_api::{ErrorCode, JobStatus, JobTypeView, JobView, rfc3339};
use warden_core::{Config, JobId};
use warden_repo::Repos;
use warden_store::{AuditEntry, CancelOutcome, JobRecord, ListFilter, Store, now_millis};

use crate::auth::{Caller, Scope};
use warden_worker::{DataDir, Events};

pub use artifacts::ArtifactBody;
pub use error::ServiceError;
pub use logs::{LogItem, Watched};

/// The tenant of trusted loopback callers (`auth.loopback_trusted`).
pub const DEFAULT_TENANT: &str = "default";

/// How often a log follower or job watcher looks again without being woken: a worker attached
/// to another replica writes without notifying this one (see the PostgreSQL store's triggers).
pub const FOLLOW_POLL: Duration = Duration::from_millis(250);

/// Jobs running in this process: what the service may ask of them.
#[tonic::async_trait]
pub trait LocalWorkers: Send + Sync + 'static {
    /// A job was queued: an idle slot looks now.
    fn wake(&self);
    /// An idle slot to claim for in the next submission's own transaction, if there is one.
    fn offer(&self) -> Option<warden_worker::SlotOffer> {
        None
    }
    /// Stops a job running here at once; false when it is not running here.
    fn cancel(&self, id: JobId) -> bool;
    /// Stops claiming, gives running jobs `grace`, then kills and re-queues what is left.
    async fn shutdown(&self, grace: Duration);
}

/// Where jobs' code and roots come from: git mirrors and checkouts, and images.
pub struct Sources {
    pub repos: Arc<Repos>,
    pub images: Arc<warden_image::Images>,
}

pub struct JobService {
    pub store: Arc<dyn Store>,
    pub config: Arc<Config>,
    pub data: DataDir,
    pub events: Events,
    pub repos: Arc<Repos>,
    /// Resolves a job type's image to the digest a submitted job is pinned to.
    pub images: Arc<warden_image::Images>,
    workers: Option<Arc<dyn LocalWorkers>>,
    /// Jobs run without the kernel sandbox (recorded on each job).
    unsafe_fallback: bool,
    accepting: AtomicBool,
    /// Bumped whenever a job may be waiting (queued here, or on another replica): claims
    /// held open for remote workers look again.
    queued: tokio::sync::watch::Sender<u64>,
    /// Cancelled when the server stops: live log streams end.
    pub shutdown: tokio_util::sync::CancellationToken,
    pub auth: crate::auth::Authenticator,
    /// Artifacts in a bucket (`artifact_store:`) instead of the artifact directory.
    pub s3: Option<Arc<crate::artifact_store::S3Artifacts>>,
    /// What `/metrics` exports (`None`: not served).
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// The embedded workers' sandbox self-test at start: `Err` with why it failed, when jobs
    /// here fail closed (`/readyz` then answers 503).
    pub sandbox: Result<(), String>,
}

/// One page of a listing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListQuery {
    /// Only an admin may list another tenant's jobs (or every tenant's, with `None`).
    pub tenant: Option<String>,
    pub status: Option<JobStatus>,
    pub job_type: Option<String>,
    pub repo_name: Option<String>,
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
        Sources { repos, images }: Sources,
        workers: Option<Arc<dyn LocalWorkers>>,
        unsafe_fallback: bool,
    ) -> JobService {
        JobService {
            images,
            auth: crate::auth::Authenticator::new(store.clone(), config.clone()),
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
            s3: None,
            metrics: None,
            sandbox: Ok(()),
        }
    }

    /// Whether this replica takes submissions (not draining for a stop).
    pub fn accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
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

    /// A job as the store has it, whoever asks (the service's own reads).
    pub(crate) async fn load(&self, id: JobId) -> Result<JobRecord, ServiceError> {
        Ok(self.store.get(id).await?)
    }

    /// Refuses (403, audited) a caller without `scope`.
    pub async fn authorize(
        &self,
        caller: &Caller,
        scope: Scope,
        target: &str,
    ) -> Result<(), ServiceError> {
        match caller.require(scope) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.denied(caller, target, e).await),
        }
    }

    /// Audits a refusal (403, 404 for another tenant's job, 429) and returns it.
    pub async fn denied(&self, caller: &Caller, target: &str, e: ServiceError) -> ServiceError {
        let mut entry = caller.audit(
            "refused",
            Some(target.to_string()),
            &e.code.http_status().to_string(),
        );
        entry.detail = Some(e.message.clone());
        self.audit(entry).await;
        e
    }

    /// A job the caller may act on with `scope`: another tenant's job is not found (404, never
    /// 403: its existence is not the caller's business), and the refusal is audited.
    pub async fn job(
        &self,
        caller: &Caller,
        id: JobId,
        scope: Scope,
    ) -> Result<JobRecord, ServiceError> {
        self.authorize(caller, scope, &id.to_string()).await?;
        let job = self.load(id).await?;
        if !caller.sees(&job.tenant) {
            let e = ServiceError::from(warden_store::StoreError::NotFound(id));
            return Err(self.denied(caller, &id.to_string(), e).await);
        }
        Ok(job)
    }

    pub async fn get(&self, caller: &Caller, id: JobId) -> Result<JobRecord, ServiceError> {
        self.job(caller, id, Scope::Read).await
    }

    /// Appends to the audit trail. A store that cannot take it is logged, not the caller's
    /// failure: the action it records has already happened.
    pub async fn audit(&self, entry: AuditEntry) {
        if let Err(e) = self.store.append_audit(vec![entry.clone()]).await {
            tracing::error!(error = %e, ?entry, "could not write the audit entry");
        }
    }

    /// One page of the caller's jobs, newest first, and the cursor of the next page when this
    /// one is full.
    pub async fn list(
        &self,
        caller: &Caller,
        q: ListQuery,
    ) -> Result<(Vec<JobRecord>, Option<String>), ServiceError> {
        self.authorize(caller, Scope::Read, "list").await?;
        let tenant = match q.tenant {
            Some(t) if t != caller.tenant => {
                self.authorize(caller, Scope::Admin, "list another tenant")
                    .await?;
                Some(t)
            }
            Some(t) => Some(t),
            None if caller.is_admin() => None,
            None => Some(caller.tenant.clone()),
        };
        if !(1..=500).contains(&q.limit) {
            return Err(ServiceError::new(
                ErrorCode::InvalidQuery,
                format!("limit {} is out of range: 1..=500", q.limit),
            ));
        }
        let filter = ListFilter {
            tenant,
            status: q.status,
            job_type: q.job_type,
            repo_name: q.repo_name,
            before: q.before,
            limit: q.limit,
        };
        let jobs = self.store.list(&filter).await?;
        let next = (jobs.len() == q.limit as usize)
            .then(|| jobs.last().map(|j| j.id.to_string()))
            .flatten();
        Ok((jobs, next))
    }

    pub async fn cancel(&self, caller: &Caller, id: JobId) -> Result<JobRecord, ServiceError> {
        self.job(caller, id, Scope::Cancel).await?;
        self.audit(caller.audit("cancel", Some(id.to_string()), "ok"))
            .await;
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

    /// The job types the caller's tenant may submit.
    pub async fn job_types(&self, caller: &Caller) -> Result<Vec<JobTypeView>, ServiceError> {
        self.authorize(caller, Scope::Read, "job types").await?;
        let tenant = self.config.tenant(&caller.tenant);
        Ok(self
            .config
            .job_types
            .iter()
            .filter(|(name, _)| {
                caller.is_admin() || tenant.as_ref().is_some_and(|t| t.may_use_job_type(&name.0))
            })
            .map(|(name, t)| JobTypeView {
                name: name.0.clone(),
                argv: t.argv.clone(),
                stages: t.stages.iter().map(|s| s.name.clone()).collect(),
                timeout_s: t.timeout_s.get(),
                requires_repo: t.requires_repo,
                allowed_params: t.allowed_params.clone(),
                network: t.network != warden_core::config::NetworkPolicy::None,
                egress: t
                    .network
                    .egress()
                    .map(|p| p.rules.iter().map(ToString::to_string).collect())
                    .unwrap_or_default(),
            })
            .collect())
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
            inline_argv: job.inline_argv.clone(),
            image: job.image.clone(),
            stages: job.stages.clone(),
            tests: job.tests.clone(),
            artifact_bytes: job.artifact_bytes,
            tool_bundle: job
                .tool_bundle
                .as_ref()
                .map(|b| format!("sha256:{}", b.sha256)),
            tool_env_var: job.tool_bundle.as_ref().map(|b| b.env_var.clone()),
            artifact_dir: self.artifact_dir(job.id),
        }
    }

    /// The webhook deliveries of a job the caller sees, oldest first.
    pub async fn webhooks(
        &self,
        caller: &Caller,
        id: JobId,
    ) -> Result<warden_api::WebhooksResponse, ServiceError> {
        self.job(caller, id, Scope::Read).await?;
        let deliveries = self
            .store
            .deliveries(id)
            .await?
            .into_iter()
            .map(|d| {
                let event: Option<serde_json::Value> = serde_json::from_slice(&d.body).ok();
                let pending = d.delivered_at.is_none() && !d.gave_up;
                warden_api::WebhookDelivery {
                    event_id: crate::events::event_id(d.job_id, d.seq),
                    job_status: event
                        .as_ref()
                        .and_then(|e| e["status"].as_str())
                        .and_then(JobStatus::parse),
                    url: d.url,
                    attempts: d.attempts,
                    delivered: d.delivered_at.is_some(),
                    gave_up: d.gave_up,
                    last_status: d.last_status,
                    last_error: d.last_error,
                    created_at: rfc3339(d.created_at),
                    delivered_at: d.delivered_at.map(rfc3339),
                    next_attempt_at: pending.then(|| rfc3339(d.next_at)),
                }
            })
            .collect();
        Ok(warden_api::WebhooksResponse {
            job_id: id.to_string(),
            deliveries,
        })
    }

    pub fn artifact_dir(&self, id: JobId) -> String {
        self.data.artifacts(id).to_string_lossy().into_owned()
    }
}
