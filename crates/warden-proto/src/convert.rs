//! Between the generated wire types and warden's own.

use warden_api::{
    Invariants, ResourceUsage, StageRecord, StageStatus, TestCounts, TestResult, TestStatus,
    rfc3339,
};
use warden_core::record::{
    Claimed, Completion, JobRecord, Lease, LogStream, RunTelemetry, ToolBundleRef,
};
use warden_core::{JobId, JobStatus};

use crate::pb;

/// A field the sender got wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WireError(pub String);

fn wire(msg: impl Into<String>) -> WireError {
    WireError(msg.into())
}

pub fn status_to_pb(s: JobStatus) -> pb::JobStatus {
    match s {
        JobStatus::Queued => pb::JobStatus::Queued,
        JobStatus::Running => pb::JobStatus::Running,
        JobStatus::Succeeded => pb::JobStatus::Succeeded,
        JobStatus::Failed => pb::JobStatus::Failed,
        JobStatus::TimedOut => pb::JobStatus::TimedOut,
        JobStatus::Cancelled => pb::JobStatus::Cancelled,
        JobStatus::MutationDetected => pb::JobStatus::MutationDetected,
        JobStatus::Error => pb::JobStatus::Error,
    }
}

pub fn status_from_pb(raw: i32) -> Result<JobStatus, WireError> {
    Ok(
        match pb::JobStatus::try_from(raw).map_err(|_| wire(format!("unknown job status {raw}")))? {
            pb::JobStatus::Queued => JobStatus::Queued,
            pb::JobStatus::Running => JobStatus::Running,
            pb::JobStatus::Succeeded => JobStatus::Succeeded,
            pb::JobStatus::Failed => JobStatus::Failed,
            pb::JobStatus::TimedOut => JobStatus::TimedOut,
            pb::JobStatus::Cancelled => JobStatus::Cancelled,
            pb::JobStatus::MutationDetected => JobStatus::MutationDetected,
            pb::JobStatus::Error => JobStatus::Error,
            pb::JobStatus::Unspecified => return Err(wire("job status is unspecified")),
        },
    )
}

pub fn stream_to_pb(s: LogStream) -> pb::LogStream {
    match s {
        LogStream::Stdout => pb::LogStream::Stdout,
        LogStream::Stderr => pb::LogStream::Stderr,
    }
}

pub fn stream_from_pb(raw: i32) -> Result<LogStream, WireError> {
    match pb::LogStream::try_from(raw) {
        Ok(pb::LogStream::Stdout) => Ok(LogStream::Stdout),
        Ok(pb::LogStream::Stderr) => Ok(LogStream::Stderr),
        _ => Err(wire(
            "stream must be LOG_STREAM_STDOUT or LOG_STREAM_STDERR",
        )),
    }
}

pub fn parse_job_id(raw: &str) -> Result<JobId, WireError> {
    raw.parse()
        .map_err(|e: warden_core::id::InvalidJobId| wire(e.to_string()))
}

fn resources_to_pb(r: &ResourceUsage) -> pb::ResourceUsage {
    pb::ResourceUsage {
        wall_ms: r.wall_ms,
        user_cpu_ms: r.user_cpu_ms,
        system_cpu_ms: r.system_cpu_ms,
        max_rss_kb: r.max_rss_kb,
        peak_memory_bytes: r.peak_memory_bytes,
        cpu_throttled_ms: r.cpu_throttled_ms,
    }
}

fn resources_from_pb(r: pb::ResourceUsage) -> ResourceUsage {
    ResourceUsage {
        wall_ms: r.wall_ms,
        user_cpu_ms: r.user_cpu_ms,
        system_cpu_ms: r.system_cpu_ms,
        max_rss_kb: r.max_rss_kb,
        peak_memory_bytes: r.peak_memory_bytes,
        cpu_throttled_ms: r.cpu_throttled_ms,
    }
}

fn invariants_to_pb(i: &Invariants) -> pb::Invariants {
    pb::Invariants {
        read_only_ok: i.read_only_ok,
        clean_tree_ok: i.clean_tree_ok,
        tree: i.tree.clone(),
        changed_paths: i.changed_paths.clone(),
        changed_count: i.changed_count,
    }
}

