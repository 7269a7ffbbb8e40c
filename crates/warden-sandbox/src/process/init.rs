//! pid 1 of the job's new PID, mount, IPC, UTS and network namespaces, still privileged:
//! builds the root and pivots into it, moves into the job's cgroup, starts the job, writes its
//! uid map, reaps orphans, and by exiting takes every process of the namespace with it.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use seccompiler::BpfProgram;

use super::job::{JobPipes, job_main};
use super::report::InitMessage;
use crate::fd::{pipe, wait_byte, write_all};
use crate::paths::HOSTNAME;
use crate::sys::{Step, StepError, check, fail};
use crate::{SandboxSpec, SpawnSpec};

/// Where the init finds the job's cgroup, and the supervisor's go-ahead bytes on `ready`:
/// `m` once a rootless init's id maps are written, `g` once the job's cgroup exists.
pub(super) struct CgroupTarget<'a> {
    /// v1 hierarchies' `warden` directories the init moves itself into (`<dir>/<attach>`);
    /// empty on v2, where the init was cloned into its cgroup.
    pub parents: &'a [PathBuf],
    pub attach: &'a str,
    pub ready: OwnedFd,
}

/// What the init is handed by the supervisor's clone.
pub(super) struct InitArgs<'a> {
    pub cgroup: CgroupTarget<'a>,
    pub spec: &'a SpawnSpec,
    pub sandbox: &'a SandboxSpec,
    pub filters: &'a [BpfProgram],
    pub netns: Option<OwnedFd>,
}

pub(super) fn init_main(args: InitArgs<'_>, report: OwnedFd) -> ! {
    let code = match init(args, &report) {
        Ok(()) => 0,
        Err(e) => {
            InitMessage::SetupFailed { error: e.0 }.send(&report);
            1
        }
    };
    // SAFETY: leaving the init ends the PID namespace; nothing to unwind.
    unsafe { libc::_exit(code) }
}

