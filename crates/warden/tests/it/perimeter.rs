//! The perimeter through the real server: tokens and scopes, tenants and their quotas, fair
//! share under a flood, rate limits, the audit trail, and secrets that never reach a log.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use warden_api::{CreateTokenRequest, ErrorCode, JobStatus, SubmitJobRequest};
use warden_client::{AuditQuery, Client, ClientError};

use crate::support::{Server, WARDEN, test_uid, wait_terminal};

const SECRET: &str = "Wd+s3cret/Value=42?&x";

/// A server that trusts no one on loopback, with tenants, a secret and job types of its own.
fn perimeter_server(dir: &Path, extra: &str) -> (Server, PathBuf) {
    let secret = dir.join("api_key");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = dir.join("warden.yaml");
    let text = format!(
        r#"listen: 127.0.0.1:0
grpc_listen: 127.0.0.1:0
data_dir: {data}
slots: 2
sandbox_uid: {uid}
sandbox_gid: {uid}
cancel_grace_s: 1
shutdown_grace_s: 1
{extra}
secrets:
  API_KEY: {{file: {secret}}}
tenants:
  ops: {{}}
  team-a: {{weight: 1}}
  team-b: {{weight: 1}}
  capped: {{max_queued: 2, job_types: [sleeper]}}
  narrow: {{job_types: [noop]}}
  scripted: {{inline: {{job_type: shell}}}}
job_types:
  shell:
    argv: ["/bin/false"]
    timeout_s: 30
    limits: {{pids: 64}}
  noop:
    argv: ["/bin/true"]
    timeout_s: 30
  sleeper:
    argv: ["/bin/sleep", "1000"]
    timeout_s: 600
  leak:
    argv: ["/bin/sh", "-c", {leak:?}]
    timeout_s: 60
    secrets: [API_KEY]
    secret_env: {{API_TOKEN: API_KEY}}
"#,
        data = dir.join("data").display(),
        uid = test_uid(),
        secret = secret.display(),
        leak = LEAK_SCRIPT,
    );
    std::fs::write(&config, text).unwrap();
    (Server::start(&config), config)
}

/// Prints the secret in ten ways, on both streams and into an artifact.
const LEAK_SCRIPT: &str = r#"set -e
v=$(cat /run/secrets/API_KEY)
echo "raw: $v"
echo "env: $API_TOKEN" >&2
printf '%s\n' "$v" | fold -w1 | while IFS= read -r c; do printf '%s' "$c"; done; echo
printf '%s' "$v" | base64 -w0; echo
printf 'user:%s' "$v" | base64 -w0; echo
python3 -c 'import base64,os; print(base64.urlsafe_b64encode(os.environ["API_TOKEN"].encode()).decode())'
python3 -c 'import urllib.parse,os; print(urllib.parse.quote(os.environ["API_TOKEN"], safe=""))'
python3 -c 'import os; print("".join(c if c.isalnum() or c in "-._~" else "%%%02x" % ord(c) for c in os.environ["API_TOKEN"]))'
python3 -c 'import urllib.parse,os; print("q=" + urllib.parse.quote_plus(os.environ["API_TOKEN"]))'
echo "$v$v" > "$ARTIFACT_DIR/copy.txt"; cat "$ARTIFACT_DIR/copy.txt"
stat -c '%a %u' /run/secrets/API_KEY
if (echo x > /run/secrets/API_KEY) 2>/dev/null; then echo WROTE; fi
if touch /run/secrets/new 2>/dev/null; then echo CREATED; fi
"#;

