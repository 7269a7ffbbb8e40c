//! The OpenAPI contract: the checked-in `openapi.json` is what the code generates and what the
//! server serves, and schemathesis, fuzzing a live server from it, finds no answer that breaks
//! it (no 5xx for a caller's mistake, every status, content type and body as documented).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::{Server, create_admin_token, write_untrusted_config};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn the_checked_in_openapi_json_is_what_the_code_generates() {
    let path = root().join("openapi.json");
    let generated = warden_server::http::openapi::document();
    if std::env::var_os("WARDEN_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "openapi.json differs from what the code generates; if the change is meant, run \
         `WARDEN_UPDATE_OPENAPI=1 cargo nextest run -E 'test(the_checked_in_openapi_json)'` \
         and commit the file"
    );
    let doc: serde_json::Value = serde_json::from_str(&generated).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    // Every route of the API is described, with its errors.
    for (path, method) in [
        ("/jobs", "post"),
        ("/jobs", "get"),
        ("/jobs/{id}", "get"),
        ("/jobs/{id}/cancel", "post"),
        ("/jobs/{id}/logs", "get"),
        ("/jobs/{id}/tests", "get"),
        ("/jobs/{id}/artifacts", "get"),
        ("/jobs/{id}/artifacts/{path}", "get"),
        ("/job-types", "get"),
        ("/whoami", "get"),
        ("/tokens", "post"),
        ("/tokens", "get"),
        ("/tokens/{id}/revoke", "post"),
        ("/audit", "get"),
        ("/metrics", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/openapi.json", "get"),
    ] {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not described");
        assert!(
            op["description"].is_string() || op["summary"].is_string(),
            "{method} {path} has no description"
        );
        let public = matches!(path, "/healthz" | "/readyz" | "/openapi.json");
        if !public {
            assert_eq!(op["security"][0]["bearer"], serde_json::json!([]), "{path}");
            for code in ["401", "429", "500"] {
                assert!(
                    op["responses"][code].is_object(),
                    "{method} {path}: no {code}"
                );
            }
        }
    }
    let body = &doc["components"]["schemas"]["ErrorBody"];
    assert!(body.is_object(), "the error body is described");
    let codes = &doc["components"]["schemas"]["ErrorCode"]["enum"];
    assert!(
        codes
            .as_array()
            .is_some_and(|c| c.iter().any(|v| v == "queue_full")),
        "{codes}"
    );
}

#[tokio::test]
async fn the_server_serves_the_document_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_untrusted_config(dir.path(), "job_types: {}");
    let server = Server::start(&config);
    let http = crate::support::http();
    let served: serde_json::Value = http
        .get(format!("{}/openapi.json", server.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let generated: serde_json::Value =
        serde_json::from_str(&warden_server::http::openapi::document()).unwrap();
    assert_eq!(served, generated);
    let jobs = http
        .get(format!("{}/jobs", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(jobs.status(), 401, "only the document is public");
}

/// schemathesis, from `scripts/setup.sh` (target/pytools), fuzzing every operation of a live
/// server with an admin token: positive and negative examples from the document, with every
/// response checked against it.
#[tokio::test]
async fn schemathesis_finds_no_answer_that_breaks_the_contract() {
    let schemathesis = root().join("target/pytools/bin/schemathesis");
    assert!(
        schemathesis.exists(),
        "{} is missing: run scripts/setup.sh",
        schemathesis.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let config = write_untrusted_config(
        dir.path(),
        r#"job_types:
  echo:
    argv: ["/bin/sh", "-c", "echo \"hello $GREETING\"; echo out > \"$ARTIFACT_DIR/out.txt\""]
    allowed_params: [GREETING]
    timeout_s: 30
"#,
    );
    let server = Server::start(&config);
    let token = create_admin_token(dir.path(), &config);
    // One real job, so that listings, logs and artifacts have something to show.
    let client =
        warden_client::Client::new(&server.url, Duration::from_secs(10), Some(token.clone()))
            .unwrap();
    let sub = client
        .submit(&warden_api::SubmitJobRequest {
            job_type: "echo".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    crate::support::wait_terminal(&client, &sub.job_id).await;

    // The job's own id (and an artifact it wrote) for the operations on one job, so that the
    // fuzzing reaches its logs, tests, artifacts and cancel instead of stopping at 404.
    std::fs::write(
        dir.path().join("schemathesis.toml"),
        format!(
            "[[operations]]\ninclude-path-regex = \"^/jobs/\\\\{{id\\\\}}\"\n\
             parameters = {{ \"path.id\" = \"{}\", \"path.path\" = \"out.txt\" }}\n",
            sub.job_id
        ),
    )
    .unwrap();
    let report = dir.path().join("report");
    let out = tokio::process::Command::new(&schemathesis)
        .arg("run")
        .arg(root().join("openapi.json"))
        .args(["--url", &server.url])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance,negative_data_rejection,\
             ignored_auth,unsupported_method",
        ])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", "50", "--workers", "2", "--seed", "1"])
        .args(["--request-timeout", "20", "--no-color"])
        .arg("--report-dir")
        .arg(&report)
        .env("SCHEMATHESIS_HOOKS", "")
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "schemathesis found answers that break openapi.json:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("passed") || stdout.contains("Passed"),
        "schemathesis ran nothing?\n{stdout}"
    );
}
