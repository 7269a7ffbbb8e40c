//! Starting real `warden serve` processes for tests.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use warden_api::{JobStatus, JobView};
use warden_client::Client;

pub const WARDEN: &str = env!("CARGO_BIN_EXE_warden");

/// A plain HTTP client for requests the typed client does not make (rustls needs its crypto
/// provider chosen first, as `warden-client` does; plain http needs no system roots, which the
/// VM's minimal root filesystem does not have).
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .tls_certs_only([])
        .build()
        .expect("an http client")
}

/// Job types the tests use. `{dir}` is replaced by the test's scratch directory.
pub const TEST_JOB_TYPES: &str = r#"
job_types:
  echo:
    argv: ["/bin/sh", "-c", "echo \"hello $GREETING\"; echo to-stderr >&2; echo out > \"$ARTIFACT_DIR/out.txt\""]
    allowed_params: [GREETING]
    timeout_s: 30
  fail:
    argv: ["/bin/sh", "-c", "echo failing; exit 3"]
    timeout_s: 30
  env:
    argv: ["/bin/sh", "-c", "env | sort > \"$ARTIFACT_DIR/env.txt\"; ls -la /proc/self/fd > \"$ARTIFACT_DIR/fds.txt\""]
    allowed_params: [GREETING]
    timeout_s: 30
  binary:
    argv: ["/bin/sh", "-c", "printf '\\377\\376\\000abc\\n\\342\\202'; printf 'E\\001' >&2"]
    timeout_s: 30
  flood:
    argv: ["/bin/sh", "-c", "yes x | tr -d '\\n'; echo never-here > \"$ARTIFACT_DIR/after.txt\""]
    timeout_s: 60
    limits: {output_mb: 1}
  tree:
    argv: ["/bin/sh", "-c", "sleep 1000 & echo $! > \"$ARTIFACT_DIR/child.pid\"; setsid /bin/sh -c 'sleep 1000 & echo $! > \"$ARTIFACT_DIR/daemon.pid\"' & while [ ! -s \"$ARTIFACT_DIR/daemon.pid\" ]; do sleep 0.01; done; echo ready; sleep 1000"]
    timeout_s: 600
  tree_timeout:
    argv: ["/bin/sh", "-c", "sleep 1000 & echo $! > \"$ARTIFACT_DIR/child.pid\"; setsid /bin/sh -c 'sleep 1000 & echo $! > \"$ARTIFACT_DIR/daemon.pid\"' & echo ready; sleep 1000"]
    timeout_s: 1
  stubborn:
    argv: ["/bin/sh", "-c", "trap '' TERM; echo $$ > \"$ARTIFACT_DIR/main.pid\"; echo ready; while true; do sleep 1; done"]
    timeout_s: 600
  bg_holds_stdout:
    argv: ["/bin/sh", "-c", "(sleep 1000; echo late) & echo $! > \"$ARTIFACT_DIR/bg.pid\"; echo main-done"]
    timeout_s: 600
  once_slow:
    argv: ["/bin/sh", "-c", "if [ \"$WARDEN_ATTEMPT\" -gt 1 ]; then echo second-attempt; exit 0; fi; echo first-attempt; sleep 1000"]
    timeout_s: 600
  sleeper:
    argv: ["/bin/sh", "-c", "echo started; sleep 1000"]
    timeout_s: 600
  missing_program:
    argv: ["/nonexistent/program"]
    timeout_s: 5
  needs_repo:
    argv: ["/bin/true"]
    requires_repo: true
    requires_repo_allowlist: true
    timeout_s: 5
repos:
  demo: {url: "https://example.invalid/demo.git"}
"#;

/// The first host uid this test's sandboxed jobs run as (slot N runs as this + N): a range of
/// its own per test process (nextest runs each test in its own), so "no process of these uids
/// is left" speaks of this test's jobs only.
pub fn test_uid() -> u32 {
    200_000 + (std::process::id() % 100_000) * SLOT_UIDS
}

/// How many slot uids a test's range holds.
pub const SLOT_UIDS: u32 = 16;

/// Every process's host pid.
fn all_pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
}

/// Host pids of every process running as one of the slot uids from `uid`.
pub fn processes_of_uid(uid: u32) -> Vec<i32> {
    all_pids()
        .filter(|pid| {
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                return false;
            };
            let real = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next()?.parse::<u32>().ok());
            real.is_some_and(|r| (uid..uid + SLOT_UIDS).contains(&r))
        })
        .collect()
}

/// Nothing of this test's jobs runs any more.
pub fn assert_no_job_processes() {
    let left = processes_of_uid(test_uid());
    assert!(
        left.is_empty(),
        "processes of the job survived it: {left:?}"
    );
}

