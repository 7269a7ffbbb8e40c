//! The durable queue and job store, as a trait.
//!
//! Every state change a job goes through is one call here, and every call that a worker makes on
//! a running job carries its [`Lease`]: a store refuses writes whose fencing token is not the
//! current one, so a worker that lost its claim can never overwrite the job's fate.
//!
//! Backends: `warden-store-sqlite` (embedded default) and `warden-store-postgres` (many
//! replicas). The [`conformance`] module holds the
//! behaviour every backend must show; a backend runs it with [`conformance_tests!`].

use std::collections::BTreeMap;

use async_trait::async_trait;
use warden_core::{JobId, JobStatus};

pub mod conformance;
pub mod fair;
pub mod perimeter;

pub use fair::{FairShare, Share};
pub use perimeter::{AuditEntry, AuditFilter, AuditRecord, TokenRecord};

pub use warden_core::record::{
    Claimed, Completion, HeartbeatReply, JobRecord, Lease, LogStream, Millis, RunTelemetry,
    ToolBundleRef,
};

/// The clock, read by callers: the store never reads it itself, which keeps the lease logic
/// testable.
pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A job as the service layer accepts it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub id: JobId,
    pub tenant: String,
    pub job_type: String,
    pub repo_name: Option<String>,
    pub remote_url: Option<String>,
    pub sha: Option<String>,
    /// The ref the caller named; `sha` is what it resolved to at submission.
    pub git_ref: Option<String>,
    pub params: BTreeMap<String, String>,
    pub idempotency_key: Option<String>,
    pub max_attempts: u32,
    pub unsafe_fallback: bool,
    pub created_at: Millis,
    /// Refuse the job (`QueueFull`) when its tenant already has this many jobs queued.
    pub max_queued: Option<u64>,
    /// The caller's argv of an inline job.
    pub inline_argv: Option<Vec<String>>,
    /// The job type's image, pinned (`REF@sha256:…`).
    pub image: Option<String>,
    /// Where this job's events are delivered as webhooks (checked against the allowlist).
    pub callback_url: Option<String>,
    /// A tool bundle the caller chose (known to the server by its SHA-256).
    pub tool_bundle: Option<ToolBundleRef>,
    /// The submission's audit entry: written in the job's own transaction, and only when the
    /// job is created (an idempotent replay or a refusal writes none).
    pub audit: Option<AuditEntry>,
}

impl NewJob {
    /// A job of `job_type` with no repository, params or key, tried once (tests, benchmarks).
    pub fn plain(job_type: &str, created_at: Millis) -> NewJob {
        NewJob {
            id: JobId::new(),
            tenant: "default".into(),
            job_type: job_type.into(),
            repo_name: None,
            remote_url: None,
            sha: None,
            git_ref: None,
            params: BTreeMap::new(),
            idempotency_key: None,
            max_attempts: 1,
            unsafe_fallback: false,
            created_at,
            max_queued: None,
            inline_argv: None,
            image: None,
            callback_url: None,
            tool_bundle: None,
            audit: None,
        }
    }

