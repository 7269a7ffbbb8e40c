//! The full sandbox, set up in one straight line. Three processes take part:
//!
//! - the **supervisor** (host root, host namespaces): creates the job's cgroup, clones the init,
//!   places it in the cgroup, watches it, kills it;
//! - the **init** (pid 1 of new PID, mount, IPC, UTS and network namespaces, still privileged):
//!   builds the root and pivots into it, starts the job, writes its uid map, reaps orphans, and
//!   by exiting takes every process of the namespace with it;
//! - the **job** (pid 2): enters a user namespace of its own where it is uid 1000 (an
//!   unprivileged host uid outside), drops every capability, sets `no_new_privs`, applies
//!   Landlock and seccomp, and execs.
//!
//! The job ends up holding no capability over any namespace it lives in: they all belong to the
//! host's user namespace. Every failure is reported as `<step>: <error>` and the job never runs.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use seccompiler::BpfProgram;

use crate::cgroups::{CgroupLayout, JobCgroup};
use crate::mounts::{self, WORK};
use crate::sys::{Step, check, fail};
use crate::{ExitReport, JOB_UID, Rlimits, SandboxSpec, SpawnSpec};

/// The job's hostname (its own UTS namespace).
pub(crate) const HOSTNAME: &str = "warden";

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

fn pipe() -> Step<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into the array.
    check("pipe", unsafe {
        libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC)
    })?;
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Writes all of `data` (best effort: a reader that is gone is not an error here).
fn write_all(fd: &OwnedFd, mut data: &[u8]) {
    while !data.is_empty() {
        // SAFETY: writes from a valid buffer to a descriptor we hold.
        let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            return;
        }
        data = &data[n as usize..];
    }
}

/// Blocks until one byte arrives; false on EOF.
fn wait_byte(fd: &OwnedFd) -> bool {
    let mut b = [0u8; 1];
    loop {
        // SAFETY: reads into a valid one-byte buffer.
        let n = unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return n == 1;
    }
}

/// Runs the job in the full sandbox. Returns once every process of it is gone.
pub(crate) fn run(
    control: &mut UnixStream,
    spec: &SpawnSpec,
    sb: &SandboxSpec,
    netns: Option<OwnedFd>,
) -> ExitReport {
    let mut out = ExitReport::default();
    let started = Instant::now();

    // Compiled once per zygote, before any fork: the job only has to install it.
    let filters = match crate::seccomp::compiled() {
        Ok(f) => f,
        Err(e) => {
            out.setup_error = Some(format!("seccomp compile: {e}"));
            return out;
        }
    };
    // Limits that cgroups enforce: memory (with no swap) and processes. The job's cgroup is
    // made while the init builds the root; the init then moves itself in (see `init`).
    let layout = CgroupLayout::detect();
    let parents = match crate::cgroups::parents(&layout) {
        Ok(p) => p,
        Err(e) => {
            out.setup_error = Some(format!("cgroup: {e}"));
            return out;
        }
    };
    let attach = crate::cgroups::self_attach_name(&layout, &sb.cgroup_name);
    let Ok((sync_r, sync_w)) = pipe() else {
        out.setup_error = Some(format!("pipe: {}", io::Error::last_os_error()));
        return out;
    };
    let Ok((report_r, report_w)) = pipe() else {
        out.setup_error = Some(format!("pipe: {}", io::Error::last_os_error()));
        return out;
    };
    // No supplementary groups of warden's may reach the job.
    // SAFETY: setgroups with an empty list.
    unsafe { libc::setgroups(0, std::ptr::null()) };

    let mut flags =
        libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    // A fresh network namespace: taken ready-made from the zygote's pool when there is one
    // (creating one is the costliest step of the whole setup), else created here.
    let netns = if sb.network { None } else { netns };
    if !sb.network && netns.is_none() {
        flags |= libc::CLONE_NEWNET;
    }
    // SAFETY: a fork-like clone (no new stack) of this single-threaded process; the child runs
    // `init_main`, which never returns.
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
        out.setup_error = Some(format!("clone namespaces: {}", io::Error::last_os_error()));
        return out;
    }
    if pid == 0 {
        drop((report_r, sync_w));
        let cgroup = CgroupTarget {
            parents: &parents,
            attach: &attach,
            ready: sync_r,
        };
        init_main(cgroup, report_w, spec, sb, filters, netns);
    }
    drop((report_w, sync_r));
    // Hold the job's mount namespace: when the init exits, every process of the job is gone,
    // but freeing the namespace's mounts waits for an RCU grace period; holding it moves that
    // wait past the report.
    hold_namespaces(pid);

    // Our stdout/stderr are the job's pipes; only the job may hold them from now on.
    crate::supervisor::release_stdio();

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
            out.setup_error = Some(format!("cgroup: {e}"));
            return out;
        }
    };
    out.enforcement = enforcement(spec, sb, cgroup.as_ref());
    // The init may move into it now.
    write_all(&sync_w, b"g");
    drop(sync_w);

    let mut lines = Vec::new();
    supervise(
        control,
        pid,
        &report_r,
        started,
        spec.timeout_ms,
        &mut out,
        &mut lines,
    );
    // Whatever the init still had to say.
    let mut rest = Vec::new();
    let _ = std::fs::File::from(report_r).read_to_end(&mut rest);
    lines.extend_from_slice(&rest);
    parse_report(&lines, &mut out);

    if let Some(cg) = &cgroup {
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
    out.wall_ms = started.elapsed().as_millis() as u64;
    drop(cgroup);
    out
}

