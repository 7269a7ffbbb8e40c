//! The supervisor's side of a sandboxed job (host root, host namespaces): creates the job's
//! cgroup, clones the init into new namespaces, lets it move into the cgroup, watches it, kills
//! it, and reads its report. The job ends up holding no capability over any namespace it lives
//! in: they all belong to the host's user namespace. Every failure is reported as
//! `<step>: <error>` and the job never runs.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::init::{CgroupTarget, InitArgs, init_main};
use super::{reap, setup_failed};
use crate::cgroups::{CgroupHome, JobCgroup};
use crate::fd::{pipe, write_all};
use crate::{ExitReport, Rlimits, SandboxSpec, SpawnSpec};

/// The job's mount namespace, held by the supervisor until its report is sent.
static NAMESPACE_HOLD: std::sync::Mutex<Option<std::fs::File>> = std::sync::Mutex::new(None);

fn hold_namespaces(init: i32) {
    if let Ok(ns) = std::fs::File::open(format!("/proc/{init}/ns/mnt"))
        && let Ok(mut hold) = NAMESPACE_HOLD.lock()
    {
        *hold = Some(ns);
    }
}

/// Lets the job's namespaces go (called once the report is sent).
pub(crate) fn release_namespaces() {
    if let Ok(mut hold) = NAMESPACE_HOLD.lock() {
        hold.take();
    }
}

/// Runs the job in the full sandbox. Returns once every process of it is gone.
pub(crate) fn run(
    control: &mut UnixStream,
    spec: &SpawnSpec,
    sb: &SandboxSpec,
    netns: Option<OwnedFd>,
) -> ExitReport {
    let started = Instant::now();
    // Compiled once per zygote, before any fork: the job only has to install it.
    let filters = match crate::seccomp::compiled(!sb.inotify) {
        Ok(f) => f,
        Err(e) => return setup_failed("seccomp compile", e),
    };
    let (Ok((sync_r, sync_w)), Ok((report_r, report_w))) = (pipe(), pipe()) else {
        return setup_failed("pipe", std::io::Error::last_os_error());
    };
    // No supplementary groups of warden's may reach the job (root only: a rootless warden
    // cannot drop them; see docs/sandbox.md).
    // SAFETY: setgroups with an empty list.
    unsafe { libc::setgroups(0, std::ptr::null()) };

    // Limits that cgroups enforce: memory (with no swap), processes, CPU. On v2 the cgroup is
    // made first and the init cloned straight into it; on v1 it is made while the init builds
    // the root, and the init then moves itself in (see `init.rs`).
    let v1 = matches!(sb.cgroups, CgroupHome::V1 { .. });
    let limits = cgroup_limits(sb);
    let mut cgroup = None;
    if !v1 {
        match JobCgroup::create(&sb.cgroups, &sb.cgroup_name, limits) {
            Ok(cg) => cgroup = Some(cg),
            Err(e) => return setup_failed("cgroup", e),
        }
    }
    let into = match cgroup.as_ref().and_then(JobCgroup::v2_fd).transpose() {
        Ok(fd) => fd,
        Err(e) => return setup_failed("open cgroup", e),
    };
    let parents = sb.cgroups.v1_parents(&limits);
    let attach = format!("{}/tasks", sb.cgroup_name);
    let init = Init {
        parents: &parents,
        attach: &attach,
        sync_r,
        report_w,
    };
    let pid = match init.clone_into_namespaces(spec, sb, filters, netns, into) {
        Ok(pid) => pid,
        Err(e) => return setup_failed("clone namespaces", e),
    };
    // Hold the job's mount namespace: when the init exits, every process of the job is gone,
    // but freeing the namespace's mounts waits for an RCU grace period; holding it moves that
    // wait past the report.
    hold_namespaces(pid);
    // Our stdout/stderr are the job's pipes; only the job may hold them from now on.
    crate::fd::release_stdio();

    let abort = |step: &str, e: std::io::Error| {
        // SAFETY: kill our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        reap(pid);
        setup_failed(step, e)
    };
    if sb.rootless {
        if let Err(e) = map_init_ids(pid) {
            return abort("uid map of the init", e);
        }
        write_all(&sync_w, b"m");
    }
    if v1 {
        match JobCgroup::create(&sb.cgroups, &sb.cgroup_name, limits) {
            Ok(cg) => cgroup = Some(cg),
            Err(e) => return abort("cgroup", e),
        }
    }
    let mut out = ExitReport {
        enforcement: enforcement(&spec.rlimits, sb, cgroup.as_ref()),
        ..ExitReport::default()
    };
    // The init may move into it now. A staged job's init waits on the same pipe before each
    // stage, for warden's go-ahead.
    write_all(&sync_w, b"g");

    let mut bytes = Vec::new();
    supervise(
        control,
        pid,
        (&report_r, &sync_w),
        started,
        spec.timeout_ms,
        &mut out,
        &mut bytes,
    );
    drop(sync_w);
    // Whatever the init still had to say.
    let _ = std::fs::File::from(report_r).read_to_end(&mut bytes);
    super::report::apply(&bytes, &mut out);
    finish(&mut out, cgroup.as_ref(), spec.rlimits.cpu_s);
    out.wall_ms = started.elapsed().as_millis() as u64;
    drop(cgroup);
    out
}