    /// Whether `other` asks for the same work (used to judge an idempotency-key replay).
    pub fn same_request(&self, other: &JobRecord) -> bool {
        self.tenant == other.tenant
            && self.job_type == other.job_type
            && self.repo_name == other.repo_name
            && self.remote_url == other.remote_url
            // Asked by ref, the same ref is the same request even if the ref has moved since.
            && match &self.git_ref {
                Some(r) => other.git_ref.as_ref() == Some(r),
                None => other.git_ref.is_none() && self.sha == other.sha,
            }
            && self.params == other.params
            && self.inline_argv == other.inline_argv
            && self.image == other.image
            && self.tool_bundle == other.tool_bundle
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum SubmitOutcome {
    Created(JobRecord),
    /// The same idempotency key and the same request: the earlier job.
    Existing(JobRecord),
}

impl SubmitOutcome {
    pub fn job(&self) -> &JobRecord {
        match self {
            SubmitOutcome::Created(j) | SubmitOutcome::Existing(j) => j,
        }
    }
}

/// A claim to make as a submission is written: an idle slot of this replica waits for the job.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimFor {
    pub worker: String,
    /// The job types the slot runs (`None`: any).
    pub job_types: Option<Vec<String>>,
    pub lease_ms: i64,
}

/// Takes a job claimed for an idle slot the moment its claim is committed
/// ([`Store::submit_and_hand`]); gives it back when nobody is there to take it.
pub type Hand = Box<dyn FnOnce(Claimed) -> std::result::Result<(), Box<Claimed>> + Send>;

/// What [`Store::submit_and_hand`] did with the job it claimed.
#[derive(Debug)]
pub enum Handed {
    /// Nothing was claimed (the job existed already, or no job was there for the slot).
    Nothing,
    /// This job was claimed and taken.
    Taken(JobId),
    /// Claimed, and given back by the hand: its lease is the caller's to release.
    Refused(Box<Claimed>),
}

impl Handed {
    /// Gives `claimed`, if any, to `hand`.
    pub fn over(claimed: Option<Claimed>, hand: Hand) -> Handed {
        match claimed {
            None => Handed::Nothing,
            Some(c) => {
                let id = c.job.id;
                match hand(c) {
                    Ok(()) => Handed::Taken(id),
                    Err(back) => Handed::Refused(back),
                }
            }
        }
    }
}

/// Told the record a completion committed, the moment it is committed
/// ([`Store::complete_then`]).
pub type OnCommit = Box<dyn FnOnce(&JobRecord) + Send>;

#[derive(Debug, Clone, PartialEq)]
pub enum CancelOutcome {
    /// It was queued and is now `cancelled`.
    Cancelled(JobRecord),
    /// It is running; its worker is told through the heartbeat (and directly when in-process).
    Requested(JobRecord),
    AlreadyFinished(JobRecord),
}

pub use warden_api::{TestResult, TestStatus};

/// Which test results of a job to read.
#[derive(Debug, Clone, PartialEq)]
pub struct TestsQuery {
    pub job: JobId,
    pub attempt: u32,
    pub status: Option<TestStatus>,
    /// Position (in the failures-first order) to start after; 0 from the start.
    pub after: u64,
    pub limit: u32,
}

/// The order test results are read in: failures (failed and errored) first, then skipped,
/// then passed; within each, as the reports list them.
pub fn test_rank(s: TestStatus) -> i64 {
    match s {
        TestStatus::Failed | TestStatus::Error => 0,
        TestStatus::Skipped => 1,
        TestStatus::Passed => 2,
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListFilter {
    pub tenant: Option<String>,
    pub status: Option<JobStatus>,
    pub job_type: Option<String>,
    /// Only jobs on this repository (`repo_name`).
    pub repo_name: Option<String>,
    /// Return jobs older than this one (the cursor of the previous page).
    pub before: Option<JobId>,
    pub limit: u32,
}

/// What the reaper did to one job whose lease had expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    pub job_id: JobId,
    /// `queued` (attempts left) or `error` (`worker_lost`).
    pub now: JobStatus,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job {0} not found")]
    NotFound(JobId),
    #[error("idempotency key {key:?} was used for job {existing} with a different request")]
    IdempotencyConflict { key: String, existing: JobId },
    #[error("lease on job {0} is no longer held (fenced out)")]
    LeaseLost(JobId),
    #[error(
        "log write for job {job} at offset {offset} does not continue the stream (length {len})"
    )]
    LogOffset { job: JobId, offset: u64, len: u64 },
    #[error("tenant {tenant:?} already has {max} jobs queued")]
    QueueFull { tenant: String, max: u64 },
    #[error("token {0:?} already exists")]
    TokenExists(String),
    #[error("store backend: {0}")]
    Backend(String),
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A backend's migrations (version, SQL), applied in order, each once. Append-only.
pub type Migrations = &'static [(i64, &'static str)];

