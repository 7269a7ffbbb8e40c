//! The `Store` trait on PostgreSQL: every state change one fenced statement.

use async_trait::async_trait;
use sqlx::Row;
use warden_core::state::can_transition;
use warden_core::{JobId, JobStatus};
use warden_store::{
    CancelOutcome, Claimed, Completion, HeartbeatReply, JobRecord, Lease, ListFilter, LogStream,
    Millis, NewJob, Reaped, Result, Store, StoreError, SubmitOutcome, TestResult, TestsQuery,
};

use super::rows::*;
use super::{COLUMNS, LEASED, PgStore};

#[async_trait]
impl Store for PgStore {
    fn set_fair_share(&self, fair: warden_store::FairShare) {
        *self.fair.write().unwrap_or_else(|p| p.into_inner()) = std::sync::Arc::new(fair);
    }

    async fn submit(&self, job: NewJob) -> Result<SubmitOutcome> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        if let Some(max) = job.max_queued {
            // Submissions of one tenant take turns while a quota is checked, on every replica.
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext('warden-queue:' || $1))")
                .bind(&job.tenant)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            let queued: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND tenant = $1",
            )
            .bind(&job.tenant)
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
            if queued as u64 >= max {
                return Err(StoreError::QueueFull {
                    tenant: job.tenant.clone(),
                    max,
                });
            }
        }
        let inserted = sqlx::query(&format!(
            "INSERT INTO jobs (id, tenant, job_type, repo_name, remote_url, sha, params,
                 idempotency_key, status, max_attempts, unsafe_fallback, created_at, git_ref,
                 inline_argv, image, tool_bundle, tool_env_var)
             VALUES ($1::uuid, $2, $3, $4, $5, $6, $7, $8, 'queued', $9, $10, $11, $12, $13, $14,
                 $15, $16)
             ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
             RETURNING {COLUMNS}"
        ))
        .bind(job.id.to_string())
        .bind(&job.tenant)
        .bind(&job.job_type)
        .bind(&job.repo_name)
        .bind(&job.remote_url)
        .bind(&job.sha)
        .bind(to_json(&job.params)?)
        .bind(&job.idempotency_key)
        .bind(job.max_attempts as i32)
        .bind(job.unsafe_fallback)
        .bind(job.created_at)
        .bind(&job.git_ref)
        .bind(job.inline_argv.as_ref().map(to_json).transpose()?)
        .bind(&job.image)
        .bind(job.tool_bundle.as_ref().map(|b| &b.sha256))
        .bind(job.tool_bundle.as_ref().map(|b| &b.env_var))
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        if let (Some(_), Some(url)) = (&inserted, &job.callback_url) {
            sqlx::query("INSERT INTO job_callbacks (job_id, url) VALUES ($1::uuid, $2)")
                .bind(job.id.to_string())
                .bind(url)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        if inserted.is_some() {
            crate::perimeter::insert_audit(&mut *tx, job.audit.as_slice()).await?;
        }
        tx.commit().await.map_err(backend)?;
        if let Some(row) = inserted {
            self.schedule
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .note(&job.tenant);
            return Ok(SubmitOutcome::Created(row_to_job(&row)?));
        }
        // The key was taken (by this request before, or by another one).
        let key = job.idempotency_key.clone().unwrap_or_default();
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM jobs WHERE tenant = $1 AND idempotency_key = $2"
        ))
        .bind(&job.tenant)
        .bind(&key)
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        let existing = row_to_job(&row)?;
        if job.same_request(&existing) {
            Ok(SubmitOutcome::Existing(existing))
        } else {
            Err(StoreError::IdempotencyConflict {
                key,
                existing: existing.id,
            })
        }
    }

    async fn get(&self, id: JobId) -> Result<JobRecord> {
        self.load(&self.pool, id).await
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<JobRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM jobs
             WHERE ($1::text IS NULL OR tenant = $1)
               AND ($2::text IS NULL OR status = $2)
               AND ($3::text IS NULL OR job_type = $3)
               AND ($4::uuid IS NULL OR id < $4::uuid)
               AND ($6::text IS NULL OR repo_name = $6)
             ORDER BY id DESC LIMIT $5"
        ))
        .bind(&filter.tenant)
        .bind(filter.status.map(|s| s.as_str()))
        .bind(&filter.job_type)
        .bind(filter.before.map(|b| b.to_string()))
        .bind(filter.limit as i64)
        .bind(&filter.repo_name)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(row_to_job).collect()
    }

    async fn claim(
        &self,
        worker: &str,
        job_types: Option<&[String]>,
        lease_ms: i64,
        now: Millis,
    ) -> Result<Option<Claimed>> {
        Ok(self
            .claim_many(worker, job_types, 1, lease_ms, now)
            .await?
            .pop())
    }

    async fn claim_many(
        &self,
        worker: &str,
        job_types: Option<&[String]>,
        max: usize,
        lease_ms: i64,
        now: Millis,
    ) -> Result<Vec<Claimed>> {
        use super::perimeter::plan;
        if max == 0 {
            return Ok(Vec::new());
        }
        let fair = self.fair.read().unwrap_or_else(|p| p.into_inner()).clone();
        let mut claimed = Vec::new();
        if fair.shares.values().all(|s| s.max_running.is_none()) {
            return self
                .claim_fair(&fair, worker, job_types, max, (now, lease_ms))
                .await;
        }
        // A tenant that gave fewer jobs than planned (others' claims took them, or its
        // max_running was reached meanwhile) is left out when the rest is planned again.
        let mut excluded = Vec::new();
        for _ in 0..3 {
            let want = max - claimed.len();
            if want == 0 {
                break;
            }
            let planned = plan(
                &self.pool,
                &self.schedule,
                &fair,
                job_types,
                want,
                &excluded,
            )
            .await?;
            if planned.is_empty() {
                break;
            }
            for (tenant, n) in planned {
                let got = self
                    .claim_tenant(&fair, &tenant, n, worker, job_types, (now, lease_ms))
                    .await?;
                if got.len() < n {
                    excluded.push(tenant);
                }
                claimed.extend(got);
            }
        }
        Ok(claimed)
    }

    async fn heartbeat(&self, lease: &Lease, lease_ms: i64, now: Millis) -> Result<HeartbeatReply> {
        let row = sqlx::query(&format!(
            "UPDATE jobs SET lease_expires_at = $4 WHERE id = $1::uuid AND {LEASED}
             RETURNING cancel_requested"
        ))
        .bind(lease.job_id.to_string())
        .bind(lease.token)
        .bind(&lease.worker)
        .bind(now.saturating_add(lease_ms))
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        match row {
            Some(row) => Ok(HeartbeatReply {
                cancel_requested: row.try_get(0).map_err(backend)?,
            }),
            None => Err(self.refused(lease).await),
        }
    }

    async fn append_tests(&self, lease: &Lease, first: u32, tests: Vec<TestResult>) -> Result<()> {
        super::results::append_tests(&self.pool, lease, first, &tests).await
    }

    async fn tests(&self, q: &TestsQuery) -> Result<Vec<TestResult>> {
        super::results::tests(&self.pool, q).await
    }

    async fn flaky_tests(
        &self,
        job_type: &str,
        repo_name: Option<&str>,
        sha: &str,
    ) -> Result<Vec<(String, String, String)>> {
        super::results::flaky_tests(&self.pool, job_type, repo_name, sha).await
    }

    async fn append_log(
        &self,
        lease: &Lease,
        stream: LogStream,
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        let column = match stream {
            LogStream::Stdout => "stdout_bytes",
            LogStream::Stderr => "stderr_bytes",
        };
        // One statement: the fenced, offset-checked length bump and the chunk insert commit
        // together or not at all.
        let done = sqlx::query(&format!(
            "WITH grown AS (
                 UPDATE jobs SET {column} = {column} + length($6)
                 WHERE id = $1::uuid AND {LEASED} AND {column} = $5
                 RETURNING id)
             INSERT INTO log_chunks (job_id, stream, \"offset\", data)
             SELECT id, $4, $5, $6 FROM grown WHERE length($6) > 0
             RETURNING 1"
        ))
        .bind(lease.job_id.to_string())
        .bind(lease.token)
        .bind(&lease.worker)
        .bind(stream_code(stream))
        .bind(offset as i64)
        .bind(data)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        if done.is_some() {
            return Ok(());
        }
        let job = self.load(&self.pool, lease.job_id).await?;
        if job.status != JobStatus::Running
            || job.lease_token != lease.token
            || job.lease_owner.as_deref() != Some(lease.worker.as_str())
        {
            return Err(StoreError::LeaseLost(lease.job_id));
        }
        let len = job.log_len(stream);
        if len != offset {
            return Err(StoreError::LogOffset {
                job: lease.job_id,
                offset,
                len,
            });
        }
        // An empty append at the right offset.
        Ok(())
    }

    async fn complete(&self, lease: &Lease, done: Completion, now: Millis) -> Result<JobRecord> {
        let status = done.status.unwrap_or(JobStatus::Error);
        if !status.is_terminal() || !can_transition(JobStatus::Running, status) {
            return Err(StoreError::Backend(format!(
                "job {} cannot move from running to {status}",
                lease.job_id
            )));
        }
        let row = sqlx::query(&format!(
            "UPDATE jobs SET status = $4, reason = $5, exit_code = $6, signal = $7,
                 warnings = $8, resources = $9, log_truncated = $10, finished_at = $11,
                 enforcement = $12, invariants = $13, stages = $14, tests = $15, artifact_bytes = $16,
                 lease_owner = NULL,
                 lease_expires_at = NULL
             WHERE id = $1::uuid AND {LEASED}
             RETURNING {COLUMNS}"
        ))
        .bind(lease.job_id.to_string())
        .bind(lease.token)
        .bind(&lease.worker)
        .bind(status.as_str())
        .bind(&done.reason)
        .bind(done.exit_code)
        .bind(done.signal)
        .bind(to_json(&done.warnings)?)
        .bind(done.resources.as_ref().map(to_json).transpose()?)
        .bind(done.log_truncated)
        .bind(now)
        .bind(to_json(&done.enforcement)?)
        .bind(done.invariants.as_ref().map(to_json).transpose()?)
        .bind(
            (!done.stages.is_empty())
                .then(|| to_json(&done.stages))
                .transpose()?,
        )
        .bind(done.tests.as_ref().map(to_json).transpose()?)
        .bind(done.artifact_bytes.min(i64::MAX as u64) as i64)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        match row {
            Some(row) => row_to_job(&row),
            None => Err(self.refused(lease).await),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let n = sqlx::query(&format!(
            "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL,
                 started_at = NULL, stdout_bytes = 0, stderr_bytes = 0, log_truncated = false,
                 attempts = attempts - 1
             WHERE id = $1::uuid AND {LEASED}"
        ))
        .bind(lease.job_id.to_string())
        .bind(lease.token)
        .bind(&lease.worker)
        .execute(&mut *tx)
        .await
        .map_err(backend)?
        .rows_affected();
        if n == 0 {
            drop(tx);
            return Err(self.refused(lease).await);
        }
        sqlx::query("DELETE FROM log_chunks WHERE job_id = $1::uuid")
            .bind(lease.job_id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        self.mark_queued();
        Ok(())
    }

    async fn request_cancel(&self, id: JobId, now: Millis) -> Result<CancelOutcome> {
        let queued = sqlx::query(&format!(
            "UPDATE jobs SET status = 'cancelled', cancel_requested = true,
                 reason = 'cancelled while queued', finished_at = $2
             WHERE id = $1::uuid AND status = 'queued'
             RETURNING {COLUMNS}"
        ))
        .bind(id.to_string())
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        if let Some(row) = queued {
            return Ok(CancelOutcome::Cancelled(row_to_job(&row)?));
        }
        let running = sqlx::query(&format!(
            "UPDATE jobs SET cancel_requested = true WHERE id = $1::uuid AND status = 'running'
             RETURNING {COLUMNS}"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        if let Some(row) = running {
            return Ok(CancelOutcome::Requested(row_to_job(&row)?));
        }
        // Neither queued nor running: finished (or gone).
        Ok(CancelOutcome::AlreadyFinished(
            self.load(&self.pool, id).await?,
        ))
    }

    async fn reap_expired(&self, expired_before: Millis, now: Millis) -> Result<Vec<Reaped>> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        // SKIP LOCKED: two replicas reaping at once split the expired jobs between them.
        let rows = sqlx::query(
            "WITH expired AS (
                 SELECT id FROM jobs
                 WHERE status = 'running' AND lease_expires_at < $1
                 ORDER BY id FOR UPDATE SKIP LOCKED)
             UPDATE jobs j SET
                 status = CASE WHEN j.attempts < j.max_attempts THEN 'queued' ELSE 'error' END,
                 reason = CASE WHEN j.attempts < j.max_attempts THEN j.reason
                               ELSE 'worker_lost' END,
                 finished_at = CASE WHEN j.attempts < j.max_attempts THEN NULL ELSE $2 END,
                 started_at = CASE WHEN j.attempts < j.max_attempts THEN NULL
                                   ELSE j.started_at END,
                 stdout_bytes = CASE WHEN j.attempts < j.max_attempts THEN 0
                                     ELSE j.stdout_bytes END,
                 stderr_bytes = CASE WHEN j.attempts < j.max_attempts THEN 0
                                     ELSE j.stderr_bytes END,
                 log_truncated = CASE WHEN j.attempts < j.max_attempts THEN false
                                      ELSE j.log_truncated END,
                 lease_owner = NULL, lease_expires_at = NULL
             FROM expired WHERE j.id = expired.id
             RETURNING j.id::text, j.status",
        )
        .bind(expired_before)
        .bind(now)
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;
        let mut reaped = Vec::with_capacity(rows.len());
        let mut requeued = Vec::new();
        for row in rows {
            let id: String = row.try_get(0).map_err(backend)?;
            let status: String = row.try_get(1).map_err(backend)?;
            let job_id: JobId = id.parse().map_err(|e| corrupt("job id", e))?;
            let now = JobStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?;
            if now == JobStatus::Queued {
                requeued.push(id);
            }
            reaped.push(Reaped { job_id, now });
        }
        if !requeued.is_empty() {
            // The next attempt writes its logs from offset 0.
            sqlx::query("DELETE FROM log_chunks WHERE job_id = ANY($1::uuid[])")
                .bind(&requeued)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
        if !requeued.is_empty() {
            self.mark_queued();
        }
        reaped.sort_by_key(|r| r.job_id);
        Ok(reaped)
    }

    async fn read_log(
        &self,
        id: JobId,
        stream: LogStream,
        offset: u64,
        max: usize,
    ) -> Result<Vec<u8>> {
        // Only the chunks that hold the range, and of each only the wanted part (sliced by the
        // server): a small read of a large log stays small.
        let max = max.min(i32::MAX as usize);
        let rows = sqlx::query(
            "SELECT \"offset\",
                    substring(data FROM (greatest($3 - \"offset\", 0) + 1)::int FOR $4::int)
             FROM log_chunks
             WHERE job_id = $1::uuid AND stream = $2 AND \"offset\" < $3 + $4
               AND \"offset\" >= coalesce((SELECT \"offset\" FROM log_chunks
                                           WHERE job_id = $1::uuid AND stream = $2
                                             AND \"offset\" <= $3
                                           ORDER BY \"offset\" DESC LIMIT 1), 0)
             ORDER BY \"offset\"",
        )
        .bind(id.to_string())
        .bind(stream_code(stream))
        .bind(offset as i64)
        .bind(max as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let mut out = Vec::with_capacity(max.min(16 << 20));
        for row in rows {
            let data: &[u8] = row.try_get(1).map_err(backend)?;
            let take = (max - out.len()).min(data.len());
            out.extend_from_slice(&data[..take]);
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    async fn create_token(&self, token: warden_store::TokenRecord) -> Result<()> {
        self.create_token_row(&token).await
    }

    async fn token(&self, id: &str) -> Result<Option<warden_store::TokenRecord>> {
        self.token_row(id).await
    }

    async fn list_tokens(&self, tenant: Option<&str>) -> Result<Vec<warden_store::TokenRecord>> {
        self.token_rows(tenant).await
    }

    async fn revoke_token(
        &self,
        id: &str,
        now: Millis,
    ) -> Result<Option<warden_store::TokenRecord>> {
        self.revoke_token_row(id, now).await
    }

    async fn append_audit(&self, entries: Vec<warden_store::AuditEntry>) -> Result<()> {
        self.append_audit_rows(&entries).await
    }

    async fn list_audit(
        &self,
        filter: &warden_store::AuditFilter,
    ) -> Result<Vec<warden_store::AuditRecord>> {
        self.audit_rows(filter).await
    }

    async fn purge_audit(&self, before: Millis) -> Result<u64> {
        self.purge_audit_rows(before).await
    }

    async fn finished_usage(&self) -> Result<Vec<warden_store::TenantUsage>> {
        self.finished_usage_rows().await
    }

    async fn oldest_finished(
        &self,
        tenant: &str,
        finished_before: Option<Millis>,
        after: Option<(Millis, JobId)>,
        limit: u32,
    ) -> Result<Vec<warden_store::FinishedJob>> {
        self.oldest_finished_rows(tenant, finished_before, after, limit)
            .await
    }

    async fn delete_finished(&self, ids: &[JobId]) -> Result<Vec<JobId>> {
        self.delete_finished_rows(ids).await
    }

    async fn existing_jobs(&self, ids: &[JobId]) -> Result<Vec<JobId>> {
        self.existing_job_rows(ids).await
    }

    async fn gc_lease(&self, owner: &str, lease_ms: i64, now: Millis) -> Result<bool> {
        self.take_lease("gc_lease", owner, lease_ms, now).await
    }

    async fn compact(&self) -> Result<u64> {
        // autovacuum reuses the room of deleted rows; nothing to give back by hand.
        Ok(0)
    }

    async fn set_outbox(&self, on: bool) -> Result<()> {
        self.set_outbox_switch(on).await
    }

    async fn outbox_pending(&self, limit: u32) -> Result<Vec<warden_store::OutboxEvent>> {
        self.outbox_pending_rows(limit).await
    }

    async fn outbox_published(&self, seqs: &[u64], now: Millis) -> Result<()> {
        self.mark_outbox_published(seqs, now).await
    }

    async fn outbox_since(
        &self,
        since: Millis,
        after: u64,
        limit: u32,
    ) -> Result<Vec<warden_store::OutboxEvent>> {
        self.outbox_since_rows(since, after, limit).await
    }

    async fn prune_outbox(&self, before: Millis, webhooks: bool) -> Result<u64> {
        self.prune_outbox_rows(before, webhooks).await
    }

    async fn outbox_lease(&self, owner: &str, lease_ms: i64, now: Millis) -> Result<bool> {
        self.take_lease("outbox_lease", owner, lease_ms, now).await
    }

    async fn webhook_backlog(&self, limit: u32) -> Result<warden_store::WebhookBacklog> {
        self.webhook_backlog_rows(limit).await
    }

    async fn add_deliveries(
        &self,
        deliveries: Vec<warden_store::NewDelivery>,
        cursor: u64,
        now: Millis,
    ) -> Result<()> {
        self.add_delivery_rows(&deliveries, cursor, now).await
    }

    async fn due_deliveries(&self, now: Millis, limit: u32) -> Result<Vec<warden_store::Delivery>> {
        self.due_delivery_rows(now, limit).await
    }

    async fn delivery_attempted(
        &self,
        id: u64,
        outcome: warden_store::DeliveryOutcome,
        now: Millis,
    ) -> Result<()> {
        self.record_delivery_attempt(id, &outcome, now).await
    }

    async fn deliveries(&self, job: JobId) -> Result<Vec<warden_store::Delivery>> {
        self.delivery_rows(job).await
    }
}
