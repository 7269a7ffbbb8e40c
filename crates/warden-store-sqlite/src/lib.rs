//! The embedded store: one SQLite database in WAL mode under the data directory.
//!
//! One connection serialises all writes (SQLite allows one writer at a time anyway); calls run
//! on a thread of their own that owns it (`thread.rs`) so the async runtime never waits on
//! disk, and WAL checkpoints on a thread and connection of their own (`checkpoint.rs`) so no
//! call waits on one. `synchronous = NORMAL` in
//! WAL mode keeps every committed transaction across a crash of warden (kill -9); only a power
//! loss may drop the last few commits.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::{Connection, params};
use warden_core::{JobId, JobStatus};
use warden_store::{
    AuditEntry, AuditFilter, AuditRecord, CancelOutcome, ClaimFor, Claimed, Completion, Delivery,
    DeliveryOutcome, FairShare, FinishedJob, HeartbeatReply, JobRecord, Lease, ListFilter,
    LogStream, Migrations, Millis, NewDelivery, NewJob, OutboxEvent, Reaped, Result, Store,
    StoreError, SubmitOutcome, TenantUsage, TestResult, TestsQuery, TokenRecord,
    pending_migrations,
};

mod backup;
mod checkpoint;
mod events;
mod logs;
mod perimeter;
mod queue;
mod results;
mod retention;
mod rows;
mod thread;

pub use backup::{BackupInfo, backup, check_backup};

use self::queue::{claim_in, completing, submit_in};
use self::rows::{COLUMNS, load, load_leased, row_to_job, to_json};
use self::thread::Tx;

/// Migrations, applied in order, each once. Append-only.
const MIGRATIONS: Migrations = &[
    (1, include_str!("../migrations/0001_jobs.sql")),
    (2, include_str!("../migrations/0002_enforcement.sql")),
    (3, include_str!("../migrations/0003_repo.sql")),
    (4, include_str!("../migrations/0004_perimeter.sql")),
    (5, include_str!("../migrations/0005_inline.sql")),
    (6, include_str!("../migrations/0006_image.sql")),
    (7, include_str!("../migrations/0007_stages.sql")),
    (8, include_str!("../migrations/0008_tests.sql")),
    (9, include_str!("../migrations/0009_retention.sql")),
    (10, include_str!("../migrations/0010_events.sql")),
    (11, include_str!("../migrations/0011_webhooks.sql")),
    (12, include_str!("../migrations/0012_tool_bundle.sql")),
    (13, include_str!("../migrations/0013_log_chunks_rowid.sql")),
    (14, include_str!("../migrations/0014_lean_job_indexes.sql")),
];

