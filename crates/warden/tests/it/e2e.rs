//! End-to-end: the real `warden serve` binary, driven over HTTP.

use std::collections::BTreeMap;
use std::time::Duration;

use warden_api::{JobStatus, SubmitJobRequest};
use warden_client::FollowItem;

use crate::support::*;

fn req(job_type: &str) -> SubmitJobRequest {
    SubmitJobRequest {
        job_type: job_type.into(),
        ..SubmitJobRequest::default()
    }
}

#[tokio::test]
async fn submit_follow_logs_and_artifact_json() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&write_config(dir.path(), ""));
    let c = server.client();
    let mut r = req("echo");
    r.params = BTreeMap::from([("GREETING".into(), "world".into())]);
    let sub = c.submit(&r).await.unwrap();
    assert!(
        sub.artifact_dir.ends_with(&sub.job_id),
        "{}",
        sub.artifact_dir
    );

    let mut text = String::new();
    let end = c
        .follow(&sub.job_id, "stdout", Some(0), None, |item| {
            if let FollowItem::Log(ev) = item {
                text.push_str(&ev.text);
            }
        })
        .await
        .unwrap();
    assert_eq!(text, "hello world\n");
    assert_eq!(end.status, JobStatus::Succeeded);
    assert_eq!(end.next_offset, 12);

    let job = c.get(&sub.job_id).await.unwrap();
    assert_eq!(job.status, JobStatus::Succeeded);
    assert_eq!(job.exit_code, Some(0));
    assert!(!job.unsafe_fallback, "the run is recorded as sandboxed");
    assert_eq!(job.enforcement["wall_time"], "supervisor");
    assert_eq!(
        job.enforcement["network"],
        "own network namespace (loopback only)"
    );
    assert_eq!((job.stdout_bytes, job.stderr_bytes), (12, 10));
    let err = c.logs(&sub.job_id, "stderr", 10).await.unwrap();
    assert_eq!(err.lines, ["to-stderr"]);

    let art: serde_json::Value =
        serde_json::from_slice(&c.artifact(&sub.job_id, "artifact.json").await.unwrap()).unwrap();
    assert_eq!(art["job_id"], sub.job_id.as_str());
    assert_eq!(art["job_type"], "echo");
    assert_eq!(art["status"], "succeeded");
    assert_eq!(art["exit_code"], 0);
    assert_eq!(art["params"]["GREETING"], "world");
    assert_eq!(art["unsafe_fallback"], false);
    assert_eq!(art["isolation"], "sandbox");
    assert_eq!(
        art["limits"]["network"],
        "own network namespace (loopback only)"
    );
    assert_eq!(art["files"], serde_json::json!(["out.txt"]));
    assert_eq!(art["outputs"], serde_json::json!({}));
    assert_eq!(art["log"]["stdout_bytes"], 12);
    assert!(
        art["invariants"]["clean_tree_ok"].is_null(),
        "no repository, nothing to prove"
    );
    assert!(art["timings"]["wall_ms"].as_u64().is_some());
    assert!(art["resources"]["max_rss_kb"].as_u64().unwrap() > 0);
    assert_eq!(c.artifact(&sub.job_id, "out.txt").await.unwrap(), b"out\n");
}

