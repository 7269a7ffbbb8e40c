//! A job type: an operator-defined, allowlisted recipe, checked completely while parsing.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;
use serde::de::{self, Deserializer};

use super::pipeline::{
    DEFAULT_SIZE_CAP_KB, JobKind, MAX_SIZE_CAP_KB, REVIEW_PARAMS, Results, SUITE_PARAMS, Stage,
    SuitesConfig, check_stages,
};
use super::positive::{Cpus, Positive};
use crate::params::{is_reserved, is_valid_param_name};

/// Worker labels and job type labels: short, lowercase, no spaces.
pub fn is_valid_label(l: &str) -> bool {
    let b = l.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'.' | b'-')
        })
}

/// A job type's name: `^[a-z0-9][a-z0-9_.-]{0,63}$`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobTypeName(pub String);

impl std::borrow::Borrow<str> for JobTypeName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobTypeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for JobTypeName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<JobTypeName, D::Error> {
        let s = String::deserialize(d)?;
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 64
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'.' | b'-')
            });
        if ok {
            Ok(JobTypeName(s))
        } else {
            Err(de::Error::custom(format!(
                "job type name {s:?} is invalid: names match ^[a-z0-9][a-z0-9_.-]{{0,63}}$"
            )))
        }
    }
}

/// An operator-defined, allowlisted recipe.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawJobType")]
pub struct JobType {
    pub description: Option<String>,
    /// What the job runs; empty for a staged job type (see `stages`).
    pub argv: Vec<String>,
    /// A pipeline run in one sandbox, one stage after another, instead of one `argv`.
    pub stages: Vec<Stage>,
    /// Reports the job leaves in its artifacts that warden reads into per-test results.
    pub results: Results,
    /// `command` (the default: `argv` or `stages`) or a built-in kind (`review_bundle`).
    pub kind: JobKind,
    /// A review bundle's size cap in KiB (its jobs may lower or raise it with `SIZE_CAP_KB`).
    pub size_cap_kb: u64,
    /// Test suites in the job's repository, run by warden's suite runner: the job type's
    /// program when it has no argv or stages, else its stage marked `suites: true`.
    pub suites: Option<SuitesConfig>,
    pub timeout_s: Positive,
    pub requires_repo: bool,
    pub requires_repo_allowlist: bool,
    pub allowed_params: Vec<String>,
    pub limits: Limits,
    /// `none` (the default), `host`, or an egress allowlist (see [`NetworkPolicy`]).
    pub network: super::NetworkPolicy,
    /// The job may use inotify (file watching); off by default, since on the shared read-only
    /// system directories it shows what the host runs.
    pub inotify: bool,
    /// Extra host paths bound read-only into the sandbox (e.g. a toolchain).
    pub binds: Vec<BindConfig>,
    /// A tool-spec bundle (`warden tools bundle`) the job gets read-only at
    /// [`TOOL_BUNDLE_AT`], named by the variable `tool_env_var` (default `AGENT_TOOL_SPEC`).
    pub tool_bundle: Option<PathBuf>,
    pub tool_env_var: String,
    /// A root filesystem directory to run in instead of the host's system directories.
    pub rootfs: Option<PathBuf>,
    /// An OCI image to run in instead (see docs/images.md): pulled and unpacked by warden,
    /// pinned to its digest when a job is submitted.
    pub image: Option<crate::image::ImageRef>,
    /// `read_only` (the default) or `writable`: an overlay over the system directories (or
    /// the image's, or the rootfs's) whose changes live in a capped tmpfs, reported after the
    /// job in `changes.json`, and gone with it.
    pub root: RootMode,
    /// `native` (the default: warden's own sandbox) or `gvisor` (the job runs under gVisor's
    /// `runsc`, a kernel in user space, inside the same namespaces and cgroup).
    pub isolation: IsolationTier,
    /// `core.hooksPath` in the git directory the job sees (e.g. `.githooks`): set in the gitdir's
    /// config, never in the tree. warden itself never runs hooks.
    pub hooks_path: Option<String>,
    /// Labels a worker must have to be given this job type (e.g. `gpu`, `linux-x86_64`).
    pub labels: Vec<String>,
    /// Limits this job type may run without where the host cannot enforce them (no cgroup
    /// delegated to a rootless warden): each such run is recorded as not enforced. Absent:
    /// a limit that cannot be enforced fails the job closed.
    pub accept_unenforced: Vec<CgroupLimit>,
    /// Secrets (names from `secrets:`) the job reads as files `/run/secrets/NAME`.
    pub secrets: Vec<String>,
    /// Secrets the job gets as environment variables instead: variable → secret name.
    pub secret_env: std::collections::BTreeMap<String, String>,
}

