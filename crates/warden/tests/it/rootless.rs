//! warden as an ordinary user: the rootless sandbox (user namespaces of that user, no root
//! anywhere), cgroup limits in a subtree delegated to that user where the host has one (pure
//! cgroup v2, as in the VM of `cargo xtask vm-test`), and, where it has none, jobs that fail
//! closed unless their type accepts the limit as not enforced — which the record then says.
//!
//! The suite runs as root and starts `warden serve` as an unprivileged uid of this test's own
//! range (`setpriv`), so every process it leaves would be found.

use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};
use std::process::Command;

use warden_api::{JobStatus, JobView, SubmitJobRequest};
use warden_client::Client;

use crate::support::*;

/// The unprivileged user warden runs as: the last uid of this test's range.
fn user() -> u32 {
    test_uid() + SLOT_UIDS - 1
}

fn probe() -> PathBuf {
    Path::new(WARDEN).with_file_name("warden-probe")
}

fn job_types() -> String {
    let probe = probe();
    format!(
        r#"job_types:
  echo:
    argv: ["/bin/sh", "-c", "echo hello; id -u; echo out > $ARTIFACT_DIR/out.txt"]
    timeout_s: 30
    accept_unenforced: [memory, pids]
  inspect:
    argv: [/opt/probe, inspect]
    binds: [{{host: {probe}, at: /opt/probe}}]
    timeout_s: 30
    accept_unenforced: [memory, pids]
  strict:
    argv: ["/bin/sh", "-c", "echo strict"]
    timeout_s: 30
  gvisor:
    argv: ["/bin/sh", "-c", "echo ran"]
    timeout_s: 30
    accept_unenforced: [memory, pids]
    isolation: gvisor
  bomb:
    argv: ["python3", "-c", "b = bytearray(1 << 30); print(len(b))"]
    timeout_s: 30
    limits: {{memory_mb: 64}}
  half_cpu:
    argv: ["/bin/sh", "-c", "(while :; do :; done) & a=$!; sleep 2; kill $a; wait; echo burned"]
    timeout_s: 30
    limits: {{cpus: 0.5}}
  egress:
    argv: ["python3", "-c", "import socket\ntry: socket.getaddrinfo('unlisted.test', 80)\nexcept socket.gaierror as e: print('dns', e.errno == socket.EAI_NONAME)\ns = socket.create_connection(('127.0.0.1', 80), timeout=5)\ns.sendall(b'GET / HTTP/1.0\\r\\nHost: api.test\\r\\n\\r\\n')\ntry: print('answer', s.recv(100))\nexcept ConnectionResetError: print('answer', b'')"]
    timeout_s: 30
    accept_unenforced: [memory, pids]
    network: {{egress: ["api.test:80"]}}
# Nothing of an allowed name is ever resolved here: a resolver that answers nobody.
egress: {{resolver: "127.0.0.1:9"}}
"#,
        probe = probe.display()
    )
}

/// A cgroup v2 subtree delegated to the user, as systemd's `Delegate=yes` makes one: only on
/// a pure v2 host (on a hybrid one the unified hierarchy has no controllers to delegate).
struct Delegated(PathBuf);

