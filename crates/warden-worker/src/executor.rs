//! The executor seam: how a prepared job is started. The worker loop does not care whether the
//! job runs as a supervised process or inside the full kernel sandbox.

use std::os::fd::OwnedFd;

use async_trait::async_trait;
use tokio::net::unix::pipe;
use warden_sandbox::{Isolation, Launcher, RunningJob, SandboxError, SpawnSpec};

/// A started job: its two output streams and the handle that steers and awaits it.
pub struct Execution {
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
    pub job: RunningJob,
}

#[async_trait]
pub trait Executor: Send + Sync + 'static {
    /// The isolation this executor provides, recorded on every job it runs.
    fn isolation(&self) -> Isolation;

    async fn start(&self, spec: SpawnSpec) -> Result<Execution, SandboxError>;
}

/// Runs jobs under warden's supervisor process (see `warden-sandbox`).
pub struct SupervisedExecutor {
    launcher: Launcher,
    isolation: Isolation,
}

impl SupervisedExecutor {
    pub fn new(launcher: Launcher, isolation: Isolation) -> SupervisedExecutor {
        SupervisedExecutor {
            launcher,
            isolation,
        }
    }
}

fn pipe_pair() -> Result<(pipe::Receiver, OwnedFd), SandboxError> {
    let (reader, writer) = std::io::pipe().map_err(SandboxError::Control)?;
    let receiver =
        pipe::Receiver::from_owned_fd(OwnedFd::from(reader)).map_err(SandboxError::Control)?;
    Ok((receiver, OwnedFd::from(writer)))
}

#[async_trait]
impl Executor for SupervisedExecutor {
    fn isolation(&self) -> Isolation {
        self.isolation
    }

    async fn start(&self, spec: SpawnSpec) -> Result<Execution, SandboxError> {
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

/// Runs `/bin/true` in the full sandbox once, to learn at start whether this host can give jobs
/// the sandbox. Returns the failing step when it cannot.
pub async fn sandbox_self_test(
    executor: &dyn Executor,
    scratch: &std::path::Path,
    etc: &std::path::Path,
    uid: u32,
    gid: u32,
) -> Result<(), String> {
    let dir = scratch.join(format!(".selftest-{}", uuid::Uuid::now_v7().simple()));
    let (root, work, artifacts) = (dir.join("root"), dir.join("work"), dir.join("artifacts"));
    let result = async {
        for d in [&root, &work, &artifacts] {
            std::fs::create_dir_all(d).map_err(|e| format!("directories: {e}"))?;
        }
        std::os::unix::fs::chown(&artifacts, Some(uid), Some(gid))
            .map_err(|e| format!("chown artifacts: {e}"))?;
        let spec = SpawnSpec {
            argv: vec!["/bin/true".into()],
            env: [("PATH".to_string(), "/usr/bin:/bin".to_string())].into(),
            cwd: warden_sandbox::SANDBOX_WORK.into(),
            timeout_ms: 10_000,
            rlimits: warden_sandbox::Rlimits::default(),
            isolation: Isolation::Sandbox,
            sandbox: Some(warden_sandbox::SandboxSpec {
                root,
                work,
                git: None,
                artifacts,
                etc: etc.to_path_buf(),
                rootfs: None,
                binds: Vec::new(),
                network: false,
                uid,
                gid,
                memory_bytes: None,
                pids: None,
                tmpfs_bytes: 1 << 20,
                cgroup_name: dir
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
            }),
        };
        let mut exec = executor.start(spec).await.map_err(|e| e.to_string())?;
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
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}