#[tokio::test]
async fn job_environment_is_only_params_and_warden_variables() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&write_config(dir.path(), ""));
    let c = server.client();
    let mut r = req("env");
    r.params = BTreeMap::from([("GREETING".into(), "x y$(z)".into())]);
    let sub = c.submit(&r).await.unwrap();
    assert_eq!(
        wait_terminal(&c, &sub.job_id).await.status,
        JobStatus::Succeeded
    );
    let env = String::from_utf8(c.artifact(&sub.job_id, "env.txt").await.unwrap()).unwrap();
    let names: Vec<&str> = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, _)| k)
        .collect();
    // `sh` itself adds PWD; everything else comes from warden.
    assert_eq!(
        names,
        [
            "ARTIFACT_DIR",
            "GREETING",
            "HOME",
            "PATH",
            "PWD",
            "TMPDIR",
            "WARDEN_ATTEMPT",
            "WARDEN_JOB_ID"
        ],
        "{env}"
    );
    assert!(
        env.contains("GREETING=x y$(z)\n"),
        "params arrive verbatim: {env}"
    );
    assert!(env.contains(&format!("WARDEN_JOB_ID={}\n", sub.job_id)));
    // Only stdin, stdout, stderr (and the fd `ls` opens for /proc/self/fd itself).
    let fds = String::from_utf8(c.artifact(&sub.job_id, "fds.txt").await.unwrap()).unwrap();
    let numbered: Vec<&str> = fds
        .lines()
        .filter_map(|l| l.split_whitespace().nth(8))
        .filter(|n| n.chars().all(|c| c.is_ascii_digit()))
        .collect();
    assert_eq!(numbered, ["0", "1", "2", "3"], "{fds}");
}

#[tokio::test]
async fn binary_output_survives_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&write_config(dir.path(), ""));
    let c = server.client();
    let sub = c.submit(&req("binary")).await.unwrap();
    wait_terminal(&c, &sub.job_id).await;
    let out = c.logs_raw(&sub.job_id, "stdout", 0).await.unwrap();
    assert_eq!(out, b"\xff\xfe\x00abc\n\xe2\x82");
    assert_eq!(
        c.logs_raw(&sub.job_id, "stderr", 0).await.unwrap(),
        b"E\x01"
    );
    assert_eq!(
        c.logs_raw(&sub.job_id, "stdout", 3).await.unwrap(),
        b"abc\n\xe2\x82"
    );
}

/// A log of many batches on both streams at once, stored and read back exactly: every batch at
/// its offset, none repeated, none carrying what an earlier one left in its buffer.
#[tokio::test]
async fn a_log_of_many_batches_is_stored_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let body = "job_types:\n  counting:\n    argv: [\"/bin/sh\", \"-c\", \"seq 1 700000 & seq 1 400000 >&2; wait\"]\n    timeout_s: 60\n    limits: {output_mb: 64}\n";
    let server = Server::start(&write_config_with(dir.path(), body));
    let c = server.client();
    let sub = c.submit(&req("counting")).await.unwrap();
    let job = wait_terminal(&c, &sub.job_id).await;
    assert_eq!(job.status, JobStatus::Succeeded, "{:?}", job.reason);
    for (stream, n) in [("stdout", 700_000), ("stderr", 400_000)] {
        let want: String = (1..=n).map(|i| format!("{i}\n")).collect();
        assert!(want.len() > 2 << 20, "more than a couple of batches");
        let mut got = Vec::new();
        loop {
            let chunk = c
                .logs_raw(&sub.job_id, stream, got.len() as u64)
                .await
                .unwrap();
            if chunk.is_empty() {
                break;
            }
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got.len(), want.len(), "{stream}: every byte, no more");
        assert!(got == want.as_bytes(), "{stream}: the same bytes in order");
    }
    assert_eq!(
        job.stdout_bytes,
        (1..=700_000u64)
            .map(|i| i.to_string().len() as u64 + 1)
            .sum::<u64>()
    );
}

#[tokio::test]
async fn failing_job_keeps_its_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&write_config(dir.path(), ""));
    let c = server.client();
    let sub = c.submit(&req("fail")).await.unwrap();
    let job = wait_terminal(&c, &sub.job_id).await;
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.exit_code, Some(3));
    assert_eq!(job.reason.as_deref(), Some("exit_code: 3"));
}

#[tokio::test]
async fn output_over_the_cap_is_truncated_and_the_job_killed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&write_config(dir.path(), ""));
    let c = server.client();
    let sub = c.submit(&req("flood")).await.unwrap();
    let job = wait_terminal(&c, &sub.job_id).await;
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.reason.as_deref(), Some("output_limit"));
    assert!(job.log_truncated);
    assert_eq!(job.stdout_bytes, 1 << 20, "exactly the cap is kept");
    let logs = c.logs(&sub.job_id, "stdout", 1).await.unwrap();
    assert!(logs.truncated);
    assert_eq!(
        job.signal,
        Some(9),
        "an endless flood ends only by the kill"
    );
    let listing = c.artifacts(&sub.job_id).await.unwrap();
    assert!(
        !listing.artifacts.iter().any(|a| a.path == "after.txt"),
        "the job was stopped"
    );
}

