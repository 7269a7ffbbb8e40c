//! Descriptors, pipes and per-process limits shared by the sandbox's processes. Everything
//! here runs in single-threaded processes between fork and exec.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

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
pub(crate) fn write_all(fd: impl std::os::fd::AsFd, mut data: &[u8]) {
    let fd = fd.as_fd().as_raw_fd();
    while !data.is_empty() {
        // SAFETY: writes from a valid buffer to a descriptor we hold.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
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

/// Sends one byte with `fds` attached (`SCM_RIGHTS`) on the socket `sock`.
pub(crate) fn send_fds(sock: RawFd, byte: u8, fds: &[RawFd]) -> io::Result<()> {
    let byte = [byte];
    let mut iov = libc::iovec {
        iov_base: byte.as_ptr() as *mut _,
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE / CMSG_LEN are pure size computations.
    let (space, len) = unsafe {
        let payload = std::mem::size_of_val(fds) as u32;
        (
            libc::CMSG_SPACE(payload) as usize,
            libc::CMSG_LEN(payload) as usize,
        )
    };
    let mut cmsg = vec![0u8; space];
    // SAFETY: msghdr is plain data; the pointers set below stay valid during sendmsg, and the
    // control message is written within the buffer of CMSG_SPACE bytes.
    let rc = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            msg.msg_control = cmsg.as_mut_ptr().cast();
            msg.msg_controllen = space;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = len;
            let data = libc::CMSG_DATA(c) as *mut RawFd;
            for (i, fd) in fds.iter().enumerate() {
                std::ptr::write_unaligned(data.add(i), *fd);
            }
        }
        libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL)
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one byte and up to `max` descriptors sent with it (close-on-exec), or `None` at
/// EOF. Descriptors beyond `max` are closed (the kernel truncates the message).
pub(crate) fn recv_fds(sock: RawFd, max: usize) -> io::Result<Option<(u8, Vec<OwnedFd>)>> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE((max * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut cmsg = vec![0u8; space];
    // SAFETY: msghdr is plain data; every pointer set below stays valid during recvmsg.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = space;
    let n = loop {
        // SAFETY: receives into the buffers described by msg; CLOEXEC on received descriptors.
        let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        break n;
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n == 0 {
        return Ok(None);
    }
    let mut fds = Vec::new();
    // SAFETY: walks the control messages the kernel filled in, within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c) as *const RawFd;
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(Some((byte[0], fds)))
}
