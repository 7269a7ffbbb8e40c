//! The executor seam: how a prepared job is started. The worker loop does not care whether the
//! job runs as a supervised process or inside the full kernel sandbox.

use std::os::fd::OwnedFd;

use async_trait::async_trait;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::unix::pipe;

use warden_core::Config;
use warden_sandbox::{Host, Isolation, Launcher, RunningJob, SandboxError, SpawnSpec, Tier};

use crate::DataDir;

/// A started job: its two output streams and the handle that steers and awaits it.
pub struct Execution {
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
    pub job: RunningJob,
}

/// What a job needs that does not depend on the job, made before it is known: its two output
/// pipes and a supervisor waiting for its spec. A slot holds one while it waits for a claim.
pub struct Standby {
    stdout: pipe::Receiver,
    stderr: pipe::Receiver,
    supervisor: warden_sandbox::Standby,
}

impl Standby {
    /// The waiting supervisor's pid.
    pub fn supervisor(&self) -> i32 {
        self.supervisor.supervisor()
    }
}

#[async_trait]
pub trait Executor: Send + Sync + 'static {
    /// The isolation this executor provides, recorded on every job it runs.
    fn tier(&self) -> Tier;

    /// What the host gives sandboxed jobs (rootless or not, which cgroup limits hold).
    fn host(&self) -> &Host;

    /// Makes a [`Standby`] ready for the next job.
    async fn standby(&self) -> Result<Standby, SandboxError>;

    /// Starts a prepared job: in `standby` when the slot had one ready, else from nothing.
    async fn start(
        &self,
        spec: SpawnSpec,
        standby: Option<Standby>,
    ) -> Result<Execution, SandboxError>;
}

/// Runs jobs under warden's supervisor process (see `warden-sandbox`).
pub struct SupervisedExecutor {
    launcher: Launcher,
    tier: Tier,
    host: Host,
    /// Why the start-up self-test failed, when it did (and jobs fail closed or fall back).
    self_test_failure: Option<String>,
}

impl SupervisedExecutor {
    pub fn new(launcher: Launcher, tier: Tier, host: Host) -> SupervisedExecutor {
        SupervisedExecutor {
            launcher,
            tier,
            host,
            self_test_failure: None,
        }
    }

    /// Why the sandbox's start-up self-test failed on this host; `None` when it passed.
    pub fn self_test_failure(&self) -> Option<&str> {
        self.self_test_failure.as_deref()
    }
}

fn pipe_pair() -> Result<(pipe::Receiver, OwnedFd), SandboxError> {
    let (reader, writer) = std::io::pipe().map_err(SandboxError::Control)?;
    // Room for the job to go on writing while its log is stored (best effort: a smaller pipe
    // only makes the job wait sooner).
    let _ = rustix::pipe::fcntl_setpipe_size(&reader, crate::run::PIPE_BYTES);
    let receiver =
        pipe::Receiver::from_owned_fd(OwnedFd::from(reader)).map_err(SandboxError::Control)?;
    Ok((receiver, OwnedFd::from(writer)))
}

#[async_trait]
impl Executor for SupervisedExecutor {
    fn tier(&self) -> Tier {
        self.tier
    }

    fn host(&self) -> &Host {
        &self.host
    }

    async fn standby(&self) -> Result<Standby, SandboxError> {
        let (stdout, stdout_w) = pipe_pair()?;
        let (stderr, stderr_w) = pipe_pair()?;
        let supervisor = self.launcher.standby(stdout_w, stderr_w).await?;
        Ok(Standby {
            stdout,
            stderr,
            supervisor,
        })
    }