#[tokio::test]
async fn missing_program_is_an_error_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&write_config(dir.path(), ""));
    let c = server.client();
    let sub = c.submit(&req("missing_program")).await.unwrap();
    let job = wait_terminal(&c, &sub.job_id).await;
    assert_eq!(job.status, JobStatus::Error);
    let reason = job.reason.unwrap();
    assert!(
        reason.starts_with("sandbox_setup_failed: exec /nonexistent/program:"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_repository_that_cannot_be_fetched_ends_the_job_error_not_unisolated() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&write_config(dir.path(), ""));
    let c = server.client();
    let mut r = req("needs_repo");
    r.repo_name = Some("demo".into());
    r.remote_url = Some("https://example.invalid/demo".into());
    r.sha = Some("0".repeat(40));
    let sub = c.submit(&r).await.unwrap();
    let job = wait_terminal(&c, &sub.job_id).await;
    assert_eq!(job.status, JobStatus::Error);
    let reason = job.reason.unwrap();
    assert!(reason.starts_with("fetch_failed: "), "{reason}");
    assert_eq!(job.exit_code, None, "the job never ran");
}

#[tokio::test]
async fn timeout_kills_the_whole_tree_including_setsid_daemons() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&write_config(dir.path(), ""));
    let c = server.client();
    let sub = c.submit(&req("tree_timeout")).await.unwrap();
    let job = wait_terminal(&c, &sub.job_id).await;
    assert_eq!(job.status, JobStatus::TimedOut);
    assert_eq!(job.reason.as_deref(), Some("timed_out"));
    let art = std::path::Path::new(&sub.artifact_dir);
    assert!(art.join("daemon.pid").exists(), "the daemon had started");
    assert_no_job_processes();
}

#[tokio::test]
async fn cancel_running_job_kills_the_tree() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&write_config(dir.path(), ""));
    let c = server.client();
    let sub = c.submit(&req("tree")).await.unwrap();
    wait_running_with_output(&c, &sub.job_id).await;
    // sh, sleep, the setsid'd sleep and its own: at least four processes of the job's uid.
    let before = processes_of_uid(test_uid());
    assert!(
        before.len() >= 3,
        "the job's tree runs before cancel: {before:?}"
    );
    let view = c.cancel(&sub.job_id).await.unwrap();
    assert!(view.cancel_requested);
    let job = wait_terminal(&c, &sub.job_id).await;
    assert_eq!(job.status, JobStatus::Cancelled);
    assert_no_job_processes();
    // Cancelling again is a conflict, not a silent success.
    let again = c.cancel(&sub.job_id).await.unwrap_err();
    assert!(
        matches!(again, warden_client::ClientError::Api { status: 409, .. }),
        "{again}"
    );
}

#[tokio::test]
async fn cancel_escalates_to_sigkill_when_sigterm_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&write_config(dir.path(), ""));
    let c = server.client();
    let sub = c.submit(&req("stubborn")).await.unwrap();
    wait_running_with_output(&c, &sub.job_id).await;
    c.cancel(&sub.job_id).await.unwrap();
    let job = wait_terminal(&c, &sub.job_id).await;
    assert_eq!(job.status, JobStatus::Cancelled);
    assert_eq!(
        job.signal,
        Some(9),
        "SIGTERM was ignored, so SIGKILL ended it"
    );
    assert_no_job_processes();
}