/// Whether the job's root is read-only (the default) or writable for the job's lifetime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RootMode {
    #[default]
    ReadOnly,
    Writable,
}

/// Which sandbox runs a job type's jobs (see "Choosing a tier" in docs/sandbox.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IsolationTier {
    /// warden's own: namespaces, a read-only root, cgroups, Landlock and seccomp over the
    /// host's kernel.
    #[default]
    Native,
    /// gVisor: the job's system calls are served by `runsc`'s user-space kernel, itself run
    /// inside warden's namespaces and cgroup.
    Gvisor,
}

impl IsolationTier {
    pub fn as_str(self) -> &'static str {
        match self {
            IsolationTier::Native => "native",
            IsolationTier::Gvisor => "gvisor",
        }
    }
}

/// A limit only a cgroup enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CgroupLimit {
    Memory,
    Pids,
    Cpus,
}

impl CgroupLimit {
    pub const ALL: [CgroupLimit; 3] = [CgroupLimit::Memory, CgroupLimit::Pids, CgroupLimit::Cpus];

    /// The limit's name in records (`memory`, `pids`, `cpus`).
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupLimit::Memory => "memory",
            CgroupLimit::Pids => "pids",
            CgroupLimit::Cpus => "cpus",
        }
    }

    /// The cgroup controller that enforces it.
    pub fn controller(self) -> &'static str {
        match self {
            CgroupLimit::Memory => "memory",
            CgroupLimit::Pids => "pids",
            CgroupLimit::Cpus => "cpu",
        }
    }
}

/// A read-only bind of a host path into the sandbox.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindConfig {
    pub host: PathBuf,
    pub at: PathBuf,
}

/// Where a job type's `tool_bundle` is, inside the sandbox.
pub const TOOL_BUNDLE_AT: &str = "/run/warden/tools.json";
/// The variable naming it, unless the job type's `tool_env_var` says another.
pub const DEFAULT_TOOL_ENV_VAR: &str = "AGENT_TOOL_SPEC";

/// Places inside the sandbox that warden owns; a bind may not cover them.
const RESERVED_MOUNTS: &[&str] = &[
    "/",
    "/proc",
    "/dev",
    "/tmp",
    "/work",
    "/artifacts",
    "/etc",
    "/usr",
];

