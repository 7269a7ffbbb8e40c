//! The port audit: every listening socket of the host with the process that owns it, read from
//! `/proc/net/{tcp,tcp6,udp,udp6}` and `/proc/*/fd` (no `ss` output to parse). Loopback and the
//! tailnet (100.64.0.0/10, fd7a:115c:a1e0::/48) pass; `tailscaled` may listen anywhere; a
//! private LAN address warns; anything else is public and fails — `sshd` there with the
//! remedy (a `ListenAddress` drop-in for the tailnet address, socket activation off).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use warden_sandbox::doctor::{Check, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Tcp6,
    Udp,
    Udp6,
}

impl Proto {
    pub const ALL: [Proto; 4] = [Proto::Tcp, Proto::Tcp6, Proto::Udp, Proto::Udp6];

    fn file(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Tcp6 => "tcp6",
            Proto::Udp => "udp",
            Proto::Udp6 => "udp6",
        }
    }

    fn is_udp(self) -> bool {
        matches!(self, Proto::Udp | Proto::Udp6)
    }
}

/// A socket waiting for peers: TCP in LISTEN, or UDP bound and unconnected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub proto: Proto,
    pub addr: IpAddr,
    pub port: u16,
    pub inode: u64,
}

/// `0100007F` (IPv4) or 32 hex digits (IPv6), each 32-bit word in the kernel's byte order.
fn parse_addr(hex: &str) -> Option<IpAddr> {
    let word = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::to_le_bytes);
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(hex)?))),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[4 * i..4 * i + 4].copy_from_slice(&word(hex.get(8 * i..8 * i + 8)?)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(b)).to_canonical())
        }
        _ => None,
    }
}

/// The listeners in one `/proc/net/*` file's text. Lines that do not parse are skipped.
pub fn parse_proc_net(text: &str, proto: Proto) -> Vec<Listener> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (local, remote, state, inode) = (f.get(1)?, f.get(2)?, f.get(3)?, f.get(9)?);
            let listening = if proto.is_udp() {
                // 07 = TCP_CLOSE: bound, not connected.
                *state == "07" && remote.ends_with(":0000")
            } else {
                *state == "0A"
            };
            if !listening {
                return None;
            }
            let (addr, port) = local.rsplit_once(':')?;
            Some(Listener {
                proto,
                addr: parse_addr(addr)?,
                port: u16::from_str_radix(port, 16).ok()?,
                inode: inode.parse().ok()?,
            })
        })
        .collect()
}

/// Socket inode → the processes holding it (`pid comm`), from `<proc>/*/fd`.
pub fn socket_owners(proc_root: &Path) -> HashMap<u64, Vec<String>> {
    let mut owners: HashMap<u64, Vec<String>> = HashMap::new();
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return owners;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let comm = std::fs::read_to_string(e.path().join("comm"))
            .map(|c| c.trim().to_string())
            .unwrap_or_default();
        let Ok(fds) = std::fs::read_dir(e.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let link = link.to_string_lossy();
            if let Some(inode) = link
                .strip_prefix("socket:[")
                .and_then(|l| l.strip_suffix(']'))
                .and_then(|i| i.parse().ok())
            {
                let who = format!("{comm}[{pid}]");
                let list = owners.entry(inode).or_default();
                if !list.contains(&who) {
                    list.push(who);
                }
            }
        }
    }
    owners
}

fn in_prefix(addr: IpAddr, net: IpAddr, bits: u32) -> bool {
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Where an address can be reached from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    Loopback,
    Tailnet,
    /// RFC 1918, IPv6 unique-local, link-local: the local network.
    Private,
    /// A wildcard (every interface) or a global address.
    Public,
}

pub fn reach(addr: IpAddr) -> Reach {
    let addr = addr.to_canonical();
    if addr.is_loopback() {
        return Reach::Loopback;
    }
    if in_prefix(addr, IpAddr::V4(Ipv4Addr::new(100, 64, 0, 0)), 10)
        || in_prefix(addr, "fd7a:115c:a1e0::".parse().unwrap_or(addr), 48)
    {
        return Reach::Tailnet;
    }
    let private = match addr {
        IpAddr::V4(a) => a.is_private() || a.is_link_local(),
        IpAddr::V6(a) => {
            in_prefix(IpAddr::V6(a), "fc00::".parse().unwrap_or(addr), 7)
                || in_prefix(IpAddr::V6(a), "fe80::".parse().unwrap_or(addr), 10)
        }
    };
    if private {
        Reach::Private
    } else {
        Reach::Public
    }
}

/// The verdict on one listener owned by `owners` (`comm[pid]`; empty when not visible).
pub fn judge(l: &Listener, owners: &[String]) -> Check {
    let proto = l.proto.file();
    let bind = match l.addr {
        IpAddr::V6(a) => format!("[{a}]:{}", l.port),
        IpAddr::V4(a) => format!("{a}:{}", l.port),
    };
    let who = if owners.is_empty() {
        "owner not visible (run as root to see every process)".to_string()
    } else {
        owners.join(", ")
    };
    let comm = |name: &str| owners.iter().any(|o| o.split('[').next() == Some(name));
    let check = format!("port {proto} {bind}");
    let (status, detail, fix) = match reach(l.addr) {
        Reach::Loopback => (Status::Pass, format!("loopback only: {who}"), None),
        Reach::Tailnet => (Status::Pass, format!("tailnet only: {who}"), None),
        _ if comm("tailscaled") => (Status::Pass, format!("tailscaled: {who}"), None),
        Reach::Private => (
            Status::Warn,
            format!("reachable from the local network: {who}"),
            Some("bind it to 127.0.0.1 or the tailnet address unless the LAN must reach it".into()),
        ),
        Reach::Public if comm("sshd") || comm("systemd") && l.port == 22 => (
            Status::Fail,
            format!("sshd reachable from anywhere: {who}"),
            Some(
                "listen on the tailnet only: write /etc/ssh/sshd_config.d/50-tailnet.conf with \
                 `ListenAddress <this host's 100.x tailnet IP>`, run `systemctl disable --now \
                 ssh.socket` (socket activation ignores ListenAddress), then `systemctl restart \
                 ssh` — from a session that does not depend on the public address"
                    .into(),
            ),
        ),
        Reach::Public => (
            Status::Fail,
            format!("reachable from anywhere: {who}"),
            Some("bind it to 127.0.0.1 or the tailnet address (100.64.0.0/10), or stop it".into()),
        ),
    };
    Check {
        check,
        status,
        detail,
        fix,
    }
}

/// The audit of this host.
pub fn audit(proc_root: &Path) -> Vec<Check> {
    let mut listeners = Vec::new();
    for proto in Proto::ALL {
        if let Ok(text) = std::fs::read_to_string(proc_root.join("net").join(proto.file())) {
            listeners.extend(parse_proc_net(&text, proto));
        }
    }
    let owners = socket_owners(proc_root);
    listeners.sort_by_key(|l| (l.port, l.proto.file(), l.addr));
    listeners.dedup();
    listeners
        .iter()
        .map(|l| judge(l, owners.get(&l.inode).map_or(&[][..], Vec::as_slice)))
        .collect()
}

#[cfg(test)]
mod tests;
