//! Before a job runs: check it may run here, lay out its directories and write its spawn spec.
//! A sandboxed job and an `unsafe_fallback` one see different places for the same things, so
//! each has its own layout type; what they share is written once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use warden_core::{CgroupLimit, JobType};
use warden_repo::Checkout;
use warden_sandbox::{
    Bind, CgroupLimits, GitMounts, Isolation, Rlimits, SandboxSpec, SpawnSpec, Tier, paths,
};
use warden_store::JobRecord;

use super::verdict::Refusal;
use crate::shared::Shared;

pub(super) struct Prepared {
    pub spec: SpawnSpec,
    pub job_type: JobType,
    /// Masks the granted secrets in the job's logs.
    pub mask: Option<std::sync::Arc<crate::secrets::MaskSet>>,
    /// The secrets it was given (for the audit trail).
    pub secret_names: Vec<String>,
    /// Limits the job type accepted running without, because this host cannot enforce them:
    /// limit name → why.
    pub unenforced: BTreeMap<String, String>,
    /// The image root the job runs in, kept in the cache while this lives.
    pub image: Option<std::sync::Arc<warden_image::Root>>,
}

/// What a job on a repository gets of its checkout.
pub(super) struct RepoView {
    pub sha: String,
    pub repo_name: Option<String>,
    /// The read-only tree.
    pub tree: PathBuf,
    /// The job's git directory and the mirror's object store.
    pub gitdir: PathBuf,
    pub objects: PathBuf,
    /// How git on the host reaches that repository (for the fallback's environment).
    pub host_git_env: Vec<(String, PathBuf)>,
}

