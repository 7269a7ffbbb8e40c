//! warden's side of a supervised job: start the supervisor, hand it the spec, steer it, read
//! its report.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Mutex;

use crate::{ExitReport, SUPERVISE_ARG, SandboxError, SpawnSpec};

/// Starts supervisors from one executable (the `warden` binary).
#[derive(Debug, Clone)]
pub struct Launcher {
    exe: PathBuf,
}

/// A job under supervision.
pub struct RunningJob {
    pub control: JobControl,
    reader: OwnedReadHalf,
    child: tokio::process::Child,
}

/// Steers a running job. Cheap to clone. The supervisor treats the end of the control stream as
/// warden's death and kills the job, so a [`RunningJob`] keeps one of these alive until it is
/// waited for.
#[derive(Clone)]
pub struct JobControl {
    writer: Arc<Mutex<OwnedWriteHalf>>,
}

impl Launcher {
    pub fn new(exe: impl Into<PathBuf>) -> Launcher {
        Launcher { exe: exe.into() }
    }

    pub fn exe(&self) -> &std::path::Path {
        &self.exe
    }

    /// Starts a supervisor for `spec`, the job writing to `stdout` and `stderr`.
    pub async fn spawn(
        &self,
        spec: &SpawnSpec,
        stdout: OwnedFd,
        stderr: OwnedFd,
    ) -> Result<RunningJob, SandboxError> {
        let (ours, theirs) =
            std::os::unix::net::UnixStream::pair().map_err(SandboxError::Control)?;
        let child = {
            let mut cmd = tokio::process::Command::new(&self.exe);
            cmd.arg(SUPERVISE_ARG)
                .env_clear()
                .stdin(Stdio::from(OwnedFd::from(theirs)))
                .stdout(Stdio::from(stdout))
                .stderr(Stdio::from(stderr));
            cmd.spawn().map_err(|source| SandboxError::Spawn {
                exe: self.exe.clone(),
                source,
            })?
            // `cmd` drops here, closing our copies of the job's pipes and of the socket's far
            // end: the job's output ends when the job's tree ends, not when warden's does.
        };
        ours.set_nonblocking(true).map_err(SandboxError::Control)?;
        let stream = tokio::net::UnixStream::from_std(ours).map_err(SandboxError::Control)?;
        let (reader, mut writer) = stream.into_split();
        let body = serde_json::to_vec(spec).map_err(|e| SandboxError::BadReport(e.to_string()))?;
        let len = u32::try_from(body.len())
            .map_err(|_| SandboxError::BadReport("spawn spec too large".into()))?;
        writer
            .write_all(&len.to_le_bytes())
            .await
            .map_err(SandboxError::Control)?;
        writer
            .write_all(&body)
            .await
            .map_err(SandboxError::Control)?;
        Ok(RunningJob {
            control: JobControl {
                writer: Arc::new(Mutex::new(writer)),
            },
            reader,
            child,
        })
    }
}

impl JobControl {
    /// SIGTERM (and SIGCONT, so stopped processes see it) to every process of the job.
    pub async fn terminate(&self) {
        self.send(b'T').await;
    }

    /// SIGKILL to every process of the job.
    pub async fn kill(&self) {
        self.send(b'K').await;
    }

    async fn send(&self, byte: u8) {
        // The supervisor may already be gone (the job ended): nothing left to signal.
        let _ = self.writer.lock().await.write_all(&[byte]).await;
    }
}

impl RunningJob {
    /// The supervisor's process id (for diagnostics).
    pub fn supervisor_pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits until the job's whole process tree is gone and returns the supervisor's report.
    pub async fn wait(mut self) -> Result<ExitReport, SandboxError> {
        let mut buf = Vec::new();
        let read = self.reader.read_to_end(&mut buf).await;
        let status = self.child.wait().await.map_err(SandboxError::Control)?;
        drop(self.control);
        read.map_err(SandboxError::Control)?;
        let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
        if line.is_empty() {
            return Err(SandboxError::NoReport(status.to_string()));
        }
        serde_json::from_slice(line).map_err(|e| SandboxError::BadReport(e.to_string()))
    }
}
