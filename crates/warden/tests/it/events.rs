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

/// One sample of the server's `/metrics`, by its exact name.
fn metric(url: &str, name: &str) -> f64 {
    let (code, metrics) = crate::metrics::get(url, "/metrics");
    assert_eq!(code, 200);
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
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
    // It counts the passes that failed while NATS was away.
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&server.url, "warden_events_publish_failures_total") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "no failed publishing pass counted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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

    // The restarted server counted what it published.
    assert!(metric(&server.url, "warden_events_published_total") >= want_jobs as f64);

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
        ("events: {webhooks: {secret: NOPE}}", "NOPE"),
        ("events: {wbhooks: {}}", "wbhooks"),
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

/// What the loopback receiver saw: each request's path, signature, event id and body.
#[derive(Default)]
struct Received {
    requests: Vec<(String, String, String, Vec<u8>)>,
    refused: usize,
}

/// A receiver that answers 500 to the first `refuse` requests, then 204.
async fn receiver(
    refuse: usize,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Received>>,
) {
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode, Uri};
    type Shared = std::sync::Arc<std::sync::Mutex<Received>>;
    let seen: Shared = Default::default();
    async fn hook(
        State((seen, refuse)): State<(Shared, usize)>,
        uri: Uri,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> StatusCode {
        let mut s = seen.lock().unwrap();
        let h = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        s.requests.push((
            uri.path().to_string(),
            h("warden-signature"),
            h("warden-event-id"),
            body.to_vec(),
        ));
        if s.refused < refuse {
            s.refused += 1;
            return StatusCode::INTERNAL_SERVER_ERROR;
        }
        StatusCode::NO_CONTENT
    }
    let app = axum::Router::new()
        .route("/{*path}", axum::routing::post(hook))
        .with_state((seen.clone(), refuse));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

fn verify(key: &[u8], header: &str, body: &[u8]) -> bool {
    use hmac::Mac;
    let Some((t, v1)) = header
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
    else {
        return false;
    };
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let want: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let fresh = t.parse::<u64>().is_ok_and(|t| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        now.abs_diff(t) < 300
    });
    fresh && want == v1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_retried_until_delivered_and_recorded_on_the_job() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (addr, seen) = receiver(2).await;
    const KEY: &str = "whsec-0123456789abcdef";
    let key_file = dir.path().join("hook.key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = write_config_with(
        dir.path(),
        &format!(
            "secrets: {{HOOK_KEY: {{file: {}}}}}\nevents:\n  webhooks:\n    secret: HOOK_KEY\n    \
             allow_hosts: [\"127.0.0.1:{port}\"]\n    retry_base_ms: 200\n    max_attempts: 5\n{TYPES}",
            key_file.display(),
            port = addr.port()
        ),
    );
    let server = Server::start(&config);
    let c = server.client();
    let callback = format!("http://{addr}/hooks/job");

    // Outside the allowlist: refused with its reason, nothing recorded.
    for url in [
        format!("http://127.0.0.2:{}/x", addr.port()),
        "https://evil.example/hook".to_string(),
        format!("http://user:pw@{addr}/x"),
        "not a url".to_string(),
    ] {
        let err = c
            .submit(&SubmitJobRequest {
                job_type: "chatty".into(),
                callback_url: Some(url.clone()),
                ..SubmitJobRequest::default()
            })
            .await
            .unwrap_err();
        match err {
            warden_client::ClientError::Api { status, code, .. } => {
                assert_eq!(
                    (status, code),
                    (422, warden_api::ErrorCode::CallbackNotAllowed),
                    "{url}"
                );
            }
            other => panic!("{url}: {other}"),
        }
    }
    assert!(c.list(&Default::default()).await.unwrap().jobs.is_empty());

    let id = c
        .submit(&SubmitJobRequest {
            job_type: "chatty".into(),
            callback_url: Some(callback.clone()),
            ..SubmitJobRequest::default()
        })
        .await
        .unwrap()
        .job_id;
    assert_eq!(wait_terminal(&c, &id).await.status, JobStatus::Succeeded);

    // The first event fails twice, then is delivered; the job's later events follow it, in order.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let delivered = c
            .webhooks(&id)
            .await
            .unwrap()
            .deliveries
            .iter()
            .filter(|d| d.delivered)
            .count();
        if delivered == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "{:?}", c.webhooks(&id).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deliveries = c.webhooks(&id).await.unwrap().deliveries;
    let statuses: Vec<Option<JobStatus>> = deliveries.iter().map(|d| d.job_status).collect();
    assert_eq!(
        statuses,
        [
            Some(JobStatus::Queued),
            Some(JobStatus::Running),
            Some(JobStatus::Succeeded)
        ]
    );
    assert_eq!(
        deliveries.iter().map(|d| d.attempts).collect::<Vec<_>>(),
        [3, 1, 1]
    );
    assert!(deliveries.iter().all(|d| d.url == callback
        && d.last_status == Some(204)
        && !d.gave_up
        && d.next_attempt_at.is_none()));
    // The same, as the CLI shows it.
    let out = Command::new(WARDEN)
        .args(["job", "webhooks", &id, "--server", &server.url])
        .env_remove("WARDEN_CONFIG")
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(table.matches("delivered").count(), 3, "{table}");
    assert!(
        table.contains("queued") && table.contains("HTTP 204"),
        "{table}"
    );

    let got = seen.lock().unwrap();
    assert_eq!(got.requests.len(), 5, "three attempts, then one each");
    let mut bodies = Vec::new();
    for (path, signature, event_id, body) in &got.requests {
        assert_eq!(path, "/hooks/job");
        assert!(verify(KEY.as_bytes(), signature, body), "{signature}");
        assert!(!verify(b"another key", signature, body));
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["job_id"], id.as_str());
        assert_eq!(event_id, &format!("warden-{id}-{}", v["seq"]));
        bodies.push(v["status"].as_str().unwrap().to_string());
    }
    assert_eq!(
        bodies,
        ["queued", "queued", "queued", "running", "succeeded"],
        "the same event on every attempt, then the next ones in order"
    );
    assert_eq!(deliveries[0].event_id, got.requests[0].2);
}
