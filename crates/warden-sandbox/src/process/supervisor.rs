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
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use crate::{ExitReport, Isolation, SpawnSpec};

/// Largest spawn spec accepted: argv, env (64 params of 4 KiB each fit easily).
const MAX_SPEC_BYTES: u32 = 4 << 20;

/// Where the zygote leaves a pooled network namespace for the supervisor.
pub(crate) const NETNS_FD: i32 = 3;

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
    // warden; EPIPE is handled instead. The job gets a fresh signal state back before it
    // execs (`signals::reset`).
    block_signals(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT])?;
    // SAFETY: setting a signal to SIG_IGN installs no handler code.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };

    // SAFETY: fd 0 is the control socket warden passed us; from here this UnixStream owns it.
    let mut control = unsafe { UnixStream::from_raw_fd(0) };
    let spec = read_spec(&mut control)?;
    match &spec.isolation {
        Isolation::Sandbox(sb) => {
            let out = super::sandboxed::run(&mut control, &spec, sb, netns);
            report(&mut control, out);
            // The report is out and the control stream ends here, so warden sees the job
            // finished now; only then is the job's mount namespace let go, whose teardown
            // waits for an RCU grace period.
            let _ = control.shutdown(std::net::Shutdown::Both);
            super::sandboxed::release_namespaces();
        }
        Isolation::UnsafeFallback { cwd } => {
            let out = super::fallback::run(&mut control, &spec, cwd);
            report(&mut control, out);
        }
    }
    Ok(())
}

/// fd 3 when it is a network namespace; closed otherwise.
fn take_netns() -> Option<OwnedFd> {
    let link = std::fs::read_link(format!("/proc/self/fd/{NETNS_FD}")).ok()?;
    // SAFETY: fd 3 was left to us by the zygote (or is stale); from here we own or close it.
    let fd = unsafe { OwnedFd::from_raw_fd(NETNS_FD) };
    link.to_string_lossy().starts_with("net:").then_some(fd)
}

fn report(control: &mut UnixStream, out: ExitReport) {
    if let Ok(mut line) = serde_json::to_vec(&out) {
        line.push(b'\n');
        // warden may be gone; then nobody is waiting for the report.
        let _ = control.write_all(&line);
    }
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
