//! Fair claims, tokens and the audit trail on SQLite.

use rusqlite::{Connection, OptionalExtension, Row, params};
use warden_core::JobId;
use warden_store::fair::Candidate;
use warden_store::{
    AuditEntry, AuditFilter, AuditRecord, FairShare, Millis, Result, StoreError, TokenRecord,
};

use super::backend;
use super::thread::Tx;
use super::{exec, query_row};

fn parse_id(s: String) -> Result<JobId> {
    s.parse()
        .map_err(|e| StoreError::Corrupt(format!("job id: {e}")))
}

pub(crate) const NEXT_OF: &str = "SELECT id FROM jobs WHERE status = 'queued' AND tenant = ?1
         AND (?2 IS NULL OR job_type IN (SELECT value FROM json_each(?2)))
         AND (?3 IS NULL OR id > ?3)
     ORDER BY id LIMIT 1";

/// The oldest queued job of `tenant` (of the claimer's job types) after `after`.
fn next_of(
    conn: &Connection,
    tenant: &str,
    job_types: Option<&str>,
    after: Option<JobId>,
) -> Result<Option<JobId>> {
    conn.prepare_cached(NEXT_OF)
        .map_err(backend)?
        .query_row(
            params![tenant, job_types, after.map(|a| a.to_string())],
            |r| r.get::<_, String>(0),
        )
        .optional()
        .map_err(backend)?
        .map(parse_id)
        .transpose()
}

/// Tenants with queued jobs, one index seek each (a skip scan of `jobs_queued_tenant`). The
/// index is named: without `ANALYZE` statistics SQLite's planner takes `jobs_status` instead and
/// reads every queued row for each `MIN` — a claim that grew with the queue's depth (20,000
/// queued jobs: 52 ms per claim).
pub(crate) const QUEUED_TENANTS: &str = "WITH RECURSIVE t(name) AS (
        SELECT MIN(tenant) FROM jobs INDEXED BY jobs_queued_tenant WHERE status = 'queued'
        UNION ALL
        SELECT (SELECT MIN(tenant) FROM jobs INDEXED BY jobs_queued_tenant
                WHERE status = 'queued' AND tenant > t.name)
        FROM t WHERE t.name IS NOT NULL)
    SELECT name FROM t WHERE name IS NOT NULL";

/// Up to `max` queued jobs in fair-share order, inside the caller's write transaction; the
/// passes and virtual time are advanced for them.
pub(crate) fn pick_fairly(
    conn: &Connection,
    fair: &FairShare,
    job_types: Option<&str>,
    max: usize,
) -> Result<Vec<JobId>> {
    let tenants: Vec<String> = conn
        .prepare_cached(QUEUED_TENANTS)
        .map_err(backend)?
        .query_map([], |r| r.get(0))
        .map_err(backend)?
        .collect::<rusqlite::Result<_>>()
        .map_err(backend)?;
    if tenants.is_empty() {
        return Ok(Vec::new());
    }
    let mut v: i64 = query_row(conn, "SELECT v FROM scheduler WHERE id = 1", [], |r| {
        r.get(0)
    })
    .map_err(backend)?;
    let mut candidates = Vec::with_capacity(tenants.len());
    for tenant in tenants {
        let Some(oldest) = next_of(conn, &tenant, job_types, None)? else {
            continue;
        };
        let pass: i64 = conn
            .prepare_cached("SELECT pass FROM tenant_pass WHERE tenant = ?1")
            .map_err(backend)?
            .query_row([&tenant], |r| r.get(0))
            .optional()
            .map_err(backend)?
            .unwrap_or(0);
        let running: i64 = conn
            .prepare_cached("SELECT COUNT(*) FROM jobs WHERE status = 'running' AND tenant = ?1")
            .map_err(backend)?
            .query_row([&tenant], |r| r.get(0))
            .map_err(backend)?;
        candidates.push(Candidate {
            tenant,
            oldest,
            pass,
            running: running as u64,
        });
    }
    let before: std::collections::HashMap<String, i64> = candidates
        .iter()
        .map(|c| (c.tenant.clone(), c.pass))
        .collect();
    let mut picked = Vec::new();
    let mut exhausted = Vec::new();
    while picked.len() < max {
        let Some(i) = fair.pick(v, &candidates) else {
            break;
        };
        let c = &mut candidates[i];
        picked.push(c.oldest);
        fair.charge(&mut v, c);
        if picked.len() == max {
            // Its next job is looked up only for another pick.
            break;
        }
        match next_of(conn, &c.tenant, job_types, Some(c.oldest))? {
            Some(next) => c.oldest = next,
            None => exhausted.push(candidates.swap_remove(i)),
        }
    }
    for c in candidates.iter().chain(&exhausted) {
        if before.get(&c.tenant) != Some(&c.pass) {
            save_pass(conn, c)?;
        }
    }
    exec(conn, "UPDATE scheduler SET v = ?1 WHERE id = 1", [v]).map_err(backend)?;
    Ok(picked)
}

