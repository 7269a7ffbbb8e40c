//! A job's test results in PostgreSQL: stored under its lease per attempt (in report order,
//! the primary key), read failures first, and the tests flaky at one commit.

use sqlx::{PgPool, Row};
use warden_store::{Lease, Result, StoreError, TestResult, TestStatus, TestsQuery};

use super::LEASED;
use super::rows::backend;

pub(crate) async fn append_tests(
    pool: &PgPool,
    lease: &Lease,
    first: u32,
    tests: &[TestResult],
) -> Result<()> {
    let mut tx = pool.begin().await.map_err(backend)?;
    // Fenced: the row stays leased (and its attempt the same) until the insert commits.
    let attempt: Option<i32> = sqlx::query_scalar(&format!(
        "SELECT attempts FROM jobs WHERE id = $1::uuid AND {LEASED} FOR SHARE"
    ))
    .bind(lease.job_id.to_string())
    .bind(lease.token)
    .bind(&lease.worker)
    .fetch_optional(&mut *tx)
    .await
    .map_err(backend)?;
    let Some(attempt) = attempt else {
        return Err(StoreError::LeaseLost(lease.job_id));
    };
    let idx: Vec<i32> = (0..tests.len())
        .map(|i| (first as i64 + i as i64).min(i32::MAX as i64) as i32)
        .collect();
    let rank: Vec<i32> = tests
        .iter()
        .map(|t| warden_store::test_rank(t.status) as i32)
        .collect();
    let text = |f: fn(&TestResult) -> String| tests.iter().map(f).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO test_results (job_id, attempt, idx, rank, suite, classname, name, status,
             duration_ms, message)
         SELECT $1::uuid, $2, t.idx, t.rank, t.suite, t.classname, t.name, t.status,
             t.duration_ms, t.message
         FROM UNNEST($3::int[], $4::int[], $5::text[], $6::text[], $7::text[], $8::text[],
             $9::bigint[], $10::text[])
             AS t(idx, rank, suite, classname, name, status, duration_ms, message)
         ON CONFLICT (job_id, attempt, idx) DO UPDATE SET rank = EXCLUDED.rank,
             suite = EXCLUDED.suite, classname = EXCLUDED.classname, name = EXCLUDED.name,
             status = EXCLUDED.status, duration_ms = EXCLUDED.duration_ms,
             message = EXCLUDED.message",
    )
    .bind(lease.job_id.to_string())
    .bind(attempt)
    .bind(idx)
    .bind(rank)
    .bind(text(|t| t.suite.clone()))
    .bind(text(|t| t.classname.clone()))
    .bind(text(|t| t.name.clone()))
    .bind(text(|t| t.status.as_str().to_string()))
    .bind(
        tests
            .iter()
            .map(|t| t.duration_ms.map(|d| d.min(i64::MAX as u64) as i64))
            .collect::<Vec<_>>(),
    )
    .bind(tests.iter().map(|t| t.message.clone()).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await
    .map_err(backend)?;
    tx.commit().await.map_err(backend)
}

pub(crate) async fn tests(pool: &PgPool, q: &TestsQuery) -> Result<Vec<TestResult>> {
    let rows = sqlx::query(
        "SELECT suite, classname, name, status, duration_ms, message FROM test_results
         WHERE job_id = $1::uuid AND attempt = $2 AND ($3::text IS NULL OR status = $3)
         ORDER BY rank, idx LIMIT $4 OFFSET $5",
    )
    .bind(q.job.to_string())
    .bind(q.attempt.min(i32::MAX as u32) as i32)
    .bind(q.status.map(TestStatus::as_str))
    .bind(q.limit as i64)
    .bind(q.after.min(i64::MAX as u64) as i64)
    .fetch_all(pool)
    .await
    .map_err(backend)?;
    rows.iter()
        .map(|row| {
            let status: &str = row.try_get(3).map_err(backend)?;
            Ok(TestResult {
                suite: row.try_get(0).map_err(backend)?,
                classname: row.try_get(1).map_err(backend)?,
                name: row.try_get(2).map_err(backend)?,
                status: TestStatus::parse(status).ok_or_else(|| {
                    StoreError::Backend(format!("test_results.status {status:?}"))
                })?,
                duration_ms: row
                    .try_get::<Option<i64>, _>(4)
                    .map_err(backend)?
                    .map(|d| d.max(0) as u64),
                message: row.try_get(5).map_err(backend)?,
                flaky: false,
            })
        })
        .collect()
}

pub(crate) async fn flaky_tests(
    pool: &PgPool,
    job_type: &str,
    repo_name: Option<&str>,
    sha: &str,
) -> Result<Vec<(String, String, String)>> {
    sqlx::query_as(
        "SELECT r.suite, r.classname, r.name FROM test_results r
         JOIN jobs j ON j.id = r.job_id AND r.attempt = j.attempts
         WHERE j.job_type = $1 AND j.sha = $2 AND j.repo_name IS NOT DISTINCT FROM $3
         GROUP BY r.suite, r.classname, r.name
         HAVING bool_or(r.status = 'passed') AND bool_or(r.status IN ('failed', 'error'))
         LIMIT 10000",
    )
    .bind(job_type)
    .bind(sha)
    .bind(repo_name)
    .fetch_all(pool)
    .await
    .map_err(backend)
}
