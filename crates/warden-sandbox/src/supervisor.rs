//! The supervisor process, one per job, forked by the zygote (`warden __zygote`).
//!
//! It is single-threaded and runs before any async runtime exists, so it may do anything between
//! fork and exec. Setup is one straight line; each step says why.
//!
//! Protocol on fd 0 (a unix socket from warden): warden sends a little-endian `u32` length and
//! that many bytes of JSON [`SpawnSpec`], then single command bytes (`T` terminate, `K` kill).
//! The supervisor answers with one JSON [`ExitReport`] line once the job's tree is gone. EOF on
//! the socket means warden died: the tree is killed at once.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::proc_tree::descendants;
use crate::{ExitReport, Rlimits, SpawnSpec};

/// Largest spawn spec accepted: argv, env (64 params of 4 KiB each fit easily).
const MAX_SPEC_BYTES: u32 = 4 << 20;

/// Runs the supervisor and exits the process. Called in the zygote's freshly forked child,
/// with the control socket on fd 0 and the job's stdout/stderr on fds 1 and 2.
pub fn main() -> ! {
    let code = match run() {
        Ok(()) => 0,
        Err(_) => 1,
    };
    std::process::exit(code)
}

fn run() -> io::Result<()> {
    // Nothing of warden's may reach the job: close every descriptor but the ones we were given
    // (0-2, and fd 3 when the zygote left a network namespace there).
    // SAFETY: close_range only closes descriptors; none above 3 is owned by anything in this
    // fresh, single-threaded process.
    unsafe { libc::syscall(libc::SYS_close_range, (NETNS_FD + 1) as u32, u32::MAX, 0u32) };
    // fd 3 is a fresh network namespace from the zygote's pool, when it had one.
    let netns = take_netns();

    // Only warden, through the socket, decides when the job ends: a stray SIGTERM or SIGHUP to
    // the supervisor must not orphan the job. SIGPIPE would kill us when reporting to a dead
    // warden; EPIPE is handled instead. The job gets default dispositions back (std resets
    // the signal mask and SIGPIPE between fork and exec).
    block_signals(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT])?;
    // SAFETY: setting a signal to SIG_IGN installs no handler code.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };

    // SAFETY: fd 0 is the control socket warden passed us; from here this UnixStream owns it.
    let mut control = unsafe { UnixStream::from_raw_fd(0) };
    let spec = read_spec(&mut control)?;

    if spec.isolation == crate::Isolation::Sandbox {
        let out = match &spec.sandbox {
            Some(sb) => crate::sandbox::run(&mut control, &spec, sb, netns),
            None => setup_failed(
                "spec",
                io::Error::other("sandbox isolation without a sandbox spec"),
            ),
        };
        report(&mut control, out)?;
        // The report is out and the control stream ends here, so warden sees the job finished
        // now; only then is the job's mount namespace let go (see `sandbox::NAMESPACE_HOLD`),
        // whose teardown waits for an RCU grace period.
        let _ = control.shutdown(std::net::Shutdown::Both);
        crate::sandbox::release_namespaces();
        return Ok(());
    }

    // Become the reaper of every orphan below us, so that nothing the job starts can leave.
    // SAFETY: plain prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return report(
            &mut control,
            setup_failed("subreaper", io::Error::last_os_error()),
        );
    }

    let started = Instant::now();
    let child = match spawn_job(&spec) {
        Ok(child) => child,
        Err(e) => {
            let program = spec.argv.first().map(String::as_str).unwrap_or("");
            return report(&mut control, setup_failed(&format!("exec {program}"), e));
        }
    };
    let pid = child.id() as i32;
    drop(child); // we reap it ourselves with wait4, for its status and usage

    release_stdio();

    let mut out = supervise(&mut control, pid, started, &spec)?;
    reap_all(&mut out);
    out.wall_ms = started.elapsed().as_millis() as u64;
    add_children_usage(&mut out);
    report(&mut control, out)
}

/// Where the zygote leaves a pooled network namespace for the supervisor.
pub(crate) const NETNS_FD: i32 = 3;