fn init(args: InitArgs<'_>, report: &OwnedFd) -> Step {
    let InitArgs {
        cgroup,
        spec,
        sandbox,
        filters,
        netns,
    } = args;
    if sandbox.rootless && !wait_byte(&cgroup.ready) {
        return Err(fail(
            "wait for id maps",
            io::Error::from(io::ErrorKind::UnexpectedEof),
        ));
    }
    // fd 0 is the supervisor's control socket: the job must never hold it. An egress job's
    // init keeps a close-on-exec copy until the gateway's sockets are handed over on it.
    let control = match &sandbox.egress {
        Some(_) => {
            // SAFETY: duplicates fd 0 (ours) to a new close-on-exec descriptor, owned below.
            let fd = unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3) };
            check("keep the control socket", fd)?;
            // SAFETY: just created; owned from here.
            Some(unsafe { OwnedFd::from_raw_fd(fd) })
        }
        None => None,
    };
    let devnull = std::fs::File::open("/dev/null").map_err(|e| fail("open /dev/null", e))?;
    // SAFETY: replaces fd 0 with /dev/null.
    check("stdin", unsafe { libc::dup2(devnull.as_raw_fd(), 0) })?;
    drop(devnull);
    // The cgroup hierarchies, opened now: after pivot_root they are out of sight.
    let parents = cgroup
        .parents
        .iter()
        .map(|p| std::fs::File::open(p).map_err(|e| fail(format!("open {}", p.display()), e)))
        .collect::<Result<Vec<_>, _>>()?;
    // Where /artifacts is copied to when the job is over: out of sight after pivot_root.
    let host_artifacts = crate::fd::open_dir(&sandbox.artifacts)
        .map_err(|e| fail(format!("open {}", sandbox.artifacts.display()), e))?;
    // SAFETY: a valid buffer and length.
    check("sethostname", unsafe {
        libc::sethostname(HOSTNAME.as_ptr().cast(), HOSTNAME.len())
    })?;
    match netns {
        // Pooled namespaces were never used and already have loopback up.
        // SAFETY: setns with a namespace descriptor we own.
        Some(ns) => check("join network namespace", unsafe {
            libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET)
        })?,
        None if !sandbox.network => crate::net::loopback_up()?,
        None => {}
    }
    if let (Some(ports), Some(control)) = (&sandbox.egress, control) {
        let v6 = crate::net::egress_routes()?;
        let sockets = crate::net::gateway_sockets(ports, v6)?;
        crate::net::send_gateway(&control, &sockets)?;
    }
    if let Some(gvisor) = &sandbox.gvisor {
        return run_gvisor(
            spec,
            sandbox,
            gvisor,
            &cgroup,
            parents,
            &host_artifacts,
            report,
        );
    }
    // A writable root's lower directories, for telling new paths from changed ones at the end.
    let (lowers, idmap) = if sandbox.writable_root_bytes.is_some() {
        if sandbox.rootless {
            // Idmapped mounts need root in the initial user namespace.
            return Err(StepError(
                "writable root: needs warden running as root (idmapped mounts); this one is rootless"
                    .into(),
            ));
        }
        (
            writable_lowers(sandbox)?,
            Some(idmap_userns(sandbox.uid, sandbox.gid)?),
        )
    } else {
        (Vec::new(), None)
    };
    crate::mounts::build_root(
        &mut crate::sys::Linux,
        sandbox,
        idmap.as_ref().map(AsRawFd::as_raw_fd),
    )?;
    drop(idmap);
    // Its upper directories: kept open by the init alone, detached before the job starts.
    let upper = match sandbox.writable_root_bytes {
        Some(_) => Some(detach_upper()?),
        None => None,
    };
    enter_cgroup(&cgroup.ready, &parents, cgroup.attach)?;
    drop(parents);
    // A cgroup namespace rooted at the job's own cgroup.
    // SAFETY: plain unshare flag.
    check("unshare cgroup", unsafe {
        libc::unshare(libc::CLONE_NEWCGROUP)
    })?;
    let wait_status = if spec.stages.is_empty() {
        let job = start_job(spec, sandbox, filters, None)?;
        InitMessage::Execd {
            at_us: crate::monotonic_us(),
        }
        .send(report);
        // The init outlives an OOM kill of the job's cgroup (`memory.oom.group` spares -1000)
        // to copy the artifacts out; set after the job is forked, so the job never inherits
        // it. Root only: a rootless init may not lower its score, dies with its job in a group
        // OOM kill, and the record then says the artifacts are incomplete.
        let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
        install_handlers();
        reap_until(job)
    } else {
        // Each stage's process sets its own score back to 0 before it drops its privileges.
        let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
        install_handlers();
        super::stages::run_stages(spec, sandbox, filters, &cgroup.ready, report)
    };
    // Nothing of the job may run on while its artifacts are copied.
    end_everything();
    send_exited(report, wait_status);
    if let Some(upper) = &upper {
        let changes = crate::overlay::changes(upper, &lowers, sandbox.rootless);
        InitMessage::RootChanges { changes }.send(report);
    }
    let copy = crate::artifacts::copy_out(Path::new(crate::paths::ARTIFACTS), &host_artifacts);
    InitMessage::Artifacts { copy }.send(report);
    Ok(())
}

