//! Before a job runs: check it may run here, lay out its directories and write its spawn spec.
//! A sandboxed job and an `unsafe_fallback` one see different places for the same things, so
//! each has its own layout type; what they share is written once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use warden_core::JobType;
use warden_repo::Checkout;
use warden_sandbox::{Bind, GitMounts, Isolation, Rlimits, SandboxSpec, SpawnSpec, Tier, paths};
use warden_store::JobRecord;

use super::verdict::Refusal;
use crate::shared::Shared;

/// Size of `/tmp` (and `/dev/shm`) when the job type does not say.
const DEFAULT_TMPFS_MB: u64 = 256;

pub(super) struct Prepared {
    pub spec: SpawnSpec,
    pub job_type: JobType,
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
    slot: usize,
    claim: i64,
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
    let artifacts = shared.data.artifacts(job.id);
    let scratch = shared.data.scratch(job.id);
    let mut env = base_env(job, repo.as_ref());
    let isolation = match tier {
        Tier::Sandbox => {
            let layout = SandboxedLayout {
                root: shared.data.sandbox_root(),
                empty_work: shared.data.sandbox_work(),
                etc: shared.data.sandbox_etc(),
                artifacts,
                scratch,
                // One host identity per slot: jobs running at once never share a uid
                // (validated at start: the range fits, and is not root).
                uid: shared.config.sandbox_uid + slot as u32,
                gid: shared.config.sandbox_gid + slot as u32,
                // Per claim (the lease's fencing token): a job re-run elsewhere while a lost
                // attempt is still being torn down never shares, or kills, its cgroup.
                cgroup_name: format!("{}-{claim}", job.id),
            };
            layout.make_dirs().map_err(directories)?;
            layout.env(&mut env, repo.as_ref());
            layout.isolation(&job_type, repo.as_ref())
        }
        Tier::UnsafeFallback => {
            let layout = FallbackLayout { artifacts, scratch };
            layout.make_dirs(repo.is_none()).map_err(directories)?;
            layout.env(&mut env, repo.as_ref());
            layout.isolation(repo.as_ref())
        }
    };
    let spec = SpawnSpec {
        argv: job_type.argv.clone(),
        env,
        timeout_ms: job_type.timeout_s.get().saturating_mul(1000),
        rlimits: rlimits(&job_type),
        isolation,
    };
    Ok(Prepared { spec, job_type })
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

fn rlimits(job_type: &JobType) -> Rlimits {
    let limits = &job_type.limits;
    Rlimits {
        cpu_s: limits.cpu_s.map(|p| p.get()),
        file_size_bytes: limits.file_size_mb.map(|p| p.get().saturating_mul(1 << 20)),
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
/// deleting directories per job was a third of the server's CPU time on ext4.)
pub(super) struct SandboxedLayout {
    pub root: PathBuf,
    pub empty_work: PathBuf,
    pub etc: PathBuf,
    pub artifacts: PathBuf,
    pub scratch: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_name: String,
}

impl SandboxedLayout {
    fn make_dirs(&self) -> std::io::Result<()> {
        reset(&self.artifacts, &self.scratch)?;
        // The job's uid 1000 is this host uid: it owns its artifact directory, nothing else.
        std::os::unix::fs::chown(&self.artifacts, Some(self.uid), Some(self.gid))
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
            network: job_type.network,
            inotify: job_type.inotify,
            uid: self.uid,
            gid: self.gid,
            memory_bytes: Some(limits.memory_mb.get().saturating_mul(1 << 20)),
            pids: Some(limits.pids.get()),
            tmpfs_bytes: limits.tmpfs_mb.map(|m| m.get()).unwrap_or(DEFAULT_TMPFS_MB) << 20,
            cgroup_name: self.cgroup_name,
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

#[cfg(test)]
mod tests {
    use super::*;

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
            cgroup_name: "j".into(),
        }
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
        assert_eq!((sb.memory_bytes, sb.pids), (Some(64 << 20), Some(32)));
        assert_eq!(sb.tmpfs_bytes, DEFAULT_TMPFS_MB << 20);
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
