//! The shared store: PostgreSQL, for several control-plane replicas on one database.
//!
//! Every state change is one statement (or one short transaction) whose `WHERE` clause carries
//! the rule it enforces: a claim takes the oldest queued row with `FOR UPDATE SKIP LOCKED`, so
//! replicas never wait on each other nor take the same job; every write a worker makes names the
//! job's fencing token, so a write from a lease that is no longer current changes nothing.
//!
//! Triggers `NOTIFY` every replica when a job is queued (`warden_queued`) and when a job's
//! cancellation is asked for (`warden_job`); [`PgStore::listen`] turns those into calls.
//! Notifications are a wake-up only: claimers and log followers also poll, so a lost connection
//! delays work but never loses it.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions, PgRow};
use sqlx::{PgPool, Row};
use warden_api::ResourceUsage;
use warden_core::state::can_transition;
use warden_core::{JobId, JobStatus};
use warden_store::{
    CancelOutcome, Claimed, Completion, HeartbeatReply, JobRecord, Lease, ListFilter, LogStream,
    Migrations, Millis, NewJob, Reaped, Result, Store, StoreError, SubmitOutcome,
    pending_migrations,
};

/// Migrations, applied in order, each once, under an advisory lock (replicas may start together).
const MIGRATIONS: Migrations = &[(1, include_str!("../migrations/0001_jobs.sql"))];

/// Any number; the same for every replica.
const MIGRATION_LOCK: i64 = 0x7761_7264_656e; // "warden"

const COLUMNS: &str = "id::text, tenant, job_type, repo_name, remote_url, sha, params, \
    idempotency_key, status, reason, exit_code, signal, attempts, max_attempts, cancel_requested, \
    unsafe_fallback, warnings, created_at, started_at, finished_at, stdout_bytes, stderr_bytes, \
    log_truncated, resources, lease_owner, lease_token, lease_expires_at, enforcement, git_ref, \
    invariants";

/// `... WHERE` clause shared by every write under a lease.
const LEASED: &str = "status = 'running' AND lease_token = $2 AND lease_owner = $3";

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    url: String,
}

/// What a `--database-url` could not give.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("invalid database URL: {0}")]
    Url(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PgStore {
    /// Connects (a pool of up to `max_connections`) and brings the schema up to date.
    pub async fn connect(url: &str, max_connections: u32) -> Result<PgStore, OpenError> {
        let options: PgConnectOptions = url
            .parse()
            .map_err(|e: sqlx::Error| OpenError::Url(e.to_string()))?;
        let options = options.application_name("warden");
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Backend(format!("connect to PostgreSQL: {e}")))?;
        let store = PgStore {
            pool,
            url: url.to_string(),
        };
        store.migrate().await?;
        Ok(store)
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn migrate(&self) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_migrations (version bigint PRIMARY KEY)")
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let applied: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
                .fetch_one(&mut *tx)
                .await
                .map_err(backend)?;
        for (version, sql) in pending_migrations(MIGRATIONS, applied)? {
            sqlx::raw_sql(sql)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            sqlx::query("INSERT INTO schema_migrations (version) VALUES ($1)")
                .bind(version)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            tracing::info!(version, "applied store migration");
        }
        tx.commit().await.map_err(backend)
    }

    /// Calls `on_queued` when any replica queues a job and `on_job` when any job changes, until
    /// the returned task is aborted. A dropped connection is re-established (with a short pause);
    /// `on_queued` is also called then, since wake-ups may have been missed meanwhile.
    pub fn listen(
        &self,
        on_queued: impl Fn() + Send + 'static,
        on_job: impl Fn(JobId) + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let url = self.url.clone();
        tokio::spawn(async move {
            loop {
                let listener = async {
                    let mut l = PgListener::connect(&url).await?;
                    l.listen_all(["warden_queued", "warden_job"]).await?;
                    Ok::<_, sqlx::Error>(l)
                };
                let mut listener = match listener.await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN failed; polling until it is back");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                on_queued();
                loop {
                    match listener.try_recv().await {
                        Ok(Some(n)) if n.channel() == "warden_queued" => on_queued(),
                        Ok(Some(n)) => {
                            if let Ok(id) = n.payload().parse() {
                                on_job(id);
                            }
                        }
                        // The connection dropped (and notifications with it): start over.
                        Ok(None) | Err(_) => break,
                    }
                }
                tracing::warn!("LISTEN connection lost; reconnecting");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    }
}

fn backend(e: sqlx::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn stream_code(s: LogStream) -> i16 {
    match s {
        LogStream::Stdout => 1,
        LogStream::Stderr => 2,
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Backend(e.to_string()))
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn from_json<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| corrupt(what, e))
}

fn row_to_job(row: &PgRow) -> Result<JobRecord> {
    let get = |e: sqlx::Error| corrupt("row", e);
    let id: String = row.try_get(0).map_err(get)?;
    let status: String = row.try_get(8).map_err(get)?;
    Ok(JobRecord {
        id: id.parse().map_err(|e| corrupt("job id", e))?,
        tenant: row.try_get(1).map_err(get)?,
        job_type: row.try_get(2).map_err(get)?,
        repo_name: row.try_get(3).map_err(get)?,
        remote_url: row.try_get(4).map_err(get)?,
        sha: row.try_get(5).map_err(get)?,
        params: from_json("params", row.try_get::<&str, _>(6).map_err(get)?)?,
        idempotency_key: row.try_get(7).map_err(get)?,
        status: JobStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?,
        reason: row.try_get(9).map_err(get)?,
        exit_code: row.try_get(10).map_err(get)?,
        signal: row.try_get(11).map_err(get)?,
        attempts: row.try_get::<i32, _>(12).map_err(get)? as u32,
        max_attempts: row.try_get::<i32, _>(13).map_err(get)? as u32,
        cancel_requested: row.try_get(14).map_err(get)?,
        unsafe_fallback: row.try_get(15).map_err(get)?,
        warnings: from_json("warnings", row.try_get::<&str, _>(16).map_err(get)?)?,
        created_at: row.try_get(17).map_err(get)?,
        started_at: row.try_get(18).map_err(get)?,
        finished_at: row.try_get(19).map_err(get)?,
        stdout_bytes: row.try_get::<i64, _>(20).map_err(get)? as u64,
        stderr_bytes: row.try_get::<i64, _>(21).map_err(get)? as u64,
        log_truncated: row.try_get(22).map_err(get)?,
        resources: row
            .try_get::<Option<&str>, _>(23)
            .map_err(get)?
            .map(|r| from_json::<ResourceUsage>("resources", r))
            .transpose()?,
        lease_owner: row.try_get(24).map_err(get)?,
        lease_token: row.try_get(25).map_err(get)?,
        lease_expires_at: row.try_get(26).map_err(get)?,
        enforcement: from_json("enforcement", row.try_get::<&str, _>(27).map_err(get)?)?,
        git_ref: row.try_get(28).map_err(get)?,
        invariants: row
            .try_get::<Option<&str>, _>(29)
            .map_err(get)?
            .map(|s| from_json("invariants", s))
            .transpose()?,
    })
}

fn sql_select_by_id() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| format!("SELECT {COLUMNS} FROM jobs WHERE id = $1::uuid"))
}

fn sql_claim() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = $1,
                 lease_owner = $2, lease_token = lease_token + 1, lease_expires_at = $3
             WHERE id = (
                 SELECT id FROM jobs
                 WHERE status = 'queued' AND ($4::text[] IS NULL OR job_type = ANY($4))
                 ORDER BY id LIMIT 1
                 FOR UPDATE SKIP LOCKED)
             RETURNING {COLUMNS}"
        )
    })
}

