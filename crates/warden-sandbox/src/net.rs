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

/// The ports of a job's egress gateway: what its network namespace listens on for warden.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EgressPorts {
    /// TCP ports the allowlist names; a connection to any other port is refused by the kernel.
    pub tcp: Vec<u16>,
}

/// The DNS port every address of an egress namespace answers on (warden's resolver).
pub const DNS_PORT: u16 = 53;

/// Makes every address local to the calling process's network namespace (a `local` route for
/// `0.0.0.0/0` and `::/0` on `lo`, in the local table): whatever a job connects to lands on a
/// socket of this namespace, and the one socket listening on that port is warden's gateway,
/// which learns the destination the job chose from the accepted socket's own address. Nothing
/// is routed anywhere else: there is no other interface. IPv6 is skipped where the kernel has
/// none (then no IPv6 destination is reachable at all).
pub(crate) fn egress_routes() -> Result<bool, crate::sys::StepError> {
    let index = if_index("lo")?;
    add_local_route(libc::AF_INET as u8, index)?;
    let v6 = add_local_route(libc::AF_INET6 as u8, index).is_ok();
    Ok(v6)
}

fn if_index(name: &str) -> Result<u32, crate::sys::StepError> {
    let c = std::ffi::CString::new(name).map_err(|_| {
        crate::sys::fail(
            "interface name",
            std::io::Error::from(std::io::ErrorKind::InvalidInput),
        )
    })?;
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(crate::sys::fail(
            format!("find {name}"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(index)
}

/// `ip route add local <all>/0 dev <index> table local`, over rtnetlink, waiting for the ack.
fn add_local_route(family: u8, index: u32) -> Step {
    const RTM_NEWROUTE: u16 = 24;
    const NLMSG_ERROR: u16 = 2;
    const FLAGS: u16 = 0x1 | 0x4 | 0x200 | 0x400; // REQUEST | ACK | EXCL | CREATE
    const RT_TABLE_LOCAL: u8 = 255;
    const RTPROT_STATIC: u8 = 4;
    const RT_SCOPE_HOST: u8 = 254;
    const RTN_LOCAL: u8 = 2;
    const RTA_OIF: u16 = 4;
    let what = if family == libc::AF_INET as u8 {
        "route every IPv4 address to lo"
    } else {
        "route every IPv6 address to lo"
    };
    let mut msg = Vec::with_capacity(36);
    msg.extend_from_slice(&36u32.to_ne_bytes());
    msg.extend_from_slice(&RTM_NEWROUTE.to_ne_bytes());
    msg.extend_from_slice(&FLAGS.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
    msg.extend_from_slice(&[
        family,
        0,
        0,
        0,
        RT_TABLE_LOCAL,
        RTPROT_STATIC,
        RT_SCOPE_HOST,
    ]);
    msg.push(RTN_LOCAL);
    msg.extend_from_slice(&0u32.to_ne_bytes());
    // RTA_OIF = index.
    msg.extend_from_slice(&8u16.to_ne_bytes());
    msg.extend_from_slice(&RTA_OIF.to_ne_bytes());
    msg.extend_from_slice(&index.to_ne_bytes());
    // SAFETY: a plain netlink socket, owned below.
    let sock = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    check("netlink socket", sock)?;
    // SAFETY: just created; owned from here.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    // SAFETY: sends a valid buffer of the length given (to the kernel: no address needed on a
    // netlink socket that was never bound).
    let sent = unsafe { libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    check(what, sent as i32)?;
    let mut ack = [0u8; 256];
    // SAFETY: receives into a valid buffer of the length given.
    let n = unsafe { libc::recv(sock.as_raw_fd(), ack.as_mut_ptr().cast(), ack.len(), 0) };
    check(what, n as i32)?;
    // nlmsghdr (16 bytes), then for NLMSG_ERROR the error code (0: success).
    let n = n as usize;
    if n < 20 || u16::from_ne_bytes([ack[4], ack[5]]) != NLMSG_ERROR {
        return Err(crate::sys::fail(
            what,
            std::io::Error::new(std::io::ErrorKind::InvalidData, "no netlink ack"),
        ));
    }
    let errno = i32::from_ne_bytes([ack[16], ack[17], ack[18], ack[19]]);
    if errno != 0 {
        return Err(crate::sys::fail(
            what,
            std::io::Error::from_raw_os_error(-errno),
        ));
    }
    Ok(())
}

/// The gateway's sockets in the calling process's (egress) namespace: UDP on port 53 and TCP
/// listening on each port of `ports`, for IPv4 and (with `v6`) IPv6, all close-on-exec.
pub(crate) fn gateway_sockets(
    ports: &EgressPorts,
    v6: bool,
) -> Result<Vec<OwnedFd>, crate::sys::StepError> {
    let mut fds = Vec::new();
    let families: &[libc::c_int] = if v6 {
        &[libc::AF_INET, libc::AF_INET6]
    } else {
        &[libc::AF_INET]
    };
    for &family in families {
        fds.push(bound(family, libc::SOCK_DGRAM, DNS_PORT)?);
        for &port in &ports.tcp {
            let fd = bound(family, libc::SOCK_STREAM, port)?;
            // SAFETY: listen on a socket we own.
            check(&format!("listen on port {port}"), unsafe {
                libc::listen(fd.as_raw_fd(), 1024)
            })?;
            fds.push(fd);
        }
    }
    Ok(fds)
}

/// A socket of `family` and `kind` bound to the any-address at `port`.
fn bound(
    family: libc::c_int,
    kind: libc::c_int,
    port: u16,
) -> Result<OwnedFd, crate::sys::StepError> {
    let what = format!("gateway socket for port {port}");
    // SAFETY: a plain socket, owned below.
    let fd = unsafe { libc::socket(family, kind | libc::SOCK_CLOEXEC, 0) };
    check(&what, fd)?;
    // SAFETY: just created; owned from here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: setsockopt/bind with valid, correctly sized arguments on a socket we own.
    unsafe {
        if family == libc::AF_INET6 {
            check(
                &what,
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::IPPROTO_IPV6,
                    libc::IPV6_V6ONLY,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as u32,
                ),
            )?;
            let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
            sa.sin6_family = libc::AF_INET6 as u16;
            sa.sin6_port = port.to_be();
            check(
                &what,
                libc::bind(
                    fd.as_raw_fd(),
                    (&sa as *const libc::sockaddr_in6).cast(),
                    std::mem::size_of::<libc::sockaddr_in6>() as u32,
                ),
            )?;
        } else {
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            sa.sin_family = libc::AF_INET as u16;
            sa.sin_port = port.to_be();
            check(
                &what,
                libc::bind(
                    fd.as_raw_fd(),
                    (&sa as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                ),
            )?;
        }
    }
    Ok(fd)
}

/// The byte that starts the gateway message on the supervisor's control socket.
pub const GATEWAY_MESSAGE: u8 = b'G';

/// Sends `fds` to warden over `control` with one [`GATEWAY_MESSAGE`] byte.
pub(crate) fn send_gateway(control: &OwnedFd, fds: &[OwnedFd]) -> Step {
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    crate::fd::send_fds(control.as_raw_fd(), GATEWAY_MESSAGE, &raw)
        .map_err(|e| crate::sys::fail("hand the gateway sockets to warden", e))
}