fn invariants_from_pb(i: pb::Invariants) -> Invariants {
    Invariants {
        read_only_ok: i.read_only_ok,
        clean_tree_ok: i.clean_tree_ok,
        tree: i.tree,
        changed_paths: i.changed_paths,
        changed_count: i.changed_count,
    }
}

pub fn test_status_to_pb(s: TestStatus) -> pb::TestStatus {
    match s {
        TestStatus::Passed => pb::TestStatus::Passed,
        TestStatus::Failed => pb::TestStatus::Failed,
        TestStatus::Error => pb::TestStatus::Error,
        TestStatus::Skipped => pb::TestStatus::Skipped,
    }
}

/// A test status off the wire; `Ok(None)` for unspecified.
pub fn test_status_from_pb(s: i32) -> Result<Option<TestStatus>, WireError> {
    Ok(match pb::TestStatus::try_from(s) {
        Ok(pb::TestStatus::Unspecified) => None,
        Ok(pb::TestStatus::Passed) => Some(TestStatus::Passed),
        Ok(pb::TestStatus::Failed) => Some(TestStatus::Failed),
        Ok(pb::TestStatus::Error) => Some(TestStatus::Error),
        Ok(pb::TestStatus::Skipped) => Some(TestStatus::Skipped),
        Err(_) => return Err(wire(format!("test status {s} is not one warden knows"))),
    })
}

pub fn test_to_pb(t: &TestResult) -> pb::TestResult {
    pb::TestResult {
        suite: t.suite.clone(),
        classname: t.classname.clone(),
        name: t.name.clone(),
        status: test_status_to_pb(t.status) as i32,
        duration_ms: t.duration_ms,
        message: t.message.clone(),
        flaky: t.flaky,
    }
}

pub fn test_from_pb(t: pb::TestResult) -> Result<TestResult, WireError> {
    let status = test_status_from_pb(t.status)?
        .ok_or_else(|| wire(format!("test {:?} has no status", t.name)))?;
    Ok(TestResult {
        suite: t.suite,
        classname: t.classname,
        name: t.name,
        status,
        duration_ms: t.duration_ms,
        message: t.message,
        flaky: t.flaky,
    })
}

pub fn counts_to_pb(c: &TestCounts) -> pb::TestCounts {
    pb::TestCounts {
        total: c.total,
        passed: c.passed,
        failed: c.failed,
        error: c.error,
        skipped: c.skipped,
        files: c.files,
        truncated: c.truncated,
    }
}

pub fn counts_from_pb(c: pb::TestCounts) -> TestCounts {
    TestCounts {
        total: c.total,
        passed: c.passed,
        failed: c.failed,
        error: c.error,
        skipped: c.skipped,
        files: c.files,
        truncated: c.truncated,
    }
}

fn stage_to_pb(s: &StageRecord) -> pb::Stage {
    let status = match s.status {
        StageStatus::Succeeded => pb::StageStatus::Succeeded,
        StageStatus::Failed => pb::StageStatus::Failed,
        StageStatus::TimedOut => pb::StageStatus::TimedOut,
        StageStatus::Skipped => pb::StageStatus::Skipped,
        StageStatus::NotRun => pb::StageStatus::NotRun,
    };
    pb::Stage {
        name: s.name.clone(),
        status: status as i32,
        always: s.always,
        exit_code: s.exit_code,
        signal: s.signal,
        started_ms: s.started_ms,
        duration_ms: s.duration_ms,
        stdout_start: s.stdout[0],
        stdout_end: s.stdout[1],
        stderr_start: s.stderr[0],
        stderr_end: s.stderr[1],
    }
}

fn stage_from_pb(s: pb::Stage) -> Result<StageRecord, WireError> {
    let status = match pb::StageStatus::try_from(s.status) {
        Ok(pb::StageStatus::Succeeded) => StageStatus::Succeeded,
        Ok(pb::StageStatus::Failed) => StageStatus::Failed,
        Ok(pb::StageStatus::TimedOut) => StageStatus::TimedOut,
        Ok(pb::StageStatus::Skipped) => StageStatus::Skipped,
        Ok(pb::StageStatus::NotRun) => StageStatus::NotRun,
        Ok(pb::StageStatus::Unspecified) | Err(_) => {
            return Err(wire(format!("stage {:?} has no valid status", s.name)));
        }
    };
    Ok(StageRecord {
        name: s.name,
        status,
        always: s.always,
        exit_code: s.exit_code,
        signal: s.signal,
        started_ms: s.started_ms,
        duration_ms: s.duration_ms,
        stdout: [s.stdout_start, s.stdout_end],
        stderr: [s.stderr_start, s.stderr_end],
    })
}