/// Checks the job may run here and lays out its directories.
pub(super) fn prepare(
    shared: &Shared,
    job: &JobRecord,
    checkout: Option<&Checkout>,
    image: Option<std::sync::Arc<warden_image::Root>>,
    slot: usize,
    claim: i64,
    sent_secrets: Option<Result<crate::secrets::JobSecrets, String>>,
) -> Result<Prepared, Refusal> {
    let Some(job_type) = shared.config.job_type(&job.job_type).cloned() else {
        return Err(Refusal::new(
            "unknown_job_type",
            format!("{:?} is no longer configured", job.job_type),
        ));
    };
    if job_type.requires_repo && checkout.is_none() {
        // Fail closed: a repository job never runs without its pinned, read-only worktree.
        return Err(Refusal::new(
            "repo_required",
            "the job has no repository to run on",
        ));
    }
    let tier = shared.executor.tier();
    if tier == Tier::UnsafeFallback && !shared.config.unsafe_fallback {
        return Err(Refusal::new(
            "sandbox_unavailable",
            "the kernel sandbox is not available in this build and unsafe_fallback is not enabled",
        ));
    }
    if tier == Tier::UnsafeFallback && job_type.network.egress().is_some() {
        // Fail closed: without the sandbox there is no namespace for the gateway to close.
        return Err(Refusal::new(
            "network_unavailable",
            "an egress allowlist is enforced only inside the sandbox; this worker runs jobs \
             unsandboxed (unsafe_fallback)",
        ));
    }
    if tier == Tier::UnsafeFallback && job_type.image.is_some() {
        // Fail closed: an image is a root filesystem, which only the sandbox can give a job.
        return Err(Refusal::new(
            "sandbox_unavailable",
            "a job type with an image runs only inside the sandbox; this worker runs jobs \
             unsandboxed (unsafe_fallback)",
        ));
    }
    // An inline job's own argv replaces the job type's program, stages included.
    let staged = !job_type.stages.is_empty() && job.inline_argv.is_none();
    let review = job_type.kind == warden_core::config::JobKind::ReviewBundle;
    // warden's own executable runs in the sandbox: the review bundle maker, the suite runner.
    let own_program = review || job_type.suites.is_some();
    if own_program && tier == Tier::UnsafeFallback {
        // Fail closed: the bundle is made inside the sandbox, against the read-only tree.
        return Err(Refusal::new(
            "sandbox_unavailable",
            "review bundles and test suites run only inside the sandbox; this worker runs \
             jobs unsandboxed (unsafe_fallback)",
        ));
    }
    if staged && tier == Tier::UnsafeFallback {
        // Fail closed: stages share one sandbox session, which only the sandbox's init keeps.
        return Err(Refusal::new(
            "sandbox_unavailable",
            "a staged job type runs only inside the sandbox; this worker runs jobs unsandboxed \
             (unsafe_fallback)",
        ));
    }
    if job_type.root == warden_core::RootMode::Writable
        && (tier == Tier::UnsafeFallback || shared.executor.host().rootless)
    {
        // Fail closed: never a job that asked for its own writable root writing the host's.
        return Err(Refusal::new(
            "sandbox_setup_failed",
            "root: writable needs the sandbox with warden running as root (an overlay over \
             idmapped lower directories); this worker is rootless or unsandboxed",
        ));
    }
    let gvisor = match job_type.isolation {
        warden_core::IsolationTier::Native => None,
        warden_core::IsolationTier::Gvisor => Some(super::gvisor::runtime(
            tier,
            shared.executor.host().rootless,
            &shared.config.gvisor,
        )?),
    };
    let repo = match checkout {
        Some(co) => Some(RepoView {
            sha: co.sha().to_string(),
            repo_name: job.repo_name.clone(),
            tree: co.tree(),
            gitdir: co.gitdir(job_type.hooks_path.as_deref())?,
            objects: co.objects(),
            host_git_env: co.host_git_env(),
        }),
        None => None,
    };
    // A remote job's secrets come from its control plane; a local one's from this worker.
    let granted = match sent_secrets {
        Some(sent) => sent,
        None => shared.worker.secrets.for_job(&job_type),
    }
    .map_err(|e| Refusal::new("secret_unavailable", e))?;
    if tier == Tier::UnsafeFallback && !granted.files.is_empty() {
        // Fail closed: no private tmpfs for /run/secrets without the sandbox.
        return Err(Refusal::new(
            "secret_unavailable",
            "secrets are delivered as files only inside the sandbox; this worker runs jobs \
             unsandboxed (unsafe_fallback)",
        ));
    }
    let artifacts = shared.data.artifacts(job.id);
    let scratch = shared.data.scratch(job.id);
    let mut env = base_env(job, repo.as_ref());
    if let Some(root) = &image {
        image_env(&mut env, &root.info.env);
    }
    env.extend(granted.env.iter().cloned());
    let mut unenforced = BTreeMap::new();
    let mut isolation = match tier {
        Tier::Sandbox | Tier::Gvisor => {
            let host = shared.executor.host();
            let (limits, missing) =
                cgroup_limits(&job_type, &host.cgroups, shared.config.unsafe_fallback)?;
            unenforced = missing;
            // Rootless, the job's ids are the init's own root (warden's user outside); as
            // root, one host identity per slot: jobs running at once never share a uid
            // (validated at start: the range fits, and is not root).
            let (uid, gid) = if host.rootless {
                (0, 0)
            } else {
                (
                    shared.config.sandbox_uid + slot as u32,
                    shared.config.sandbox_gid + slot as u32,
                )
            };
            let layout = SandboxedLayout {
                root: shared.data.sandbox_root(),
                empty_work: shared.data.sandbox_work(),
                etc: shared.data.sandbox_etc(),
                artifacts,
                scratch,
                uid,
                gid,
                rootless: host.rootless,
                cgroups: host.cgroups.clone(),
                limits,
                // Per claim (the lease's fencing token): a job re-run elsewhere while a lost
                // attempt is still being torn down never shares, or kills, its cgroup.
                cgroup_name: format!("{}-{claim}", job.id),
            };
            layout.make_dirs().map_err(directories)?;
            layout.env(&mut env, repo.as_ref());
            let mut isolation = layout.isolation(&job_type, repo.as_ref());
            if let Isolation::Sandbox(spec) = &mut isolation {
                if own_program {
                    // warden's own executable, read-only, runs the bundle maker or suites.
                    let exe = std::env::current_exe().map_err(|e| {
                        Refusal::new("sandbox_setup_failed", format!("review bundle: {e}"))
                    })?;
                    spec.binds.push(warden_sandbox::Bind {
                        host: exe,
                        at: crate::review::EXE_IN_SANDBOX.into(),
                    });
                }
                spec.secrets = granted.files.clone();
                spec.gvisor = gvisor;
                if job_type.root == warden_core::RootMode::Writable {
                    spec.writable_root_bytes = Some(job_type.limits.root_mb() << 20);
                }
                if let Some(root) = &image {
                    spec.rootfs = Some(root.rootfs.clone());
                    // A repository job works in its checkout; otherwise where the image says.
                    if repo.is_none() {
                        spec.cwd = root.info.working_dir.as_ref().map(PathBuf::from);
                    }
                    spec.job_ids = root
                        .user_ids()
                        .map_err(|e| Refusal::new(e.code(), e.to_string()))?;
                }
            }
            isolation
        }
        Tier::UnsafeFallback => {
            let layout = FallbackLayout { artifacts, scratch };
            layout.make_dirs(repo.is_none()).map_err(directories)?;
            layout.env(&mut env, repo.as_ref());
            layout.isolation(repo.as_ref())
        }
    };
    if let Some((bundle, env_var)) = tool_bundle(shared, job, &job_type)? {
        // Fail closed: a job promised its tools never runs without them.
        match std::fs::metadata(&bundle) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                return Err(Refusal::new(
                    "tool_bundle_unavailable",
                    format!("tool_bundle {}: not a regular file", bundle.display()),
                ));
            }
            Err(e) => {
                return Err(Refusal::new(
                    "tool_bundle_unavailable",
                    format!("tool_bundle {}: {e}", bundle.display()),
                ));
            }
        }
        let at = match &mut isolation {
            Isolation::Sandbox(spec) => {
                spec.binds.push(warden_sandbox::Bind {
                    host: bundle,
                    at: warden_core::config::TOOL_BUNDLE_AT.into(),
                });
                warden_core::config::TOOL_BUNDLE_AT.to_string()
            }
            Isolation::UnsafeFallback { .. } => bundle.display().to_string(),
        };
        env.insert(env_var, at);
    }
    if review && !env.contains_key("SIZE_CAP_KB") {
        env.insert("SIZE_CAP_KB".into(), job_type.size_cap_kb.to_string());
    }
    let suite_runner = || -> Vec<String> {
        vec![
            crate::review::EXE_IN_SANDBOX.into(),
            crate::suites::ARG.into(),
        ]
    };
    if let Some(s) = &job_type.suites {
        env.insert(
            "WARDEN_SUITES_DIR".into(),
            format!("{}/{}", warden_sandbox::paths::WORK, s.dir),
        );
        if !env.contains_key("SUITE_TIMEOUT_SEC") {
            let t = s
                .timeout_s
                .map_or(crate::suites::DEFAULT_TIMEOUT_S, |t| t.get());
            env.insert("SUITE_TIMEOUT_SEC".into(), t.to_string());
        }
    }
    let spec = SpawnSpec {
        // An inline job's own argv, under everything else of its type.
        argv: if review {
            vec![
                crate::review::EXE_IN_SANDBOX.into(),
                crate::review::ARG.into(),
            ]
        } else if job_type.suites.is_some() && job_type.stages.is_empty() {
            suite_runner()
        } else {
            job.inline_argv
                .clone()
                .unwrap_or_else(|| job_type.argv.clone())
        },
        env,
        timeout_ms: job_type.timeout_s.get().saturating_mul(1000),
        rlimits: rlimits(&job_type),
        isolation,
        stages: if staged {
            job_type
                .stages
                .iter()
                .map(|st| warden_sandbox::StageSpec {
                    name: st.name.clone(),
                    argv: if st.suites {
                        suite_runner()
                    } else {
                        st.argv.clone()
                    },
                    env: st.env.clone(),
                    timeout_ms: st.timeout_s.map(|t| t.get().saturating_mul(1000)),
                    always: st.always,
                })
                .collect()
        } else {
            Vec::new()
        },
    };
    Ok(Prepared {
        spec,
        image,
        job_type,
        unenforced,
        mask: granted.mask,
        secret_names: granted.names,
    })
}