/// The rest of a gVisor job's init: the root is staged (not pivoted into), `runsc` runs the job
/// inside the job's cgroup, and its exit says how the job ended (see `gvisor.rs`).
fn run_gvisor(
    spec: &SpawnSpec,
    sandbox: &SandboxSpec,
    gvisor: &crate::GvisorSpec,
    cgroup: &CgroupTarget<'_>,
    parents: Vec<std::fs::File>,
    host_artifacts: &OwnedFd,
    report: &OwnedFd,
) -> Step {
    if sandbox.rootless {
        return Err(StepError(
            "gvisor: needs warden running as root; this one is rootless".into(),
        ));
    }
    let bundle = crate::gvisor::prepare(spec, sandbox)?;
    enter_cgroup(&cgroup.ready, &parents, cgroup.attach)?;
    drop(parents);
    let runsc = crate::gvisor::start(&bundle, gvisor, sandbox)?;
    // A cancel's SIGTERM is only noted by the handler; the loop below hands it to runsc's
    // sandbox, which delivers it to the job (runsc's gofer must live on until the job is gone).
    GVISOR_TERM.store(1, std::sync::atomic::Ordering::SeqCst);
    let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
    install_handlers();
    let ended = crate::watch::pidfd(runsc).map_err(|e| fail("pidfd_open runsc", e))?;
    // SIGTERM is blocked but while the init waits: one that comes is either noted before the
    // check below or interrupts the wait, never lost between the two.
    let waiting = block(libc::SIGTERM);
    loop {
        if GVISOR_TERM.swap(1, std::sync::atomic::Ordering::SeqCst) == 2 {
            bundle.terminate();
        }
        let mut fd = libc::pollfd {
            fd: ended.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no timeout, a valid signal mask.
        let rc = unsafe { libc::ppoll(&mut fd, 1, std::ptr::null(), &waiting) };
        if rc > 0 || (rc < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted) {
            // runsc ended (or the wait cannot be made: reaping it below waits instead).
            break;
        }
    }
    let status = super::reap(runsc);
    end_everything();
    let status = crate::gvisor::outcome(&bundle, status).map_err(StepError)?;
    send_exited(report, status);
    let artifacts = bundle
        .rootfs()
        .join(crate::paths::ARTIFACTS.trim_start_matches('/'));
    let copy = crate::artifacts::copy_out(&artifacts, host_artifacts);
    InitMessage::Artifacts { copy }.send(report);
    Ok(())
}

/// Set by the init's handlers once the job is to end (a cancel's SIGTERM, a kill): no further
/// stage starts.
pub(super) static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Blocks `sig`; returns the mask it was blocked from (for waits that let it in).
pub(super) fn block(sig: libc::c_int) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old);
        old
    }
}

/// A gVisor job's init: 0 natively (SIGTERM goes to every process of the namespace), 1 under
/// gVisor, 2 once a SIGTERM came that the init's loop has yet to hand to runsc's sandbox.
static GVISOR_TERM: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// The lower directory of each overlay of a writable root, by the name its upper directory
/// has (as `mounts::System` names them), opened while the host's paths are in sight.
fn writable_lowers(
    sandbox: &crate::SandboxSpec,
) -> Result<Vec<(String, OwnedFd)>, crate::sys::StepError> {
    let open =
        |p: &Path| crate::fd::open_dir(p).map_err(|e| fail(format!("open {}", p.display()), e));
    let mut out = Vec::new();
    match &sandbox.rootfs {
        None => {
            for dir in crate::mounts::SYSTEM_DIRS {
                let p = Path::new(dir);
                if std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()) {
                    out.push((dir.trim_start_matches('/').to_string(), open(p)?));
                }
            }
            out.push(("etc".to_string(), open(&sandbox.etc)?));
        }
        Some(rootfs) => {
            let entries = std::fs::read_dir(rootfs)
                .map_err(|e| fail(format!("rootfs {}", rootfs.display()), e))?;
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if entry.file_type().is_ok_and(|t| t.is_dir())
                    && !crate::mounts::RESERVED_TOP.contains(&name.as_str())
                {
                    out.push((name, open(&entry.path())?));
                }
            }
        }
    }
    Ok(out)
}