    async fn start(
        &self,
        spec: SpawnSpec,
        standby: Option<Standby>,
    ) -> Result<Execution, SandboxError> {
        if let Some(ready) = standby {
            let pid = ready.supervisor.supervisor();
            match ready.supervisor.start(&spec).await {
                Ok(job) => {
                    return Ok(Execution {
                        stdout: ready.stdout,
                        stderr: ready.stderr,
                        job,
                    });
                }
                // It died waiting (killed, OOM): nothing of the job ran; start it afresh.
                Err(e) => tracing::warn!(
                    supervisor = pid,
                    error = %e,
                    "the slot's waiting supervisor is gone; starting the job with a new one"
                ),
            }
        }
        let (stdout, stdout_w) = pipe_pair()?;
        let (stderr, stderr_w) = pipe_pair()?;
        let job = self.launcher.spawn(&spec, stdout_w, stderr_w).await?;
        Ok(Execution {
            stdout,
            stderr,
            job,
        })
    }
}

/// Why the sandbox self-test failed: the failing step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SelfTestFailed(pub String);

/// Runs `/bin/true` in the full sandbox once, to learn at start whether this host can give jobs
/// the sandbox. Returns the failing step when it cannot.
pub async fn sandbox_self_test(
    executor: &dyn Executor,
    scratch: &std::path::Path,
    etc: &std::path::Path,
    uid: u32,
    gid: u32,
    gvisor: Option<warden_sandbox::GvisorSpec>,
) -> Result<(), SelfTestFailed> {
    let dir = scratch.join(format!(".selftest-{}", uuid::Uuid::now_v7().simple()));
    // Rootless, the job's ids are the init's own root, which is warden's user outside.
    let (uid, gid) = if executor.host().rootless {
        (0, 0)
    } else {
        (uid, gid)
    };
    let result = self_test_in(executor, &dir, etc, uid, gid, gvisor).await;
    let _ = std::fs::remove_dir_all(&dir);
    result.map_err(SelfTestFailed)
}

async fn self_test_in(
    executor: &dyn Executor,
    dir: &std::path::Path,
    etc: &std::path::Path,
    uid: u32,
    gid: u32,
    gvisor: Option<warden_sandbox::GvisorSpec>,
) -> Result<(), String> {
    let (root, work, artifacts) = (dir.join("root"), dir.join("work"), dir.join("artifacts"));
    for d in [&root, &work, &artifacts] {
        std::fs::create_dir_all(d).map_err(|e| format!("directories: {e}"))?;
    }
    let spec = SpawnSpec {
        stages: Vec::new(),
        argv: vec!["/bin/true".into()],
        env: [("PATH".to_string(), "/usr/bin:/bin".to_string())].into(),
        timeout_ms: 10_000,
        rlimits: warden_sandbox::Rlimits::default(),
        isolation: Isolation::Sandbox(Box::new(warden_sandbox::SandboxSpec {
            root,
            work,
            git: None,
            artifacts,
            artifacts_bytes: 1 << 20,
            etc: etc.to_path_buf(),
            rootfs: None,
            binds: Vec::new(),
            network: false,
            egress: None,
            inotify: false,
            uid,
            gid,
            rootless: executor.host().rootless,
            cgroups: executor.host().cgroups.clone(),
            limits: warden_sandbox::CgroupLimits::default(),
            tmpfs_bytes: 1 << 20,
            secrets: Vec::new(),
            cwd: None,
            job_ids: None,
            writable_root_bytes: None,
            gvisor,
            cgroup_name: dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
        })),
    };
    let mut exec = executor
        .start(spec, None)
        .await
        .map_err(|e| e.to_string())?;
    let drain = async {
        use tokio::io::AsyncReadExt;
        let mut sink = Vec::new();
        let _ = exec.stdout.read_to_end(&mut sink).await;
        let _ = exec.stderr.read_to_end(&mut sink).await;
    };
    let (report, ()) = tokio::join!(exec.job.wait(), drain);
    let report = report.map_err(|e| e.to_string())?;
    match (report.setup_error, report.exit_code) {
        (Some(e), _) => Err(e),
        (None, Some(0)) => Ok(()),
        (None, code) => Err(format!(
            "/bin/true ended with {code:?} / signal {:?}",
            report.signal
        )),
    }
}

