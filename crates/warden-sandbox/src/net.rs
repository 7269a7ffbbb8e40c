//! The job's network namespace.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::sys::{Step, check};

/// Brings `lo` up in the calling process's network namespace: loopback works, nothing else
/// exists.
pub(crate) fn loopback_up() -> Step {
    // SAFETY: a plain datagram socket used only for the interface ioctls below.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check("loopback socket", sock)?;
    // SAFETY: the socket was just created and is owned here.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    // SAFETY: ifreq is plain data; the name is NUL-terminated; the ioctls read and write it.
    unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        check(
            "get lo flags",
            libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req),
        )?;
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        check(
            "bring lo up",
            libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req),
        )?;
    }
    Ok(())
}