/// The cgroup limits of a sandboxed job: every one the job type sets that the host can
/// enforce. One it cannot is refused (fail closed) unless the job type (or `unsafe_fallback`)
/// accepts running without it; those are returned with the reason, for the record.
pub(crate) fn cgroup_limits(
    job_type: &JobType,
    home: &warden_sandbox::CgroupHome,
    unsafe_fallback: bool,
) -> Result<(CgroupLimits, BTreeMap<String, String>), Refusal> {
    let l = &job_type.limits;
    let mut limits = CgroupLimits {
        memory_bytes: Some(l.memory_mb.get().saturating_mul(1 << 20)),
        pids: Some(l.pids.get()),
        cpu_millis: l.cpus.map(|c| c.millis()),
    };
    let mut unenforced = BTreeMap::new();
    for limit in CgroupLimit::ALL {
        let slot = match limit {
            CgroupLimit::Memory => limits.memory_bytes.is_some(),
            CgroupLimit::Pids => limits.pids.is_some(),
            CgroupLimit::Cpus => limits.cpu_millis.is_some(),
        };
        if !slot || home.enforces(limit.controller()) {
            continue;
        }
        let why = home.describe();
        if !(unsafe_fallback || job_type.accept_unenforced.contains(&limit)) {
            return Err(Refusal::new(
                "limit_unavailable",
                format!(
                    "the {} limit cannot be enforced on this host (cgroups: {why}); run `warden doctor`, \
                     or list {} in the job type's accept_unenforced to run without it",
                    limit.as_str(),
                    limit.as_str()
                ),
            ));
        }
        match limit {
            CgroupLimit::Memory => limits.memory_bytes = None,
            CgroupLimit::Pids => limits.pids = None,
            CgroupLimit::Cpus => limits.cpu_millis = None,
        }
        unenforced.insert(limit.as_str().to_string(), format!("not enforced ({why})"));
    }
    Ok((limits, unenforced))
}