#[derive(Clone)]
pub struct SqliteStore {
    conn: thread::StoreThread,
    checkpoint: Arc<checkpoint::Checkpointer>,
    fair: Arc<std::sync::RwLock<Arc<FairShare>>>,
    buffers: Arc<logs::Buffers>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        let conn = Connection::open(path)
            .map_err(|e| StoreError::Backend(format!("open {}: {e}", path.display())))?;
        // Jobs' params and logs are in here: only warden may read it. (SQLite gives the -wal
        // and -shm files the database file's mode.)
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| StoreError::Backend(format!("chmod {}: {e}", path.display())))?;
        }
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA foreign_keys = ON;
             PRAGMA busy_timeout = 5000;",
        )
        .map_err(backend)?;
        // Checkpoints run on their own thread (see `checkpoint`); this connection's own only
        // if that one falls far behind, and the WAL file is cut back after it.
        conn.execute_batch(&format!(
            "PRAGMA wal_autocheckpoint = {};
             PRAGMA journal_size_limit = {};",
            checkpoint::BACKSTOP_PAGES,
            64 << 20
        ))
        .map_err(backend)?;
        retention::ensure_incremental_vacuum(&conn)?;
        migrate(&conn)?;
        // Room for every statement of the hot path (claims, appends, completions, outbox).
        conn.set_prepared_statement_cache_capacity(64);
        let checkpoint = checkpoint::Checkpointer::start(path)
            .map_err(|e| StoreError::Backend(format!("checkpoint thread: {e}")))?;
        Ok(SqliteStore {
            checkpoint: Arc::new(checkpoint),
            conn: thread::StoreThread::start(conn)
                .map_err(|e| StoreError::Backend(format!("store thread: {e}")))?,
            fair: Arc::default(),
            buffers: Arc::default(),
        })
    }

    async fn with<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let done = self.conn.call(f).await;
        self.checkpoint.wrote(checkpoint::CALL_BYTES);
        done
    }

    /// [`with`](Self::with), and `then` given its answer on the store thread as its writes
    /// commit (see `StoreThread::call_then`).
    async fn with_then<T, U, F, G>(&self, f: F, then: G) -> Result<U>
    where
        T: Send + 'static,
        U: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
        G: FnOnce(T) -> U + Send + 'static,
    {
        let done = self.conn.call_then(f, then).await;
        self.checkpoint.wrote(checkpoint::CALL_BYTES);
        done
    }

    /// [`with`](Self::with) for a call that only reads: it never holds up a batch's commit.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        self.conn.call_read(f).await
    }

    /// [`with`](Self::with) outside any transaction (for what SQLite refuses inside one).
    async fn with_alone<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let done = self.conn.call_alone(f).await;
        self.checkpoint.wrote(checkpoint::CALL_BYTES);
        done
    }
}

/// `execute` through the connection's statement cache: a statement run for every job is
/// parsed once per connection, not on every call.
pub(crate) fn exec(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// `query_row` through the connection's statement cache (see [`exec`]).
pub(crate) fn query_row<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    row: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.prepare_cached(sql)?.query_row(params, row)
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn migrate(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY) STRICT;",
    )
    .map_err(backend)?;
    #[allow(clippy::disallowed_methods, reason = "once, at open")]
    let applied: i64 = conn
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )
        .map_err(backend)?;
    for (version, sql) in pending_migrations(MIGRATIONS, applied)? {
        let tx = conn.unchecked_transaction().map_err(backend)?;
        tx.execute_batch(sql).map_err(backend)?;
        exec(
            &tx,
            "INSERT INTO schema_migrations (version) VALUES (?1)",
            [version],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
        tracing::info!(version, "applied store migration");
    }
    Ok(())
}

/// Puts a running job back in the queue, with its logs reset: the next attempt writes from 0.
fn requeue(conn: &Connection, id: JobId, count_attempt: bool) -> Result<()> {
    exec(
        conn,
        "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL,
             started_at = NULL, stdout_bytes = 0, stderr_bytes = 0, log_truncated = 0,
             attempts = attempts - ?2
         WHERE id = ?1",
        params![id.to_string(), if count_attempt { 0 } else { 1 }],
    )
    .map_err(backend)?;
    exec(
        conn,
        "DELETE FROM log_chunks WHERE job_id = ?1",
        [id.to_string()],
    )
    .map_err(backend)?;
    Ok(())
}

