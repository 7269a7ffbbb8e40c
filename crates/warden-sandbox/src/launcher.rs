//! warden's side of a supervised job: have the zygote fork a supervisor, hand it the spec,
//! steer it, read its report.

use std::os::fd::AsFd;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::zygote::{self, ZYGOTE_ARG};
use crate::{ExitReport, SandboxError, SpawnSpec};

/// Starts supervisors through a zygote process of one executable (the `warden` binary).
#[derive(Debug, Clone)]
pub struct Launcher {
    exe: PathBuf,
    zygote: Arc<tokio::sync::Mutex<Option<Zygote>>>,
}

#[derive(Debug)]
struct Zygote {
    /// Our end of the request socket (`SOCK_SEQPACKET`: message-oriented, like a datagram).
    sock: tokio::net::UnixDatagram,
    child: std::process::Child,
}

/// A job under supervision.
pub struct RunningJob {
    pub control: JobControl,
    reader: OwnedReadHalf,
    supervisor: i32,
    /// Bytes of the report read while looking for the gateway message.
    read_ahead: Vec<u8>,
}

/// Steers a running job. Cheap to clone. The supervisor treats the end of the control stream as
/// warden's death and kills the job, so a [`RunningJob`] keeps one of these alive until it is
/// waited for.
#[derive(Clone)]
pub struct JobControl {
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
}

impl Launcher {
    pub fn new(exe: impl Into<PathBuf>) -> Launcher {
        Launcher {
            exe: exe.into(),
            zygote: Arc::default(),
        }
    }

    fn start_zygote(&self) -> std::io::Result<Zygote> {
        let (ours, theirs) = zygote::socketpair()?;
        let child = std::process::Command::new(&self.exe)
            .arg(ZYGOTE_ARG)
            .env_clear()
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let ours = std::os::unix::net::UnixDatagram::from(ours);
        ours.set_nonblocking(true)?;
        Ok(Zygote {
            sock: tokio::net::UnixDatagram::from_std(ours)?,
            child,
        })
    }

