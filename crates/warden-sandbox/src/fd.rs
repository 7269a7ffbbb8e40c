//! Descriptors, pipes and per-process limits shared by the sandbox's processes. Everything
//! here runs in single-threaded processes between fork and exec.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::Rlimits;
use crate::sys::{Step, check};

/// A close-on-exec pipe: `(read end, write end)`.
pub(crate) fn pipe() -> Step<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into the array.
    check("pipe", unsafe {
        libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC)
    })?;
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Writes all of `data` (best effort: a reader that is gone is not an error here).
pub(crate) fn write_all(fd: &OwnedFd, mut data: &[u8]) {
    while !data.is_empty() {
        // SAFETY: writes from a valid buffer to a descriptor we hold.
        let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            return;
        }
        data = &data[n as usize..];
    }
}

/// Blocks until one byte arrives; false on EOF.
pub(crate) fn wait_byte(fd: &OwnedFd) -> bool {
    let mut b = [0u8; 1];
    loop {
        // SAFETY: reads into a valid one-byte buffer.
        let n = unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return n == 1;
    }
}

/// Marks every descriptor from `first` up close-on-exec (closes nothing now).
pub(crate) fn cloexec_from(first: u32) {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
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

/// Sets the job's rlimits, in both the sandboxed and the fallback path. Core dumps are always
/// off: a dump could carry secrets out. Async-signal-safe (it runs between fork and exec).
pub(crate) fn apply_rlimits(limits: &Rlimits) -> Step {
    let set_pair = |step: &str, resource, soft: u64, hard: u64| {
        let lim = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: setrlimit reads a valid struct.
        check(step, unsafe { libc::setrlimit(resource, &lim) })
    };
    let set = |step: &str, resource, value: u64| set_pair(step, resource, value, value);
    set("rlimit core", libc::RLIMIT_CORE, 0)?;
    if let Some(v) = limits.cpu_s {
        // SIGXCPU at the limit (the verdict `cpu_limit`); SIGKILL a second later for a job that
        // ignores it. Equal soft and hard limits would send SIGKILL alone.
        set_pair("rlimit cpu", libc::RLIMIT_CPU, v, v.saturating_add(1))?;
    }
    if let Some(v) = limits.file_size_bytes {
        set("rlimit fsize", libc::RLIMIT_FSIZE, v)?;
    }
    if let Some(v) = limits.open_files {
        set("rlimit nofile", libc::RLIMIT_NOFILE, v)?;
    }
    Ok(())
}

/// Opens a directory (never through a final symlink), close-on-exec.
pub(crate) fn open_dir(path: &std::path::Path) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: open with a valid C string; the result is checked before use.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor owned by nothing else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}
