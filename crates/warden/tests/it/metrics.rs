//! `/metrics` after a known mix of jobs, read with a real exposition-format parser; `/readyz`.

use std::io::{Read, Write};

use warden_api::{JobStatus, SubmitJobRequest};

use crate::support::{Server, wait_running_with_output, wait_terminal, write_config_with};

const TYPES: &str = r#"job_types:
  ok:
    argv: [/bin/sh, -c, "echo fine"]
    timeout_s: 30
  bad:
    argv: [/bin/sh, -c, "echo no >&2; exit 3"]
    timeout_s: 30
  slow:
    argv: [/bin/sh, -c, "echo started; sleep 60"]
    timeout_s: 120
  flood:
    argv: [/bin/sh, -c, "head -c 3000000 /dev/zero"]
    timeout_s: 30
    limits: {output_mb: 1}
  onrepo:
    argv: [/bin/sh, -c, "cat data.txt"]
    requires_repo: true
    timeout_s: 30
"#;

/// A plain HTTP GET on loopback: status code and body.
pub(crate) fn get(base: &str, path: &str) -> (u16, String) {
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let code = answer[9..12].parse().unwrap();
    let body = answer.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (code, body.to_string())
}

fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(scrape, name, labels).unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
}

/// The sample `name` with `labels`, if the scrape has it.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