/// Host pids of every process whose command line mentions `needle` (a gVisor job's `runsc`
/// processes name their state directory, under the server's data directory).
pub fn processes_mentioning(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    all_pids()
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

/// A config file for a test server in `dir`.
pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    write_config_with(dir, &format!("{extra}\n{TEST_JOB_TYPES}"))
}

/// A config file with the test header and `body` (job types, repos) of the caller's own.
pub fn write_config_with(dir: &Path, body: &str) -> PathBuf {
    let data = dir.join("data");
    let text = format!(
        "listen: 127.0.0.1:0\ngrpc_listen: 127.0.0.1:0\nauth: {{loopback_trusted: true}}\ndata_dir: {}\nslots: 2\nunsafe_fallback: false\nsandbox_uid: {uid}\nsandbox_gid: {uid}\ncancel_grace_s: 1\nshutdown_grace_s: 1\n{body}\n",
        data.display(),
        uid = test_uid()
    );
    let path = dir.join("warden.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// [`write_config_with`] for a server that trusts no one, loopback included: every request
/// needs a token.
pub fn write_untrusted_config(dir: &Path, body: &str) -> PathBuf {
    let path = write_config_with(dir, body);
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "auth: {loopback_trusted: true}",
        "auth: {loopback_trusted: false}",
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The first admin token (tenant `ops`) of the server of `config`, made on its host with the
/// CLI, as an operator would; kept in `dir/admin.token`.
pub fn create_admin_token(dir: &Path, config: &Path) -> String {
    let out_file = dir.join("admin.token");
    let out = Command::new(WARDEN)
        .args(["token", "create", "--tenant", "ops", "--scopes", "admin"])
        .arg("--serve-config")
        .arg(config)
        .arg("--out")
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("wdn_"),
        "printed once, to the file"
    );
    std::fs::read_to_string(&out_file)
        .unwrap()
        .trim()
        .to_string()
}

pub struct Server {
    pub child: Child,
    pub url: String,
    /// `http://127.0.0.1:<port>` of the gRPC listener.
    pub grpc: String,
}

impl Server {
    pub fn start(config: &Path) -> Server {
        let mut cmd = Command::new(WARDEN);
        cmd.args(["serve", "--config"]).arg(config);
        Server::start_with(cmd)
    }

    /// `warden serve` started by `cmd` (a wrapper that ends by exec'ing it).
    pub fn start_with(mut cmd: Command) -> Server {
        if !cmd.get_envs().any(|(k, _)| k == "RUST_LOG") {
            cmd.env("RUST_LOG", "warn");
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .expect("start warden serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("warden listening on ") {
                    let _ = tx.send(url.to_string());
                }
                if let Some(url) = line.strip_prefix("warden gRPC listening on ") {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("warden did not start listening");
        let grpc = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("warden did not start its gRPC listener");
        Server { child, url, grpc }
    }

    pub fn client(&self) -> Client {
        Client::new(&self.url, Duration::from_secs(10), None).unwrap()
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        wait_child(&mut self.child, Duration::from_secs(30))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_child(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "process did not exit in {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls until `f` holds for the job, or panics after `limit`.
pub async fn wait_job(
    client: &Client,
    id: &str,
    limit: Duration,
    f: impl Fn(&JobView) -> bool,
) -> JobView {
    let deadline = Instant::now() + limit;
    loop {
        let job = client.get(id).await.unwrap();
        if f(&job) {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job never reached the expected state: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn wait_terminal(client: &Client, id: &str) -> JobView {
    wait_job(client, id, Duration::from_secs(60), |j| {
        j.status.is_terminal()
    })
    .await
}

pub async fn wait_running_with_output(client: &Client, id: &str) -> JobView {
    wait_job(client, id, Duration::from_secs(30), |j| {
        j.status == JobStatus::Running && j.stdout_bytes > 0
    })
    .await
}

/// Runs git in `dir` with a fixed identity and no user configuration, for building test
/// repositories; panics with git's message when it fails.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A CA and a server certificate for 127.0.0.1, made with openssl.
pub fn test_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    test_certs_for(dir, "127.0.0.1", "IP:127.0.0.1")
}

/// A CA and a server certificate named `cn` with subject alternative names `san`
/// (`IP:…`/`DNS:…`, comma-separated), made with openssl in `dir`: (CA, certificate, key).
pub fn test_certs_for(dir: &Path, cn: &str, san: &str) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=warden test CA",
        "-days",
        "2",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        &format!("/CN={cn}"),
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        format!("subjectAltName={san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}
