//! A staged job's pipeline, run by its init (see docs/pipelines.md): a go-ahead from warden
//! before each stage but the first, the stage handed to the stage runner (`job.rs`), orphans
//! reaped while it runs, its own timeout, and how it ended reported to the supervisor.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};

use seccompiler::BpfProgram;

use super::init::{STOP, block, end_everything, start_job};
use crate::fd::{pipe, wait_byte, write_all};
use crate::sys::{Step, StepError};
use crate::{SandboxSpec, SpawnSpec};

/// Runs a staged job's stages one after another; returns the wait status of the first that
/// failed (0 when none did). Before each stage the init says so and waits for warden's go-ahead
/// on `go` (warden stores the output so far first, so each stage's log begins exactly where
/// it starts); after it, how it ended. The stages are forked by a stage runner (a job process
/// set up once, see `job.rs`), started again when a kill took it. A stage that fails skips the
/// rest but `always` ones; a cancel or kill (`STOP`) ends the pipeline; a stage past its
/// `timeout_ms` is killed with every process of the job. A stage that cannot be started fails
/// with 127 and says why on stderr.
pub(super) fn run_stages(
    spec: &SpawnSpec,
    sandbox: &SandboxSpec,
    filters: &[BpfProgram],
    go: &OwnedFd,
    report: &OwnedFd,
) -> i32 {
    use std::sync::atomic::Ordering::SeqCst;
    let started = std::time::Instant::now();
    // Orphans are reaped while a stage runs: SIGCHLD (blocked but while waiting) wakes the wait.
    let waiting = block(libc::SIGCHLD);
    // SAFETY: a handler that does nothing: it only makes SIGCHLD interrupt the wait.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = child_ended as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGCHLD, &sa, std::ptr::null_mut());
    }
    let mut runner: Option<Runner> = None;
    let mut failed: Option<i32> = None;
    for (index, stage) in spec.stages.iter().enumerate() {
        if STOP.load(SeqCst) || (failed.is_some() && !stage.always) {
            continue;
        }
        // Before the first stage the job has written nothing: no output to store first.
        let wait = index > 0;
        super::report::send_stage(&crate::StageEvent::StageStart { index, wait }, report);
        if (wait && !wait_byte(go)) || STOP.load(SeqCst) {
            // The supervisor is gone (the job is being torn down) or the job was stopped.
            break;
        }
        let began = std::time::Instant::now();
        STAGE_TIMED_OUT.store(false, SeqCst);
        let result = match runner.take() {
            Some(r) => Ok(r),
            None => Runner::start(spec, sandbox, filters),
        }
        .map(|r| {
            // Whole seconds (a stage's timeout_s), at least one.
            if let Some(ms) = stage.timeout_ms {
                // SAFETY: alarm only arms a timer.
                unsafe { libc::alarm(ms.div_ceil(1000).clamp(1, u32::MAX as u64) as u32) };
            }
            let ended = r.run(index, &waiting);
            // SAFETY: as above; 0 disarms it.
            unsafe { libc::alarm(0) };
            match ended {
                Some(done) => {
                    runner = Some(r);
                    done
                }
                // The runner died (a kill took it, or the stage did): how its stage ended is
                // unknown, so it ends here with every process of the job, as a timeout ends
                // one; the runner is started again for the next stage.
                None => {
                    end_everything();
                    (libc::SIGKILL, String::new())
                }
            }
        });
        let status = match result {
            Ok((status, why)) if why.is_empty() => status,
            Ok((_, why)) | Err(StepError(why)) => {
                let why = format!("warden: stage {}: {why}\n", stage.name);
                // SAFETY: fd 2 is the job's stderr, still held by the init.
                write_all(
                    unsafe { std::os::fd::BorrowedFd::borrow_raw(2) },
                    why.as_bytes(),
                );
                127 << 8
            }
        };
        let timed_out = STAGE_TIMED_OUT.load(SeqCst);
        let ms = |d: std::time::Duration| d.as_millis() as u64;
        super::report::send_stage(
            &crate::StageEvent::StageEnd {
                index,
                wait_status: status,
                timed_out,
                started_ms: ms(began - started),
                ms: ms(began.elapsed()),
            },
            report,
        );
        if (status != 0 || timed_out) && failed.is_none() {
            failed = Some(if status == 0 { libc::SIGKILL } else { status });
        }
    }
    failed.unwrap_or(0)
}

extern "C" fn child_ended(_: libc::c_int) {}

/// The init's side of a staged job's stage runner.
struct Runner {
    run: OwnedFd,
    done: std::fs::File,
}

impl Runner {
    /// Forks the runner through every step a job's process takes (its own user namespace,
    /// dropped privileges, Landlock, seccomp); it then waits for stages instead of exec'ing.
    fn start(spec: &SpawnSpec, sandbox: &SandboxSpec, filters: &[BpfProgram]) -> Step<Runner> {
        let (run_r, run_w) = pipe()?;
        let (done_r, done_w) = pipe()?;
        let pipes = super::job::RunnerPipes {
            run: run_r,
            done: done_w,
        };
        start_job(spec, sandbox, filters, Some(pipes))?;
        Ok(Runner {
            run: run_w,
            done: std::fs::File::from(done_r),
        })
    }

    /// Has stage `index` run; reaps orphans meanwhile. Its wait status and why it could not be
    /// started (empty when it was), or `None` when the runner is gone (killed with the stage).
    fn run(&self, index: usize, waiting: &libc::sigset_t) -> Option<(i32, String)> {
        write_all(&self.run, &(index as u32).to_le_bytes());
        loop {
            reap_orphans();
            let mut fd = libc::pollfd {
                fd: self.done.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, no timeout, a valid signal mask.
            let rc = unsafe { libc::ppoll(&mut fd, 1, std::ptr::null(), waiting) };
            if rc > 0 {
                break;
            }
            if rc < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                return None;
            }
        }
        let mut head = [0u8; 8];
        let mut done = &self.done;
        done.read_exact(&mut head).ok()?;
        let status = i32::from_le_bytes(head[..4].try_into().ok()?);
        let len = u32::from_le_bytes(head[4..].try_into().ok()?) as usize;
        let mut why = vec![0u8; len.min(64 << 10)];
        done.read_exact(&mut why).ok()?;
        Some((status, String::from_utf8_lossy(&why).into_owned()))
    }
}

/// Reaps every process of the namespace that has ended, without waiting.
fn reap_orphans() {
    loop {
        let mut st = 0;
        // SAFETY: waitpid writes into a valid int.
        if unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) } <= 0 {
            return;
        }
    }
}

/// Set when the running stage's own timeout killed it.
pub(super) static STAGE_TIMED_OUT: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

pub(super) extern "C" fn stage_timeout(_: libc::c_int) {
    STAGE_TIMED_OUT.store(true, std::sync::atomic::Ordering::SeqCst);
    // SAFETY: as above.
    unsafe { libc::kill(-1, libc::SIGKILL) };
}