fn directories(e: std::io::Error) -> Refusal {
    Refusal::new("sandbox_setup_failed", format!("directories: {e}"))
}

/// What every job gets, however it is isolated: its params, its id and attempt, a fixed
/// `PATH`, and the commit it runs on.
fn base_env(job: &JobRecord, repo: Option<&RepoView>) -> BTreeMap<String, String> {
    let mut env = job.params.clone();
    env.insert("WARDEN_JOB_ID".into(), job.id.to_string());
    env.insert("WARDEN_ATTEMPT".into(), job.attempts.to_string());
    env.insert("PATH".into(), paths::PATH.into());
    if let Some(repo) = repo {
        env.insert("WARDEN_SHA".into(), repo.sha.clone());
        if let Some(name) = &repo.repo_name {
            env.insert("WARDEN_REPO".into(), name.clone());
        }
    }
    env
}

/// An image's `Env` under warden's own variables and the job's params: only its `PATH`
/// replaces warden's (the image knows where its programs are).
fn image_env(env: &mut BTreeMap<String, String>, image: &[String]) {
    for entry in image {
        let Some((k, v)) = entry.split_once('=') else {
            continue;
        };
        if k.is_empty() || k.contains('\0') || v.contains('\0') {
            continue;
        }
        if k == "PATH" {
            env.insert(k.to_string(), v.to_string());
        } else {
            env.entry(k.to_string()).or_insert_with(|| v.to_string());
        }
    }
}

