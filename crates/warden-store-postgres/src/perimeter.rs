//! Fair claims, tokens and the audit trail on PostgreSQL.

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use warden_core::JobId;
use warden_store::fair::Candidate;
use warden_store::{
    AuditEntry, AuditFilter, AuditRecord, FairShare, Millis, Result, StoreError, TokenRecord,
};

use super::PgStore;
use super::rows::{backend, corrupt, from_json, to_json};

fn parse_id(s: String) -> Result<JobId> {
    s.parse().map_err(|e| corrupt("job id", e))
}

/// `t`: the tenants with queued jobs, by a skip scan of `jobs_queued_tenant` (one index seek
/// per tenant). Takes no lock.
macro_rules! queued_tenants {
    () => {
        "WITH RECURSIVE t AS (
        (SELECT tenant FROM jobs WHERE status = 'queued' ORDER BY tenant LIMIT 1)
        UNION ALL
        SELECT (SELECT j.tenant FROM jobs j WHERE j.status = 'queued' AND j.tenant > t.tenant
                ORDER BY j.tenant LIMIT 1)
        FROM t WHERE t.tenant IS NOT NULL)"
    };
}

/// Tenants with queued jobs and the oldest eligible job of each.
const CANDIDATES: &str = concat!(
    queued_tenants!(),
    "
    SELECT t.tenant,
           (SELECT id::text FROM jobs j WHERE j.status = 'queued' AND j.tenant = t.tenant
                AND ($1::text[] IS NULL OR j.job_type = ANY($1))
            ORDER BY id LIMIT 1) AS oldest
    FROM t WHERE t.tenant IS NOT NULL"
);

/// Running jobs of the tenants that have a `max_running` (along the partial index of running
/// rows: there are never more of them than slots).
const RUNNING: &str = "SELECT tenant, COUNT(*) FROM jobs
    WHERE status = 'running' AND tenant = ANY($1) GROUP BY tenant";

/// How long the active set is trusted without a look at the database: tenants that queued jobs
/// through another replica while its notifications were lost come back within this.
const RESCAN: std::time::Duration = std::time::Duration::from_secs(1);

/// This replica's schedule: the passes and virtual time of `warden_store::fair`, and the
/// *active set* — the tenants believed to have queued jobs, each with its place in the turn
/// order among equal passes. Each replica keeps its own, so that claims never wait on each
/// other: a replica's claims interleave tenants exactly, several replicas' approximately (each
/// serves a newcomer within its next claim or two).
///
/// The active set is what keeps a claim's cost independent of the number of tenants: a claim
/// picks its tenant here and asks the database for that tenant's oldest job only. It learns of
/// queued jobs from this replica's submissions, from every replica's `warden_queued`
/// notifications (whose payload is the tenant), and from a full look (`ACTIVE`) when it is
/// empty, stale (`RESCAN`) or when a notification may have been missed.
#[derive(Debug, Default)]
pub(crate) struct Schedule {
    v: i64,
    passes: std::collections::HashMap<String, i64>,
    active: std::collections::HashMap<String, u64>,
    /// The next place in the turn order.
    seq: u64,
    scanned: Option<std::time::Instant>,
    stale: bool,
}

/// One claim's turn: the tenant, charged ahead of its claim so that concurrent claimers of this
/// replica take turns too; [`Schedule::refund`] gives it back when the tenant had no job.
#[derive(Debug)]
pub(crate) struct Turn {
    pub(crate) tenant: String,
    before: i64,
    after: i64,
}

impl Schedule {
    /// A tenant has (or may have) queued a job.
    pub(crate) fn note(&mut self, tenant: &str) {
        if !self.active.contains_key(tenant) {
            self.seq += 1;
            self.active.insert(tenant.to_string(), self.seq);
        }
    }

    /// Jobs may have been queued that the active set does not know of.
    pub(crate) fn mark_stale(&mut self) {
        self.stale = true;
    }

    pub(crate) fn needs_scan(&self) -> bool {
        self.stale || self.active.is_empty() || self.scanned.is_none_or(|at| at.elapsed() >= RESCAN)
    }