/// The migrations still to apply to a database at version `applied`; an error when the database
/// is newer than this build understands.
pub fn pending_migrations(all: Migrations, applied: i64) -> Result<Migrations> {
    let newest = all.last().map(|m| m.0).unwrap_or(0);
    if applied > newest {
        return Err(StoreError::Backend(format!(
            "database schema version {applied} is newer than this warden understands ({newest})"
        )));
    }
    Ok(&all[all.partition_point(|m| m.0 <= applied)..])
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The tenants' shares, used by every later claim (the server sets them from its config).
    fn set_fair_share(&self, fair: FairShare);

    /// Gives back what the store keeps only to be faster (page caches, pooled buffers): called
    /// when its replica has gone idle. Nothing is lost; the next calls are a little slower.
    async fn release_memory(&self) {}

    /// Records a new job as `queued`, or returns the earlier job with the same
    /// `(tenant, idempotency_key)`; a different request under the same key is a conflict. Over
    /// `job.max_queued`, nothing is written and the answer is `QueueFull`.
    async fn submit(&self, job: NewJob) -> Result<SubmitOutcome>;

    /// [`submit`](Self::submit), and when that created the job, a [`claim`](Self::claim) for
    /// `to` — the same fair pick, so not necessarily the job just submitted. A store that can
    /// makes both one transaction (an idle slot's claim costs no second commit); this default
    /// makes them two, and a claim that fails after the job was created is logged and `None`:
    /// the job stays queued for the next claim.
    async fn submit_and_claim(
        &self,
        job: NewJob,
        to: &ClaimFor,
        now: Millis,
    ) -> Result<(SubmitOutcome, Option<Claimed>)> {
        let outcome = self.submit(job).await?;
        if matches!(outcome, SubmitOutcome::Existing(_)) {
            return Ok((outcome, None));
        }
        let types = to.job_types.as_deref();
        match self.claim(&to.worker, types, to.lease_ms, now).await {
            Ok(claimed) => Ok((outcome, claimed)),
            Err(e) => {
                tracing::warn!(error = %e, "claiming beside a submission failed; it stays queued");
                Ok((outcome, None))
            }
        }
    }

    /// [`submit_and_claim`](Self::submit_and_claim), and what it claimed given to `hand` once
    /// it is committed. A store that can calls `hand` on its own side before its caller is
    /// woken, so the slot starts beside the submission's answer instead of after it; this
    /// default calls it on the caller's. Dropped uncalled when nothing was claimed or the
    /// call failed.
    async fn submit_and_hand(
        &self,
        job: NewJob,
        to: &ClaimFor,
        now: Millis,
        hand: Hand,
    ) -> Result<(SubmitOutcome, Handed)> {
        let (outcome, claimed) = self.submit_and_claim(job, to, now).await?;
        Ok((outcome, Handed::over(claimed, hand)))
    }

    async fn get(&self, id: JobId) -> Result<JobRecord>;

    /// Newest first, `filter.limit` at most.
    async fn list(&self, filter: &ListFilter) -> Result<Vec<JobRecord>>;

    /// Takes a queued job (of one of `job_types`, when given) and marks it `running` under a
    /// new lease for `worker`: the oldest job of the tenant whose turn it is ([`fair`]).
    async fn claim(
        &self,
        worker: &str,
        job_types: Option<&[String]>,
        lease_ms: i64,
        now: Millis,
    ) -> Result<Option<Claimed>>;

    /// Up to `max` jobs at once, in fair-share order, each under its own lease (one transaction:
    /// a worker with several idle slots claims for all of them together).
    async fn claim_many(
        &self,
        worker: &str,
        job_types: Option<&[String]>,
        max: usize,
        lease_ms: i64,
        now: Millis,
    ) -> Result<Vec<Claimed>> {
        let mut out = Vec::new();
        while out.len() < max {
            match self.claim(worker, job_types, lease_ms, now).await? {
                Some(c) => out.push(c),
                None => break,
            }
        }
        Ok(out)
    }

    /// Extends the lease; fails with `LeaseLost` when it is no longer current.
    async fn heartbeat(&self, lease: &Lease, lease_ms: i64, now: Millis) -> Result<HeartbeatReply>;

    /// Appends `data` to a stream at `offset`, which must equal the stream's current length.
    async fn append_log(
        &self,
        lease: &Lease,
        stream: LogStream,
        offset: u64,
        data: &[u8],
    ) -> Result<()>;

    /// Stores test results of the lease's attempt, numbered from `first` (a result sent again
    /// under the same number replaces itself).
    async fn append_tests(&self, lease: &Lease, first: u32, tests: Vec<TestResult>) -> Result<()>;

    /// The test results of a job's `attempt`, failures first (in report order), then skipped,
    /// then passed; `status` keeps only one kind. At most `limit` from position `after`.
    async fn tests(&self, query: &TestsQuery) -> Result<Vec<TestResult>>;

    /// The tests (suite, class, name) that both passed and failed (or errored) among the final
    /// attempts of the jobs of `job_type` on `repo_name` at `sha`: flaky at that commit.
    async fn flaky_tests(
        &self,
        job_type: &str,
        repo_name: Option<&str>,
        sha: &str,
    ) -> Result<Vec<(String, String, String)>>;

    /// Ends a running job under its lease.
    async fn complete(&self, lease: &Lease, done: Completion, now: Millis) -> Result<JobRecord>;

    /// [`complete`](Self::complete), with `on_commit` told the record once it is committed. A
    /// store that can tells it on its own side before its caller is woken, so whoever waits
    /// for the job's end hears of it beside the worker instead of after it; this default
    /// tells it on the caller's. Not told when the completion failed.
    async fn complete_then(
        &self,
        lease: &Lease,
        done: Completion,
        now: Millis,
        on_commit: OnCommit,
    ) -> Result<JobRecord> {
        let record = self.complete(lease, done, now).await?;
        on_commit(&record);
        Ok(record)
    }

    /// Gives a running job back to the queue without counting the attempt (graceful shutdown).
    async fn release(&self, lease: &Lease) -> Result<()>;

    async fn request_cancel(&self, id: JobId, now: Millis) -> Result<CancelOutcome>;

    /// Re-queues running jobs whose lease expired before `expired_before` (attempts left) or
    /// ends them `error` with reason `worker_lost` at `now`. A server that owns every lease of
    /// its database (the embedded default, at start) passes `Millis::MAX` to recover them all.
    async fn reap_expired(&self, expired_before: Millis, now: Millis) -> Result<Vec<Reaped>>;

    /// Up to `max` bytes of a stream from `offset`.
    async fn read_log(
        &self,
        id: JobId,
        stream: LogStream,
        offset: u64,
        max: usize,
    ) -> Result<Vec<u8>>;

    /// Records a new token; its id must be new (`TokenExists`).
    async fn create_token(&self, token: TokenRecord) -> Result<()>;

    async fn token(&self, id: &str) -> Result<Option<TokenRecord>>;

    /// Tokens, of one tenant or all, oldest first.
    async fn list_tokens(&self, tenant: Option<&str>) -> Result<Vec<TokenRecord>>;

    /// Marks a token revoked at `now` (once: a second revocation keeps the first time).
    /// `None` when there is no such token.
    async fn revoke_token(&self, id: &str, now: Millis) -> Result<Option<TokenRecord>>;

    /// Appends to the audit trail; entries are never changed, only purged by age.
    async fn append_audit(&self, entries: Vec<AuditEntry>) -> Result<()>;

    /// Newest first.
    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>>;

    /// Deletes audit entries older than `before`; returns how many.
    async fn purge_audit(&self, before: Millis) -> Result<u64>;

    /// Finished jobs per tenant: how many, and the bytes their logs and artifacts take.
    async fn finished_usage(&self) -> Result<Vec<TenantUsage>>;

    /// A tenant's finished jobs, oldest end first (ties by id), that ended before
    /// `finished_before` (any, when `None`), after the cursor `after` of the previous page.
    async fn oldest_finished(
        &self,
        tenant: &str,
        finished_before: Option<Millis>,
        after: Option<(Millis, JobId)>,
        limit: u32,
    ) -> Result<Vec<FinishedJob>>;

    /// Deletes these jobs with their logs and test results, in one transaction; a job that is
    /// not finished (queued or running again) is left alone. Returns the ids deleted.
    async fn delete_finished(&self, ids: &[JobId]) -> Result<Vec<JobId>>;

    /// Which of these ids are jobs in the store.
    async fn existing_jobs(&self, ids: &[JobId]) -> Result<Vec<JobId>>;

    /// Takes (or, by the same owner, renews) the collector's lease until `now + lease_ms`:
    /// one collector at a time over every process sharing the store. `false`: another holds it.
    /// A `lease_ms` of 0 gives a held lease up (a pass that ended leaves the next one free).
    async fn gc_lease(&self, owner: &str, lease_ms: i64, now: Millis) -> Result<bool>;

    /// Gives the room of deleted rows back to the filesystem where the backend keeps it
    /// (SQLite's incremental vacuum); returns the bytes freed, 0 where it does not apply.
    async fn compact(&self) -> Result<u64>;

    /// Turns the events outbox on or off for every process sharing the store: while on, each
    /// job state change and each stored log chunk adds an [`OutboxEvent`] in its own
    /// transaction.
    async fn set_outbox(&self, on: bool) -> Result<()>;

    /// Up to `limit` outbox events not yet marked published, oldest first (per job, in the
    /// order the changes happened). A log event whose chunk is gone (its job deleted) is left
    /// out and marked published.
    async fn outbox_pending(&self, limit: u32) -> Result<Vec<OutboxEvent>>;

    /// Marks these events published (kept for a replay until [`prune_outbox`](Self::prune_outbox)).
    async fn outbox_published(&self, seqs: &[u64], now: Millis) -> Result<()>;

    /// Up to `limit` outbox events, published or not, of `at >= since` and `seq > after`, in
    /// seq order: a replay's pages.
    async fn outbox_since(&self, since: Millis, after: u64, limit: u32)
    -> Result<Vec<OutboxEvent>>;

    /// Deletes published events older than `before` (and, with `webhooks`, only those the
    /// webhook cursor has passed); returns how many.
    async fn prune_outbox(&self, before: Millis, webhooks: bool) -> Result<u64>;

    /// The publisher's lease, as [`gc_lease`](Self::gc_lease) is the collector's: one publisher
    /// at a time over every process sharing the store (so each job's events go out in order).
    async fn outbox_lease(&self, owner: &str, lease_ms: i64, now: Millis) -> Result<bool>;

    /// Up to `limit` job events of the outbox past the webhook cursor, oldest first, each with
    /// its job's callback URL; and the cursor.
    async fn webhook_backlog(&self, limit: u32) -> Result<WebhookBacklog>;

    /// Records deliveries to make and moves the webhook cursor to `cursor`, in one transaction.
    async fn add_deliveries(
        &self,
        deliveries: Vec<NewDelivery>,
        cursor: u64,
        now: Millis,
    ) -> Result<()>;

    /// Up to `limit` deliveries due at `now`: not delivered, not given up, and each the oldest
    /// one pending for its job and URL (a job's events reach a URL in order).
    async fn due_deliveries(&self, now: Millis, limit: u32) -> Result<Vec<Delivery>>;

    /// Records one attempt of a delivery.
    async fn delivery_attempted(
        &self,
        id: u64,
        outcome: DeliveryOutcome,
        now: Millis,
    ) -> Result<()>;

    /// A job's deliveries, oldest first.
    async fn deliveries(&self, job: JobId) -> Result<Vec<Delivery>>;
}

