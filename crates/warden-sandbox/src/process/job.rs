//! pid 2: becomes the job. It enters a user namespace of its own where it is uid 1000 (an
//! unprivileged host uid outside), drops every capability, sets `no_new_privs`, applies its
//! rlimits, Landlock and seccomp, and execs.

use std::ffi::CString;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use seccompiler::BpfProgram;

use crate::SpawnSpec;
use crate::fd::{apply_rlimits, cloexec_from, wait_byte, write_all};
use crate::paths::{JOB_UID, PATH, WORK};
use crate::sys::{StepError, check, cstr, fail};

/// The job's side of the handshake with the init.
pub(super) struct JobPipes {
    /// Closed by the exec (empty: success) or given the failure's text.
    pub exec: OwnedFd,
    /// The job writes one byte once it has its own user namespace.
    pub unshared: OwnedFd,
    /// One byte from the init once the uid/gid maps are written.
    pub mapped: OwnedFd,
    /// A staged job's stage runner: instead of exec'ing, it runs the stages the init asks for.
    pub runner: Option<RunnerPipes>,
}

/// The stage runner's side of its pipes to the init.
pub(super) struct RunnerPipes {
    /// Stage indexes to run, 4 bytes each (little-endian); end of file: no more stages.
    pub run: OwnedFd,
    /// Per stage: its wait status (4 bytes), then the length (4 bytes) and text of why it could
    /// not be started (empty when it was).
    pub done: OwnedFd,
}

pub(super) fn job_main(pipes: JobPipes, spec: &SpawnSpec, filters: &[BpfProgram]) -> ! {
    let JobPipes {
        exec,
        unshared,
        mapped,
        runner,
    } = pipes;
    let err = match become_job(&unshared, mapped, spec, filters, runner.is_none()) {
        Ok(Some(exec)) => exec.run(),
        Ok(None) => {
            // Set up: the init reads the end of this pipe as the start having worked.
            drop(exec);
            run_stages(runner.expect("a runner has its pipes"), spec)
        }
        Err(e) => e,
    };
    write_all(&exec, err.to_string().as_bytes());
    // SAFETY: the job could not start; leave without unwinding.
    unsafe { libc::_exit(127) }
}

/// The stage runner, inside every layer of the job's sandbox (its user namespace, ids, rlimits,
/// Landlock, seccomp): for each stage the init names, forks a process that execs it and
/// reports how it ended. Stages so cost a fork and an exec, not the sandbox's setup.
fn run_stages(pipes: RunnerPipes, spec: &SpawnSpec) -> ! {
    // A cancel's SIGTERM is for the stages; the runner outlives it to report how they ended.
    // SAFETY: setting a disposition installs no handler code.
    unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    let mut run = std::fs::File::from(pipes.run);
    loop {
        let mut index = [0u8; 4];
        if std::io::Read::read_exact(&mut run, &mut index).is_err() {
            // SAFETY: no more stages; leave without unwinding.
            unsafe { libc::_exit(0) }
        }
        let Some(stage) = spec.stages.get(u32::from_le_bytes(index) as usize) else {
            // SAFETY: as above.
            unsafe { libc::_exit(1) }
        };
        let (status, why) = match run_stage(spec, stage) {
            Ok(status) => (status, String::new()),
            Err(e) => (127 << 8, e.0),
        };
        let mut msg = Vec::with_capacity(8 + why.len());
        msg.extend_from_slice(&status.to_le_bytes());
        msg.extend_from_slice(&(why.len() as u32).to_le_bytes());
        msg.extend_from_slice(why.as_bytes());
        write_all(&pipes.done, &msg);
    }
}

/// Starts one stage with a fresh signal state (`posix_spawn`: no copy of the runner's memory,
/// and an exec failure comes back as its error); returns its wait status.
fn run_stage(spec: &SpawnSpec, stage: &crate::StageSpec) -> Result<i32, StepError> {
    let mut env = spec.env.clone();
    env.extend(stage.env.clone());
    let exec = Exec::from_parts(&stage.argv, &env)?;
    let pid = exec.spawn()?;
    Ok(super::reap(pid))
}

/// Sets up the job's process: `Some` exec to run, or `None` for a stage runner (set up, nothing
/// to exec).
fn become_job(
    unshared: &OwnedFd,
    mapped: OwnedFd,
    spec: &SpawnSpec,
    filters: &[BpfProgram],
    execs: bool,
) -> Result<Option<Exec>, StepError> {
    // A session of its own: no controlling terminal.
    // SAFETY: setsid has no arguments.
    check("setsid", unsafe { libc::setsid() })?;
    enter_user_namespace(unshared, mapped)?;
    let (sandbox_ids, cwd, writable_root) = match &spec.isolation {
        crate::Isolation::Sandbox(sb) => (
            sb.inner_ids(),
            sb.cwd.as_deref(),
            sb.writable_root_bytes.is_some(),
        ),
        crate::Isolation::UnsafeFallback { .. } => ((JOB_UID, JOB_UID), None, false),
    };
    // A writable root's overlays: the top-level directories but warden's own.
    let writable = if writable_root {
        crate::overlay::overlay_dirs()
    } else {
        Vec::new()
    };
    drop_privileges(sandbox_ids)?;
    apply_rlimits(&spec.rlimits)?;
    let cwd = cwd.unwrap_or(std::path::Path::new(WORK));
    std::env::set_current_dir(cwd).map_err(|e| fail(format!("chdir {}", cwd.display()), e))?;
    // Every descriptor but 0-2 closes at exec (the exec-status pipe included).
    cloexec_from(3);
    crate::landlock::restrict(&writable).map_err(|e| StepError(format!("landlock: {e}")))?;
    let exec = if execs {
        Some(Exec::from_parts(&spec.argv, &spec.env)?)
    } else {
        None
    };
    // A fresh process's signal state: the supervisor's blocked and ignored signals stay behind.
    crate::signals::reset();
    // Last: from here on the job's own syscalls are filtered.
    crate::seccomp::install(filters).map_err(|e| StepError(format!("seccomp: {e}")))?;
    Ok(exec)
}

