//! The MCP server as an agent meets it: a session driven by the official MCP Python SDK client
//! (`mcp_session.py`, PyPI `mcp` from `scripts/setup.sh`), over stdio (`warden mcp`) and over
//! streamable HTTP (`/mcp`), against a real server that needs tokens: a pytest job at a commit,
//! its failing test, log and artifact, and every bad argument a tool error. And the perimeter
//! of `/mcp`: no token, no session; a rebound name is not the trusted local caller.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use warden_api::CreateTokenRequest;
use warden_client::Client;

use crate::support::{Server, WARDEN, create_admin_token, git, write_untrusted_config};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A small project with a test suite; the second commit breaks one test.
pub fn project(parent: &Path) -> (PathBuf, String, String) {
    let repo = parent.join("greet");
    std::fs::create_dir_all(repo.join("tests")).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(
        repo.join("greet.py"),
        "def hello(name):\n    return f\"Hello, {name}!\"\n\n\ndef shout(name):\n    return hello(name).upper()\n",
    )
    .unwrap();
    std::fs::write(
        repo.join("tests/test_greet.py"),
        "from greet import hello, shout\n\n\ndef test_hello():\n    assert hello(\"ann\") == \"Hello, ann!\"\n\n\ndef test_shout():\n    assert shout(\"ann\") == \"HELLO, ANN!\"\n",
    )
    .unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "greet"]);
    let good = git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    std::fs::write(
        repo.join("greet.py"),
        "def hello(name):\n    return f\"Hello, {name}!\"\n\n\ndef shout(name):\n    return hello(name).lower()\n",
    )
    .unwrap();
    git(&repo, &["commit", "-qam", "shout quietly"]);
    let bad = git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    (repo, good, bad)
}

const PYTEST: &str = r#"/usr/bin/python3 -B -m pytest -p no:cacheprovider -q tests --junitxml="$ARTIFACT_DIR/junit.xml"
rc=$?
printf 'PK\003\004\000\001binary' > "$ARTIFACT_DIR/blob.bin"
exit $rc"#;

