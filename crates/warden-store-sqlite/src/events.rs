//! The events outbox (migration 0010): the triggers write it; these read, mark and prune it.

use rusqlite::{Connection, OptionalExtension, Row, params};
use warden_core::{JobId, JobStatus};
use warden_store::{
    Delivery, DeliveryOutcome, LogStream, Millis, NewDelivery, OutboxEvent, OutboxKind, Result,
};

use super::rows::corrupt;
use super::thread::Tx;
use super::{backend, exec, query_row};

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
                attempt: row.get::<_, Option<i64>>(9)?.unwrap_or(0) as u32,
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
    exec(
        conn,
        "UPDATE outbox_switch SET on_ = ?1 WHERE id = 1",
        [on as i64],
    )
    .map_err(backend)?;
    Ok(())
}

pub(crate) fn pending(conn: &mut Connection, limit: u32) -> Result<Vec<OutboxEvent>> {
    let tx = Tx::begin(conn)?;
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
            exec(
                &tx,
                "UPDATE event_outbox SET published_at = 0 WHERE seq = ?1",
                [*seq as i64],
            )
            .map_err(backend)?;
        }
    }
    tx.commit()?;
    Ok(rows.into_iter().filter_map(|(_, e)| e).collect())
}

pub(crate) fn published(conn: &mut Connection, seqs: &[u64], now: Millis) -> Result<()> {
    let tx = Tx::begin(conn)?;
    {
        let mut stmt = tx
            .prepare_cached("UPDATE event_outbox SET published_at = ?2 WHERE seq = ?1")
            .map_err(backend)?;
        for seq in seqs {
            stmt.execute(params![*seq as i64, now]).map_err(backend)?;
        }
    }
    tx.commit()
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

pub(crate) fn prune(conn: &Connection, before: Millis, webhooks: bool) -> Result<u64> {
    let n = exec(
        conn,
        "DELETE FROM event_outbox WHERE published_at IS NOT NULL AND at < ?1
             AND (?2 = 0 OR seq <= (SELECT seq FROM webhook_cursor WHERE id = 1))",
        params![before, webhooks],
    )
    .map_err(backend)?;
    // Deliveries done with (delivered or given up) go with the events they carried.
    exec(
        conn,
        "DELETE FROM webhook_deliveries WHERE created_at < ?1
         AND (delivered_at IS NOT NULL OR gave_up = 1)",
        [before],
    )
    .map_err(backend)?;
    Ok(n as u64)
}

pub(crate) fn webhook_backlog(
    conn: &Connection,
    limit: u32,
) -> Result<warden_store::WebhookBacklog> {
    let cursor: i64 = query_row(
        conn,
        "SELECT seq FROM webhook_cursor WHERE id = 1",
        [],
        |r| r.get(0),
    )
    .map_err(backend)?;
    let mut stmt = conn
        .prepare_cached(&format!(
            "{SELECT} WHERE o.kind = 'job' AND o.seq > ?1 ORDER BY o.seq LIMIT ?2"
        ))
        .map_err(backend)?;
    let events: Vec<(u64, Option<OutboxEvent>)> = stmt
        .query_map(params![cursor, limit], row_to_event)
        .map_err(backend)?
        .collect::<rusqlite::Result<_>>()
        .map_err(backend)?;
    let mut lookup = conn
        .prepare_cached("SELECT url FROM job_callbacks WHERE job_id = ?1")
        .map_err(backend)?;
    let mut out = Vec::with_capacity(events.len());
    for (_, e) in events {
        let Some(e) = e else { continue };
        let url: Option<String> = lookup
            .query_row([e.job_id.to_string()], |r| r.get(0))
            .optional()
            .map_err(backend)?;
        out.push((e, url));
    }
    Ok((cursor as u64, out))
}

pub(crate) fn add_deliveries(
    conn: &mut Connection,
    deliveries: &[NewDelivery],
    cursor: u64,
    now: Millis,
) -> Result<()> {
    let tx = Tx::begin(conn)?;
    {
        let mut stmt = tx
            .prepare_cached(
                "INSERT INTO webhook_deliveries (seq, job_id, url, body, next_at, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            )
            .map_err(backend)?;
        for d in deliveries {
            stmt.execute(params![
                d.seq as i64,
                d.job_id.to_string(),
                d.url,
                d.body,
                now
            ])
            .map_err(backend)?;
        }
    }
    exec(
        &tx,
        "UPDATE webhook_cursor SET seq = MAX(seq, ?1) WHERE id = 1",
        [cursor as i64],
    )
    .map_err(backend)?;
    tx.commit()
}

const DELIVERY: &str = "SELECT id, seq, job_id, url, body, attempts, next_at, delivered_at,     gave_up, last_status, last_error, created_at FROM webhook_deliveries d";

fn row_to_delivery(row: &Row<'_>) -> rusqlite::Result<Delivery> {
    let job: String = row.get(2)?;
    Ok(Delivery {
        id: row.get::<_, i64>(0)? as u64,
        seq: row.get::<_, i64>(1)? as u64,
        job_id: job.parse().map_err(|e| corrupt("delivery job id", e))?,
        url: row.get(3)?,
        body: row.get(4)?,
        attempts: row.get::<_, i64>(5)? as u32,
        next_at: row.get(6)?,
        delivered_at: row.get(7)?,
        gave_up: row.get(8)?,
        last_status: row.get::<_, Option<i64>>(9)?.map(|s| s as u16),
        last_error: row.get(10)?,
        created_at: row.get(11)?,
    })
}

pub(crate) fn due_deliveries(conn: &Connection, now: Millis, limit: u32) -> Result<Vec<Delivery>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "{DELIVERY} WHERE d.delivered_at IS NULL AND d.gave_up = 0 AND d.next_at <= ?1
             AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e WHERE e.job_id = d.job_id
                 AND e.url = d.url AND e.id < d.id AND e.delivered_at IS NULL AND e.gave_up = 0)
             ORDER BY d.id LIMIT ?2"
        ))
        .map_err(backend)?;
    stmt.query_map(params![now, limit], row_to_delivery)
        .map_err(backend)?
        .collect::<rusqlite::Result<_>>()
        .map_err(backend)
}

