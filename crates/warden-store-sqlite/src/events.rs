//! The events outbox (migration 0010): the triggers write it; these read, mark and prune it.

use rusqlite::{Connection, Row, params};
use warden_core::JobStatus;
use warden_store::{LogStream, Millis, OutboxEvent, OutboxKind, Result};

use super::backend;
use super::rows::corrupt;

/// The outbox row with, for a log event, its chunk's bytes (`NULL` when the chunk is gone).
const SELECT: &str = "SELECT o.seq, o.job_id, o.tenant, o.kind, o.at, o.job_type, o.status, \
    o.reason, o.exit_code, o.attempt, o.stream, o.offset, c.data \
    FROM event_outbox o LEFT JOIN log_chunks c \
    ON o.kind = 'log' AND c.job_id = o.job_id AND c.stream = o.stream AND c.offset = o.offset";

/// A row as an event; `None` for a log event whose chunk is gone.
fn row_to_event(row: &Row<'_>) -> rusqlite::Result<(u64, Option<OutboxEvent>)> {
    let seq: i64 = row.get(0)?;
    let id: String = row.get(1)?;
    let kind: String = row.get(3)?;
    let kind = match kind.as_str() {
        "job" => {
            let status: String = row.get(6)?;
            OutboxKind::Job {
                job_type: row.get(5)?,
                status: JobStatus::parse(&status)
                    .ok_or_else(|| corrupt("outbox status", &status))?,
                reason: row.get(7)?,
                exit_code: row.get(8)?,
                attempt: row.get::<_, i64>(9)? as u32,
            }
        }
        "log" => {
            let Some(data) = row.get::<_, Option<Vec<u8>>>(12)? else {
                return Ok((seq as u64, None));
            };
            OutboxKind::Log {
                stream: match row.get::<_, i64>(10)? {
                    1 => LogStream::Stdout,
                    _ => LogStream::Stderr,
                },
                offset: row.get::<_, i64>(11)? as u64,
                data,
            }
        }
        other => return Err(corrupt("outbox kind", other)),
    };
    Ok((
        seq as u64,
        Some(OutboxEvent {
            seq: seq as u64,
            job_id: id.parse().map_err(|e| corrupt("outbox job id", e))?,
            tenant: row.get(2)?,
            at: row.get(4)?,
            kind,
        }),
    ))
}

pub(crate) fn set_outbox(conn: &Connection, on: bool) -> Result<()> {
    conn.execute(
        "UPDATE outbox_switch SET on_ = ?1 WHERE id = 1",
        [on as i64],
    )
    .map_err(backend)?;
    Ok(())
}

pub(crate) fn pending(conn: &mut Connection, limit: u32) -> Result<Vec<OutboxEvent>> {
    let tx = conn.transaction().map_err(backend)?;
    let rows: Vec<(u64, Option<OutboxEvent>)> = {
        let mut stmt = tx
            .prepare_cached(&format!(
                "{SELECT} WHERE o.published_at IS NULL ORDER BY o.seq LIMIT ?1"
            ))
            .map_err(backend)?;
        stmt.query_map([limit], row_to_event)
            .map_err(backend)?
            .collect::<rusqlite::Result<_>>()
            .map_err(backend)?
    };
    // Log events whose chunk went with its job: nothing to publish, ever.
    for (seq, event) in &rows {
        if event.is_none() {
            tx.execute(
                "UPDATE event_outbox SET published_at = 0 WHERE seq = ?1",
                [*seq as i64],
            )
            .map_err(backend)?;
        }
    }
    tx.commit().map_err(backend)?;
    Ok(rows.into_iter().filter_map(|(_, e)| e).collect())
}

pub(crate) fn published(conn: &mut Connection, seqs: &[u64], now: Millis) -> Result<()> {
    let tx = conn.transaction().map_err(backend)?;
    {
        let mut stmt = tx
            .prepare_cached("UPDATE event_outbox SET published_at = ?2 WHERE seq = ?1")
            .map_err(backend)?;
        for seq in seqs {
            stmt.execute(params![*seq as i64, now]).map_err(backend)?;
        }
    }
    tx.commit().map_err(backend)
}

pub(crate) fn since(
    conn: &Connection,
    since: Millis,
    after: u64,
    limit: u32,
) -> Result<Vec<OutboxEvent>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "{SELECT} WHERE o.at >= ?1 AND o.seq > ?2 ORDER BY o.seq LIMIT ?3"
        ))
        .map_err(backend)?;
    let rows: Vec<(u64, Option<OutboxEvent>)> = stmt
        .query_map(params![since, after as i64, limit], row_to_event)
        .map_err(backend)?
        .collect::<rusqlite::Result<_>>()
        .map_err(backend)?;
    Ok(rows.into_iter().filter_map(|(_, e)| e).collect())
}

pub(crate) fn prune(conn: &Connection, before: Millis) -> Result<u64> {
    let n = conn
        .execute(
            "DELETE FROM event_outbox WHERE published_at IS NOT NULL AND at < ?1",
            [before],
        )
        .map_err(backend)?;
    Ok(n as u64)
}

pub(crate) fn lease(conn: &Connection, owner: &str, lease_ms: i64, now: Millis) -> Result<bool> {
    let n = conn
        .execute(
            "UPDATE outbox_lease SET owner = ?1, expires_at = ?3
             WHERE id = 1 AND (owner IS NULL OR owner = ?1 OR expires_at <= ?2)",
            params![owner, now, now.saturating_add(lease_ms)],
        )
        .map_err(backend)?;
    Ok(n == 1)
}
