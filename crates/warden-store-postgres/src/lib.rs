//! The shared store: PostgreSQL, for several control-plane replicas on one database.
//!
//! Every state change is one statement (or one short transaction) whose `WHERE` clause carries
//! the rule it enforces: a claim takes the oldest queued row with `FOR UPDATE SKIP LOCKED`, so
//! replicas never wait on each other nor take the same job (the tenant whose turn it is comes
//! from the replica's own fair-share schedule, `perimeter.rs`); every write a worker makes names the
//! job's fencing token, so a write from a lease that is no longer current changes nothing.
//!
//! Triggers `NOTIFY` every replica when a job is queued (`warden_queued`) and when a job's
//! cancellation is asked for (`warden_job`); [`PgStore::listen`] turns those into calls.
//! Notifications are a wake-up only: claimers and log followers also poll, so a lost connection
//! delays work but never loses it.

mod claims;
mod events;
mod perimeter;
mod results;
mod retention;
mod rows;
mod store;
pub mod testing;
#[cfg(test)]
mod tests;

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use warden_core::JobId;
use warden_store::{Migrations, Result, StoreError, pending_migrations};

use self::rows::backend;

/// Migrations, applied in order, each once, under an advisory lock (replicas may start together).
const MIGRATIONS: Migrations = &[
    (1, include_str!("../migrations/0001_jobs.sql")),
    (2, include_str!("../migrations/0002_perimeter.sql")),
    (3, include_str!("../migrations/0003_inline.sql")),
    (4, include_str!("../migrations/0004_queued_tenant.sql")),
    (5, include_str!("../migrations/0005_image.sql")),
    (6, include_str!("../migrations/0006_stages.sql")),
    (7, include_str!("../migrations/0007_tests.sql")),
    (8, include_str!("../migrations/0008_retention.sql")),
    (9, include_str!("../migrations/0009_events.sql")),
    (10, include_str!("../migrations/0010_webhooks.sql")),
    (11, include_str!("../migrations/0011_tool_bundle.sql")),
];

/// Any number; the same for every replica.
const MIGRATION_LOCK: i64 = 0x7761_7264_656e; // "warden"

const COLUMNS: &str = "id::text, tenant, job_type, repo_name, remote_url, sha, params, \
    idempotency_key, status, reason, exit_code, signal, attempts, max_attempts, cancel_requested, \
    unsafe_fallback, warnings, created_at, started_at, finished_at, stdout_bytes, stderr_bytes, \
    log_truncated, resources, lease_owner, lease_token, lease_expires_at, enforcement, git_ref, \
    invariants, inline_argv, image, stages, tests, artifact_bytes, tool_bundle, tool_env_var";

/// `... WHERE` clause shared by every write under a lease.
const LEASED: &str = "status = 'running' AND lease_token = $2 AND lease_owner = $3";

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    url: String,
    fair: std::sync::Arc<std::sync::RwLock<std::sync::Arc<warden_store::FairShare>>>,
    /// This replica's fair-share schedule (see `perimeter::Schedule`).
    schedule: std::sync::Arc<std::sync::Mutex<perimeter::Schedule>>,
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
            fair: Default::default(),
            schedule: Default::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Jobs were queued again whose tenants this replica's schedule may not hold: its next
    /// claim looks at the database.
    fn mark_queued(&self) {
        self.schedule
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .mark_stale();
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
        let store = self.clone();
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
                store.mark_queued();
                on_queued();
                loop {
                    match listener.try_recv().await {
                        Ok(Some(n)) if n.channel() == "warden_queued" => {
                            // The payload is the job's tenant (migration 4).
                            store
                                .schedule
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .note(n.payload());
                            on_queued();
                        }
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

/// What `warden doctor` learns of a database, read-only: the doctor never creates or migrates
/// the schema (`serve` does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub server_version: String,
    /// warden's schema version; `None` before any `serve` created it.
    pub schema_version: Option<i64>,
}

impl PgStore {
    /// Connects once to `url` and reads the server and schema versions.
    pub async fn probe(url: &str) -> std::result::Result<Probe, sqlx::Error> {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(url).await?;
        let server_version: String = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&mut conn)
            .await?;
        let exists: bool =
            sqlx::query_scalar("SELECT to_regclass('schema_migrations') IS NOT NULL")
                .fetch_one(&mut conn)
                .await?;
        let schema_version = if exists {
            Some(
                sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
                    .fetch_one(&mut conn)
                    .await?,
            )
        } else {
            None
        };
        Ok(Probe {
            server_version,
            schema_version,
        })
    }
}
