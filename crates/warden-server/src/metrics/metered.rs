//! [`MeteredStore`]: the store every part of a replica uses, wrapped so each call is timed and
//! what passes through it (submissions, completions, log chunks, lease expiries) counted once.

use super::*;

/// The store, counted: every call timed, and what passes through it counted.
pub struct MeteredStore<S: ?Sized> {
    inner: Arc<S>,
    metrics: Arc<Metrics>,
}

impl<S: Store + ?Sized> MeteredStore<S> {
    pub fn new(inner: Arc<S>, metrics: Arc<Metrics>) -> MeteredStore<S> {
        MeteredStore { inner, metrics }
    }

    fn count_submitted(&self, outcome: &SubmitOutcome) {
        if let SubmitOutcome::Created(j) = outcome {
            self.metrics
                .submitted
                .get_or_create(&TypeLabel {
                    job_type: j.job_type.clone(),
                })
                .inc();
        }
    }

    fn count_completed(&self, r: &Result<JobRecord>, telemetry: &RunTelemetry) {
        if let Ok(job) = r {
            self.metrics.forget(job.id);
            self.metrics.finished_job(job);
            self.metrics
                .ran(&job.job_type, job.reason.as_deref(), telemetry);
        }
    }

    fn timed(&self, call: &'static str, since: Instant) {
        self.metrics
            .store_calls
            .get_or_create(&CallLabel { call })
            .observe(since.elapsed().as_secs_f64());
    }
}

/// Delegates a call, timing it under its name.
macro_rules! timed {
    ($self:ident, $call:ident ( $($arg:expr),* )) => {{
        let since = Instant::now();
        let r = $self.inner.$call($($arg),*).await;
        $self.timed(stringify!($call), since);
        r
    }};
}

/// [`timed!`], for a call made for a job or a caller: counted as work (see
/// [`Metrics::work_done`]).
macro_rules! worked {
    ($self:ident, $call:ident ( $($arg:expr),* )) => {{
        let r = timed!($self, $call($($arg),*));
        $self.metrics.worked();
        r
    }};
}

