//! Wire types of warden's HTTP/JSON API.
//!
//! This is the only crate whose types are serialized onto the wire; the server, the client and
//! the CLI all speak through them, so a field renamed here is a breaking change for callers.

mod perimeter;
mod webhooks;
pub use perimeter::*;
pub use webhooks::*;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The lifecycle state of a job as callers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    MutationDetected,
    Error,
}

impl JobStatus {
    pub const ALL: [JobStatus; 8] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::TimedOut,
        JobStatus::Cancelled,
        JobStatus::MutationDetected,
        JobStatus::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::TimedOut => "timed_out",
            JobStatus::Cancelled => "cancelled",
            JobStatus::MutationDetected => "mutation_detected",
            JobStatus::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<JobStatus> {
        JobStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Terminal states never change again.
    pub fn is_terminal(self) -> bool {
        !matches!(self, JobStatus::Queued | JobStatus::Running)
    }

    /// The exit code of `warden job submit --wait` / `warden job get --wait` for this status.
    /// Documented in the README; 2 is reserved for usage errors.
    pub fn exit_code(self) -> i32 {
        match self {
            JobStatus::Succeeded => 0,
            JobStatus::Failed => 1,
            JobStatus::TimedOut => 3,
            JobStatus::Cancelled => 4,
            JobStatus::MutationDetected => 5,
            JobStatus::Error => 6,
            JobStatus::Queued | JobStatus::Running => 7,
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `POST /jobs` body. Unknown fields are refused so that a typo never silently drops intent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitJobRequest {
    pub job_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha: Option<String>,
    /// A branch, tag or `HEAD` of the repository, resolved to a full `sha` at submission (give
    /// `sha` or `ref`, not both).
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// An inline command: this argv runs under the job type the caller's tenant policy names
    /// (`inline: {job_type}`), with its sandbox and limits. Only for tenants that allow it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Where this job's state changes are delivered as signed webhooks (a host the server's
    /// `events.webhooks.allow_hosts` lists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// A tool-spec bundle the server knows (its `tool_bundles:` directory), by SHA-256
    /// (`sha256:HEX`): bound read-only at `/run/warden/tools.json`, in place of the job
    /// type's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_bundle: Option<String>,
    /// The variable that holds the bundle's path (default: the job type's `tool_env_var`,
    /// `AGENT_TOOL_SPEC`). Only with `tool_bundle`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_env_var: Option<String>,
}

/// `POST /jobs` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SubmitJobResponse {
    pub job_id: String,
    pub artifact_dir: String,
    pub status: JobStatus,
    /// True when an earlier submission with the same idempotency key was returned.
    #[serde(default)]
    pub idempotent_replay: bool,
}

/// Resource usage measured for a finished job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ResourceUsage {
    pub wall_ms: u64,
    pub user_cpu_ms: u64,
    pub system_cpu_ms: u64,
    /// Peak resident set of the largest process of the job, in KiB.
    pub max_rss_kb: u64,
    /// Peak memory of the job's whole cgroup (all its processes, page cache included), when
    /// the job ran in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory_bytes: Option<u64>,
    /// Time the job was held back by its CPU limit (`cpus`), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_throttled_ms: Option<u64>,
}

/// The whole record of a job, `GET /jobs/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    pub job_id: String,
    pub tenant: String,
    pub job_type: String,
    pub status: JobStatus,
    /// Why the job ended as it did when the status alone does not say (`output_limit`,
    /// `worker_lost`, `sandbox_unavailable`, ...).
    pub reason: Option<String>,
    pub repo_name: Option<String>,
    pub remote_url: Option<String>,
    /// The exact commit the job runs at.
    pub sha: Option<String>,
    /// The ref the submission named, when it named one instead of a sha.
    #[serde(default, rename = "ref")]
    pub git_ref: Option<String>,
    pub params: BTreeMap<String, String>,
    pub idempotency_key: Option<String>,
    /// What warden proved about the worktree after the job; absent without a repository.
    #[serde(default)]
    pub invariants: Option<Invariants>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub attempts: u32,
    pub max_attempts: u32,
    pub cancel_requested: bool,
    /// The job ran (or would run) without the kernel sandbox because the operator set
    /// `unsafe_fallback: true`.
    pub unsafe_fallback: bool,
    pub warnings: Vec<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub log_truncated: bool,
    pub resources: Option<ResourceUsage>,
    /// What enforced each limit (`wall_time` → `supervisor`, `memory` → `cgroup v1 (no swap)`,
    /// ...). Empty until the job ends.
    #[serde(default)]
    pub enforcement: std::collections::BTreeMap<String, String>,
    /// An inline job's own argv (absent for a job type's argv).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline_argv: Option<Vec<String>>,
    /// The image the job runs in, pinned to its digest at submission (`REF@sha256:…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// A staged job type's stages, in order, once the job has ended (empty otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageRecord>,
    /// Test cases in the job's JUnit reports, by status, once the job has ended (job types
    /// with `results:`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tests: Option<TestCounts>,
    /// Bytes of the files in its artifact directory, once it has ended.
    #[serde(default)]
    pub artifact_bytes: u64,
    /// The tool bundle the submission chose (`sha256:HEX`), when it chose one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_bundle: Option<String>,
    /// The variable that points the job at that bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_env_var: Option<String>,
    pub artifact_dir: String,
}

/// How one test case ended, as its JUnit report says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TestStatus {
    Passed,
    Failed,
    Error,
    Skipped,
}

