//! What is known about a job: its record, the lease a worker holds on it, and how it ended.
//! Kept by the store, carried over the wire by `warden-proto`, written by workers.

use std::collections::BTreeMap;

use warden_api::{Invariants, ResourceUsage, StageRecord, TestCounts};

use crate::{JobId, JobStatus};

/// Milliseconds since the Unix epoch. The store never reads the clock itself: callers pass
/// `now`, which keeps the lease logic testable.
pub type Millis = i64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }

    pub fn parse(s: &str) -> Option<LogStream> {
        match s {
            "stdout" => Some(LogStream::Stdout),
            "stderr" => Some(LogStream::Stderr),
            _ => None,
        }
    }
}

/// Everything the store knows about a job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: JobId,
    pub tenant: String,
    pub job_type: String,
    pub repo_name: Option<String>,
    pub remote_url: Option<String>,
    pub sha: Option<String>,
    pub git_ref: Option<String>,
    pub params: BTreeMap<String, String>,
    pub idempotency_key: Option<String>,
    pub status: JobStatus,
    pub reason: Option<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub attempts: u32,
    pub max_attempts: u32,
    pub cancel_requested: bool,
    pub unsafe_fallback: bool,
    pub warnings: Vec<String>,
    pub created_at: Millis,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub log_truncated: bool,
    pub resources: Option<ResourceUsage>,
    pub lease_owner: Option<String>,
    pub lease_token: i64,
    pub lease_expires_at: Option<Millis>,
    /// What enforced each limit (`memory` → `cgroup v1 (no swap)`, ...), set at completion.
    pub enforcement: BTreeMap<String, String>,
    /// The worktree proof, set at completion of a job that ran on a repository.
    pub invariants: Option<Invariants>,
    /// An inline job's own argv (run under its job type's sandbox and limits).
    pub inline_argv: Option<Vec<String>>,
    /// The job type's image, pinned to a digest when the job was submitted (`REF@sha256:…`).
    pub image: Option<String>,
    /// A staged job's stages, once it has ended.
    pub stages: Vec<StageRecord>,
    /// Its JUnit reports' test cases by status, once it has ended (job types with `results:`).
    pub tests: Option<TestCounts>,
    /// Bytes of the files in its artifact directory (0 until it ends): with its log bytes,
    /// the room it takes, which retention's size budget counts.
    pub artifact_bytes: u64,
    /// The tool bundle the submission chose (in place of its job type's `tool_bundle`).
    pub tool_bundle: Option<ToolBundleRef>,
}

/// A tool-spec bundle a submission named by its SHA-256, and the variable that points at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolBundleRef {
    /// Lowercase hex.
    pub sha256: String,
    pub env_var: String,
}

impl JobRecord {
    pub fn log_len(&self, stream: LogStream) -> u64 {
        match stream {
            LogStream::Stdout => self.stdout_bytes,
            LogStream::Stderr => self.stderr_bytes,
        }
    }
}

/// A worker's claim on a running job. `token` is the fencing token: it grows with every claim
/// of the job, and only the holder of the current one may write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub job_id: JobId,
    pub worker: String,
    pub token: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub job: JobRecord,
    pub lease: Lease,
}

/// How a running job ended.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Completion {
    pub status: Option<JobStatus>,
    pub reason: Option<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub warnings: Vec<String>,
    pub resources: Option<ResourceUsage>,
    pub log_truncated: bool,
    pub enforcement: BTreeMap<String, String>,
    pub invariants: Option<Invariants>,
    pub stages: Vec<StageRecord>,
    pub tests: Option<TestCounts>,
    pub artifact_bytes: u64,
    /// What the worker measured about the run, for the control plane's metrics (not stored).
    pub telemetry: RunTelemetry,
}

/// What a worker measured about one run, carried with its completion so that the replica
/// that records it can count it (`/metrics`), whichever host ran the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunTelemetry {
    /// From the spawn request to the job's program exec'd in its sandbox.
    pub sandbox_start_us: Option<u64>,
    /// Output past the job's output cap, read and not stored.
    pub log_bytes_dropped: u64,
    /// A job on a repository: whether its tree came from the checkout cache.
    pub checkout_cache_hit: Option<bool>,
    /// Bytes of the tree checked out for it (0 on a cache hit).
    pub checkout_bytes: u64,
    /// Checkout cache entries the worker evicted since its previous completion.
    pub cache_evictions: u64,
}

/// What a heartbeat tells the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatReply {
    pub cancel_requested: bool,
}
