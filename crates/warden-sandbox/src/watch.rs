//! The supervisor's wait for its job: one loop for both ways of running a job.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use crate::KilledBy;

/// How the job was asked to end, while it ran.
pub(crate) struct Watch<'a> {
    /// Bytes the init wrote on its report pipe (sandboxed jobs), collected as they come.
    pub report: Option<(&'a OwnedFd, &'a mut Vec<u8>)>,
    /// How much of the report has been looked through for stage events to forward to warden.
    pub forwarded: usize,
    /// Where warden's go-ahead for a staged job's next stage is passed on to its init.
    pub go: Option<&'a OwnedFd>,
    pub killed_by: Option<KilledBy>,
    /// After a kill, how long the process may still take to end before it is killed again
    /// (a sandboxed job's init copies the artifacts out); `None`: return at once.
    pub kill_grace: Option<std::time::Duration>,
}

/// A pidfd for `pid`, or the error that there is none.
pub(crate) fn pidfd(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Waits until the process behind `pidfd` ends. Meanwhile obeys warden on `control` (`T`:
/// `signal(SIGTERM)`, `K`: `signal(SIGKILL)`, end of stream: warden died, `signal(SIGKILL)`)
/// and kills at `deadline`. `signal` reaches every process of the job.
pub(crate) fn wait_for(
    pidfd: &OwnedFd,
    control: &mut UnixStream,
    deadline: Instant,
    watch: &mut Watch<'_>,
    signal: &mut dyn FnMut(libc::c_int),
) {
    let mut control_open = true;
    let mut deadline = deadline;
    // After the first kill: keep watching until the grace runs out, then kill again.
    let killed = |watch: &mut Watch<'_>, deadline: &mut Instant| -> bool {
        match watch.kill_grace.take() {
            Some(grace) => {
                *deadline = Instant::now() + grace;
                true
            }
            None => false,
        }
    };
    loop {
        let report_fd = watch.report.as_ref().map_or(-1, |(fd, _)| fd.as_raw_fd());
        let mut fds = [
            pidfd.as_raw_fd(),
            if control_open {
                control.as_raw_fd()
            } else {
                -1
            },
            report_fd,
        ]
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: fds is a valid array of three pollfd structs for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // Cannot watch any more: the job must not run unwatched. Twice: a sandboxed job's
            // first kill only asks its init (see `sandboxed::supervise`), the second is final.
            signal(libc::SIGKILL);
            signal(libc::SIGKILL);
            return;
        }
        if fds[2].revents != 0
            && let Some((fd, lines)) = watch.report.as_mut()
        {
            let mut buf = [0u8; 4096];
            // SAFETY: reads into a valid buffer.
            let r = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if r <= 0 {
                watch.report = None;
            } else {
                lines.extend_from_slice(&buf[..r as usize]);
                if control_open {
                    forward_stage_events(lines, &mut watch.forwarded, control);
                }
            }
        }
        if fds[0].revents != 0 {
            return;
        }
        if n == 0 && Instant::now() >= deadline {
            watch.killed_by.get_or_insert(KilledBy::Timeout);
            signal(libc::SIGKILL);
            if killed(watch, &mut deadline) {
                continue;
            }
            return;
        }
        if fds[1].revents != 0 {
            let mut cmd = [0u8; 64];
            match control.read(&mut cmd) {
                Ok(0) | Err(_) => {
                    // warden is gone: nobody will collect this job, so it must not outlive us.
                    control_open = false;
                    watch.killed_by = Some(KilledBy::Request);
                    signal(libc::SIGKILL);
                    killed(watch, &mut deadline);
                }
                Ok(n) => {
                    for &c in &cmd[..n] {
                        match c {
                            b'T' => signal(libc::SIGTERM),
                            b'G' => {
                                if let Some(go) = watch.go {
                                    crate::fd::write_all(go, b"n");
                                }
                            }
                            b'K' => {
                                watch.killed_by = Some(KilledBy::Request);
                                signal(libc::SIGKILL);
                                killed(watch, &mut deadline);
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
    }
}

/// Passes each complete line of the init's report from `from` on that is a stage event to
/// warden, as it is (the rest stays for the final report).
fn forward_stage_events(lines: &[u8], from: &mut usize, control: &mut UnixStream) {
    use std::io::Write;
    while let Some(end) = lines[*from..].iter().position(|b| *b == b'\n') {
        let line = &lines[*from..*from + end + 1];
        *from += end + 1;
        if serde_json::from_slice::<crate::StageEvent>(line).is_ok() {
            // warden may be gone: the loop then sees the control stream end.
            let _ = control.write_all(line);
        }
    }
}