/// A server that trusts no one, with the project, its pytest job type and `more_types` (YAML
/// under `job_types:`); and a token of the `agents` tenant that may submit, read and cancel,
/// in a file.
pub async fn agent_server(
    dir: &Path,
    more_types: &str,
) -> (Server, PathBuf, String, String, String) {
    let (repo, good, bad) = project(dir);
    let script: String = PYTEST.lines().map(|l| format!("        {l}\n")).collect();
    let config = write_untrusted_config(
        dir,
        &format!(
            "repos:\n  greet: {{url: \"{}\"}}\ntenants:\n  ops: {{}}\n  agents: {{}}\n\
             job_types:\n  pytest:\n    argv:\n      - /bin/sh\n      - -c\n      - |\n{script}\
             \x20   requires_repo: true\n    allowed_params: [PYTEST_ARGS]\n    timeout_s: 120\n\
             \x20   results: {{junit: [\"$ARTIFACT_DIR/junit.xml\"]}}\n{more_types}",
            repo.display()
        ),
    );
    let server = Server::start(&config);
    let admin = create_admin_token(dir, &config);
    let admin = Client::new(&server.url, std::time::Duration::from_secs(30), Some(admin)).unwrap();
    let token = admin
        .create_token(&CreateTokenRequest {
            tenant: "agents".into(),
            scopes: vec!["submit".into(), "read".into(), "cancel".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .token;
    let token_file = dir.join("agent.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    (server, token_file, token, good, bad)
}

fn python() -> PathBuf {
    let py = root().join("target/pytools/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run scripts/setup.sh (it installs the MCP Python SDK)",
        py.display()
    );
    py
}

fn session(args: &[&str]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/mcp_session.py");
    let out = Command::new(python())
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the MCP session failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// What both transports must have shown the agent.
fn assert_session(seen: &Value, bad_sha: &str) {
    assert_eq!(seen["server"], "warden");
    assert!(seen["instructions"].as_str().unwrap().contains("read-only"));
    let tools: Vec<&str> = seen["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tools, warden_server::mcp::TOOL_NAMES);
    assert!(
        seen["submit_description"]
            .as_str()
            .unwrap()
            .contains("never modify, commit to or push")
    );
    let schema = &seen["job_types"]["pytest"];
    assert_eq!(schema["properties"]["PYTEST_ARGS"]["type"], "string");
    assert_eq!(schema["additionalProperties"], false);

    // The job ran at the commit asked for, and its broken test leads the results.
    assert_eq!(seen["sha"], bad_sha);
    assert_eq!(seen["finished"], true);
    assert_eq!(seen["status"], "failed", "{seen}");
    let tests = seen["tests"].as_array().unwrap();
    assert_eq!(
        tests[0],
        serde_json::json!(["test_shout", "failed"]),
        "{seen}"
    );
    assert!(tests.contains(&serde_json::json!(["test_hello", "passed"])));
    assert_eq!(seen["counts"]["failed"], 1, "{seen}");
    assert_eq!(seen["counts"]["passed"], 1, "{seen}");
    let tail = seen["log_tail"].as_str().unwrap();
    assert!(tail.contains("1 failed, 1 passed"), "{tail:?}");
    assert!(tail.lines().count() <= 3, "{tail:?}");
    let range = seen["log_range"].as_array().unwrap();
    assert_eq!(range[1], range[2], "a tail ends at the stream's end");
    assert_eq!(
        seen["artifacts"],
        serde_json::json!(["artifact.json", "blob.bin", "junit.xml"]),
        "{seen}"
    );
    assert!(seen["junit"].as_str().unwrap().contains("test_shout"));
    let cut = &seen["junit_cut"];
    assert_eq!(cut[0].as_str().unwrap().len(), 10);
    assert_eq!(cut[1], true);
    assert!(cut[2].as_u64().unwrap() > 10);

    // Every bad argument: a tool error with warden's code, and the session carried on.
    let bad = &seen["bad"];
    let code = |k: &str| bad[k]["code"].as_str().unwrap_or_default().to_string();
    for k in [
        "missing_field",
        "unknown_field",
        "wrong_type",
        "zero_wait",
        "bad_stream",
        "offset_and_tail",
        "huge_read",
        "bad_status",
    ] {
        assert_eq!(code(k), "invalid_arguments", "{k}: {}", bad[k]);
    }
    assert!(
        bad["unknown_field"]["message"]
            .as_str()
            .unwrap()
            .contains("shell")
    );
    assert_eq!(code("bad_id"), "invalid_job_id");
    assert_eq!(code("unknown_job"), "job_not_found");
    for k in ["escape", "dot_dot", "sneaky"] {
        assert_eq!(code(k), "invalid_path", "{k}: {}", bad[k]);
    }
    assert_eq!(code("binary"), "binary_artifact");
    assert!(
        bad["binary"]["message"]
            .as_str()
            .unwrap()
            .contains("12 bytes")
    );
    assert_eq!(code("missing_file"), "artifact_not_found");
    assert_eq!(code("unknown_type"), "unknown_job_type");
    assert_eq!(code("bad_param"), "unknown_param", "{}", bad["bad_param"]);
    assert_eq!(code("bad_sha"), "invalid_request", "{}", bad["bad_sha"]);
    assert!(
        bad["bad_sha"]["message"]
            .as_str()
            .unwrap()
            .contains("full commit id")
    );
    assert_eq!(code("finished"), "job_finished");
    assert!(
        seen["unknown_tool"]
            .as_str()
            .unwrap()
            .contains("no tool \"push_to_main\""),
        "{}",
        seen["unknown_tool"]
    );
    assert_eq!(seen["still_up"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_runs_tests_at_a_commit_over_stdio_and_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let (server, token_file, token, _good, bad) = agent_server(dir.path(), "").await;

    let seen = session(&[
        "stdio",
        WARDEN,
        &server.url,
        token_file.to_str().unwrap(),
        &bad,
    ]);
    assert_session(&seen, &bad);

    let seen = session(&["http", &format!("{}/mcp", server.url), &token, &bad]);
    assert_session(&seen, &bad);
}

#[tokio::test]
async fn mcp_over_http_needs_a_token_and_a_rebound_name_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _token_file, _token, _good, _bad) = agent_server(dir.path(), "").await;
    let init = serde_json::json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "curl", "version": "1"}}
    });
    let http = crate::support::http();
    let resp = http
        .post(format!("{}/mcp", server.url))
        .header("accept", "application/json, text/event-stream")
        .json(&init)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthenticated");

    // A server that trusts loopback callers without a token trusts them only when they name
    // the loopback: a page on a name rebound to 127.0.0.1 is refused, on every route.
    let trusting = tempfile::tempdir().unwrap();
    let config = crate::support::write_config(trusting.path(), "");
    let local = Server::start(&config);
    let port = local.url.rsplit(':').next().unwrap().to_string();
    for path in ["/mcp", "/jobs"] {
        let resp = http
            .post(format!("{}{path}", local.url))
            .header("host", format!("rebound.example:{port}"))
            .header("origin", format!("http://rebound.example:{port}"))
            .header("accept", "application/json, text/event-stream")
            .json(&init)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{path}");
        let body: Value = resp.json().await.unwrap();
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("addressed to localhost"),
            "{body}"
        );
    }
    let resp = http
        .post(format!("{}/mcp", local.url))
        .header("accept", "application/json, text/event-stream")
        .json(&init)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    let resp = http
        .get(format!("{}/jobs", local.url))
        .header("host", format!("localhost:{port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// `warden tools bundle`: the server's job types and the control tools as OpenAI-compatible
/// function specs, in a file named by its SHA-256; the same server and version, the same file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_bundle_is_content_addressed_and_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let (server, token_file, _token, _good, _bad) = agent_server(dir.path(), "").await;
    let out = dir.path().join("bundles");
    let bundle = |version: &str| {
        Command::new(WARDEN)
            .args(["tools", "bundle", "--out"])
            .arg(&out)
            .args([
                "--version",
                version,
                "--server",
                &server.url,
                "--token-file",
            ])
            .arg(&token_file)
            .output()
            .unwrap()
    };
    let first = bundle("2026.12");
    let stdout = String::from_utf8_lossy(&first.stdout).into_owned();
    assert!(
        first.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let path = PathBuf::from(stdout.lines().next().unwrap());
    let bytes = std::fs::read(&path).unwrap();
    let digest = {
        use sha2::Digest;
        sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    assert_eq!(
        path.file_name().unwrap().to_str().unwrap(),
        format!("warden-tools-2026.12-{digest}.json")
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o444, "a bundle is not edited after it is written");
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["format"], "warden.tool-bundle/v1");
    let names: Vec<&str> = v["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            assert_eq!(t["type"], "function");
            t["function"]["name"].as_str().unwrap()
        })
        .collect();
    assert!(names.starts_with(warden_server::mcp::TOOL_NAMES));
    assert_eq!(names.last(), Some(&"run_pytest"));

    // Again: the same bytes, the same file, left as it was.
    let again = bundle("2026.12");
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("(unchanged)"));
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
    // A bad version is the caller's mistake, and writes nothing.
    let bad = bundle("../x");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("version"));
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
}

/// A job type's `tool_bundle`: the job reads it at /run/warden/tools.json, named by
/// `AGENT_TOOL_SPEC` (or its `tool_env_var`), and cannot change it; a bundle that is not there
/// ends the job `error` before it runs; a bad setting is refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_gets_its_tool_bundle_read_only() {
    use warden_api::{JobStatus, SubmitJobRequest};
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("tools.json");
    std::fs::write(&bundle, "{\"format\": \"warden.tool-bundle/v1\"}\n").unwrap();
    let script = r#"cat "$AGENT_TOOL_SPEC"; echo "at=$AGENT_TOOL_SPEC"; if (echo x >> "$AGENT_TOOL_SPEC") 2>/dev/null; then echo WROTE; else echo READONLY; fi; echo "custom=$MY_TOOLS""#;
    let config = crate::support::write_config_with(
        dir.path(),
        &format!(
            "job_types:\n  agent:\n    argv: [\"/bin/sh\", \"-c\", {script:?}]\n    timeout_s: 30\n    tool_bundle: {b}\n  \
             custom:\n    argv: [\"/bin/sh\", \"-c\", {script:?}]\n    timeout_s: 30\n    tool_bundle: {b}\n    tool_env_var: MY_TOOLS\n  \
             missing:\n    argv: [\"/bin/true\"]\n    timeout_s: 30\n    tool_bundle: {gone}\n",
            b = bundle.display(),
            gone = dir.path().join("gone.json").display()
        ),
    );
    let server = Server::start(&config);
    let c = server.client();
    let run = |t: &'static str| {
        let c = c.clone();
        async move {
            let id = c
                .submit(&SubmitJobRequest {
                    job_type: t.into(),
                    ..SubmitJobRequest::default()
                })
                .await
                .unwrap()
                .job_id;
            let job = crate::support::wait_terminal(&c, &id).await;
            let out =
                String::from_utf8_lossy(&c.logs_raw(&id, "stdout", 0).await.unwrap()).into_owned();
            (job, out)
        }
    };
    let (job, out) = run("agent").await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    assert!(
        out.starts_with("{\"format\": \"warden.tool-bundle/v1\"}\n"),
        "{out}"
    );
    assert!(out.contains("at=/run/warden/tools.json\n"), "{out}");
    assert!(out.contains("READONLY\n"), "{out}");
    assert!(out.contains("custom=\n"), "{out}");
    assert_eq!(
        std::fs::read_to_string(&bundle).unwrap(),
        "{\"format\": \"warden.tool-bundle/v1\"}\n",
        "the host's file is untouched"
    );
    let (job, out) = run("custom").await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    assert!(out.contains("custom=/run/warden/tools.json\n"), "{out}");
    let (job, _) = run("missing").await;
    assert_eq!(job.status, JobStatus::Error, "{job:?}");
    assert!(
        job.reason
            .as_deref()
            .unwrap_or_default()
            .contains("tool_bundle_unavailable"),
        "{job:?}"
    );

    let reserved_var = format!("tool_bundle: {}\n    tool_env_var: PATH", bundle.display());
    for (extra, says) in [
        ("tool_bundle: tools.json", "absolute"),
        ("tool_env_var: AGENT_TOOL_SPEC", "tool_env_var"),
        (reserved_var.as_str(), "tool_env_var"),
    ] {
        let bad = crate::support::write_config_with(
            dir.path(),
            &format!(
                "job_types:\n  x:\n    argv: [\"/bin/true\"]\n    timeout_s: 30\n    {extra}\n"
            ),
        );
        let out = Command::new(WARDEN)
            .args(["serve", "--config"])
            .arg(&bad)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra}: {stderr}");
        assert!(stderr.contains(says), "{extra}: {stderr}");
    }
}

