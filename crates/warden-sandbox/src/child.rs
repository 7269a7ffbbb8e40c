//! Limits for warden's own helper processes (git), applied between fork and exec.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// What a helper process is held to.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChildLimits {
    /// The file-creation mask (e.g. `0o222`: everything it creates is read-only).
    pub umask: Option<u32>,
    /// `RLIMIT_FSIZE`: no file it writes may grow beyond this; a write past it fails and the
    /// process gets SIGXFSZ.
    pub file_size_bytes: Option<u64>,
}

/// Arranges for `cmd`'s process to start with `limits` applied.
pub fn apply(cmd: &mut Command, limits: ChildLimits) {
    if limits.umask.is_none() && limits.file_size_bytes.is_none() {
        return;
    }
    // SAFETY: the closure runs in the child between fork and exec and only makes the
    // async-signal-safe system calls umask(2) and setrlimit(2) on plain values it captured.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(mask) = limits.umask {
                libc::umask(mask as libc::mode_t);
            }
            if let Some(bytes) = limits.file_size_bytes {
                let rl = libc::rlimit {
                    rlim_cur: bytes,
                    rlim_max: bytes,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &rl) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Arranges for `cmd`'s process to find `fd` open at descriptor number `at` (say 3), and for
/// no other process to get it: `fd` itself is close-on-exec, its copy at `at` is not.
pub fn pass_fd(cmd: &mut Command, fd: std::os::fd::OwnedFd, at: std::os::fd::RawFd) {
    use std::os::fd::AsRawFd;
    // SAFETY: the closure runs in the child between fork and exec and only makes the
    // async-signal-safe system calls dup2(2) and fcntl(2) on a descriptor it owns.
    unsafe {
        cmd.pre_exec(move || {
            let raw = fd.as_raw_fd();
            if raw == at {
                // dup2 onto itself keeps close-on-exec: clear it instead.
                if libc::fcntl(raw, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(raw, at) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
