//! What the collector asks of PostgreSQL. Deletions go in batches of the caller's size, each
//! its own short transaction: claims (`FOR UPDATE SKIP LOCKED` on queued rows) never wait
//! on them, and logs and test results go with their job (`ON DELETE CASCADE`).

use sqlx::Row;
use warden_core::JobId;
use warden_store::{FinishedJob, Millis, Result, StoreError, TenantUsage};

use super::PgStore;
use super::rows::backend;

/// A finished job: it has ended and nobody has put it back in the queue.
const FINISHED: &str = "finished_at IS NOT NULL AND status NOT IN ('queued', 'running')";

fn parse_ids(ids: Vec<String>) -> Result<Vec<JobId>> {
    ids.into_iter()
        .map(|id| id.parse().map_err(|e| StoreError::Corrupt(format!("{e}"))))
        .collect()
}

impl PgStore {
    pub(crate) async fn finished_usage_rows(&self) -> Result<Vec<TenantUsage>> {
        let rows = sqlx::query(&format!(
            "SELECT tenant, COUNT(*)::bigint,
                    COALESCE(SUM(stdout_bytes + stderr_bytes + artifact_bytes), 0)::bigint
             FROM jobs WHERE {FINISHED} GROUP BY tenant ORDER BY tenant"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter()
            .map(|r| {
                Ok(TenantUsage {
                    tenant: r.try_get(0).map_err(backend)?,
                    jobs: r.try_get::<i64, _>(1).map_err(backend)?.max(0) as u64,
                    bytes: r.try_get::<i64, _>(2).map_err(backend)?.max(0) as u64,
                })
            })
            .collect()
    }

    pub(crate) async fn oldest_finished_rows(
        &self,
        tenant: &str,
        finished_before: Option<Millis>,
        after: Option<(Millis, JobId)>,
        limit: u32,
    ) -> Result<Vec<FinishedJob>> {
        let rows = sqlx::query(&format!(
            "SELECT id::text, finished_at, stdout_bytes + stderr_bytes + artifact_bytes FROM jobs
             WHERE tenant = $1 AND {FINISHED} AND ($2::bigint IS NULL OR finished_at < $2)
               AND ($3::bigint IS NULL OR (finished_at, id) > ($3, $4::uuid))
             ORDER BY finished_at, id LIMIT $5"
        ))
        .bind(tenant)
        .bind(finished_before)
        .bind(after.map(|a| a.0))
        .bind(after.map(|a| a.1.to_string()))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter()
            .map(|r| {
                Ok(FinishedJob {
                    id: r
                        .try_get::<String, _>(0)
                        .map_err(backend)?
                        .parse()
                        .map_err(|e| StoreError::Corrupt(format!("{e}")))?,
                    finished_at: r.try_get(1).map_err(backend)?,
                    bytes: r.try_get::<i64, _>(2).map_err(backend)?.max(0) as u64,
                })
            })
            .collect()
    }

    pub(crate) async fn delete_finished_rows(&self, ids: &[JobId]) -> Result<Vec<JobId>> {
        let ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        // The status is checked again in the statement: a job re-queued since it was listed is
        // not finished any more.
        let deleted: Vec<String> = sqlx::query_scalar(&format!(
            "DELETE FROM jobs WHERE id = ANY($1::uuid[]) AND {FINISHED} RETURNING id::text"
        ))
        .bind(&ids)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        parse_ids(deleted)
    }

    pub(crate) async fn existing_job_rows(&self, ids: &[JobId]) -> Result<Vec<JobId>> {
        let ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        let found: Vec<String> =
            sqlx::query_scalar("SELECT id::text FROM jobs WHERE id = ANY($1::uuid[])")
                .bind(&ids)
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
        parse_ids(found)
    }

    /// Takes (or renews) the one-row lease of `table` — `gc_lease` (the collector's) or
    /// `outbox_lease` (the events publisher's) — until `now + lease_ms`.
    pub(crate) async fn take_lease(
        &self,
        table: &'static str,
        owner: &str,
        lease_ms: i64,
        now: Millis,
    ) -> Result<bool> {
        let done = sqlx::query(&format!(
            "UPDATE {table} SET owner = $1, expires_at = $3
             WHERE id = 1 AND (owner IS NULL OR owner = $1 OR expires_at <= $2)"
        ))
        .bind(owner)
        .bind(now)
        .bind(now.saturating_add(lease_ms))
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }
}