impl SqliteStore {
    /// A submission's and a claim's one transaction (see [`Store::submit_and_claim`]).
    fn submitting_and_claiming(
        &self,
        job: NewJob,
        to: &ClaimFor,
        now: Millis,
    ) -> Result<
        impl FnOnce(&mut Connection) -> Result<(SubmitOutcome, Option<Claimed>)> + Send + 'static,
    > {
        let worker = to.worker.clone();
        let (job_types, lease_ms) = (to.job_types.as_ref().map(to_json).transpose()?, to.lease_ms);
        let fair = self.fair.read().unwrap_or_else(|p| p.into_inner()).clone();
        Ok(move |conn: &mut Connection| {
            // One transaction, one commit: the job's row is written once, already claimed.
            let tx = Tx::begin(conn)?;
            let outcome = submit_in(&tx, &job)?;
            let claimed = match outcome {
                SubmitOutcome::Created(_) => {
                    claim_in(&tx, &fair, &worker, job_types.as_deref(), 1, lease_ms, now)?.pop()
                }
                SubmitOutcome::Existing(_) => None,
            };
            tx.commit()?;
            Ok((outcome, claimed))
        })
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn submit(&self, job: NewJob) -> Result<SubmitOutcome> {
        self.with(move |conn| {
            let tx = Tx::begin(conn)?;
            let outcome = submit_in(&tx, &job)?;
            tx.commit()?;
            Ok(outcome)
        })
        .await
    }

    async fn submit_and_claim(
        &self,
        job: NewJob,
        to: &ClaimFor,
        now: Millis,
    ) -> Result<(SubmitOutcome, Option<Claimed>)> {
        self.with(self.submitting_and_claiming(job, to, now)?).await
    }

    async fn submit_and_hand(
        &self,
        job: NewJob,
        to: &ClaimFor,
        now: Millis,
        hand: warden_store::Hand,
    ) -> Result<(SubmitOutcome, warden_store::Handed)> {
        // The slot is handed its job on the store thread, right after the commit: it starts
        // beside the submission's answer, not after it.
        let submitting = self.submitting_and_claiming(job, to, now)?;
        self.with_then(submitting, move |(outcome, claimed)| {
            (outcome, warden_store::Handed::over(claimed, hand))
        })
        .await
    }

    async fn get(&self, id: JobId) -> Result<JobRecord> {
        self.read(move |conn| load(conn, id)).await
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<JobRecord>> {
        let filter = filter.clone();
        self.read(move |conn| {
            let mut sql = format!("SELECT {COLUMNS} FROM jobs WHERE 1 = 1");
            let mut args: Vec<Box<dyn rusqlite::ToSql>> = Vec::new();
            if let Some(t) = filter.tenant {
                args.push(Box::new(t));
                sql.push_str(&format!(" AND tenant = ?{}", args.len()));
            }
            if let Some(s) = filter.status {
                args.push(Box::new(s.as_str()));
                sql.push_str(&format!(" AND status = ?{}", args.len()));
            }
            if let Some(t) = filter.job_type {
                args.push(Box::new(t));
                sql.push_str(&format!(" AND job_type = ?{}", args.len()));
            }
            if let Some(r) = filter.repo_name {
                args.push(Box::new(r));
                sql.push_str(&format!(" AND repo_name = ?{}", args.len()));
            }
            if let Some(b) = filter.before {
                args.push(Box::new(b.to_string()));
                sql.push_str(&format!(" AND id < ?{}", args.len()));
            }
            args.push(Box::new(filter.limit));
            sql.push_str(&format!(" ORDER BY id DESC LIMIT ?{}", args.len()));
            let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(args.iter()), row_to_job)
                .map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
        })
        .await
    }

    fn set_fair_share(&self, fair: FairShare) {
        *self.fair.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fair);
    }

    async fn release_memory(&self) {
        self.buffers.clear();
        // The connection's page cache, freed page by page (it fills again as it is read).
        let shrunk = self
            .conn
            .call_alone(|conn| conn.execute_batch("PRAGMA shrink_memory").map_err(backend))
            .await;
        if let Err(e) = shrunk {
            tracing::warn!(error = %e, "could not shrink the store's page cache");
        }
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
        if max == 0 {
            return Ok(Vec::new());
        }
        let worker = worker.to_string();
        let job_types = job_types.map(|t| to_json(&t)).transpose()?;
        let fair = self.fair.read().unwrap_or_else(|p| p.into_inner()).clone();
        self.with(move |conn| {
            let tx = Tx::begin(conn)?;
            let claimed = claim_in(
                &tx,
                &fair,
                &worker,
                job_types.as_deref(),
                max,
                lease_ms,
                now,
            )?;
            tx.commit()?;
            Ok(claimed)
        })
        .await
    }

