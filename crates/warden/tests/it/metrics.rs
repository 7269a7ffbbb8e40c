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
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
}

#[tokio::test]
async fn metrics_count_a_known_mix_of_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&write_config_with(dir.path(), TYPES));
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
    for t in ["ok", "ok", "bad"] {
        let id = submit(t).await;
        wait_terminal(&c, &id).await;
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