/// A user namespace whose root is the job's host uid and gid (`0 uid 1`): through an idmapped
/// mount of it, files the host's root owns belong to the job. Made by a child that unshares it
/// and waits while the maps are written and the namespace opened.
fn idmap_userns(uid: u32, gid: u32) -> Result<OwnedFd, StepError> {
    let (ready_r, ready_w) = pipe()?;
    let (done_r, done_w) = pipe()?;
    // SAFETY: the child calls only async-signal-safe functions and leaves with _exit.
    let pid = unsafe { libc::fork() };
    check("fork (id map)", pid)?;
    if pid == 0 {
        drop((ready_r, done_w));
        // SAFETY: plain unshare flag.
        if unsafe { libc::unshare(libc::CLONE_NEWUSER) } == 0 {
            // Its pid as the host's /proc (still the one mounted) knows it, not as this
            // namespace numbers it.
            let mut buf = [0u8; 32];
            // SAFETY: readlink into a buffer of the length passed.
            let n = unsafe {
                libc::readlink(c"/proc/self".as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            };
            if n > 0 {
                write_all(&ready_w, &buf[..n as usize]);
            }
        }
        drop(ready_w);
        let _ = wait_byte(&done_r);
        // SAFETY: leaves without unwinding or running destructors.
        unsafe { libc::_exit(0) }
    }
    drop((ready_w, done_r));
    let result = (move || {
        let mut buf = [0u8; 32];
        let n = std::fs::File::from(ready_r)
            .read(&mut buf)
            .map_err(|e| fail("id map namespace", e))?;
        let Some(pid) = std::str::from_utf8(&buf[..n])
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            return Err(fail(
                "id map namespace",
                io::Error::other("the helper failed"),
            ));
        };
        let write = |file: &str, text: String| {
            std::fs::write(format!("/proc/{pid}/{file}"), text)
                .map_err(|e| fail(format!("id map {file}"), e))
        };
        write("uid_map", format!("0 {uid} 1\n"))?;
        write("setgroups", "deny".into())?;
        write("gid_map", format!("0 {gid} 1\n"))?;
        std::fs::File::open(format!("/proc/{pid}/ns/user"))
            .map(OwnedFd::from)
            .map_err(|e| fail("open the id map namespace", e))
    })();
    drop(done_w);
    let mut st = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(pid, &mut st, 0) };
    result
}

/// Opens the writable root's upper tmpfs and detaches it from the job's tree.
fn detach_upper() -> Result<OwnedFd, crate::sys::StepError> {
    let at = Path::new(crate::overlay::UPPER);
    let fd = crate::fd::open_dir(at).map_err(|e| fail("open the upper directory", e))?;
    let c = crate::sys::cstr(at)?;
    // SAFETY: umount2 with a valid C string.
    check("detach the upper directory", unsafe {
        libc::umount2(c.as_ptr(), libc::MNT_DETACH)
    })?;
    Ok(fd)
}

/// Kills every process left in the namespace (but the init) and reaps them all.
pub(super) fn end_everything() {
    // SAFETY: kill(-1) from pid 1 reaches every other process of the PID namespace.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    loop {
        let mut st = 0;
        // SAFETY: waitpid writes into a valid int.
        let rc = unsafe { libc::waitpid(-1, &mut st, 0) };
        if rc < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// Into the job's cgroup, which the supervisor made meanwhile, before the job starts.
fn enter_cgroup(ready: &OwnedFd, parents: &[std::fs::File], attach: &str) -> Step {
    if !wait_byte(ready) {
        return Err(fail(
            "wait for cgroup",
            io::Error::from(io::ErrorKind::UnexpectedEof),
        ));
    }
    let attach = crate::sys::cstr(Path::new(attach))?;
    for dir in parents {
        // "0" moves the calling task itself (through v1 `tasks`: no global lock).
        // SAFETY: openat relative to an open directory, with a valid C string.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                attach.as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            )
        };
        check("cgroup attach", fd)?;
        // SAFETY: a descriptor just opened and owned here.
        let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        file.write_all(b"0").map_err(|e| fail("cgroup attach", e))?;
    }
    Ok(())
}

