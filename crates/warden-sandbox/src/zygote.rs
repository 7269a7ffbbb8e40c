//! The zygote: one small, single-threaded helper process per [`Launcher`](crate::Launcher)
//! that forks a supervisor for each job. Forking it costs a fraction of executing the `warden`
//! binary afresh, and, unlike forking warden's own multi-threaded server, is safe: the zygote
//! holds no locks and no threads.
//!
//! Protocol on fd 0 (a `SOCK_SEQPACKET` socket): each request is one byte with three file
//! descriptors attached (the supervisor's control socket, the job's stdout, the job's stderr);
//! the answer is the new supervisor's pid as a little-endian `i32`. EOF means warden is gone:
//! the zygote exits (running supervisors notice warden's death on their own control sockets).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The argv[1] that turns the `warden` binary into a zygote.
pub const ZYGOTE_ARG: &str = "__zygote";

const FDS: usize = 3;

pub fn main() -> ! {
    // SAFETY: close_range closes descriptors only; nothing above 2 is ours in this fresh process.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    // Supervisors are reaped by the kernel, not left as zombies of a zygote that never waits.
    set_sigchld(libc::SIG_DFL, libc::SA_NOCLDWAIT);
    // Work every job would repeat is done once, here, and inherited by each fork.
    let _ = crate::seccomp::compiled(true);
    let _ = crate::seccomp::compiled(false);
    let mut pool = NetnsPool::new();
    pool.refill();
    loop {
        let fds = match receive() {
            Ok(Some(fds)) => fds,
            Ok(None) | Err(_) => std::process::exit(0),
        };
        let netns = pool.take();
        // SAFETY: fork of this single-threaded process; the child becomes a supervisor.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            become_supervisor(&fds, netns.as_ref());
        }
        drop((fds, netns));
        let answer = pid.to_le_bytes();
        // SAFETY: writes a valid 4-byte buffer to our socket.
        if unsafe { libc::write(0, answer.as_ptr().cast(), answer.len()) } < 0 {
            std::process::exit(0);
        }
        // Off the critical path: the next job finds its network namespace ready. Done at idle
        // priority, so it takes only CPU time that the job just started does not want.
        set_idle(true);
        pool.refill();
        set_idle(false);
    }
}

/// Fresh, never-used network namespaces with loopback up, held by descriptor. Creating one is
/// the costliest step of a sandbox's setup (≈ 0.4 ms here), so the zygote makes them between
/// requests. Each is handed to exactly one job. Disabled when the zygote may not create them.
struct NetnsPool {
    home: Option<OwnedFd>,
    ready: Vec<OwnedFd>,
}

const NETNS_POOL: usize = 2;

impl NetnsPool {
    fn new() -> NetnsPool {
        let home = std::fs::File::open("/proc/self/ns/net")
            .ok()
            .map(OwnedFd::from);
        NetnsPool {
            home,
            ready: Vec::new(),
        }
    }

    fn take(&mut self) -> Option<OwnedFd> {
        self.ready.pop()
    }

    fn refill(&mut self) {
        while self.ready.len() < NETNS_POOL {
            match self.make() {
                Some(ns) => self.ready.push(ns),
                None => {
                    self.home = None; // not permitted here: stop trying
                    return;
                }
            }
        }
    }

    fn make(&self) -> Option<OwnedFd> {
        let home = self.home.as_ref()?;
        // SAFETY: this single-threaded process enters a new network namespace, takes a handle
        // on it, and goes straight back home.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNET) != 0 {
                return None;
            }
            let ready = crate::net::loopback_up().is_ok();
            let ns = std::fs::File::open("/proc/self/ns/net")
                .ok()
                .map(OwnedFd::from);
            if libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                // Cannot go home: never hand out work from a wrong namespace again.
                std::process::exit(1);
            }
            if ready { ns } else { None }
        }
    }
}

fn set_idle(idle: bool) {
    let policy = if idle {
        libc::SCHED_IDLE
    } else {
        libc::SCHED_OTHER
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: changes this thread's scheduling policy; reads a valid sched_param.
    unsafe { libc::sched_setscheduler(0, policy, &param) };
}

fn set_sigchld(handler: libc::sighandler_t, flags: libc::c_int) {
    // SAFETY: installs a plain disposition (no handler code) for SIGCHLD.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler;
        sa.sa_flags = flags;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGCHLD, &sa, std::ptr::null_mut());
    }
}

fn become_supervisor(fds: &[OwnedFd], netns: Option<&OwnedFd>) -> ! {
    // The supervisor waits for its own children: undo the zygote's no-zombie setting.
    set_sigchld(libc::SIG_DFL, 0);
    // SAFETY: dup2/close on descriptors of this fresh child; the sources stay valid until the
    // supervisor closes everything it does not need.
    // The received descriptors are all above 2, so placing them first clobbers nothing; fd 3
    // is settled after, when none of them is needed under its old number any more.
    unsafe {
        for (target, fd) in fds.iter().enumerate() {
            libc::dup2(fd.as_raw_fd(), target as RawFd);
        }
        match netns {
            Some(ns) => libc::dup2(ns.as_raw_fd(), crate::process::supervisor::NETNS_FD),
            None => libc::close(crate::process::supervisor::NETNS_FD),
        };
    }
    crate::process::supervisor::main()
}

/// One request: three descriptors, or `None` at EOF.
fn receive() -> io::Result<Option<Vec<OwnedFd>>> {
    let Some((_, fds)) = crate::fd::recv_fds(0, FDS)? else {
        return Ok(None);
    };
    if fds.len() != FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "expected three descriptors",
        ));
    }
    Ok(Some(fds))
}

/// warden's side: sends one request (one byte with the three descriptors attached).
pub(crate) fn send(sock: std::os::fd::BorrowedFd<'_>, fds: [&OwnedFd; FDS]) -> io::Result<()> {
    crate::fd::send_fds(sock.as_raw_fd(), b'S', &fds.map(|f| f.as_raw_fd()))
}

/// warden's side: decodes the answer to a request, the supervisor's pid.
pub(crate) fn decode_pid(answer: &[u8]) -> io::Result<i32> {
    let pid: [u8; 4] = answer
        .try_into()
        .map_err(|_| io::Error::new(io::ErrorKind::UnexpectedEof, "zygote gone"))?;
    let pid = i32::from_le_bytes(pid);
    if pid < 0 {
        return Err(io::Error::other("zygote could not fork"));
    }
    Ok(pid)
}

/// A seqpacket socket pair, both ends close-on-exec.
pub(crate) fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two new descriptors into the array.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