fn rlimits(job_type: &JobType) -> Rlimits {
    let limits = &job_type.limits;
    Rlimits {
        cpu_s: limits.cpu_s.map(|p| p.get()),
        file_size_bytes: Some(limits.file_size_mb().saturating_mul(1 << 20)),
        open_files: limits.open_files.map(|p| p.get()),
    }
}

/// Resets the job's artifact and scratch directories: a re-run after a lost worker starts
/// from empty ones.
fn reset(artifacts: &Path, scratch: &Path) -> std::io::Result<()> {
    for dir in [artifacts, scratch] {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
    }
    std::fs::create_dir_all(artifacts)
}

/// A sandboxed job keeps HOME and TMPDIR in its own tmpfs, mounts its root on the shared
/// (always empty) mount point inside its private mount namespace, and sees the shared empty
/// read-only worktree: no per-job directories on the host but its artifacts. (Creating and
/// deleting directories per job was a third of the server's CPU time on the benchmark machine's
/// ext4, which has no journal and so scans recently freed inodes at every new one: see
/// docs/benchmarks.md.)
pub(super) struct SandboxedLayout {
    pub root: PathBuf,
    pub empty_work: PathBuf,
    pub etc: PathBuf,
    pub artifacts: PathBuf,
    pub scratch: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub rootless: bool,
    pub cgroups: warden_sandbox::CgroupHome,
    pub limits: CgroupLimits,
    pub cgroup_name: String,
}

impl SandboxedLayout {
    /// The artifact directory stays warden's: the job writes to its own capped tmpfs, which
    /// the sandbox's init copies here when the job is over.
    fn make_dirs(&self) -> std::io::Result<()> {
        reset(&self.artifacts, &self.scratch)
    }

    pub(super) fn env(&self, env: &mut BTreeMap<String, String>, repo: Option<&RepoView>) {
        if repo.is_some() {
            // The worktree and its git directory belong to a uid the job does not have: tell
            // git that this one repository is fine to read.
            env.insert("GIT_CONFIG_COUNT".into(), "1".into());
            env.insert("GIT_CONFIG_KEY_0".into(), "safe.directory".into());
            env.insert("GIT_CONFIG_VALUE_0".into(), paths::WORK.into());
        }
        env.insert("ARTIFACT_DIR".into(), paths::ARTIFACTS.into());
        env.insert("HOME".into(), paths::HOME.into());
        env.insert("TMPDIR".into(), paths::TMP.into());
    }

    pub(super) fn isolation(self, job_type: &JobType, repo: Option<&RepoView>) -> Isolation {
        let limits = &job_type.limits;
        Isolation::Sandbox(Box::new(SandboxSpec {
            root: self.root,
            work: repo.map_or(self.empty_work, |r| r.tree.clone()),
            git: repo.map(|r| GitMounts {
                dir: r.gitdir.clone(),
                objects: r.objects.clone(),
            }),
            artifacts: self.artifacts,
            artifacts_bytes: limits.artifacts_mb.get().saturating_mul(1 << 20),
            etc: self.etc,
            rootfs: job_type.rootfs.clone(),
            binds: job_type
                .binds
                .iter()
                .map(|b| Bind {
                    host: b.host.clone(),
                    at: b.at.clone(),
                })
                .collect(),
            network: job_type.network.is_host(),
            egress: job_type
                .network
                .egress()
                .map(|p| warden_sandbox::EgressPorts { tcp: p.ports() }),
            inotify: job_type.inotify,
            uid: self.uid,
            gid: self.gid,
            rootless: self.rootless,
            cgroups: self.cgroups,
            limits: self.limits,
            tmpfs_bytes: limits.tmpfs_mb() << 20,
            cgroup_name: self.cgroup_name,
            secrets: Vec::new(),
            cwd: None,
            job_ids: None,
            writable_root_bytes: None,
            gvisor: None,
        }))
    }
}

