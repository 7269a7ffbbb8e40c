//! Events to NATS JetStream from the store's outbox, through a real nats-server of the test's
//! own (so it can be killed and restarted): the server killed -9 with events stored and not
//! published, NATS down and back while warden runs, a replay of everything — and a consumer
//! still sees every job's events exactly once, in order, and every log byte.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use prost::Message as _;
use warden_api::{JobStatus, SubmitJobRequest};
use warden_proto::pb;

use crate::support::{Server, WARDEN, wait_terminal, write_config_with};

struct Nats {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Nats {
    fn start(dir: &Path, port: u16) -> Nats {
        let child = Command::new("/usr/sbin/nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (scripts/setup.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Nats {
            child,
            port,
            dir: dir.to_path_buf(),
        }
    }

    fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn restart(&mut self) {
        *self = Nats::start(&self.dir.clone(), self.port);
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

const TYPES: &str = r#"job_types:
  chatty:
    argv: ["/bin/sh", "-c", "for i in 1 2 3; do echo \"$WARDEN_JOB_ID line $i\"; done; echo oops >&2"]
    timeout_s: 60
"#;

async fn submit_many(server: &Server, n: usize) -> Vec<String> {
    let c = server.client();
    let mut ids = Vec::new();
    for _ in 0..n {
        let sub = c
            .submit(&SubmitJobRequest {
                job_type: "chatty".into(),
                ..SubmitJobRequest::default()
            })
            .await
            .unwrap();
        ids.push(sub.job_id);
    }
    for id in &ids {
        assert_eq!(wait_terminal(&c, id).await.status, JobStatus::Succeeded);
    }
    ids
}

/// Every message of a stream, in stream order: (subject, Nats-Msg-Id, payload).
async fn read_stream(
    js: &async_nats::jetstream::Context,
    name: &str,
) -> Vec<(String, String, bytes::Bytes)> {
    let mut stream = js.get_stream(name).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let mut out = Vec::new();
    for seq in state.first_sequence..=state.last_sequence {
        if state.messages == 0 {
            break;
        }
        let m = stream.get_raw_message(seq).await.unwrap();
        let id = m
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        out.push((m.subject.to_string(), id, m.payload));
    }
    out
}

async fn stream_len(js: &async_nats::jetstream::Context, name: &str) -> u64 {
    match js.get_stream(name).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_jobs_events_arrive_once_in_order_across_crashes_and_nats_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let nats_dir = dir.path().join("nats");
    let mut nats = Nats::start(&nats_dir, free_port());
    let config = write_config_with(
        dir.path(),
        &format!(
            "events:\n  nats: {{url: \"{}\", stream_prefix: WT, subject_prefix: wt.events}}\n{TYPES}",
            nats.url()
        ),
    );
    let mut server = Server::start(&config);

    // Published as they happen.
    let mut ids = submit_many(&server, 8).await;

    // NATS goes away: jobs run on, their events wait in the store's outbox; then warden is
    // killed -9 with them stored and not published.
    nats.kill9();
    ids.extend(submit_many(&server, 8).await);
    server.kill9();

    // warden comes back while NATS is still down, runs more jobs; then NATS comes back (from
    // its own store) and everything goes out.
    let server = Server::start(&config);
    ids.extend(submit_many(&server, 4).await);
    nats.restart();

    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let want_jobs = ids.len() as u64 * 3; // queued, running, succeeded
    let deadline = Instant::now() + Duration::from_secs(90);
    while stream_len(&js, "WT_JOBS").await < want_jobs {
        assert!(
            Instant::now() < deadline,
            "only {} of {want_jobs} job events reached JetStream",
            stream_len(&js, "WT_JOBS").await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A replay of everything: JetStream already holds it all and drops every repeat.
    let out = Command::new(WARDEN)
        .args(["events", "replay", "--since", "1h", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" 0 new to JetStream"), "{stdout}");
    tokio::time::sleep(Duration::from_millis(500)).await;

    let jobs = read_stream(&js, "WT_JOBS").await;
    assert_eq!(jobs.len() as u64, want_jobs, "each event exactly once");
    let mut per_job: BTreeMap<String, Vec<pb::JobEvent>> = BTreeMap::new();
    let mut msg_ids = std::collections::HashSet::new();
    for (subject, msg_id, payload) in &jobs {
        assert!(msg_ids.insert(msg_id.clone()), "repeated {msg_id}");
        let e = pb::JobEvent::decode(payload.clone()).unwrap();
        assert_eq!(subject, &format!("wt.events.jobs.default.{}", e.job_id));
        assert_eq!(msg_id, &format!("warden-{}-{}", e.job_id, e.seq));
        assert_eq!(e.tenant, "default");
        assert_eq!(e.job_type, "chatty");
        per_job.entry(e.job_id.clone()).or_default().push(e);
    }
    assert_eq!(per_job.len(), ids.len());
    for id in &ids {
        let events = &per_job[id];
        let statuses: Vec<i32> = events.iter().map(|e| e.status).collect();
        assert_eq!(
            statuses,
            [
                pb::JobStatus::Queued as i32,
                pb::JobStatus::Running as i32,
                pb::JobStatus::Succeeded as i32
            ],
            "{id}: in order, once each"
        );
        assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
        assert_eq!(events[2].exit_code, Some(0));
        assert_eq!(events[2].attempt, 1);
    }

    // Every log byte, per job and stream, in order.
    let logs = read_stream(&js, "WT_LOGS").await;
    let mut out: BTreeMap<(String, i32), Vec<u8>> = BTreeMap::new();
    for (_, _, payload) in &logs {
        let e = pb::LogEvent::decode(payload.clone()).unwrap();
        let buf = out.entry((e.job_id.clone(), e.stream)).or_default();
        assert_eq!(e.offset, buf.len() as u64, "no gap, no repeat");
        buf.extend_from_slice(&e.data);
    }
    for id in &ids {
        let stdout = &out[&(id.clone(), pb::LogStream::Stdout as i32)];
        assert_eq!(
            String::from_utf8_lossy(stdout),
            format!("{id} line 1\n{id} line 2\n{id} line 3\n")
        );
        assert_eq!(out[&(id.clone(), pb::LogStream::Stderr as i32)], b"oops\n");
    }
}

#[test]
fn a_bad_events_section_is_refused_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    for (events, says) in [
        ("events: {nats: {url: \"http://x:4222\"}}", "nats://"),
        (
            "events: {nats: {url: \"nats://127.0.0.1:4222\", stream_prefix: \"a.b\"}}",
            "stream_prefix",
        ),
        (
            "events: {nats: {url: \"nats://127.0.0.1:4222\", subject_prefix: \"a.>\"}}",
            "subject_prefix",
        ),
        (
            "events: {nats: {url: \"nats://127.0.0.1:4222\", format: xml}}",
            "format",
        ),
        ("events: {keep_days: 0}", "keep_days"),
        ("events: {webhooks: {}}", "webhooks"),
    ] {
        let config = write_config_with(dir.path(), &format!("{events}\n{TYPES}"));
        let out = Command::new(WARDEN)
            .args(["serve", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{events}: {stderr}");
        assert!(stderr.contains(says), "{events}: {stderr}");
    }
    // A replay without events.nats has nothing to publish to.
    let config = write_config_with(dir.path(), TYPES);
    let out = Command::new(WARDEN)
        .args(["events", "replay", "--since", "1h", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("events.nats"));
}
