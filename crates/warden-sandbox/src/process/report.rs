//! What the init tells the supervisor on its report pipe: one JSON line per message.

use std::os::fd::OwnedFd;

use serde::{Deserialize, Serialize};

use crate::fd::write_all;
use crate::{ExitReport, StageEvent, StageReport};

/// One message from the init (pid 1 of the job's namespaces) to its supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum InitMessage {
    /// Setup failed at a step; the job never ran. `error` reads `<step>: <error>`.
    SetupFailed { error: String },
    /// The job's program exec'd (`at_us` on the host's monotonic clock).
    Execd { at_us: u64 },
    /// The job's main process ended: its wait status and the usage of the job's processes.
    Exited {
        wait_status: i32,
        user_us: i64,
        system_us: i64,
        max_rss_kb: i64,
    },
    /// `/artifacts` was copied out to the host once every process of the job was gone.
    Artifacts { copy: crate::artifacts::CopyOut },
    /// What the job changed in its writable root.
    RootChanges {
        changes: crate::overlay::RootChanges,
    },
}

impl InitMessage {
    /// Writes the message as one line (best effort: a supervisor that is gone reads nothing).
    pub(crate) fn send(&self, fd: &OwnedFd) {
        if let Ok(mut line) = serde_json::to_vec(self) {
            line.push(b'\n');
            write_all(fd, &line);
        }
    }
}

/// Writes a stage event as one line, as the init's other messages are.
pub(crate) fn send_stage(event: &StageEvent, fd: &OwnedFd) {
    if let Ok(mut line) = serde_json::to_vec(event) {
        line.push(b'\n');
        write_all(fd, &line);
    }
}