pub fn job_to_pb(j: &JobRecord) -> pb::Job {
    pb::Job {
        job_id: j.id.to_string(),
        tenant: j.tenant.clone(),
        job_type: j.job_type.clone(),
        status: status_to_pb(j.status) as i32,
        reason: j.reason.clone(),
        repo_name: j.repo_name.clone(),
        remote_url: j.remote_url.clone(),
        sha: j.sha.clone(),
        r#ref: j.git_ref.clone(),
        params: j.params.clone().into_iter().collect(),
        idempotency_key: j.idempotency_key.clone(),
        invariants: j.invariants.as_ref().map(invariants_to_pb),
        exit_code: j.exit_code,
        signal: j.signal,
        attempts: j.attempts,
        max_attempts: j.max_attempts,
        cancel_requested: j.cancel_requested,
        unsafe_fallback: j.unsafe_fallback,
        warnings: j.warnings.clone(),
        created_at_ms: j.created_at,
        started_at_ms: j.started_at,
        finished_at_ms: j.finished_at,
        stdout_bytes: j.stdout_bytes,
        stderr_bytes: j.stderr_bytes,
        log_truncated: j.log_truncated,
        resources: j.resources.as_ref().map(resources_to_pb),
        enforcement: j.enforcement.clone().into_iter().collect(),
        inline_argv: j.inline_argv.clone().unwrap_or_default(),
        image: j.image.clone().unwrap_or_default(),
        stages: j.stages.iter().map(stage_to_pb).collect(),
        tests: j.tests.as_ref().map(counts_to_pb),
        artifact_bytes: j.artifact_bytes,
        tool_bundle: j
            .tool_bundle
            .as_ref()
            .map(|b| format!("sha256:{}", b.sha256)),
        tool_env_var: j.tool_bundle.as_ref().map(|b| b.env_var.clone()),
    }
}

pub fn lease_to_pb(l: &Lease) -> pb::Lease {
    pb::Lease {
        job_id: l.job_id.to_string(),
        worker: l.worker.clone(),
        token: l.token,
    }
}

pub fn lease_from_pb(l: Option<pb::Lease>) -> Result<Lease, WireError> {
    let l = l.ok_or_else(|| wire("lease is missing"))?;
    Ok(Lease {
        job_id: parse_job_id(&l.job_id)?,
        worker: l.worker,
        token: l.token,
    })
}

/// A job as the wire carries it, back into the record a worker runs (lease fields from `lease`).
pub fn job_from_pb(j: pb::Job, lease: Option<&Lease>) -> Result<JobRecord, WireError> {
    Ok(JobRecord {
        id: parse_job_id(&j.job_id)?,
        tenant: j.tenant,
        job_type: j.job_type,
        repo_name: j.repo_name,
        remote_url: j.remote_url,
        sha: j.sha,
        git_ref: j.r#ref,
        params: j.params.into_iter().collect(),
        idempotency_key: j.idempotency_key,
        status: status_from_pb(j.status)?,
        reason: j.reason,
        exit_code: j.exit_code,
        signal: j.signal,
        attempts: j.attempts,
        max_attempts: j.max_attempts,
        cancel_requested: j.cancel_requested,
        unsafe_fallback: j.unsafe_fallback,
        warnings: j.warnings,
        created_at: j.created_at_ms,
        started_at: j.started_at_ms,
        finished_at: j.finished_at_ms,
        stdout_bytes: j.stdout_bytes,
        stderr_bytes: j.stderr_bytes,
        log_truncated: j.log_truncated,
        resources: j.resources.map(resources_from_pb),
        lease_owner: lease.map(|l| l.worker.clone()),
        lease_token: lease.map(|l| l.token).unwrap_or(0),
        lease_expires_at: None,
        enforcement: j.enforcement.into_iter().collect(),
        invariants: j.invariants.map(invariants_from_pb),
        inline_argv: (!j.inline_argv.is_empty()).then_some(j.inline_argv),
        image: (!j.image.is_empty()).then_some(j.image),
        stages: j
            .stages
            .into_iter()
            .map(stage_from_pb)
            .collect::<Result<_, _>>()?,
        tests: j.tests.map(counts_from_pb),
        artifact_bytes: j.artifact_bytes,
        tool_bundle: match (j.tool_bundle, j.tool_env_var) {
            (Some(b), Some(env_var)) => Some(ToolBundleRef {
                sha256: b
                    .strip_prefix("sha256:")
                    .filter(|h| h.len() == 64 && h.bytes().all(|c| c.is_ascii_hexdigit()))
                    .ok_or_else(|| wire("tool_bundle is not sha256:HEX"))?
                    .to_ascii_lowercase(),
                env_var,
            }),
            (None, None) => None,
            _ => return Err(wire("tool_bundle and tool_env_var come together")),
        },
    })
}

