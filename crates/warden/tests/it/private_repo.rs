//! Private https repositories: warden logs in with a secret that git reads from a pipe, only
//! for the repository configured with it, and writes the secret nowhere. The server is git's
//! own smart-HTTP backend (`git http-backend`) behind TLS and Basic authentication, on loopback.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use warden_api::{ErrorCode, JobStatus, JobView, SubmitJobRequest};
use warden_client::{Client, ClientError};

use crate::support::{Server, git, test_certs, wait_job, write_config_with};

/// The token the git server accepts; long and distinctive, so that finding it anywhere on disk
/// means warden wrote it there.
const TOKEN: &str = "ghp_wardenTestToken_4f1c9a7e2b6d8035e1a7c4b9";

struct GitHttp {
    root: PathBuf,
    /// `Authorization` headers as received, `None` for a request without one.
    seen: Mutex<Vec<Option<String>>>,
}

/// One smart-HTTP request: Basic `ci:TOKEN` or 401, then `git http-backend` as a CGI program.
async fn backend(State(st): State<Arc<GitHttp>>, req: Request<Body>) -> Response {
    let auth = header_str(req.headers(), header::AUTHORIZATION.as_str());
    st.seen.lock().unwrap().push(auth.clone());
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("ci:{TOKEN}"))
    );
    if auth.as_deref() != Some(expected.as_str()) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"git\"")],
        )
            .into_response();
    }
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 64 << 20).await.unwrap();
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("GIT_PROJECT_ROOT", &st.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_USER", "ci")
        .env("REMOTE_ADDR", "127.0.0.1");
    for (cgi, name) in [
        ("CONTENT_TYPE", "content-type"),
        ("HTTP_CONTENT_ENCODING", "content-encoding"),
        ("HTTP_GIT_PROTOCOL", "git-protocol"),
    ] {
        if let Some(v) = header_str(&parts.headers, name) {
            cmd.env(cgi, v);
        }
    }
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, &body)
        .await
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    cgi_response(&out.stdout)
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// A CGI program's output as an HTTP response: its header lines (`Status:` among them), a blank
/// line, the body.
fn cgi_response(out: &[u8]) -> Response {
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4))
        .or_else(|| {
            out.windows(2)
                .position(|w| w == b"\n\n")
                .map(|i| (i, i + 2))
        })
        .expect("CGI output has a header block");
    let head = String::from_utf8_lossy(&out[..split.0]).into_owned();
    let mut response = Response::builder();
    for line in head.lines() {
        let (k, v) = line.split_once(':').expect("a CGI header line");
        let v = v.trim();
        if k.eq_ignore_ascii_case("status") {
            let code: u16 = v.split(' ').next().unwrap().parse().unwrap();
            response = response.status(code);
        } else {
            response = response.header(k, v);
        }
    }
    response.body(Body::from(out[split.1..].to_vec())).unwrap()
}

/// Serves every repository under `root` over https on loopback; returns its base URL.
async fn serve_git(root: &Path, cert: &Path, key: &Path) -> (String, Arc<GitHttp>) {
    let state = Arc::new(GitHttp {
        root: root.to_path_buf(),
        seen: Mutex::new(Vec::new()),
    });
    let app = axum::Router::new()
        .fallback(backend)
        .with_state(state.clone());
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let tls = warden_server::tls::server_config(cert, key).unwrap();
    let listener = warden_server::tls::TlsListener::new(tcp, tls).unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("https://127.0.0.1:{port}"), state)
}

fn secret_file(dir: &Path, name: &str, value: &str) -> PathBuf {
    let path = dir.join(name);
    // As an operator writes it: `echo token > file`, with its line break.
    std::fs::write(&path, format!("{value}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Every file under `dir` that holds `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(e.path());
            } else if meta.is_file()
                && std::fs::read(e.path())
                    .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
            {
                found.push(e.path());
            }
        }
    }
    found
}

fn req(job_type: &str, repo: &str) -> SubmitJobRequest {
    SubmitJobRequest {
        job_type: job_type.into(),
        repo_name: Some(repo.into()),
        git_ref: Some("main".into()),
        ..SubmitJobRequest::default()
    }
}

