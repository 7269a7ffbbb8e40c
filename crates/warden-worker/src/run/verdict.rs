//! How a job ended, decided from facts alone: what the supervisor reported, how the run loop
//! ended, and the clean-tree proof. Pure, so that every status and reason is unit-tested.

use warden_api::{JobStatus, StageRecord, StageStatus};
use warden_repo::RepoError;
use warden_sandbox::{ExitReport, KilledBy};
use warden_store::Completion;

/// Why a job was refused before it ran (or could not be started): a machine-readable code and
/// a message that says what to fix. Recorded as the reason `<code>: <message>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }

    pub fn reason(&self) -> String {
        format!("{}: {}", self.code, self.message)
    }
}

impl From<RepoError> for Refusal {
    fn from(e: RepoError) -> Refusal {
        let text = e.to_string();
        let message = text
            .strip_prefix(&format!("{}: ", e.code()))
            .unwrap_or(&text)
            .to_string();
        Refusal::new(e.code(), message)
    }
}

/// What to tell the coordinator at the end. (One per job, moved a few times: its size does
/// not matter.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    Complete(Completion),
    /// Back to the queue (shutdown): the attempt does not count.
    Release,
    /// The lease was lost: someone else owns the job now; say nothing.
    Abandon,
}

impl Outcome {
    pub fn ended(status: JobStatus, reason: impl Into<String>) -> Outcome {
        Outcome::Complete(Completion {
            status: Some(status),
            reason: Some(reason.into()),
            ..Completion::default()
        })
    }

    pub fn refused(r: &Refusal) -> Outcome {
        Outcome::ended(JobStatus::Error, r.reason())
    }
}

/// How the worker's watch over a running job ended, beside the supervisor's report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RunEnd {
    pub cancelled: bool,
    pub shutting_down: bool,
    pub lease_lost: bool,
    /// The output cap was reached (the job was killed for it).
    pub output_truncated: bool,
    /// A cap of its egress policy was reached (the job was killed for it).
    pub network_limit: bool,
}

/// The clean-tree proof of a job that ran on a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Proof {
    /// No repository, or the job never ran.
    NotMade,
    Clean,
    Changed {
        count: usize,
        /// A few changed paths, for the reason.
        shown: Vec<String>,
        sha: String,
    },
    /// The proof could not be made: fail closed.
    Failed(String),
}

/// What the record must say about limits beside the status: the job filled its artifacts
/// (`ARTIFACTS_LIMIT`: it met `ENOSPC`; its status is its own exit's), they could not all be
/// copied out (`ARTIFACTS_INCOMPLETE`), or a limit was accepted as not enforced on this host
/// (`LIMITS_NOT_ENFORCED`, the enforcement map says which).
fn limit_warnings(report: &ExitReport) -> Vec<String> {
    let mut w = Vec::new();
    if let Some(a) = &report.artifacts {
        if a.full {
            w.push("ARTIFACTS_LIMIT".to_string());
        }
        if a.error.is_some() {
            w.push("ARTIFACTS_INCOMPLETE".to_string());
        }
    }
    if report
        .enforcement
        .values()
        .any(|v| v.starts_with("not enforced"))
    {
        w.push("LIMITS_NOT_ENFORCED".to_string());
    }
    w
}

/// The job's end from the supervisor's report, the run loop and (a staged job) its stages,
/// then the proof over it.
pub(crate) fn verdict(
    report: &ExitReport,
    end: RunEnd,
    proof: &Proof,
    stages: &[StageRecord],
) -> Outcome {
    let mut outcome = exit_verdict(report, end, stages);
    if let Outcome::Complete(done) = &mut outcome {
        done.stages = stages.to_vec();
    }
    apply_proof(outcome, proof)
}

