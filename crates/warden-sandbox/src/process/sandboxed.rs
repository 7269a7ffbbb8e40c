//! The supervisor's side of a sandboxed job (host root, host namespaces): creates the job's
//! cgroup, clones the init into new namespaces, lets it move into the cgroup, watches it, kills
//! it, and reads its report. The job ends up holding no capability over any namespace it lives
//! in: they all belong to the host's user namespace. Every failure is reported as
//! `<step>: <error>` and the job never runs.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::init::{CgroupTarget, InitArgs, init_main};
use super::{reap, setup_failed};
use crate::cgroups::{CgroupLayout, JobCgroup};
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
    // Limits that cgroups enforce: memory (with no swap) and processes. The job's cgroup is
    // made while the init builds the root; the init then moves itself in (see `init.rs`).
    let layout = CgroupLayout::detect();
    let parents = match crate::cgroups::parents(&layout) {
        Ok(p) => p,
        Err(e) => return setup_failed("cgroup", e),
    };
    let attach = crate::cgroups::self_attach_name(&layout, &sb.cgroup_name);
    let (Ok((sync_r, sync_w)), Ok((report_r, report_w))) = (pipe(), pipe()) else {
        return setup_failed("pipe", std::io::Error::last_os_error());
    };
    // No supplementary groups of warden's may reach the job.
    // SAFETY: setgroups with an empty list.
    unsafe { libc::setgroups(0, std::ptr::null()) };

    let init = Init {
        parents: &parents,
        attach: &attach,
        sync_r,
        report_w,
    };
    let pid = match init.clone_into_namespaces(spec, sb, filters, netns) {
        Ok(pid) => pid,
        Err(e) => return setup_failed("clone namespaces", e),
    };
    // Hold the job's mount namespace: when the init exits, every process of the job is gone,
    // but freeing the namespace's mounts waits for an RCU grace period; holding it moves that
    // wait past the report.
    hold_namespaces(pid);
    // Our stdout/stderr are the job's pipes; only the job may hold them from now on.
    crate::fd::release_stdio();

    let cgroup = match JobCgroup::create(&layout, &sb.cgroup_name, sb.memory_bytes, sb.pids) {
        Ok(cg) => Some(cg),
        Err(_)
            if sb.memory_bytes.is_none() && sb.pids.is_none() && layout == CgroupLayout::None =>
        {
            None
        }
        Err(e) => {
            // SAFETY: kill our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            reap(pid);
            return setup_failed("cgroup", e);
        }
    };
    let mut out = ExitReport {
        enforcement: enforcement(&spec.rlimits, sb, cgroup.as_ref()),
        ..ExitReport::default()
    };
    // The init may move into it now.
    write_all(&sync_w, b"g");
    drop(sync_w);

    let mut bytes = Vec::new();
    supervise(
        control,
        pid,
        &report_r,
        started,
        spec.timeout_ms,
        &mut out,
        &mut bytes,
    );
    // Whatever the init still had to say.
    let _ = std::fs::File::from(report_r).read_to_end(&mut bytes);
    super::report::apply(&bytes, &mut out);
    finish(&mut out, cgroup.as_ref());
    out.wall_ms = started.elapsed().as_millis() as u64;
    drop(cgroup);
    out
}

/// What the clone hands to the init.
struct Init<'a> {
    parents: &'a [PathBuf],
    attach: &'a str,
    sync_r: OwnedFd,
    report_w: OwnedFd,
}

impl Init<'_> {
    /// Clones the init into new PID, mount, IPC, UTS (and, unless the job shares the host's,
    /// network) namespaces. Returns its pid; the child never returns.
    fn clone_into_namespaces(
        self,
        spec: &SpawnSpec,
        sb: &SandboxSpec,
        filters: &[seccompiler::BpfProgram],
        netns: Option<OwnedFd>,
    ) -> std::io::Result<i32> {
        let mut flags =
            libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
        // A fresh network namespace: taken ready-made from the zygote's pool when there is one
        // (creating one is the costliest step of the whole setup), else created here.
        let netns = if sb.network { None } else { netns };
        if !sb.network && netns.is_none() {
            flags |= libc::CLONE_NEWNET;
        }
        // SAFETY: a fork-like clone (no new stack) of this single-threaded process; the child
        // runs `init_main`, which never returns.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone,
                (flags | libc::SIGCHLD) as libc::c_ulong,
                0usize,
                0usize,
                0usize,
                0usize,
            )
        } as i32;
        if pid < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if pid == 0 {
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
fn finish(out: &mut ExitReport, cgroup: Option<&JobCgroup>) {
    if let Some(cg) = cgroup {
        cg.kill_all();
        let stats = cg.stats();
        out.peak_memory_bytes = stats.peak_memory_bytes;
        out.limit_hit = if stats.oom_killed {
            Some("memory_limit".into())
        } else if stats.pids_max_hit {
            Some("pids_limit".into())
        } else {
            None
        };
    }
    if out.limit_hit.is_none() {
        out.limit_hit = match out.signal {
            Some(libc::SIGXFSZ) => Some("file_size_limit".into()),
            Some(libc::SIGXCPU) => Some("cpu_limit".into()),
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
    BTreeMap::from([
        ("wall_time".into(), "supervisor".into()),
        (
            "memory".into(),
            set_or(sb.memory_bytes.is_some(), format!("{cgv} (no swap)")),
        ),
        ("pids".into(), set_or(sb.pids.is_some(), cgv.clone())),
        ("tmpfs".into(), "tmpfs size".into()),
        ("core_dumps".into(), "rlimit (off)".into()),
        ("cpu_time".into(), rl(rlimits.cpu_s.is_some())),
        ("file_size".into(), rl(rlimits.file_size_bytes.is_some())),
        ("open_files".into(), rl(rlimits.open_files.is_some())),
        (
            "network".into(),
            if sb.network {
                "host network namespace".into()
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
    report: &OwnedFd,
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
        killed_by: None,
    };
    // The init forwards SIGTERM to every process of the job; SIGKILL to it ends the namespace.
    // SAFETY: signals our own child.
    let mut signal = |sig| unsafe {
        libc::kill(pid, sig);
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
            etc: "/e".into(),
            rootfs: None,
            binds: vec![],
            network: false,
            inotify: false,
            uid: 1,
            gid: 1,
            memory_bytes: Some(1 << 20),
            pids: None,
            tmpfs_bytes: 1 << 20,
            cgroup_name: "t".into(),
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
    }
}