/// Forks the job, maps its uid and gid to the unprivileged host ids once it has its own user
/// namespace, and waits for its exec. Returns its pid.
/// A stage runner (`runner`, a staged job) resets its OOM score: the init already protected
/// itself from the OOM killer, and the job must not be.
pub(super) fn start_job(
    spec: &SpawnSpec,
    sandbox: &SandboxSpec,
    filters: &[BpfProgram],
    runner: Option<super::job::RunnerPipes>,
) -> Step<i32> {
    let (exec_r, exec_w) = pipe()?;
    let (unshared_r, unshared_w) = pipe()?;
    let (mapped_r, mapped_w) = pipe()?;
    // SAFETY: fork of a single-threaded process; the child runs job_main and never returns.
    let job = unsafe { libc::fork() };
    if job < 0 {
        return Err(fail("fork job", io::Error::last_os_error()));
    }
    if job == 0 {
        drop((exec_r, unshared_r, mapped_w));
        if runner.is_some() {
            let _ = std::fs::write("/proc/self/oom_score_adj", "0");
        }
        let pipes = JobPipes {
            exec: exec_w,
            unshared: unshared_w,
            mapped: mapped_r,
            runner,
        };
        job_main(pipes, spec, filters);
    }
    drop((exec_w, unshared_w, mapped_r));
    if wait_byte(&unshared_r) {
        let write = |file: &str, text: String| {
            std::fs::write(format!("/proc/{job}/{file}"), text)
                .map_err(|e| fail(format!("write {file}"), e))
        };
        write("setgroups", "deny".into())?;
        let (uid, gid) = sandbox.inner_ids();
        write("uid_map", format!("{uid} {} 1\n", sandbox.uid))?;
        write("gid_map", format!("{gid} {} 1\n", sandbox.gid))?;
        write_all(&mapped_w, b"m");
    }
    drop(mapped_w);
    // Empty means the job exec'd; otherwise it says what failed.
    let mut why = String::new();
    let _ = std::fs::File::from(exec_r).read_to_string(&mut why);
    if !why.is_empty() {
        super::reap(job);
        return Err(StepError(why));
    }
    Ok(job)
}

extern "C" fn forward_term(_: libc::c_int) {
    use std::sync::atomic::Ordering::SeqCst;
    // Atomics are async-signal-safe.
    STOP.store(true, SeqCst);
    if GVISOR_TERM.compare_exchange(1, 2, SeqCst, SeqCst).is_ok() {
        return;
    }
    // SAFETY: kill is async-signal-safe; -1 from pid 1 reaches every process of the namespace.
    unsafe {
        libc::kill(-1, libc::SIGTERM);
        libc::kill(-1, libc::SIGCONT);
    }
}

extern "C" fn kill_job(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::SeqCst);
    // SAFETY: as above.
    unsafe { libc::kill(-1, libc::SIGKILL) };
}

/// The supervisor's SIGTERM (a cancel) reaches every process of the job; its SIGUSR1 (the
/// deadline, a kill request) kills them all, and the init lives on to copy the artifacts out.
/// The init inherited the supervisor's mask, in which SIGTERM is blocked: unblocked here, or
/// the forward never runs.
fn install_handlers() {
    // SAFETY: installs handlers that only call kill (async-signal-safe), then unblocks the
    // signals; sigset_t is initialised by sigemptyset before use.
    unsafe {
        for (sig, handler) in [
            (libc::SIGTERM, forward_term as extern "C" fn(libc::c_int)),
            (libc::SIGUSR1, kill_job),
            (libc::SIGALRM, super::stages::stage_timeout),
        ] {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::sigaddset(&mut set, libc::SIGALRM);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

/// Reaps every orphan until the job itself ends; returns its wait status.
pub(super) fn reap_until(job: i32) -> i32 {
    loop {
        let mut st = 0;
        // SAFETY: waitpid writes into a valid int.
        let rc = unsafe { libc::waitpid(-1, &mut st, 0) };
        if rc == job {
            return st;
        }
        if rc < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return 0;
        }
    }
}

/// Tells the supervisor how the job ended, with the usage of every process the init reaped.
fn send_exited(report: &OwnedFd, wait_status: i32) {
    let usage = children_usage();
    let us = |tv: libc::timeval| tv.tv_sec * 1_000_000 + tv.tv_usec;
    InitMessage::Exited {
        wait_status,
        user_us: us(usage.ru_utime),
        system_us: us(usage.ru_stime),
        max_rss_kb: usage.ru_maxrss,
    }
    .send(report);
}

fn children_usage() -> libc::rusage {
    // SAFETY: getrusage writes into a valid struct.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut u);
        u
    }
}