fn enforcement(
    spec: &SpawnSpec,
    sb: &SandboxSpec,
    cg: Option<&JobCgroup>,
) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let cgv = cg
        .map(|c| format!("cgroup v{}", c.version()))
        .unwrap_or_else(|| "none".into());
    m.insert("wall_time".into(), "supervisor".into());
    m.insert(
        "memory".into(),
        if sb.memory_bytes.is_some() {
            format!("{cgv} (no swap)")
        } else {
            "not set".into()
        },
    );
    m.insert(
        "pids".into(),
        if sb.pids.is_some() {
            cgv.clone()
        } else {
            "not set".into()
        },
    );
    m.insert("tmpfs".into(), "tmpfs size".into());
    m.insert("core_dumps".into(), "rlimit (off)".into());
    let rl = |on: bool| if on { "rlimit" } else { "not set" }.to_string();
    m.insert("cpu_time".into(), rl(spec.rlimits.cpu_s.is_some()));
    m.insert(
        "file_size".into(),
        rl(spec.rlimits.file_size_bytes.is_some()),
    );
    m.insert("open_files".into(), rl(spec.rlimits.open_files.is_some()));
    m.insert(
        "network".into(),
        if sb.network {
            "host network namespace".into()
        } else {
            "own network namespace (loopback only)".into()
        },
    );
    m
}

fn reap(pid: i32) -> i32 {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes into a valid int.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return status;
        }
    }
}

fn supervise(
    control: &mut UnixStream,
    pid: i32,
    report: &OwnedFd,
    started: Instant,
    timeout_ms: u64,
    out: &mut ExitReport,
    lines: &mut Vec<u8>,
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
        report: Some((report, lines)),
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

/// `ERR <step>: <error>` and `EXIT <wait status> <user µs> <system µs> <max rss KiB>` lines.
fn parse_report(lines: &[u8], out: &mut ExitReport) {
    let text = String::from_utf8_lossy(lines);
    let mut exited = false;
    for line in text.lines() {
        if let Some(err) = line.strip_prefix("ERR ") {
            out.setup_error.get_or_insert_with(|| err.to_string());
        } else if let Some(rest) = line.strip_prefix("EXIT ") {
            let v: Vec<i64> = rest
                .split_whitespace()
                .filter_map(|s| s.parse().ok())
                .collect();
            if let [status, ut, st, rss] = v[..] {
                let status = status as i32;
                if libc::WIFEXITED(status) {
                    out.exit_code = Some(libc::WEXITSTATUS(status));
                } else if libc::WIFSIGNALED(status) {
                    out.signal = Some(libc::WTERMSIG(status));
                }
                out.user_cpu_ms = ut as u64 / 1000;
                out.system_cpu_ms = st as u64 / 1000;
                out.max_rss_kb = rss as u64;
                exited = true;
            }
        }
    }
    if !exited && out.setup_error.is_none() {
        // The init was killed before its job ended (timeout, cancel, kill): so was the job.
        out.signal = Some(libc::SIGKILL);
    }
}

/// pid 1 of the job's namespaces.
/// Where the init finds the job's cgroup, and the signal that it exists.
struct CgroupTarget<'a> {
    parents: &'a [PathBuf],
    attach: &'a str,
    ready: OwnedFd,
}

