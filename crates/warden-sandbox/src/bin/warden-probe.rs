//! `warden-probe`: run *inside* the sandbox by warden's tests.
//!
//! `warden-probe inspect` asserts from inside what the box must look like and exits 1 listing
//! every violation. The other modes are hostile programs: each tries one escape or exhaustion
//! and prints what happened, so the tests can assert the exact safe outcome.

use std::io::Write;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn errstr() -> String {
    std::io::Error::last_os_error().to_string()
}

fn say(msg: impl AsRef<str>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", msg.as_ref());
    let _ = out.flush();
}

/// Prints `BLOCKED <what>: <errno text>` when `rc` failed, `ALLOWED <what>` otherwise.
fn report(what: &str, rc: i64) {
    if rc < 0 {
        say(format!("BLOCKED {what}: {}", errstr()));
    } else {
        say(format!("ALLOWED {what}"));
    }
}

fn status_field(name: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

/// `gvisor`: the box is gVisor's, where the job is pid 1 of its PID namespace (there is no
/// init of warden's in it), has no seccomp filter of its own (the sentry is its kernel), and
/// sees the sentry's own synthetic `/sys`.
fn inspect(gvisor: bool) -> i32 {
    let mut bad: Vec<String> = Vec::new();
    let mut expect = |ok: bool, what: String| {
        if !ok {
            bad.push(what);
        }
    };
    // SAFETY: id getters have no arguments.
    let (uid, gid, euid) = unsafe { (libc::getuid(), libc::getgid(), libc::geteuid()) };
    expect(
        uid == 1000 && euid == 1000 && gid == 1000,
        format!("ids {uid}/{euid}/{gid}, want 1000"),
    );
    for cap in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        let v = status_field(cap);
        expect(v.chars().all(|c| c == '0'), format!("{cap} {v}"));
    }
    // SAFETY: a query without pointers.
    let nnp = unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) };
    expect(nnp == 1, "no_new_privs not set".into());
    expect(
        gvisor || status_field("Seccomp:") == "2",
        "seccomp not in filter mode".into(),
    );
    // SAFETY: getpid has no arguments.
    let pid = unsafe { libc::getpid() };
    let want = if gvisor { 1 } else { 2 };
    expect(
        pid == want,
        format!("pid {pid}, want {want} (own PID namespace)"),
    );
    let procs = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                .count()
        })
        .unwrap_or(0);
    expect(procs <= 3, format!("{procs} processes visible"));
    for (path, want_ro) in [
        ("/", true),
        ("/usr", true),
        ("/etc", true),
        ("/work", true),
        ("/tmp", false),
        ("/artifacts", false),
        ("/dev/shm", false),
    ] {
        let probe = format!("{}/.warden-probe-write", path.trim_end_matches('/'));
        let wrote = std::fs::write(&probe, b"x").is_ok();
        let _ = std::fs::remove_file(&probe);
        expect(wrote != want_ro, format!("{path}: writable={wrote}"));
    }
    for secret in [
        "/etc/shadow",
        "/etc/gshadow",
        "/root",
        "/home",
        "/var",
        "/sys",
        "/etc/ssh",
    ]
    .into_iter()
    .filter(|p| !(gvisor && *p == "/sys"))
    {
        expect(
            std::fs::symlink_metadata(secret).is_err(),
            format!("{secret} is visible"),
        );
    }
    let ifaces: Vec<String> = std::fs::read_to_string("/proc/net/dev")
        .unwrap_or_default()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|s| s.trim().to_string()))
        .collect();
    expect(
        ifaces == ["lo"],
        format!("interfaces {ifaces:?}, want only lo"),
    );
    let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    expect(routes.lines().count() <= 1, "a route exists".into());
    let fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    expect(
        fds.len() <= 4,
        format!("fds {fds:?}, want 0, 1, 2 (+ the one reading the directory)"),
    );
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    expect(host.trim() == "warden", format!("hostname {host:?}"));
    let cwd = std::env::current_dir()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    expect(cwd == "/work", format!("cwd {cwd}"));
    // SAFETY: getsid(0) and tcgetpgrp on stdin only query.
    let (sid, tty) = unsafe { (libc::getsid(0), libc::isatty(0)) };
    expect(sid > 0 && tty == 0, format!("session {sid}, tty {tty}"));
    if bad.is_empty() {
        say("INSPECT OK");
        0
    } else {
        for b in &bad {
            say(format!("VIOLATION {b}"));
        }
        1
    }
}