    async fn heartbeat(&self, lease: &Lease, lease_ms: i64, now: Millis) -> Result<HeartbeatReply> {
        let lease = lease.clone();
        self.with(move |conn| {
            let tx = Tx::begin(conn)?;
            let job = load_leased(&tx, &lease)?;
            exec(
                &tx,
                "UPDATE jobs SET lease_expires_at = ?2 WHERE id = ?1",
                params![lease.job_id.to_string(), now + lease_ms],
            )
            .map_err(backend)?;
            tx.commit()?;
            Ok(HeartbeatReply {
                cancel_requested: job.cancel_requested,
            })
        })
        .await
    }

    async fn append_tests(&self, lease: &Lease, first: u32, tests: Vec<TestResult>) -> Result<()> {
        let lease = lease.clone();
        self.with(move |conn| results::append_tests(conn, &lease, first, &tests))
            .await
    }

    async fn tests(&self, q: &TestsQuery) -> Result<Vec<TestResult>> {
        let q = q.clone();
        self.read(move |conn| results::tests(conn, &q)).await
    }

    async fn flaky_tests(
        &self,
        job_type: &str,
        repo_name: Option<&str>,
        sha: &str,
    ) -> Result<Vec<(String, String, String)>> {
        let (job_type, repo_name, sha) = (
            job_type.to_string(),
            repo_name.map(str::to_string),
            sha.to_string(),
        );
        self.read(move |conn| results::flaky_tests(conn, &job_type, repo_name.as_deref(), &sha))
            .await
    }

    async fn append_log(
        &self,
        lease: &Lease,
        stream: LogStream,
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        let lease = lease.clone();
        let data = self.buffers.copy(data);
        self.checkpoint.wrote(data.len() as u64);
        let buffers = self.buffers.clone();
        self.with(move |conn| {
            let tx = Tx::begin(conn)?;
            let job = load_leased(&tx, &lease)?;
            let len = job.log_len(stream);
            if offset != len {
                return Err(StoreError::LogOffset {
                    job: lease.job_id,
                    offset,
                    len,
                });
            }
            if data.is_empty() {
                return Ok(());
            }
            logs::insert(&tx, lease.job_id, stream, offset, &data)?;
            let len = data.len();
            buffers.give_back(data);
            let column = match stream {
                LogStream::Stdout => "stdout_bytes",
                LogStream::Stderr => "stderr_bytes",
            };
            exec(
                &tx,
                &format!("UPDATE jobs SET {column} = {column} + ?2 WHERE id = ?1"),
                params![lease.job_id.to_string(), len as i64],
            )
            .map_err(backend)?;
            tx.commit()
        })
        .await
    }

    async fn complete(&self, lease: &Lease, done: Completion, now: Millis) -> Result<JobRecord> {
        self.with(completing(lease.clone(), done, now)).await
    }

    async fn complete_then(
        &self,
        lease: &Lease,
        done: Completion,
        now: Millis,
        on_commit: warden_store::OnCommit,
    ) -> Result<JobRecord> {
        self.with_then(completing(lease.clone(), done, now), move |record| {
            on_commit(&record);
            record
        })
        .await
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        let lease = lease.clone();
        self.with(move |conn| {
            let tx = Tx::begin(conn)?;
            load_leased(&tx, &lease)?;
            requeue(&tx, lease.job_id, false)?;
            tx.commit()
        })
        .await
    }

    async fn request_cancel(&self, id: JobId, now: Millis) -> Result<CancelOutcome> {
        self.with(move |conn| {
            let tx = Tx::begin(conn)?;
            let job = load(&tx, id)?;
            let outcome = match job.status {
                JobStatus::Queued => {
                    exec(
                        &tx,
                        "UPDATE jobs SET status = 'cancelled', cancel_requested = 1,
                             reason = 'cancelled while queued', finished_at = ?2
                         WHERE id = ?1",
                        params![id.to_string(), now],
                    )
                    .map_err(backend)?;
                    CancelOutcome::Cancelled(load(&tx, id)?)
                }
                JobStatus::Running => {
                    exec(
                        &tx,
                        "UPDATE jobs SET cancel_requested = 1 WHERE id = ?1",
                        [id.to_string()],
                    )
                    .map_err(backend)?;
                    CancelOutcome::Requested(load(&tx, id)?)
                }
                _ => CancelOutcome::AlreadyFinished(job),
            };
            tx.commit()?;
            Ok(outcome)
        })
        .await
    }

