//! Launching and containing jobs.
//!
//! A job never runs as a direct child of warden. A *zygote* (the `warden` binary started once as
//! `warden __zygote`) forks a *supervisor* per job, which receives a [`SpawnSpec`] over a private
//! socket. With [`Isolation::Sandbox`] the supervisor builds the full sandbox (see `process/` and
//! docs/sandbox.md): the job's PID namespace init owns the tree, and its death takes every
//! process of the job with it. With [`Isolation::UnsafeFallback`] the supervisor becomes a child
//! subreaper instead, so that every orphan (a `setsid` + double-fork daemon included) is
//! re-parented to it and killed with the rest. Either way the whole tree dies when the job ends,
//! when the deadline passes, when warden asks, or when warden itself dies (the socket reaches
//! EOF), and the supervisor reports only once it is gone.
//!
//! This is the only crate with `unsafe` code.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub mod artifacts;
pub mod cgroups;
pub mod child;
pub mod doctor;
mod etc;
mod fd;
pub mod gvisor;
mod landlock;
mod launcher;
mod mounts;
mod net;
pub mod overlay;
pub mod paths;
mod proc_tree;
mod process;
pub mod seccomp;
mod signals;
mod sys;
mod watch;
pub mod zygote;

pub use cgroups::{CgroupHome, CgroupLimits};
pub use etc::prepare_etc;
pub use gvisor::GvisorSpec;
pub use landlock::kernel_abi as landlock_abi;
pub use launcher::{JobControl, JobEvent, Launcher, RunningJob, Standby};
pub use net::{DNS_PORT, EgressPorts};
pub use paths::JOB_UID;
pub use process::supervisor;
pub use zygote::ZYGOTE_ARG;

/// How strongly an executor isolates the jobs it runs, recorded on every job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// A supervised process tree with rlimits but no namespaces, seccomp or Landlock. Only used
    /// when the operator set `unsafe_fallback: true`.
    UnsafeFallback,
    /// The full sandbox: namespaces, pivoted read-only root, cgroups, Landlock, seccomp.
    Sandbox,
    /// The sandbox's namespaces, root and cgroup, with the job's system calls served by
    /// gVisor (`runsc`) instead of the host's kernel.
    Gvisor,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::UnsafeFallback => "unsafe_fallback",
            Tier::Sandbox => "sandbox",
            Tier::Gvisor => "gvisor",
        }
    }
}

/// What this host gives sandboxed jobs, learned once when a worker starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// warden is not root: the sandbox is built in user namespaces of warden's own user.
    pub rootless: bool,
    /// Where jobs' cgroups go, and which limits they can enforce.
    pub cgroups: CgroupHome,
}

impl Host {
    /// Decides both; may move the calling process into a cgroup leaf of its own (see
    /// [`CgroupHome::establish`]), so call it before any helper process starts.
    pub fn establish() -> Host {
        Host {
            // SAFETY: geteuid has no arguments.
            rootless: unsafe { libc::geteuid() } != 0,
            cgroups: CgroupHome::establish(),
        }
    }

    /// A host that enforces nothing with cgroups (tests, and hosts where the sandbox is off).
    pub fn without_cgroups(why: &str) -> Host {
        Host {
            // SAFETY: geteuid has no arguments.
            rootless: unsafe { libc::geteuid() } != 0,
            cgroups: CgroupHome::Unavailable { why: why.into() },
        }
    }
}

/// How one job is isolated, with what that tier needs: the seam where further tiers (gVisor,
/// image roots) plug in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// A supervised process tree in `cwd`, on the host's filesystem.
    UnsafeFallback { cwd: PathBuf },
    /// The full sandbox; the job's working directory is always `/work`.
    Sandbox(Box<SandboxSpec>),
}

impl Isolation {
    pub fn tier(&self) -> Tier {
        match self {
            Isolation::UnsafeFallback { .. } => Tier::UnsafeFallback,
            Isolation::Sandbox(sb) if sb.gvisor.is_some() => Tier::Gvisor,
            Isolation::Sandbox(_) => Tier::Sandbox,
        }
    }
}