/// The job's cgroup limits; a gVisor job's `pids` also holds runsc's own tasks.
fn cgroup_limits(sb: &SandboxSpec) -> crate::CgroupLimits {
    let mut limits = sb.limits;
    if sb.gvisor.is_some() {
        limits.pids = limits
            .pids
            .map(|p| p.saturating_add(crate::gvisor::PIDS_OVERHEAD));
    }
    limits
}

/// A rootless init's user namespace maps only the calling user and group, as its root; it may
/// never call `setgroups` (the kernel's rule for an unprivileged map).
fn map_init_ids(pid: i32) -> std::io::Result<()> {
    // SAFETY: plain id getters.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let write = |file: &str, text: String| {
        std::fs::write(format!("/proc/{pid}/{file}"), text)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{file}: {e}")))
    };
    write("setgroups", "deny".into())?;
    write("uid_map", format!("0 {uid} 1\n"))?;
    write("gid_map", format!("0 {gid} 1\n"))
}

/// How long a killed job's init has to copy its artifacts out before it is killed too.
const KILL_GRACE: Duration = Duration::from_secs(30);

/// What the clone hands to the init.
struct Init<'a> {
    parents: &'a [PathBuf],
    attach: &'a str,
    sync_r: OwnedFd,
    report_w: OwnedFd,
}

/// `struct clone_args` of `clone3(2)`, up to `cgroup` (`CLONE_ARGS_SIZE_VER2`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

impl Init<'_> {
    /// Clones the init into new PID, mount, IPC, UTS (and, unless the job shares the host's,
    /// network; rootless, user) namespaces, and on v2 straight into `cgroup`. Returns its pid;
    /// the child never returns.
    fn clone_into_namespaces(
        self,
        spec: &SpawnSpec,
        sb: &SandboxSpec,
        filters: &[seccompiler::BpfProgram],
        netns: Option<OwnedFd>,
        cgroup: Option<OwnedFd>,
    ) -> std::io::Result<i32> {
        let mut flags =
            libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
        if sb.rootless {
            flags |= libc::CLONE_NEWUSER;
        }
        // A fresh network namespace: taken ready-made from the zygote's pool when there is one
        // (creating one is the costliest step of the whole setup), else created here. A
        // rootless init cannot join a namespace of the host's user namespace.
        let netns = if sb.network || sb.rootless {
            None
        } else {
            netns
        };
        if !sb.network && netns.is_none() {
            flags |= libc::CLONE_NEWNET;
        }
        let mut args = CloneArgs {
            flags: flags as u64,
            exit_signal: libc::SIGCHLD as u64,
            ..CloneArgs::default()
        };
        if let Some(fd) = &cgroup {
            args.flags |= CLONE_INTO_CGROUP;
            args.cgroup = fd.as_raw_fd() as u64;
        }
        // SAFETY: a fork-like clone3 (no new stack) of this single-threaded process, with a
        // valid clone_args of the size given; the child runs `init_main`, which never returns.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &args as *const CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        } as i32;
        if pid < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if pid == 0 {
            drop(cgroup);
            let args = InitArgs {
                cgroup: CgroupTarget {
                    parents: self.parents,
                    attach: self.attach,
                    ready: self.sync_r,
                },
                spec,
                sandbox: sb,
                filters,
                netns,
            };
            init_main(args, self.report_w);
        }
        Ok(pid)
    }
}

