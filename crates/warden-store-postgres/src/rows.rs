//! Rows to records and the SQL shared by several store calls.

use sqlx::Row;
use sqlx::postgres::PgRow;
use warden_api::ResourceUsage;
use warden_core::record::ToolBundleRef;
use warden_core::{JobId, JobStatus};
use warden_store::{JobRecord, Lease, LogStream, Result, StoreError};

use super::{COLUMNS, PgStore};

pub(crate) fn backend(e: sqlx::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

pub(crate) fn stream_code(s: LogStream) -> i16 {
    match s {
        LogStream::Stdout => 1,
        LogStream::Stderr => 2,
    }
}

pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Backend(e.to_string()))
}

pub(crate) fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| corrupt(what, e))
}

pub(crate) fn row_to_job(row: &PgRow) -> Result<JobRecord> {
    let get = |e: sqlx::Error| corrupt("row", e);
    let id: String = row.try_get(0).map_err(get)?;
    let status: String = row.try_get(8).map_err(get)?;
    Ok(JobRecord {
        id: id.parse().map_err(|e| corrupt("job id", e))?,
        tenant: row.try_get(1).map_err(get)?,
        job_type: row.try_get(2).map_err(get)?,
        repo_name: row.try_get(3).map_err(get)?,
        remote_url: row.try_get(4).map_err(get)?,
        sha: row.try_get(5).map_err(get)?,
        params: from_json("params", row.try_get::<&str, _>(6).map_err(get)?)?,
        idempotency_key: row.try_get(7).map_err(get)?,
        status: JobStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?,
        reason: row.try_get(9).map_err(get)?,
        exit_code: row.try_get(10).map_err(get)?,
        signal: row.try_get(11).map_err(get)?,
        attempts: row.try_get::<i32, _>(12).map_err(get)? as u32,
        max_attempts: row.try_get::<i32, _>(13).map_err(get)? as u32,
        cancel_requested: row.try_get(14).map_err(get)?,
        unsafe_fallback: row.try_get(15).map_err(get)?,
        warnings: from_json("warnings", row.try_get::<&str, _>(16).map_err(get)?)?,
        created_at: row.try_get(17).map_err(get)?,
        started_at: row.try_get(18).map_err(get)?,
        finished_at: row.try_get(19).map_err(get)?,
        stdout_bytes: row.try_get::<i64, _>(20).map_err(get)? as u64,
        stderr_bytes: row.try_get::<i64, _>(21).map_err(get)? as u64,
        log_truncated: row.try_get(22).map_err(get)?,
        resources: row
            .try_get::<Option<&str>, _>(23)
            .map_err(get)?
            .map(|r| from_json::<ResourceUsage>("resources", r))
            .transpose()?,
        lease_owner: row.try_get(24).map_err(get)?,
        lease_token: row.try_get(25).map_err(get)?,
        lease_expires_at: row.try_get(26).map_err(get)?,
        enforcement: from_json("enforcement", row.try_get::<&str, _>(27).map_err(get)?)?,
        git_ref: row.try_get(28).map_err(get)?,
        invariants: row
            .try_get::<Option<&str>, _>(29)
            .map_err(get)?
            .map(|s| from_json("invariants", s))
            .transpose()?,
        inline_argv: row
            .try_get::<Option<&str>, _>(30)
            .map_err(get)?
            .map(|s| from_json("inline_argv", s))
            .transpose()?,
        image: row.try_get(31).map_err(get)?,
        stages: row
            .try_get::<Option<&str>, _>(32)
            .map_err(get)?
            .map(|s| from_json("stages", s))
            .transpose()?
            .unwrap_or_default(),
        tests: row
            .try_get::<Option<&str>, _>(33)
            .map_err(get)?
            .map(|s| from_json("tests", s))
            .transpose()?,
        artifact_bytes: row.try_get::<i64, _>(34).map_err(get)?.max(0) as u64,
        tool_bundle: match (
            row.try_get::<Option<String>, _>(35).map_err(get)?,
            row.try_get::<Option<String>, _>(36).map_err(get)?,
        ) {
            (Some(sha256), Some(env_var)) => Some(ToolBundleRef { sha256, env_var }),
            _ => None,
        },
    })
}

pub(crate) fn sql_select_by_id() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| format!("SELECT {COLUMNS} FROM jobs WHERE id = $1::uuid"))
}

/// Marks up to `$5` of tenant `$6`'s oldest queued jobs (of job types `$4`) running: rows
/// another claim holds are skipped, so claims never wait on each other.
pub(crate) fn sql_claim_tenant() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = $1,
                 lease_owner = $2, lease_token = lease_token + 1, lease_expires_at = $3
             WHERE id IN (
                 SELECT id FROM jobs
                 WHERE status = 'queued' AND tenant = $6
                   AND ($4::text[] IS NULL OR job_type = ANY($4))
                 ORDER BY id LIMIT $5
                 FOR UPDATE SKIP LOCKED)
             RETURNING {COLUMNS}"
        )
    })
}

impl PgStore {
    pub(crate) async fn load<'e>(
        &self,
        exec: impl sqlx::PgExecutor<'e>,
        id: JobId,
    ) -> Result<JobRecord> {
        let row = sqlx::query(sql_select_by_id())
            .bind(id.to_string())
            .fetch_optional(exec)
            .await
            .map_err(backend)?
            .ok_or(StoreError::NotFound(id))?;
        row_to_job(&row)
    }

    /// Explains why a write under `lease` changed no row.
    pub(crate) async fn refused(&self, lease: &Lease) -> StoreError {
        match self.load(&self.pool, lease.job_id).await {
            Ok(_) => StoreError::LeaseLost(lease.job_id),
            Err(e) => e,
        }
    }
}