fn init_main(
    cgroup: CgroupTarget<'_>,
    report: OwnedFd,
    spec: &SpawnSpec,
    sb: &SandboxSpec,
    filters: &[BpfProgram],
    netns: Option<OwnedFd>,
) -> ! {
    let code = match init(cgroup, &report, spec, sb, filters, netns) {
        Ok(()) => 0,
        Err(e) => {
            write_all(&report, format!("ERR {e}\n").as_bytes());
            1
        }
    };
    // SAFETY: leaving the init ends the PID namespace; nothing to unwind.
    unsafe { libc::_exit(code) }
}

extern "C" fn forward_term(_: libc::c_int) {
    // SAFETY: kill is async-signal-safe; -1 from pid 1 reaches every process of the namespace.
    unsafe {
        libc::kill(-1, libc::SIGTERM);
        libc::kill(-1, libc::SIGCONT);
    }
}

fn init(
    cgroup: CgroupTarget<'_>,
    report: &OwnedFd,
    spec: &SpawnSpec,
    sb: &SandboxSpec,
    filters: &[BpfProgram],
    netns: Option<OwnedFd>,
) -> Step {
    // fd 0 is the supervisor's control socket: the job must never hold it.
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
        None if !sb.network => loopback_up()?,
        None => {}
    }
    mounts::build_root(sb)?;

    // Into the job's cgroup, which the supervisor made meanwhile, before the job starts.
    if !wait_byte(&cgroup.ready) {
        return Err(fail(
            "wait for cgroup",
            io::Error::from(io::ErrorKind::UnexpectedEof),
        ));
    }
    let attach = crate::sys::cstr(Path::new(cgroup.attach))?;
    for dir in &parents {
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
    drop(parents);

    // A cgroup namespace rooted at the job's own cgroup.
    // SAFETY: plain unshare flag.
    check("unshare cgroup", unsafe {
        libc::unshare(libc::CLONE_NEWCGROUP)
    })?;

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
        job_main(exec_w, unshared_w, mapped_r, spec, filters);
    }
    drop((exec_w, unshared_w, mapped_r));

    // The job has its own user namespace now: map its uid and gid to the unprivileged host ids.
    if wait_byte(&unshared_r) {
        let write = |file: &str, text: String| {
            std::fs::write(format!("/proc/{job}/{file}"), text)
                .map_err(|e| fail(format!("write {file}"), e))
        };
        write("setgroups", "deny".into())?;
        write("uid_map", format!("{JOB_UID} {} 1\n", sb.uid))?;
        write("gid_map", format!("{JOB_UID} {} 1\n", sb.gid))?;
        write_all(&mapped_w, b"m");
    }
    drop(mapped_w);
    // Empty means the job exec'd; otherwise it says what failed.
    let mut why = String::new();
    let _ = std::fs::File::from(exec_r).read_to_string(&mut why);
    if !why.is_empty() {
        reap(job);
        return Err(crate::sys::StepError(why));
    }

    // SAFETY: installs a handler that only calls kill (async-signal-safe).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = forward_term as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
    }
    let mut status = 0;
    loop {
        let mut st = 0;
        // SAFETY: waitpid writes into a valid int.
        let rc = unsafe { libc::waitpid(-1, &mut st, 0) };
        if rc == job {
            status = st;
            break;
        }
        if rc < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break;
        }
    }
    // SAFETY: getrusage writes into a valid struct.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut u);
        u
    };
    let us = |tv: libc::timeval| tv.tv_sec * 1_000_000 + tv.tv_usec;
    write_all(
        report,
        format!(
            "EXIT {status} {} {} {}\n",
            us(usage.ru_utime),
            us(usage.ru_stime),
            usage.ru_maxrss
        )
        .as_bytes(),
    );
    Ok(())
}

/// Brings `lo` up in the job's network namespace: loopback works, nothing else exists.
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

/// pid 2: becomes the job.
fn job_main(
    exec: OwnedFd,
    unshared: OwnedFd,
    mapped: OwnedFd,
    spec: &SpawnSpec,
    filters: &[BpfProgram],
) -> ! {
    let err = become_job(&unshared, mapped, spec, filters).unwrap_err();
    write_all(&exec, err.to_string().as_bytes());
    // SAFETY: the job could not start; leave without unwinding.
    unsafe { libc::_exit(127) }
}