fn sql_claim_many() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = $1,
                 lease_owner = $2, lease_token = lease_token + 1, lease_expires_at = $3
             WHERE id IN (
                 SELECT id FROM jobs
                 WHERE status = 'queued' AND ($4::text[] IS NULL OR job_type = ANY($4))
                 ORDER BY id LIMIT $5
                 FOR UPDATE SKIP LOCKED)
             RETURNING {COLUMNS}"
        )
    })
}

impl PgStore {
    async fn load<'e>(&self, exec: impl sqlx::PgExecutor<'e>, id: JobId) -> Result<JobRecord> {
        let row = sqlx::query(sql_select_by_id())
            .bind(id.to_string())
            .fetch_optional(exec)
            .await
            .map_err(backend)?
            .ok_or(StoreError::NotFound(id))?;
        row_to_job(&row)
    }

    /// Explains why a write under `lease` changed no row.
    async fn refused(&self, lease: &Lease) -> StoreError {
        match self.load(&self.pool, lease.job_id).await {
            Ok(_) => StoreError::LeaseLost(lease.job_id),
            Err(e) => e,
        }
    }
}

#[async_trait]
impl Store for PgStore {
    async fn submit(&self, job: NewJob) -> Result<SubmitOutcome> {
        let inserted = sqlx::query(&format!(
            "INSERT INTO jobs (id, tenant, job_type, repo_name, remote_url, sha, params,
                 idempotency_key, status, max_attempts, unsafe_fallback, created_at, git_ref)
             VALUES ($1::uuid, $2, $3, $4, $5, $6, $7, $8, 'queued', $9, $10, $11, $12)
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
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        if let Some(row) = inserted {
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
             ORDER BY id DESC LIMIT $5"
        ))
        .bind(&filter.tenant)
        .bind(filter.status.map(|s| s.as_str()))
        .bind(&filter.job_type)
        .bind(filter.before.map(|b| b.to_string()))
        .bind(filter.limit as i64)
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
        let row = sqlx::query(sql_claim())
            .bind(now)
            .bind(worker)
            .bind(now.saturating_add(lease_ms))
            .bind(job_types)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        let Some(row) = row else { return Ok(None) };
        let job = row_to_job(&row)?;
        let lease = Lease {
            job_id: job.id,
            worker: worker.to_string(),
            token: job.lease_token,
        };
        Ok(Some(Claimed { job, lease }))
    }

