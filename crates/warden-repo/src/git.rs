//! Running git the way warden does: a clean environment, no user or system configuration, no
//! hooks, no prompts, only the one transport a repository is configured with, and a deadline.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use warden_sandbox::child::{self, ChildLimits};

/// Settings every git command warden runs starts with (`-c` beats every config file).
const CLEAN_CONFIG: &[&str] = &[
    // Never run hooks: not the mirror's, not any a repository brings.
    "core.hooksPath=/dev/null",
    "protocol.ext.allow=never",
    "protocol.fd.allow=never",
    "credential.helper=",
    "core.fsmonitor=false",
    "core.untrackedCache=false",
    "core.askPass=",
    "gc.auto=0",
    "maintenance.auto=false",
    "fetch.recurseSubmodules=false",
    "submodule.recurse=false",
    "safe.directory=*",
    "advice.detachedHead=false",
    "transfer.fsckObjects=false",
];

/// How warden starts git.
#[derive(Debug, Clone)]
pub struct Git {
    /// An empty directory used as `HOME`, so that nothing of the operator's `~/.gitconfig`
    /// (credentials, url rewrites, hooks) applies.
    home: PathBuf,
    program: PathBuf,
}

/// What a finished git command left.
#[derive(Debug)]
pub struct GitOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl GitOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The last lines of stderr, printable, for an error message.
    pub fn stderr_tail(&self) -> String {
        let text = String::from_utf8_lossy(&self.stderr);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = lines[lines.len().saturating_sub(3)..].join("; ");
        let clean: String = tail
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .take(500)
            .collect();
        if clean.is_empty() {
            format!("git exited with {}", self.status)
        } else {
            clean
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("could not start git: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("git did not finish within {0:?} and was killed")]
    Timeout(Duration),
}

/// One git invocation being assembled.
pub struct GitCommand {
    cmd: std::process::Command,
    timeout: Duration,
    limits: ChildLimits,
    /// What the credential helper reads from descriptor [`CREDENTIAL_FD`].
    credential: Option<Vec<u8>>,
}

/// The descriptor git's credential helper reads the login from: a pipe, filled and closed by
/// warden before git starts.
const CREDENTIAL_FD: i32 = 3;

/// The largest login the pipe takes without a reader (a pipe holds 64 KiB).
const MAX_CREDENTIAL_BYTES: usize = 16 * 1024;

/// What git's credential protocol carries for one login (`username=…`, `password=…`). A
/// password may end in one line break (as a secret file written with `echo` does) but hold no
/// other, nor a NUL byte: the protocol is line-based.
pub fn credential_lines(username: &str, password: &[u8]) -> Result<Vec<u8>, String> {
    let password = password
        .strip_suffix(b"\r\n")
        .or_else(|| password.strip_suffix(b"\n"))
        .unwrap_or(password);
    if password.is_empty() {
        return Err("the password is empty".into());
    }
    if password.iter().any(|b| matches!(b, b'\n' | b'\r' | 0)) {
        return Err("the password holds a line break or a NUL byte".into());
    }
    if username.contains(['\n', '\r', '\0']) {
        return Err("the user name holds a line break or a NUL byte".into());
    }
    let mut lines = format!("username={username}\npassword=").into_bytes();
    lines.extend_from_slice(password);
    lines.push(b'\n');
    if lines.len() > MAX_CREDENTIAL_BYTES {
        return Err(format!(
            "the login is {} bytes; at most {MAX_CREDENTIAL_BYTES} are passed to git",
            lines.len()
        ));
    }
    Ok(lines)
}

impl Git {
    /// `home` is created if missing and must stay empty.
    pub fn new(home: impl Into<PathBuf>) -> std::io::Result<Git> {
        let home = home.into();
        std::fs::create_dir_all(&home)?;
        Ok(Git {
            home,
            program: PathBuf::from("git"),
        })
    }

    /// A git command with the clean environment. `protocol` is the only transport it may use
    /// (`GIT_ALLOW_PROTOCOL`); `None` allows none.
    pub fn command(&self, protocol: Option<&str>) -> GitCommand {
        let mut cmd = std::process::Command::new(&self.program);
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", &self.home)
            .env("LC_ALL", "C")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "/bin/false")
            .env("SSH_ASKPASS", "/bin/false")
            .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
            .env("GIT_ALLOW_PROTOCOL", protocol.unwrap_or(""))
            .env("GIT_OPTIONAL_LOCKS", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // An ssh agent is how private repositories authenticate; its socket is not a credential
        // stored anywhere.
        if let Some(sock) = std::env::var_os("SSH_AUTH_SOCK") {
            cmd.env("SSH_AUTH_SOCK", sock);
        }
        for setting in CLEAN_CONFIG {
            cmd.arg("-c").arg(setting);
        }
        GitCommand {
            cmd,
            timeout: Duration::from_secs(60),
            limits: ChildLimits::default(),
            credential: None,
        }
    }
}

impl GitCommand {
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> GitCommand {
        self.cmd.arg(a);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> GitCommand
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd.args(args);
        self
    }

    pub fn env(mut self, k: &str, v: impl AsRef<OsStr>) -> GitCommand {
        self.cmd.env(k, v);
        self
    }

    /// Logs in to `origin` (`https://host[:port]`, no path) with `lines` (from
    /// [`credential_lines`]): a credential helper scoped to that origin reads them from a pipe
    /// at descriptor 3, and answers nothing else (no `store`, no other host; redirects are not
    /// followed). Must come before the subcommand.
    pub fn credential(mut self, origin: &str, lines: Vec<u8>) -> GitCommand {
        self.cmd
            .arg("-c")
            .arg(format!(
                "credential.{origin}.helper=!f() {{ test \"$1\" = get && cat <&{CREDENTIAL_FD}; }}; f"
            ))
            .args(["-c", "http.followRedirects=false"]);
        self.credential = Some(lines);
        self
    }

    /// Runs against a repository directory (`--git-dir`).
    pub fn git_dir(self, dir: &Path) -> GitCommand {
        self.env("GIT_DIR", dir)
    }

    pub fn timeout(mut self, t: Duration) -> GitCommand {
        self.timeout = t;
        self
    }

    pub fn limits(mut self, limits: ChildLimits) -> GitCommand {
        self.limits = limits;
        self
    }

    /// Runs it to the end, or kills its whole process group at the deadline.
    pub async fn run(self) -> Result<GitOutput, GitError> {
        let GitCommand {
            mut cmd,
            timeout,
            limits,
            credential,
        } = self;
        if let Some(lines) = credential {
            let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                .map_err(|e| GitError::Spawn(e.into()))?;
            // Fits the pipe (MAX_CREDENTIAL_BYTES): written whole before git starts, and the
            // writing end closed, so a helper that reads gets exactly the login and then EOF.
            let mut rest = &lines[..];
            while !rest.is_empty() {
                let n = rustix::io::write(&write, rest).map_err(|e| GitError::Spawn(e.into()))?;
                rest = &rest[n..];
            }
            drop(write);
            child::pass_fd(&mut cmd, read, CREDENTIAL_FD);
        }
        // Its own process group: a timeout kills git and every helper it started (ssh,
        // remote-https, index-pack) together.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        child::apply(&mut cmd, limits);
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true);
        let child = cmd.spawn().map_err(GitError::Spawn)?;
        let pgid = child
            .id()
            .and_then(|p| rustix::process::Pid::from_raw(p as i32));
        match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(Ok(out)) => Ok(GitOutput {
                status: out.status,
                stdout: out.stdout,
                stderr: out.stderr,
            }),
            Ok(Err(e)) => Err(GitError::Spawn(e)),
            Err(_) => {
                if let Some(pgid) = pgid {
                    let _ =
                        rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
                }
                Err(GitError::Timeout(timeout))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::credential_lines;

    #[test]
    fn a_login_is_two_protocol_lines_or_a_reason() {
        assert_eq!(
            credential_lines("ci", b"tok\n").unwrap(),
            b"username=ci\npassword=tok\n"
        );
        assert_eq!(
            credential_lines("ci", b"tok\r\n").unwrap(),
            b"username=ci\npassword=tok\n"
        );
        for (user, password, expected) in [
            ("ci", &b"\n"[..], "the password is empty"),
            ("ci", b"a\nb", "line break"),
            ("ci", b"a\nb\n", "line break"),
            ("ci", b"a\0b", "NUL"),
            ("c\ni", b"tok", "user name"),
        ] {
            let err = credential_lines(user, password).unwrap_err();
            assert!(err.contains(expected), "{user:?} {password:?}: {err}");
        }
        let huge = vec![b'x'; 20_000];
        assert!(
            credential_lines("ci", &huge)
                .unwrap_err()
                .contains("at most")
        );
    }
}