/// A staged job's stage table: each stage's end from the report, its log range from where the
/// worker saw it start (`marks`: index, stdout and stderr offsets) to where the next one
/// started or the log ends (`log_bytes`). `specs`: each stage's name and `always`.
pub(crate) fn stage_records(
    specs: &[(String, bool)],
    report: Option<&ExitReport>,
    marks: &[(usize, u64, u64)],
    log_bytes: (u64, u64),
) -> Vec<StageRecord> {
    let ran = |i: usize| report.and_then(|r| r.stages.iter().find(|s| s.index == i));
    let mut ranges = vec![([0u64; 2], [0u64; 2]); specs.len()];
    let mut end = log_bytes;
    for i in (0..specs.len()).rev() {
        match marks.iter().find(|m| m.0 == i) {
            Some(&(_, out, err)) => {
                ranges[i] = ([out, end.0.max(out)], [err, end.1.max(err)]);
                end = (out, err);
            }
            None => ranges[i] = ([end.0; 2], [end.1; 2]),
        }
    }
    let mut failed_before = false;
    specs
        .iter()
        .enumerate()
        .map(|(i, (name, always))| {
            let (status, exit_code, signal, started_ms, duration_ms) = match ran(i) {
                Some(r) => {
                    let status = if r.timed_out {
                        StageStatus::TimedOut
                    } else if r.exit_code == Some(0) {
                        StageStatus::Succeeded
                    } else {
                        StageStatus::Failed
                    };
                    (
                        status,
                        r.exit_code,
                        r.signal,
                        Some(r.started_ms),
                        Some(r.ms),
                    )
                }
                // Not run because an earlier stage failed, or never reached or finished
                // (cancelled, killed, out of time, or setup failed).
                None if failed_before && !always => (StageStatus::Skipped, None, None, None, None),
                None => (StageStatus::NotRun, None, None, None, None),
            };
            if matches!(status, StageStatus::Failed | StageStatus::TimedOut) {
                failed_before = true;
            }
            StageRecord {
                name: name.clone(),
                status,
                always: *always,
                exit_code,
                signal,
                started_ms,
                duration_ms,
                stdout: ranges[i].0,
                stderr: ranges[i].1,
            }
        })
        .collect()
}

fn exit_verdict(report: &ExitReport, end: RunEnd, stages: &[StageRecord]) -> Outcome {
    if let Some(err) = &report.setup_error {
        return Outcome::refused(&Refusal::new("sandbox_setup_failed", err.clone()));
    }
    let ended_by_kill = report.killed_by.is_some();
    let mut warnings = Vec::new();
    let (status, reason) = if end.lease_lost {
        return Outcome::Abandon;
    } else if end.cancelled {
        (JobStatus::Cancelled, Some("cancelled".to_string()))
    } else if end.shutting_down && ended_by_kill {
        return Outcome::Release;
    } else if end.output_truncated {
        (JobStatus::Failed, Some("output_limit".to_string()))
    } else if end.network_limit {
        (JobStatus::Failed, Some("network_limit".to_string()))
    } else if report.killed_by == Some(KilledBy::Timeout) {
        (JobStatus::TimedOut, Some("timed_out".to_string()))
    } else if report.exit_code == Some(0) {
        if let Some(limit) = &report.limit_hit {
            // It hit a limit (e.g. a fork failed at pids.max) and still succeeded.
            warnings.push(format!("{}_HIT", limit.to_uppercase()));
        }
        (JobStatus::Succeeded, None)
    } else if let Some(stage) = stages
        .iter()
        .find(|s| matches!(s.status, StageStatus::Failed | StageStatus::TimedOut))
    {
        // The stage table says how each ended; a limit that ended one is a warning beside it.
        if let Some(limit) = &report.limit_hit {
            warnings.push(format!("{}_HIT", limit.to_uppercase()));
        }
        if stage.status == StageStatus::TimedOut {
            (
                JobStatus::TimedOut,
                Some(format!("stage_timed_out: {}", stage.name)),
            )
        } else {
            (
                JobStatus::Failed,
                Some(format!("stage_failed: {}", stage.name)),
            )
        }
    } else if let Some(limit) = &report.limit_hit {
        (JobStatus::Failed, Some(limit.clone()))
    } else if let Some(sig) = report.signal {
        (JobStatus::Failed, Some(format!("signal: {sig}")))
    } else {
        (
            JobStatus::Failed,
            Some(format!("exit_code: {}", report.exit_code.unwrap_or(-1))),
        )
    };
    warnings.extend(limit_warnings(report));
    Outcome::Complete(Completion {
        status: Some(status),
        reason,
        exit_code: report.exit_code,
        signal: report.signal,
        warnings,
        log_truncated: end.output_truncated,
        enforcement: report.enforcement.clone(),
        ..Completion::default()
    })
}