#[async_trait]
impl<S: Store + ?Sized> Store for MeteredStore<S> {
    fn set_fair_share(&self, fair: FairShare) {
        self.inner.set_fair_share(fair)
    }
    async fn release_memory(&self) {
        self.inner.release_memory().await
    }
    async fn submit(&self, job: NewJob) -> Result<SubmitOutcome> {
        let r = worked!(self, submit(job));
        if let Ok(outcome) = &r {
            self.count_submitted(outcome);
        }
        r
    }
    async fn submit_and_claim(
        &self,
        job: NewJob,
        to: &ClaimFor,
        now: Millis,
    ) -> Result<(SubmitOutcome, Option<Claimed>)> {
        let r = worked!(self, submit_and_claim(job, to, now));
        if let Ok((outcome, claimed)) = &r {
            self.count_submitted(outcome);
            if let Some(c) = claimed {
                self.metrics.claimed(c);
            }
        }
        r
    }
    async fn submit_and_hand(
        &self,
        job: NewJob,
        to: &ClaimFor,
        now: Millis,
        hand: Hand,
    ) -> Result<(SubmitOutcome, Handed)> {
        // Counted as it is handed: before the slot can report the job's first byte.
        let metrics = self.metrics.clone();
        let hand: Hand = Box::new(move |claimed| {
            metrics.claimed(&claimed);
            hand(claimed)
        });
        // Timed as the call it is: one submission with its claim.
        let since = Instant::now();
        let r = self.inner.submit_and_hand(job, to, now, hand).await;
        self.timed("submit_and_claim", since);
        self.metrics.worked();
        if let Ok((outcome, _)) = &r {
            self.count_submitted(outcome);
        }
        r
    }
    async fn get(&self, id: JobId) -> Result<JobRecord> {
        worked!(self, get(id))
    }
    async fn list(&self, filter: &ListFilter) -> Result<Vec<JobRecord>> {
        worked!(self, list(filter))
    }
    async fn claim(
        &self,
        worker: &str,
        job_types: Option<&[String]>,
        lease_ms: i64,
        now: Millis,
    ) -> Result<Option<Claimed>> {
        let r = timed!(self, claim(worker, job_types, lease_ms, now));
        if let Ok(Some(c)) = &r {
            self.metrics.claimed(c);
            self.metrics.worked();
        }
        r
    }
    async fn claim_many(
        &self,
        worker: &str,
        job_types: Option<&[String]>,
        max: usize,
        lease_ms: i64,
        now: Millis,
    ) -> Result<Vec<Claimed>> {
        let r = timed!(self, claim_many(worker, job_types, max, lease_ms, now));
        if let Ok(claimed) = &r {
            for c in claimed {
                self.metrics.claimed(c);
                self.metrics.worked();
            }
        }
        r
    }
    async fn heartbeat(&self, lease: &Lease, lease_ms: i64, now: Millis) -> Result<HeartbeatReply> {
        timed!(self, heartbeat(lease, lease_ms, now))
    }
    async fn append_log(
        &self,
        lease: &Lease,
        stream: LogStream,
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        let r = worked!(self, append_log(lease, stream, offset, data));
        if r.is_ok() && offset == 0 && !data.is_empty() {
            self.metrics.first_byte(lease.job_id);
        }
        if r.is_ok() {
            let stream = match stream {
                LogStream::Stdout => "stdout",
                LogStream::Stderr => "stderr",
            };
            self.metrics
                .log_bytes
                .get_or_create(&StreamLabel { stream })
                .inc_by(data.len() as u64);
        }
        r
    }
    async fn append_tests(&self, lease: &Lease, first: u32, tests: Vec<TestResult>) -> Result<()> {
        worked!(self, append_tests(lease, first, tests))
    }
    async fn tests(&self, query: &TestsQuery) -> Result<Vec<TestResult>> {
        worked!(self, tests(query))
    }
    async fn flaky_tests(
        &self,
        job_type: &str,
        repo_name: Option<&str>,
        sha: &str,
    ) -> Result<Vec<(String, String, String)>> {
        worked!(self, flaky_tests(job_type, repo_name, sha))
    }
    async fn complete(&self, lease: &Lease, done: Completion, now: Millis) -> Result<JobRecord> {
        let telemetry = done.telemetry;
        let r = worked!(self, complete(lease, done, now));
        self.count_completed(&r, &telemetry);
        r
    }
    async fn complete_then(
        &self,
        lease: &Lease,
        done: Completion,
        now: Millis,
        on_commit: OnCommit,
    ) -> Result<JobRecord> {
        let telemetry = done.telemetry;
        // Timed as the call it is: a completion.
        let since = Instant::now();
        let r = self.inner.complete_then(lease, done, now, on_commit).await;
        self.timed("complete", since);
        self.metrics.worked();
        self.count_completed(&r, &telemetry);
        r
    }
    async fn release(&self, lease: &Lease) -> Result<()> {
        self.metrics.forget(lease.job_id);
        worked!(self, release(lease))
    }
    async fn request_cancel(&self, id: JobId, now: Millis) -> Result<CancelOutcome> {
        let r = worked!(self, request_cancel(id, now));
        if let Ok(CancelOutcome::Cancelled(job)) = &r {
            self.metrics.finished_job(job);
        }
        r
    }
    async fn reap_expired(&self, expired_before: Millis, now: Millis) -> Result<Vec<Reaped>> {
        let r = timed!(self, reap_expired(expired_before, now));
        if let Ok(reaped) = &r {
            for j in reaped {
                self.metrics.forget(j.job_id);
                let outcome = if j.now == JobStatus::Queued {
                    "requeued"
                } else {
                    "lost"
                };
                self.metrics
                    .lease_expiries
                    .get_or_create(&OutcomeLabel { outcome })
                    .inc();
            }
        }
        r
    }
    async fn read_log(
        &self,
        id: JobId,
        stream: LogStream,
        offset: u64,
        max: usize,
    ) -> Result<Vec<u8>> {
        worked!(self, read_log(id, stream, offset, max))
    }
    async fn create_token(&self, token: TokenRecord) -> Result<()> {
        timed!(self, create_token(token))
    }
    async fn token(&self, id: &str) -> Result<Option<TokenRecord>> {
        timed!(self, token(id))
    }
    async fn list_tokens(&self, tenant: Option<&str>) -> Result<Vec<TokenRecord>> {
        timed!(self, list_tokens(tenant))
    }
    async fn revoke_token(&self, id: &str, now: Millis) -> Result<Option<TokenRecord>> {
        timed!(self, revoke_token(id, now))
    }
    async fn append_audit(&self, entries: Vec<AuditEntry>) -> Result<()> {
        timed!(self, append_audit(entries))
    }
    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>> {
        timed!(self, list_audit(filter))
    }
    async fn purge_audit(&self, before: Millis) -> Result<u64> {
        timed!(self, purge_audit(before))
    }
    async fn finished_usage(&self) -> Result<Vec<TenantUsage>> {
        timed!(self, finished_usage())
    }
    async fn oldest_finished(
        &self,
        tenant: &str,
        finished_before: Option<Millis>,
        after: Option<(Millis, JobId)>,
        limit: u32,
    ) -> Result<Vec<FinishedJob>> {
        timed!(self, oldest_finished(tenant, finished_before, after, limit))
    }
    async fn delete_finished(&self, ids: &[JobId]) -> Result<Vec<JobId>> {
        timed!(self, delete_finished(ids))
    }
    async fn existing_jobs(&self, ids: &[JobId]) -> Result<Vec<JobId>> {
        timed!(self, existing_jobs(ids))
    }
    async fn gc_lease(&self, owner: &str, lease_ms: i64, now: Millis) -> Result<bool> {
        timed!(self, gc_lease(owner, lease_ms, now))
    }
    async fn compact(&self) -> Result<u64> {
        timed!(self, compact())
    }
    async fn set_outbox(&self, on: bool) -> Result<()> {
        timed!(self, set_outbox(on))
    }
    async fn outbox_pending(&self, limit: u32) -> Result<Vec<warden_store::OutboxEvent>> {
        timed!(self, outbox_pending(limit))
    }
    async fn outbox_published(&self, seqs: &[u64], now: Millis) -> Result<()> {
        timed!(self, outbox_published(seqs, now))
    }
    async fn outbox_since(
        &self,
        since: Millis,
        after: u64,
        limit: u32,
    ) -> Result<Vec<warden_store::OutboxEvent>> {
        timed!(self, outbox_since(since, after, limit))
    }
    async fn prune_outbox(&self, before: Millis, webhooks: bool) -> Result<u64> {
        timed!(self, prune_outbox(before, webhooks))
    }
    async fn webhook_backlog(&self, limit: u32) -> Result<warden_store::WebhookBacklog> {
        timed!(self, webhook_backlog(limit))
    }
    async fn add_deliveries(
        &self,
        deliveries: Vec<warden_store::NewDelivery>,
        cursor: u64,
        now: Millis,
    ) -> Result<()> {
        timed!(self, add_deliveries(deliveries, cursor, now))
    }
    async fn due_deliveries(&self, now: Millis, limit: u32) -> Result<Vec<warden_store::Delivery>> {
        timed!(self, due_deliveries(now, limit))
    }
    async fn delivery_attempted(
        &self,
        id: u64,
        outcome: warden_store::DeliveryOutcome,
        now: Millis,
    ) -> Result<()> {
        timed!(self, delivery_attempted(id, outcome, now))
    }
    async fn deliveries(&self, job: JobId) -> Result<Vec<warden_store::Delivery>> {
        timed!(self, deliveries(job))
    }
    async fn outbox_lease(&self, owner: &str, lease_ms: i64, now: Millis) -> Result<bool> {
        timed!(self, outbox_lease(owner, lease_ms, now))
    }
}