/// What the full sandbox needs beyond the spawn spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// An empty host directory that becomes the mount point of the job's root.
    pub root: PathBuf,
    /// Host directory mounted read-only at `/work` (the worktree; the job's cwd).
    pub work: PathBuf,
    /// The git directory the job sees at `/work/.git` (read-only), when it runs on a repository.
    #[serde(default)]
    pub git: Option<GitMounts>,
    /// Host directory the job's `/artifacts` (its `ARTIFACT_DIR`, a tmpfs of
    /// `artifacts_bytes`) is copied out to when the job is over. Must be empty.
    pub artifacts: PathBuf,
    /// Size cap of `/artifacts`; its inodes are capped with it (see `artifacts::inode_cap`).
    pub artifacts_bytes: u64,
    /// The sandbox's `/etc`, made by [`prepare_etc`] (bound read-only).
    pub etc: PathBuf,
    /// A root filesystem directory to use instead of the host's `/usr`, `/lib*` and warden's
    /// `/etc` (each top-level entry bound read-only).
    #[serde(default)]
    pub rootfs: Option<PathBuf>,
    /// Extra read-only binds the job type asks for.
    pub binds: Vec<Bind>,
    /// Share the host's network namespace instead of a loopback-only one.
    pub network: bool,
    /// An egress namespace instead: every address is local, and the sockets listening on
    /// these ports (and on 53, for DNS) are handed to warden's gateway before the job starts
    /// ([`RunningJob::take_gateway`]).
    #[serde(default)]
    pub egress: Option<EgressPorts>,
    /// Allow `inotify_init*` (denied by default: see `seccomp::INOTIFY`).
    #[serde(default)]
    pub inotify: bool,
    /// The uid/gid the job's uid 1000 maps to, as the init sees ids: a host id, or, rootless,
    /// `0` (the init's own root, which is the calling user outside).
    pub uid: u32,
    pub gid: u32,
    /// Rootless: the init gets a user namespace of its own, in which it is root and which maps
    /// only the calling user. Without it the supervisor must be root.
    #[serde(default)]
    pub rootless: bool,
    /// Where the job's cgroup is made (decided once per worker) and what it enforces.
    pub cgroups: CgroupHome,
    pub limits: CgroupLimits,
    /// Size of `/tmp` and `/dev/shm` each.
    pub tmpfs_bytes: u64,
    /// Name of the job's cgroup in the cgroup home.
    pub cgroup_name: String,
    /// Files of `/run/secrets` (a tmpfs of this job's alone, each file 0400 for the job).
    #[serde(default)]
    pub secrets: Vec<SecretFile>,
    /// The job's working directory instead of `/work` (an image's `WorkingDir`, for a job
    /// without a repository). Must exist in the job's root.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// The ids the job has inside its user namespace instead of [`JOB_UID`] (an image's
    /// `User`); never 0. Outside, it is still `uid`/`gid`.
    #[serde(default)]
    pub job_ids: Option<(u32, u32)>,
    /// A writable root: the system directories (or the rootfs's) each an overlay over the
    /// read-only original, with their changes in a tmpfs of this many bytes (charged to the
    /// job's memory); the init reports what changed ([`ExitReport::root_changes`]).
    #[serde(default)]
    pub writable_root_bytes: Option<u64>,
    /// Run the job under gVisor in this sandbox (see `gvisor.rs`); never with a writable root
    /// or rootless.
    #[serde(default)]
    pub gvisor: Option<GvisorSpec>,
}

impl SandboxSpec {
    /// The job's uid and gid inside its user namespace.
    pub fn inner_ids(&self) -> (u32, u32) {
        match self.job_ids {
            Some((u, g)) if u != 0 && g != 0 => (u, g),
            _ => (JOB_UID, JOB_UID),
        }
    }
}

/// One secret delivered as a file. Its value crosses only pipes and the job's own tmpfs; no
/// `Debug` output shows it.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretFile {
    /// `^[A-Z][A-Z0-9_]{0,63}$` (checked when the configuration is read).
    pub name: String,
    pub value: Vec<u8>,
}

impl std::fmt::Debug for SecretFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretFile({}, {} bytes)", self.name, self.value.len())
    }
}

/// A repository's git directory and object store, shown read-only inside the worktree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GitMounts {
    /// Bound at `/work/.git`; `work` has an empty `.git` directory as mount point.
    pub dir: PathBuf,
    /// The mirror's object store, bound at `/work/.git/objects` (an empty directory in `dir`).
    pub objects: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bind {
    pub host: PathBuf,
    pub at: PathBuf,
}

