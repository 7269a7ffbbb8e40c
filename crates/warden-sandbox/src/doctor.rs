//! Host checks for `warden doctor`: which kernel features the sandbox needs are present.

use serde::Serialize;

use crate::cgroups::{CgroupHome, CgroupLayout};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub check: String,
    pub status: Status,
    pub detail: String,
    /// What to do when it is not PASS.
    pub fix: Option<String>,
}

fn check(name: &str, status: Status, detail: impl Into<String>, fix: Option<&str>) -> Check {
    Check {
        check: name.into(),
        status,
        detail: detail.into(),
        fix: fix.map(str::to_string),
    }
}

/// Whether a child process can create a namespace of this kind.
fn can_unshare(flag: libc::c_int) -> Result<(), String> {
    // SAFETY: fork of the calling process; the child only calls unshare and _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    if pid == 0 {
        // SAFETY: async-signal-safe calls only.
        unsafe {
            let rc = libc::unshare(flag);
            libc::_exit(if rc == 0 {
                0
            } else {
                *libc::__errno_location()
            });
        }
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    match libc::WEXITSTATUS(status) {
        0 => Ok(()),
        errno => Err(std::io::Error::from_raw_os_error(errno).to_string()),
    }
}

/// Whether a job's egress namespace can be made here, as the sandbox makes it: a fresh
/// network namespace (in a user namespace when not root) whose every address is routed to `lo`,
/// with the gateway's sockets bound in it.
fn egress_gateway(root: bool) -> Check {
    const NAME: &str = "per-job network (egress gateway)";
    // SAFETY: fork of the calling process; the child makes the namespace, reports by its exit
    // code and _exits (glibc's malloc stays usable in a forked child).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return check(
            NAME,
            Status::Fail,
            std::io::Error::last_os_error().to_string(),
            None,
        );
    }
    if pid == 0 {
        let flags = libc::CLONE_NEWNET | if root { 0 } else { libc::CLONE_NEWUSER };
        // SAFETY: plain unshare and _exit in the child.
        let code = unsafe {
            if libc::unshare(flags) != 0 {
                10
            } else if crate::net::loopback_up().is_err() {
                11
            } else {
                match crate::net::egress_routes() {
                    Err(_) => 12,
                    Ok(v6) => match crate::net::gateway_sockets(
                        &crate::net::EgressPorts { tcp: vec![443] },
                        v6,
                    ) {
                        Err(_) => 13,
                        Ok(_) if v6 => 0,
                        Ok(_) => 1,
                    },
                }
            }
        };
        // SAFETY: leaves the child at once.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let how = if root {
        "own network namespace per job"
    } else {
        "own network namespace per job, in the job's user namespace (rootless)"
    };
    let fix = Some(
        "jobs with network: {egress: [...]} end error until this passes; check that network namespaces and netlink are not blocked (container seccomp, CONFIG_NET_NS)",
    );
    match libc::WEXITSTATUS(status) {
        0 => check(
            NAME,
            Status::Pass,
            format!(
                "{how}; every address routed to its lo, served by warden's gateway (IPv4 and IPv6)"
            ),
            None,
        ),
        1 => check(
            NAME,
            Status::Pass,
            format!(
                "{how}; every address routed to its lo, served by warden's gateway (IPv4; this kernel has no IPv6: none is reachable)"
            ),
            None,
        ),
        10 => check(NAME, Status::Fail, "cannot create the namespace", fix),
        11 => check(NAME, Status::Fail, "cannot bring lo up", fix),
        12 => check(
            NAME,
            Status::Fail,
            "cannot route addresses to lo (rtnetlink refused)",
            fix,
        ),
        _ => check(NAME, Status::Fail, "cannot bind the gateway's sockets", fix),
    }
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Every kernel feature warden's sandbox relies on.
pub fn kernel_checks() -> Vec<Check> {
    // SAFETY: getuid has no arguments.
    let root = unsafe { libc::getuid() } == 0;
    let mut out = vec![privileges(root)];
    out.extend(namespaces(root));
    out.push(user_namespaces());
    out.push(egress_gateway(root));
    out.push(seccomp());
    out.push(landlock());
    out.extend(cgroups(root));
    out
}

fn privileges(root: bool) -> Check {
    if root {
        check(
            "privileges",
            Status::Pass,
            "running as root: jobs run as unprivileged host uids, one per slot",
            None,
        )
    } else if can_unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWPID).is_ok() {
        check(
            "privileges",
            Status::Pass,
            "rootless: jobs run in user namespaces of this user",
            None,
        )
    } else {
        check(
            "privileges",
            Status::Fail,
            "not root, and this user may not create user namespaces: no sandbox is possible",
            Some(
                "allow unprivileged user namespaces (sysctl -w user.max_user_namespaces=15000; on Ubuntu 24.04+ \
                 sysctl -w kernel.apparmor_restrict_unprivileged_userns=0 or an AppArmor profile for warden), or run warden as root",
            ),
        )
    }
}