/// `tool_bundle` on submit: only a bundle the server holds (same bytes, by SHA-256) is
/// accepted; the job gets it in place of its job type's, under the variable asked for; every
/// bad combination is refused before anything is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_chooses_a_tool_bundle_the_server_knows() {
    use warden_api::{ErrorCode, JobStatus, SubmitJobRequest};
    let dir = tempfile::tempdir().unwrap();
    let known = dir.path().join("bundles");
    std::fs::create_dir_all(&known).unwrap();
    let bytes = "{\"format\": \"warden.tool-bundle/v1\", \"version\": \"7\"}\n";
    let digest = warden_worker::tool_bundles::digest(bytes.as_bytes());
    std::fs::write(known.join(format!("warden-tools-7-{digest}.json")), bytes).unwrap();
    // The caller's own copy, elsewhere: the CLI names it to the server by its hash.
    let mine = dir.path().join("mine.json");
    std::fs::write(&mine, bytes).unwrap();
    let stranger = dir.path().join("stranger.json");
    std::fs::write(&stranger, "{\"format\": \"warden.tool-bundle/v1\"}\n").unwrap();
    let own = dir.path().join("own.json");
    std::fs::write(&own, "the job type's own\n").unwrap();
    let script = r#"echo "spec=$AGENT_TOOL_SPEC mine=$MY_TOOLS"; cat /run/warden/tools.json"#;
    let config = crate::support::write_config_with(
        dir.path(),
        &format!(
            "tool_bundles: {known}\njob_types:\n  agent:\n    argv: [\"/bin/sh\", \"-c\", {script:?}]\n    \
             timeout_s: 30\n    allowed_params: [MODE]\n  typed:\n    argv: [\"/bin/sh\", \"-c\", {script:?}]\n    \
             timeout_s: 30\n    tool_bundle: {own}\n",
            known = known.display(),
            own = own.display(),
        ),
    );
    let server = Server::start(&config);
    let c = server.client();
    let cli = |args: &[&str]| {
        Command::new(WARDEN)
            .args(["job", "submit"])
            .args(args)
            .args(["--server", &server.url, "-o", "json"])
            .env_remove("WARDEN_CONFIG")
            .output()
            .unwrap()
    };
    let mine_arg = mine.display().to_string();
    let out = cli(&[
        "agent",
        "--tool-bundle",
        &mine_arg,
        "--tool-env-var",
        "MY_TOOLS",
        "--wait",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let view: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(view["status"], "succeeded", "{view}");
    assert_eq!(view["tool_bundle"], format!("sha256:{digest}"));
    assert_eq!(view["tool_env_var"], "MY_TOOLS");
    let id = view["job_id"].as_str().unwrap();
    let logs = String::from_utf8_lossy(&c.logs_raw(id, "stdout", 0).await.unwrap()).into_owned();
    assert_eq!(logs, format!("spec= mine=/run/warden/tools.json\n{bytes}"));

    // In place of the job type's own bundle, under its default variable.
    let id = c
        .submit(&SubmitJobRequest {
            job_type: "typed".into(),
            tool_bundle: Some(format!("sha256:{}", digest.to_uppercase())),
            ..SubmitJobRequest::default()
        })
        .await
        .unwrap()
        .job_id;
    let job = crate::support::wait_terminal(&c, &id).await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    let logs = String::from_utf8_lossy(&c.logs_raw(&id, "stdout", 0).await.unwrap()).into_owned();
    assert_eq!(logs, format!("spec=/run/warden/tools.json mine=\n{bytes}"));

    // A bundle the server does not hold: the CLI exits 2 with the server's reason.
    let stranger_arg = stranger.display().to_string();
    let out = cli(&["agent", "--tool-bundle", &stranger_arg]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tool_bundles"), "{stderr}");
    // A file that is not there never leaves the CLI.
    let out = cli(&["agent", "--tool-bundle", "/nonexistent/b.json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/b.json"));
    // Edited in place after it was named: no longer the bundle with that hash.
    let edited = known.join(format!("warden-tools-7-{digest}.json"));
    let before = c.list(&Default::default()).await.unwrap().jobs.len();
    for (bundle, var, code, says) in [
        (
            Some("sha256:1234"),
            None,
            ErrorCode::InvalidRequest,
            "SHA-256",
        ),
        (
            Some("../../etc/passwd"),
            None,
            ErrorCode::InvalidRequest,
            "SHA-256",
        ),
        (
            None,
            Some("MY_TOOLS"),
            ErrorCode::InvalidRequest,
            "give tool_bundle",
        ),
        (
            Some(digest.as_str()),
            Some("PATH"),
            ErrorCode::InvalidRequest,
            "tool_env_var",
        ),
        (
            Some(digest.as_str()),
            Some("MODE"),
            ErrorCode::InvalidRequest,
            "param",
        ),
        (
            Some(&"0".repeat(64)),
            None,
            ErrorCode::ToolBundleUnknown,
            "no bundle",
        ),
    ] {
        let e = c
            .submit(&SubmitJobRequest {
                job_type: "agent".into(),
                tool_bundle: bundle.map(Into::into),
                tool_env_var: var.map(Into::into),
                ..SubmitJobRequest::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(code), "{bundle:?} {var:?}: {e}");
        assert!(e.to_string().contains(says), "{bundle:?} {var:?}: {e}");
    }
    std::fs::set_permissions(&edited, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&edited, "{}").unwrap();
    let e = c
        .submit(&SubmitJobRequest {
            job_type: "agent".into(),
            tool_bundle: Some(digest.clone()),
            ..SubmitJobRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::ToolBundleUnknown), "{e}");
    assert_eq!(
        c.list(&Default::default()).await.unwrap().jobs.len(),
        before,
        "a refused submission records nothing"
    );
}
