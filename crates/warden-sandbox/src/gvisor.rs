//! The gVisor tier: the job's init builds the same root as a native job's (read-only system
//! directories or image, the worktree, size-capped `/tmp`, `/dev/shm` and `/artifacts`,
//! `/run/secrets`) but does not pivot into it; it hands the tree to `runsc run` as an OCI
//! bundle instead, and `runsc` starts the job under gVisor's user-space kernel. `runsc` and
//! everything it starts (its gofer, its sandbox) live in the init's PID, mount and network
//! namespaces and in the job's cgroup, so the native tier's limits, deadline, kill and
//! artifact copy apply unchanged; the init only learns, from `runsc`'s exit code and log, how
//! the job ended.
//!
//! Layout of the init's staging tmpfs at the sandbox root (`SandboxSpec::root`):
//! `config.json` (the OCI runtime spec), `rootfs/` (the job's root), `state/` (`runsc --root`)
//! and `runsc.log`.

use std::ffi::CString;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::fd::pipe;
use crate::paths::{HOSTNAME, WORK};
use crate::sys::{Step, StepError, check, fail};
use crate::{SandboxSpec, SpawnSpec};

/// What the gVisor tier needs beyond the sandbox spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GvisorSpec {
    /// The `runsc` binary (absolute).
    pub runsc: PathBuf,
}

/// Host tasks `runsc`, its gofer and its sandbox take beyond the job's own (Go runtime threads,
/// one ptrace stub per process of the job): added to a gVisor job's `pids` limit so that the
/// limit still means the job's processes.
pub const PIDS_OVERHEAD: u64 = 96;

/// The name the job's container has in `runsc`'s private state directory.
const CONTAINER: &str = "job";

/// The staged bundle.
pub(crate) struct Bundle {
    dir: PathBuf,
}

impl Bundle {
    pub(crate) fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("runsc.log")
    }

    /// Where `runsc run` writes its sandbox's pid (in the init's PID namespace).
    fn sandbox_pid(&self) -> PathBuf {
        self.dir.join("sandbox.pid")
    }

    /// Hands a SIGTERM to the job: runsc's sandbox delivers the signals it gets to the job's
    /// first process. Before the sandbox exists there is no job to ask: everything is killed.
    pub(crate) fn terminate(&self) {
        let pid = std::fs::read_to_string(self.sandbox_pid())
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
            .filter(|p| *p > 1);
        // SAFETY: signals a process of the init's own PID namespace (or all of them).
        unsafe {
            match pid {
                Some(pid) => libc::kill(pid, libc::SIGTERM),
                None => libc::kill(-1, libc::SIGKILL),
            };
        }
    }
}

/// Builds the bundle in the init's own mount namespace: a small tmpfs at the sandbox root, the
/// job's root tree in it, and the OCI spec.
pub(crate) fn prepare(spec: &SpawnSpec, sandbox: &SandboxSpec) -> Step<Bundle> {
    let k = &mut crate::sys::Linux;
    crate::mounts::make_mounts_private(k)?;
    // runsc re-executes itself through /proc/self/exe from namespaces of its own: it needs the
    // /proc of the init's PID namespace (theirs is nested in it), not the host's.
    crate::sys::Kernel::mount(
        k,
        Some(Path::new("proc")),
        Path::new("/proc"),
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )?;
    let dir = sandbox.root.clone();
    crate::sys::Kernel::mount(
        k,
        Some(Path::new("tmpfs")),
        &dir,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("size=4m,mode=0700"),
    )?;
    let bundle = Bundle { dir };
    for d in [bundle.rootfs(), bundle.dir.join("state")] {
        std::fs::create_dir(&d).map_err(|e| fail(format!("mkdir {}", d.display()), e))?;
    }
    // Inside gVisor there is no user namespace of warden's: the job's files belong to the ids
    // it runs as there.
    let mut tree = sandbox.clone();
    tree.root = bundle.rootfs();
    (tree.uid, tree.gid) = sandbox.inner_ids();
    crate::mounts::build_gvisor_root(k, &tree)?;
    let config = serde_json::to_vec_pretty(&oci_spec(spec, sandbox, &bundle.rootfs()))
        .map_err(|e| fail("OCI spec", std::io::Error::other(e)))?;
    std::fs::write(bundle.dir.join("config.json"), config)
        .map_err(|e| fail("write config.json", e))?;
    Ok(bundle)
}