/// The webhook cursor, and the job events past it, each with its job's callback URL.
pub type WebhookBacklog = (u64, Vec<(OutboxEvent, Option<String>)>);

/// One job event to deliver to one URL.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDelivery {
    pub seq: u64,
    pub job_id: JobId,
    pub url: String,
    /// The body, as it is signed and sent on every attempt.
    pub body: Vec<u8>,
}

/// A webhook delivery and its attempts so far.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub id: u64,
    pub seq: u64,
    pub job_id: JobId,
    pub url: String,
    pub body: Vec<u8>,
    pub attempts: u32,
    pub next_at: Millis,
    pub delivered_at: Option<Millis>,
    pub gave_up: bool,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub created_at: Millis,
}

/// How one attempt went.
#[derive(Debug, Clone, PartialEq)]
pub enum DeliveryOutcome {
    Delivered {
        status: u16,
    },
    /// Tried again at `next_at`.
    Failed {
        status: Option<u16>,
        error: String,
        next_at: Millis,
    },
    /// The last attempt failed too: no more.
    GaveUp {
        status: Option<u16>,
        error: String,
    },
}

/// One change the outbox holds, for the events publisher.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    /// The outbox position: increasing, and per job in the order of the changes.
    pub seq: u64,
    pub job_id: JobId,
    pub tenant: String,
    pub at: Millis,
    pub kind: OutboxKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum OutboxKind {
    /// The job's state after a change of status.
    Job {
        job_type: String,
        status: JobStatus,
        reason: Option<String>,
        exit_code: Option<i32>,
        attempt: u32,
    },
    /// A stored log chunk of one attempt (a retried job's next attempt writes from offset 0).
    Log {
        stream: LogStream,
        offset: u64,
        data: Vec<u8>,
        attempt: u32,
    },
}

