//! The queue's two ends inside the caller's transaction: a submission, and claims in fair-share
//! order. `submit`, `claim_many` and `submit_and_claim` are each one transaction around them.
//! And a job's end: a completion's one transaction.

use rusqlite::{Connection, OptionalExtension, params};
use warden_core::state::can_transition;
use warden_core::{JobId, JobStatus};
use warden_store::{
    Claimed, Completion, FairShare, JobRecord, Lease, Millis, NewJob, Result, StoreError,
    SubmitOutcome,
};

use crate::rows::{COLUMNS, load, load_leased, row_to_job, to_json};
use crate::thread::Tx;
use crate::{backend, exec, perimeter, query_row};

/// A submission inside the caller's transaction (see [`Store::submit`]).
pub(crate) fn submit_in(tx: &Connection, job: &NewJob) -> Result<SubmitOutcome> {
    if let Some(key) = &job.idempotency_key {
        let existing: Option<String> = query_row(
            tx,
            "SELECT id FROM jobs WHERE tenant = ?1 AND idempotency_key = ?2",
            params![job.tenant, key],
            |r| r.get(0),
        )
        .optional()
        .map_err(backend)?;
        if let Some(existing) = existing {
            let id: JobId = existing
                .parse()
                .map_err(|e| StoreError::Corrupt(format!("{e}")))?;
            let record = load(tx, id)?;
            return if job.same_request(&record) {
                Ok(SubmitOutcome::Existing(record))
            } else {
                Err(StoreError::IdempotencyConflict {
                    key: key.clone(),
                    existing: id,
                })
            };
        }
    }
    if let Some(max) = job.max_queued {
        let queued: i64 = query_row(
            tx,
            "SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND tenant = ?1",
            [&job.tenant],
            |r| r.get(0),
        )
        .map_err(backend)?;
        if queued as u64 >= max {
            return Err(StoreError::QueueFull {
                tenant: job.tenant.clone(),
                max,
            });
        }
    }
    // The row as stored comes back from the insert itself (`RETURNING`): no second seek.
    let record = returning(
        tx,
        insert_sql(),
        params![
            job.id.to_string(),
            job.tenant,
            job.job_type,
            job.repo_name,
            job.remote_url,
            job.sha,
            to_json(&job.params)?,
            job.idempotency_key,
            job.max_attempts,
            job.unsafe_fallback,
            job.created_at,
            job.git_ref,
            job.inline_argv.as_ref().map(to_json).transpose()?,
            job.image,
            job.tool_bundle.as_ref().map(|b| &b.sha256),
            job.tool_bundle.as_ref().map(|b| &b.env_var),
        ],
    )?;
    if let Some(url) = &job.callback_url {
        exec(
            tx,
            "INSERT INTO job_callbacks (job_id, url) VALUES (?1, ?2)",
            params![job.id.to_string(), url],
        )
        .map_err(backend)?;
    }
    perimeter::insert_audit(tx, job.audit.as_slice())?;
    Ok(SubmitOutcome::Created(record))
}

/// Runs a statement that changes one job's row and returns it (`… RETURNING` [`COLUMNS`]).
fn returning(tx: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<JobRecord> {
    tx.prepare_cached(sql)
        .map_err(backend)?
        .query_row(params, row_to_job)
        .map_err(backend)
}

/// Statements built once, each with the row's columns to return.
fn insert_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "INSERT INTO jobs (id, tenant, job_type, repo_name, remote_url, sha, params,
                 idempotency_key, status, max_attempts, unsafe_fallback, created_at, git_ref,
                 inline_argv, image, tool_bundle, tool_env_var)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'queued', ?9, ?10, ?11, ?12, ?13, ?14,
                 ?15, ?16)
             RETURNING {COLUMNS}"
        )
    })
}

fn claim_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = ?2,
                 lease_owner = ?3, lease_token = lease_token + 1, lease_expires_at = ?4
             WHERE id = ?1
             RETURNING {COLUMNS}"
        )
    })
}

fn complete_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "UPDATE jobs SET status = ?2, reason = ?3, exit_code = ?4, signal = ?5,
                     warnings = ?6, resources = ?7, log_truncated = ?8, finished_at = ?9,
                     enforcement = ?10, invariants = ?11, stages = ?12, tests = ?13,
                     artifact_bytes = ?14, lease_owner = NULL,
                     lease_expires_at = NULL
                 WHERE id = ?1
                 RETURNING {COLUMNS}"
        )
    })
}

/// Up to `max` claims for `worker` inside the caller's transaction (see [`Store::claim_many`]).
pub(crate) fn claim_in(
    tx: &Connection,
    fair: &FairShare,
    worker: &str,
    job_types: Option<&str>,
    max: usize,
    lease_ms: i64,
    now: Millis,
) -> Result<Vec<Claimed>> {
    let ids = perimeter::pick_fairly(tx, fair, job_types, max)?;
    let mut claimed = Vec::with_capacity(ids.len());
    for id in ids {
        let job = returning(
            tx,
            claim_sql(),
            params![id.to_string(), now, worker, now + lease_ms],
        )?;
        let lease = Lease {
            job_id: id,
            worker: worker.to_string(),
            token: job.lease_token,
        };
        claimed.push(Claimed { job, lease });
    }
    Ok(claimed)
}

/// A completion's one transaction (see [`Store::complete`]).
pub(crate) fn completing(
    lease: Lease,
    done: Completion,
    now: Millis,
) -> impl FnOnce(&mut Connection) -> Result<JobRecord> + Send + 'static {
    move |conn| {
        let tx = Tx::begin(conn)?;
        let job = load_leased(&tx, &lease)?;
        let status = done.status.unwrap_or(JobStatus::Error);
        if !status.is_terminal() || !can_transition(job.status, status) {
            return Err(StoreError::Backend(format!(
                "job {} cannot move from {} to {status}",
                job.id, job.status
            )));
        }
        let record = returning(
            &tx,
            complete_sql(),
            params![
                lease.job_id.to_string(),
                status.as_str(),
                done.reason,
                done.exit_code,
                done.signal,
                to_json(&done.warnings)?,
                done.resources.as_ref().map(to_json).transpose()?,
                done.log_truncated,
                now,
                to_json(&done.enforcement)?,
                done.invariants.as_ref().map(to_json).transpose()?,
                (!done.stages.is_empty())
                    .then(|| to_json(&done.stages))
                    .transpose()?,
                done.tests.as_ref().map(to_json).transpose()?,
                done.artifact_bytes.min(i64::MAX as u64) as i64,
            ],
        )?;
        tx.commit()?;
        Ok(record)
    }
}