/// Whether `runsc` gets a network stack of its own (loopback only) or uses the one of the
/// namespace it runs in: the host's (`network: host`) or the egress namespace, whose every
/// address is warden's gateway.
fn own_network(sandbox: &SandboxSpec) -> bool {
    !sandbox.network && sandbox.egress.is_none()
}

/// The OCI runtime spec of the job: its argv, environment, working directory, ids, rlimits, no
/// capabilities; the staged tree as a read-only root, with its writable tmpfs mounts bound
/// again as mounts of their own (gVisor's root mount is read-only as a whole).
pub(crate) fn oci_spec(
    spec: &SpawnSpec,
    sandbox: &SandboxSpec,
    rootfs: &Path,
) -> serde_json::Value {
    let (uid, gid) = sandbox.inner_ids();
    let env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let cwd = sandbox
        .cwd
        .as_ref()
        .map_or_else(|| WORK.to_string(), |c| c.to_string_lossy().into_owned());
    let mut rlimits = vec![json!({"type": "RLIMIT_CORE", "soft": 0, "hard": 0})];
    let r = &spec.rlimits;
    for (name, value) in [
        // SIGXCPU at the soft limit, SIGKILL a second later (as natively).
        ("RLIMIT_CPU", r.cpu_s.map(|s| (s, s + 1))),
        ("RLIMIT_FSIZE", r.file_size_bytes.map(|b| (b, b))),
        ("RLIMIT_NOFILE", r.open_files.map(|n| (n, n))),
    ] {
        if let Some((soft, hard)) = value {
            rlimits.push(json!({"type": name, "soft": soft, "hard": hard}));
        }
    }
    let rw = |at: &str| {
        json!({
            "destination": at,
            "type": "bind",
            "source": rootfs.join(at.trim_start_matches('/')),
            "options": ["rbind", "rw", "nosuid", "nodev"],
        })
    };
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    if own_network(sandbox) {
        namespaces.push(json!({"type": "network"}));
    }
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "user": {"uid": uid, "gid": gid},
            "args": spec.argv,
            "env": env,
            "cwd": cwd,
            "capabilities": {},
            "noNewPrivileges": true,
            "rlimits": rlimits,
        },
        "root": {"path": rootfs, "readonly": true},
        "hostname": HOSTNAME,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            rw("/tmp"),
            rw("/dev/shm"),
            rw(crate::paths::ARTIFACTS),
        ],
        "linux": {"namespaces": namespaces},
    })
}

/// Starts `runsc run` on the bundle, with the init's stdout and stderr (the job's pipes), and
/// returns its pid once it has been exec'd.
pub(crate) fn start(bundle: &Bundle, gvisor: &GvisorSpec, sandbox: &SandboxSpec) -> Step<i32> {
    let c =
        |s: String| CString::new(s).map_err(|e| fail("runsc argument", std::io::Error::other(e)));
    let network = if own_network(sandbox) { "none" } else { "host" };
    let argv = [
        gvisor.runsc.to_string_lossy().into_owned(),
        format!("--root={}", bundle.dir.join("state").display()),
        format!("--log={}", bundle.log().display()),
        "--log-format=json".into(),
        format!("--network={network}"),
        // The job's cgroup is warden's, made before runsc started: runsc stays out of it.
        "--ignore-cgroups".into(),
        "run".into(),
        format!("--pid-file={}", bundle.sandbox_pid().display()),
        format!("--bundle={}", bundle.dir.display()),
        CONTAINER.into(),
    ]
    .into_iter()
    .map(c)
    .collect::<Result<Vec<_>, _>>()?;
    let env = [c(
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
    )?];
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());
    let (exec_r, exec_w) = pipe()?;
    // SAFETY: fork of the single-threaded init; the child only calls async-signal-safe
    // functions (sigprocmask, sigaction, execve, write, _exit) on memory prepared before it.
    let pid = unsafe { libc::fork() };
    check("fork runsc", pid)?;
    if pid == 0 {
        drop(exec_r);
        // runsc starts with a fresh signal state, as a native job does.
        crate::signals::reset();
        // SAFETY: as above; the pointers are valid NUL-terminated arrays.
        unsafe {
            libc::execve(argv_ptrs[0], argv_ptrs.as_ptr(), env_ptrs.as_ptr());
            let errno = *libc::__errno_location();
            crate::fd::write_all(&exec_w, &errno.to_le_bytes());
            libc::_exit(127)
        }
    }
    drop(exec_w);
    // Empty means runsc was exec'd; otherwise the errno of the exec.
    let mut errno = Vec::new();
    let _ = std::fs::File::from(exec_r).read_to_end(&mut errno);
    if let Ok(errno) = <[u8; 4]>::try_from(errno.as_slice()) {
        crate::process::reap(pid);
        let e = std::io::Error::from_raw_os_error(i32::from_le_bytes(errno));
        return Err(StepError(format!(
            "gvisor: exec {}: {e}",
            gvisor.runsc.display()
        )));
    }
    Ok(pid)
}