#[tokio::test]
async fn cancel_queued_job_is_immediate() {
    let dir = tempfile::tempdir().unwrap();
    // One slot, kept busy, so the second job stays queued.
    let server = Server::start(&write_config(dir.path(), "").with_slots(1));
    let c = server.client();
    let busy = c.submit(&req("sleeper")).await.unwrap();
    wait_running_with_output(&c, &busy.job_id).await;
    let queued = c.submit(&req("echo")).await.unwrap();
    let view = c.cancel(&queued.job_id).await.unwrap();
    assert_eq!(view.status, JobStatus::Cancelled);
    assert!(view.started_at.is_none());
    c.cancel(&busy.job_id).await.unwrap();
    assert_eq!(
        wait_terminal(&c, &busy.job_id).await.status,
        JobStatus::Cancelled
    );
}

#[tokio::test]
async fn background_child_holding_stdout_is_killed_when_main_exits() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&write_config(dir.path(), ""));
    let c = server.client();
    let sub = c.submit(&req("bg_holds_stdout")).await.unwrap();
    let job = wait_terminal(&c, &sub.job_id).await;
    assert_eq!(job.status, JobStatus::Succeeded);
    let logs = c.logs(&sub.job_id, "stdout", 10).await.unwrap();
    assert_eq!(logs.lines, ["main-done"]);
    assert!(
        std::path::Path::new(&sub.artifact_dir)
            .join("bg.pid")
            .exists()
    );
    assert_no_job_processes();
}

#[tokio::test]
async fn idempotency_key_returns_the_same_job_and_conflicts_on_change() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&write_config(dir.path(), ""));
    let http = crate::support::http();
    let body = serde_json::json!({"job_type": "echo", "params": {"GREETING": "a"}, "idempotency_key": "k-1"});
    let first = http
        .post(format!("{}/jobs", server.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 201);
    let first: serde_json::Value = first.json().await.unwrap();
    let again = http
        .post(format!("{}/jobs", server.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    let again: serde_json::Value = again.json().await.unwrap();
    assert_eq!(first["job_id"], again["job_id"]);
    assert_eq!(again["idempotent_replay"], true);
    let changed = serde_json::json!({"job_type": "echo", "params": {"GREETING": "b"}, "idempotency_key": "k-1"});
    let conflict = http
        .post(format!("{}/jobs", server.url))
        .json(&changed)
        .send()
        .await
        .unwrap();
    assert_eq!(conflict.status(), 409);
    let err: serde_json::Value = conflict.json().await.unwrap();
    assert_eq!(err["error"]["code"], "idempotency_conflict");
    let list = server.client().list(&Default::default()).await.unwrap();
    assert_eq!(list.jobs.len(), 1, "no second job was created");
}

#[tokio::test]
async fn kill_9_mid_job_then_restart_requeues_and_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let mut server = Server::start(&config);
    let c = server.client();
    let sub = c.submit(&req("once_slow")).await.unwrap();
    wait_running_with_output(&c, &sub.job_id).await;
    assert!(!processes_of_uid(test_uid()).is_empty());
    server.kill9();
    // The supervisor sees warden vanish and takes the job's tree down with it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !processes_of_uid(test_uid()).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "job outlived its server"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let server = Server::start(&config);
    let c = server.client();
    let job = wait_terminal(&c, &sub.job_id).await;
    assert_eq!(job.status, JobStatus::Succeeded);
    assert_eq!(job.attempts, 2);
    let logs = c.logs(&sub.job_id, "stdout", 10).await.unwrap();
    assert_eq!(
        logs.lines,
        ["second-attempt"],
        "the re-run's log starts afresh"
    );
}

#[tokio::test]
async fn kill_9_without_attempts_left_ends_worker_lost() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "max_attempts: 1");
    let mut server = Server::start(&config);
    let c = server.client();
    let sub = c.submit(&req("sleeper")).await.unwrap();
    wait_running_with_output(&c, &sub.job_id).await;
    server.kill9();
    let server = Server::start(&config);
    let job = server.client().get(&sub.job_id).await.unwrap();
    assert_eq!(job.status, JobStatus::Error);
    assert_eq!(job.reason.as_deref(), Some("worker_lost"));
}

