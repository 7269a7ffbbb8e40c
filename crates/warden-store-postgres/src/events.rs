//! The events outbox (migration 0009): the triggers write it; these read, mark and prune it.

use sqlx::Row;
use sqlx::postgres::PgRow;
use warden_core::JobStatus;
use warden_store::{LogStream, Millis, OutboxEvent, OutboxKind, Result};

use super::PgStore;
use super::rows::{backend, corrupt};

/// The outbox row with, for a log event, its chunk's bytes (`NULL` when the chunk is gone).
const SELECT: &str = "SELECT o.seq, o.job_id::text, o.tenant, o.kind, o.at, o.job_type, \
    o.status, o.reason, o.exit_code, o.attempt, o.stream, o.\"offset\", c.data \
    FROM event_outbox o LEFT JOIN log_chunks c \
    ON o.kind = 'log' AND c.job_id = o.job_id AND c.stream = o.stream AND c.\"offset\" = o.\"offset\"";

/// A row as an event; `None` for a log event whose chunk is gone.
fn row_to_event(row: &PgRow) -> Result<(u64, Option<OutboxEvent>)> {
    let get = |e: sqlx::Error| corrupt("outbox row", e);
    let seq = row.try_get::<i64, _>(0).map_err(get)? as u64;
    let id: String = row.try_get(1).map_err(get)?;
    let kind: String = row.try_get(3).map_err(get)?;
    let kind = match kind.as_str() {
        "job" => {
            let status: String = row.try_get(6).map_err(get)?;
            OutboxKind::Job {
                job_type: row.try_get(5).map_err(get)?,
                status: JobStatus::parse(&status)
                    .ok_or_else(|| corrupt("outbox status", &status))?,
                reason: row.try_get(7).map_err(get)?,
                exit_code: row.try_get(8).map_err(get)?,
                attempt: row.try_get::<i32, _>(9).map_err(get)? as u32,
            }
        }
        "log" => {
            let Some(data) = row.try_get::<Option<Vec<u8>>, _>(12).map_err(get)? else {
                return Ok((seq, None));
            };
            OutboxKind::Log {
                stream: match row.try_get::<i16, _>(10).map_err(get)? {
                    1 => LogStream::Stdout,
                    _ => LogStream::Stderr,
                },
                offset: row.try_get::<i64, _>(11).map_err(get)? as u64,
                data,
            }
        }
        other => return Err(corrupt("outbox kind", other)),
    };
    Ok((
        seq,
        Some(OutboxEvent {
            seq,
            job_id: id.parse().map_err(|e| corrupt("outbox job id", e))?,
            tenant: row.try_get(2).map_err(get)?,
            at: row.try_get(4).map_err(get)?,
            kind,
        }),
    ))
}

impl PgStore {
    pub(crate) async fn set_outbox_switch(&self, on: bool) -> Result<()> {
        sqlx::query("UPDATE outbox_switch SET on_ = $1 WHERE id = 1")
            .bind(on)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    pub(crate) async fn outbox_pending_rows(&self, limit: u32) -> Result<Vec<OutboxEvent>> {
        let rows = sqlx::query(&format!(
            "{SELECT} WHERE o.published_at IS NULL ORDER BY o.seq LIMIT $1"
        ))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let mut out = Vec::with_capacity(rows.len());
        let mut gone = Vec::new();
        for row in &rows {
            match row_to_event(row)? {
                (_, Some(e)) => out.push(e),
                (seq, None) => gone.push(seq as i64),
            }
        }
        if !gone.is_empty() {
            // Log events whose chunk went with its job: nothing to publish, ever.
            sqlx::query("UPDATE event_outbox SET published_at = 0 WHERE seq = ANY($1)")
                .bind(&gone)
                .execute(&self.pool)
                .await
                .map_err(backend)?;
        }
        Ok(out)
    }

    pub(crate) async fn mark_outbox_published(&self, seqs: &[u64], now: Millis) -> Result<()> {
        let seqs: Vec<i64> = seqs.iter().map(|s| *s as i64).collect();
        sqlx::query("UPDATE event_outbox SET published_at = $2 WHERE seq = ANY($1)")
            .bind(&seqs)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    pub(crate) async fn outbox_since_rows(
        &self,
        since: Millis,
        after: u64,
        limit: u32,
    ) -> Result<Vec<OutboxEvent>> {
        let rows = sqlx::query(&format!(
            "{SELECT} WHERE o.at >= $1 AND o.seq > $2 ORDER BY o.seq LIMIT $3"
        ))
        .bind(since)
        .bind(after as i64)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            if let (_, Some(e)) = row_to_event(row)? {
                out.push(e);
            }
        }
        Ok(out)
    }

    pub(crate) async fn prune_outbox_rows(&self, before: Millis) -> Result<u64> {
        let done =
            sqlx::query("DELETE FROM event_outbox WHERE published_at IS NOT NULL AND at < $1")
                .bind(before)
                .execute(&self.pool)
                .await
                .map_err(backend)?;
        Ok(done.rows_affected())
    }

    pub(crate) async fn take_outbox_lease(
        &self,
        owner: &str,
        lease_ms: i64,
        now: Millis,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE outbox_lease SET owner = $1, expires_at = $3
             WHERE id = 1 AND (owner IS NULL OR owner = $1 OR expires_at <= $2)",
        )
        .bind(owner)
        .bind(now)
        .bind(now.saturating_add(lease_ms))
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }
}