fn namespaces(root: bool) -> Vec<Check> {
    let mut out = Vec::new();
    for (name, flag) in [
        ("namespace: user", libc::CLONE_NEWUSER),
        ("namespace: mount", libc::CLONE_NEWNS),
        ("namespace: pid", libc::CLONE_NEWPID),
        ("namespace: network", libc::CLONE_NEWNET),
        ("namespace: ipc", libc::CLONE_NEWIPC),
        ("namespace: uts", libc::CLONE_NEWUTS),
        ("namespace: cgroup", libc::CLONE_NEWCGROUP),
    ] {
        out.push(match can_unshare(flag) {
            Ok(()) => check(name, Status::Pass, "can be created", None),
            // Without root, inside a user namespace: what the rootless sandbox does.
            Err(_) if !root && can_unshare(flag | libc::CLONE_NEWUSER).is_ok() => check(
                name,
                Status::Pass,
                "can be created inside a user namespace (rootless)",
                None,
            ),
            Err(e) => check(name, Status::Fail, format!("unshare failed: {e}"), Some("enable the namespace in the kernel (CONFIG_*_NS) and check container/seccomp restrictions on the host")),
        });
    }
    out
}

fn user_namespaces() -> Check {
    let userns_sysctl = read_trim("/proc/sys/kernel/unprivileged_userns_clone");
    let max_userns =
        read_trim("/proc/sys/user/max_user_namespaces").and_then(|s| s.parse::<u64>().ok());
    match (userns_sysctl.as_deref(), max_userns) {
        (_, Some(0)) => check(
            "unprivileged user namespaces",
            Status::Fail,
            "user.max_user_namespaces = 0",
            Some("sysctl -w user.max_user_namespaces=15000"),
        ),
        (Some("0"), _) => check(
            "unprivileged user namespaces",
            Status::Warn,
            "kernel.unprivileged_userns_clone = 0 (root can still create them)",
            Some("sysctl -w kernel.unprivileged_userns_clone=1 for rootless use"),
        ),
        _ => check(
            "unprivileged user namespaces",
            Status::Pass,
            format!(
                "max_user_namespaces = {}",
                max_userns
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "?".into())
            ),
            None,
        ),
    }
}

fn seccomp() -> Check {
    let seccomp = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Seccomp:"))
                .map(str::to_string)
        });
    match seccomp {
        Some(line) if line.trim_end().ends_with('2') => check(
            "seccomp",
            Status::Warn,
            "warden itself runs under a seccomp filter; job filters stack on it",
            None,
        ),
        Some(_) => check("seccomp", Status::Pass, "filter mode available", None),
        None => check(
            "seccomp",
            Status::Fail,
            "the kernel has no seccomp",
            Some("use a kernel built with CONFIG_SECCOMP_FILTER"),
        ),
    }
}

fn landlock() -> Check {
    match crate::landlock::kernel_abi() {
        a if a >= 6 => check(
            "landlock",
            Status::Pass,
            format!("ABI {a}: filesystem rules and abstract-socket/signal scoping"),
            None,
        ),
        a if a >= 1 => check(
            "landlock",
            Status::Warn,
            format!("ABI {a}: filesystem rules only, no abstract-socket/signal scoping"),
            Some("a kernel ≥ 6.12 adds scoping"),
        ),
        _ => check(
            "landlock",
            Status::Fail,
            "Landlock is not enabled",
            Some("boot with lsm=...,landlock (CONFIG_SECURITY_LANDLOCK)"),
        ),
    }
}

fn cgroups(root: bool) -> Vec<Check> {
    let layout = CgroupLayout::detect();
    let mut out = vec![check(
        "cgroup layout",
        if layout == CgroupLayout::None {
            Status::Warn
        } else {
            Status::Pass
        },
        layout.describe(),
        (layout == CgroupLayout::None).then_some("mount cgroup2 at /sys/fs/cgroup"),
    )];
    let home = CgroupHome::inspect();
    let missing: Vec<&str> = ["memory", "pids", "cpu"]
        .into_iter()
        .filter(|c| !home.enforces(c))
        .collect();
    let fix = match (&home, root) {
        (CgroupHome::Unavailable { .. }, false) => Some(
            "start warden in a cgroup delegated to your user: `systemd-run --user --scope -p Delegate=yes warden serve` \
             (for cpu too: `systemctl edit user@.service` with [Service] Delegate=cpu cpuset io memory pids); \
             until then jobs whose limits cannot be enforced end `error` unless the job type lists them in accept_unenforced",
        ),
        (CgroupHome::Unavailable { .. }, true) => Some(
            "give warden a writable cgroup (systemd: Delegate=yes), or run it from the root cgroup",
        ),
        (_, _) if !missing.is_empty() => Some(
            "enable the missing controllers in the parent's cgroup.subtree_control (systemd: Delegate=memory pids cpu io)",
        ),
        _ => None,
    };
    out.push(check(
        "cgroup limits",
        if missing.is_empty() {
            Status::Pass
        } else {
            Status::Warn
        },
        if missing.is_empty() {
            format!("{}: memory, pids and cpu limits enforced", home.describe())
        } else {
            format!(
                "{}: cannot enforce {} limits",
                home.describe(),
                missing.join(", ")
            )
        },
        fix,
    ));
    out
}