/// The cgroup's verdict: peak memory and the limit that ended the job, if one did.
fn finish(out: &mut ExitReport, cgroup: Option<&JobCgroup>, cpu_s: Option<u64>) {
    if let Some(cg) = cgroup {
        cg.kill_all();
        let stats = cg.stats();
        out.peak_memory_bytes = stats.peak_memory_bytes;
        out.cpu_throttled_ms = stats.cpu_throttled_us.map(|us| us / 1000);
        out.limit_hit = if stats.oom_killed {
            Some("memory_limit".into())
        } else if stats.pids_max_hit {
            Some("pids_limit".into())
        } else {
            None
        };
    }
    if out.limit_hit.is_none() {
        // A job that ignored SIGXCPU is killed at the hard limit, a second later: its CPU time
        // says why.
        let cpu_spent = cpu_s.is_some_and(|s| out.user_cpu_ms + out.system_cpu_ms >= s * 1000);
        out.limit_hit = match out.signal {
            Some(libc::SIGXFSZ) => Some("file_size_limit".into()),
            Some(libc::SIGXCPU) => Some("cpu_limit".into()),
            Some(libc::SIGKILL) if cpu_spent && out.killed_by.is_none() => Some("cpu_limit".into()),
            _ => None,
        };
    }
}

/// What enforces each limit of a sandboxed job, for the record.
fn enforcement(
    rlimits: &Rlimits,
    sb: &SandboxSpec,
    cg: Option<&JobCgroup>,
) -> BTreeMap<String, String> {
    let cgv = cg
        .map(|c| format!("cgroup v{}", c.version()))
        .unwrap_or_else(|| "none".into());
    let set_or = |on: bool, how: String| if on { how } else { "not set".into() };
    let rl = |on: bool| set_or(on, "rlimit".into());
    let cpu = match cg.map(JobCgroup::version) {
        Some(2) => format!("{cgv} (cpu.max)"),
        _ => format!("{cgv} (cfs quota)"),
    };
    BTreeMap::from([
        ("wall_time".into(), "supervisor".into()),
        (
            "memory".into(),
            set_or(sb.limits.memory_bytes.is_some(), format!("{cgv} (no swap)")),
        ),
        (
            "pids".into(),
            set_or(
                sb.limits.pids.is_some(),
                if sb.gvisor.is_some() {
                    format!("{cgv} (with {} for runsc)", crate::gvisor::PIDS_OVERHEAD)
                } else {
                    cgv.clone()
                },
            ),
        ),
        ("cpus".into(), set_or(sb.limits.cpu_millis.is_some(), cpu)),
        ("tmpfs".into(), "tmpfs size".into()),
        (
            "artifacts".into(),
            format!(
                "tmpfs {} MiB, {} inodes",
                sb.artifacts_bytes >> 20,
                crate::artifacts::inode_cap(sb.artifacts_bytes)
            ),
        ),
        ("core_dumps".into(), "rlimit (off)".into()),
        ("cpu_time".into(), rl(rlimits.cpu_s.is_some())),
        ("file_size".into(), rl(rlimits.file_size_bytes.is_some())),
        ("open_files".into(), rl(rlimits.open_files.is_some())),
        (
            "kernel".into(),
            if sb.gvisor.is_some() {
                "gVisor (runsc): the job's system calls never reach the host's kernel".into()
            } else {
                "host kernel, seccomp and Landlock".into()
            },
        ),
        (
            "identity".into(),
            if sb.rootless {
                "rootless: user namespaces of the calling user".into()
            } else {
                "unprivileged host uid per slot".into()
            },
        ),
        (
            "network".into(),
            if sb.network {
                "host network namespace".into()
            } else if let Some(ports) = &sb.egress {
                format!(
                    "own network namespace, egress only through warden's gateway (DNS and TCP \
                     ports {:?})",
                    ports.tcp
                )
            } else {
                "own network namespace (loopback only)".into()
            },
        ),
    ])
}