impl BindConfig {
    fn check(&self, i: usize) -> Result<(), String> {
        use std::path::Component;
        for (what, p) in [("host", &self.host), ("at", &self.at)] {
            if !p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir)) {
                return Err(format!(
                    "binds[{i}].{what} {p:?} must be an absolute path without '..'"
                ));
            }
        }
        if RESERVED_MOUNTS
            .iter()
            .any(|r| self.at == std::path::Path::new(r))
            || ["/proc/", "/dev/", "/work/", "/artifacts/", "/tmp/", "/run/"]
                .iter()
                .any(|r| self.at.starts_with(r))
        {
            return Err(format!(
                "binds[{i}].at {:?} is a place warden manages itself",
                self.at
            ));
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJobType {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    argv: Option<Vec<String>>,
    #[serde(default)]
    stages: Option<Vec<Stage>>,
    #[serde(default)]
    results: Results,
    #[serde(default)]
    kind: JobKind,
    #[serde(default)]
    suites: Option<SuitesConfig>,
    #[serde(default)]
    size_cap_kb: Option<Positive>,
    timeout_s: Positive,
    #[serde(default)]
    requires_repo: bool,
    #[serde(default)]
    requires_repo_allowlist: bool,
    #[serde(default)]
    allowed_params: Vec<String>,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    network: super::NetworkPolicy,
    #[serde(default)]
    inotify: bool,
    #[serde(default)]
    binds: Vec<BindConfig>,
    #[serde(default)]
    tool_bundle: Option<PathBuf>,
    #[serde(default)]
    tool_env_var: Option<String>,
    #[serde(default)]
    rootfs: Option<PathBuf>,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    root: RootMode,
    #[serde(default)]
    isolation: IsolationTier,
    #[serde(default)]
    hooks_path: Option<String>,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    accept_unenforced: Vec<CgroupLimit>,
    #[serde(default)]
    secrets: Vec<String>,
    #[serde(default)]
    secret_env: std::collections::BTreeMap<String, String>,
}

impl TryFrom<RawJobType> for JobType {
    type Error = String;

    fn try_from(mut raw: RawJobType) -> Result<JobType, String> {
        if raw.kind == JobKind::ReviewBundle {
            check_review_type(&raw)?;
            // warden's own program; its params are the bundle's.
            raw.argv = Some(Vec::new());
            for p in REVIEW_PARAMS {
                if !raw.allowed_params.iter().any(|a| a == p) {
                    raw.allowed_params.push(p.to_string());
                }
            }
        } else if raw.size_cap_kb.is_some() {
            return Err("size_cap_kb applies only to kind: review_bundle".into());
        }
        if let Some(s) = &raw.suites {
            s.check()?;
            check_suites_type(&raw)?;
            for p in SUITE_PARAMS {
                if !raw.allowed_params.iter().any(|a| a == p) {
                    raw.allowed_params.push(p.to_string());
                }
            }
            if raw.argv.is_none() && raw.stages.is_none() {
                // The suite runner is the job type's program.
                raw.argv = Some(Vec::new());
            }
        } else if raw
            .stages
            .as_ref()
            .is_some_and(|s| s.iter().any(|st| st.suites))
        {
            return Err("a stage with suites: true needs the job type's suites: {dir: …}".into());
        }
        let (argv, stages) = match (raw.argv, raw.stages) {
            (Some(_), Some(_)) => {
                return Err(
                    "a job type has either argv (one program) or stages (a pipeline): remove one"
                        .into(),
                );
            }
            (None, None) => return Err("missing field `argv` (or `stages`)".into()),
            (None, Some(stages)) if stages.is_empty() => {
                return Err("stages is empty: name at least one stage (or use argv)".into());
            }
            (None, Some(stages)) => (Vec::new(), stages),
            (Some(argv), None) => (argv, Vec::new()),
        };
        if stages.is_empty()
            && raw.kind == JobKind::Command
            && raw.suites.is_none()
            && argv.first().is_none_or(String::is_empty)
        {
            return Err("argv must name a program: it is empty".to_string());
        }
        if argv.iter().any(|a| a.contains('\0')) {
            return Err("argv must not contain NUL bytes".to_string());
        }
        check_stages(&stages, &raw.allowed_params, raw.timeout_s.get())?;
        raw.results.check()?;
        if !stages.is_empty() && raw.isolation == IsolationTier::Gvisor {
            return Err(
                "stages are not available with isolation: gvisor (runsc runs one program per \
                 sandbox): use argv, or isolation: native"
                    .into(),
            );
        }
        if raw.requires_repo_allowlist && !raw.requires_repo {
            return Err("requires_repo_allowlist needs requires_repo: true".to_string());
        }
        for (i, name) in raw.allowed_params.iter().enumerate() {
            if !is_valid_param_name(name) {
                return Err(format!(
                    "allowed_params[{i}] {name:?} is not a valid param name: \
                     names match ^[A-Z][A-Z0-9_]{{0,63}}$"
                ));
            }
            if is_reserved(name) {
                return Err(format!(
                    "allowed_params[{i}] {name:?} is reserved: warden sets it for every job"
                ));
            }
            if raw.allowed_params[..i].contains(name) {
                return Err(format!("allowed_params lists {name:?} twice"));
            }
        }
        for (i, b) in raw.binds.iter().enumerate() {
            b.check(i)?;
        }
        if let Some(r) = &raw.rootfs
            && (!r.is_absolute()
                || r.components()
                    .any(|c| matches!(c, std::path::Component::ParentDir)))
        {
            return Err(format!(
                "rootfs {r:?} must be an absolute path without '..'"
            ));
        }
        let image = match &raw.image {
            Some(r) => Some(r.parse::<crate::image::ImageRef>()?),
            None => None,
        };
        if image.is_some() && raw.rootfs.is_some() {
            return Err(
                "a job type runs in either an image or a rootfs directory: remove one of them"
                    .into(),
            );
        }
        if raw.isolation == IsolationTier::Gvisor && raw.root == RootMode::Writable {
            return Err(
                "root: writable is not available with isolation: gvisor (its change report comes \
                 from warden's own overlay): use isolation: native, or a read-only root"
                    .into(),
            );
        }
        if let Some(h) = &raw.hooks_path {
            let p = std::path::Path::new(h);
            if h.is_empty()
                || h.chars().any(char::is_control)
                || p.components().any(|c| {
                    matches!(
                        c,
                        std::path::Component::ParentDir | std::path::Component::RootDir
                    )
                })
            {
                return Err(format!(
                    "hooks_path {h:?} must be a path inside the worktree (relative, without '..')"
                ));
            }
            if !raw.requires_repo {
                return Err("hooks_path needs requires_repo: true".to_string());
            }
        }
        for (i, l) in raw.accept_unenforced.iter().enumerate() {
            if raw.accept_unenforced[..i].contains(l) {
                return Err(format!("accept_unenforced lists {} twice", l.as_str()));
            }
        }
        for (i, l) in raw.labels.iter().enumerate() {
            if !is_valid_label(l) {
                return Err(format!(
                    "labels[{i}] {l:?} is not a valid label: labels match ^[a-z0-9][a-z0-9_.-]{{0,63}}$"
                ));
            }
        }
        for (i, name) in raw.secrets.iter().enumerate() {
            if raw.secrets[..i].contains(name) {
                return Err(format!("secrets lists {name:?} twice"));
            }
        }
        for var in raw.secret_env.keys() {
            if !is_valid_param_name(var) || is_reserved(var) {
                return Err(format!(
                    "secret_env variable {var:?} must match ^[A-Z][A-Z0-9_]{{0,63}}$ and not be \
                     one warden sets"
                ));
            }
            if raw.allowed_params.contains(var) {
                return Err(format!(
                    "secret_env variable {var:?} is also an allowed param: a caller could set it"
                ));
            }
        }
        if let Some(b) = &raw.tool_bundle
            && (!b.is_absolute() || b.components().any(|c| c == std::path::Component::ParentDir))
        {
            return Err(format!(
                "tool_bundle {b:?} must be an absolute path without '..'"
            ));
        }
        let tool_env_var = match (&raw.tool_bundle, raw.tool_env_var) {
            (None, Some(_)) => {
                return Err("tool_env_var names the variable of a tool_bundle: set one".into());
            }
            (_, Some(var)) => var,
            (_, None) => DEFAULT_TOOL_ENV_VAR.to_string(),
        };
        let job_type = JobType {
            tool_bundle: raw.tool_bundle,
            tool_env_var,
            secrets: raw.secrets,
            secret_env: raw.secret_env,
            accept_unenforced: raw.accept_unenforced,
            labels: raw.labels,
            hooks_path: raw.hooks_path,
            binds: raw.binds,
            rootfs: raw.rootfs,
            image,
            root: raw.root,
            isolation: raw.isolation,
            description: raw.description,
            argv,
            stages,
            results: raw.results,
            kind: raw.kind,
            suites: raw.suites,
            size_cap_kb: raw.size_cap_kb.map_or(DEFAULT_SIZE_CAP_KB, Positive::get),
            timeout_s: raw.timeout_s,
            requires_repo: raw.requires_repo,
            requires_repo_allowlist: raw.requires_repo_allowlist,
            allowed_params: raw.allowed_params,
            limits: raw.limits,
            network: raw.network,
            inotify: raw.inotify,
        };
        job_type.check_tool_env_var(&job_type.tool_env_var)?;
        Ok(job_type)
    }
}

impl JobType {
    /// Whether `var` may name the variable that points a job of this type at its tool bundle
    /// (the job type's `tool_env_var`, or one a submission names).
    pub fn check_tool_env_var(&self, var: &str) -> Result<(), String> {
        if !is_valid_param_name(var)
            || is_reserved(var)
            || self.allowed_params.iter().any(|p| p == var)
            || self.secret_env.contains_key(var)
        {
            return Err(format!(
                "tool_env_var {:?} must match ^[A-Z][A-Z0-9_]{{0,63}}$ and be neither a \
                 variable warden sets nor a param or secret_env variable",
                var.chars().take(80).collect::<String>()
            ));
        }
        Ok(())
    }
}

/// A review bundle's job type: warden supplies the program, which needs the repository, the
/// host's system directories (its git) and the native sandbox.
fn check_review_type(raw: &RawJobType) -> Result<(), String> {
    let refuse = |what: &str| {
        Err(format!(
            "kind: review_bundle runs warden's own program: remove {what}"
        ))
    };
    if raw.argv.is_some() || raw.stages.is_some() {
        return refuse("argv and stages");
    }
    if raw.image.is_some() || raw.rootfs.is_some() {
        return refuse("image and rootfs (it uses the host's git)");
    }
    if raw.isolation == IsolationTier::Gvisor {
        return refuse("isolation: gvisor");
    }
    if !raw.requires_repo {
        return Err("kind: review_bundle needs requires_repo: true".into());
    }
    if let Some(cap) = raw.size_cap_kb
        && cap.get() > MAX_SIZE_CAP_KB
    {
        return Err(format!(
            "size_cap_kb {} is over {MAX_SIZE_CAP_KB}",
            cap.get()
        ));
    }
    Ok(())
}

/// A job type with suites: its repository, and the host's system directories for warden's
/// suite runner (no image, rootfs or gVisor); at most one suites stage.
fn check_suites_type(raw: &RawJobType) -> Result<(), String> {
    if !raw.requires_repo {
        return Err("suites need requires_repo: true (they are read from the repository)".into());
    }
    if raw.image.is_some() || raw.rootfs.is_some() || raw.isolation == IsolationTier::Gvisor {
        return Err(
            "suites run warden's own suite runner on the host's system directories: remove \
             image, rootfs or isolation: gvisor"
                .into(),
        );
    }
    if raw.argv.is_some() {
        return Err(
            "a job type with suites runs them as its program, or in a stage with suites: true: \
             remove argv"
                .into(),
        );
    }
    if let Some(stages) = &raw.stages
        && stages.iter().filter(|s| s.suites).count() != 1
    {
        return Err(
            "a staged job type with suites needs exactly one stage with suites: true".into(),
        );
    }
    Ok(())
}

/// Resource limits of a job type. Absent means warden's default: memory, processes and output
/// are never unlimited (a job type without its own limits still cannot exhaust the host's
/// memory, or the host uid's process count, for every other job).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "default_memory_mb")]
    pub memory_mb: Positive,
    #[serde(default = "default_pids")]
    pub pids: Positive,
    /// Cap on stdout+stderr together; beyond it the job is killed (`output_limit`).
    #[serde(default = "default_output_mb")]
    pub output_mb: Positive,
    /// CPU bandwidth (`0.5`, `2`): a cgroup quota per 100 ms period.
    pub cpus: Option<Cpus>,
    /// Size of the job's `/artifacts` (a tmpfs; its inodes are capped with it).
    #[serde(default = "default_artifacts_mb")]
    pub artifacts_mb: Positive,
    pub cpu_s: Option<Positive>,
    /// Largest file the job may write; absent: the larger of `artifacts_mb` and `tmpfs_mb`.
    pub file_size_mb: Option<Positive>,
    pub open_files: Option<Positive>,
    pub tmpfs_mb: Option<Positive>,
    /// What a writable root (`root: writable`) may hold of changes (a tmpfs charged to the job).
    pub root_mb: Option<Positive>,
}

