//! Scale-out, for real: control planes on the real PostgreSQL (a database of each test's own),
//! remote workers as separate `warden worker` processes, and failures made with `kill -9`,
//! a PostgreSQL restart, and workers on hosts of their own (network namespaces joined by veth).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use warden_api::{JobStatus, JobView, SubmitJobRequest};
use warden_client::Client;
use warden_store_postgres::testing::TestDb;

use crate::support::{WARDEN, test_certs, test_uid};

const TOKEN: &str = "cluster-test-token-0123456789";

/// Job types both sides know. The control plane's copy decides what may be submitted; each
/// worker's copy decides how it runs there.
const JOB_TYPES: &str = r#"
job_types:
  quick:
    argv: ["/bin/sh", "-c", "echo ran $WARDEN_JOB_ID attempt $WARDEN_ATTEMPT"]
    timeout_s: 60
  slow:
    argv: ["/bin/sh", "-c", "echo start $WARDEN_ATTEMPT; sleep 3; echo done > $ARTIFACT_DIR/out.txt; echo end"]
    timeout_s: 60
  tooled:
    argv: ["/bin/sh", "-c", "echo \"at $AGENT_TOOL_SPEC\"; cat \"$AGENT_TOOL_SPEC\""]
    timeout_s: 60
  gpu_only:
    argv: ["/bin/echo", "on a gpu worker"]
    timeout_s: 60
    labels: [gpu]
  secretive:
    argv: ["/bin/sh", "-c", "echo \"var $CP_VAR\"; sha256sum < /run/secrets/CP_SECRET"]
    timeout_s: 60
    secrets: [CP_SECRET]
    secret_env: {CP_VAR: CP_SECRET}
  reported:
    argv:
      - /usr/bin/python3
      - -c
      - |
        f = open('/artifacts/junit.xml', 'w')
        f.write('<testsuite name="big">')
        for i in range(3000):
            if i % 3 == 0:
                f.write('<testcase name="t%d"><failure message="%s"/></testcase>' % (i, 'm' * 900))
            else:
                f.write('<testcase name="t%d"/>' % i)
        f.write('</testsuite>')
    timeout_s: 60
    results: {junit: ["$ARTIFACT_DIR/junit.xml"]}
"#;

/// The control plane's value of the secret `secretive` jobs are granted, and a worker's own
/// (different) one: which one a job got tells where it came from.
const CP_SECRET: &str = "from-the-control-plane-7f3a";
const WORKER_SECRET: &str = "from-the-worker-itself-91c2";

/// A process whose stdout lines are watched for announcements; stderr goes to `log`.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: Command, log: PathBuf) -> Proc {
        let err = std::fs::File::create(&log).unwrap();
        let mut child = cmd
            .env("RUST_LOG", "info")
            .env("WARDEN_WORKER_TOKEN", TOKEN)
            .env("WARDEN_TEST_SECRET_CP", CP_SECRET)
            .env("WARDEN_TEST_SECRET_WORKER", WORKER_SECRET)
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("spawn warden");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Proc { child, lines, log }
    }

    /// Waits for a stdout line starting with `prefix`; returns the rest.
    fn announced(&self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.to_string();
                    }
                }
                Err(_) => panic!(
                    "no {prefix:?} line; log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ),
            }
        }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

struct ControlPlane {
    proc: Proc,
    http: String,
    grpc: String,
}

impl ControlPlane {
    fn start(dir: &Path, name: &str, db: &str, extra: &str) -> ControlPlane {
        ControlPlane::start_at(dir, name, db, extra, "127.0.0.1:0", &[])
    }

    fn start_at(
        dir: &Path,
        name: &str,
        db: &str,
        extra: &str,
        grpc_listen: &str,
        wrap: &[&str],
    ) -> ControlPlane {
        // A 2 s lease unless the test sets its own: short enough that expiry tests are quick.
        let lease = if extra.contains("lease_s:") {
            ""
        } else {
            "lease_s: 2\n"
        };
        let (home, config) = write_home(dir, name, |data| {
            format!(
                "listen: 127.0.0.1:0\ngrpc_listen: {grpc_listen}\n\
                 auth: {{loopback_trusted: true, insecure_plaintext_behind_proxy: {}}}\n\
                 data_dir: {}\nartifact_dir: {}\n{lease}shutdown_grace_s: 1\n\
                 secrets: {{CP_SECRET: {{env: WARDEN_TEST_SECRET_CP}}}}\n{extra}\n{JOB_TYPES}",
                // Workers in network namespaces of the test's own reach a non-loopback gRPC
                // address; the test's plaintext there is deliberate.
                !grpc_listen.starts_with("127."),
                data.display(),
                dir.join("artifacts").display(),
            )
        });
        let mut cmd = command(wrap);
        cmd.args([
            "serve",
            "--database-url",
            db,
            "--database-pool",
            "8",
            "--config",
        ])
        .arg(&config);
        let proc = Proc::spawn(cmd, home.join("stderr.log"));
        let http = proc.announced("warden listening on ");
        let grpc = proc.announced("warden gRPC listening on ");
        ControlPlane { proc, http, grpc }
    }

    fn client(&self) -> Client {
        Client::new(&self.http, Duration::from_secs(10), None).unwrap()
    }
}

struct Worker {
    proc: Proc,
    id: String,
}

impl Worker {
    fn start(dir: &Path, name: &str, servers: &str, slots: u32, labels: &str) -> Worker {
        Worker::start_in(dir, name, servers, slots, labels, &[])
    }

    /// `wrap` runs the worker inside something (e.g. `ip netns exec NAME`).
    fn start_in(
        dir: &Path,
        name: &str,
        servers: &str,
        slots: u32,
        labels: &str,
        wrap: &[&str],
    ) -> Worker {
        let (home, config) = write_home(dir, name, worker_yaml);
        let mut cmd = command(wrap);
        cmd.args([
            "worker",
            "--server",
            servers,
            "--worker-id",
            name,
            "--config",
        ])
        .arg(&config)
        .args(["--slots", &slots.to_string()]);
        if !labels.is_empty() {
            cmd.args(["--labels", labels]);
        }
        let proc = Proc::spawn(cmd, home.join("stderr.log"));
        proc.announced(&format!("warden worker {name} registered"));
        Worker {
            proc,
            id: name.to_string(),
        }
    }