#[tokio::test]
async fn sigterm_requeues_running_jobs_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let mut server = Server::start(&config);
    let c = server.client();
    let sub = c.submit(&req("sleeper")).await.unwrap();
    wait_running_with_output(&c, &sub.job_id).await;
    let status = server.terminate();
    assert!(status.success(), "warden exits 0 on SIGTERM: {status:?}");
    // On the next start the job is back, and the interrupted attempt did not count.
    let server = Server::start(&config);
    let c = server.client();
    let job = wait_running_with_output(&c, &sub.job_id).await;
    assert_eq!(job.attempts, 1);
    c.cancel(&sub.job_id).await.unwrap();
    wait_terminal(&c, &sub.job_id).await;
}

#[tokio::test]
async fn a_second_server_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let _server = Server::start(&config);
    let out = std::process::Command::new(WARDEN)
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another warden process"), "{err}");
}

#[tokio::test]
async fn artifact_downloads_never_follow_links_or_block_on_fifos() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&write_config(dir.path(), ""));
    let c = server.client();
    let sub = c.submit(&req("echo")).await.unwrap();
    wait_terminal(&c, &sub.job_id).await;
    // Plant what a hostile job would have left (the fallback has no filesystem isolation, so
    // plant them directly).
    let art = std::path::Path::new(&sub.artifact_dir);
    std::os::unix::fs::symlink("/etc/passwd", art.join("passwd")).unwrap();
    std::os::unix::fs::symlink("/etc", art.join("etc")).unwrap();
    std::process::Command::new("mkfifo")
        .arg(art.join("fifo"))
        .status()
        .unwrap();
    std::fs::hard_link(art.join("out.txt"), art.join("hard.txt")).unwrap();
    let http = crate::support::http();
    let get = |p: &str| {
        let url = format!("{}/jobs/{}/artifacts/{p}", server.url, sub.job_id);
        let http = http.clone();
        async move {
            let r = http.get(url).send().await.unwrap();
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            (
                status,
                body["error"]["code"].as_str().unwrap_or("").to_string(),
            )
        }
    };
    assert_eq!(get("passwd").await, (422, "not_a_file".into()));
    assert_eq!(get("etc/passwd").await, (422, "not_a_file".into()));
    assert_eq!(get("fifo").await, (422, "not_a_file".into()));
    assert_eq!(
        get("..%2F..%2Fwarden.db").await,
        (400, "invalid_path".into())
    );
    assert_eq!(get("nope.txt").await, (404, "artifact_not_found".into()));
    // A hard link is just another name for a file inside the directory.
    assert_eq!(c.artifact(&sub.job_id, "hard.txt").await.unwrap(), b"out\n");
    let kinds: BTreeMap<String, String> = c
        .artifacts(&sub.job_id)
        .await
        .unwrap()
        .artifacts
        .into_iter()
        .map(|a| (a.path, a.kind))
        .collect();
    assert_eq!(kinds["passwd"], "symlink");
    assert_eq!(kinds["fifo"], "other");
    assert!(
        !kinds.keys().any(|k| k.starts_with("etc/")),
        "links are not descended"
    );
}

trait WithSlots {
    fn with_slots(self, n: u32) -> Self;
}

impl WithSlots for std::path::PathBuf {
    fn with_slots(self, n: u32) -> Self {
        let text = std::fs::read_to_string(&self)
            .unwrap()
            .replace("slots: 2", &format!("slots: {n}"));
        std::fs::write(&self, text).unwrap();
        self
    }
}

#[tokio::test]
async fn a_job_type_can_run_in_its_own_rootfs() {
    let dir = tempfile::tempdir().unwrap();
    // A root filesystem holding one statically linked program and nothing of the host.
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    let src = dir.path().join("hello.c");
    std::fs::write(
        &src,
        "#include <stdio.h>\n#include <unistd.h>\nint main(){printf(\"hello from rootfs, usr %s\\n\", access(\"/usr\", F_OK) == 0 ? \"present\" : \"absent\"); return 0;}\n",
    )
    .unwrap();
    let cc = std::process::Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(rootfs.join("bin/hello"))
        .arg(&src)
        .status()
        .unwrap();
    assert!(cc.success(), "cc -static failed");
    let config = write_config(dir.path(), "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "\nrepos:",
        &format!(
            "\n  own_root:\n    argv: [/bin/hello]\n    rootfs: {}\n    timeout_s: 30\nrepos:",
            rootfs.display()
        ),
    );
    std::fs::write(&config, text).unwrap();
    let server = Server::start(&config);
    let c = server.client();
    let sub = c.submit(&req("own_root")).await.unwrap();
    let job = wait_terminal(&c, &sub.job_id).await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    let out = c.logs_raw(&sub.job_id, "stdout", 0).await.unwrap();
    assert_eq!(out, b"hello from rootfs, usr absent\n");
}