pub(crate) fn delivery_attempted(
    conn: &Connection,
    id: u64,
    outcome: &DeliveryOutcome,
    now: Millis,
) -> Result<()> {
    let (delivered, gave_up, next_at, status, error) = match outcome {
        DeliveryOutcome::Delivered { status } => (Some(now), false, None, Some(*status), None),
        DeliveryOutcome::Failed {
            status,
            error,
            next_at,
        } => (None, false, Some(*next_at), *status, Some(error.as_str())),
        DeliveryOutcome::GaveUp { status, error } => {
            (None, true, None, *status, Some(error.as_str()))
        }
    };
    exec(
        conn,
        "UPDATE webhook_deliveries SET attempts = attempts + 1, delivered_at = ?2, gave_up = ?3,
             next_at = COALESCE(?4, next_at), last_status = ?5, last_error = ?6
         WHERE id = ?1",
        params![
            id as i64,
            delivered,
            gave_up,
            next_at,
            status.map(i64::from),
            error
        ],
    )
    .map_err(backend)?;
    Ok(())
}

pub(crate) fn deliveries(conn: &Connection, job: JobId) -> Result<Vec<Delivery>> {
    let mut stmt = conn
        .prepare_cached(&format!("{DELIVERY} WHERE d.job_id = ?1 ORDER BY d.id"))
        .map_err(backend)?;
    stmt.query_map([job.to_string()], row_to_delivery)
        .map_err(backend)?
        .collect::<rusqlite::Result<_>>()
        .map_err(backend)
}
