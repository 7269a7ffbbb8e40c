//! Claims on PostgreSQL: by tenant in fair-share order, from this replica's schedule.

use warden_store::{Claimed, Lease, Millis, Result};

use super::PgStore;
use super::rows::*;

impl PgStore {
    /// Up to `n` of `tenant`'s jobs, claimed and accounted in this replica's schedule.
    pub(crate) async fn claim_tenant(
        &self,
        fair: &warden_store::FairShare,
        tenant: &str,
        n: usize,
        worker: &str,
        job_types: Option<&[String]>,
        (now, lease_ms): (Millis, i64),
    ) -> Result<Vec<Claimed>> {
        use super::perimeter::{charge, claim_of};
        let tenant = tenant.to_string();
        {
            let share = fair.share(&tenant);
            let rows = if share.max_running.is_some() {
                let mut tx = self.pool.begin().await.map_err(backend)?;
                let claim = (worker, now, now.saturating_add(lease_ms));
                let rows =
                    claim_of(&mut tx, &tenant, share.max_running, n, job_types, claim).await?;
                tx.commit().await.map_err(backend)?;
                rows
            } else {
                let mut conn = self.pool.acquire().await.map_err(backend)?;
                let claim = (worker, now, now.saturating_add(lease_ms));
                claim_of(&mut conn, &tenant, None, n, job_types, claim).await?
            };
            charge(&self.schedule, fair, &tenant, rows.len());
            claimed_rows(&rows, worker)
        }
    }

    /// Without `max_running` anywhere: the tenant whose turn it is comes from this replica's
    /// active set, and one statement claims that tenant's oldest jobs for all its turns in a row
    /// (`rows::sql_claim_tenant`), so that a claim costs the same with one tenant or a thousand. A tenant that gives nothing
    /// is passed over for the rest of this call (and leaves the active set when no job type
    /// filter could explain it); before giving up, the database is asked once which tenants
    /// have queued jobs.
    pub(crate) async fn claim_fair(
        &self,
        fair: &warden_store::FairShare,
        worker: &str,
        job_types: Option<&[String]>,
        max: usize,
        (now, lease_ms): (Millis, i64),
    ) -> Result<Vec<Claimed>> {
        use super::perimeter::rescan;
        let mut claimed = Vec::new();
        let mut skip: Vec<String> = Vec::new();
        let mut scanned = false;
        let lock = || self.schedule.lock().unwrap_or_else(|p| p.into_inner());
        while claimed.len() < max {
            if !scanned && lock().needs_scan() {
                rescan(&self.pool, &self.schedule).await?;
                scanned = true;
            }
            let turn = lock().take_turn(fair, &skip);
            let Some(turn) = turn else {
                if scanned {
                    break;
                }
                rescan(&self.pool, &self.schedule).await?;
                scanned = true;
                continue;
            };
            // The tenant's turns in a row are claimed in one statement: with one tenant (or
            // one far behind the others), a batch is one round trip, not one per job.
            let mut turns = vec![turn];
            {
                let mut schedule = lock();
                while claimed.len() + turns.len() < max
                    && schedule.whose_turn(&skip) == Some(turns[0].tenant.as_str())
                {
                    turns.extend(schedule.take_turn(fair, &skip));
                }
            }
            let tenant = turns[0].tenant.clone();
            let rows = sqlx::query(sql_claim_tenant())
                .bind(now)
                .bind(worker)
                .bind(now.saturating_add(lease_ms))
                .bind(job_types)
                .bind(turns.len() as i64)
                .bind(&tenant)
                .fetch_all(&self.pool)
                .await;
            let rows = match rows {
                Ok(rows) => rows,
                Err(e) => {
                    let mut schedule = lock();
                    for t in turns.iter().rev() {
                        schedule.refund(t, false);
                    }
                    return Err(backend(e));
                }
            };
            if rows.len() < turns.len() {
                // Given back newest first: each refund restores the pass the turn before left.
                let mut schedule = lock();
                for t in turns[rows.len()..].iter().rev() {
                    schedule.refund(t, job_types.is_none());
                }
                skip.push(tenant);
            }
            claimed.extend(claimed_rows(&rows, worker)?);
        }
        Ok(claimed)
    }
}

/// A claim statement's returned rows as claims with their leases, oldest first (RETURNING has
/// no order).
fn claimed_rows(rows: &[sqlx::postgres::PgRow], worker: &str) -> Result<Vec<Claimed>> {
    let mut batch = rows
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
    batch.sort_by_key(|c| c.job.id);
    Ok(batch)
}