    /// Asks the zygote for a supervisor; starts (or restarts) the zygote when needed. Requests
    /// are serialised: the zygote answers them in order.
    async fn fork_supervisor(&self, fds: [&OwnedFd; 3]) -> std::io::Result<i32> {
        let mut guard = self.zygote.lock().await;
        for attempt in 0..2 {
            if guard.is_none() {
                *guard = Some(self.start_zygote()?);
            }
            let z = guard.as_mut().expect("zygote just started");
            let answer = async {
                zygote::send(z.sock.as_fd(), fds)?;
                let mut buf = [0u8; 8];
                loop {
                    z.sock.readable().await?;
                    match z.sock.try_recv(&mut buf) {
                        Ok(n) => return zygote::decode_pid(&buf[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Err(e),
                    }
                }
            }
            .await;
            match answer {
                Ok(pid) => return Ok(pid),
                Err(_) if attempt == 0 => {
                    // The zygote died (killed, OOM): reap it and start a new one once.
                    *guard = None;
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// Starts a supervisor for `spec`, the job writing to `stdout` and `stderr`.
    pub async fn spawn(
        &self,
        spec: &SpawnSpec,
        stdout: OwnedFd,
        stderr: OwnedFd,
    ) -> Result<RunningJob, SandboxError> {
        let frame = spec_frame(spec)?;
        let (control, theirs) = control_pair()?;
        let (reader, mut writer) = control.into_split();
        // The spec goes into the socket while the zygote forks: the supervisor finds it waiting.
        let (forked, written) = tokio::join!(
            self.fork_for(theirs, stdout, stderr),
            writer.write_all(&frame)
        );
        let supervisor = forked?;
        written.map_err(SandboxError::Control)?;
        Ok(RunningJob::new(reader, writer, supervisor))
    }

    /// Forks a supervisor for a job not known yet, its output going to `stdout` and `stderr`:
    /// it waits for its spec ([`Standby::start`]). A worker slot keeps one ready while it waits
    /// for a job, so the zygote's round trip (its wake-up, the fork, the supervisor's first
    /// steps) is not on the next job's path. Dropping the standby ends the supervisor.
    pub async fn standby(&self, stdout: OwnedFd, stderr: OwnedFd) -> Result<Standby, SandboxError> {
        let (control, theirs) = control_pair()?;
        let supervisor = self.fork_for(theirs, stdout, stderr).await?;
        let (reader, writer) = control.into_split();
        Ok(Standby {
            reader,
            writer,
            supervisor,
        })
    }

    /// Has the zygote fork a supervisor on the far end `theirs` of a control socket.
    async fn fork_for(
        &self,
        theirs: std::os::unix::net::UnixStream,
        stdout: OwnedFd,
        stderr: OwnedFd,
    ) -> Result<i32, SandboxError> {
        // Our copies of the far ends close when this returns: from then on only the supervisor
        // (and the job) hold them. Should the fork fail, a spec written to the socket sees its
        // far end gone instead of waiting for a reader.
        let theirs = OwnedFd::from(theirs);
        self.fork_supervisor([&theirs, &stdout, &stderr])
            .await
            .map_err(|source| SandboxError::Spawn {
                exe: self.exe.clone(),
                source,
            })
    }
}

/// A supervisor forked ahead of its job (see [`Launcher::standby`]).
#[derive(Debug)]
pub struct Standby {
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    supervisor: i32,
}

impl Standby {
    /// The waiting supervisor's pid.
    pub fn supervisor(&self) -> i32 {
        self.supervisor
    }

    /// Hands the supervisor its job. Fails with [`SandboxError::Control`] when the supervisor
    /// is gone (nothing of the job ran then: the caller may start it afresh).
    pub async fn start(mut self, spec: &SpawnSpec) -> Result<RunningJob, SandboxError> {
        let frame = spec_frame(spec)?;
        self.writer
            .write_all(&frame)
            .await
            .map_err(SandboxError::Control)?;
        Ok(RunningJob::new(self.reader, self.writer, self.supervisor))
    }
}

/// The spec as the supervisor reads it: a little-endian `u32` length, then the JSON.
fn spec_frame(spec: &SpawnSpec) -> Result<Vec<u8>, SandboxError> {
    let mut frame = serde_json::to_vec(spec).map_err(|e| SandboxError::BadReport(e.to_string()))?;
    let len = u32::try_from(frame.len())
        .map_err(|_| SandboxError::BadReport("spawn spec too large".into()))?;
    frame.splice(0..0, len.to_le_bytes());
    Ok(frame)
}

/// The control socket: our end (non-blocking, on the runtime) and the supervisor's.
fn control_pair() -> Result<(tokio::net::UnixStream, std::os::unix::net::UnixStream), SandboxError>
{
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(SandboxError::Control)?;
    ours.set_nonblocking(true).map_err(SandboxError::Control)?;
    let ours = tokio::net::UnixStream::from_std(ours).map_err(SandboxError::Control)?;
    Ok((ours, theirs))
}

impl Drop for Zygote {
    fn drop(&mut self) {
        // Closing the socket ends the zygote; reap it so it leaves no zombie.
        let _ = self.child.kill();
        let _ = self.child.wait();
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

    /// Lets a staged job's next stage start (after its `StageStart`).
    pub async fn go(&self) {
        self.send(b'G').await;
    }

    async fn send(&self, byte: u8) {
        // The supervisor may already be gone (the job ended): nothing left to signal.
        let _ = self.writer.lock().await.write_all(&[byte]).await;
    }
}

impl RunningJob {
    fn new(reader: OwnedReadHalf, writer: OwnedWriteHalf, supervisor: i32) -> RunningJob {
        RunningJob {
            control: JobControl {
                writer: Arc::new(tokio::sync::Mutex::new(writer)),
            },
            reader,
            supervisor,
            read_ahead: Vec::new(),
        }
    }

    /// An egress job's gateway sockets, sent by its init once its network namespace is ready
    /// and before the job starts: UDP sockets on port 53 and TCP listeners, IPv4 and IPv6, in
    /// the job's namespace. `None` when setup failed first (the report then says why).
    pub async fn take_gateway(&mut self) -> Result<Option<Vec<OwnedFd>>, SandboxError> {
        use std::os::fd::AsRawFd;
        let stream = self.reader.as_ref();
        let raw = stream.as_raw_fd();
        let got = loop {
            stream.readable().await.map_err(SandboxError::Control)?;
            match stream.try_io(tokio::io::Interest::READABLE, || {
                crate::fd::recv_fds(raw, 64)
            }) {
                Ok(got) => break got,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(SandboxError::Control(e)),
            }
        };
        match got {
            Some((crate::net::GATEWAY_MESSAGE, fds)) if !fds.is_empty() => Ok(Some(fds)),
            Some((byte, _)) => {
                self.read_ahead.push(byte);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// Waits until the job's whole process tree is gone and returns the supervisor's report.
    /// A staged job's stages are let start as soon as they ask.
    pub async fn wait(mut self) -> Result<ExitReport, SandboxError> {
        loop {
            match self.next_event().await? {
                JobEvent::Stage(crate::StageEvent::StageStart { wait: true, .. }) => {
                    self.control.go().await
                }
                JobEvent::Stage(_) => {}
                JobEvent::Report(report) => return Ok(*report),
            }
        }
    }

    /// The next thing the supervisor says: a staged job's stage events as they happen, then
    /// the report once the job's whole process tree is gone. Each `StageStart` waits for
    /// [`JobControl::go`].
    pub async fn next_event(&mut self) -> Result<JobEvent, SandboxError> {
        loop {
            if let Some(end) = self.read_ahead.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.read_ahead.drain(..=end).collect();
                if let Ok(event) = serde_json::from_slice::<crate::StageEvent>(&line) {
                    return Ok(JobEvent::Stage(event));
                }
                return serde_json::from_slice(&line)
                    .map(|r| JobEvent::Report(Box::new(r)))
                    .map_err(|e| SandboxError::BadReport(e.to_string()));
            }
            let mut chunk = [0u8; 4096];
            let n = self
                .reader
                .read(&mut chunk)
                .await
                .map_err(SandboxError::Control)?;
            if n == 0 {
                if self.read_ahead.iter().all(u8::is_ascii_whitespace) {
                    return Err(SandboxError::NoReport(format!(
                        "supervisor {}",
                        self.supervisor
                    )));
                }
                // A last line without its newline.
                self.read_ahead.push(b'\n');
                continue;
            }
            self.read_ahead.extend_from_slice(&chunk[..n]);
        }
    }
}

/// What a running job's supervisor says.
#[derive(Debug)]
pub enum JobEvent {
    Stage(crate::StageEvent),
    /// The last word: the job's whole process tree is gone.
    Report(Box<ExitReport>),
}