/// How the job ended, from `runsc run`'s wait status: the job's own wait status, or why gVisor
/// could not run it (`gvisor: <runsc's error>`).
///
/// `runsc run` exits with the job's exit code, or 128 + the signal that killed it; its own
/// failures exit 128 and are logged as errors. (A job's own `exit 137` therefore reads as
/// SIGKILL, as a shell would read it.)
pub(crate) fn outcome(bundle: &Bundle, status: i32) -> Result<i32, String> {
    if !libc::WIFEXITED(status) {
        // runsc itself was killed (the deadline, a kill request, the OOM killer).
        return Ok(status);
    }
    let code = libc::WEXITSTATUS(status);
    if code == 128
        && let Some(error) = logged_error(&bundle.log())
    {
        return Err(format!("gvisor: {error}"));
    }
    Ok(wait_status_of(code))
}

/// A wait status saying what `runsc`'s exit code says of the job.
fn wait_status_of(code: i32) -> i32 {
    match code {
        // Signalled: the signal in the low bits.
        129..=159 => code - 128,
        // Exited: the code in the second byte.
        _ => (code & 0xff) << 8,
    }
}

/// The last error `runsc` logged (its log is one JSON object per line).
fn logged_error(log: &Path) -> Option<String> {
    let mut text = String::new();
    std::fs::File::open(log)
        .ok()?
        .take(1 << 20)
        .read_to_string(&mut text)
        .ok()?;
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| matches!(v["level"].as_str(), Some("error" | "fatal")))
        .filter_map(|v| v["msg"].as_str().map(str::to_string))
        .next_back()
        .map(|m| {
            // runsc wraps the cause in its call chain; the cause is what a reader needs.
            let cause = m.rsplit(": creating process: ").next().unwrap_or(&m);
            cause.chars().take(500).collect()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runsc_exit_codes_become_wait_statuses() {
        let exited = wait_status_of(7);
        assert!(libc::WIFEXITED(exited) && libc::WEXITSTATUS(exited) == 7);
        let exited = wait_status_of(0);
        assert!(libc::WIFEXITED(exited) && libc::WEXITSTATUS(exited) == 0);
        let killed = wait_status_of(137);
        assert!(libc::WIFSIGNALED(killed) && libc::WTERMSIG(killed) == 9);
        let xfsz = wait_status_of(128 + 25);
        assert!(libc::WIFSIGNALED(xfsz) && libc::WTERMSIG(xfsz) == 25);
        let high = wait_status_of(200);
        assert!(libc::WIFEXITED(high) && libc::WEXITSTATUS(high) == 200);
    }

    #[test]
    fn runscs_own_failure_is_told_from_a_job_exiting_128() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = Bundle {
            dir: dir.path().to_path_buf(),
        };
        // A job's `exit 128`: nothing logged.
        let st = outcome(&bundle, 128 << 8).unwrap();
        assert_eq!(libc::WEXITSTATUS(st), 128);
        std::fs::write(
            bundle.log(),
            "{\"msg\":\"starting\",\"level\":\"info\"}\n\
             {\"msg\":\"running container: starting container: starting root container: \
             starting sandbox: creating process: failed to load /nope: no such file or \
             directory\",\"level\":\"error\"}\n",
        )
        .unwrap();
        assert_eq!(
            outcome(&bundle, 128 << 8).unwrap_err(),
            "gvisor: failed to load /nope: no such file or directory"
        );
        // A runsc killed by warden is the job killed.
        assert_eq!(outcome(&bundle, libc::SIGKILL).unwrap(), libc::SIGKILL);
    }
}
