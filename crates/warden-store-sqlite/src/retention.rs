//! What the collector asks of SQLite: finished jobs' usage, the oldest of them, their deletion
//! in one transaction, its lease, and the incremental vacuum that gives the room back.

use rusqlite::{Connection, params};
use warden_core::JobId;
use warden_store::{FinishedJob, Millis, Result, StoreError, TenantUsage};

use super::thread::Tx;
use super::{backend, exec, query_row};

/// A finished job: it has ended and nobody has put it back in the queue.
const FINISHED: &str = "finished_at IS NOT NULL AND status NOT IN ('queued', 'running')";

/// Pages the incremental vacuum frees per step: the write lock is given up between steps.
pub(crate) const VACUUM_STEP_PAGES: i64 = 2048;

/// Switches a database to incremental auto-vacuum (once: a database made before it needs one
/// full `VACUUM`, which SQLite requires to change the mode).
#[allow(clippy::disallowed_methods, reason = "once, at open")]
pub(crate) fn ensure_incremental_vacuum(conn: &Connection) -> Result<()> {
    let mode: i64 = conn
        .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        .map_err(backend)?;
    if mode == 2 {
        return Ok(());
    }
    let tables: i64 = conn
        .query_row("SELECT COUNT(*) FROM sqlite_schema", [], |r| r.get(0))
        .map_err(backend)?;
    conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL;")
        .map_err(backend)?;
    if tables > 0 {
        tracing::info!("switching the database to incremental vacuum (one full VACUUM)");
        conn.execute_batch("VACUUM;").map_err(backend)?;
    }
    Ok(())
}

pub(crate) fn finished_usage(conn: &Connection) -> Result<Vec<TenantUsage>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT tenant, COUNT(*), COALESCE(SUM(stdout_bytes + stderr_bytes + artifact_bytes), 0)
             FROM jobs WHERE {FINISHED} GROUP BY tenant ORDER BY tenant"
        ))
        .map_err(backend)?;
    let rows = stmt
        .query_map([], |r| {
            Ok(TenantUsage {
                tenant: r.get(0)?,
                jobs: r.get::<_, i64>(1)?.max(0) as u64,
                bytes: r.get::<_, i64>(2)?.max(0) as u64,
            })
        })
        .map_err(backend)?;
    rows.collect::<rusqlite::Result<_>>().map_err(backend)
}

pub(crate) fn oldest_finished(
    conn: &Connection,
    tenant: &str,
    finished_before: Option<Millis>,
    after: Option<(Millis, JobId)>,
    limit: u32,
) -> Result<Vec<FinishedJob>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT id, finished_at, stdout_bytes + stderr_bytes + artifact_bytes FROM jobs
             WHERE tenant = ?1 AND {FINISHED} AND (?2 IS NULL OR finished_at < ?2)
               AND (?3 IS NULL OR finished_at > ?3 OR (finished_at = ?3 AND id > ?4))
             ORDER BY finished_at, id LIMIT ?5"
        ))
        .map_err(backend)?;
    let rows = stmt
        .query_map(
            params![
                tenant,
                finished_before,
                after.map(|a| a.0),
                after.map(|a| a.1.to_string()),
                limit
            ],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            },
        )
        .map_err(backend)?;
    let mut out = Vec::new();
    for row in rows {
        let (id, finished_at, bytes) = row.map_err(backend)?;
        out.push(FinishedJob {
            id: id
                .parse()
                .map_err(|e| StoreError::Corrupt(format!("{e}")))?,
            finished_at,
            bytes: bytes.max(0) as u64,
        });
    }
    Ok(out)
}

pub(crate) fn delete_finished(conn: &mut Connection, ids: &[JobId]) -> Result<Vec<JobId>> {
    let tx = Tx::begin(conn)?;
    let mut deleted = Vec::with_capacity(ids.len());
    {
        // The status is checked again under the write lock: a job re-queued since it was
        // listed is not finished any more.
        let mut job = tx
            .prepare_cached(&format!("DELETE FROM jobs WHERE id = ?1 AND {FINISHED}"))
            .map_err(backend)?;
        let mut logs = tx
            .prepare_cached("DELETE FROM log_chunks WHERE job_id = ?1")
            .map_err(backend)?;
        let mut tests = tx
            .prepare_cached("DELETE FROM test_results WHERE job_id = ?1")
            .map_err(backend)?;
        let mut callbacks = tx
            .prepare_cached("DELETE FROM job_callbacks WHERE job_id = ?1")
            .map_err(backend)?;
        for id in ids {
            let key = id.to_string();
            if job.execute([&key]).map_err(backend)? == 1 {
                logs.execute([&key]).map_err(backend)?;
                tests.execute([&key]).map_err(backend)?;
                callbacks.execute([&key]).map_err(backend)?;
                deleted.push(*id);
            }
        }
    }
    tx.commit()?;
    Ok(deleted)
}

pub(crate) fn existing_jobs(conn: &Connection, ids: &[JobId]) -> Result<Vec<JobId>> {
    let mut stmt = conn
        .prepare_cached("SELECT 1 FROM jobs WHERE id = ?1")
        .map_err(backend)?;
    let mut out = Vec::new();
    for id in ids {
        if stmt.exists([id.to_string()]).map_err(backend)? {
            out.push(*id);
        }
    }
    Ok(out)
}

/// Takes (or renews) the one-row lease of `table` — `gc_lease` (the collector's) or
/// `outbox_lease` (the events publisher's) — until `now + lease_ms`; `false`: another holds it.
pub(crate) fn take_lease(
    conn: &Connection,
    table: &'static str,
    owner: &str,
    lease_ms: i64,
    now: Millis,
) -> Result<bool> {
    let n = exec(
        conn,
        &format!(
            "UPDATE {table} SET owner = ?1, expires_at = ?3
                 WHERE id = 1 AND (owner IS NULL OR owner = ?1 OR expires_at <= ?2)"
        ),
        params![owner, now, now.saturating_add(lease_ms)],
    )
    .map_err(backend)?;
    Ok(n == 1)
}

/// One step of the incremental vacuum: frees up to [`VACUUM_STEP_PAGES`] pages; returns the
/// bytes freed and whether free pages are left.
pub(crate) fn vacuum_step(conn: &Connection) -> Result<(u64, bool)> {
    let page: i64 = query_row(conn, "PRAGMA page_size", [], |r| r.get(0)).map_err(backend)?;
    let free = |c: &Connection| -> Result<i64> {
        query_row(c, "PRAGMA freelist_count", [], |r| r.get(0)).map_err(backend)
    };
    let before = free(conn)?;
    if before == 0 {
        return Ok((0, false));
    }
    // The pragma returns a row per step it took; stepping it through is what runs it.
    let mut stmt = conn
        .prepare_cached(&format!("PRAGMA incremental_vacuum({VACUUM_STEP_PAGES})"))
        .map_err(backend)?;
    let mut rows = stmt.query([]).map_err(backend)?;
    while rows.next().map_err(backend)?.is_some() {}
    let after = free(conn)?;
    Ok((((before - after).max(0) * page) as u64, after > 0))
}