    /// The database's answer: exactly these tenants have queued jobs, oldest first. Tenants
    /// already known keep their place; newcomers queue up behind them in the order of their
    /// oldest job.
    pub(crate) fn rescanned(&mut self, tenants: Vec<String>) {
        let keep: std::collections::HashSet<&String> = tenants.iter().collect();
        self.active.retain(|t, _| keep.contains(t));
        for t in &tenants {
            self.note(t);
        }
        self.scanned = Some(std::time::Instant::now());
        self.stale = false;
    }

    /// The active tenant whose turn it is (lowest effective pass, then longest waiting),
    /// skipping `skip`; nothing is charged.
    pub(crate) fn whose_turn(&self, skip: &[String]) -> Option<&str> {
        let v = self.v;
        self.active
            .iter()
            .filter(|(t, _)| !skip.contains(t))
            .min_by_key(|(t, seq)| {
                let pass = self.passes.get(t.as_str()).copied().unwrap_or(0);
                (pass.max(v), **seq)
            })
            .map(|(t, _)| t.as_str())
    }

    /// [`whose_turn`](Self::whose_turn), charged for one claim.
    pub(crate) fn take_turn(&mut self, fair: &FairShare, skip: &[String]) -> Option<Turn> {
        let tenant = self.whose_turn(skip)?.to_string();
        let before = self.passes.get(&tenant).copied().unwrap_or(0);
        let mut c = Candidate {
            tenant,
            oldest: JobId::new(),
            pass: before,
            running: 0,
        };
        fair.charge(&mut self.v, &mut c);
        self.passes.insert(c.tenant.clone(), c.pass);
        self.seq += 1;
        self.active.insert(c.tenant.clone(), self.seq);
        Some(Turn {
            tenant: c.tenant,
            before,
            after: c.pass,
        })
    }

    /// `turn`'s tenant had no job for it: its pass goes back (unless it was charged again
    /// since), and with `gone` it leaves the active set until it queues again.
    pub(crate) fn refund(&mut self, turn: &Turn, gone: bool) {
        if self.passes.get(&turn.tenant) == Some(&turn.after) {
            self.passes.insert(turn.tenant.clone(), turn.before);
        }
        if gone {
            self.active.remove(&turn.tenant);
        }
    }
}

/// Every tenant with queued jobs, in the order of its oldest (two index seeks per tenant).
const ACTIVE: &str = concat!(
    queued_tenants!(),
    "
    SELECT t.tenant FROM t WHERE t.tenant IS NOT NULL
    ORDER BY (SELECT id FROM jobs j WHERE j.status = 'queued' AND j.tenant = t.tenant
              ORDER BY id LIMIT 1)"
);

/// Refreshes `schedule`'s active set from the database.
pub(crate) async fn rescan(
    pool: &sqlx::PgPool,
    schedule: &std::sync::Mutex<Schedule>,
) -> Result<()> {
    let tenants: Vec<String> = sqlx::query_scalar(ACTIVE)
        .fetch_all(pool)
        .await
        .map_err(backend)?;
    schedule
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .rescanned(tenants);
    Ok(())
}

/// How many jobs to take from each tenant for `max` free slots, in fair order (planned on a copy
/// of the schedule; [`charge`] accounts what was really claimed).
pub(crate) async fn plan(
    pool: &sqlx::PgPool,
    schedule: &std::sync::Mutex<Schedule>,
    fair: &FairShare,
    job_types: Option<&[String]>,
    max: usize,
    excluded: &[String],
) -> Result<Vec<(String, usize)>> {
    let rows = sqlx::query(CANDIDATES)
        .bind(job_types)
        .fetch_all(pool)
        .await
        .map_err(backend)?;
    let capped: Vec<String> = fair
        .shares
        .iter()
        .filter(|(_, s)| s.max_running.is_some())
        .map(|(t, _)| t.clone())
        .collect();
    let mut running = std::collections::HashMap::new();
    if !capped.is_empty() {
        for row in sqlx::query(RUNNING)
            .bind(&capped)
            .fetch_all(pool)
            .await
            .map_err(backend)?
        {
            let get = |e: sqlx::Error| corrupt("running", e);
            running.insert(
                row.try_get::<String, _>(0).map_err(get)?,
                row.try_get::<i64, _>(1).map_err(get)? as u64,
            );
        }
    }
    let sched = schedule.lock().unwrap_or_else(|p| p.into_inner());
    let mut v = sched.v;
    let mut candidates = Vec::with_capacity(rows.len());
    for row in rows {
        let get = |e: sqlx::Error| corrupt("candidate", e);
        let Some(oldest) = row.try_get::<Option<String>, _>(1).map_err(get)? else {
            continue;
        };
        let tenant: String = row.try_get(0).map_err(get)?;
        if excluded.contains(&tenant) {
            continue;
        }
        candidates.push(Candidate {
            pass: sched.passes.get(&tenant).copied().unwrap_or(0),
            running: running.get(&tenant).copied().unwrap_or(0),
            tenant,
            oldest: parse_id(oldest)?,
        });
    }
    drop(sched);
    let mut plan: Vec<(String, usize)> = Vec::new();
    for _ in 0..max {
        let Some(i) = fair.pick(v, &candidates) else {
            break;
        };
        let c = &mut candidates[i];
        fair.charge(&mut v, c);
        match plan.iter_mut().find(|(t, _)| *t == c.tenant) {
            Some((_, n)) => *n += 1,
            None => plan.push((c.tenant.clone(), 1)),
        }
    }
    Ok(plan)
}