    /// Jobs this worker started, from its own log.
    fn started(&self) -> Vec<String> {
        started_jobs(&self.proc.log_text())
    }
}

/// `dir/name/` with its config file (`text` gets the data directory); returns both paths.
fn write_home(dir: &Path, name: &str, text: impl FnOnce(&Path) -> String) -> (PathBuf, PathBuf) {
    let home = dir.join(name);
    std::fs::create_dir_all(&home).unwrap();
    let config = home.join("warden.yaml");
    std::fs::write(&config, text(&home.join("data"))).unwrap();
    (home, config)
}

/// A worker's own configuration: the shared job types, this test's sandbox ids.
fn worker_yaml(data: &Path) -> String {
    format!(
        "data_dir: {}\nsandbox_uid: {uid}\nsandbox_gid: {uid}\ncancel_grace_s: 1\n\
         shutdown_grace_s: 1\nsecrets: {{CP_SECRET: {{env: WARDEN_TEST_SECRET_WORKER}}}}\n{JOB_TYPES}",
        data.display(),
        uid = test_uid(),
    )
}

fn command(wrap: &[&str]) -> Command {
    match wrap.split_first() {
        None => Command::new(WARDEN),
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(WARDEN);
            c
        }
    }
}

/// `job started job=<id>` lines (tracing's plain format, ANSI off when not a terminal).
fn started_jobs(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("job started"))
        .filter_map(|l| {
            let at = l.find("job=")? + 4;
            let id: String = l[at..]
                .chars()
                .filter(|c| !c.is_ascii_control())
                .take_while(|c| c.is_ascii_hexdigit() || *c == '-')
                .collect();
            (id.len() == 36).then_some(id)
        })
        .collect()
}

fn job(job_type: &str) -> SubmitJobRequest {
    SubmitJobRequest {
        job_type: job_type.into(),
        ..SubmitJobRequest::default()
    }
}