/// Whatever the job did or how it ended, the tree it saw must still be the commit: a
/// difference ends it `mutation_detected`, a proof that cannot be made `error`.
pub(crate) fn apply_proof(mut outcome: Outcome, proof: &Proof) -> Outcome {
    let (status, reason) = match proof {
        Proof::NotMade | Proof::Clean => return outcome,
        Proof::Changed { count, shown, sha } => (
            JobStatus::MutationDetected,
            format!(
                "mutation_detected: {count} path(s) differ from commit {sha}: {}{}",
                shown.join(", "),
                if *count > shown.len() { ", ..." } else { "" }
            ),
        ),
        Proof::Failed(e) => (JobStatus::Error, e.clone()),
    };
    if let Outcome::Complete(done) = &mut outcome {
        done.status = Some(status);
        done.reason = Some(reason);
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(exit: Option<i32>, signal: Option<i32>) -> ExitReport {
        ExitReport {
            exit_code: exit,
            signal,
            ..ExitReport::default()
        }
    }

    fn with(mut r: ExitReport, f: impl FnOnce(&mut ExitReport)) -> ExitReport {
        f(&mut r);
        r
    }

    /// `(status, reason, warnings)`, or `release` / `abandon`.
    fn shape(o: &Outcome) -> String {
        match o {
            Outcome::Release => "release".into(),
            Outcome::Abandon => "abandon".into(),
            Outcome::Complete(c) => format!(
                "{} {} {:?}",
                c.status.map(|s| s.as_str()).unwrap_or("-"),
                c.reason.as_deref().unwrap_or("-"),
                c.warnings
            ),
        }
    }

    #[test]
    fn every_status_and_reason() {
        let ok = report(Some(0), None);
        let killed = |by| with(report(None, Some(9)), |r| r.killed_by = Some(by));
        let end = RunEnd::default();
        let cancelled = RunEnd {
            cancelled: true,
            ..end
        };
        let stopping = RunEnd {
            shutting_down: true,
            ..end
        };
        let lost = RunEnd {
            lease_lost: true,
            ..end
        };
        let capped = RunEnd {
            output_truncated: true,
            ..end
        };
        let changed = Proof::Changed {
            count: 7,
            shown: vec!["\"a\"".into(), "\"b\"".into()],
            sha: "abc".into(),
        };
        let failed = Proof::Failed("clean_tree_proof_failed: git status: exit 128".into());
        let setup = with(ok.clone(), |r| {
            r.setup_error = Some("mount /work: EPERM".into())
        });
        let table: &[(&ExitReport, RunEnd, &Proof, &str)] = &[
            (&ok, end, &Proof::NotMade, "succeeded - []"),
            (&ok, end, &Proof::Clean, "succeeded - []"),
            (
                &report(Some(3), None),
                end,
                &Proof::NotMade,
                "failed exit_code: 3 []",
            ),
            (
                &report(None, Some(11)),
                end,
                &Proof::NotMade,
                "failed signal: 11 []",
            ),
            (
                &report(None, None),
                end,
                &Proof::NotMade,
                "failed exit_code: -1 []",
            ),
            (
                &killed(KilledBy::Timeout),
                end,
                &Proof::NotMade,
                "timed_out timed_out []",
            ),
            (
                &killed(KilledBy::Request),
                cancelled,
                &Proof::NotMade,
                "cancelled cancelled []",
            ),
            (
                &killed(KilledBy::Request),
                capped,
                &Proof::NotMade,
                "failed output_limit []",
            ),
            (
                &killed(KilledBy::Request),
                stopping,
                &Proof::NotMade,
                "release",
            ),
            // Shutting down, but the job ended on its own first: its own end counts.
            (&ok, stopping, &Proof::NotMade, "succeeded - []"),
            (&killed(KilledBy::Request), lost, &Proof::NotMade, "abandon"),
            (
                &with(report(None, Some(9)), |r| {
                    r.limit_hit = Some("memory_limit".into())
                }),
                end,
                &Proof::NotMade,
                "failed memory_limit []",
            ),
            (
                &with(ok.clone(), |r| r.limit_hit = Some("pids_limit".into())),
                end,
                &Proof::NotMade,
                "succeeded - [\"PIDS_LIMIT_HIT\"]",
            ),
            (
                &setup,
                end,
                &Proof::NotMade,
                "error sandbox_setup_failed: mount /work: EPERM []",
            ),
            (
                &with(report(None, Some(25)), |r| {
                    r.limit_hit = Some("file_size_limit".into())
                }),
                end,
                &Proof::NotMade,
                "failed file_size_limit []",
            ),
            (
                &with(report(None, Some(24)), |r| {
                    r.limit_hit = Some("cpu_limit".into())
                }),
                end,
                &Proof::NotMade,
                "failed cpu_limit []",
            ),
            // A full /artifacts: the job met ENOSPC; its own exit decides the status.
            (
                &with(report(Some(1), None), |r| {
                    r.artifacts = Some(warden_sandbox::artifacts::CopyOut {
                        full: true,
                        ..Default::default()
                    })
                }),
                end,
                &Proof::NotMade,
                "failed exit_code: 1 [\"ARTIFACTS_LIMIT\"]",
            ),
            (
                &with(ok.clone(), |r| {
                    r.artifacts = Some(warden_sandbox::artifacts::CopyOut {
                        error: Some("EIO".into()),
                        ..Default::default()
                    });
                    r.enforcement
                        .insert("memory".into(), "not enforced (none)".into());
                }),
                end,
                &Proof::NotMade,
                "succeeded - [\"ARTIFACTS_INCOMPLETE\", \"LIMITS_NOT_ENFORCED\"]",
            ),
            // The proof overrides whatever the job's own end was.
            (
                &ok,
                end,
                &changed,
                "mutation_detected mutation_detected: 7 path(s) differ from commit abc: \"a\", \"b\", ... []",
            ),
            (
                &report(Some(1), None),
                end,
                &failed,
                "error clean_tree_proof_failed: git status: exit 128 []",
            ),
            (
                &killed(KilledBy::Request),
                cancelled,
                &changed,
                "mutation_detected mutation_detected: 7 path(s) differ from commit abc: \"a\", \"b\", ... []",
            ),
            // ... but not a lease someone else holds now, nor a job going back to the queue.
            (&killed(KilledBy::Request), lost, &changed, "abandon"),
            (&killed(KilledBy::Request), stopping, &changed, "release"),
        ];
        for (i, (report, end, proof, want)) in table.iter().enumerate() {
            assert_eq!(shape(&verdict(report, *end, proof, &[])), *want, "row {i}");
        }
    }

    #[test]
    fn a_completion_carries_the_report_facts() {
        let r = ExitReport {
            exit_code: Some(0),
            enforcement: [("memory".to_string(), "cgroup v1 (no swap)".to_string())].into(),
            ..ExitReport::default()
        };
        let capped = RunEnd {
            output_truncated: true,
            ..RunEnd::default()
        };
        let Outcome::Complete(c) = verdict(&r, capped, &Proof::Clean, &[]) else {
            panic!("not complete");
        };
        assert!(c.log_truncated);
        assert_eq!(c.exit_code, Some(0));
        assert_eq!(c.enforcement["memory"], "cgroup v1 (no swap)");
    }

    #[test]
    fn repository_errors_keep_their_code() {
        let r = Refusal::from(RepoError::FetchTimeout(600));
        assert_eq!(r.code, "fetch_timeout");
        assert_eq!(
            r.reason(),
            "fetch_timeout: fetching took longer than 600 s (git.fetch_timeout_s)"
        );
    }
}