impl TestStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TestStatus::Passed => "passed",
            TestStatus::Failed => "failed",
            TestStatus::Error => "error",
            TestStatus::Skipped => "skipped",
        }
    }

    pub fn parse(s: &str) -> Option<TestStatus> {
        Some(match s {
            "passed" => TestStatus::Passed,
            "failed" => TestStatus::Failed,
            "error" => TestStatus::Error,
            "skipped" => TestStatus::Skipped,
            _ => return None,
        })
    }

    /// Failed or errored: what "failures first" puts first.
    pub fn is_failure(self) -> bool {
        matches!(self, TestStatus::Failed | TestStatus::Error)
    }
}

/// One test case of a job's JUnit reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TestResult {
    /// The nearest enclosing `<testsuite name>` (empty without one).
    pub suite: String,
    pub classname: String,
    pub name: String,
    pub status: TestStatus,
    pub duration_ms: Option<u64>,
    /// The failure, error or skip message (capped at 4 KiB).
    pub message: Option<String>,
    /// It passed and failed at the same commit (this job or another of its type).
    #[serde(default)]
    pub flaky: bool,
}

/// How many test cases a job's JUnit reports hold, by status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TestCounts {
    pub total: u64,
    pub passed: u64,
    pub failed: u64,
    pub error: u64,
    pub skipped: u64,
    /// Report files read.
    pub files: u64,
    /// Only the first 50,000 test cases were kept as records (the counts are of all).
    #[serde(default)]
    pub truncated: bool,
}

/// `GET /jobs/{id}/tests` answer: failures first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TestsResponse {
    pub job_id: String,
    /// Absent until the job has ended, and for a job type without `results:`.
    pub counts: Option<TestCounts>,
    pub tests: Vec<TestResult>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

/// How one stage of a staged job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    Succeeded,
    /// Exited non-zero or was killed by a signal.
    Failed,
    /// Ran past its own `timeout_s`.
    TimedOut,
    /// Not run: an earlier stage failed and this one is not `always: true`.
    Skipped,
    /// Not run or not finished: the job was cancelled, killed or ran out of time first.
    NotRun,
}

impl StageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StageStatus::Succeeded => "succeeded",
            StageStatus::Failed => "failed",
            StageStatus::TimedOut => "timed_out",
            StageStatus::Skipped => "skipped",
            StageStatus::NotRun => "not_run",
        }
    }
}

/// One stage of a staged job: how it ended, when, and where its output is in the job's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StageRecord {
    pub name: String,
    pub status: StageStatus,
    /// The stage ran even though an earlier one failed (`always: true`).
    #[serde(default)]
    pub always: bool,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Milliseconds from the job's start (in its sandbox) to the stage's, and its length.
    pub started_ms: Option<u64>,
    pub duration_ms: Option<u64>,
    /// The stage's output: `[start, end)` byte offsets in the job's stdout and stderr logs.
    pub stdout: [u64; 2],
    pub stderr: [u64; 2],
}

