//! Hermetic: recorded `/proc/net` lines and socket owners, never this host's.

use super::*;

/// One `/proc/net/tcp`-style line (as the kernel prints it) for `addr:port` in `state`.
fn line(addr: IpAddr, port: u16, state: &str, remote_port: u16, inode: u64) -> String {
    let hex = |a: IpAddr| match a {
        IpAddr::V4(v4) => format!("{:08X}", u32::from_le_bytes(v4.octets())),
        IpAddr::V6(v6) => v6
            .octets()
            .chunks(4)
            .map(|w| format!("{:08X}", u32::from_le_bytes([w[0], w[1], w[2], w[3]])))
            .collect(),
    };
    let remote = match addr {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    format!(
        "   0: {}:{port:04X} {}:{remote_port:04X} {state} 00000000:00000000 00:00000000 \
         00000000     0        0 {inode} 1 0000000000000000 100 0 0 10 0",
        hex(addr),
        hex(remote)
    )
}

const HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";

fn one(proto: Proto, addr: &str, port: u16, owner: &str) -> Check {
    let addr: IpAddr = addr.parse().unwrap();
    let text = format!(
        "{HEADER}\n{}\n",
        line(addr, port, if proto.is_udp() { "07" } else { "0A" }, 0, 77)
    );
    let listeners = parse_proc_net(&text, proto);
    assert_eq!(listeners.len(), 1, "{text}");
    let owners: Vec<String> = if owner.is_empty() {
        Vec::new()
    } else {
        vec![format!("{owner}[42]")]
    };
    judge(&listeners[0], &owners)
}

#[test]
fn the_audit_table() {
    use Proto::*;
    use Status::*;
    let cases: &[(Proto, &str, u16, &str, Status, &str)] = &[
        (
            Tcp,
            "127.0.0.1",
            8080,
            "warden",
            Pass,
            "loopback only: warden[42]",
        ),
        (Tcp, "127.0.0.53", 53, "systemd-resolve", Pass, "loopback"),
        (Tcp, "127.255.255.254", 9, "x", Pass, "loopback"),
        (Tcp6, "::1", 5432, "postgres", Pass, "loopback"),
        (
            Tcp6,
            "::ffff:127.0.0.1",
            6379,
            "redis-server",
            Pass,
            "loopback",
        ),
        (Udp, "127.0.0.1", 323, "chronyd", Pass, "loopback"),
        (Udp6, "::1", 323, "chronyd", Pass, "loopback"),
        (
            Tcp,
            "100.64.0.1",
            22,
            "sshd",
            Pass,
            "tailnet only: sshd[42]",
        ),
        (Tcp, "100.101.102.103", 8080, "warden", Pass, "tailnet"),
        (Tcp, "100.127.255.254", 443, "caddy", Pass, "tailnet"),
        (Tcp6, "fd7a:115c:a1e0::1", 8080, "warden", Pass, "tailnet"),
        (
            Tcp6,
            "fd7a:115c:a1e0:ab12:4843:cd96:6258:b240",
            22,
            "sshd",
            Pass,
            "tailnet",
        ),
        (Udp, "0.0.0.0", 41641, "tailscaled", Pass, "tailscaled"),
        (Udp6, "::", 41641, "tailscaled", Pass, "tailscaled"),
        (Tcp, "203.0.113.5", 443, "tailscaled", Pass, "tailscaled"),
        (
            Tcp,
            "0.0.0.0",
            22,
            "sshd",
            Fail,
            "sshd reachable from anywhere",
        ),
        (Tcp6, "::", 22, "sshd", Fail, "sshd reachable from anywhere"),
        (Tcp, "0.0.0.0", 22, "systemd", Fail, "sshd reachable"),
        (Tcp, "198.51.100.7", 22, "sshd", Fail, "sshd"),
        (
            Tcp,
            "0.0.0.0",
            8080,
            "warden",
            Fail,
            "reachable from anywhere: warden[42]",
        ),
        (Tcp6, "::", 5432, "postgres", Fail, "from anywhere"),
        (Tcp6, "2001:db8::10", 80, "nginx", Fail, "from anywhere"),
        (Udp, "0.0.0.0", 5353, "avahi-daemon", Fail, "from anywhere"),
        (Tcp, "100.128.0.1", 8080, "warden", Fail, "from anywhere"),
        (Tcp, "100.63.255.255", 8080, "warden", Fail, "from anywhere"),
        (Tcp, "0.0.0.0", 9999, "", Fail, "owner not visible"),
        (Tcp, "192.168.1.20", 8080, "warden", Warn, "local network"),
        (Tcp, "10.0.0.5", 5432, "postgres", Warn, "local network"),
        (Tcp, "172.16.0.1", 80, "x", Warn, "local network"),
        (Tcp, "169.254.1.1", 80, "x", Warn, "local network"),
        (Tcp6, "fd00::1", 80, "x", Warn, "local network"),
        (Tcp6, "fe80::1", 80, "x", Warn, "local network"),
        (Tcp6, "fd7a:115c:a1e1::1", 80, "x", Warn, "local network"),
    ];
    assert!(cases.len() >= 25);
    for (proto, addr, port, owner, status, fragment) in cases {
        let c = one(*proto, addr, *port, owner);
        assert_eq!(c.status, *status, "{addr}:{port} {owner}: {c:?}");
        assert!(c.detail.contains(fragment), "{addr}:{port}: {}", c.detail);
        assert_eq!(c.fix.is_some(), *status != Pass, "{addr}:{port}");
    }
    let ssh = one(Proto::Tcp, "0.0.0.0", 22, "sshd");
    let fix = ssh.fix.unwrap();
    assert!(
        fix.contains("ListenAddress") && fix.contains("ssh.socket"),
        "{fix}"
    );
    assert_eq!(one(Proto::Tcp6, "::1", 80, "x").check, "port tcp6 [::1]:80");
}

#[test]
fn only_listening_sockets_are_read() {
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    let text = [
        HEADER.to_string(),
        line(lo, 80, "0A", 0, 1),   // LISTEN
        line(lo, 81, "01", 443, 2), // ESTABLISHED
        line(lo, 82, "06", 443, 3), // TIME_WAIT
        "garbage line".to_string(),
        "   9: ZZZZZZZZ:0050 00000000:0000 0A 0 0 0 0 0 4".to_string(),
    ]
    .join("\n");
    let got = parse_proc_net(&text, Proto::Tcp);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].port, got[0].inode), (80, 1));
    // UDP: bound and unconnected only.
    let udp = [
        HEADER.to_string(),
        line(lo, 53, "07", 0, 5),
        line(lo, 54, "01", 53, 6),
        line(lo, 55, "07", 53, 7),
    ]
    .join("\n");
    let got = parse_proc_net(&udp, Proto::Udp);
    assert_eq!(got.iter().map(|l| l.port).collect::<Vec<_>>(), [53]);
}

