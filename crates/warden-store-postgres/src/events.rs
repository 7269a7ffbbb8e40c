//! The events outbox (migration 0009): the triggers write it; these read, mark and prune it.

use sqlx::Row;
use sqlx::postgres::PgRow;
use warden_core::{JobId, JobStatus};
use warden_store::{
    Delivery, DeliveryOutcome, LogStream, Millis, NewDelivery, OutboxEvent, OutboxKind, Result,
};

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
                attempt: row.try_get::<Option<i32>, _>(9).map_err(get)?.unwrap_or(0) as u32,
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

    pub(crate) async fn prune_outbox_rows(&self, before: Millis, webhooks: bool) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM event_outbox WHERE published_at IS NOT NULL AND at < $1
             AND (NOT $2 OR seq <= (SELECT seq FROM webhook_cursor WHERE id = 1))",
        )
        .bind(before)
        .bind(webhooks)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        // Deliveries done with (delivered or given up) go with the events they carried.
        sqlx::query(
            "DELETE FROM webhook_deliveries WHERE created_at < $1
             AND (delivered_at IS NOT NULL OR gave_up)",
        )
        .bind(before)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected())
    }

    pub(crate) async fn webhook_backlog_rows(
        &self,
        limit: u32,
    ) -> Result<warden_store::WebhookBacklog> {
        let cursor: i64 = sqlx::query_scalar("SELECT seq FROM webhook_cursor WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        let rows = sqlx::query(
            "SELECT o.seq, o.job_id::text, o.tenant, o.kind, o.at, o.job_type, o.status, \
                 o.reason, o.exit_code, o.attempt, o.stream, o.\"offset\", NULL::bytea, cb.url
             FROM event_outbox o LEFT JOIN job_callbacks cb ON cb.job_id = o.job_id
             WHERE o.kind = 'job' AND o.seq > $1 ORDER BY o.seq LIMIT $2",
        )
        .bind(cursor)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            if let (_, Some(e)) = row_to_event(row)? {
                let url: Option<String> = row.try_get(13).map_err(|e| corrupt("callback", e))?;
                out.push((e, url));
            }
        }
        Ok((cursor as u64, out))
    }

    pub(crate) async fn add_delivery_rows(
        &self,
        deliveries: &[NewDelivery],
        cursor: u64,
        now: Millis,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        for d in deliveries {
            sqlx::query(
                "INSERT INTO webhook_deliveries (seq, job_id, url, body, next_at, created_at)
                 VALUES ($1, $2::uuid, $3, $4, $5, $5)",
            )
            .bind(d.seq as i64)
            .bind(d.job_id.to_string())
            .bind(&d.url)
            .bind(&d.body)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        sqlx::query("UPDATE webhook_cursor SET seq = GREATEST(seq, $1) WHERE id = 1")
            .bind(cursor as i64)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    pub(crate) async fn due_delivery_rows(&self, now: Millis, limit: u32) -> Result<Vec<Delivery>> {
        let rows = sqlx::query(&format!(
            "{DELIVERY} WHERE d.delivered_at IS NULL AND NOT d.gave_up AND d.next_at <= $1
             AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e WHERE e.job_id = d.job_id
                 AND e.url = d.url AND e.id < d.id AND e.delivered_at IS NULL AND NOT e.gave_up)
             ORDER BY d.id LIMIT $2"
        ))
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(row_to_delivery).collect()
    }

    pub(crate) async fn record_delivery_attempt(
        &self,
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
            } => (None, false, Some(*next_at), *status, Some(error.clone())),
            DeliveryOutcome::GaveUp { status, error } => {
                (None, true, None, *status, Some(error.clone()))
            }
        };
        sqlx::query(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, delivered_at = $2,
                 gave_up = $3, next_at = COALESCE($4, next_at), last_status = $5, last_error = $6
             WHERE id = $1",
        )
        .bind(id as i64)
        .bind(delivered)
        .bind(gave_up)
        .bind(next_at)
        .bind(status.map(i32::from))
        .bind(error)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    pub(crate) async fn delivery_rows(&self, job: JobId) -> Result<Vec<Delivery>> {
        let rows = sqlx::query(&format!(
            "{DELIVERY} WHERE d.job_id = $1::uuid ORDER BY d.id"
        ))
        .bind(job.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(row_to_delivery).collect()
    }
}

const DELIVERY: &str = "SELECT d.id, d.seq, d.job_id::text, d.url, d.body, d.attempts, d.next_at, \
    d.delivered_at, d.gave_up, d.last_status, d.last_error, d.created_at FROM webhook_deliveries d";

fn row_to_delivery(row: &PgRow) -> Result<Delivery> {
    let get = |e: sqlx::Error| corrupt("delivery row", e);
    let job: String = row.try_get(2).map_err(get)?;
    Ok(Delivery {
        id: row.try_get::<i64, _>(0).map_err(get)? as u64,
        seq: row.try_get::<i64, _>(1).map_err(get)? as u64,
        job_id: job.parse().map_err(|e| corrupt("delivery job id", e))?,
        url: row.try_get(3).map_err(get)?,
        body: row.try_get(4).map_err(get)?,
        attempts: row.try_get::<i32, _>(5).map_err(get)? as u32,
        next_at: row.try_get(6).map_err(get)?,
        delivered_at: row.try_get(7).map_err(get)?,
        gave_up: row.try_get(8).map_err(get)?,
        last_status: row
            .try_get::<Option<i32>, _>(9)
            .map_err(get)?
            .map(|s| s as u16),
        last_error: row.try_get(10).map_err(get)?,
        created_at: row.try_get(11).map_err(get)?,
    })
}