/// The first admin token, made on the server's host with the CLI (the server trusts no one).
fn bootstrap_admin(dir: &Path, config: &Path) -> String {
    let token = crate::support::create_admin_token(dir, config);
    let mode = std::fs::metadata(dir.join("admin.token"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    token
}

fn client(server: &Server, token: &str) -> Client {
    Client::new(
        &server.url,
        Duration::from_secs(30),
        Some(token.to_string()),
    )
    .unwrap()
}

async fn token(admin: &Client, tenant: &str, scopes: &[&str]) -> String {
    admin
        .create_token(&CreateTokenRequest {
            tenant: tenant.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .token
}

fn job(t: &str) -> SubmitJobRequest {
    SubmitJobRequest {
        job_type: t.into(),
        ..Default::default()
    }
}

fn code(e: ClientError) -> (u16, ErrorCode) {
    match e {
        ClientError::Api { status, code, .. } => (status, code),
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_scopes_and_tenants_decide_who_sees_what() {
    let dir = tempfile::tempdir().unwrap();
    let (server, config) = perimeter_server(dir.path(), "");
    // Nobody is trusted: no token, no answer (not even the job types).
    let anonymous = Client::new(&server.url, Duration::from_secs(10), None).unwrap();
    assert_eq!(
        code(anonymous.job_types().await.unwrap_err()),
        (401, ErrorCode::Unauthenticated)
    );
    let admin = client(&server, &bootstrap_admin(dir.path(), &config));
    assert_eq!(admin.whoami().await.unwrap().tenant, "ops");

    let a_submit = client(&server, &token(&admin, "team-a", &["submit", "read"]).await);
    let a_read = client(&server, &token(&admin, "team-a", &["read"]).await);
    let b_all = client(
        &server,
        &token(&admin, "team-b", &["submit", "read", "cancel"]).await,
    );
    let narrow = client(&server, &token(&admin, "narrow", &["submit", "read"]).await);

    let a_job = a_submit.submit(&job("sleeper")).await.unwrap().job_id;
    assert_eq!(a_read.get(&a_job).await.unwrap().tenant, "team-a");
    // Scopes: read cannot submit; submit+read cannot cancel.
    assert_eq!(
        code(a_read.submit(&job("noop")).await.unwrap_err()),
        (403, ErrorCode::Forbidden)
    );
    assert_eq!(
        code(a_submit.cancel(&a_job).await.unwrap_err()),
        (403, ErrorCode::Forbidden)
    );
    // Another tenant's job does not exist for team-b: 404 everywhere, never 403.
    for result in [
        b_all.get(&a_job).await.map(drop),
        b_all.cancel(&a_job).await.map(drop),
        b_all.logs(&a_job, "stdout", 10).await.map(drop),
        b_all.artifacts(&a_job).await.map(drop),
    ] {
        assert_eq!(code(result.unwrap_err()), (404, ErrorCode::JobNotFound));
    }
    assert!(
        b_all
            .list(&Default::default())
            .await
            .unwrap()
            .jobs
            .is_empty()
    );
    let listing = warden_client::ListQuery {
        tenant: Some("team-a".into()),
        ..Default::default()
    };
    assert_eq!(
        code(b_all.list(&listing).await.unwrap_err()),
        (403, ErrorCode::Forbidden)
    );
    // The admin sees every tenant, and may cancel anyone's job.
    assert_eq!(admin.list(&listing).await.unwrap().jobs.len(), 1);
    admin.cancel(&a_job).await.unwrap();
    // A tenant's job types and the job type list it is shown.
    assert_eq!(
        code(narrow.submit(&job("sleeper")).await.unwrap_err()),
        (403, ErrorCode::Forbidden)
    );
    let types = narrow.job_types().await.unwrap().job_types;
    assert_eq!(
        types.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ["noop"]
    );
    assert_eq!(
        code(
            narrow
                .create_token(&CreateTokenRequest::default())
                .await
                .unwrap_err()
        ),
        (403, ErrorCode::Forbidden)
    );

    // Revocation holds at once; expiry too.
    let b_token = admin
        .list_tokens(Some("team-b"))
        .await
        .unwrap()
        .tokens
        .remove(0);
    assert_eq!(b_token.revoked_at, None);
    admin.revoke_token(&b_token.id).await.unwrap();
    let refused = b_all.list(&Default::default()).await.unwrap_err();
    assert!(refused.to_string().contains("revoked"), "{refused}");
    let short = admin
        .create_token(&CreateTokenRequest {
            tenant: "team-b".into(),
            scopes: vec!["read".into()],
            expires_in_s: Some(1),
            name: Some("short-lived".into()),
        })
        .await
        .unwrap();
    let short_client = client(&server, &short.token);
    short_client.list(&Default::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let expired = short_client.list(&Default::default()).await.unwrap_err();
    assert!(expired.to_string().contains("expired"), "{expired}");

    // The store holds hashes only: no token appears in the database file.
    let db = std::fs::read(dir.path().join("data").join("warden.db")).unwrap_or_default();
    let needle = short.token.as_bytes();
    assert!(!db.windows(needle.len()).any(|w| w == needle));

    // Everything above is in the audit trail, with the refusals.
    let audit = admin
        .audit(&AuditQuery {
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap()
        .entries;
    let has = |action: &str, outcome: &str| {
        audit
            .iter()
            .any(|e| e.action == action && e.outcome == outcome)
    };
    for (action, outcome) in [
        ("submit", "ok"),
        ("cancel", "ok"),
        ("token.create", "ok"),
        ("token.revoke", "ok"),
        ("refused", "401"),
        ("refused", "403"),
        ("refused", "404"),
    ] {
        assert!(has(action, outcome), "no {action} {outcome} in {audit:#?}");
    }
    let mine = audit.iter().find(|e| e.action == "submit").unwrap();
    assert_eq!(mine.tenant.as_deref(), Some("team-a"));
    assert!(mine.client.as_deref().unwrap().starts_with("127.0.0.1:"));
    assert!(mine.token_id.is_some());
    // Non-admins cannot read it.
    assert_eq!(
        code(a_read.audit(&AuditQuery::default()).await.unwrap_err()),
        (403, ErrorCode::Forbidden)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_and_token_requests_get_clear_4xx() {
    let dir = tempfile::tempdir().unwrap();
    let (server, config) = perimeter_server(dir.path(), "");
    let admin_token = bootstrap_admin(dir.path(), &config);
    let admin = client(&server, &admin_token);
    let http = crate::support::http();
    let real = token(&admin, "team-a", &["read"]).await;
    let id = &real[4..20];
    let wrong_secret = format!("wdn_{id}_{}", "A".repeat(43));
    for (header, fragment) in [
        (None, "needs a token"),
        (
            Some("Basic dXNlcjpwYXNz".to_string()),
            "must be `Bearer <token>`",
        ),
        (Some("Bearer".to_string()), "must be `Bearer <token>`"),
        (
            Some("Bearer wdn_nothex0123456789_abc".to_string()),
            "malformed",
        ),
        (Some(format!("Bearer {}", real.to_uppercase())), "malformed"),
        (
            Some(format!("Bearer wdn_0123456789abcdef_{}", "A".repeat(43))),
            "not valid",
        ),
        (Some(format!("Bearer {wrong_secret}")), "not valid"),
    ] {
        let mut rb = http.get(format!("{}/jobs", server.url));
        if let Some(h) = &header {
            rb = rb.header("authorization", h);
        }
        let resp = rb.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{header:?}");
        assert!(resp.headers().contains_key("www-authenticate"));
        let body: serde_json::Value = resp.json().await.unwrap();
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(msg.contains(fragment), "{header:?}: {msg}");
    }
    for (body, fragment) in [
        (r#"{"tenant":"Team A","scopes":["read"]}"#, "is invalid"),
        (r#"{"tenant":"nobody","scopes":["read"]}"#, "not configured"),
        (r#"{"tenant":"team-a","scopes":["root"]}"#, "unknown scope"),
        (r#"{"tenant":"team-a","scopes":["read","read"]}"#, "twice"),
        (r#"{"tenant":"team-a","scopes":[]}"#, "at least one scope"),
        (
            r#"{"tenant":"team-a","scopes":["read"],"expires_in_s":0}"#,
            "out of range",
        ),
        (
            r#"{"tenant":"team-a","scopes":["read"],"expires_in_s":999999999999}"#,
            "out of range",
        ),
        (
            r#"{"tenant":"team-a","scopes":["read"],"name":""}"#,
            "1 to 128 bytes",
        ),
        (
            r#"{"tenant":"team-a","scopes":["read"],"owner":"x"}"#,
            "unknown field",
        ),
        (r#"{"tenant":"team-a""#, ""),
    ] {
        let resp = http
            .post(format!("{}/tokens", server.url))
            .bearer_auth(&admin_token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        assert!((400..500).contains(&status), "{body}: {status}");
        let json: serde_json::Value = resp.json().await.unwrap();
        let msg = json["error"]["message"].as_str().unwrap();
        assert!(msg.contains(fragment), "{body}: {msg}");
    }
    let resp = http
        .post(format!("{}/tokens/nope/revoke", server.url))
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    // The CLI: a bad scope or duration is exit 2 with the reason.
    for (args, fragment) in [
        (vec!["--scopes", "read,root"], "unknown scope"),
        (
            vec!["--scopes", "read", "--expires", "soon"],
            "invalid value",
        ),
    ] {
        let out = Command::new(WARDEN)
            .args([
                "token",
                "create",
                "--tenant",
                "team-a",
                "--server",
                &server.url,
            ])
            .args(&args)
            .env("WARDEN_CONFIG", dir.path().join("client-config"))
            .arg("--token-file")
            .arg(dir.path().join("admin.token"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(fragment),
            "{args:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_and_rate_limits_answer_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let (server, config) =
        perimeter_server(dir.path(), "auth: {rate_limit: {per_second: 2, burst: 10}}");
    let admin = client(&server, &bootstrap_admin(dir.path(), &config));
    let capped = client(&server, &token(&admin, "capped", &["submit", "read"]).await);
    // The first two wait (both slots may take them; then max_queued counts what is queued).
    let mut accepted = 0;
    let mut refused = None;
    for _ in 0..5 {
        match capped.submit(&job("sleeper")).await {
            Ok(_) => accepted += 1,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("max_queued: 2 refuses at some point");
    assert!(e.to_string().contains("max_queued"), "{e}");
    assert_eq!(code(e), (429, ErrorCode::QueueFull));
    // Nothing half-written: exactly the accepted jobs exist.
    let listed = capped.list(&Default::default()).await.unwrap().jobs.len();
    assert_eq!(listed, accepted);
    assert!((2..=4).contains(&accepted), "{accepted}");

    // The rate limit: burst 10, then 429 with Retry-After.
    let t = token(&admin, "team-a", &["read"]).await;
    let http = crate::support::http();
    let mut limited = None;
    for _ in 0..40 {
        let resp = http
            .get(format!("{}/jobs", server.url))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap();
        if resp.status() == 429 {
            limited = Some(resp);
            break;
        }
    }
    let resp = limited.expect("the token is rate limited");
    let after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&after), "{after}");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_printed_ten_ways_never_reaches_a_log_record_or_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (server, config) = perimeter_server(dir.path(), "");
    let admin = client(&server, &bootstrap_admin(dir.path(), &config));
    let a = client(&server, &token(&admin, "team-a", &["submit", "read"]).await);
    let id = a.submit(&job("leak")).await.unwrap().job_id;
    let done = wait_terminal(&a, &id).await;
    assert_eq!(done.status, JobStatus::Succeeded, "{done:?}");
    let stdout = String::from_utf8(a.logs_raw(&id, "stdout", 0).await.unwrap()).unwrap();
    let stderr = String::from_utf8(a.logs_raw(&id, "stderr", 0).await.unwrap()).unwrap();
    // Each way was masked, by name.
    assert_eq!(stderr.trim(), "env: [MASKED:API_KEY]");
    let masked_lines = stdout
        .lines()
        .filter(|l| l.contains("[MASKED:API_KEY]"))
        .count();
    assert!(masked_lines >= 9, "{stdout}");
    assert!(
        !stdout.contains('%'),
        "every percent-encoding is masked: {stdout}"
    );
    // The file is the job's own (uid 1000 inside), 0400, on a tmpfs it cannot write.
    assert!(stdout.lines().any(|l| l == "400 1000"), "{stdout}");
    assert!(
        !stdout.contains("WROTE") && !stdout.contains("CREATED"),
        "{stdout}"
    );

    // Nowhere the caller or the store can look holds any form of it.
    let job_json = serde_json::to_string(&a.get(&id).await.unwrap()).unwrap();
    let record = std::fs::read_to_string(
        dir.path()
            .join("data/artifacts")
            .join(&id)
            .join("artifact.json"),
    )
    .unwrap_or_default();
    let db = std::fs::read(dir.path().join("data").join("warden.db")).unwrap();
    let wal = std::fs::read(dir.path().join("data").join("warden.db-wal")).unwrap_or_default();
    let audit = serde_json::to_string(
        &admin
            .audit(&AuditQuery {
                limit: Some(1000),
                ..Default::default()
            })
            .await
            .unwrap(),
    )
    .unwrap();
    use base64::Engine;
    let forms = [
        SECRET.to_string(),
        base64::engine::general_purpose::STANDARD.encode(SECRET),
        base64::engine::general_purpose::URL_SAFE.encode(SECRET),
        "s3cret".to_string(),
    ];
    for form in &forms {
        for (what, text) in [
            ("stdout", stdout.as_bytes()),
            ("stderr", stderr.as_bytes()),
            ("job", job_json.as_bytes()),
            ("artifact.json", record.as_bytes()),
            ("audit", audit.as_bytes()),
            ("database", &db),
            ("wal", &wal),
        ] {
            let f = form.as_bytes();
            assert!(
                !text.windows(f.len()).any(|w| w == f),
                "{form:?} found in {what}"
            );
        }
    }
    // Its use is audited, by name.
    assert!(
        audit.contains("secret.use") && audit.contains("API_KEY"),
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_5000_jobs_does_not_hold_back_another_tenants_one_job() {
    let dir = tempfile::tempdir().unwrap();
    let (server, config) = perimeter_server(
        dir.path(),
        "auth: {rate_limit: {per_second: 1000000, burst: 1000000}}",
    );
    let admin = client(&server, &bootstrap_admin(dir.path(), &config));
    let a = client(&server, &token(&admin, "team-a", &["submit", "read"]).await);
    let b = client(&server, &token(&admin, "team-b", &["submit", "read"]).await);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..8 {
        let a = a.clone();
        tasks.spawn(async move {
            for _ in (w..5000).step_by(8) {
                a.submit(&job("noop")).await.unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    eprintln!("5000 submissions in {:?}", started.elapsed());
    let single = b.submit(&job("noop")).await.unwrap().job_id;
    let done = wait_terminal(&b, &single).await;
    assert_eq!(done.status, JobStatus::Succeeded);
    let (queued, b_started) = (done.created_at.clone(), done.started_at.clone().unwrap());
    // team-a's jobs that started after team-b's was queued and before it started: at most
    // one per slot (a slot already claiming when it arrived), with the millisecond clock's
    // ties on either side.
    let ahead = a_started_between(&a, &queued, &b_started).await;
    assert!(
        ahead <= 2 + 2,
        "{ahead} of team-a's jobs started between team-b's job being queued ({queued}) and \
         starting ({b_started})"
    );
    let pending = a
        .list(&warden_client::ListQuery {
            status: Some("queued".into()),
            limit: Some(500),
            ..Default::default()
        })
        .await
        .unwrap()
        .jobs
        .len();
    assert!(
        pending > 100,
        "the flood was still waiting: {pending} queued"
    );
}

/// How many of team-a's jobs started strictly between `from` and `to` (RFC 3339 in one
/// format: they compare as text).
async fn a_started_between(a: &Client, from: &str, to: &str) -> usize {
    let mut n = 0;
    let mut cursor = None;
    loop {
        let page = a
            .list(&warden_client::ListQuery {
                limit: Some(500),
                cursor: cursor.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        n += page
            .jobs
            .iter()
            .filter(|j| j.started_at.as_deref().is_some_and(|s| s > from && s < to))
            .count();
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return n,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_commands_run_under_the_policys_job_type_only_where_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let (server, config) = perimeter_server(dir.path(), "");
    let admin = client(&server, &bootstrap_admin(dir.path(), &config));
    let scripted_token = token(&admin, "scripted", &["submit", "read"]).await;
    let scripted = client(&server, &scripted_token);
    let inline = |argv: &[&str], job_type: &str| SubmitJobRequest {
        job_type: job_type.into(),
        command: argv.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    };
    let id = scripted
        .submit(&inline(
            &[
                "/bin/sh",
                "-c",
                "echo inline $(id -u) $WARDEN_JOB_ID; exit 3",
            ],
            "",
        ))
        .await
        .unwrap()
        .job_id;
    let done = wait_terminal(&scripted, &id).await;
    assert_eq!(
        (done.status, done.exit_code),
        (JobStatus::Failed, Some(3)),
        "{done:?}"
    );
    assert_eq!(done.job_type, "shell");
    assert_eq!(done.inline_argv.as_ref().unwrap()[0], "/bin/sh");
    assert!(done.enforcement.contains_key("pids"), "{done:?}");
    let out = String::from_utf8(scripted.logs_raw(&id, "stdout", 0).await.unwrap()).unwrap();
    assert_eq!(out.trim(), format!("inline 1000 {id}"));
    // The CLI: --cmd and --arg, with the record's inline line.
    let out = Command::new(WARDEN)
        .args([
            "job",
            "submit",
            "--wait",
            "--server",
            &server.url,
            "--cmd",
            "/bin/echo",
        ])
        .args(["--arg", "-n", "--arg", "from the cli"])
        .env("WARDEN_CONFIG", dir.path().join("client-config"))
        .env("WARDEN_TOKEN_FILE", {
            let f = dir.path().join("scripted.token");
            std::fs::write(&f, &scripted_token).unwrap();
            f
        })
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(r#"inline: ["/bin/echo", "-n", "from the cli"]"#),
        "{stdout}"
    );

    // Not for tenants without the policy; bad commands are the caller's mistake.
    let a = client(&server, &token(&admin, "team-a", &["submit", "read"]).await);
    let refused = a.submit(&inline(&["/bin/true"], "")).await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("may not submit inline commands"),
        "{refused}"
    );
    assert_eq!(code(refused), (403, ErrorCode::Forbidden));
    let too_many: Vec<String> = (0..300).map(|i| i.to_string()).collect();
    let too_many: Vec<&str> = std::iter::once("/bin/true")
        .chain(too_many.iter().map(String::as_str))
        .collect();
    for (req, fragment) in [
        (inline(&[""], ""), "must name a program"),
        (inline(&["/bin/true", "a\0b"], ""), "without NUL"),
        (inline(&too_many, ""), "at most 256 arguments"),
        (inline(&["/bin/true"], "noop"), "run as job type \"shell\""),
    ] {
        let e = scripted.submit(&req).await.unwrap_err();
        assert!(e.to_string().contains(fragment), "{e}");
        assert_eq!(code(e).0, 422);
    }
    assert_eq!(
        scripted.list(&Default::default()).await.unwrap().jobs.len(),
        2
    );
}