fn become_job(
    unshared: &OwnedFd,
    mapped: OwnedFd,
    spec: &SpawnSpec,
    filters: &[BpfProgram],
) -> Result<std::convert::Infallible, crate::sys::StepError> {
    // A session of its own: no controlling terminal.
    // SAFETY: setsid has no arguments.
    check("setsid", unsafe { libc::setsid() })?;
    // A user namespace of its own, in which it will be uid 1000 and nothing more.
    // SAFETY: plain unshare flag.
    check("unshare user", unsafe {
        libc::unshare(libc::CLONE_NEWUSER)
    })?;
    write_all(unshared, b"u");
    if !wait_byte(&mapped) {
        return Err(fail(
            "uid map",
            io::Error::from(io::ErrorKind::UnexpectedEof),
        ));
    }
    drop(mapped);
    // SAFETY: plain id setters.
    check("setresgid", unsafe {
        libc::setresgid(JOB_UID, JOB_UID, JOB_UID)
    })?;
    // SAFETY: as above.
    check("setresuid", unsafe {
        libc::setresuid(JOB_UID, JOB_UID, JOB_UID)
    })?;
    drop_capabilities()?;
    // SAFETY: plain prctl.
    check("no_new_privs", unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    })?;
    apply_rlimits(&spec.rlimits)?;
    std::env::set_current_dir(WORK).map_err(|e| fail("chdir /work", e))?;
    // Every descriptor but 0-2 closes at exec (the exec-status pipe included).
    // SAFETY: marks descriptors close-on-exec; closes nothing now.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    crate::landlock::restrict().map_err(|e| crate::sys::StepError(format!("landlock: {e}")))?;
    let program = resolve(
        &spec.argv[0],
        spec.env
            .get("PATH")
            .map(String::as_str)
            .unwrap_or("/usr/bin:/bin"),
    )
    .ok_or_else(|| {
        fail(
            format!("exec {}", spec.argv[0]),
            io::Error::from(io::ErrorKind::NotFound),
        )
    })?;
    let c = |s: &str| {
        CString::new(s).map_err(|_| fail("argv", io::Error::from(io::ErrorKind::InvalidInput)))
    };
    let argv: Vec<CString> = spec.argv.iter().map(|a| c(a)).collect::<Result<_, _>>()?;
    let envp: Vec<CString> = spec
        .env
        .iter()
        .map(|(k, v)| c(&format!("{k}={v}")))
        .collect::<Result<_, _>>()?;
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|a| a.as_ptr()).collect();
    envp_p.push(std::ptr::null());
    let program_c = crate::sys::cstr(&program)?;
    // Last: from here on the job's own syscalls are filtered.
    crate::seccomp::install(filters).map_err(|e| crate::sys::StepError(format!("seccomp: {e}")))?;
    // SAFETY: NULL-terminated arrays of valid C strings that outlive the call.
    unsafe { libc::execve(program_c.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr()) };
    Err(fail(
        format!("exec {}", spec.argv[0]),
        io::Error::last_os_error(),
    ))
}

/// argv[0] as a path: itself when it has a slash, else the first executable on `PATH`.
fn resolve(program: &str, path: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    path.split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| {
            let c = crate::sys::cstr(p).ok();
            // SAFETY: access with a valid C string.
            c.is_some_and(|c| unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0)
        })
}

fn drop_capabilities() -> Step {
    // The bounding set first (needs CAP_SETPCAP, which we still hold), then ambient, then all.
    for cap in 0..=63 {
        // SAFETY: plain prctl; EINVAL past the last capability is expected and ignored.
        unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
    }
    // SAFETY: plain prctl.
    check("clear ambient caps", unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    })?;
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let header = Header {
        version: 0x2008_0522,
        pid: 0,
    }; // _LINUX_CAPABILITY_VERSION_3
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset reads a valid header and two data structs (version 3 layout).
    check(
        "capset",
        unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } as i32,
    )
}

fn apply_rlimits(limits: &Rlimits) -> Step {
    let set = |name: &str, resource, value: u64| {
        let lim = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: setrlimit reads a valid struct.
        check(&format!("rlimit {name}"), unsafe {
            libc::setrlimit(resource, &lim)
        })
    };
    set("core", libc::RLIMIT_CORE, 0)?;
    if let Some(v) = limits.cpu_s {
        set("cpu", libc::RLIMIT_CPU, v)?;
    }
    if let Some(v) = limits.file_size_bytes {
        set("fsize", libc::RLIMIT_FSIZE, v)?;
    }
    if let Some(v) = limits.open_files {
        set("nofile", libc::RLIMIT_NOFILE, v)?;
    }
    Ok(())
}