impl Delegated {
    fn make() -> Option<Delegated> {
        let root = Path::new("/sys/fs/cgroup");
        if !root.join("cgroup.controllers").exists() {
            return None;
        }
        let dir = root.join(format!("warden-rootless-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(root.join("cgroup.subtree_control"), "+memory +pids +cpu").unwrap();
        for f in [
            "",
            "cgroup.procs",
            "cgroup.subtree_control",
            "cgroup.threads",
        ] {
            chown(dir.join(f), Some(user()), Some(user())).unwrap();
        }
        Some(Delegated(dir))
    }
}

impl Drop for Delegated {
    fn drop(&mut self) {
        // Children first (warden's own leaf, any job left), then the subtree.
        if let Ok(entries) = std::fs::read_dir(&self.0) {
            for e in entries.flatten().filter(|e| e.path().is_dir()) {
                let _ = std::fs::remove_dir(e.path());
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

struct Rootless {
    server: Server,
    client: Client,
    cgroup: Option<Delegated>,
    _dir: tempfile::TempDir,
}

/// `warden serve` as the unprivileged user, in the delegated subtree when there is one.
fn start() -> Rootless {
    let dir = tempfile::tempdir().unwrap();
    chown(dir.path(), Some(user()), Some(user())).unwrap();
    let config = write_config_with(dir.path(), &job_types());
    let cgroup = Delegated::make();
    start_in(dir, cgroup, &["--config", config.to_str().unwrap()])
}

/// `warden serve <args>` as the unprivileged user, from `dir`.
fn start_in(dir: tempfile::TempDir, cgroup: Option<Delegated>, args: &[&str]) -> Rootless {
    let enter = match &cgroup {
        Some(d) => format!("echo $$ > {}/cgroup.procs && ", d.0.display()),
        None => String::new(),
    };
    let uid = user().to_string();
    let mut cmd = Command::new("/bin/sh");
    cmd.args([
        "-c",
        &format!(
            "{enter}exec setpriv --reuid={uid} --regid={uid} --clear-groups --inh-caps=-all \"$0\" serve \"$@\""
        ),
        WARDEN,
    ])
    .args(args)
    .current_dir(dir.path());
    let server = Server::start_with(cmd);
    let client = server.client();
    Rootless {
        server,
        client,
        cgroup,
        _dir: dir,
    }
}

impl Rootless {
    async fn run(&self, job_type: &str) -> (JobView, String) {
        let req = SubmitJobRequest {
            job_type: job_type.into(),
            ..SubmitJobRequest::default()
        };
        let id = self.client.submit(&req).await.unwrap().job_id;
        let job = wait_terminal(&self.client, &id).await;
        let out = self.client.logs_raw(&id, "stdout", 0).await.unwrap();
        (job, String::from_utf8_lossy(&out).into_owned())
    }

    /// Stops the server; nothing of the user's may be left running.
    fn stop(mut self) {
        self.server.kill9();
        // The supervisors notice warden's death and take their jobs with them.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !processes_of_uid(test_uid()).is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert_no_job_processes();
        drop(self.cgroup.take());
    }
}

#[tokio::test]
async fn an_ordinary_user_gets_the_sandbox() {
    let w = start();
    let (job, out) = w.run("echo").await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    assert!(
        !job.unsafe_fallback,
        "rootless is the sandbox, not the fallback"
    );
    // uid 1000 in its own user namespace, whatever the user is outside.
    assert_eq!(out, "hello\n1000\n");
    assert!(
        job.enforcement["identity"].starts_with("rootless"),
        "{:?}",
        job.enforcement
    );
    assert_eq!(
        w.client.artifact(&job.job_id, "out.txt").await.unwrap(),
        b"out\n"
    );
    // gVisor needs root: a job type that asks for it fails closed, never runs natively.
    let (job, out) = w.run("gvisor").await;
    assert_eq!(job.status, JobStatus::Error, "{job:?}");
    assert_eq!(
        job.reason.as_deref(),
        Some("sandbox_setup_failed: gvisor: needs warden running as root; this worker is rootless")
    );
    assert_eq!(out, "");
    // The box is the one specified: pid 2, uid 1000, read-only root, no capabilities, ...
    let (job, out) = w.run("inspect").await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?} {out}");
    assert_eq!(out, "INSPECT OK\n");
    if w.cgroup.is_some() {
        // Delegated: every limit held by the user's own cgroup subtree.
        assert!(job.warnings.is_empty(), "{:?}", job.warnings);
        assert_eq!(job.enforcement["memory"], "cgroup v2 (no swap)");
    } else {
        // No cgroup this user may write: the job type accepted running without, and the
        // record says exactly which limits were not enforced.
        assert_eq!(job.warnings, ["LIMITS_NOT_ENFORCED"]);
        for limit in ["memory", "pids"] {
            assert!(
                job.enforcement[limit].starts_with("not enforced"),
                "{limit}: {:?}",
                job.enforcement
            );
        }
    }
    w.stop();
}

/// The egress gateway needs no privilege: the job's init (root in its own user namespace) routes
/// every address to its loopback and hands the listening sockets to warden.
#[tokio::test]
async fn an_ordinary_users_jobs_get_the_egress_gateway() {
    let w = start();
    let (job, out) = w.run("egress").await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?} {out}");
    // An unlisted name: NXDOMAIN from warden's resolver. Its loopback on an allowed port: the
    // gateway accepted the connection, refused it, and closed it without an answer (a reset
    // when the request was still unread).
    assert_eq!(out, "dns True\nanswer b''\n");
    let egress = w
        .client
        .artifact(&job.job_id, "egress.jsonl")
        .await
        .unwrap();
    let egress = String::from_utf8_lossy(&egress);
    assert!(
        egress.contains("unlisted.test: not on the allowlist"),
        "{egress}"
    );
    assert!(egress.contains("\"addr\":\"127.0.0.1\""), "{egress}");
    assert!(egress.contains("loopback is never reached"), "{egress}");
    assert!(job.enforcement["network"].contains("egress only through warden's gateway"));
    w.stop();
}

#[tokio::test]
async fn limits_hold_in_a_delegated_subtree_or_the_job_fails_closed() {
    let w = start();
    let (strict, _) = w.run("strict").await;
    let (bomb, bomb_out) = w.run("bomb").await;
    let (cpu, _) = w.run("half_cpu").await;
    if w.cgroup.is_some() {
        assert_eq!(strict.status, JobStatus::Succeeded, "{strict:?}");
        assert_eq!(bomb.status, JobStatus::Failed, "{bomb:?} {bomb_out}");
        assert_eq!(bomb.reason.as_deref(), Some("memory_limit"));
        assert_eq!(cpu.status, JobStatus::Succeeded, "{cpu:?}");
        let res = cpu.resources.unwrap();
        assert!(res.user_cpu_ms + res.system_cpu_ms <= 1400, "{res:?}");
    } else {
        for job in [&strict, &bomb, &cpu] {
            assert_eq!(job.status, JobStatus::Error, "{job:?}");
            let reason = job.reason.as_deref().unwrap();
            assert!(
                reason.starts_with("limit_unavailable: the memory limit cannot be enforced"),
                "{reason}"
            );
            assert!(reason.contains("accept_unenforced"), "{reason}");
        }
    }
    w.stop();
}

/// The README's first command, as an ordinary user: the built-in demo configuration gives the
/// rootless sandbox, not the unsandboxed fallback, and says which limits it could not enforce.
#[tokio::test]
async fn the_demo_configuration_gives_an_ordinary_user_the_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    chown(dir.path(), Some(user()), Some(user())).unwrap();
    let w = start_in(
        dir,
        None,
        &["--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0"],
    );
    let (job, out) = w.run("local_echo").await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    assert!(out.starts_with("hello from warden\n"), "{out}");
    assert!(!job.unsafe_fallback, "{job:?}");
    assert!(job.enforcement["identity"].starts_with("rootless"));
    // No cgroup delegated to this user here: the demo accepts that, and the record says so.
    assert_eq!(job.warnings, ["LIMITS_NOT_ENFORCED"]);
    w.stop();
}