/// Everything the supervisor needs to start one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpawnSpec {
    pub argv: Vec<String>,
    /// The job's whole environment: nothing of warden's own is inherited.
    pub env: BTreeMap<String, String>,
    /// Wall-clock limit; the supervisor kills the tree when it passes.
    pub timeout_ms: u64,
    pub rlimits: Rlimits,
    pub isolation: Isolation,
    /// A staged job: these run one after another in the sandbox instead of `argv` (sandboxed
    /// tier only). Each `StageEvent::Start` waits for warden's go-ahead (`JobControl::go`).
    #[serde(default)]
    pub stages: Vec<StageSpec>,
}

/// One stage of a staged job: run after the one before it, in the same sandbox session (same
/// `/tmp`, same writable root, its background processes still running).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageSpec {
    pub name: String,
    pub argv: Vec<String>,
    /// Added to (or replacing in) the job's environment for this stage.
    pub env: BTreeMap<String, String>,
    /// The stage's own deadline; past it every process of the job is killed.
    pub timeout_ms: Option<u64>,
    /// Runs even after an earlier stage failed.
    pub always: bool,
}

/// What a staged job's init says about its stages while the job runs, forwarded to warden by
/// the supervisor as one JSON line each, before the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StageEvent {
    /// Stage `index` is about to start. With `wait`, it starts once warden says go (after
    /// storing the output so far, so the stage's log begins exactly there); without, it is the
    /// first stage, before which the job has written nothing.
    StageStart { index: usize, wait: bool },
    /// Stage `index` ended (`wait_status` as `waitpid` gives it), `ms` after it started.
    StageEnd {
        index: usize,
        wait_status: i32,
        timed_out: bool,
        started_ms: u64,
        ms: u64,
    },
}

/// How one stage ended, as the report has it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageReport {
    pub index: usize,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    /// From the job's start in its sandbox.
    pub started_ms: u64,
    pub ms: u64,
}

/// Per-process kernel limits applied before exec. `None` leaves the inherited limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rlimits {
    pub cpu_s: Option<u64>,
    pub file_size_bytes: Option<u64>,
    pub open_files: Option<u64>,
}

/// Why the supervisor killed the job, when it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KilledBy {
    /// The wall-clock deadline passed.
    Timeout,
    /// warden asked (cancel, output limit, shutdown).
    Request,
}

/// What the supervisor reports when the job's tree is gone.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExitReport {
    /// Set when the job could not be started at all: `<step>: <error>`.
    pub setup_error: Option<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub killed_by: Option<KilledBy>,
    pub wall_ms: u64,
    pub user_cpu_ms: u64,
    pub system_cpu_ms: u64,
    pub max_rss_kb: u64,
    /// How many processes were still alive after the main one ended and were killed.
    pub stragglers_killed: u32,
    /// The limit that ended the job, if one did (`memory_limit`, `pids_limit`, ...).
    pub limit_hit: Option<String>,
    /// Peak memory of the job's cgroup, when there is one.
    pub peak_memory_bytes: Option<u64>,
    /// Time the job was held back by its CPU limit, when it has one.
    #[serde(default)]
    pub cpu_throttled_ms: Option<u64>,
    /// What became of `/artifacts` (sandboxed jobs).
    #[serde(default)]
    pub artifacts: Option<artifacts::CopyOut>,
    /// What the job changed in its writable root (jobs with one).
    #[serde(default)]
    pub root_changes: Option<overlay::RootChanges>,
    /// What enforced each limit.
    pub enforcement: BTreeMap<String, String>,
    /// A staged job's stages that ran, in order (those not run are absent).
    #[serde(default)]
    pub stages: Vec<StageReport>,
    /// When the job's program had exec'd in its sandbox, on [`monotonic_us`]'s clock (which
    /// every process of the host shares): the caller's own reading before the spawn makes it
    /// the sandbox's start time.
    #[serde(default)]
    pub exec_mono_us: Option<u64>,
}

/// Now on `CLOCK_MONOTONIC`, in microseconds.
pub fn monotonic_us() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64) * 1_000_000 + (t.tv_nsec as u64) / 1000
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("start supervisor {exe}: {source}")]
    Spawn {
        exe: PathBuf,
        source: std::io::Error,
    },
    #[error("talk to supervisor: {0}")]
    Control(#[source] std::io::Error),
    #[error("{0} ended without a report")]
    NoReport(String),
    #[error("supervisor sent a malformed report: {0}")]
    BadReport(String),
}