/// `/artifacts` of a job type that does not say.
pub const DEFAULT_ARTIFACTS_MB: u64 = 1024;
/// The changes a writable root of a job type that does not say may hold.
pub const DEFAULT_ROOT_MB: u64 = 1024;
/// `/tmp` (and `/dev/shm`) of a job type that does not say.
pub const DEFAULT_TMPFS_MB: u64 = 256;

fn default_artifacts_mb() -> Positive {
    Positive(DEFAULT_ARTIFACTS_MB)
}

fn default_output_mb() -> Positive {
    Positive(64)
}

/// Memory of a job type that does not say (cgroup, no swap).
pub const DEFAULT_MEMORY_MB: u64 = 4096;
/// Processes (and threads) of a job type that does not say.
pub const DEFAULT_PIDS: u64 = 1024;

fn default_memory_mb() -> Positive {
    Positive(DEFAULT_MEMORY_MB)
}

fn default_pids() -> Positive {
    Positive(DEFAULT_PIDS)
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            memory_mb: default_memory_mb(),
            pids: default_pids(),
            output_mb: default_output_mb(),
            cpus: None,
            artifacts_mb: default_artifacts_mb(),
            cpu_s: None,
            file_size_mb: None,
            open_files: None,
            tmpfs_mb: None,
            root_mb: None,
        }
    }
}

impl Limits {
    pub fn output_bytes(&self) -> u64 {
        self.output_mb.get().saturating_mul(1024 * 1024)
    }

    /// The changes a writable root may hold, in MiB (default 1024).
    pub fn root_mb(&self) -> u64 {
        self.root_mb.map_or(DEFAULT_ROOT_MB, Positive::get)
    }

    pub fn tmpfs_mb(&self) -> u64 {
        self.tmpfs_mb.map_or(DEFAULT_TMPFS_MB, Positive::get)
    }

    /// The file size rlimit: as set, or the largest file any of the job's filesystems holds.
    pub fn file_size_mb(&self) -> u64 {
        self.file_size_mb
            .map_or(self.artifacts_mb.get().max(self.tmpfs_mb()), Positive::get)
    }
}