#[tokio::test]
async fn metrics_count_a_known_mix_of_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("proj");
    std::fs::create_dir_all(&repo).unwrap();
    crate::support::git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("data.txt"), "x".repeat(5000)).unwrap();
    crate::support::git(&repo, &["add", "-A"]);
    crate::support::git(&repo, &["commit", "-q", "-m", "one"]);
    let server = Server::start(&write_config_with(
        dir.path(),
        &format!("repos:\n  proj: {{url: \"{}\"}}\n{TYPES}", repo.display()),
    ));
    let c = server.client();
    let submit = |t: &str| {
        let c = c.clone();
        let t = t.to_string();
        async move {
            c.submit(&SubmitJobRequest {
                job_type: t,
                ..SubmitJobRequest::default()
            })
            .await
            .unwrap()
            .job_id
        }
    };
    for t in ["ok", "ok", "bad", "flood"] {
        let id = submit(t).await;
        wait_terminal(&c, &id).await;
    }
    for _ in 0..2 {
        let sub = c
            .submit(&SubmitJobRequest {
                job_type: "onrepo".into(),
                repo_name: Some("proj".into()),
                git_ref: Some("main".into()),
                ..SubmitJobRequest::default()
            })
            .await
            .unwrap();
        let done = wait_terminal(&c, &sub.job_id).await;
        assert_eq!(done.status, JobStatus::Succeeded, "{done:?}");
    }
    // Both slots busy, and one more waiting.
    let slow = submit("slow").await;
    wait_running_with_output(&c, &slow).await;
    let slow2 = submit("slow").await;
    wait_running_with_output(&c, &slow2).await;
    let waiting = submit("slow").await;

    let (code, body) = get(&server.url, "/metrics");
    assert_eq!(code, 200, "{body}");
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap();
    assert_eq!(
        value(
            &scrape,
            "warden_jobs_submitted_total",
            &[("job_type", "ok")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &scrape,
            "warden_jobs_submitted_total",
            &[("job_type", "slow")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &scrape,
            "warden_jobs_finished_total",
            &[("job_type", "ok"), ("status", "succeeded")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &scrape,
            "warden_jobs_finished_total",
            &[("job_type", "bad"), ("status", "failed")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &scrape,
            "warden_jobs_running",
            &[("job_type", "slow"), ("tenant", "default")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &scrape,
            "warden_jobs_queued",
            &[("job_type", "slow"), ("tenant", "default")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &scrape,
            "warden_lease_expiries_total",
            &[("outcome", "lost")]
        ),
        0.0
    );
    assert!(
        !scrape
            .samples
            .iter()
            .any(|s| s.metric == "warden_jobs_queued" && s.labels.get("job_type") == Some("ok")),
        "nothing of type ok waits"
    );
    // Histograms: one observation per finished job.
    assert_eq!(
        value(
            &scrape,
            "warden_job_run_seconds_count",
            &[("job_type", "ok")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &scrape,
            "warden_job_queue_wait_seconds_count",
            &[("job_type", "bad")]
        ),
        1.0
    );
    assert!(
        value(
            &scrape,
            "warden_log_bytes_stored_total",
            &[("stream", "stdout")]
        ) >= 18.0
    );
    assert!(
        value(
            &scrape,
            "warden_log_bytes_stored_total",
            &[("stream", "stderr")]
        ) >= 3.0
    );
    assert!(
        value(
            &scrape,
            "warden_store_call_seconds_count",
            &[("call", "complete")]
        ) >= 3.0
    );

    // What the workers measured: each job's sandbox start and first log byte; the bytes past
    // the flood's 1 MiB cap; the repository's tree checked out once, then from the cache.
    for ty in ["ok", "bad", "flood", "onrepo"] {
        let started = value(
            &scrape,
            "warden_sandbox_start_seconds_count",
            &[("job_type", ty)],
        );
        let expected = if ty == "ok" || ty == "onrepo" {
            2.0
        } else {
            1.0
        };
        assert_eq!(started, expected, "sandbox starts of {ty}");
        assert_eq!(
            value(
                &scrape,
                "warden_job_first_log_byte_seconds_count",
                &[("job_type", ty)]
            ),
            expected,
            "first log bytes of {ty}"
        );
    }
    let start_sum = value(
        &scrape,
        "warden_sandbox_start_seconds_sum",
        &[("job_type", "ok")],
    );
    assert!(start_sum > 0.0 && start_sum < 20.0, "{start_sum}");
    let dropped = value(&scrape, "warden_log_bytes_dropped_total", &[]);
    assert!(
        dropped > 0.0 && dropped <= (3_000_000 - (1 << 20)) as f64,
        "at most 3,000,000 bytes against a 1 MiB cap: {dropped}"
    );
    assert_eq!(
        value(&scrape, "warden_checkouts_total", &[("result", "miss")]),
        1.0
    );
    assert_eq!(
        value(&scrape, "warden_checkouts_total", &[("result", "hit")]),
        1.0
    );
    assert!(value(&scrape, "warden_checkout_bytes_total", &[]) >= 5000.0);

    // Every metric the Grafana dashboard queries is one this server exports.
    let dashboard = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/grafana/warden.json"),
    )
    .unwrap();
    let mut queried = 0;
    for word in dashboard.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        let Some(name) = word.strip_prefix("warden_") else {
            continue;
        };
        let base = ["_bucket", "_count", "_sum", "_total"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            body.contains(&format!("# TYPE warden_{base} ")),
            "the dashboard queries warden_{name}, which /metrics does not export"
        );
        queried += 1;
    }
    assert!(queried >= 10, "{queried}");

    let (code, body) = get(&server.url, "/readyz");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"ready\":true"), "{body}");
    for id in [&waiting, &slow, &slow2] {
        c.cancel(id).await.unwrap();
        let end = wait_terminal(&c, id).await;
        assert_eq!(end.status, JobStatus::Cancelled);
    }
}

/// How many times the store was called `call` (none: never).
fn store_calls(scrape: &prometheus_parse::Scrape, call: &str) -> f64 {
    sample(scrape, "warden_store_call_seconds_count", &[("call", call)]).unwrap_or(0.0)
}

/// Following a job's log through the HTTP API reads its record once (the follower's
/// authorization, which the follow starts from), and a submission's audit entry is written
/// with the job instead of in a store call of its own.
#[tokio::test]
async fn a_follow_reads_the_record_once_and_a_submission_is_one_store_call() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&write_config_with(
        dir.path(),
        r#"job_types:
  steps:
    argv: [/bin/sh, -c, "echo one; echo two"]
    timeout_s: 30
"#,
    ));
    let c = server.client();
    let sub = c
        .submit(&SubmitJobRequest {
            job_type: "steps".into(),
            ..SubmitJobRequest::default()
        })
        .await
        .unwrap();
    wait_terminal(&c, &sub.job_id).await;
    let scrape = || {
        let (code, body) = get(&server.url, "/metrics");
        assert_eq!(code, 200, "{body}");
        prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap()
    };
    let before = scrape();
    let mut got = String::new();
    let end = c
        .follow(&sub.job_id, "stdout", Some(0), None, |item| {
            if let warden_client::FollowItem::Log(event) = item {
                got.push_str(&event.text);
            }
        })
        .await
        .unwrap();
    assert_eq!(end.status, JobStatus::Succeeded);
    assert_eq!(got, "one\ntwo\n");
    let after = scrape();
    assert_eq!(
        store_calls(&after, "get") - store_calls(&before, "get"),
        1.0,
        "reads of the record by one follow"
    );
    // With the slot idle, it was claimed in the same call (a slot still busy starting up
    // claims it after).
    assert_eq!(
        store_calls(&after, "submit") + store_calls(&after, "submit_and_claim"),
        1.0
    );
    assert_eq!(store_calls(&after, "append_audit"), 0.0);
    // The entry is there all the same.
    let (code, body) = get(&server.url, "/audit?action=submit");
    assert_eq!(code, 200, "{body}");
    let audit: serde_json::Value = serde_json::from_str(&body).unwrap();
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{audit}");
    assert_eq!(entries[0]["target"], sub.job_id.as_str());
}

/// `--log-format json`: every line the server logs is one JSON object with a level.
#[test]
fn the_server_logs_json_lines_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with(dir.path(), TYPES);
    let log = dir.path().join("stderr.log");
    let mut cmd = std::process::Command::new(crate::support::WARDEN);
    cmd.args(["serve", "--log-format", "json", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap());
    let server = Server::start_with(cmd);
    drop(server);
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "{text}");
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{l}"
        );
    }
}

#[test]
fn readyz_answers_503_while_the_sandbox_self_test_has_failed() {
    let dir = tempfile::tempdir().unwrap();
    // Where the sandbox's /etc goes is a file: the self-test cannot prepare it.
    std::fs::create_dir_all(dir.path().join("data/sandbox")).unwrap();
    std::fs::write(dir.path().join("data/sandbox/etc"), "not a directory").unwrap();
    let server = Server::start(&write_config_with(dir.path(), TYPES));
    let (code, body) = get(&server.url, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"ready\":false"), "{body}");
    assert!(body.contains("self-test failed: prepare /etc"), "{body}");
    assert_eq!(get(&server.url, "/healthz").0, 200, "alive all the same");
}
