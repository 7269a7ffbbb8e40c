//! The supervisor's side of an `unsafe_fallback` job: no namespaces, seccomp or Landlock, only
//! a supervised process tree with rlimits. The supervisor becomes a child subreaper, so that
//! every orphan (a `setsid` + double-fork daemon included) is re-parented to it and killed with
//! the rest.

use std::io;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::proc_tree::descendants;
use crate::{ExitReport, SpawnSpec};

/// Runs the job as a supervised process tree in `cwd`. Returns once every process of it is
/// gone.
pub(crate) fn run(control: &mut UnixStream, spec: &SpawnSpec, cwd: &Path) -> ExitReport {
    // Become the reaper of every orphan below us, so that nothing the job starts can leave.
    // SAFETY: plain prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return super::setup_failed("subreaper", io::Error::last_os_error());
    }
    let started = Instant::now();
    let child = match spawn_job(spec, cwd) {
        Ok(child) => child,
        Err(e) => {
            let program = spec.argv.first().map(String::as_str).unwrap_or("");
            return super::setup_failed(&format!("exec {program}"), e);
        }
    };
    let pid = child.id() as i32;
    drop(child); // we reap it ourselves with wait4, for its status and usage
    crate::fd::release_stdio();
    let mut out = supervise(control, pid, started, spec.timeout_ms);
    reap_all(&mut out);
    out.wall_ms = started.elapsed().as_millis() as u64;
    add_children_usage(&mut out);
    out
}

fn spawn_job(spec: &SpawnSpec, cwd: &Path) -> io::Result<std::process::Child> {
    let (program, args) = spec
        .argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty argv"))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(&spec.env)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    let rlimits = spec.rlimits.clone();
    // SAFETY: the closure runs in the forked child of this single-threaded process and only
    // makes async-signal-safe system calls (setsid, setrlimit, prctl, sigprocmask, sigaction).
    unsafe {
        cmd.pre_exec(move || {
            // A session of its own: no controlling terminal, and its own process group.
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // If the supervisor dies, the job's main process dies with it.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            crate::fd::apply_rlimits(&rlimits).map_err(io::Error::from)?;
            // A fresh process's signal state (std resets only the mask and SIGPIPE).
            crate::signals::reset();
            Ok(())
        });
    }
    cmd.spawn()
}

/// Waits for the job's main process, serving commands and the deadline meanwhile.
fn supervise(control: &mut UnixStream, pid: i32, started: Instant, timeout_ms: u64) -> ExitReport {
    let mut out = ExitReport::default();
    let pidfd = match crate::watch::pidfd(pid) {
        Ok(fd) => fd,
        Err(e) => {
            // Should not happen on any kernel warden supports (5.3+); fail closed.
            kill_tree(libc::SIGKILL);
            out.setup_error = Some(format!("pidfd_open: {e}"));
            return out;
        }
    };
    let deadline = started + Duration::from_millis(timeout_ms);
    let mut watch = crate::watch::Watch {
        report: None,
        forwarded: 0,
        go: None,
        killed_by: None,
        kill_grace: None,
    };
    let mut signal = |sig| {
        kill_tree(sig);
        if sig == libc::SIGTERM {
            // Stopped processes see SIGTERM only once continued.
            kill_tree(libc::SIGCONT);
        }
    };
    crate::watch::wait_for(&pidfd, control, deadline, &mut watch, &mut signal);
    out.killed_by = watch.killed_by;

    let mut status = 0;
    // SAFETY: wait4 writes into the two valid out-pointers we pass.
    let rc = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::wait4(pid, &mut status, 0, &mut usage)
    };
    if rc == pid {
        if libc::WIFEXITED(status) {
            out.exit_code = Some(libc::WEXITSTATUS(status));
        } else if libc::WIFSIGNALED(status) {
            out.signal = Some(libc::WTERMSIG(status));
        }
    }
    out
}

/// Sends `signal` to every process below the supervisor.
fn kill_tree(signal: i32) -> usize {
    let me = std::process::id() as i32;
    let pids = descendants(me);
    for &p in &pids {
        // SAFETY: kill takes a pid and a signal number; a pid that already exited yields ESRCH.
        unsafe { libc::kill(p, signal) };
    }
    pids.len()
}

/// Kills whatever the job left behind and reaps everything, until no child remains.
fn reap_all(out: &mut ExitReport) {
    let mut rounds = 0u32;
    loop {
        // Reap every child that has already ended.
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes the status into a valid pointer.
            let rc = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if rc < 0 {
                return; // ECHILD: the tree is empty
            }
            if rc == 0 {
                break;
            }
        }
        let alive = kill_tree(libc::SIGKILL);
        if rounds == 0 {
            out.stragglers_killed = alive as u32;
        }
        rounds += 1;
        if alive == 0 {
            // Only zombies (or nothing): a blocking wait cannot hang now.
            let mut status = 0;
            // SAFETY: as above.
            if unsafe { libc::waitpid(-1, &mut status, 0) } < 0 {
                return;
            }
        } else {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn add_children_usage(out: &mut ExitReport) {
    // SAFETY: getrusage writes into a valid rusage struct.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let ms = |tv: libc::timeval| tv.tv_sec as u64 * 1000 + tv.tv_usec as u64 / 1000;
    out.user_cpu_ms = ms(usage.ru_utime);
    out.system_cpu_ms = ms(usage.ru_stime);
    out.max_rss_kb = usage.ru_maxrss as u64;
}