/// Says at start which job types will fail closed, and which will run without a limit they
/// accept as not enforced, where this host's cgroups cannot enforce every limit (the rule
/// itself is `run::cgroup_limits`, which every job goes through).
fn warn_unenforceable(config: &Config, home: &warden_sandbox::CgroupHome) {
    for (name, t) in &config.job_types {
        match crate::run::cgroup_limits(t, home, config.unsafe_fallback) {
            Ok((_, unenforced)) if unenforced.is_empty() => {}
            Ok((_, unenforced)) => tracing::warn!(
                job_type = %name,
                limits = ?unenforced.keys().collect::<Vec<_>>(),
                cgroups = %home.describe(),
                "these limits cannot be enforced on this host; the job type accepts that, and \
                 each of its jobs records LIMITS_NOT_ENFORCED"
            ),
            Err(refusal) => tracing::warn!(
                job_type = %name,
                "jobs of this type will end `error`: {}",
                refusal.reason()
            ),
        }
    }
}

/// The executor for this host's jobs: can it give them the full sandbox? Learned once, now,
/// by running one. Without it, jobs fail closed — unless `unsafe_fallback` allows running them
/// as supervised processes (recorded on every job).
pub async fn local_executor(
    config: &Config,
    data: &DataDir,
    supervisor_exe: PathBuf,
) -> Arc<SupervisedExecutor> {
    // Before the zygote exists: this may move warden into a cgroup leaf of its own.
    let host = Host::establish();
    tracing::info!(
        rootless = host.rootless,
        cgroups = %host.cgroups.describe(),
        "sandbox host"
    );
    let launcher = Launcher::new(supervisor_exe);
    let sandbox = SupervisedExecutor::new(launcher.clone(), Tier::Sandbox, host.clone());
    let self_test = match warden_sandbox::prepare_etc(&data.sandbox_etc()) {
        Ok(()) => sandbox_self_test(
            &sandbox,
            &data.scratch_root(),
            &data.sandbox_etc(),
            config.sandbox_uid,
            config.sandbox_gid,
            None,
        )
        .await
        .map_err(|e| e.0),
        Err(e) => Err(format!("prepare /etc: {e}")),
    };
    let executor = match self_test {
        Ok(()) => {
            tracing::info!("kernel sandbox available: every job runs in it");
            Arc::new(sandbox)
        }
        Err(e) if config.unsafe_fallback => {
            tracing::warn!(
                reason = %e,
                "the kernel sandbox cannot be set up on this host; unsafe_fallback is on, so \
                 jobs run as supervised processes WITHOUT the sandbox (recorded on every job); \
                 run `warden doctor`"
            );
            // Not only a log line: whoever started warden must see it.
            eprintln!(
                "\n!!! warden: the kernel sandbox cannot be set up on this host: {e}\n\
                 !!! unsafe_fallback is on, so EVERY JOB RUNS WITHOUT ISOLATION, as warden's own user.\n\
                 !!! Each such job is recorded as unsafe_fallback and listed as UNSANDBOXED.\n\
                 !!! `warden doctor` says what is missing and how to get it.\n"
            );
            Arc::new(SupervisedExecutor {
                self_test_failure: Some(e),
                ..SupervisedExecutor::new(launcher, Tier::UnsafeFallback, host)
            })
        }
        Err(e) => {
            tracing::error!(
                reason = %e,
                "the kernel sandbox cannot be set up on this host: jobs will end `error` \
                 (fail closed); run `warden doctor`"
            );
            Arc::new(SupervisedExecutor {
                self_test_failure: Some(e),
                ..sandbox
            })
        }
    };
    if executor.tier() == Tier::Sandbox {
        warn_unenforceable(config, &executor.host().cgroups);
    }
    for (name, t) in config.job_types.iter().filter(|(_, t)| t.network.is_host()) {
        tracing::warn!(
            job_type = %name,
            argv0 = %t.argv[0],
            "network: host shares the host's network namespace: these jobs can reach the \
             network and services on the host's loopback; grant it only to trusted job types \
             (an egress allowlist, network: {{egress: [...]}}, closes everything else)"
        );
    }
    executor
}
