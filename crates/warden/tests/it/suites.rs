//! Test suites from a real repository through the real server and sandbox: pass, fail, an
//! accepted exit code, skips with and without `allow_skip`, a restore failure, a timeout, a
//! broken suite.yaml, an optional applet, `TEST_FILTER`, and a suite that changes `/usr/bin`
//! under `root: writable` whose snapshot shows only that change.

use std::path::Path;

use warden_api::{JobStatus, JobView, SubmitJobRequest};
use warden_client::Client;

use crate::support::{Server, git, wait_terminal, write_config_with};

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn project(parent: &Path) -> std::path::PathBuf {
    let repo = parent.join("project");
    let s =
        |name: &str, yaml: &str| write(&repo.join(format!("tests/suites/{name}/suite.yaml")), yaml);
    s(
        "a-pass",
        "run: [\"echo hello > /tmp/a.txt\"]\nassert:\n  - {exists: /tmp/a.txt}\n  - {contains: /tmp/a.txt, text: hello}\n",
    );
    s("b-fail", "run: [\"echo failing; exit 3\"]\n");
    s(
        "c-exit-code",
        "run: [\"exit 3\"]\nassert: [{exit_code: 3}]\n",
    );
    s("d-skip-denied", "skip_if: \"true\"\nrun: [\"true\"]\n");
    s(
        "e-skip-allowed",
        "skip_if: \"true\"\nallow_skip: true\nrun: [\"true\"]\n",
    );
    s("f-restore-fails", "run: [\"true\"]\nrestore: [\"false\"]\n");
    s("g-timeout", "timeout_s: 1\nrun: [\"sleep 30\"]\n");
    s("h-broken", "run: [\"true\"\nassert: {\n");
    s(
        "i-optional",
        "run: [\"true\"]\nassert: [{exists: /usr/bin/no-such-applet, if_present: warn}]\n",
    );
    write(
        &repo.join("tests/system/j-writable/suite.yaml"),
        "snapshot: [/usr/bin/warden-suite-x]\nrun: [\"printf '#!/bin/sh\\\\necho x\\\\n' > /usr/bin/warden-suite-x\"]\nassert:\n  - {changed: /usr/bin/warden-suite-x}\n  - {exists: /usr/bin/warden-suite-x}\n",
    );
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "suites"]);
    repo
}

fn req(job_type: &str, params: &[(&str, &str)]) -> SubmitJobRequest {
    SubmitJobRequest {
        job_type: job_type.into(),
        repo_name: Some("project".into()),
        git_ref: Some("main".into()),
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..SubmitJobRequest::default()
    }
}

async fn json(c: &Client, job: &JobView, path: &str) -> serde_json::Value {
    match c.artifact(&job.job_id, path).await {
        Ok(b) => serde_json::from_slice(&b).unwrap(),
        Err(e) => panic!("{path}: {e}: {job:?}"),
    }
}

