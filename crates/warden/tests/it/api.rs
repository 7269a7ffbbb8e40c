//! The HTTP API through the router, without a socket: a real store and a real worker pool.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;
use warden_core::Config;
use warden_sandbox::{Launcher, Tier};
use warden_server::app;
use warden_store_sqlite::SqliteStore;
use warden_worker::{DataDir, SupervisedExecutor};

use crate::support::{TEST_JOB_TYPES, WARDEN};

struct TestApp {
    router: Router,
    _dir: tempfile::TempDir,
}

fn test_app() -> TestApp {
    test_app_with(TEST_JOB_TYPES)
}

/// The app on the unsafe fallback executor (no sandbox), with these job types and repos.
fn test_app_with(body: &str) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!("unsafe_fallback: true\nauth: {{loopback_trusted: true}}\n{body}");
    let config = Arc::new(Config::from_yaml_str(&yaml, "test.yaml").unwrap());
    let data = DataDir::new(dir.path());
    std::fs::create_dir_all(data.artifacts_root()).unwrap();
    std::fs::create_dir_all(data.scratch_root()).unwrap();
    let sqlite = Arc::new(SqliteStore::open(&data.database()).unwrap());
    let executor = Arc::new(SupervisedExecutor::new(
        Launcher::new(WARDEN),
        Tier::UnsafeFallback,
        warden_sandbox::Host::without_cgroups("unsafe_fallback test app"),
    ));
    let repos = Arc::new(warden_repo::Repos::open(&data.git(), &config.git).unwrap());
    let secrets: Arc<warden_worker::secrets::Secrets> = Arc::default();
    let images = Arc::new(secrets.open_images(&config, dir.path()).unwrap());
    let service =
        warden_server::serve::embedded(sqlite, executor, config, data, repos, images, secrets);
    TestApp {
        // As if called from loopback: the trusted caller of `auth.loopback_trusted`.
        router: app(Arc::new(service)).layer(axum::extract::connect_info::MockConnectInfo(
            std::net::SocketAddr::from(([127, 0, 0, 1], 40000)),
        )),
        _dir: dir,
    }
}

async fn call(
    router: &Router,
    method: &str,
    uri: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = router
        .clone()
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, json)
}

async fn post_json(router: &Router, uri: &str, body: &str) -> (StatusCode, serde_json::Value) {
    call(
        router,
        "POST",
        uri,
        Some("application/json"),
        body.as_bytes().to_vec(),
    )
    .await
}