fn touch_memory(bytes: usize) {
    let mut v: Vec<Vec<u8>> = Vec::new();
    let chunk = 16 << 20;
    let mut total = 0;
    while total < bytes {
        v.push(vec![1u8; chunk]);
        total += chunk;
        say(format!("allocated {} MiB", total >> 20));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("inspect");
    let code = match mode {
        "inspect" => inspect(args.get(1).is_some_and(|a| a == "gvisor")),
        // Outside the sandbox: install warden's policy on ourselves, then try what it denies.
        "seccomp-self-test" => {
            // SAFETY: plain prctl.
            unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
            let filters = warden_sandbox::seccomp::compile(true).expect("policy compiles");
            warden_sandbox::seccomp::install(&filters).expect("filters install");
            // SAFETY: raw syscalls, each denied by the policy.
            unsafe {
                report("unshare user", libc::unshare(libc::CLONE_NEWUSER) as i64);
                report(
                    "mount tmpfs",
                    libc::mount(
                        c"none".as_ptr(),
                        c"/tmp".as_ptr(),
                        c"tmpfs".as_ptr(),
                        0,
                        std::ptr::null(),
                    ) as i64,
                );
                report("keyctl", libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0));
                let mut attr = [0u8; 128];
                report(
                    "bpf",
                    libc::syscall(libc::SYS_bpf, 0, attr.as_mut_ptr(), attr.len()),
                );
                let mut params = [0u8; 120];
                report(
                    "io_uring_setup",
                    libc::syscall(libc::SYS_io_uring_setup, 8, params.as_mut_ptr()),
                );
                report(
                    "ptrace attach init",
                    libc::ptrace(libc::PTRACE_ATTACH, 1, 0, 0),
                );
            }
            0
        }
        "fork-bomb" => {
            let started = std::time::Instant::now();
            let mut failures = 0u64;
            while started.elapsed() < std::time::Duration::from_secs(2) {
                // SAFETY: fork; children sleep until the namespace dies with the parent.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    // SAFETY: the child just pauses.
                    unsafe { libc::pause() };
                } else if pid < 0 {
                    failures += 1;
                }
            }
            say(format!("fork failures: {failures}"));
            0
        }
        "malloc-bomb" => {
            // 1 GiB: far over any test's limit, and within what a small VM's overcommit
            // heuristic lets one process map.
            touch_memory(1 << 30);
            0
        }
        "mmap-bomb" => {
            let len = 1usize << 30;
            // SAFETY: anonymous private mapping, touched page by page below.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                say(format!("mmap failed: {}", errstr()));
                return;
            }
            for off in (0..len).step_by(4096) {
                // SAFETY: within the mapping just created.
                unsafe { *(p as *mut u8).add(off) = 1 };
            }
            0
        }
        "memfd-bomb" => {
            // SAFETY: creates an anonymous memory file.
            let fd = unsafe { libc::memfd_create(c"bomb".as_ptr(), 0) };
            let buf = vec![7u8; 1 << 20];
            for i in 0..4096 {
                // SAFETY: writes from a valid buffer.
                if unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) } < 0 {
                    say(format!("memfd write failed after {i} MiB: {}", errstr()));
                    return;
                }
            }
            0
        }
        "keyctl" => {
            // SAFETY: raw syscall; denied by the policy.
            report("keyctl", unsafe {
                libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0)
            });
            // SAFETY: as above.
            report("add_key", unsafe {
                libc::syscall(
                    libc::SYS_add_key,
                    c"user".as_ptr(),
                    c"k".as_ptr(),
                    c"v".as_ptr(),
                    1,
                    -2,
                )
            });
            0
        }
        "io-uring" => {
            let mut params = [0u8; 120];
            // SAFETY: raw syscall with a valid params buffer; denied by the policy.
            report("io_uring_setup", unsafe {
                libc::syscall(libc::SYS_io_uring_setup, 8, params.as_mut_ptr())
            });
            0
        }
        "bpf" => {
            let mut attr = [0u8; 128];
            // SAFETY: raw syscall with a valid attr buffer; denied by the policy.
            report("bpf", unsafe {
                libc::syscall(libc::SYS_bpf, 0, attr.as_mut_ptr(), attr.len())
            });
            0
        }
        "perf" => {
            let mut attr = [0u8; 128];
            // SAFETY: raw syscall with a valid attr buffer; denied by the policy.
            report("perf_event_open", unsafe {
                libc::syscall(libc::SYS_perf_event_open, attr.as_mut_ptr(), 0, -1, -1, 0)
            });
            // SAFETY: as above.
            report("userfaultfd", unsafe {
                libc::syscall(libc::SYS_userfaultfd, 0)
            });
            0
        }
        "tiocsti" => {
            let c = b'x';
            // SAFETY: ioctl with a valid byte pointer; denied by the policy.
            report("TIOCSTI", unsafe { libc::ioctl(0, libc::TIOCSTI, &c) }
                as i64);
            0
        }
        "ptrace" => {
            // SAFETY: raw ptrace attach to the namespace's init; denied by the policy.
            report("ptrace attach init", unsafe {
                libc::ptrace(libc::PTRACE_ATTACH, 1, 0, 0)
            });
            // SAFETY: as above, to our own parent.
            report("ptrace attach parent", unsafe {
                libc::ptrace(libc::PTRACE_ATTACH, libc::getppid(), 0, 0)
            });
            let mut local = [0u8; 8];
            let iov = libc::iovec {
                iov_base: local.as_mut_ptr().cast(),
                iov_len: 8,
            };
            // SAFETY: valid iovecs; denied by the policy.
            report(
                "process_vm_readv",
                unsafe { libc::process_vm_readv(1, &iov, 1, &iov, 1, 0) } as i64,
            );
            0
        }
        "namespaces" => {
            // SAFETY: plain unshare / clone flags; denied by the policy.
            report(
                "unshare user",
                unsafe { libc::unshare(libc::CLONE_NEWUSER) } as i64,
            );
            // SAFETY: as above.
            report("unshare mount", unsafe { libc::unshare(libc::CLONE_NEWNS) }
                as i64);
            // SAFETY: a fork-like clone with a namespace flag; denied by the policy.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_clone,
                    (libc::CLONE_NEWUSER | libc::SIGCHLD) as u64,
                    0,
                    0,
                    0,
                    0,
                )
            };
            if rc == 0 {
                // SAFETY: the child (if it ever ran) leaves at once.
                unsafe { libc::_exit(0) };
            }
            report("clone CLONE_NEWUSER", rc);
            // SAFETY: mount of a tmpfs; denied by the policy.
            report("mount tmpfs", unsafe {
                libc::mount(
                    c"none".as_ptr(),
                    c"/tmp".as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    std::ptr::null(),
                )
            } as i64);
            // SAFETY: setns on our own namespace fd; denied by the policy.
            let fd = unsafe { libc::open(c"/proc/self/ns/net".as_ptr(), libc::O_RDONLY) };
            // SAFETY: as above.
            report("setns", unsafe { libc::setns(fd, 0) } as i64);
            // SAFETY: raw chroot; denied by the policy.
            report("chroot", unsafe { libc::chroot(c"/tmp".as_ptr()) } as i64);
            0
        }
        "raw-socket" => {
            // SAFETY: socket creation; denied by the policy.
            report(
                "socket AF_PACKET",
                unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) } as i64,
            );
            // SAFETY: as above.
            report("socket SOCK_RAW", unsafe {
                libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP)
            } as i64);
            // SAFETY: as above.
            report(
                "socket AF_VSOCK",
                unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0) } as i64,
            );
            0
        }
        "inotify" => {
            // SAFETY: plain syscall; denied unless the job type allows inotify.
            report("inotify_init1", unsafe { libc::inotify_init1(0) } as i64);
            0
        }
        "socket-families" => {
            // SAFETY: socket creation; each denied by the policy's family allowlist.
            report("netlink uevent", unsafe {
                libc::socket(
                    libc::AF_NETLINK,
                    libc::SOCK_DGRAM,
                    libc::NETLINK_KOBJECT_UEVENT,
                )
            } as i64);
            // SAFETY: as above.
            report("netlink audit", unsafe {
                libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_AUDIT)
            } as i64);
            // SAFETY: as above.
            report(
                "af_alg",
                unsafe { libc::socket(libc::AF_ALG, libc::SOCK_SEQPACKET, 0) } as i64,
            );
            // SAFETY: as above.
            report(
                "af_tipc",
                unsafe { libc::socket(libc::AF_TIPC, libc::SOCK_RDM, 0) } as i64,
            );
            // What a job may open: said as USABLE, so that ALLOWED still means a hole.
            for (what, family, kind, proto) in [
                ("unix", libc::AF_UNIX, libc::SOCK_STREAM, 0),
                ("inet", libc::AF_INET, libc::SOCK_STREAM, 0),
                ("inet6", libc::AF_INET6, libc::SOCK_DGRAM, 0),
                (
                    "netlink route",
                    libc::AF_NETLINK,
                    libc::SOCK_RAW,
                    libc::NETLINK_ROUTE,
                ),
            ] {
                // SAFETY: socket creation with constant arguments.
                let fd = unsafe { libc::socket(family, kind, proto) };
                say(format!(
                    "{} {what}",
                    if fd >= 0 { "USABLE" } else { "REFUSED" }
                ));
            }
            0
        }
        "x32" => {
            // SAFETY: getpid through the x32 table; denied by the x32 filter.
            report("x32 getpid", unsafe {
                libc::syscall(0x4000_0000 | libc::SYS_getpid)
            });
            0
        }
        #[cfg(target_arch = "x86_64")]
        "int80" => {
            // i386 getpid (20) through int 0x80: a non-native ABI, which seccomp kills.
            let ret: i64;
            // SAFETY: int 0x80 with eax = 20 (getpid) reads no memory.
            unsafe { std::arch::asm!("int 0x80", inlateout("rax") 20i64 => ret, options(nostack)) };
            say(format!("ALLOWED int80 getpid = {ret}"));
            0
        }
        "fds" => {
            let mut open = Vec::new();
            for fd in 3..4096 {
                // SAFETY: F_GETFD only queries.
                if unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0 {
                    open.push(fd);
                }
            }
            say(format!("open fds above 2: {open:?}"));
            0
        }
        "kill-all" => {
            // SAFETY: kill(-1) reaches every process the job may signal.
            let rc = unsafe { libc::kill(-1, libc::SIGKILL) };
            say(format!("kill -9 -1 = {rc}; still alive"));
            0
        }
        "signal-init" => {
            // SAFETY: signals to the namespace's init.
            report("kill init SIGKILL", unsafe { libc::kill(1, libc::SIGKILL) }
                as i64);
            // SAFETY: as above.
            report("kill init SIGTERM", unsafe { libc::kill(1, libc::SIGTERM) }
                as i64);
            0
        }
        "proc-exe" => {
            for p in ["/proc/1/exe", "/proc/1/environ", "/proc/1/root/etc"] {
                match std::fs::metadata(p)
                    .and_then(|_| std::fs::read_link(p).or_else(|_| Ok(p.into())))
                {
                    Ok(_) if std::fs::read(p).is_ok() || std::fs::read_dir(p).is_ok() => {
                        say(format!("ALLOWED read {p}"))
                    }
                    _ => say(format!(
                        "BLOCKED read {p}: {}",
                        std::io::Error::last_os_error()
                    )),
                }
            }
            // Overwrite our own executable (CVE-2019-5736 style).
            let w = std::fs::OpenOptions::new()
                .write(true)
                .open("/proc/self/exe");
            say(match w {
                Ok(_) => "ALLOWED write /proc/self/exe".to_string(),
                Err(e) => format!("BLOCKED write /proc/self/exe: {e}"),
            });
            0
        }
        "shm-create" => {
            // SAFETY: SysV shared memory with a fixed key.
            let id = unsafe { libc::shmget(0x5741_5244, 4096, libc::IPC_CREAT | 0o666) };
            say(format!("shmget create = {id}"));
            std::thread::sleep(std::time::Duration::from_secs(3));
            0
        }
        "shm-look" => {
            // SAFETY: looks the key up without creating it.
            let id = unsafe { libc::shmget(0x5741_5244, 0, 0) };
            report("find other job's shm", id as i64);
            let others = std::fs::read_dir("/proc")
                .map(|d| {
                    d.flatten()
                        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                        .count()
                })
                .unwrap_or(0);
            say(format!("visible processes: {others}"));
            0
        }
        other => {
            say(format!("unknown mode {other}"));
            let _ = errno();
            2
        }
    };
    std::process::exit(code);
}