/// Polls until every job is terminal (or `limit` passes); returns the final views.
async fn wait_all(client: &Client, ids: &[String], limit: Duration) -> Vec<JobView> {
    let deadline = Instant::now() + limit;
    let mut done: HashMap<String, JobView> = HashMap::new();
    loop {
        for id in ids {
            if done.contains_key(id) {
                continue;
            }
            match client.get(id).await {
                Ok(j) if j.status.is_terminal() => {
                    done.insert(id.clone(), j);
                }
                _ => {}
            }
        }
        if done.len() == ids.len() {
            return ids.iter().map(|id| done.remove(id).unwrap()).collect();
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} jobs still not finished after {limit:?}",
            ids.len() - done.len(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Submits `n` jobs, every `slow_every`-th one `slow` and the rest `quick`; returns their ids.
async fn submit_mix(client: &Client, n: usize, slow_every: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let kind = if i % slow_every == 0 { "slow" } else { "quick" };
        ids.push(client.submit(&job(kind)).await.unwrap().job_id);
    }
    ids
}

async fn wait_running(client: &Client, id: &str) -> JobView {
    crate::support::wait_job(client, id, Duration::from_secs(30), |j| {
        j.status == JobStatus::Running && j.stdout_bytes > 0
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_control_planes_and_three_workers_run_1000_jobs_exactly_once() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    // Healthy workers on a loaded 2-core machine can miss a 2 s lease (a heartbeat starved for
    // two seconds); that retry is the lease working, not what this test is about.
    let lease = "lease_s: 15";
    let a = ControlPlane::start(dir.path(), "cp-a", &db.url, lease);
    let b = ControlPlane::start(dir.path(), "cp-b", &db.url, lease);
    let both = format!("{},{}", a.grpc, b.grpc);
    let workers = [
        Worker::start(dir.path(), "w1", &a.grpc, 4, ""),
        Worker::start(dir.path(), "w2", &b.grpc, 4, ""),
        Worker::start(dir.path(), "w3", &both, 4, "gpu"),
    ];
    let clients = [a.client(), b.client()];
    // Submitted through both replicas at once, as clients of a load balancer would.
    let mut ids = Vec::new();
    let submits = (0..1000).map(|i| {
        let c = clients[i % 2].clone();
        async move { c.submit(&job("quick")).await.unwrap().job_id }
    });
    for chunk in futures::future::join_all(submits).await {
        ids.push(chunk);
    }
    // Labels: only w3 has `gpu`.
    let gpu = clients[0].submit(&job("gpu_only")).await.unwrap().job_id;
    let jobs = wait_all(&clients[1], &ids, Duration::from_secs(150)).await;

    let mut runs: HashMap<String, usize> = HashMap::new();
    for w in &workers {
        for id in w.started() {
            *runs.entry(id).or_default() += 1;
        }
    }
    for j in &jobs {
        assert_eq!(j.status, JobStatus::Succeeded, "{j:?}");
        assert_eq!(j.attempts, 1, "job {} was tried again", j.job_id);
        assert_eq!(
            runs.get(&j.job_id),
            Some(&1),
            "job {} started {:?} times",
            j.job_id,
            runs.get(&j.job_id)
        );
        let out = clients[0].logs_raw(&j.job_id, "stdout", 0).await.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out),
            format!("ran {} attempt 1\n", j.job_id)
        );
    }
    assert_eq!(runs.values().sum::<usize>(), 1000 + 1, "no other job ran");
    for w in &workers {
        assert!(!w.started().is_empty(), "worker {} got no work", w.id);
    }
    let gpu = wait_all(&clients[0], &[gpu], Duration::from_secs(30))
        .await
        .remove(0);
    assert_eq!(gpu.status, JobStatus::Succeeded);
    assert!(
        workers[2].started().contains(&gpu.job_id),
        "gpu job ran on a worker without the label"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_loses_its_lease_and_another_finishes_the_job() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), "cp", &db.url, "");
    let client = cp.client();
    let mut doomed = Worker::start(dir.path(), "doomed", &cp.grpc, 1, "");
    let id = client.submit(&job("slow")).await.unwrap().job_id;
    wait_running(&client, &id).await;
    doomed.proc.kill9();
    // The lease (2 s) runs out; the reaper re-queues; a new worker takes it.
    let rescuer = Worker::start(dir.path(), "rescuer", &cp.grpc, 1, "");
    let done = wait_all(&client, std::slice::from_ref(&id), Duration::from_secs(60))
        .await
        .remove(0);
    assert_eq!(done.status, JobStatus::Succeeded, "{done:?}");
    assert_eq!(done.attempts, 2);
    assert_eq!(rescuer.started(), std::slice::from_ref(&id));
    // The log is the second attempt's alone, and its artifact arrived.
    let out = client.logs_raw(&id, "stdout", 0).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out), "start 2\nend\n");
    assert_eq!(client.artifact(&id, "out.txt").await.unwrap(), b"done\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_killed_under_load_loses_nothing() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut a = ControlPlane::start(dir.path(), "cp-a", &db.url, "");
    let b = ControlPlane::start(dir.path(), "cp-b", &db.url, "");
    // Both workers prefer replica A; B is their second choice.
    let servers = format!("{},{}", a.grpc, b.grpc);
    let workers = [
        Worker::start(dir.path(), "w1", &servers, 3, ""),
        Worker::start(dir.path(), "w2", &servers, 3, ""),
    ];
    let client = b.client();
    let mut ids = submit_mix(&client, 12, 2).await;
    wait_running(&client, &ids[0]).await;
    a.proc.kill9();
    let after = client.submit(&job("quick")).await.unwrap().job_id;
    ids.push(after);
    let jobs = wait_all(&client, &ids, Duration::from_secs(120)).await;
    for j in &jobs {
        assert_eq!(j.status, JobStatus::Succeeded, "{j:?}");
    }
    // The running jobs kept their leases across the switch: none had to run again.
    let total: usize = workers.iter().map(|w| w.started().len()).sum();
    assert_eq!(total, ids.len(), "some job ran twice");
    for w in &workers {
        assert!(
            w.proc
                .log_text()
                .contains("session with the control plane ended")
                || w.proc.log_text().contains("cannot reach the control plane"),
            "worker {} never noticed the loss",
            w.id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_out_worker_cannot_write_or_complete() {
    use warden_proto::pb;
    use warden_proto::pb::server_message::Body as Out;
    use warden_proto::pb::worker_message::Body as In;

    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), "cp", &db.url, "");
    let client = cp.client();

    /// A hand-driven worker session: send a request, read its reply.
    struct Session {
        tx: tokio::sync::mpsc::Sender<pb::WorkerMessage>,
        rx: tonic::Streaming<pb::ServerMessage>,
        next: u64,
    }
    /// Opens a session and registers; the server's answer to the registration.
    async fn register(
        url: &str,
        id: &str,
        isolation: &str,
    ) -> Result<
        (
            tokio::sync::mpsc::Sender<pb::WorkerMessage>,
            tonic::Streaming<pb::ServerMessage>,
        ),
        tonic::Status,
    > {
        let mut c = pb::worker_service_client::WorkerServiceClient::connect(url.to_string())
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        req.metadata_mut()
            .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        tx.send(pb::WorkerMessage {
            request_id: 0,
            body: Some(In::Register(pb::Register {
                worker_id: id.into(),
                slots: 1,
                job_types: vec!["quick".into()],
                sandbox: Some(pb::SandboxCapabilities {
                    isolation: isolation.into(),
                    ..Default::default()
                }),
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        let rx = c.session(req).await?.into_inner();
        Ok((tx, rx))
    }
    impl Session {
        async fn open(url: &str, id: &str) -> Session {
            let (tx, mut rx) = register(url, id, "sandbox").await.unwrap();
            let reg = rx.message().await.unwrap().unwrap();
            assert!(matches!(reg.body, Some(Out::Registered(_))));
            Session { tx, rx, next: 1 }
        }
        async fn call(&mut self, body: In) -> Out {
            self.next += 1;
            self.tx
                .send(pb::WorkerMessage {
                    request_id: self.next,
                    body: Some(body),
                })
                .await
                .unwrap();
            loop {
                let m = self.rx.message().await.unwrap().unwrap();
                if m.request_id == self.next {
                    return m.body.unwrap();
                }
            }
        }
    }
    let claim = || In::Claim(pb::ClaimRequest { wait_ms: 5_000 });

    let id = client.submit(&job("quick")).await.unwrap().job_id;
    let mut old = Session::open(&cp.grpc, "old").await;
    let Out::Assignment(first) = old.call(claim()).await else {
        panic!("no assignment")
    };
    let old_lease = first.lease.clone().unwrap();
    assert_eq!(old_lease.job_id, id);
    // "old" goes silent past its 2 s lease; the reaper re-queues; "new" claims it.
    let mut new = Session::open(&cp.grpc, "new").await;
    let Out::Assignment(second) = new
        .call(In::Claim(pb::ClaimRequest { wait_ms: 10_000 }))
        .await
    else {
        panic!("the job was not re-queued to the new worker")
    };
    let new_lease = second.lease.clone().unwrap();
    assert!(new_lease.token > old_lease.token, "the fencing token grows");

    let lost = |out: Out| match out {
        Out::Error(e) => e.code == pb::worker_error::Code::LeaseLost as i32,
        _ => false,
    };
    let log = |lease: &pb::Lease, data: &[u8]| {
        In::AppendLog(pb::AppendLogRequest {
            lease: Some(lease.clone()),
            stream: pb::LogStream::Stdout as i32,
            offset: 0,
            data: data.to_vec(),
        })
    };
    let complete = |lease: &pb::Lease, status: pb::JobStatus| {
        In::Complete(pb::CompleteRequest {
            lease: Some(lease.clone()),
            completion: Some(pb::Completion {
                status: status as i32,
                exit_code: Some(0),
                ..Default::default()
            }),
            finished_at_ms: 0,
        })
    };
    assert!(
        lost(old.call(log(&old_lease, b"stale\n")).await),
        "stale log accepted"
    );
    assert!(lost(
        old.call(In::Heartbeat(pb::HeartbeatRequest {
            lease: Some(old_lease.clone())
        }))
        .await
    ));
    assert!(
        lost(old.call(complete(&old_lease, pb::JobStatus::Failed)).await),
        "stale completion accepted"
    );
    // A worker that cannot give jobs the sandbox is refused (this control plane does not allow
    // unsafe_fallback).
    let refused = register(&cp.grpc, "bare", "unsafe_fallback")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(refused.message().contains("kernel sandbox"), "{refused:?}");
    // A worker may not act on another's lease either.
    let Out::Error(e) = old.call(complete(&new_lease, pb::JobStatus::Failed)).await else {
        panic!("completed another worker's job")
    };
    assert_eq!(e.code, pb::worker_error::Code::Invalid as i32);
    // The current holder's writes go through.
    assert!(matches!(
        new.call(log(&new_lease, b"fresh\n")).await,
        Out::Ack(_)
    ));
    let Out::Completed(done) = new
        .call(complete(&new_lease, pb::JobStatus::Succeeded))
        .await
    else {
        panic!("current lease refused")
    };
    assert_eq!(done.status, pb::JobStatus::Succeeded as i32);
    let view = client.get(&id).await.unwrap();
    assert_eq!(view.status, JobStatus::Succeeded);
    assert_eq!(view.attempts, 2);
    assert_eq!(client.logs_raw(&id, "stdout", 0).await.unwrap(), b"fresh\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_without_the_token_are_refused() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), "cp", &db.url, "");
    let token_file = dir.path().join("wrong-token");
    std::fs::write(&token_file, "a-wrong-token-of-enough-length\n").unwrap();
    let (_, config) = write_home(dir.path(), "w", worker_yaml);
    // A wrong token is refused at once: exit 2 with the server's reason, no retrying forever.
    let out = Command::new(WARDEN)
        .args(["worker", "--server", &cp.grpc, "--token-file"])
        .arg(&token_file)
        .arg("--config")
        .arg(&config)
        .env_remove("WARDEN_WORKER_TOKEN")
        .env("WARDEN_TEST_SECRET_WORKER", WORKER_SECRET)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("the worker token is wrong"), "{stderr}");
    // And a worker with no token at all is a usage error, before any connection.
    let out = Command::new(WARDEN)
        .args(["worker", "--server", &cp.grpc])
        .env_remove("WARDEN_WORKER_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no worker token"));
}

/// A network namespace with one veth link to the host: a worker host of its own.
struct NetNs {
    name: String,
}

impl NetNs {
    /// `10.<a>.<b>.1` on the host side, `.2` inside.
    fn create(name: &str, a: u8, b: u8) -> NetNs {
        let run = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().unwrap();
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let (host, peer) = (format!("{name}-h"), format!("{name}-p"));
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        let _ = Command::new("ip").args(["link", "del", &host]).output();
        run(&["netns", "add", name]);
        run(&["link", "add", &host, "type", "veth", "peer", "name", &peer]);
        run(&["link", "set", &peer, "netns", name]);
        run(&["addr", "add", &format!("10.{a}.{b}.1/30"), "dev", &host]);
        run(&["link", "set", &host, "up"]);
        run(&[
            "-n",
            name,
            "addr",
            "add",
            &format!("10.{a}.{b}.2/30"),
            "dev",
            &peer,
        ]);
        run(&["-n", name, "link", "set", &peer, "up"]);
        run(&["-n", name, "link", "set", "lo", "up"]);
        NetNs { name: name.into() }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &format!("{}-h", self.name)])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_on_other_hosts_reach_the_control_plane_over_veth() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    // Distinct per test process, so parallel runs do not collide.
    let tag = (std::process::id() % 250) as u8;
    let ns1 = NetNs::create(&format!("wdn{tag}a"), 213, tag);
    let ns2 = NetNs::create(&format!("wdn{tag}b"), 214, tag);
    // The control plane listens on the host ends only; not on loopback, so the token guards it.
    let cp1 = ControlPlane::start_at(
        dir.path(),
        "cp1",
        &db.url,
        "",
        &format!("10.213.{tag}.1:0"),
        &[],
    );
    let cp2 = ControlPlane::start_at(
        dir.path(),
        "cp2",
        &db.url,
        "",
        &format!("10.214.{tag}.1:0"),
        &[],
    );
    // nsenter switches the network namespace only: `ip netns exec` would also remount /sys
    // without the cgroup hierarchies, and a real host's worker has them (every job type has
    // memory and pids limits, which need them).
    let (net1, net2) = (
        format!("--net=/var/run/netns/{}", ns1.name),
        format!("--net=/var/run/netns/{}", ns2.name),
    );
    let wrap1 = ["nsenter", net1.as_str(), "--"];
    let wrap2 = ["nsenter", net2.as_str(), "--"];
    let w1 = Worker::start_in(dir.path(), "far1", &cp1.grpc, 2, "", &wrap1);
    let w2 = Worker::start_in(dir.path(), "far2", &cp2.grpc, 2, "", &wrap2);
    let client = cp1.client();
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(client.submit(&job("quick")).await.unwrap().job_id);
    }
    let jobs = wait_all(&client, &ids, Duration::from_secs(60)).await;
    assert!(
        jobs.iter().all(|j| j.status == JobStatus::Succeeded),
        "{:?}",
        jobs.iter()
            .map(|j| (&j.status, &j.reason))
            .collect::<Vec<_>>()
    );
    assert_eq!(w1.started().len() + w2.started().len(), 20);
    // The sessions came from the namespaces' own addresses, across the veth links.
    let cp1_log = cp1.proc.log_text();
    assert!(cp1_log.contains(&format!("10.213.{tag}.2:")), "{cp1_log}");
    assert!(cp2.proc.log_text().contains(&format!("10.214.{tag}.2:")));
    // Off loopback, the job API wants an API token; the workers' token is not one.
    let api_token = cp1
        .client()
        .create_token(&warden_api::CreateTokenRequest {
            tenant: "default".into(),
            scopes: vec!["read".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .token;
    let mut jobs_api =
        warden_proto::pb::job_service_client::JobServiceClient::connect(cp1.grpc.clone())
            .await
            .unwrap();
    let refused = jobs_api
        .get_job(warden_proto::pb::GetJobRequest {
            job_id: ids[0].clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let with = |token: &str| {
        let mut req = tonic::Request::new(warden_proto::pb::GetJobRequest {
            job_id: ids[0].clone(),
        });
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        req
    };
    let worker_token = jobs_api.get_job(with(TOKEN)).await.unwrap_err();
    assert_eq!(worker_token.code(), tonic::Code::Unauthenticated);
    let req = with(&api_token);
    let got = jobs_api.get_job(req).await.unwrap().into_inner();
    assert_eq!(got.status, warden_proto::pb::JobStatus::Succeeded as i32);
    // Plaintext off loopback never carries a secret: the job ends error, never runs without.
    let client = cp1.client();
    let id = client.submit(&job("secretive")).await.unwrap().job_id;
    let done = wait_all(&client, std::slice::from_ref(&id), Duration::from_secs(60)).await;
    assert_eq!(done[0].status, JobStatus::Error, "{:?}", done[0]);
    let reason = done[0].reason.clone().unwrap_or_default();
    assert!(
        reason.contains("secret_unavailable") && reason.contains("TLS"),
        "{reason}"
    );
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Stops and starts the machine's PostgreSQL (the one every test uses), so this test runs alone
/// (see .config/nextest.toml). The server is started again whatever happens.
struct PgRestart;

impl PgRestart {
    fn ctl(action: &str) {
        let version = std::fs::read_dir("/etc/postgresql")
            .unwrap()
            .flatten()
            .next()
            .unwrap()
            .file_name();
        let out = Command::new("pg_ctlcluster")
            .arg("--skip-systemctl-redirect")
            .arg(&version)
            .args(["main", action])
            .args(if action == "stop" {
                &["-m", "fast"][..]
            } else {
                &[][..]
            })
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctlcluster {action}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PgRestart {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| PgRestart::ctl("start"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_job_ends_across_a_postgres_restart() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), "cp", &db.url, "");
    let workers = [
        Worker::start(dir.path(), "w1", &cp.grpc, 3, ""),
        Worker::start(dir.path(), "w2", &cp.grpc, 3, ""),
    ];
    let client = cp.client();
    let mut ids = submit_mix(&client, 30, 5).await;
    wait_running(&client, &ids[0]).await;
    {
        let _restart = PgRestart;
        PgRestart::ctl("stop");
        // While the database is down, submissions fail loudly (5xx), never silently.
        let refused = client.submit(&job("quick")).await;
        assert!(
            refused.is_err(),
            "a job was accepted with the database down"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // Accepted after the restart, too.
    for _ in 0..10 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match client.submit(&job("quick")).await {
                Ok(r) => {
                    ids.push(r.job_id);
                    break;
                }
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("submissions never recovered: {e}"),
            }
        }
    }
    let jobs = wait_all(&client, &ids, Duration::from_secs(120)).await;
    for j in &jobs {
        assert!(
            matches!(j.status, JobStatus::Succeeded),
            "job {} ended {:?} ({:?})",
            j.job_id,
            j.status,
            j.reason
        );
    }
    let started: usize = workers.iter().map(|w| w.started().len()).sum();
    assert!(started >= ids.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_and_cancel_work_through_another_replica() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let a = ControlPlane::start(dir.path(), "cp-a", &db.url, "");
    let b = ControlPlane::start(dir.path(), "cp-b", &db.url, "");
    // The worker is attached to A; the user talks to B only.
    let _w = Worker::start(dir.path(), "w", &a.grpc, 1, "");
    let client = b.client();
    let id = client.submit(&job("slow")).await.unwrap().job_id;
    let follower = {
        let client = client.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let mut text = String::new();
            let end = client
                .follow(&id, "stdout", None, None, |item| {
                    if let warden_client::FollowItem::Log(ev) = item {
                        text.push_str(&ev.text);
                    }
                })
                .await
                .unwrap();
            (text, end)
        })
    };
    wait_running(&client, &id).await;
    let asked = Instant::now();
    client.cancel(&id).await.unwrap();
    let (text, end) = tokio::time::timeout(Duration::from_secs(20), follower)
        .await
        .expect("the follow on B never ended")
        .unwrap();
    assert_eq!(end.status, JobStatus::Cancelled);
    assert_eq!(text, "start 1\n", "B's follower saw A's worker's output");
    // The sleep had 3 s to go: the cancellation reached the worker at once, not at job end.
    assert!(
        asked.elapsed() < Duration::from_millis(2500),
        "{:?}",
        asked.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_workers_test_results_reach_every_replica_in_pieces() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let a = ControlPlane::start(dir.path(), "cp-a", &db.url, "");
    let b = ControlPlane::start(dir.path(), "cp-b", &db.url, "");
    let _w = Worker::start(dir.path(), "w", &a.grpc, 1, "");
    let id = a.client().submit(&job("reported")).await.unwrap().job_id;
    let done = wait_all(
        &a.client(),
        std::slice::from_ref(&id),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(done[0].status, JobStatus::Succeeded, "{:?}", done[0]);
    let counts = done[0].tests.clone().unwrap();
    assert_eq!(
        (counts.total, counts.failed, counts.passed),
        (3000, 1000, 2000)
    );
    // About 1 MiB of failure messages: more than one message of the worker's session.
    let grpc = Client::new(
        &format!("grpc://{}", b.grpc.trim_start_matches("http://")),
        Duration::from_secs(10),
        None,
    )
    .unwrap();
    for client in [b.client(), grpc] {
        let page = client.tests(&id, None, None, 10_000).await.unwrap();
        assert_eq!(page.tests.len(), 3000);
        assert_eq!(page.counts, Some(counts.clone()));
        assert!(
            page.tests[..1000]
                .iter()
                .all(|t| t.status == warden_api::TestStatus::Failed)
        );
        assert_eq!(page.tests[0].name, "t0");
        assert_eq!(page.tests[0].message.as_deref().map(str::len), Some(900));
        assert_eq!(page.tests[1000].name, "t1");
    }
}

/// A tool bundle a submission chose by hash reaches a remote worker from the control plane
/// (the worker has no copy of its own), is kept there by its hash, and the job reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_worker_gets_the_tool_bundle_a_submission_chose() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let bundles = dir.path().join("bundles");
    std::fs::create_dir_all(&bundles).unwrap();
    let bytes = "{\"format\": \"warden.tool-bundle/v1\", \"tools\": []}\n";
    let digest = sha256_hex(bytes);
    std::fs::write(bundles.join(format!("warden-tools-1-{digest}.json")), bytes).unwrap();
    let cp = ControlPlane::start(
        dir.path(),
        "cp",
        &db.url,
        &format!("tool_bundles: {}", bundles.display()),
    );
    let _w = Worker::start(dir.path(), "w", &cp.grpc, 1, "");
    let id = cp
        .client()
        .submit(&SubmitJobRequest {
            tool_bundle: Some(format!("sha256:{digest}")),
            ..job("tooled")
        })
        .await
        .unwrap()
        .job_id;
    let done = wait_all(
        &cp.client(),
        std::slice::from_ref(&id),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(done[0].status, JobStatus::Succeeded, "{:?}", done[0]);
    assert_eq!(
        done[0].tool_bundle.as_deref(),
        Some(format!("sha256:{digest}").as_str())
    );
    let out = cp.client().logs_raw(&id, "stdout", 0).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out),
        format!("at /run/warden/tools.json\n{bytes}")
    );
    let kept = dir
        .path()
        .join(format!("w/data/tool-bundles/{digest}.json"));
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_talk_tls_when_certificates_are_configured() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_certs(dir.path());
    let tls = format!(
        "tls:\n  cert: {}\n  key: {}\n",
        cert.display(),
        key.display()
    );
    let cp = ControlPlane::start(dir.path(), "cp", &db.url, &tls);
    assert!(cp.grpc.starts_with("https://"), "{}", cp.grpc);
    let (home, config) = write_home(dir.path(), "w", worker_yaml);
    let mut cmd = Command::new(WARDEN);
    cmd.args([
        "worker",
        "--server",
        &cp.grpc,
        "--worker-id",
        "tls",
        "--tls-ca",
    ])
    .arg(&ca)
    .arg("--config")
    .arg(&config);
    let w = Worker {
        proc: Proc::spawn(cmd, home.join("stderr.log")),
        id: "tls".into(),
    };
    w.proc.announced("warden worker tls registered");
    assert!(
        cp.http.starts_with("https://"),
        "tls covers HTTP too: {}",
        cp.http
    );
    let ca_pem = std::fs::read(&ca).unwrap();
    let client = Client::with_ca(&cp.http, Duration::from_secs(10), None, Some(&ca_pem)).unwrap();
    let untrusted = Client::new(&cp.http, Duration::from_secs(10), None).unwrap();
    let err = untrusted.list(&Default::default()).await.unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    let id = client.submit(&job("quick")).await.unwrap().job_id;
    let done = wait_all(&client, std::slice::from_ref(&id), Duration::from_secs(30)).await;
    assert_eq!(done[0].status, JobStatus::Succeeded);
    assert_eq!(w.started(), std::slice::from_ref(&id));
    // Over TLS the control plane sends the secret with the job: the job has the control
    // plane's value (not the worker's own), masked in its log, and the sending is audited.
    let sid = client.submit(&job("secretive")).await.unwrap().job_id;
    let done = wait_all(&client, std::slice::from_ref(&sid), Duration::from_secs(30)).await;
    assert_eq!(done[0].status, JobStatus::Succeeded, "{:?}", done[0]);
    let out = String::from_utf8(client.logs_raw(&sid, "stdout", 0).await.unwrap()).unwrap();
    assert!(out.contains("var [MASKED:CP_SECRET]"), "{out}");
    assert!(out.contains(&sha256_hex(CP_SECRET)), "{out}");
    assert!(
        !out.contains(CP_SECRET) && !out.contains(WORKER_SECRET),
        "{out}"
    );
    let audit = client
        .audit(&warden_client::AuditQuery {
            action: Some("secret.use".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        audit
            .entries
            .iter()
            .any(|e| e.target.as_deref() == Some("CP_SECRET")
                && e.detail.as_deref().is_some_and(|d| d.contains(&sid))),
        "{audit:?}"
    );
    // Plaintext to a TLS listener gets nowhere; neither does TLS without trusting the CA.
    let plain = cp.grpc.replace("https://", "http://");
    let out = Command::new(WARDEN)
        .args(["worker", "--server", &cp.grpc, "--config"])
        .arg(&config)
        .env("WARDEN_WORKER_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "https without --tls-ca must be refused"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-ca"));
    let mut jobs = warden_proto::pb::job_service_client::JobServiceClient::connect(plain)
        .await
        .unwrap();
    assert!(
        jobs.get_job(warden_proto::pb::GetJobRequest { job_id: id.clone() })
            .await
            .is_err()
    );
}

/// The configuration files deploy/compose.yaml mounts, run as they are but for the host paths
/// and ports a container gives them: two control planes on PostgreSQL, a worker of both, a
/// job submitted with a token through one and read through the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_configuration_files_run_a_cluster() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/compose");
    let read = |f: &str| std::fs::read_to_string(deploy.join(f)).unwrap();
    let token_file = dir.path().join("worker_token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let artifacts = dir.path().join("artifacts");
    let adapt = |text: &str, data: &Path| {
        text.replace("/var/lib/warden-artifacts", artifacts.to_str().unwrap())
            .replace("/var/lib/warden", data.to_str().unwrap())
            .replace("/run/secrets/worker_token", token_file.to_str().unwrap())
            .replace("0.0.0.0:8080", "127.0.0.1:0")
            .replace("0.0.0.0:50051", "127.0.0.1:0")
    };
    let control = read("control.yaml");
    let start_cp = |name: &str| {
        let (home, config) = write_home(dir.path(), name, |data| adapt(&control, data));
        let mut cmd = command(&[]);
        cmd.args(["serve", "--database-url", &db.url, "--config"])
            .arg(&config);
        let proc = Proc::spawn(cmd, home.join("stderr.log"));
        let http = proc.announced("warden listening on ");
        let grpc = proc.announced("warden gRPC listening on ");
        (ControlPlane { proc, http, grpc }, config)
    };
    let (a, a_config) = start_cp("cp-a");
    let (b, _) = start_cp("cp-b");
    let worker_text = read("worker.yaml");
    let (home, config) = write_home(dir.path(), "w", |data| {
        format!(
            "{}\nsandbox_uid: {uid}\nsandbox_gid: {uid}\n",
            adapt(&worker_text, data),
            uid = test_uid()
        )
    });
    let mut cmd = command(&[]);
    cmd.args(["worker", "--server", &format!("{},{}", a.grpc, b.grpc)])
        .args(["--worker-id", "w", "--config"])
        .arg(&config);
    let worker = Proc::spawn(cmd, home.join("stderr.log"));
    worker.announced("warden worker w registered");

    // No one is trusted on loopback by these files: the first token is made on the host.
    let token = dir.path().join("api.token");
    let out = Command::new(WARDEN)
        .args([
            "token",
            "create",
            "--tenant",
            "default",
            "--scopes",
            "read,submit",
        ])
        .arg("--serve-config")
        .arg(&a_config)
        .args(["--database-url", &db.url, "--out"])
        .arg(&token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = std::fs::read_to_string(&token).unwrap().trim().to_string();
    let refused = a.client().submit(&job("hello")).await.unwrap_err();
    assert!(refused.to_string().contains("401"), "{refused}");
    let via_a = Client::new(&a.http, Duration::from_secs(10), Some(token.clone())).unwrap();
    let via_b = Client::new(&b.http, Duration::from_secs(10), Some(token)).unwrap();
    let id = via_a.submit(&job("hello")).await.unwrap().job_id;
    let done = wait_all(&via_b, std::slice::from_ref(&id), Duration::from_secs(60)).await;
    assert_eq!(done[0].status, JobStatus::Succeeded, "{:?}", done[0]);
    let log = via_b.logs_raw(&id, "stdout", 0).await.unwrap();
    assert!(
        String::from_utf8_lossy(&log).starts_with("hello from warden\n"),
        "{}",
        String::from_utf8_lossy(&log)
    );
    let record = via_b.artifact(&id, "artifact.json").await.unwrap();
    assert!(String::from_utf8_lossy(&record).contains("\"status\": \"succeeded\""));
}

/// moto's S3-compatible server on loopback (`scripts/setup.sh --deploy` installs it under
/// target/), with one bucket, stopped when dropped.
struct Moto {
    child: Child,
    endpoint: String,
}

impl Moto {
    fn start(bucket: &str) -> Moto {
        let exe = std::env::var_os("WARDEN_TEST_MOTO")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/pytools/bin/moto_server")
            });
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&exe)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (scripts/setup.sh --deploy installs moto)",
                    exe.display()
                )
            });
        let endpoint = format!("http://127.0.0.1:{port}");
        // Up when it answers; then the bucket (moto takes unsigned requests).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            use std::io::{Read, Write};
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                let req = format!(
                    "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                s.write_all(req.as_bytes()).unwrap();
                let mut answer = String::new();
                let _ = s.read_to_string(&mut answer);
                assert!(
                    answer.starts_with("HTTP/1.1 200"),
                    "create bucket: {answer}"
                );
                break;
            }
            assert!(Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto { child, endpoint }
    }
}

impl Moto {
    /// Every key in `bucket` (moto answers unsigned listings).
    fn keys(&self, bucket: &str) -> Vec<String> {
        use std::io::{Read, Write};
        let addr = self.endpoint.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let req = format!(
            "GET /{bucket}?list-type=2 HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer
            .split("<Key>")
            .skip(1)
            .filter_map(|k| k.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Peak resident memory of a process so far (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

/// With `artifact_store:` the replicas share no directory: a 1 GiB artifact of a job run on a
/// worker of replica A is streamed into the bucket (A's memory does not hold it) and downloaded
/// through replica B (nor does B's), byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_in_a_bucket_are_served_by_any_replica_without_holding_them() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start("warden-it");
    let big_type = r#"
job_types:
  big:
    argv:
      - /bin/sh
      - -c
      - |
        head -c 1073741824 /dev/urandom > "$ARTIFACT_DIR/big.bin"
        sha256sum "$ARTIFACT_DIR/big.bin" | cut -c1-64 > "$ARTIFACT_DIR/big.sha256"
        mkdir -p "$ARTIFACT_DIR/sub" && echo small > "$ARTIFACT_DIR/sub/small.txt"
    timeout_s: 600
    limits: {artifacts_mb: 1100}
"#;
    let start_cp = |name: &str| {
        let (home, config) = write_home(dir.path(), name, |data| {
            format!(
                "listen: 127.0.0.1:0\ngrpc_listen: 127.0.0.1:0\nauth: {{loopback_trusted: true}}\n\
                 data_dir: {}\nlease_s: 5\n\
                 secrets: {{S3_KEY: {{env: WARDEN_TEST_S3_KEY}}, S3_SECRET: {{env: WARDEN_TEST_S3_SECRET}}}}\n\
                 artifact_store: {{url: s3://warden-it/runs, endpoint: {}, access_key_id_secret: S3_KEY, secret_access_key_secret: S3_SECRET}}\n{big_type}",
                data.display(),
                moto.endpoint
            )
        });
        let mut cmd = command(&[]);
        cmd.args(["serve", "--database-url", &db.url, "--config"])
            .arg(&config)
            .env("WARDEN_TEST_S3_KEY", "test-access-key")
            .env("WARDEN_TEST_S3_SECRET", "test-secret-key-123");
        let proc = Proc::spawn(cmd, home.join("stderr.log"));
        let http = proc.announced("warden listening on ");
        let grpc = proc.announced("warden gRPC listening on ");
        (ControlPlane { proc, http, grpc }, home)
    };
    let (a, a_home) = start_cp("cp-a");
    let (b, _) = start_cp("cp-b");
    let (home, config) = write_home(dir.path(), "wa", |data| {
        format!(
            "data_dir: {}\nsandbox_uid: {uid}\nsandbox_gid: {uid}\n{big_type}",
            data.display(),
            uid = test_uid()
        )
    });
    let mut cmd = command(&[]);
    cmd.args([
        "worker",
        "--server",
        &a.grpc,
        "--worker-id",
        "wa",
        "--config",
    ])
    .arg(&config);
    let worker = Proc::spawn(cmd, home.join("stderr.log"));
    worker.announced("warden worker wa registered");
    // The worker's session is open on A, not on B.
    for (cp, open) in [(&a, "1"), (&b, "0")] {
        let (code, metrics) = crate::metrics::get(&cp.http, "/metrics");
        assert_eq!(code, 200, "{metrics}");
        assert!(
            metrics
                .lines()
                .any(|l| l == format!("warden_worker_sessions {open}")),
            "{metrics}"
        );
    }

    let a_pid = a.proc.child.id();
    let b_pid = b.proc.child.id();
    let (a_before, b_before) = (peak_rss(a_pid), peak_rss(b_pid));
    let id = a.client().submit(&job("big")).await.unwrap().job_id;
    let done = wait_all(
        &b.client(),
        std::slice::from_ref(&id),
        Duration::from_secs(600),
    )
    .await;
    assert_eq!(done[0].status, JobStatus::Succeeded, "{:?}", done[0]);
    assert!(done[0].artifact_bytes > 1 << 30, "{:?}", done[0]);

    let listing = b.client().artifacts(&id).await.unwrap();
    let sizes: BTreeMap<&str, u64> = listing
        .artifacts
        .iter()
        .map(|e| (e.path.as_str(), e.size))
        .collect();
    assert_eq!(sizes.get("big.bin"), Some(&(1u64 << 30)), "{sizes:?}");
    assert_eq!(sizes.get("sub/small.txt"), Some(&6), "{sizes:?}");
    assert!(sizes.contains_key("artifact.json"), "{sizes:?}");
    // Replica A kept nothing once the bucket had it.
    assert!(
        !a_home
            .join("data/artifacts")
            .join(&id)
            .join("big.bin")
            .exists(),
        "the upload's local copy is removed"
    );

    let want = String::from_utf8(b.client().artifact(&id, "big.sha256").await.unwrap()).unwrap();
    let got = b.client().artifact(&id, "big.bin").await.unwrap();
    assert_eq!(got.len(), 1 << 30);
    assert_eq!(sha256_hex_bytes(&got), want.trim(), "byte for byte");
    drop(got);
    let missing = b
        .client()
        .artifact(&id, "nope.bin")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains("404") || missing.contains("artifact_not_found"),
        "{missing}"
    );

    let (a_growth, b_growth) = (
        peak_rss(a_pid).saturating_sub(a_before),
        peak_rss(b_pid).saturating_sub(b_before),
    );
    eprintln!(
        "peak RSS growth: A {} MiB (upload), B {} MiB (download)",
        a_growth >> 20,
        b_growth >> 20
    );
    assert!(
        a_growth <= 64 << 20 && b_growth <= 64 << 20,
        "peak RSS grew by {} MiB on A (upload) and {} MiB on B (download)",
        a_growth >> 20,
        b_growth >> 20
    );

    // Retention deletes the job's objects with it (the job ended 100 days ago, by hand).
    let key = format!("runs/{id}/big.bin");
    assert!(moto.keys("warden-it").contains(&key));
    let aged = Command::new("psql")
        .args([db.url.as_str(), "-qc"])
        .arg(format!(
            "UPDATE jobs SET finished_at = finished_at - 8640000000 WHERE id = '{id}'"
        ))
        .status()
        .unwrap();
    assert!(aged.success());
    // The replicas' own collectors pass at most a minute after they start and give their lease
    // back when done: a pass by hand meets one only while it runs (a few tries, not ten minutes).
    // One of them may also have collected it first (the job is then gone before the pass).
    let mut tries = 0;
    let stdout = loop {
        if b.client().get(&id).await.is_err() {
            break "deleted 1 by age (by a replica's own collector)".to_string();
        }
        let out = Command::new(WARDEN)
            .args(["gc", "--database-url", &db.url, "--config"])
            .arg(a_home.join("warden.yaml"))
            .env("WARDEN_TEST_S3_KEY", "test-access-key")
            .env("WARDEN_TEST_S3_SECRET", "test-secret-key-123")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        tries += 1;
        if !stdout.contains("left to it") || tries == 5 {
            break stdout;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    assert!(stdout.contains("deleted 1 by age"), "{stdout}");
    assert!(b.client().get(&id).await.is_err());
    // The rows go first, then the objects (a replica's pass may still be deleting them).
    let mut left = moto.keys("warden-it");
    for _ in 0..50 {
        if !left.iter().any(|k| k.contains(&id)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        left = moto.keys("warden-it");
    }
    assert!(!left.iter().any(|k| k.contains(&id)), "{left:?}");
}

fn sha256_hex_bytes(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