/// A user namespace of its own, in which it will be uid 1000 and nothing more; the init
/// writes the maps.
fn enter_user_namespace(unshared: &OwnedFd, mapped: OwnedFd) -> Result<(), StepError> {
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
    Ok(())
}

/// The job's ids (1000 unless its image names others), no capabilities in any set, and no way
/// to gain any back.
fn drop_privileges((uid, gid): (u32, u32)) -> Result<(), StepError> {
    // SAFETY: plain id setters.
    check("setresgid", unsafe { libc::setresgid(gid, gid, gid) })?;
    // SAFETY: as above.
    check("setresuid", unsafe { libc::setresuid(uid, uid, uid) })?;
    drop_capabilities()?;
    // SAFETY: plain prctl.
    check("no_new_privs", unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    })
}

/// argv and envp as C strings, ready for `execve` (allocated before seccomp is installed).
struct Exec {
    program: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    argv0: String,
}

impl Exec {
    fn from_parts(
        argv: &[String],
        env: &std::collections::BTreeMap<String, String>,
    ) -> Result<Exec, StepError> {
        let argv0 = argv.first().cloned().unwrap_or_default();
        let path = env.get("PATH").map(String::as_str).unwrap_or(PATH);
        let program = resolve(&argv0, path).ok_or_else(|| {
            fail(
                format!("exec {argv0}"),
                io::Error::from(io::ErrorKind::NotFound),
            )
        })?;
        let c = |s: &str| {
            CString::new(s).map_err(|_| fail("argv", io::Error::from(io::ErrorKind::InvalidInput)))
        };
        Ok(Exec {
            program: cstr(&program)?,
            argv: argv.iter().map(|a| c(a)).collect::<Result<_, _>>()?,
            envp: env
                .iter()
                .map(|(k, v)| c(&format!("{k}={v}")))
                .collect::<Result<_, _>>()?,
            argv0,
        })
    }

    /// Starts it as a child with every signal at its default and none blocked; its pid.
    fn spawn(&self) -> Result<i32, StepError> {
        let mut argv: Vec<*mut libc::c_char> =
            self.argv.iter().map(|a| a.as_ptr().cast_mut()).collect();
        argv.push(std::ptr::null_mut());
        let mut envp: Vec<*mut libc::c_char> =
            self.envp.iter().map(|a| a.as_ptr().cast_mut()).collect();
        envp.push(std::ptr::null_mut());
        let mut pid = 0;
        // SAFETY: the attribute object is initialised before use and destroyed after; the
        // signal sets are initialised by sigfillset/sigemptyset; argv and envp are
        // NULL-terminated arrays of valid C strings that outlive the call (posix_spawn does
        // not write through them).
        let rc = unsafe {
            let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
            libc::posix_spawnattr_init(&mut attr);
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::posix_spawnattr_setsigdefault(&mut attr, &all);
            libc::posix_spawnattr_setsigmask(&mut attr, &none);
            libc::posix_spawnattr_setflags(
                &mut attr,
                (libc::POSIX_SPAWN_SETSIGDEF | libc::POSIX_SPAWN_SETSIGMASK) as libc::c_short,
            );
            let rc = libc::posix_spawn(
                &mut pid,
                self.program.as_ptr(),
                std::ptr::null(),
                &attr,
                argv.as_ptr(),
                envp.as_ptr(),
            );
            libc::posix_spawnattr_destroy(&mut attr);
            rc
        };
        if rc != 0 {
            return Err(fail(
                format!("exec {}", self.argv0),
                io::Error::from_raw_os_error(rc),
            ));
        }
        Ok(pid)
    }

    /// Execs; returns only the failure.
    fn run(&self) -> StepError {
        let mut argv: Vec<*const libc::c_char> = self.argv.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = self.envp.iter().map(|a| a.as_ptr()).collect();
        envp.push(std::ptr::null());
        // SAFETY: NULL-terminated arrays of valid C strings that outlive the call.
        unsafe { libc::execve(self.program.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        fail(format!("exec {}", self.argv0), io::Error::last_os_error())
    }
}

/// argv[0] as a path: itself when it has a slash, else the first executable on `PATH`.
fn resolve(program: &str, path: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    path.split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| {
            let c = cstr(p).ok();
            // SAFETY: access with a valid C string.
            c.is_some_and(|c| unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0)
        })
}

fn drop_capabilities() -> Result<(), StepError> {
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
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
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
