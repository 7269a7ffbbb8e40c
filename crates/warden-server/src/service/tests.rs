//! A job's test results from its JUnit reports: failures first, flaky ones marked.

use std::collections::HashSet;

use warden_api::{TestStatus, TestsResponse};
use warden_core::JobId;
use warden_store::TestsQuery;

use super::{JobService, ServiceError};
use crate::auth::{Caller, Scope};

/// Test results per page when the caller does not say.
pub const DEFAULT_TESTS_LIMIT: u32 = 1000;
/// Most test results per page.
pub const MAX_TESTS_LIMIT: u32 = 10_000;

impl JobService {
    /// One page of a job's test results (its last attempt's), failures first; each marked
    /// `flaky` when it passed and failed at the same commit among the jobs of its type.
    /// `after`: the position to start after (the previous page's cursor).
    pub async fn tests(
        &self,
        caller: &Caller,
        id: JobId,
        status: Option<TestStatus>,
        after: u64,
        limit: u32,
    ) -> Result<TestsResponse, ServiceError> {
        let job = self.job(caller, id, Scope::Read).await?;
        let limit = limit.clamp(1, MAX_TESTS_LIMIT);
        let mut tests = self
            .store
            .tests(&TestsQuery {
                job: id,
                attempt: job.attempts,
                status,
                after,
                limit,
            })
            .await?;
        if let Some(sha) = &job.sha
            && !tests.is_empty()
        {
            let flaky: HashSet<(String, String, String)> = self
                .store
                .flaky_tests(&job.job_type, job.repo_name.as_deref(), sha)
                .await?
                .into_iter()
                .collect();
            for t in &mut tests {
                t.flaky = flaky.contains(&(t.suite.clone(), t.classname.clone(), t.name.clone()));
            }
        }
        let next_cursor =
            (tests.len() as u32 == limit).then(|| (after + u64::from(limit)).to_string());
        Ok(TestsResponse {
            job_id: id.to_string(),
            counts: job.tests.clone(),
            tests,
            next_cursor,
        })
    }
}
