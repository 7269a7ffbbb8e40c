//! Host checks for `warden doctor`: which kernel features the sandbox needs are present.

use serde::Serialize;

use crate::cgroups::CgroupLayout;

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
    out.push(seccomp());
    out.push(landlock());
    out.push(cgroups());
    out
}

fn privileges(root: bool) -> Check {
    if root {
        check(
            "privileges",
            Status::Pass,
            "running as root: the sandbox builds mounts and cgroups as root",
            None,
        )
    } else {
        check(
            "privileges",
            Status::Fail,
            "not running as root: this version builds the sandbox as root",
            Some(
                "run `warden serve` as root (a systemd unit), or set unsafe_fallback: true to run jobs unsandboxed (recorded on every job)",
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
            // Without root, the kernel may still offer it inside a user namespace: then the
            // kernel is fine and only warden's privileges are missing (see "privileges").
            Err(_) if !root && can_unshare(flag | libc::CLONE_NEWUSER).is_ok() => check(
                name,
                Status::Warn,
                "supported by the kernel (inside a user namespace); warden needs root to use it",
                Some("run warden as root"),
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

fn cgroups() -> Check {
    let layout = CgroupLayout::detect();
    let (memory, pids) = match &layout {
        CgroupLayout::V2 { controllers, .. } => (
            controllers.iter().any(|c| c == "memory"),
            controllers.iter().any(|c| c == "pids"),
        ),
        CgroupLayout::V1 { memory, pids } => (memory.is_some(), pids.is_some()),
        CgroupLayout::None => (false, false),
    };
    match (memory, pids) {
        (true, true) => check(
            "cgroups",
            Status::Pass,
            format!("{}: memory and pids limits enforced", layout.describe()),
            None,
        ),
        _ => check(
            "cgroups",
            Status::Warn,
            format!(
                "{}: job types with memory_mb/pids limits will be refused",
                layout.describe()
            ),
            Some(
                "mount cgroup v2 with the memory and pids controllers (or v1 memory and pids hierarchies)",
            ),
        ),
    }
}