async fn run(c: &Client, req: SubmitJobRequest) -> Result<JobView, ClientError> {
    let sub = c.submit(&req).await?;
    Ok(wait_job(c, &sub.job_id, Duration::from_secs(120), |j| {
        j.status.is_terminal()
    })
    .await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_repository_is_fetched_with_a_secret_that_touches_no_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_certs(dir.path());
    // The repository, served bare.
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("README"), "private contents\n").unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "first"]);
    let sha = git(&work, &["rev-parse", "HEAD"]);
    let served = dir.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    let bare = served.join("private.git");
    let out = std::process::Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(&work)
        .arg(&bare)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let (base, http) = serve_git(&served, &cert, &key).await;
    let url = format!("{base}/private.git");

    let good = secret_file(dir.path(), "token", TOKEN);
    let bad = secret_file(dir.path(), "stale", "ghp_revokedLongAgo_000000000000000000");
    let config = write_config_with(
        dir.path(),
        &format!(
            r#"
secrets:
  GIT_TOKEN: {{file: {good}}}
  STALE_TOKEN: {{file: {bad}}}
repos:
  private: {{url: "{url}", credential: {{username: ci, secret: GIT_TOKEN}}, ca_file: {ca}}}
  stale: {{url: "{url}", credential: {{username: ci, secret: STALE_TOKEN}}, ca_file: {ca}}}
  anonymous: {{url: "{url}", ca_file: {ca}}}
job_types:
  read:
    argv: ["/bin/cat", "README"]
    timeout_s: 30
    requires_repo: true
"#,
            good = good.display(),
            bad = bad.display(),
            ca = ca.display(),
        ),
    );
    let server = Server::start(&config);
    let c = server.client();

    // The ref resolves (ls-remote) and the commit is fetched, both logged in.
    let job = run(&c, req("read", "private")).await.unwrap();
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    assert_eq!(job.sha.as_deref(), Some(sha.as_str()));
    let logs = c.logs_raw(&job.job_id, "stdout", 0).await.unwrap();
    assert_eq!(logs, b"private contents\n");
    {
        let seen = http.seen.lock().unwrap();
        assert!(
            seen.iter().any(Option::is_none),
            "git asked without a login first (and got 401): {seen:?}"
        );
        assert!(
            seen.iter()
                .flatten()
                .all(|a| a.starts_with("Basic ") && !a.contains(TOKEN)),
            "only Basic logins, the token never in clear: {seen:?}"
        );
    }

    // A stale secret: the ref cannot be resolved, and the answer says why.
    let err = run(&c, req("read", "stale")).await.unwrap_err();
    match err {
        ClientError::Api { code, message, .. } => {
            assert_eq!(code, ErrorCode::RepoUnavailable, "{message}");
            assert!(message.contains("could not resolve ref"), "{message}");
        }
        other => panic!("expected an API error, got {other}"),
    }
    // The same URL configured without a login gets nothing — not even the commit that the
    // logged-in repository already fetched (they share no mirror and no checkout).
    let anon = run(
        &c,
        SubmitJobRequest {
            git_ref: None,
            sha: Some(sha.clone()),
            ..req("read", "anonymous")
        },
    )
    .await
    .unwrap();
    assert_eq!(anon.status, JobStatus::Error, "{anon:?}");
    assert!(
        anon.reason
            .as_deref()
            .unwrap_or("")
            .starts_with("fetch_failed"),
        "{anon:?}"
    );

    // The token is in no file warden wrote: not the data directory (mirrors, their configs,
    // checkouts, logs, the database), not the test's directory beside the secret file itself.
    let holding: Vec<PathBuf> = files_holding(dir.path(), TOKEN.as_bytes())
        .into_iter()
        .filter(|p| p != &good)
        .collect();
    assert!(holding.is_empty(), "the token was written to {holding:?}");
}

/// `warden serve` with `config` exits 2 at once; its stderr.
fn refused_start(config: &Path) -> String {
    let out = std::process::Command::new(crate::support::WARDEN)
        .args(["serve", "--config"])
        .arg(config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    stderr
}

/// What a private repository's entry refuses at start.
#[test]
fn private_repository_entries_refuse_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let token = secret_file(dir.path(), "token", TOKEN);
    let cases = [
        (
            "credential: {username: ci, secret: MISSING}",
            "https://h.example/r.git",
            "repos.r.credential.secret \"MISSING\" is not defined under secrets:",
        ),
        (
            "credential: {username: ci, secret: GIT_TOKEN}",
            "ssh://git@h.example/r.git",
            "credential and ca_file are for https repositories",
        ),
        (
            "ca_file: relative/ca.pem",
            "https://h.example/r.git",
            "ca_file relative/ca.pem must be an absolute path",
        ),
        (
            "credential: {username: '', secret: GIT_TOKEN}",
            "https://h.example/r.git",
            "credential.username must be 1 to 256 characters",
        ),
        (
            "credential: {username: ci, secret: GIT_TOKEN, password: x}",
            "https://h.example/r.git",
            "unknown field `password`",
        ),
    ];
    for (entry, url, expected) in cases {
        let config = write_config_with(
            dir.path(),
            &format!(
                "secrets:\n  GIT_TOKEN: {{file: {}}}\nrepos:\n  r: {{url: \"{url}\", {entry}}}\n",
                token.display()
            ),
        );
        let stderr = refused_start(&config);
        assert!(stderr.contains(expected), "{entry}: {stderr}");
    }
    // A secret git's line protocol cannot carry refuses the start too, naming both.
    std::fs::write(&token, "two\nlines-of-token-here\n").unwrap();
    let config = write_config_with(
        dir.path(),
        &format!(
            "secrets:\n  GIT_TOKEN: {{file: {}}}\nrepos:\n  r: {{url: \"https://h.example/r.git\", credential: {{username: ci, secret: GIT_TOKEN}}}}\n",
            token.display()
        ),
    );
    let stderr = refused_start(&config);
    assert!(
        stderr.contains("repos.r.credential: secret GIT_TOKEN cannot be a git login"),
        "{stderr}"
    );
}
