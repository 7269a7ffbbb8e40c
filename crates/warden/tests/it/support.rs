//! Starting real `warden serve` processes for tests.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use warden_api::{JobStatus, JobView};
use warden_client::Client;

pub const WARDEN: &str = env!("CARGO_BIN_EXE_warden");

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
    argv: ["/bin/sh", "-c", "head -c 3000000 /dev/zero | tr '\\000' x; echo never-here > \"$ARTIFACT_DIR/after.txt\"; sleep 30"]
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
    argv: ["/bin/sh", "-c", "if [ -e \"$MARKER\" ]; then echo second-attempt; exit 0; fi; touch \"$MARKER\"; echo $$ > \"$MARKER.pid\"; echo first-attempt; sleep 1000"]
    allowed_params: [MARKER]
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

/// A config file for a test server in `dir`.
pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let data = dir.join("data");
    let text = format!(
        "listen: 127.0.0.1:0\ndata_dir: {}\nslots: 2\nunsafe_fallback: true\ncancel_grace_s: 1\nshutdown_grace_s: 1\n{extra}\n{TEST_JOB_TYPES}",
        data.display()
    );
    let path = dir.join("warden.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Server {
    pub fn start(config: &Path) -> Server {
        let mut child = Command::new(WARDEN)
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start warden serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("warden listening on ") {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("warden did not start listening");
        Server { child, url }
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

/// True when `pid` is gone (or became a different program than the one we started).
pub fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            // A zombie still waiting to be reaped counts as alive: it is not cleaned up yet.
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let is_ours = cmdline.starts_with(b"sleep") || cmdline.starts_with(b"/bin/sh");
            !is_ours && state != Some("Z")
        }
    }
}

pub fn read_pid(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap()
}

/// Every pid is gone the moment the job is reported terminal: warden records the end only after
/// the supervisor has killed and reaped the whole tree.
pub fn assert_all_gone(pids: &[i32]) {
    let alive: Vec<i32> = pids.iter().copied().filter(|p| !process_gone(*p)).collect();
    assert!(alive.is_empty(), "processes survived the job: {alive:?}");
}