/// Waits for the init, serving warden's commands and the deadline meanwhile, collecting the
/// init's report as it comes.
fn supervise(
    control: &mut UnixStream,
    pid: i32,
    (report, go): (&OwnedFd, &OwnedFd),
    started: Instant,
    timeout_ms: u64,
    out: &mut ExitReport,
    bytes: &mut Vec<u8>,
) {
    let pidfd = match crate::watch::pidfd(pid) {
        Ok(fd) => fd,
        Err(e) => {
            // SAFETY: kill our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            reap(pid);
            out.setup_error = Some(format!("pidfd_open: {e}"));
            return;
        }
    };
    let deadline = started + Duration::from_millis(timeout_ms);
    let mut watch = crate::watch::Watch {
        report: Some((report, bytes)),
        forwarded: 0,
        go: Some(go),
        killed_by: None,
        kill_grace: Some(KILL_GRACE),
    };
    // The init forwards SIGTERM to every process of the job. A kill is first asked of the
    // init (SIGUSR1: it kills the job and copies its artifacts out); a second one, or the
    // grace running out, is SIGKILL to it, which ends the namespace.
    let mut asked = false;
    let mut signal = |sig| {
        let sig = if sig == libc::SIGKILL && !asked {
            asked = true;
            libc::SIGUSR1
        } else {
            sig
        };
        // SAFETY: signals our own child.
        unsafe { libc::kill(pid, sig) };
    };
    crate::watch::wait_for(&pidfd, control, deadline, &mut watch, &mut signal);
    out.killed_by = watch.killed_by;
    reap(pid);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enforcement_names_what_holds_each_limit() {
        let sb = SandboxSpec {
            root: "/r".into(),
            work: "/w".into(),
            git: None,
            artifacts: "/a".into(),
            artifacts_bytes: 1 << 30,
            etc: "/e".into(),
            rootfs: None,
            binds: vec![],
            network: false,
            egress: None,
            inotify: false,
            uid: 1,
            gid: 1,
            rootless: false,
            cgroups: CgroupHome::Unavailable { why: "t".into() },
            limits: crate::CgroupLimits {
                memory_bytes: Some(1 << 20),
                ..Default::default()
            },
            tmpfs_bytes: 1 << 20,
            cgroup_name: "t".into(),
            secrets: Vec::new(),
            cwd: None,
            job_ids: None,
            writable_root_bytes: None,
            gvisor: None,
        };
        let rl = Rlimits {
            cpu_s: Some(1),
            file_size_bytes: None,
            open_files: None,
        };
        let m = enforcement(&rl, &sb, None);
        assert_eq!(m["memory"], "none (no swap)");
        assert_eq!(m["pids"], "not set");
        assert_eq!(m["cpu_time"], "rlimit");
        assert_eq!(m["file_size"], "not set");
        assert_eq!(m["network"], "own network namespace (loopback only)");
        assert_eq!(m["cpus"], "not set");
        assert_eq!(m["artifacts"], "tmpfs 1024 MiB, 65536 inodes");
    }
}