/// Accounts `n` claims of `tenant`'s jobs in this replica's schedule.
pub(crate) fn charge(
    schedule: &std::sync::Mutex<Schedule>,
    fair: &FairShare,
    tenant: &str,
    n: usize,
) {
    let mut sched = schedule.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Candidate {
        tenant: tenant.to_string(),
        oldest: JobId::new(),
        pass: sched.passes.get(tenant).copied().unwrap_or(0),
        running: 0,
    };
    let mut v = sched.v;
    for _ in 0..n {
        fair.charge(&mut v, &mut c);
    }
    sched.v = v;
    sched.passes.insert(c.tenant, c.pass);
}

/// Up to `n` of `tenant`'s oldest queued jobs marked running, skipping rows another claim holds.
/// A tenant with `max_running` is counted under its advisory lock, so that replicas together
/// never exceed it.
pub(crate) async fn claim_of(
    tx: &mut PgConnection,
    tenant: &str,
    max_running: Option<u64>,
    mut n: usize,
    job_types: Option<&[String]>,
    claim: (&str, Millis, Millis),
) -> Result<Vec<PgRow>> {
    if let Some(limit) = max_running {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('warden-running:' || $1))")
            .bind(tenant)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let running: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs WHERE status = 'running' AND tenant = $1",
        )
        .bind(tenant)
        .fetch_one(&mut *tx)
        .await
        .map_err(backend)?;
        n = n.min(limit.saturating_sub(running as u64) as usize);
        if n == 0 {
            return Ok(Vec::new());
        }
    }
    let (worker, now, expires) = claim;
    sqlx::query(super::rows::sql_claim_tenant())
        .bind(now)
        .bind(worker)
        .bind(expires)
        .bind(job_types)
        .bind(n as i64)
        .bind(tenant)
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)
}

const TOKEN_COLUMNS: &str = "id, tenant, name, scopes, hash, created_at, expires_at, revoked_at";

fn row_to_token(row: &PgRow) -> Result<TokenRecord> {
    let get = |e: sqlx::Error| corrupt("token", e);
    Ok(TokenRecord {
        id: row.try_get(0).map_err(get)?,
        tenant: row.try_get(1).map_err(get)?,
        name: row.try_get(2).map_err(get)?,
        scopes: from_json("scopes", row.try_get::<&str, _>(3).map_err(get)?)?,
        hash: row.try_get(4).map_err(get)?,
        created_at: row.try_get(5).map_err(get)?,
        expires_at: row.try_get(6).map_err(get)?,
        revoked_at: row.try_get(7).map_err(get)?,
    })
}