fn save_pass(conn: &Connection, c: &Candidate) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO tenant_pass (tenant, pass) VALUES (?1, ?2)
         ON CONFLICT (tenant) DO UPDATE SET pass = excluded.pass",
    )
    .map_err(backend)?
    .execute(params![c.tenant, c.pass])
    .map_err(backend)?;
    Ok(())
}

const TOKEN_COLUMNS: &str = "id, tenant, name, scopes, hash, created_at, expires_at, revoked_at";

fn row_to_token(row: &Row<'_>) -> rusqlite::Result<TokenRecord> {
    let scopes: String = row.get(3)?;
    Ok(TokenRecord {
        id: row.get(0)?,
        tenant: row.get(1)?,
        name: row.get(2)?,
        scopes: serde_json::from_str(&scopes).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, e.into())
        })?,
        hash: row.get(4)?,
        created_at: row.get(5)?,
        expires_at: row.get(6)?,
        revoked_at: row.get(7)?,
    })
}

pub(crate) fn create_token(conn: &Connection, t: &TokenRecord) -> Result<()> {
    let scopes =
        serde_json::to_string(&t.scopes).map_err(|e| StoreError::Backend(e.to_string()))?;
    let n = exec(
        conn,
        "INSERT INTO tokens (id, tenant, name, scopes, hash, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (id) DO NOTHING",
        params![
            t.id,
            t.tenant,
            t.name,
            scopes,
            t.hash,
            t.created_at,
            t.expires_at
        ],
    )
    .map_err(backend)?;
    if n == 0 {
        return Err(StoreError::TokenExists(t.id.clone()));
    }
    Ok(())
}

pub(crate) fn token(conn: &Connection, id: &str) -> Result<Option<TokenRecord>> {
    conn.prepare_cached(&format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?1"))
        .map_err(backend)?
        .query_row([id], row_to_token)
        .optional()
        .map_err(backend)
}

pub(crate) fn list_tokens(conn: &Connection, tenant: Option<&str>) -> Result<Vec<TokenRecord>> {
    conn.prepare_cached(&format!(
        "SELECT {TOKEN_COLUMNS} FROM tokens WHERE ?1 IS NULL OR tenant = ?1
         ORDER BY created_at, id"
    ))
    .map_err(backend)?
    .query_map([tenant], row_to_token)
    .map_err(backend)?
    .collect::<rusqlite::Result<_>>()
    .map_err(backend)
}

pub(crate) fn revoke_token(
    conn: &Connection,
    id: &str,
    now: Millis,
) -> Result<Option<TokenRecord>> {
    exec(
        conn,
        "UPDATE tokens SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1",
        params![id, now],
    )
    .map_err(backend)?;
    token(conn, id)
}

pub(crate) fn append_audit(conn: &mut Connection, entries: &[AuditEntry]) -> Result<()> {
    let tx = Tx::begin(conn)?;
    insert_audit(&tx, entries)?;
    tx.commit()
}

/// Writes `entries` in the caller's transaction.
pub(crate) fn insert_audit(conn: &Connection, entries: &[AuditEntry]) -> Result<()> {
    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO audit (at, action, tenant, token_id, client, target, outcome, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .map_err(backend)?;
    for e in entries {
        stmt.execute(params![
            e.at, e.action, e.tenant, e.token_id, e.client, e.target, e.outcome, e.detail
        ])
        .map_err(backend)?;
    }
    Ok(())
}

pub(crate) fn list_audit(conn: &Connection, f: &AuditFilter) -> Result<Vec<AuditRecord>> {
    conn.prepare_cached(
        "SELECT seq, at, action, tenant, token_id, client, target, outcome, detail FROM audit
         WHERE (?1 IS NULL OR tenant = ?1) AND (?2 IS NULL OR action = ?2)
           AND (?3 IS NULL OR seq < ?3)
         ORDER BY seq DESC LIMIT ?4",
    )
    .map_err(backend)?
    .query_map(params![f.tenant, f.action, f.before, f.limit], |r| {
        Ok(AuditRecord {
            seq: r.get(0)?,
            entry: AuditEntry {
                at: r.get(1)?,
                action: r.get(2)?,
                tenant: r.get(3)?,
                token_id: r.get(4)?,
                client: r.get(5)?,
                target: r.get(6)?,
                outcome: r.get(7)?,
                detail: r.get(8)?,
            },
        })
    })
    .map_err(backend)?
    .collect::<rusqlite::Result<_>>()
    .map_err(backend)
}
