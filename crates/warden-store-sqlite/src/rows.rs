//! Rows to records, and the read of a job a completion starts with.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, Row};
use warden_api::ResourceUsage;
use warden_core::record::ToolBundleRef;
use warden_core::{JobId, JobStatus};
use warden_store::{JobRecord, Lease, LogStream, Result, StoreError};

use super::backend;

pub(crate) const COLUMNS: &str = "id, tenant, job_type, repo_name, remote_url, sha, params, \
    idempotency_key, status, reason, exit_code, signal, attempts, max_attempts, cancel_requested, \
    unsafe_fallback, warnings, created_at, started_at, finished_at, stdout_bytes, stderr_bytes, \
    log_truncated, resources, lease_owner, lease_token, lease_expires_at, enforcement, git_ref, \
    invariants, inline_argv, image, stages, tests, artifact_bytes, tool_bundle, tool_env_var";

pub(crate) fn stream_code(s: LogStream) -> i64 {
    match s {
        LogStream::Stdout => 1,
        LogStream::Stderr => 2,
    }
}

pub(crate) fn corrupt(what: &str, e: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(format!("{what}: {e}").into())
}

pub(crate) fn row_to_job(row: &Row<'_>) -> rusqlite::Result<JobRecord> {
    let id: String = row.get(0)?;
    let params: String = row.get(6)?;
    let status: String = row.get(8)?;
    let warnings: String = row.get(16)?;
    let resources: Option<String> = row.get(23)?;
    Ok(JobRecord {
        id: id.parse().map_err(|e| corrupt("job id", e))?,
        tenant: row.get(1)?,
        job_type: row.get(2)?,
        repo_name: row.get(3)?,
        remote_url: row.get(4)?,
        sha: row.get(5)?,
        params: serde_json::from_str::<BTreeMap<String, String>>(&params)
            .map_err(|e| corrupt("params", e))?,
        idempotency_key: row.get(7)?,
        status: JobStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?,
        reason: row.get(9)?,
        exit_code: row.get(10)?,
        signal: row.get(11)?,
        attempts: row.get(12)?,
        max_attempts: row.get(13)?,
        cancel_requested: row.get(14)?,
        unsafe_fallback: row.get(15)?,
        warnings: serde_json::from_str(&warnings).map_err(|e| corrupt("warnings", e))?,
        created_at: row.get(17)?,
        started_at: row.get(18)?,
        finished_at: row.get(19)?,
        stdout_bytes: row.get::<_, i64>(20)? as u64,
        stderr_bytes: row.get::<_, i64>(21)? as u64,
        log_truncated: row.get(22)?,
        resources: resources
            .map(|r| serde_json::from_str::<ResourceUsage>(&r))
            .transpose()
            .map_err(|e| corrupt("resources", e))?,
        lease_owner: row.get(24)?,
        lease_token: row.get(25)?,
        lease_expires_at: row.get(26)?,
        enforcement: serde_json::from_str(&row.get::<_, String>(27)?)
            .map_err(|e| corrupt("enforcement", e))?,
        git_ref: row.get(28)?,
        invariants: row
            .get::<_, Option<String>>(29)?
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .map_err(|e| corrupt("invariants", e))?,
        inline_argv: row
            .get::<_, Option<String>>(30)?
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .map_err(|e| corrupt("inline_argv", e))?,
        image: row.get(31)?,
        stages: row
            .get::<_, Option<String>>(32)?
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .map_err(|e| corrupt("stages", e))?
            .unwrap_or_default(),
        tests: row
            .get::<_, Option<String>>(33)?
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .map_err(|e| corrupt("tests", e))?,
        artifact_bytes: row.get::<_, i64>(34)?.max(0) as u64,
        tool_bundle: match (row.get::<_, Option<String>>(35)?, row.get(36)?) {
            (Some(sha256), Some(env_var)) => Some(ToolBundleRef { sha256, env_var }),
            _ => None,
        },
    })
}

/// `SELECT <all columns> FROM jobs WHERE id = ?1`, built once: a completion checks its lease
/// against the row, and every `GET` of a job reads it.
pub(crate) fn select_by_id() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"))
}

pub(crate) fn load(conn: &Connection, id: JobId) -> Result<JobRecord> {
    // The hottest statement of the store: prepared once per connection, then reused.
    conn.prepare_cached(select_by_id())
        .map_err(backend)?
        .query_row([id.to_string()], row_to_job)
        .optional()
        .map_err(backend)?
        .ok_or(StoreError::NotFound(id))
}

/// Loads a job and checks that `lease` is its current claim.
pub(crate) fn load_leased(conn: &Connection, lease: &Lease) -> Result<JobRecord> {
    let job = load(conn, lease.job_id)?;
    if job.status != JobStatus::Running
        || job.lease_token != lease.token
        || job.lease_owner.as_deref() != Some(lease.worker.as_str())
    {
        return Err(StoreError::LeaseLost(lease.job_id));
    }
    Ok(job)
}

pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Backend(e.to_string()))
}