#[tokio::test]
async fn suites_run_in_order_each_with_its_exact_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let repo = project(dir.path());
    let config = write_config_with(
        dir.path(),
        &format!(
            r#"repos:
  project: {{url: "{}"}}
job_types:
  suites:
    requires_repo: true
    timeout_s: 120
    suites: {{dir: tests/suites}}
  system:
    requires_repo: true
    timeout_s: 60
    root: writable
    stages:
      - {{name: preflight, argv: [/bin/true]}}
      - {{name: run_suites, suites: true}}
    suites: {{dir: tests/system}}
"#,
            repo.display()
        ),
    );
    let server = Server::start(&config);
    let c = server.client();

    let sub = c.submit(&req("suites", &[])).await.unwrap();
    let job = wait_terminal(&c, &sub.job_id).await;
    assert_eq!(job.status, JobStatus::Failed, "{job:?}");
    assert_eq!(job.exit_code, Some(1));
    let summary = json(&c, &job, "summary.json").await;
    assert_eq!(
        summary["harness_policy"],
        "No harness mutation of product-owned artifacts; fail-on-skip enforced"
    );
    assert_eq!(
        summary["counts"],
        serde_json::json!({"total": 9, "passed": 3, "failed": 5, "skipped": 1})
    );
    let outcome: Vec<(String, String)> = summary["suites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["suite"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected = [
        ("a-pass", "passed"),
        ("b-fail", "failed"),
        ("c-exit-code", "passed"),
        ("d-skip-denied", "failed"),
        ("e-skip-allowed", "skipped"),
        ("f-restore-fails", "failed"),
        ("g-timeout", "failed"),
        ("h-broken", "failed"),
        ("i-optional", "passed"),
    ];
    assert_eq!(
        outcome,
        expected.map(|(a, b)| (a.to_string(), b.to_string())),
        "in byte order of their names"
    );
    let reason = |name: &str| -> String {
        summary["suites"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["suite"] == name)
            .unwrap()["reason"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(reason("b-fail"), "run exited 3");
    assert_eq!(
        reason("d-skip-denied"),
        "skipped without allow_skip: true (fail-on-skip)"
    );
    assert_eq!(reason("f-restore-fails"), "restore[0] failed");
    assert!(
        reason("g-timeout").starts_with("timeout: run[0]"),
        "{}",
        reason("g-timeout")
    );
    let broken = reason("h-broken");
    let mut at = broken.splitn(4, ':');
    assert_eq!(at.next(), Some("h-broken/suite.yaml"), "{broken}");
    assert!(
        at.next().is_some_and(|l| l.parse::<u32>().is_ok())
            && at.next().is_some_and(|c| c.parse::<u32>().is_ok()),
        "file:line:column: {broken}"
    );
    let optional = json(&c, &job, "results/i-optional/result.json").await;
    assert_eq!(optional["assertions"][0]["outcome"], "warn");
    let log = String::from_utf8_lossy(&c.artifact(&job.job_id, "logs/b-fail.log").await.unwrap())
        .into_owned();
    assert_eq!(log, "failing\n");
    let events = String::from_utf8_lossy(&c.artifact(&job.job_id, "runner.jsonl").await.unwrap())
        .into_owned();
    assert!(events.lines().count() > 20, "{events}");
    assert!(
        events
            .lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
    );
    // The repository's tree is still its commit.
    assert_eq!(job.invariants.as_ref().unwrap().clean_tree_ok, Some(true));

    // TEST_FILTER runs exactly that suite; an unknown name fails the job.
    let sub = c
        .submit(&req("suites", &[("TEST_FILTER", "a-pass")]))
        .await
        .unwrap();
    let job = wait_terminal(&c, &sub.job_id).await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    let summary = json(&c, &job, "summary.json").await;
    assert_eq!(summary["counts"]["total"], 1);
    let sub = c
        .submit(&req("suites", &[("TEST_FILTER", "nope")]))
        .await
        .unwrap();
    let job = wait_terminal(&c, &sub.job_id).await;
    assert_eq!(job.status, JobStatus::Failed, "{job:?}");
    let err =
        String::from_utf8_lossy(&c.logs_raw(&job.job_id, "stderr", 0).await.unwrap()).into_owned();
    assert!(
        err.contains("TEST_FILTER names no suite: \"nope\""),
        "{err}"
    );

    // A suite that changes the system under a writable root, as a stage of a pipeline: its
    // snapshot shows that change and nothing else; the host's /usr is untouched.
    let sub = c.submit(&req("system", &[])).await.unwrap();
    let job = wait_terminal(&c, &sub.job_id).await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    let listing = c.artifacts(&job.job_id).await.unwrap();
    let snapped: Vec<&str> = listing
        .artifacts
        .iter()
        .filter(|a| a.path.starts_with("snapshots/") && a.kind == "file")
        .map(|a| a.path.as_str())
        .collect();
    assert_eq!(
        snapped,
        ["snapshots/j-writable/after/usr/bin/warden-suite-x"]
    );
    assert!(!Path::new("/usr/bin/warden-suite-x").exists());
}