    async fn reap_expired(&self, expired_before: Millis, now: Millis) -> Result<Vec<Reaped>> {
        self.with(move |conn| {
            let tx = Tx::begin(conn)?;
            let expired: Vec<(String, u32, u32)> = {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT id, attempts, max_attempts FROM jobs
                         WHERE status = 'running' AND lease_expires_at < ?1 ORDER BY id",
                    )
                    .map_err(backend)?;
                stmt.query_map([expired_before], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .map_err(backend)?
                    .collect::<rusqlite::Result<_>>()
                    .map_err(backend)?
            };
            let mut reaped = Vec::with_capacity(expired.len());
            for (id, attempts, max_attempts) in expired {
                let id: JobId = id
                    .parse()
                    .map_err(|e| StoreError::Corrupt(format!("{e}")))?;
                if attempts < max_attempts {
                    requeue(&tx, id, true)?;
                    reaped.push(Reaped {
                        job_id: id,
                        now: JobStatus::Queued,
                    });
                } else {
                    exec(
                        &tx,
                        "UPDATE jobs SET status = 'error', reason = 'worker_lost',
                             finished_at = ?2, lease_owner = NULL, lease_expires_at = NULL
                         WHERE id = ?1",
                        params![id.to_string(), now],
                    )
                    .map_err(backend)?;
                    reaped.push(Reaped {
                        job_id: id,
                        now: JobStatus::Error,
                    });
                }
            }
            tx.commit()?;
            Ok(reaped)
        })
        .await
    }

    async fn read_log(
        &self,
        id: JobId,
        stream: LogStream,
        offset: u64,
        max: usize,
    ) -> Result<Vec<u8>> {
        self.read(move |conn| logs::read(conn, id, stream, offset, max))
            .await
    }

    async fn create_token(&self, token: TokenRecord) -> Result<()> {
        self.with(move |conn| perimeter::create_token(conn, &token))
            .await
    }

    async fn token(&self, id: &str) -> Result<Option<TokenRecord>> {
        let id = id.to_string();
        self.read(move |conn| perimeter::token(conn, &id)).await
    }

    async fn list_tokens(&self, tenant: Option<&str>) -> Result<Vec<TokenRecord>> {
        let tenant = tenant.map(str::to_string);
        self.read(move |conn| perimeter::list_tokens(conn, tenant.as_deref()))
            .await
    }

    async fn revoke_token(&self, id: &str, now: Millis) -> Result<Option<TokenRecord>> {
        let id = id.to_string();
        self.with(move |conn| perimeter::revoke_token(conn, &id, now))
            .await
    }

    async fn append_audit(&self, entries: Vec<AuditEntry>) -> Result<()> {
        self.with(move |conn| perimeter::append_audit(conn, &entries))
            .await
    }

    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>> {
        let filter = filter.clone();
        self.read(move |conn| perimeter::list_audit(conn, &filter))
            .await
    }

    async fn purge_audit(&self, before: Millis) -> Result<u64> {
        self.with(move |conn| {
            exec(conn, "DELETE FROM audit WHERE at < ?1", [before])
                .map(|n| n as u64)
                .map_err(backend)
        })
        .await
    }

    async fn finished_usage(&self) -> Result<Vec<TenantUsage>> {
        self.read(|conn| retention::finished_usage(conn)).await
    }

    async fn oldest_finished(
        &self,
        tenant: &str,
        finished_before: Option<Millis>,
        after: Option<(Millis, JobId)>,
        limit: u32,
    ) -> Result<Vec<FinishedJob>> {
        let tenant = tenant.to_string();
        self.with(move |conn| {
            retention::oldest_finished(conn, &tenant, finished_before, after, limit)
        })
        .await
    }