/// Every job with `status`, newest first, read a page of 1,000 at a time.
pub async fn all_with_status(store: &dyn Store, status: JobStatus) -> Result<Vec<JobRecord>> {
    let mut all = Vec::new();
    loop {
        let page = store
            .list(&ListFilter {
                status: Some(status),
                before: all.last().map(|j: &JobRecord| j.id),
                limit: 1000,
                ..ListFilter::default()
            })
            .await?;
        let more = page.len() == 1000;
        all.extend(page);
        if !more {
            return Ok(all);
        }
    }
}

/// One tenant's finished jobs, as retention counts them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantUsage {
    pub tenant: String,
    pub jobs: u64,
    /// Log bytes stored plus artifact bytes.
    pub bytes: u64,
}

/// A finished job as the collector sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedJob {
    pub id: JobId,
    pub finished_at: Millis,
    /// Log bytes stored plus artifact bytes.
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_migrations_are_those_after_the_applied_version() {
        const ALL: Migrations = &[(1, "a"), (2, "b"), (3, "c")];
        assert_eq!(pending_migrations(ALL, 0).unwrap(), ALL);
        assert_eq!(pending_migrations(ALL, 2).unwrap(), &ALL[2..]);
        assert!(pending_migrations(ALL, 3).unwrap().is_empty());
        let newer = pending_migrations(ALL, 4).unwrap_err();
        assert!(
            newer.to_string().contains("newer than this warden"),
            "{newer}"
        );
    }
}
