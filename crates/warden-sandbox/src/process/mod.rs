//! The processes of a job, one file each (see docs/sandbox.md):
//!
//! - [`supervisor`]: forked by the zygote per job; reads the spawn spec and reports the end;
//! - [`sandboxed`]: the supervisor's side of a sandboxed job (cgroup, clone, watch, kill);
//! - [`init`]: pid 1 of the job's namespaces (root, cgroup entry, uid map, reaping);
//! - [`job`]: pid 2, which drops every privilege and execs the job (or, staged, runs its stages);
//! - [`stages`]: a staged job's pipeline, as its init runs it;
//! - [`fallback`]: the supervisor's side of an `unsafe_fallback` job (a subreaper, rlimits);
//! - [`report`]: the typed message the init sends the supervisor.

mod fallback;
mod init;
mod job;
mod report;
mod sandboxed;
mod stages;
pub mod supervisor;

use std::io;

use crate::ExitReport;

fn setup_failed(step: &str, e: impl std::fmt::Display) -> ExitReport {
    ExitReport {
        setup_error: Some(format!("{step}: {e}")),
        ..ExitReport::default()
    }
}

/// Waits for `pid` (retrying on EINTR) and returns its wait status.
pub(crate) fn reap(pid: i32) -> i32 {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes into a valid int.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return status;
        }
    }
}