/// An `unsafe_fallback` job runs on the host's filesystem: its HOME, TMPDIR and (without a
/// repository) working directory are per-job directories in its scratch space.
pub(super) struct FallbackLayout {
    pub artifacts: PathBuf,
    pub scratch: PathBuf,
}

impl FallbackLayout {
    fn home(&self) -> PathBuf {
        self.scratch.join("home")
    }

    fn tmp(&self) -> PathBuf {
        self.scratch.join("tmp")
    }

    fn work(&self) -> PathBuf {
        self.scratch.join("work")
    }

    fn make_dirs(&self, needs_work: bool) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        reset(&self.artifacts, &self.scratch)?;
        for dir in [self.home(), self.tmp()] {
            std::fs::create_dir_all(dir)?;
        }
        if needs_work {
            std::fs::create_dir_all(self.work())?;
            std::fs::set_permissions(self.work(), std::fs::Permissions::from_mode(0o555))?;
        }
        Ok(())
    }

    pub(super) fn env(&self, env: &mut BTreeMap<String, String>, repo: Option<&RepoView>) {
        if let Some(repo) = repo {
            env.insert("GIT_DIR".into(), path_str(&repo.gitdir));
            env.insert(
                "GIT_INDEX_FILE".into(),
                path_str(&repo.gitdir.join("index")),
            );
            for (k, v) in &repo.host_git_env {
                if k != "GIT_INDEX_FILE" && k != "GIT_DIR" {
                    env.insert(k.clone(), path_str(v));
                }
            }
        }
        env.insert("ARTIFACT_DIR".into(), path_str(&self.artifacts));
        env.insert("HOME".into(), path_str(&self.home()));
        env.insert("TMPDIR".into(), path_str(&self.tmp()));
    }

    pub(super) fn isolation(&self, repo: Option<&RepoView>) -> Isolation {
        Isolation::UnsafeFallback {
            cwd: repo.map_or_else(|| self.work(), |r| r.tree.clone()),
        }
    }
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The bundle a job is handed and the variable naming it: the one its submission chose (by
/// SHA-256, found where this worker keeps bundles), else its job type's.
fn tool_bundle(
    shared: &Shared,
    job: &JobRecord,
    job_type: &JobType,
) -> Result<Option<(PathBuf, String)>, Refusal> {
    let Some(chosen) = &job.tool_bundle else {
        return Ok(job_type
            .tool_bundle
            .clone()
            .map(|b| (b, job_type.tool_env_var.clone())));
    };
    let unavailable = |why: String| {
        Refusal::new(
            "tool_bundle_unavailable",
            format!("tool_bundle sha256:{}: {why}", chosen.sha256),
        )
    };
    let Some(bundles) = &shared.worker.tool_bundles else {
        return Err(unavailable("this worker keeps no tool bundles".into()));
    };
    match bundles.find(&chosen.sha256) {
        Ok(Some((path, _))) => Ok(Some((path, chosen.env_var.clone()))),
        Ok(None) => Err(unavailable(format!(
            "no bundle with these bytes in {}",
            bundles.dir().display()
        ))),
        Err(e) => Err(unavailable(format!("{}: {e}", bundles.dir().display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_sandbox::CgroupHome;

    fn repo() -> RepoView {
        RepoView {
            sha: "a".repeat(40),
            repo_name: Some("click".into()),
            tree: "/data/git/trees/x/tree".into(),
            gitdir: "/data/git/trees/x/git".into(),
            objects: "/data/git/mirrors/m/objects".into(),
            host_git_env: vec![
                ("GIT_DIR".into(), "/elsewhere".into()),
                (
                    "GIT_OBJECT_DIRECTORY".into(),
                    "/data/git/mirrors/m/objects".into(),
                ),
            ],
        }
    }

    fn job_type() -> JobType {
        warden_core::Config::from_yaml_str(
            "job_types:\n  t:\n    argv: [/bin/true]\n    timeout_s: 5\n    network: true\n    \
             limits: {memory_mb: 64, pids: 32}\n    binds: [{host: /opt/tc, at: /opt/tc}]\n",
            "t.yaml",
        )
        .unwrap()
        .job_types["t"]
            .clone()
    }

    fn sandboxed() -> SandboxedLayout {
        SandboxedLayout {
            root: "/data/sandbox/root".into(),
            empty_work: "/data/sandbox/work".into(),
            etc: "/data/sandbox/etc".into(),
            artifacts: "/data/artifacts/j".into(),
            scratch: "/data/scratch/j".into(),
            uid: 65534,
            gid: 65533,
            rootless: false,
            cgroups: v1_home(),
            limits: cgroup_limits(&job_type(), &v1_home(), false).unwrap().0,
            cgroup_name: "j".into(),
        }
    }

    fn v1_home() -> CgroupHome {
        CgroupHome::V1 {
            memory: Some("/sys/fs/cgroup/memory/warden".into()),
            pids: Some("/sys/fs/cgroup/pids/warden".into()),
            cpu: None,
        }
    }

    fn with(yaml_extra: &str) -> JobType {
        let yaml =
            format!("job_types:\n  t:\n    argv: [/bin/true]\n    timeout_s: 5\n{yaml_extra}");
        warden_core::Config::from_yaml_str(&yaml, "t.yaml")
            .unwrap()
            .job_types["t"]
            .clone()
    }

    #[test]
    fn a_limit_the_host_cannot_enforce_fails_closed_unless_accepted() {
        // No cpu hierarchy here: a cpus limit is refused, naming the way out.
        let t = with("    limits: {cpus: 0.5}\n");
        let err = cgroup_limits(&t, &v1_home(), false).unwrap_err();
        assert_eq!(
            err.reason(),
            "limit_unavailable: the cpus limit cannot be enforced on this host (cgroups: v1 (memory pids)); run `warden doctor`, or list cpus in the job type's accept_unenforced to run without it"
        );
        // Accepted by the job type: it runs without, and the record says so.
        let t = with("    limits: {cpus: 0.5}\n    accept_unenforced: [cpus]\n");
        let (limits, missing) = cgroup_limits(&t, &v1_home(), false).unwrap();
        assert_eq!(limits.cpu_millis, None);
        assert_eq!(limits.memory_bytes, Some(4096 << 20));
        assert_eq!(missing["cpus"], "not enforced (v1 (memory pids))");
        // No cgroup at all: memory and pids (always set) need accepting too, or the fallback.
        let none = CgroupHome::Unavailable {
            why: "not delegated".into(),
        };
        assert!(cgroup_limits(&with(""), &none, false).is_err());
        let (limits, missing) = cgroup_limits(&with(""), &none, true).unwrap();
        assert_eq!(limits, CgroupLimits::default());
        assert_eq!(missing.keys().collect::<Vec<_>>(), ["memory", "pids"]);
        // Enforceable: enforced, whatever the job type accepts.
        let t = with("    accept_unenforced: [memory, pids]\n");
        let (limits, missing) = cgroup_limits(&t, &v1_home(), false).unwrap();
        assert_eq!((limits.pids, missing.len()), (Some(1024), 0));
    }

    #[test]
    fn a_sandboxed_job_sees_only_in_box_paths() {
        let mut env = BTreeMap::new();
        sandboxed().env(&mut env, Some(&repo()));
        assert_eq!(env["ARTIFACT_DIR"], "/artifacts");
        assert_eq!(env["HOME"], "/tmp/home");
        assert_eq!(env["TMPDIR"], "/tmp");
        assert_eq!(env["GIT_CONFIG_VALUE_0"], "/work");
        assert!(env.values().all(|v| !v.starts_with("/data")), "{env:?}");
        let Isolation::Sandbox(sb) = sandboxed().isolation(&job_type(), Some(&repo())) else {
            panic!("not sandboxed");
        };
        assert_eq!(sb.work, Path::new("/data/git/trees/x/tree"));
        assert_eq!(
            sb.git.unwrap().objects,
            Path::new("/data/git/mirrors/m/objects")
        );
        assert_eq!(
            (sb.limits.memory_bytes, sb.limits.pids),
            (Some(64 << 20), Some(32))
        );
        assert_eq!(sb.tmpfs_bytes, 256 << 20);
        assert_eq!(sb.artifacts_bytes, 1024 << 20);
        assert_eq!((sb.uid, sb.gid), (65534, 65533));
        assert!(sb.network);
        assert_eq!(sb.binds.len(), 1);
        // Without a repository: the shared empty worktree, no git mounts, no git trust.
        let Isolation::Sandbox(sb) = sandboxed().isolation(&job_type(), None) else {
            panic!("not sandboxed");
        };
        assert_eq!(sb.work, Path::new("/data/sandbox/work"));
        assert!(sb.git.is_none());
        let mut env = BTreeMap::new();
        sandboxed().env(&mut env, None);
        assert!(!env.contains_key("GIT_CONFIG_COUNT"));
    }

    #[test]
    fn a_fallback_job_gets_host_paths_of_its_own() {
        let layout = FallbackLayout {
            artifacts: "/data/artifacts/j".into(),
            scratch: "/data/scratch/j".into(),
        };
        let mut env = BTreeMap::new();
        layout.env(&mut env, Some(&repo()));
        assert_eq!(env["ARTIFACT_DIR"], "/data/artifacts/j");
        assert_eq!(env["HOME"], "/data/scratch/j/home");
        assert_eq!(env["TMPDIR"], "/data/scratch/j/tmp");
        // The job's own git directory wins over what the host environment says.
        assert_eq!(env["GIT_DIR"], "/data/git/trees/x/git");
        assert_eq!(env["GIT_INDEX_FILE"], "/data/git/trees/x/git/index");
        assert_eq!(env["GIT_OBJECT_DIRECTORY"], "/data/git/mirrors/m/objects");
        assert_eq!(
            layout.isolation(Some(&repo())),
            Isolation::UnsafeFallback {
                cwd: "/data/git/trees/x/tree".into()
            }
        );
        assert_eq!(
            layout.isolation(None),
            Isolation::UnsafeFallback {
                cwd: "/data/scratch/j/work".into()
            }
        );
    }

    #[test]
    fn an_images_env_lies_under_wardens_and_the_params_but_its_path_wins() {
        let job = crate::run::tests::record();
        let mut env = base_env(&job, None);
        env.insert("LANG".into(), "from-a-param".into());
        image_env(
            &mut env,
            &[
                "PATH=/opt/py/bin:/usr/bin".into(),
                "LANG=C.UTF-8".into(),
                "WARDEN_JOB_ID=forged".into(),
                "PYTHONDONTWRITEBYTECODE=1".into(),
                "no equals sign".into(),
                "=empty-name".into(),
            ],
        );
        assert_eq!(env["PATH"], "/opt/py/bin:/usr/bin");
        assert_eq!(env["LANG"], "from-a-param");
        assert_eq!(env["WARDEN_JOB_ID"], job.id.to_string());
        assert_eq!(env["PYTHONDONTWRITEBYTECODE"], "1");
        assert!(!env.contains_key("") && !env.contains_key("no equals sign"));
    }

    #[test]
    fn every_job_gets_its_identity_and_commit() {
        let mut job = warden_store::JobRecord {
            attempts: 2,
            ..crate::run::tests::record()
        };
        job.params.insert("FOO".into(), "bar".into());
        let env = base_env(&job, Some(&repo()));
        assert_eq!(env["WARDEN_JOB_ID"], job.id.to_string());
        assert_eq!(env["WARDEN_ATTEMPT"], "2");
        assert_eq!(env["WARDEN_SHA"], "a".repeat(40));
        assert_eq!(env["WARDEN_REPO"], "click");
        assert_eq!(env["FOO"], "bar");
        assert_eq!(env["PATH"], paths::PATH);
    }
}