#[tokio::test]
async fn healthz_job_types_submit_get_and_list() {
    let t = test_app();
    let (st, body) = call(&t.router, "GET", "/healthz", None, vec![]).await;
    assert_eq!(
        (st, body),
        (StatusCode::OK, serde_json::json!({"ok": true}))
    );

    let (st, types) = call(&t.router, "GET", "/job-types", None, vec![]).await;
    assert_eq!(st, StatusCode::OK);
    let echo = types["job_types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "echo")
        .unwrap();
    assert_eq!(echo["allowed_params"], serde_json::json!(["GREETING"]));

    let mut ids = Vec::new();
    for _ in 0..3 {
        let (st, sub) = post_json(&t.router, "/jobs", r#"{"job_type":"echo"}"#).await;
        assert_eq!(st, StatusCode::CREATED, "{sub}");
        assert!(matches!(
            sub["status"].as_str(),
            Some("queued" | "running" | "succeeded")
        ));
        ids.push(sub["job_id"].as_str().unwrap().to_string());
    }
    let (st, job) = call(&t.router, "GET", &format!("/jobs/{}", ids[0]), None, vec![]).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(job["job_type"], "echo");
    assert_eq!(job["tenant"], "default");

    let (_, page1) = call(&t.router, "GET", "/jobs?limit=2", None, vec![]).await;
    let got: Vec<&str> = page1["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, [ids[2].as_str(), ids[1].as_str()]);
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2) = call(
        &t.router,
        "GET",
        &format!("/jobs?limit=2&cursor={cursor}"),
        None,
        vec![],
    )
    .await;
    assert_eq!(page2["jobs"][0]["job_id"], ids[0].as_str());
    assert!(page2["next_cursor"].is_null());
    let (_, filtered) = call(&t.router, "GET", "/jobs?job_type=fail", None, vec![]).await;
    assert!(filtered["jobs"].as_array().unwrap().is_empty());
}

/// One bad request and its exact answer.
struct Bad {
    what: &'static str,
    method: &'static str,
    uri: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
    message: &'static str,
}

fn bad(
    what: &'static str,
    method: &'static str,
    uri: &str,
    body: &str,
    status: u16,
    code: &'static str,
    message: &'static str,
) -> Bad {
    Bad {
        what,
        method,
        uri: uri.to_string(),
        content_type: Some("application/json"),
        body: body.as_bytes().to_vec(),
        status,
        code,
        message,
    }
}

/// The whole error body of each kind of refusal, as a client sees it: a change of code,
/// status or wording shows up as a snapshot diff.
#[tokio::test]
async fn error_bodies_are_stable() {
    let t = test_app();
    let (_, sub) = post_json(&t.router, "/jobs", r#"{"job_type":"echo"}"#).await;
    let id = sub["job_id"].as_str().unwrap().to_string();
    let cases: Vec<(&str, &str, String, Option<&str>, &str)> = vec![
        (
            "malformed JSON",
            "POST",
            "/jobs".into(),
            Some("application/json"),
            "{",
        ),
        (
            "unknown field",
            "POST",
            "/jobs".into(),
            Some("application/json"),
            r#"{"job_type":"echo","argv":["sh"]}"#,
        ),
        (
            "unknown job type",
            "POST",
            "/jobs".into(),
            Some("application/json"),
            r#"{"job_type":"rm_rf"}"#,
        ),
        (
            "unknown param",
            "POST",
            "/jobs".into(),
            Some("application/json"),
            r#"{"job_type":"echo","params":{"LD_PRELOAD":"x"}}"#,
        ),
        (
            "repo required",
            "POST",
            "/jobs".into(),
            Some("application/json"),
            r#"{"job_type":"needs_repo"}"#,
        ),
        (
            "repository not in the allowlist",
            "POST",
            "/jobs".into(),
            Some("application/json"),
            r#"{"job_type":"needs_repo","repo_name":"r","remote_url":"https://example.invalid/r.git","sha":"abc"}"#,
        ),
        (
            "wrong content type",
            "POST",
            "/jobs".into(),
            Some("text/plain"),
            r#"{"job_type":"echo"}"#,
        ),
        ("bad job id", "GET", "/jobs/not-an-id".into(), None, ""),
        (
            "unknown query parameter",
            "GET",
            "/jobs?colour=red".into(),
            None,
            "",
        ),
        (
            "bad status filter",
            "GET",
            "/jobs?status=done".into(),
            None,
            "",
        ),
        (
            "bad log stream",
            "GET",
            format!("/jobs/{id}/logs?stream=stdin"),
            None,
            "",
        ),
        (
            "artifact path escapes",
            "GET",
            format!("/jobs/{id}/artifacts/a/../../etc"),
            None,
            "",
        ),
        ("unknown endpoint", "GET", "/nope".into(), None, ""),
        ("method not allowed", "DELETE", "/jobs".into(), None, ""),
    ];
    let mut bodies = Vec::new();
    for (what, method, uri, ct, body) in cases {
        let (status, json) = call(&t.router, method, &uri, ct, body.as_bytes().to_vec()).await;
        bodies.push(serde_json::json!({"case": what, "status": status.as_u16(), "body": json}));
    }
    insta::assert_json_snapshot!(bodies);
}

#[tokio::test]
async fn bad_api_inputs_get_exact_4xx_answers() {
    let t = test_app();
    let (_, sub) = post_json(&t.router, "/jobs", r#"{"job_type":"echo"}"#).await;
    let id = sub["job_id"].as_str().unwrap().to_string();
    let unknown_id = warden_core::JobId::new().to_string();
    let long_value = format!(
        r#"{{"job_type":"echo","params":{{"GREETING":"{}"}}}}"#,
        "x".repeat(4097)
    );
    let long_key = format!(
        r#"{{"job_type":"echo","idempotency_key":"{}"}}"#,
        "k".repeat(300)
    );
    let huge = format!(
        r#"{{"job_type":"echo","params":{{"GREETING":"{}"}}}}"#,
        "x".repeat(1_100_000)
    );
    let repo = r#""job_type":"needs_repo""#;
    let sha = "0".repeat(40);
    let cases = vec![
        bad(
            "truncated JSON",
            "POST",
            "/jobs",
            "{",
            400,
            "malformed_json",
            "malformed JSON",
        ),
        bad(
            "empty body",
            "POST",
            "/jobs",
            "",
            400,
            "malformed_json",
            "EOF",
        ),
        bad(
            "JSON array",
            "POST",
            "/jobs",
            "[]",
            422,
            "invalid_request",
            "expected struct SubmitJobRequest",
        ),
        bad(
            "missing job_type",
            "POST",
            "/jobs",
            "{}",
            422,
            "invalid_request",
            "missing field `job_type`",
        ),
        bad(
            "job_type not a string",
            "POST",
            "/jobs",
            r#"{"job_type":5}"#,
            422,
            "invalid_request",
            "invalid type",
        ),
        bad(
            "unknown job type",
            "POST",
            "/jobs",
            r#"{"job_type":"rm_rf"}"#,
            422,
            "unknown_job_type",
            "configured job types: bg_holds_stdout, binary, echo",
        ),
        bad(
            "caller tries argv",
            "POST",
            "/jobs",
            r#"{"job_type":"echo","argv":["rm","-rf","/"]}"#,
            422,
            "unknown_field",
            "unknown field `argv`",
        ),
        bad(
            "duplicate field",
            "POST",
            "/jobs",
            r#"{"job_type":"echo","job_type":"fail"}"#,
            422,
            "invalid_request",
            "duplicate field",
        ),
        bad(
            "undeclared param",
            "POST",
            "/jobs",
            r#"{"job_type":"echo","params":{"PATH":"/tmp"}}"#,
            422,
            "unknown_param",
            "not allowed for job type \"echo\" (allowed: GREETING)",
        ),
        bad(
            "lowercase param",
            "POST",
            "/jobs",
            r#"{"job_type":"echo","params":{"greeting":"x"}}"#,
            422,
            "invalid_param",
            "^[A-Z][A-Z0-9_]{0,63}$",
        ),
        bad(
            "param with NUL",
            "POST",
            "/jobs",
            r#"{"job_type":"echo","params":{"GREETING":"a\u0000b"}}"#,
            422,
            "invalid_param",
            "NUL",
        ),
        bad(
            "param too long",
            "POST",
            "/jobs",
            &long_value,
            422,
            "invalid_param",
            "4097 bytes long",
        ),
        bad(
            "param not a string",
            "POST",
            "/jobs",
            r#"{"job_type":"echo","params":{"GREETING":5}}"#,
            422,
            "invalid_request",
            "invalid type: integer",
        ),
        bad(
            "params null",
            "POST",
            "/jobs",
            r#"{"job_type":"echo","params":null}"#,
            422,
            "invalid_request",
            "invalid type: null",
        ),
        bad(
            "idempotency key too long",
            "POST",
            "/jobs",
            &long_key,
            422,
            "invalid_request",
            "at most 255 bytes",
        ),
        bad(
            "body over 1 MiB",
            "POST",
            "/jobs",
            &huge,
            413,
            "payload_too_large",
            "larger than 1048576 bytes",
        ),
        Bad {
            content_type: Some("text/plain"),
            ..bad(
                "wrong content type",
                "POST",
                "/jobs",
                r#"{"job_type":"echo"}"#,
                415,
                "unsupported_media_type",
                "send application/json",
            )
        },
        bad(
            "repo job without repo",
            "POST",
            "/jobs",
            &format!("{{{repo}}}"),
            422,
            "repo_required",
            "needs repo_name",
        ),
        bad(
            "repo not allowlisted",
            "POST",
            "/jobs",
            &format!(r#"{{{repo},"repo_name":"evil","sha":"{sha}"}}"#),
            422,
            "repo_not_allowed",
            "repository \"evil\" is not in the server's repos allowlist",
        ),
        bad(
            "remote_url mismatch",
            "POST",
            "/jobs",
            &format!(
                r#"{{{repo},"repo_name":"demo","remote_url":"https://evil.invalid/demo.git","sha":"{sha}"}}"#
            ),
            422,
            "repo_not_allowed",
            "does not match the allowlisted URL",
        ),
        bad(
            "short sha",
            "POST",
            "/jobs",
            &format!(r#"{{{repo},"repo_name":"demo","sha":"abc123"}}"#),
            422,
            "invalid_request",
            "full commit id",
        ),
        bad(
            "repo job without sha",
            "POST",
            "/jobs",
            &format!(r#"{{{repo},"repo_name":"demo"}}"#),
            422,
            "invalid_request",
            "needs sha",
        ),
        bad(
            "bad job id",
            "GET",
            "/jobs/not-a-uuid",
            "",
            400,
            "invalid_job_id",
            "invalid job id",
        ),
        bad(
            "unknown job id",
            "GET",
            &format!("/jobs/{unknown_id}"),
            "",
            404,
            "job_not_found",
            "not found",
        ),
        bad(
            "cancel bad id",
            "POST",
            "/jobs/%2e%2e/cancel",
            "",
            400,
            "invalid_job_id",
            "invalid job id",
        ),
        bad(
            "cancel unknown job",
            "POST",
            &format!("/jobs/{unknown_id}/cancel"),
            "",
            404,
            "job_not_found",
            "not found",
        ),
        bad(
            "list bad status",
            "GET",
            "/jobs?status=done",
            "",
            400,
            "invalid_query",
            "one of: queued, running",
        ),
        bad(
            "list limit zero",
            "GET",
            "/jobs?limit=0",
            "",
            400,
            "invalid_query",
            "from 1 to 500",
        ),
        bad(
            "list limit not a number",
            "GET",
            "/jobs?limit=ten",
            "",
            400,
            "invalid_query",
            "from 1 to 500",
        ),
        bad(
            "list bad cursor",
            "GET",
            "/jobs?cursor=page2",
            "",
            400,
            "invalid_query",
            "not a cursor",
        ),
        bad(
            "list unknown parameter",
            "GET",
            "/jobs?sort=asc",
            "",
            400,
            "invalid_query",
            "unknown query parameter \"sort\"",
        ),
        bad(
            "list repeated parameter",
            "GET",
            "/jobs?limit=1&limit=2",
            "",
            400,
            "invalid_query",
            "given twice",
        ),
        bad(
            "logs bad stream",
            "GET",
            &format!("/jobs/{id}/logs?stream=stdin"),
            "",
            400,
            "invalid_query",
            "stdout or stderr",
        ),
        bad(
            "logs negative tail",
            "GET",
            &format!("/jobs/{id}/logs?tail=-1"),
            "",
            400,
            "invalid_query",
            "tail=\"-1\" is invalid",
        ),
        bad(
            "logs bad follow",
            "GET",
            &format!("/jobs/{id}/logs?follow=maybe"),
            "",
            400,
            "invalid_query",
            "true or false",
        ),
        bad(
            "logs bad format",
            "GET",
            &format!("/jobs/{id}/logs?format=xml"),
            "",
            400,
            "invalid_query",
            "json or raw",
        ),
        bad(
            "logs of unknown job",
            "GET",
            &format!("/jobs/{unknown_id}/logs"),
            "",
            404,
            "job_not_found",
            "not found",
        ),
        bad(
            "artifact traversal",
            "GET",
            &format!("/jobs/{id}/artifacts/..%2F..%2Fwarden.db"),
            "",
            400,
            "invalid_path",
            "may not contain '..'",
        ),
        bad(
            "artifacts of bad id",
            "GET",
            "/jobs/x/artifacts",
            "",
            400,
            "invalid_job_id",
            "invalid job id",
        ),
        bad(
            "unknown endpoint",
            "GET",
            "/admin",
            "",
            404,
            "not_found",
            "no such endpoint",
        ),
        bad(
            "wrong method",
            "DELETE",
            "/jobs",
            "",
            405,
            "method_not_allowed",
            "method not allowed",
        ),
    ];
    assert!(cases.len() >= 30);
    for case in cases {
        let (st, body) = call(
            &t.router,
            case.method,
            &case.uri,
            case.content_type,
            case.body,
        )
        .await;
        assert_eq!(st.as_u16(), case.status, "{}: {body}", case.what);
        assert_eq!(body["error"]["code"], case.code, "{}: {body}", case.what);
        let message = body["error"]["message"].as_str().unwrap_or("");
        assert!(
            message.contains(case.message),
            "{}: {message:?} lacks {:?}",
            case.what,
            case.message
        );
    }
    // Nothing the bad requests sent created a job.
    let (_, all) = call(&t.router, "GET", "/jobs", None, vec![]).await;
    assert_eq!(all["jobs"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn logs_tail_returns_the_last_lines_with_offsets() {
    let t = test_app();
    let (_, sub) = post_json(
        &t.router,
        "/jobs",
        r#"{"job_type":"echo","params":{"GREETING":"tail"}}"#,
    )
    .await;
    let id = sub["job_id"].as_str().unwrap();
    // Follow to the end through the SSE endpoint: its body ends when the job does.
    let req = Request::get(format!("/jobs/{id}/logs?follow=true"))
        .body(Body::empty())
        .unwrap();
    let resp = t.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(text.contains("event: log\n"), "{text}");
    assert!(text.contains("\"text\":\"hello tail\\n\""), "{text}");
    assert!(text.contains("event: end\n"), "{text}");
    assert!(text.contains("\"status\":\"succeeded\""), "{text}");

    let (st, logs) = call(
        &t.router,
        "GET",
        &format!("/jobs/{id}/logs?tail=1"),
        None,
        vec![],
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(logs["lines"], serde_json::json!(["hello tail"]));
    assert_eq!(logs["offset"], 0);
    assert_eq!(logs["next_offset"], 11);
    // Resume past the end: only the end event.
    let req = Request::get(format!("/jobs/{id}/logs?follow=true&offset=11"))
        .body(Body::empty())
        .unwrap();
    let resp = t.router.clone().oneshot(req).await.unwrap();
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(!text.contains("event: log"), "{text}");
    assert!(text.contains("event: end"), "{text}");
}

/// The fallback supervisor (no sandbox) must still take the whole tree down at the deadline:
/// a `setsid` + double-fork daemon included. Its pids are host pids, checked directly.
#[tokio::test]
async fn fallback_timeout_kills_setsid_daemons_too() {
    let t = test_app();
    let (st, sub) = post_json(&t.router, "/jobs", r#"{"job_type":"tree_timeout"}"#).await;
    assert_eq!(st, StatusCode::CREATED, "{sub}");
    let id = sub["job_id"].as_str().unwrap().to_string();
    let art = std::path::PathBuf::from(sub["artifact_dir"].as_str().unwrap());
    let job = wait_terminal_json(&t.router, &id).await;
    assert_eq!(job["status"], "timed_out", "{job}");
    assert_eq!(job["unsafe_fallback"], true);
    for file in ["child.pid", "daemon.pid"] {
        let pid: i32 = std::fs::read_to_string(art.join(file))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
        let alive = stat.is_ok_and(|s| s.contains("(sleep)") && !s.contains(") Z "));
        assert!(!alive, "{file} {pid} survived the job");
    }
}

/// Submits `body` (it must be accepted) and returns the job once it has ended.
async fn submit_and_wait(router: &Router, body: &str) -> serde_json::Value {
    let (st, sub) = post_json(router, "/jobs", body).await;
    assert_eq!(st, StatusCode::CREATED, "{sub}");
    wait_terminal_json(router, sub["job_id"].as_str().unwrap()).await
}

async fn wait_terminal_json(router: &Router, id: &str) -> serde_json::Value {
    for _ in 0..1000 {
        let (_, job) = call(router, "GET", &format!("/jobs/{id}"), None, vec![]).await;
        if !matches!(job["status"].as_str(), Some("queued" | "running")) {
            return job;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("job {id} did not end");
}

/// Without the sandbox nothing stops a job writing to its tree: `read_only_ok` says so, and the
/// proof still catches the write.
#[tokio::test]
async fn unsafe_fallback_repo_jobs_record_no_read_only_and_writes_are_still_caught() {
    let src = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        let ok = std::process::Command::new("git")
            .current_dir(src.path())
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    };
    git(&["init", "-q", "-b", "main"]);
    std::fs::write(src.path().join("a.txt"), "a\n").unwrap();
    git(&["add", "a.txt"]);
    git(&["commit", "-q", "-m", "a"]);
    let t = test_app_with(&format!(
        "repos:\n  r: {{url: \"{}\"}}\njob_types:\n  read:\n    argv: [\"/bin/cat\", \"a.txt\"]\n    requires_repo: true\n    timeout_s: 30\n  write:\n    argv: [\"/bin/sh\", \"-c\", \"echo changed > a.txt\"]\n    requires_repo: true\n    timeout_s: 30\n",
        src.path().display()
    ));
    let read = r#"{"job_type":"read","repo_name":"r","ref":"main"}"#;
    let job = submit_and_wait(&t.router, read).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["invariants"]["read_only_ok"], false);
    assert_eq!(job["invariants"]["clean_tree_ok"], true);
    assert_eq!(job["unsafe_fallback"], true);

    let job = submit_and_wait(
        &t.router,
        r#"{"job_type":"write","repo_name":"r","ref":"main"}"#,
    )
    .await;
    assert_eq!(job["status"], "mutation_detected", "{job}");
    assert_eq!(job["exit_code"], 0);
    assert_eq!(
        job["invariants"]["changed_paths"],
        serde_json::json!(["a.txt"])
    );
    // The next job gets a fresh tree, not the written one.
    let job = submit_and_wait(&t.router, read).await;
    let id = job["job_id"].as_str().unwrap();
    assert_eq!(job["status"], "succeeded", "{job}");
    let (_, logs) = call(
        &t.router,
        "GET",
        &format!("/jobs/{id}/logs?stream=stdout&tail=10"),
        None,
        vec![],
    )
    .await;
    assert_eq!(logs["lines"], serde_json::json!(["a"]), "{logs}");
}

/// The gRPC JobService: the same service layer, its own wire rules.
#[tokio::test]
async fn grpc_job_service_watches_streams_and_refuses_garbage() {
    use warden_proto::pb;
    let dir = tempfile::tempdir().unwrap();
    let server = crate::support::Server::start(&crate::support::write_config(dir.path(), ""));
    let mut jobs = pb::job_service_client::JobServiceClient::connect(server.grpc.clone())
        .await
        .unwrap();
    let submitted = jobs
        .submit_job(pb::SubmitJobRequest {
            job_type: "echo".into(),
            params: [("GREETING".to_string(), "rpc".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(submitted.created);
    let id = submitted.job.unwrap().job_id;
    // WatchJob: the job now, then every change, ending at the terminal state.
    let mut watch = jobs
        .watch_job(pb::WatchJobRequest { job_id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while let Some(j) = watch.message().await.unwrap() {
        seen.push(j.status);
    }
    assert_eq!(
        seen.last(),
        Some(&(pb::JobStatus::Succeeded as i32)),
        "{seen:?}"
    );
    // StreamJobLogs resumes from an offset: "hello rpc\n" from byte 6.
    let mut logs = jobs
        .stream_job_logs(pb::StreamJobLogsRequest {
            job_id: id.clone(),
            stream: pb::LogStream::Stdout as i32,
            offset: 6,
            follow: true,
        })
        .await
        .unwrap()
        .into_inner();
    let (mut bytes, mut end) = (Vec::new(), None);
    while let Some(c) = logs.message().await.unwrap() {
        if c.end {
            end = Some(c);
        } else {
            assert_eq!(c.offset, 6 + bytes.len() as u64);
            bytes.extend_from_slice(&c.data);
        }
    }
    assert_eq!(bytes, b"rpc\n");
    let end = end.expect("a followed stream ends with an end marker");
    assert_eq!(
        (end.offset, end.status),
        (10, pb::JobStatus::Succeeded as i32)
    );
    // Garbage gets INVALID_ARGUMENT / NOT_FOUND with warden's error code, never INTERNAL.
    let code = |s: &tonic::Status| {
        s.metadata()
            .get("warden-error-code")
            .map(|v| v.to_str().unwrap().to_string())
    };
    let bad_stream = jobs
        .stream_job_logs(pb::StreamJobLogsRequest {
            job_id: id.clone(),
            stream: 0,
            offset: 0,
            follow: false,
        })
        .await
        .unwrap_err();
    assert_eq!(bad_stream.code(), tonic::Code::InvalidArgument);
    let bad_id = jobs
        .get_job(pb::GetJobRequest {
            job_id: "../x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_id.code(), tonic::Code::InvalidArgument);
    assert_eq!(code(&bad_id).as_deref(), Some("invalid_job_id"));
    let missing = jobs
        .get_job(pb::GetJobRequest {
            job_id: "01a20f6b-5fa2-70a5-b3b0-ef6ce0f83903".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    assert_eq!(code(&missing).as_deref(), Some("job_not_found"));
    let too_many = jobs
        .list_jobs(pb::ListJobsRequest {
            limit: 501,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), tonic::Code::InvalidArgument);
    let unknown = jobs
        .submit_job(pb::SubmitJobRequest {
            job_type: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code(&unknown).as_deref(), Some("unknown_job_type"));
    let finished = jobs
        .cancel_job(pb::CancelJobRequest { job_id: id })
        .await
        .unwrap_err();
    assert_eq!(finished.code(), tonic::Code::FailedPrecondition);
    assert_eq!(code(&finished).as_deref(), Some("job_finished"));
}

/// The fallback path starts jobs with a fresh signal state too: a cancelled job's SIGTERM
/// handler runs (it used to inherit the supervisor's blocked SIGTERM and ignored SIGPIPE).
#[tokio::test]
async fn fallback_jobs_get_their_sigterm_and_a_quiet_sigpipe() {
    let t = test_app_with(
        "job_types:\n  graceful:\n    argv: [\"/bin/sh\", \"-c\", \"trap 'echo handled > \\\"$ARTIFACT_DIR/term\\\"; exit 0' TERM; echo ready; while :; do sleep 0.05; done\"]\n    timeout_s: 60\n  pipe:\n    argv: [\"/bin/sh\", \"-c\", \"yes | head -1\"]\n    timeout_s: 30\n",
    );
    let (st, sub) = post_json(&t.router, "/jobs", r#"{"job_type":"graceful"}"#).await;
    assert_eq!(st, StatusCode::CREATED, "{sub}");
    let id = sub["job_id"].as_str().unwrap().to_string();
    let art = std::path::PathBuf::from(sub["artifact_dir"].as_str().unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, job) = call(&t.router, "GET", &format!("/jobs/{id}"), None, vec![]).await;
        if job["stdout_bytes"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{job}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (st, _) = post_json(&t.router, &format!("/jobs/{id}/cancel"), "").await;
    assert_eq!(st, StatusCode::ACCEPTED);
    let job = wait_terminal_json(&t.router, &id).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    assert_eq!(
        std::fs::read_to_string(art.join("term")).ok().as_deref(),
        Some("handled\n"),
        "the job's SIGTERM handler never ran"
    );
    let pipe = submit_and_wait(&t.router, r#"{"job_type":"pipe"}"#).await;
    assert_eq!(pipe["status"], "succeeded", "{pipe}");
    assert_eq!(pipe["stderr_bytes"], 0, "{pipe}");
}