#[test]
fn recorded_lines_of_a_real_host_parse() {
    // From this project's CI machine (Debian 12).
    let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:18EB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5312 1 00000000424bf990 100 0 0 10 0
   1: 0100007F:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000   101        0 150332 1 00000000d11403f4 100 0 0 10 0";
    let tcp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:18EB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5313 1 00000000f066a1b9 100 0 0 10 0";
    let v4 = parse_proc_net(tcp, Proto::Tcp);
    assert_eq!(v4[0].addr, "127.0.0.1".parse::<IpAddr>().unwrap());
    assert_eq!((v4[0].port, v4[1].port, v4[1].inode), (6379, 5432, 150332));
    let v6 = parse_proc_net(tcp6, Proto::Tcp6);
    assert_eq!(v6[0].addr, "::1".parse::<IpAddr>().unwrap());
    assert_eq!(v6[0].inode, 5313);
}

#[test]
fn owners_come_from_fd_links() {
    let dir = tempfile::tempdir().unwrap();
    let pid = dir.path().join("4242");
    std::fs::create_dir_all(pid.join("fd")).unwrap();
    std::fs::write(pid.join("comm"), "sshd\n").unwrap();
    std::os::unix::fs::symlink("socket:[777]", pid.join("fd/3")).unwrap();
    std::os::unix::fs::symlink("/dev/null", pid.join("fd/0")).unwrap();
    std::fs::create_dir_all(dir.path().join("self")).unwrap();
    let owners = socket_owners(dir.path());
    assert_eq!(owners[&777], ["sshd[4242]"]);
    assert_eq!(owners.len(), 1);
}

#[test]
fn this_hosts_audit_runs_and_names_its_checks() {
    // Whatever listens here, every row is a port with a verdict, read without `ss`.
    for c in audit(Path::new("/proc")) {
        assert!(c.check.starts_with("port "), "{c:?}");
    }
}

#[test]
fn garbage_proc_text_never_panics() {
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let alphabet = b"0123456789ABCDEF: \n\t-";
    for _ in 0..5_000 {
        let mut text = String::from(HEADER);
        text.push('\n');
        for _ in 0..(x % 300) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            text.push(alphabet[(x % alphabet.len() as u64) as usize] as char);
        }
        for proto in Proto::ALL {
            for l in parse_proc_net(&text, proto) {
                let _ = judge(&l, &[]);
            }
        }
    }
}