/// A job as the HTTP API shows it, from the gRPC message (for clients that speak either).
pub fn job_view_from_pb(j: pb::Job) -> Result<warden_api::JobView, WireError> {
    let r = job_from_pb(j, None)?;
    Ok(warden_api::JobView {
        job_id: r.id.to_string(),
        tenant: r.tenant,
        job_type: r.job_type,
        status: r.status,
        reason: r.reason,
        repo_name: r.repo_name,
        remote_url: r.remote_url,
        sha: r.sha,
        git_ref: r.git_ref,
        params: r.params,
        idempotency_key: r.idempotency_key,
        invariants: r.invariants,
        exit_code: r.exit_code,
        signal: r.signal,
        attempts: r.attempts,
        max_attempts: r.max_attempts,
        cancel_requested: r.cancel_requested,
        unsafe_fallback: r.unsafe_fallback,
        warnings: r.warnings,
        created_at: rfc3339(r.created_at),
        started_at: r.started_at.map(rfc3339),
        finished_at: r.finished_at.map(rfc3339),
        stdout_bytes: r.stdout_bytes,
        stderr_bytes: r.stderr_bytes,
        log_truncated: r.log_truncated,
        resources: r.resources,
        enforcement: r.enforcement,
        inline_argv: r.inline_argv,
        image: r.image,
        stages: r.stages,
        tests: r.tests,
        artifact_bytes: r.artifact_bytes,
        tool_bundle: r
            .tool_bundle
            .as_ref()
            .map(|b| format!("sha256:{}", b.sha256)),
        tool_env_var: r.tool_bundle.map(|b| b.env_var),
        // Where the server keeps artifacts is not part of the gRPC contract.
        artifact_dir: String::new(),
    })
}

pub fn assignment_from_pb(a: pb::Assignment) -> Result<Claimed, WireError> {
    let lease = lease_from_pb(a.lease)?;
    let job = job_from_pb(
        a.job.ok_or_else(|| wire("assignment without a job"))?,
        Some(&lease),
    )?;
    if job.id != lease.job_id {
        return Err(wire("assignment's lease names another job"));
    }
    Ok(Claimed { job, lease })
}

pub fn completion_to_pb(c: &Completion) -> pb::Completion {
    pb::Completion {
        status: c.status.map(status_to_pb).unwrap_or(pb::JobStatus::Error) as i32,
        reason: c.reason.clone(),
        exit_code: c.exit_code,
        signal: c.signal,
        warnings: c.warnings.clone(),
        resources: c.resources.as_ref().map(resources_to_pb),
        log_truncated: c.log_truncated,
        enforcement: c.enforcement.clone().into_iter().collect(),
        invariants: c.invariants.as_ref().map(invariants_to_pb),
        stages: c.stages.iter().map(stage_to_pb).collect(),
        tests: c.tests.as_ref().map(counts_to_pb),
        artifact_bytes: c.artifact_bytes,
        telemetry: Some(pb::RunTelemetry {
            sandbox_start_us: c.telemetry.sandbox_start_us,
            log_bytes_dropped: c.telemetry.log_bytes_dropped,
            checkout_cache_hit: c.telemetry.checkout_cache_hit,
            checkout_bytes: c.telemetry.checkout_bytes,
            cache_evictions: c.telemetry.cache_evictions,
        }),
    }
}