/// One `curl` over `url`'s listener: each of `paths` in turn on the same connection, with the
/// HTTP version and the number of new connections each transfer made.
fn curl_versions(url: &str, args: &[&str], paths: &[&str]) -> Vec<(String, String)> {
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-sS",
        "-w",
        "%{http_code} %{http_version} %{num_connects}\\n",
    ])
    .args(args);
    for p in paths {
        cmd.args(["-o", "/dev/null"]).arg(format!("{url}{p}"));
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            assert_eq!(f[0], "200", "{l}");
            (f[1].to_string(), f[2].to_string())
        })
        .collect()
}

/// The HTTP listener speaks HTTP/2 — over TLS when the client offers it (ALPN `h2`, as a
/// browser does) and in cleartext with prior knowledge, several requests at once on one
/// connection — and keeps HTTP/1.1 connections alive.
#[tokio::test]
async fn http2_and_keep_alive_on_the_http_listener() {
    let dir = tempfile::tempdir().unwrap();
    let plain = Server::start(&write_config(dir.path(), ""));
    let paths = ["/healthz", "/job-types", "/jobs"];
    let v = |version: &str, connects: &str| (version.to_string(), connects.to_string());
    assert_eq!(
        curl_versions(&plain.url, &["--http1.1"], &paths),
        [v("1.1", "1"), v("1.1", "0"), v("1.1", "0")],
        "one connection for three requests"
    );
    assert_eq!(
        curl_versions(&plain.url, &["--http2-prior-knowledge"], &paths[..1]),
        [v("2", "1")]
    );
    // (curl 7.88 cannot reuse an HTTP/2 connection for a second URL: reqwest does it here.)
    let _ = rustls::crypto::ring::default_provider().install_default();
    let h2 = reqwest::Client::builder()
        .tls_certs_only([])
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let answers = futures::future::join_all(
        paths
            .iter()
            .map(|p| h2.get(format!("{}{p}", plain.url)).send()),
    )
    .await;
    for a in answers {
        let a = a.unwrap();
        assert_eq!(
            (a.status().as_u16(), a.version()),
            (200, reqwest::Version::HTTP_2)
        );
    }

    let tls_dir = dir.path().join("tls");
    std::fs::create_dir_all(&tls_dir).unwrap();
    let (ca, cert, key) = test_certs(&tls_dir);
    let secure = Server::start(&write_config(
        &tls_dir,
        &format!("tls:\n  cert: {}\n  key: {}", cert.display(), key.display()),
    ));
    assert!(secure.url.starts_with("https://"), "{}", secure.url);
    let ca_arg = ca.display().to_string();
    assert_eq!(
        curl_versions(&secure.url, &["--http2", "--cacert", &ca_arg], &paths[..1]),
        [v("2", "1")]
    );
    assert_eq!(
        curl_versions(&secure.url, &["--http1.1", "--cacert", &ca_arg], &paths),
        [v("1.1", "1"), v("1.1", "0"), v("1.1", "0")]
    );
    let pem = reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap();
    let alpn = reqwest::Client::builder()
        .tls_certs_only([pem])
        .build()
        .unwrap();
    for p in paths {
        let a = alpn.get(format!("{}{p}", secure.url)).send().await.unwrap();
        assert_eq!(
            (a.status().as_u16(), a.version()),
            (200, reqwest::Version::HTTP_2)
        );
    }
}