impl PgStore {
    pub(crate) async fn create_token_row(&self, t: &TokenRecord) -> Result<()> {
        let done = sqlx::query(
            "INSERT INTO tokens (id, tenant, name, scopes, hash, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&t.id)
        .bind(&t.tenant)
        .bind(&t.name)
        .bind(to_json(&t.scopes)?)
        .bind(&t.hash)
        .bind(t.created_at)
        .bind(t.expires_at)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::TokenExists(t.id.clone()));
        }
        Ok(())
    }

    pub(crate) async fn token_row(&self, id: &str) -> Result<Option<TokenRecord>> {
        sqlx::query(&format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?
            .as_ref()
            .map(row_to_token)
            .transpose()
    }

    pub(crate) async fn token_rows(&self, tenant: Option<&str>) -> Result<Vec<TokenRecord>> {
        sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens WHERE $1::text IS NULL OR tenant = $1
             ORDER BY created_at, id"
        ))
        .bind(tenant)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?
        .iter()
        .map(row_to_token)
        .collect()
    }

    pub(crate) async fn revoke_token_row(
        &self,
        id: &str,
        now: Millis,
    ) -> Result<Option<TokenRecord>> {
        sqlx::query("UPDATE tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1")
            .bind(id)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        self.token_row(id).await
    }

    pub(crate) async fn append_audit_rows(&self, entries: &[AuditEntry]) -> Result<()> {
        insert_audit(&self.pool, entries).await
    }

    pub(crate) async fn audit_rows(&self, f: &AuditFilter) -> Result<Vec<AuditRecord>> {
        let rows = sqlx::query(
            "SELECT seq, at, action, tenant, token_id, client, target, outcome, detail FROM audit
             WHERE ($1::text IS NULL OR tenant = $1) AND ($2::text IS NULL OR action = $2)
               AND ($3::bigint IS NULL OR seq < $3)
             ORDER BY seq DESC LIMIT $4",
        )
        .bind(&f.tenant)
        .bind(&f.action)
        .bind(f.before)
        .bind(f.limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter()
            .map(|r| {
                let get = |e: sqlx::Error| corrupt("audit", e);
                Ok(AuditRecord {
                    seq: r.try_get(0).map_err(get)?,
                    entry: AuditEntry {
                        at: r.try_get(1).map_err(get)?,
                        action: r.try_get(2).map_err(get)?,
                        tenant: r.try_get(3).map_err(get)?,
                        token_id: r.try_get(4).map_err(get)?,
                        client: r.try_get(5).map_err(get)?,
                        target: r.try_get(6).map_err(get)?,
                        outcome: r.try_get(7).map_err(get)?,
                        detail: r.try_get(8).map_err(get)?,
                    },
                })
            })
            .collect()
    }

    pub(crate) async fn purge_audit_rows(&self, before: Millis) -> Result<u64> {
        let done = sqlx::query("DELETE FROM audit WHERE at < $1")
            .bind(before)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected())
    }
}

/// Writes `entries` through `db` (the pool, or a transaction they belong in).
pub(crate) async fn insert_audit<'c>(
    db: impl sqlx::PgExecutor<'c>,
    entries: &[AuditEntry],
) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut qb = sqlx::QueryBuilder::new(
        "INSERT INTO audit (at, action, tenant, token_id, client, target, outcome, detail) ",
    );
    qb.push_values(entries, |mut b, e| {
        b.push_bind(e.at)
            .push_bind(&e.action)
            .push_bind(&e.tenant)
            .push_bind(&e.token_id)
            .push_bind(&e.client)
            .push_bind(&e.target)
            .push_bind(&e.outcome)
            .push_bind(&e.detail);
    });
    qb.build().execute(db).await.map_err(backend)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looking_at_whose_turn_it_is_charges_nothing() {
        let fair = FairShare::default();
        let mut s = Schedule::default();
        s.note("a");
        s.note("b");
        let first = s.whose_turn(&[]).unwrap().to_string();
        assert_eq!(s.whose_turn(&[]), Some(first.as_str()), "asking twice");
        let order: Vec<String> = (0..4)
            .map(|_| {
                let peeked = s.whose_turn(&[]).unwrap().to_string();
                let t = s.take_turn(&fair, &[]).unwrap();
                assert_eq!(t.tenant, peeked, "the turn taken is the one seen");
                t.tenant
            })
            .collect();
        assert_eq!(
            order,
            [first.clone(), order[1].clone(), first, order[1].clone()]
        );
        assert_ne!(order[0], order[1], "equal shares alternate");
        assert_eq!(s.whose_turn(&["a".into(), "b".into()]), None);
    }
}
