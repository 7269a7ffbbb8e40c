//! After a job: `artifact.json` and the completion the coordinator records.

use std::path::Path;

use warden_api::{JobStatus, ResourceUsage, rfc3339};
use warden_sandbox::Tier;
use warden_store::{Completion, JobRecord};

use super::execute::ExecInfo;
use crate::artifact::{ArtifactJson, CheckoutSummary, LogSummary, ReviewFields, Timings};
use crate::artifact_dir;

/// What the record is made of, besides the job and its completion.
pub(super) struct RecordInput<'a> {
    pub job: &'a JobRecord,
    pub done: &'a Completion,
    pub started_ms: i64,
    pub finished_ms: i64,
    pub info: Option<&'a ExecInfo>,
    pub tier: Tier,
    pub checkout: Option<CheckoutSummary>,
}

/// The resources the supervisor measured, for the completion.
pub(super) fn resources(info: Option<&ExecInfo>) -> Option<ResourceUsage> {
    info.and_then(|i| i.report.as_ref()).map(|r| ResourceUsage {
        wall_ms: r.wall_ms,
        user_cpu_ms: r.user_cpu_ms,
        system_cpu_ms: r.system_cpu_ms,
        max_rss_kb: r.max_rss_kb,
        peak_memory_bytes: r.peak_memory_bytes,
        cpu_throttled_ms: r.cpu_throttled_ms,
    })
}

/// `artifact.json` for a finished job whose artifact directory is `dir`.
pub(super) fn artifact_record(input: RecordInput<'_>, dir: &Path) -> ArtifactJson {
    let RecordInput {
        job,
        done,
        started_ms,
        finished_ms,
        info,
        tier,
        checkout,
    } = input;
    let (stdout_bytes, stderr_bytes) = info.map(|i| i.log_bytes).unwrap_or_default();
    // warden's own files are not the job's outputs.
    let mut ours = vec!["artifact.json"];
    if info.is_some_and(|i| i.egress.is_some()) {
        ours.push("egress.jsonl");
    }
    if info.is_some_and(|i| i.report.as_ref().is_some_and(|r| r.root_changes.is_some())) {
        ours.push("changes.json");
    }
    let (files, files_truncated) = files(dir, &ours);
    ArtifactJson {
        job_id: job.id.to_string(),
        job_type: job.job_type.clone(),
        tenant: job.tenant.clone(),
        repo: job.repo_name.clone(),
        remote_url: job.remote_url.clone(),
        sha: job.sha.clone(),
        params: job.params.clone(),
        status: done.status.unwrap_or(JobStatus::Error),
        reason: done.reason.clone(),
        exit_code: done.exit_code,
        signal: done.signal,
        attempt: job.attempts,
        timings: Timings {
            created_at: rfc3339(job.created_at),
            started_at: Some(rfc3339(started_ms)),
            finished_at: rfc3339(finished_ms),
            queue_ms: (started_ms - job.created_at).max(0) as u64,
            wall_ms: done.resources.as_ref().map(|r| r.wall_ms).unwrap_or(0),
        },
        resources: done.resources.clone(),
        limits: info.map(|i| i.limits.clone()).unwrap_or_default(),
        invariants: done.invariants.clone().unwrap_or_default(),
        git_ref: job.git_ref.clone(),
        checkout,
        isolation: tier.as_str().into(),
        unsafe_fallback: tier == Tier::UnsafeFallback,
        warnings: done.warnings.clone(),
        log: LogSummary {
            stdout_bytes,
            stderr_bytes,
            truncated: done.log_truncated,
        },
        stages: done.stages.clone(),
        tests: done.tests.clone(),
        outputs: info.map(|i| i.job_outputs.clone()).unwrap_or_default(),
        review: info.and_then(|i| i.review.as_ref()).map(|r| ReviewFields {
            size_cap_exceeded: r.is_some(),
            review_packets_archive: r.as_ref().map(|f| f.review_packets_archive.clone()),
            review_packets_dir: r.as_ref().map(|f| f.review_packets_dir.clone()),
            size_cap_fallback: r.clone(),
        }),
        files,
        files_truncated,
    }
}

/// Relative paths of the regular files the job left, never following links; warden's own
/// files (`ours`: `artifact.json`, `egress.jsonl`, `changes.json`) excluded; and whether the
/// listing stopped at its limit.
fn files(dir: &Path, ours: &[&str]) -> (Vec<String>, bool) {
    let listing = artifact_dir::list(dir);
    let files = listing
        .entries
        .into_iter()
        .filter(|e| e.kind == artifact_dir::EntryKind::File)
        .filter(|e| !ours.iter().any(|o| e.path == Path::new(o)))
        .map(|e| e.path.to_string_lossy().into_owned())
        .collect();
    (files, listing.truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_says_what_ran_and_how() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("out")).unwrap();
        std::fs::write(dir.path().join("out/a.txt"), "x").unwrap();
        std::fs::write(dir.path().join("artifact.json"), "{}").unwrap();
        let job = crate::run::tests::record();
        let done = Completion {
            status: Some(JobStatus::Failed),
            reason: Some("exit_code: 2".into()),
            exit_code: Some(2),
            ..Completion::default()
        };
        let info = ExecInfo {
            log_bytes: (10, 20),
            ..ExecInfo::default()
        };
        let rec = artifact_record(
            RecordInput {
                job: &job,
                done: &done,
                started_ms: job.created_at + 1500,
                finished_ms: job.created_at + 2000,
                info: Some(&info),
                tier: Tier::UnsafeFallback,
                checkout: None,
            },
            dir.path(),
        );
        assert_eq!(rec.status, JobStatus::Failed);
        assert_eq!(rec.reason.as_deref(), Some("exit_code: 2"));
        assert_eq!(rec.timings.queue_ms, 1500);
        assert_eq!((rec.log.stdout_bytes, rec.log.stderr_bytes), (10, 20));
        assert_eq!(rec.isolation, "unsafe_fallback");
        assert!(rec.unsafe_fallback);
        assert_eq!(rec.files, ["out/a.txt"]);
        assert!(!rec.files_truncated);
    }
}