/// The guarantees checked after a job that ran on a repository.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Invariants {
    /// The job could not write to its worktree (mounted read-only, verified in the sandbox).
    pub read_only_ok: Option<bool>,
    /// The tree the job saw was byte-identical to the commit afterwards.
    pub clean_tree_ok: Option<bool>,
    /// The commit's root tree id.
    #[serde(default)]
    pub tree: Option<String>,
    /// Paths that differed from the commit (at most 1000; `changed_count` is exact).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed_paths: Vec<String>,
    #[serde(default)]
    pub changed_count: u64,
}

/// `GET /jobs` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ListJobsResponse {
    pub jobs: Vec<JobView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /jobs/{id}/logs` answer (non-follow mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LogsResponse {
    pub job_id: String,
    pub stream: String,
    /// The last `tail` lines (lossily decoded as UTF-8; use `format=raw` for exact bytes).
    pub lines: Vec<String>,
    /// Byte offset in the stream where `lines` begin.
    pub offset: u64,
    /// Byte offset just past the last byte returned; resume following from here.
    pub next_offset: u64,
    pub truncated: bool,
    pub status: JobStatus,
}

/// One live log event sent by `follow=true` (server-sent event `log`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LogEvent {
    pub offset: u64,
    pub next_offset: u64,
    pub text: String,
}

/// The final server-sent event `end` of a followed log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LogEnd {
    pub status: JobStatus,
    pub next_offset: u64,
    pub truncated: bool,
}

/// One entry of `GET /jobs/{id}/artifacts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ArtifactEntry {
    /// The path, relative to the artifact directory (as UTF-8; a name that is not valid UTF-8
    /// shows replacement characters here, and its exact bytes in `path_hex`).
    pub path: String,
    /// The path's exact bytes, hex-encoded, present only when it is not valid UTF-8. Download
    /// such a file by percent-encoding these bytes in the URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_hex: Option<String>,
    /// `file`, `dir`, `symlink` or `other` (fifo, socket, device). Only files can be downloaded.
    pub kind: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ArtifactsResponse {
    pub job_id: String,
    pub artifacts: Vec<ArtifactEntry>,
    /// The listing stopped at its limit (10,000 entries): there are more.
    #[serde(default)]
    pub truncated: bool,
}

/// One entry of `GET /job-types`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobTypeView {
    pub name: String,
    /// What its jobs run; empty for a staged job type.
    pub argv: Vec<String>,
    /// A staged job type's stage names, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<String>,
    pub timeout_s: u64,
    pub requires_repo: bool,
    pub allowed_params: Vec<String>,
    /// Whether its jobs reach anything beyond their own loopback (`host` or `egress`).
    pub network: bool,
    /// What may be reached through warden's egress gateway (`network: {egress: [...]}`);
    /// empty for `none` and `host`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobTypesResponse {
    pub job_types: Vec<JobTypeView>,
}

/// Machine-readable error codes. Every error body is `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    MalformedJson,
    InvalidRequest,
    UnknownField,
    PayloadTooLarge,
    UnsupportedMediaType,
    UnknownJobType,
    UnknownParam,
    InvalidParam,
    InvalidJobId,
    InvalidQuery,
    InvalidPath,
    RepoRequired,
    RepoNotAllowed,
    /// `callback_url` names a host the server's `events.webhooks.allow_hosts` does not list.
    CallbackNotAllowed,
    /// `tool_bundle` names no bundle in the server's `tool_bundles:` directory.
    ToolBundleUnknown,
    /// The sha or ref is not in the repository, or is not a valid name.
    InvalidRef,
    /// The repository's server could not be reached to resolve a ref.
    RepoUnavailable,
    /// The job type's image could not be resolved to a digest (its registry or file).
    ImageUnavailable,
    JobNotFound,
    ArtifactNotFound,
    NotAFile,
    IdempotencyConflict,
    JobFinished,
    /// A worker's lease on the job is no longer held (fenced out): its writes are refused.
    LeaseLost,
    ShuttingDown,
    NotFound,
    MethodNotAllowed,
    /// No valid token: missing, malformed, unknown, expired or revoked.
    Unauthenticated,
    /// The token lacks the scope, or its tenant may not use this job type or repository.
    Forbidden,
    /// The tenant's `max_queued` is reached; retry after `Retry-After` seconds.
    QueueFull,
    /// The token's request rate is over its limit; retry after `Retry-After` seconds.
    RateLimited,
    Internal,
}