    async fn delete_finished(&self, ids: &[JobId]) -> Result<Vec<JobId>> {
        let ids = ids.to_vec();
        self.with(move |conn| retention::delete_finished(conn, &ids))
            .await
    }

    async fn existing_jobs(&self, ids: &[JobId]) -> Result<Vec<JobId>> {
        let ids = ids.to_vec();
        self.read(move |conn| retention::existing_jobs(conn, &ids))
            .await
    }

    async fn gc_lease(&self, owner: &str, lease_ms: i64, now: Millis) -> Result<bool> {
        let owner = owner.to_string();
        self.with(move |conn| retention::take_lease(conn, "gc_lease", &owner, lease_ms, now))
            .await
    }

    async fn compact(&self) -> Result<u64> {
        // Step by step, each its own call: claims and log writes go between the steps.
        let mut freed = 0;
        loop {
            let (bytes, more) = self.with_alone(|conn| retention::vacuum_step(conn)).await?;
            freed += bytes;
            if !more || bytes == 0 {
                break;
            }
        }
        // In WAL mode the file shrinks when the log is checkpointed into it. The checkpoint
        // thread may hold the checkpoint lock for a moment (SQLite does not wait for it).
        for _ in 0..100 {
            let busy: i64 = self
                .with_alone(|conn| {
                    #[allow(clippy::disallowed_methods, reason = "a compaction's last step")]
                    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
                        .map_err(backend)
                })
                .await?;
            if busy == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        Ok(freed)
    }

    async fn set_outbox(&self, on: bool) -> Result<()> {
        self.with(move |conn| events::set_outbox(conn, on)).await
    }

    async fn outbox_pending(&self, limit: u32) -> Result<Vec<OutboxEvent>> {
        self.with(move |conn| events::pending(conn, limit)).await
    }

    async fn outbox_published(&self, seqs: &[u64], now: Millis) -> Result<()> {
        let seqs = seqs.to_vec();
        self.with(move |conn| events::published(conn, &seqs, now))
            .await
    }

    async fn outbox_since(
        &self,
        since: Millis,
        after: u64,
        limit: u32,
    ) -> Result<Vec<OutboxEvent>> {
        self.read(move |conn| events::since(conn, since, after, limit))
            .await
    }

    async fn prune_outbox(&self, before: Millis, webhooks: bool) -> Result<u64> {
        self.with(move |conn| events::prune(conn, before, webhooks))
            .await
    }

    async fn outbox_lease(&self, owner: &str, lease_ms: i64, now: Millis) -> Result<bool> {
        let owner = owner.to_string();
        self.with(move |conn| retention::take_lease(conn, "outbox_lease", &owner, lease_ms, now))
            .await
    }

    async fn webhook_backlog(&self, limit: u32) -> Result<warden_store::WebhookBacklog> {
        self.read(move |conn| events::webhook_backlog(conn, limit))
            .await
    }

    async fn add_deliveries(
        &self,
        deliveries: Vec<NewDelivery>,
        cursor: u64,
        now: Millis,
    ) -> Result<()> {
        self.with(move |conn| events::add_deliveries(conn, &deliveries, cursor, now))
            .await
    }

    async fn due_deliveries(&self, now: Millis, limit: u32) -> Result<Vec<Delivery>> {
        self.read(move |conn| events::due_deliveries(conn, now, limit))
            .await
    }

    async fn delivery_attempted(
        &self,
        id: u64,
        outcome: DeliveryOutcome,
        now: Millis,
    ) -> Result<()> {
        self.with(move |conn| events::delivery_attempted(conn, id, &outcome, now))
            .await
    }

    async fn deliveries(&self, job: JobId) -> Result<Vec<Delivery>> {
        self.read(move |conn| events::deliveries(conn, job)).await
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods, reason = "tests run statements once")]
mod tests;