    async fn claim_many(
        &self,
        worker: &str,
        job_types: Option<&[String]>,
        max: usize,
        lease_ms: i64,
        now: Millis,
    ) -> Result<Vec<Claimed>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(sql_claim_many())
            .bind(now)
            .bind(worker)
            .bind(now.saturating_add(lease_ms))
            .bind(job_types)
            .bind(max as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        let mut claimed = rows
            .iter()
            .map(|row| {
                let job = row_to_job(row)?;
                let lease = Lease {
                    job_id: job.id,
                    worker: worker.to_string(),
                    token: job.lease_token,
                };
                Ok(Claimed { job, lease })
            })
            .collect::<Result<Vec<_>>>()?;
        claimed.sort_by_key(|c| c.job.id);
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
                 enforcement = $12, invariants = $13, lease_owner = NULL, lease_expires_at = NULL
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
        tx.commit().await.map_err(backend)
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
        let rows = sqlx::query(
            "SELECT \"offset\", data FROM log_chunks
             WHERE job_id = $1::uuid AND stream = $2 AND \"offset\" + length(data) > $3
             ORDER BY \"offset\"",
        )
        .bind(id.to_string())
        .bind(stream_code(stream))
        .bind(offset as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let mut out = Vec::new();
        for row in rows {
            let start: i64 = row.try_get(0).map_err(backend)?;
            let data: &[u8] = row.try_get(1).map_err(backend)?;
            let skip = (offset as i64 - start).max(0) as usize;
            let take = (max - out.len()).min(data.len().saturating_sub(skip));
            out.extend_from_slice(&data[skip..skip + take]);
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }
}

/// A database of its own for one test, dropped when the guard is.
pub mod testing {

    /// The server tests connect to: `WARDEN_TEST_DATABASE_URL`, or the local PostgreSQL.
    pub fn admin_url() -> String {
        std::env::var("WARDEN_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
    }

    pub struct TestDb {
        pub name: String,
        pub url: String,
        admin: String,
    }

    impl TestDb {
        /// Creates `warden_test_<random>` on the admin server.
        pub async fn create() -> TestDb {
            let admin = admin_url();
            let name = format!("warden_test_{}", uuid::Uuid::now_v7().simple());
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
                .await
                .expect("connect to the test PostgreSQL (is it running? see scripts/setup.sh)");
            sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .await
                .expect("create test database");
            let url = match admin.rsplit_once('/') {
                Some((base, _)) => format!("{base}/{name}"),
                None => panic!("admin URL {admin:?} names no database"),
            };
            TestDb { name, url, admin }
        }
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            let (admin, name) = (self.admin.clone(), self.name.clone());
            // Drop runs inside the test's runtime; a thread of its own may block.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    if let Ok(mut conn) =
                        <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await
                    {
                        let _ =
                            sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                                .execute(&mut conn)
                                .await;
                    }
                });
            })
            .join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::TestDb;
    use super::*;

    async fn fresh() -> (PgStore, TestDb) {
        let db = TestDb::create().await;
        let store = PgStore::connect(&db.url, 4).await.unwrap();
        (store, db)
    }

    mod conformance {
        use super::fresh;
        warden_store::conformance_tests!(fresh());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_on_one_database_never_claim_a_job_twice() {
        let (a, _db) = fresh().await;
        let b = PgStore::connect(&_db.url, 4).await.unwrap();
        let mut ids = Vec::new();
        for i in 0..200 {
            let job = NewJob::plain(if i % 2 == 0 { "even" } else { "odd" }, 1);
            ids.push(a.submit(job).await.unwrap().job().id);
        }
        let claimers = (0..8).map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                let mut got = Vec::new();
                while let Some(c) = store
                    .claim(&format!("w{i}"), None, 30_000, 2)
                    .await
                    .unwrap()
                {
                    got.push(c.job.id);
                }
                got
            })
        });
        let mut all: Vec<JobId> = Vec::new();
        for c in claimers {
            all.extend(c.await.unwrap());
        }
        all.sort();
        ids.sort();
        assert_eq!(all, ids, "every job claimed exactly once");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn notifications_reach_another_replica() {
        let (a, db) = fresh().await;
        let b = PgStore::connect(&db.url, 2).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let tx2 = tx.clone();
        let task = b.listen(
            move || {
                let _ = tx.send(None);
            },
            move |id| {
                let _ = tx2.send(Some(id));
            },
        );
        // The listener's first act is a catch-up wake-up.
        assert_eq!(rx.recv().await, Some(None));
        let job = NewJob::plain("t", 1);
        let id = job.id;
        a.submit(job).await.unwrap();
        let mut saw = (false, false);
        while saw != (true, true) {
            match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                Ok(Some(None)) => saw.0 = true,
                Ok(Some(Some(j))) if j == id => saw.1 = true,
                Ok(_) => {}
                Err(_) => panic!("no notification within 10 s: {saw:?}"),
            }
        }
        task.abort();
    }
}