/// Folds everything the init wrote into `out`. The first setup failure wins; lines that do not
/// parse (a torn write of an init killed mid-line) are ignored. No `exited` message and no
/// failure means the init was killed before its job ended (timeout, cancel, kill), and so was
/// the job.
pub(crate) fn apply(bytes: &[u8], out: &mut ExitReport) {
    let mut exited = false;
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<InitMessage>(line) {
            Ok(InitMessage::SetupFailed { error }) => {
                out.setup_error.get_or_insert(error);
            }
            Ok(InitMessage::Exited {
                wait_status,
                user_us,
                system_us,
                max_rss_kb,
            }) => {
                if libc::WIFEXITED(wait_status) {
                    out.exit_code = Some(libc::WEXITSTATUS(wait_status));
                } else if libc::WIFSIGNALED(wait_status) {
                    out.signal = Some(libc::WTERMSIG(wait_status));
                }
                out.user_cpu_ms = user_us.max(0) as u64 / 1000;
                out.system_cpu_ms = system_us.max(0) as u64 / 1000;
                out.max_rss_kb = max_rss_kb.max(0) as u64;
                exited = true;
            }
            Ok(InitMessage::Execd { at_us }) => out.exec_mono_us = Some(at_us),
            Ok(InitMessage::Artifacts { copy }) => out.artifacts = Some(copy),
            Ok(InitMessage::RootChanges { changes }) => out.root_changes = Some(changes),
            Err(_) => {
                if let Ok(StageEvent::StageEnd {
                    index,
                    wait_status,
                    timed_out,
                    started_ms,
                    ms,
                }) = serde_json::from_slice::<StageEvent>(line)
                {
                    out.stages.push(StageReport {
                        index,
                        exit_code: libc::WIFEXITED(wait_status)
                            .then(|| libc::WEXITSTATUS(wait_status)),
                        signal: libc::WIFSIGNALED(wait_status).then(|| libc::WTERMSIG(wait_status)),
                        timed_out,
                        started_ms,
                        ms,
                    });
                }
            }
        }
    }
    if !exited && out.setup_error.is_none() {
        out.signal = Some(libc::SIGKILL);
    }
    // The job ran, but its artifacts were never (or not wholly) copied out: the init was killed
    // first (a second kill, the grace running out, or an OOM kill that took it too).
    if out.setup_error.is_none() && out.artifacts.is_none() {
        out.artifacts = Some(crate::artifacts::CopyOut {
            error: Some("not copied: the job's init ended before the copy did".into()),
            ..Default::default()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(m: &InitMessage) -> Vec<u8> {
        let mut v = serde_json::to_vec(m).unwrap();
        v.push(b'\n');
        v
    }

    fn exited(wait_status: i32) -> InitMessage {
        InitMessage::Exited {
            wait_status,
            user_us: 12_345,
            system_us: 2_000,
            max_rss_kb: 900,
        }
    }

    fn check(input: &[u8], exit_code: Option<i32>, signal: Option<i32>, error: Option<&str>) {
        let mut out = ExitReport::default();
        apply(input, &mut out);
        assert_eq!(
            (out.exit_code, out.signal, out.setup_error.as_deref()),
            (exit_code, signal, error),
            "{}",
            String::from_utf8_lossy(input)
        );
    }

    #[test]
    fn reports_fold_into_the_exit_report() {
        // exit(0), exit(3), killed by SIGSEGV: the kernel's wait-status encodings.
        check(&line(&exited(0)), Some(0), None, None);
        check(&line(&exited(3 << 8)), Some(3), None, None);
        check(
            &line(&exited(libc::SIGSEGV)),
            None,
            Some(libc::SIGSEGV),
            None,
        );
        let failed = InitMessage::SetupFailed {
            error: "mount /r/work: Permission denied".into(),
        };
        check(
            &line(&failed),
            None,
            None,
            Some("mount /r/work: Permission denied"),
        );
        // Nothing said: the init died with its job, and its artifacts were never copied.
        check(b"", None, Some(libc::SIGKILL), None);
        let mut out = ExitReport::default();
        apply(b"", &mut out);
        assert!(
            out.artifacts
                .unwrap()
                .error
                .unwrap()
                .starts_with("not copied")
        );
        // A torn line is ignored, not misread.
        check(
            b"{\"kind\":\"exited\",\"wait_st",
            None,
            Some(libc::SIGKILL),
            None,
        );
        let mut both = line(&failed);
        both.extend(line(&InitMessage::SetupFailed {
            error: "later".into(),
        }));
        check(&both, None, None, Some("mount /r/work: Permission denied"));
    }

    #[test]
    fn the_artifacts_copy_is_reported() {
        let copy = crate::artifacts::CopyOut {
            files: 2,
            bytes: 10,
            full: true,
            ..Default::default()
        };
        let mut input = line(&exited(0));
        input.extend(line(&InitMessage::Artifacts { copy: copy.clone() }));
        let mut out = ExitReport::default();
        apply(&input, &mut out);
        assert_eq!((out.exit_code, out.artifacts), (Some(0), Some(copy)));
    }

    #[test]
    fn stage_ends_become_the_reports_stages() {
        let mut input = Vec::new();
        let stage = |e: StageEvent| {
            let mut v = serde_json::to_vec(&e).unwrap();
            v.push(b'\n');
            v
        };
        input.extend(stage(StageEvent::StageStart {
            index: 0,
            wait: false,
        }));
        input.extend(stage(StageEvent::StageEnd {
            index: 0,
            wait_status: 0,
            timed_out: false,
            started_ms: 1,
            ms: 5,
        }));
        input.extend(stage(StageEvent::StageEnd {
            index: 2,
            wait_status: libc::SIGKILL,
            timed_out: true,
            started_ms: 7,
            ms: 1000,
        }));
        input.extend(line(&exited(libc::SIGKILL)));
        let mut out = ExitReport::default();
        apply(&input, &mut out);
        assert_eq!(
            out.stages,
            vec![
                StageReport {
                    index: 0,
                    exit_code: Some(0),
                    signal: None,
                    timed_out: false,
                    started_ms: 1,
                    ms: 5
                },
                StageReport {
                    index: 2,
                    exit_code: None,
                    signal: Some(libc::SIGKILL),
                    timed_out: true,
                    started_ms: 7,
                    ms: 1000
                },
            ]
        );
    }

    #[test]
    fn usage_is_converted_to_milliseconds() {
        let mut out = ExitReport::default();
        apply(&line(&exited(0)), &mut out);
        assert_eq!(
            (out.user_cpu_ms, out.system_cpu_ms, out.max_rss_kb),
            (12, 2, 900)
        );
    }
}
