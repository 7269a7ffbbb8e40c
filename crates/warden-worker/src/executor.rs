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

    async fn start(&self, mut spec: SpawnSpec) -> Result<Execution, SandboxError> {
        spec.isolation = self.isolation;
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