/// fd 3 when it is a network namespace; closed otherwise.
fn take_netns() -> Option<OwnedFd> {
    let link = std::fs::read_link(format!("/proc/self/fd/{NETNS_FD}")).ok()?;
    // SAFETY: fd 3 was left to us by the zygote (or is stale); from here we own or close it.
    let fd = unsafe { OwnedFd::from_raw_fd(NETNS_FD) };
    link.to_string_lossy().starts_with("net:").then_some(fd)
}

/// Our own stdout/stderr are the job's pipes: let go of them, so that the pipes close exactly
/// when the job's last process does.
pub(crate) fn release_stdio() {
    if let Ok(devnull) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        // SAFETY: dup2 onto 1 and 2 replaces descriptors this process owns and nothing else uses.
        unsafe {
            libc::dup2(devnull.as_raw_fd(), 1);
            libc::dup2(devnull.as_raw_fd(), 2);
        }
    }
}

fn setup_failed(step: &str, e: io::Error) -> ExitReport {
    ExitReport {
        setup_error: Some(format!("{step}: {e}")),
        ..ExitReport::default()
    }
}

fn report(control: &mut UnixStream, out: ExitReport) -> io::Result<()> {
    let mut line = serde_json::to_vec(&out).map_err(io::Error::other)?;
    line.push(b'\n');
    // warden may be gone; then nobody is waiting for the report.
    let _ = control.write_all(&line);
    Ok(())
}

fn read_spec(control: &mut UnixStream) -> io::Result<SpawnSpec> {
    let mut len = [0u8; 4];
    control.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len);
    if len > MAX_SPEC_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "spawn spec too large",
        ));
    }
    let mut body = vec![0u8; len as usize];
    control.read_exact(&mut body)?;
    serde_json::from_slice(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn block_signals(signals: &[i32]) -> io::Result<()> {
    // SAFETY: sigset_t is plain data initialised by sigemptyset before use; sigprocmask only
    // reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn spawn_job(spec: &SpawnSpec) -> io::Result<std::process::Child> {
    let (program, args) = spec
        .argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty argv"))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(&spec.env)
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    let rlimits = spec.rlimits.clone();
    // SAFETY: the closure runs in the forked child of this single-threaded process and only
    // makes async-signal-safe system calls (setsid, setrlimit, prctl).
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
            apply_rlimits(&rlimits)
        });
    }
    cmd.spawn()
}

/// Sets the job's rlimits. Core dumps are always off: a dump could carry secrets out.
fn apply_rlimits(limits: &Rlimits) -> io::Result<()> {
    let set = |resource, value: u64| {
        let lim = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: setrlimit reads a valid rlimit struct.
        if unsafe { libc::setrlimit(resource, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    set(libc::RLIMIT_CORE, 0)?;
    if let Some(cpu) = limits.cpu_s {
        set(libc::RLIMIT_CPU, cpu)?;
    }
    if let Some(bytes) = limits.file_size_bytes {
        set(libc::RLIMIT_FSIZE, bytes)?;
    }
    if let Some(n) = limits.open_files {
        set(libc::RLIMIT_NOFILE, n)?;
    }
    Ok(())
}

/// Waits for the job's main process, serving commands and the deadline meanwhile.
fn supervise(
    control: &mut UnixStream,
    pid: i32,
    started: Instant,
    spec: &SpawnSpec,
) -> io::Result<ExitReport> {
    let mut out = ExitReport::default();
    let pidfd = match crate::watch::pidfd(pid) {
        Ok(fd) => fd,
        Err(e) => {
            // Should not happen on any kernel warden supports (5.3+); fail closed.
            kill_tree(libc::SIGKILL);
            out.setup_error = Some(format!("pidfd_open: {e}"));
            return Ok(out);
        }
    };
    let deadline = started + Duration::from_millis(spec.timeout_ms);
    let mut watch = crate::watch::Watch {
        report: None,
        killed_by: None,
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
    Ok(out)
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
