//! A job's test results in SQLite: stored under its lease per attempt (in report order, the
//! primary key), read failures first, and the tests flaky at one commit.

use rusqlite::{Connection, params};
use warden_store::{Lease, Result, TestResult, TestStatus, TestsQuery};

use super::backend;
use super::rows::{self, load_leased};
use super::thread::Tx;

pub(crate) fn append_tests(
    conn: &mut Connection,
    lease: &Lease,
    first: u32,
    tests: &[TestResult],
) -> Result<()> {
    let tx = Tx::begin(conn)?;
    let job = load_leased(&tx, lease)?;
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT OR REPLACE INTO test_results (job_id, attempt, idx, rank, suite,
                     classname, name, status, duration_ms, message)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .map_err(backend)?;
        let id = lease.job_id.to_string();
        for (i, t) in tests.iter().enumerate() {
            insert
                .execute(params![
                    id,
                    job.attempts,
                    first as i64 + i as i64,
                    warden_store::test_rank(t.status),
                    t.suite,
                    t.classname,
                    t.name,
                    t.status.as_str(),
                    t.duration_ms.map(|d| d.min(i64::MAX as u64) as i64),
                    t.message,
                ])
                .map_err(backend)?;
        }
    }
    tx.commit()
}

pub(crate) fn tests(conn: &Connection, q: &TestsQuery) -> Result<Vec<TestResult>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT suite, classname, name, status, duration_ms, message FROM test_results
             WHERE job_id = ?1 AND attempt = ?2 AND (?3 IS NULL OR status = ?3)
             ORDER BY rank, idx LIMIT ?4 OFFSET ?5",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map(
            params![
                q.job.to_string(),
                q.attempt,
                q.status.map(TestStatus::as_str),
                q.limit,
                q.after.min(i64::MAX as u64) as i64
            ],
            |row| {
                let status: String = row.get(3)?;
                Ok(TestResult {
                    suite: row.get(0)?,
                    classname: row.get(1)?,
                    name: row.get(2)?,
                    status: TestStatus::parse(&status)
                        .ok_or_else(|| rows::corrupt("status", status))?,
                    duration_ms: row.get::<_, Option<i64>>(4)?.map(|d| d.max(0) as u64),
                    message: row.get(5)?,
                    flaky: false,
                })
            },
        )
        .map_err(backend)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
}

/// Tests that both passed and failed in a job type's runs at one commit (along `jobs_commit`).
pub(crate) const FLAKY_AT_COMMIT: &str = "SELECT r.suite, r.classname, r.name FROM test_results r
     JOIN jobs j ON j.id = r.job_id AND r.attempt = j.attempts
     WHERE j.job_type = ?1 AND j.sha = ?2 AND j.repo_name IS ?3
     GROUP BY r.suite, r.classname, r.name
     HAVING SUM(r.status = 'passed') > 0
        AND SUM(r.status IN ('failed', 'error')) > 0
     LIMIT 10000";

pub(crate) fn flaky_tests(
    conn: &Connection,
    job_type: &str,
    repo_name: Option<&str>,
    sha: &str,
) -> Result<Vec<(String, String, String)>> {
    let mut stmt = conn.prepare_cached(FLAKY_AT_COMMIT).map_err(backend)?;
    let rows = stmt
        .query_map(params![job_type, sha, repo_name], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .map_err(backend)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
}