impl ErrorCode {
    /// The HTTP status for this code: 4xx for the caller's mistakes, 5xx only for warden's own.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::MalformedJson
            | ErrorCode::InvalidJobId
            | ErrorCode::InvalidQuery
            | ErrorCode::InvalidPath => 400,
            ErrorCode::JobNotFound | ErrorCode::ArtifactNotFound | ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::QueueFull | ErrorCode::RateLimited => 429,
            ErrorCode::IdempotencyConflict | ErrorCode::JobFinished | ErrorCode::LeaseLost => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::UnknownField
            | ErrorCode::InvalidRequest
            | ErrorCode::UnknownJobType
            | ErrorCode::UnknownParam
            | ErrorCode::InvalidParam
            | ErrorCode::RepoRequired
            | ErrorCode::RepoNotAllowed
            | ErrorCode::CallbackNotAllowed
            | ErrorCode::ToolBundleUnknown
            | ErrorCode::InvalidRef
            | ErrorCode::NotAFile => 422,
            ErrorCode::RepoUnavailable | ErrorCode::ImageUnavailable => 502,
            ErrorCode::ShuttingDown => 503,
            ErrorCode::Internal => 500,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedJson => "malformed_json",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::UnknownField => "unknown_field",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::UnknownJobType => "unknown_job_type",
            ErrorCode::UnknownParam => "unknown_param",
            ErrorCode::InvalidParam => "invalid_param",
            ErrorCode::InvalidJobId => "invalid_job_id",
            ErrorCode::InvalidQuery => "invalid_query",
            ErrorCode::InvalidPath => "invalid_path",
            ErrorCode::RepoRequired => "repo_required",
            ErrorCode::RepoNotAllowed => "repo_not_allowed",
            ErrorCode::CallbackNotAllowed => "callback_not_allowed",
            ErrorCode::ToolBundleUnknown => "tool_bundle_unknown",
            ErrorCode::InvalidRef => "invalid_ref",
            ErrorCode::RepoUnavailable => "repo_unavailable",
            ErrorCode::ImageUnavailable => "image_unavailable",
            ErrorCode::JobNotFound => "job_not_found",
            ErrorCode::ArtifactNotFound => "artifact_not_found",
            ErrorCode::NotAFile => "not_a_file",
            ErrorCode::IdempotencyConflict => "idempotency_conflict",
            ErrorCode::JobFinished => "job_finished",
            ErrorCode::LeaseLost => "lease_lost",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::QueueFull => "queue_full",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// Formats a timestamp (milliseconds since the epoch) as every API answer and record writes it;
/// values beyond year 9999, which RFC 3339 cannot write, are clamped.
pub fn rfc3339(ms: i64) -> String {
    const MAX_MS: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
    let ms = ms.clamp(0, MAX_MS) as u64;
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_beyond_rfc3339_are_clamped_not_a_panic() {
        assert_eq!(super::rfc3339(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(super::rfc3339(-5), "1970-01-01T00:00:00.000Z");
    }

    use super::*;

    #[test]
    fn error_code_strings_match_serde() {
        for code in [
            ErrorCode::MalformedJson,
            ErrorCode::IdempotencyConflict,
            ErrorCode::Internal,
            ErrorCode::RepoNotAllowed,
            ErrorCode::ToolBundleUnknown,
            ErrorCode::InvalidRef,
            ErrorCode::RepoUnavailable,
            ErrorCode::ImageUnavailable,
            ErrorCode::Unauthenticated,
            ErrorCode::QueueFull,
        ] {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json.as_str().unwrap(), code.as_str());
        }
    }

    #[test]
    fn status_round_trips_and_exit_codes_are_distinct() {
        let mut codes = std::collections::HashSet::new();
        for st in JobStatus::ALL {
            assert_eq!(JobStatus::parse(st.as_str()), Some(st));
            let json = serde_json::to_string(&st).unwrap();
            assert_eq!(json, format!("\"{}\"", st.as_str()));
            if st.is_terminal() {
                assert!(codes.insert(st.exit_code()), "duplicate exit code for {st}");
                assert_ne!(st.exit_code(), 2, "2 is reserved for usage errors");
            }
        }
    }

    #[test]
    fn submit_request_refuses_unknown_fields() {
        let err = serde_json::from_str::<SubmitJobRequest>(r#"{"job_type":"x","argv":["sh"]}"#)
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `argv`"), "{err}");
    }
}