pub fn completion_from_pb(c: Option<pb::Completion>) -> Result<Completion, WireError> {
    let c = c.ok_or_else(|| wire("completion is missing"))?;
    let status = status_from_pb(c.status)?;
    if !status.is_terminal() {
        return Err(wire(format!(
            "completion status {status} is not a terminal status"
        )));
    }
    Ok(Completion {
        status: Some(status),
        reason: c.reason,
        exit_code: c.exit_code,
        signal: c.signal,
        warnings: c.warnings,
        resources: c.resources.map(resources_from_pb),
        log_truncated: c.log_truncated,
        enforcement: c.enforcement.into_iter().collect(),
        invariants: c.invariants.map(invariants_from_pb),
        stages: c
            .stages
            .into_iter()
            .map(stage_from_pb)
            .collect::<Result<_, _>>()?,
        tests: c.tests.map(counts_from_pb),
        artifact_bytes: c.artifact_bytes,
        telemetry: c
            .telemetry
            .map(|t| RunTelemetry {
                sandbox_start_us: t.sandbox_start_us,
                log_bytes_dropped: t.log_bytes_dropped,
                checkout_cache_hit: t.checkout_cache_hit,
                checkout_bytes: t.checkout_bytes,
                cache_evictions: t.cache_evictions,
            })
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn a_record_survives_the_wire() {
        let lease = Lease {
            job_id: JobId::new(),
            worker: "w1".into(),
            token: 7,
        };
        let record = JobRecord {
            id: lease.job_id,
            tenant: "default".into(),
            job_type: "pytest".into(),
            repo_name: Some("r".into()),
            remote_url: Some("https://example.invalid/r.git".into()),
            sha: Some("a".repeat(40)),
            git_ref: Some("main".into()),
            params: BTreeMap::from([("K".into(), "v\u{0}x".into())]),
            idempotency_key: Some("k".into()),
            status: JobStatus::Running,
            reason: None,
            exit_code: None,
            signal: None,
            attempts: 1,
            max_attempts: 3,
            cancel_requested: false,
            unsafe_fallback: false,
            warnings: vec!["W".into()],
            created_at: 5,
            started_at: Some(6),
            finished_at: None,
            stdout_bytes: 0,
            stderr_bytes: 0,
            log_truncated: false,
            resources: None,
            lease_owner: Some("w1".into()),
            lease_token: 7,
            lease_expires_at: None,
            enforcement: BTreeMap::new(),
            invariants: Some(Invariants {
                changed_paths: vec!["a\nb".into()],
                changed_count: 1,
                ..Invariants::default()
            }),
            inline_argv: Some(vec!["/bin/sh".into(), "-c".into(), "a b".into()]),
            image: Some(format!("127.0.0.1:5000/t/py:3@sha256:{}", "c".repeat(64))),
            stages: vec![warden_api::StageRecord {
                name: "build".into(),
                status: StageStatus::TimedOut,
                always: true,
                exit_code: None,
                signal: Some(9),
                started_ms: Some(1),
                duration_ms: Some(2),
                stdout: [3, 4],
                stderr: [5, 6],
            }],
            tests: Some(TestCounts {
                total: 3,
                failed: 2,
                skipped: 1,
                files: 2,
                truncated: true,
                ..TestCounts::default()
            }),
            artifact_bytes: 4096,
            tool_bundle: Some(ToolBundleRef {
                sha256: "ab".repeat(32),
                env_var: "MY_TOOLS".into(),
            }),
        };
        let back = assignment_from_pb(pb::Assignment {
            job: Some(job_to_pb(&record)),
            lease: Some(lease_to_pb(&lease)),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(back.job, record);
        assert_eq!(back.lease, lease);
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        assert!(status_from_pb(0).is_err());
        assert!(status_from_pb(99).is_err());
        assert!(stream_from_pb(0).is_err());
        assert!(lease_from_pb(None).is_err());
        let running = pb::Completion {
            status: pb::JobStatus::Running as i32,
            ..Default::default()
        };
        let e = completion_from_pb(Some(running)).unwrap_err();
        assert!(e.0.contains("not a terminal"), "{e}");
        let bad_stage = pb::Completion {
            status: pb::JobStatus::Failed as i32,
            stages: vec![pb::Stage {
                name: "build".into(),
                status: 42,
                ..Default::default()
            }],
            ..Default::default()
        };
        let e = completion_from_pb(Some(bad_stage)).unwrap_err();
        assert!(e.0.contains("stage \"build\" has no valid status"), "{e}");
    }
}
