//! Staged job types through the real server and sandbox: stages share one sandbox session,
//! the first failure skips the rest but `always` stages, each stage's log range is exactly
//! what it wrote, a stage's own timeout, a cancel mid-pipeline, a stage that cannot start,
//! and the CLI's stage table and `logs --stage`.

use std::process::Command;
use std::time::Duration;

use warden_api::{JobStatus, JobView, StageStatus, SubmitJobRequest};
use warden_client::Client;

use crate::support::{
    Server, WARDEN, wait_job, wait_running_with_output, wait_terminal, write_config_with,
};

const PIPELINES: &str = r#"job_types:
  pipeline:
    timeout_s: 60
    allowed_params: [FAIL_AT]
    stages:
      - name: deps
        argv: [/bin/sh, -c, "echo deps-out; echo deps-err >&2; echo state > /tmp/state"]
      - name: build
        argv: [/bin/sh, -c, "cat /tmp/state; echo \"var=$STAGE_VAR\"; echo build-err >&2; [ \"$FAIL_AT\" != build ]"]
        env: {STAGE_VAR: only-build}
      - name: test
        argv: [/bin/sh, -c, "echo \"var=$STAGE_VAR\"; echo test-out; [ \"$FAIL_AT\" != test ] || exit 3"]
      - name: report
        argv: [/bin/sh, -c, "echo report-out"]
      - name: collect
        always: true
        argv: [/bin/sh, -c, "echo collected > /artifacts/collected.txt; echo collect-out"]
  slow:
    timeout_s: 60
    stages:
      - name: quick
        argv: [/bin/true]
      - name: hang
        timeout_s: 1
        argv: [/bin/sh, -c, "echo hanging; sleep 30"]
      - name: after
        argv: [/bin/sh, -c, "echo never"]
      - name: collect
        always: true
        argv: [/bin/sh, -c, "echo collect-ran"]
  cancel-me:
    timeout_s: 60
    stages:
      - name: first
        argv: [/bin/sh, -c, "echo started; sleep 30"]
      - name: collect
        always: true
        argv: [/bin/sh, -c, "echo collect-ran"]
  writable:
    timeout_s: 30
    root: writable
    stages:
      - name: install
        argv: [/bin/sh, -c, "echo '#!/bin/sh' > /usr/bin/warden-stage-tool; echo 'echo tool-ran' >> /usr/bin/warden-stage-tool; chmod +x /usr/bin/warden-stage-tool"]
      - name: use
        argv: [warden-stage-tool]
  rogue:
    timeout_s: 30
    stages:
      - name: kill-runner
        argv: [/bin/sh, -c, "echo before; kill -9 $PPID; echo after"]
      - name: collect
        always: true
        argv: [/bin/sh, -c, "echo collect-ran"]
  missing:
    timeout_s: 30
    stages:
      - name: ok
        argv: [/bin/true]
      - name: nope
        argv: [/nonexistent/tool, --flag]
"#;

fn req(job_type: &str, params: &[(&str, &str)]) -> SubmitJobRequest {
    SubmitJobRequest {
        job_type: job_type.into(),
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..SubmitJobRequest::default()
    }
}

/// One stream's bytes of a stage, cut from the job's log by the stage table's range.
async fn stage_text(c: &Client, job: &JobView, name: &str, stream: &str) -> String {
    let stage = job.stages.iter().find(|s| s.name == name).unwrap();
    let [start, end] = if stream == "stdout" {
        stage.stdout
    } else {
        stage.stderr
    };
    let all = c.logs_raw(&job.job_id, stream, 0).await.unwrap();
    String::from_utf8_lossy(&all[start as usize..end as usize]).into_owned()
}

fn statuses(job: &JobView) -> Vec<(&str, StageStatus)> {
    job.stages
        .iter()
        .map(|s| (s.name.as_str(), s.status))
        .collect()
}

#[tokio::test]
async fn stages_run_in_one_session_and_each_log_range_is_exactly_its_output() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&write_config_with(dir.path(), PIPELINES));
    let c = server.client();

    // Every stage passes.
    let sub = c.submit(&req("pipeline", &[])).await.unwrap();
    let job = wait_terminal(&c, &sub.job_id).await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    assert_eq!((job.exit_code, job.reason.as_deref()), (Some(0), None));
    use StageStatus::*;
    assert_eq!(
        statuses(&job),
        [
            ("deps", Succeeded),
            ("build", Succeeded),
            ("test", Succeeded),
            ("report", Succeeded),
            ("collect", Succeeded)
        ]
    );
    // /tmp outlives a stage; a stage's env is its own.
    let expected = [
        ("deps", "deps-out\n", "deps-err\n"),
        ("build", "state\nvar=only-build\n", "build-err\n"),
        ("test", "var=\ntest-out\n", ""),
        ("report", "report-out\n", ""),
        ("collect", "collect-out\n", ""),
    ];
    for (name, out, err) in expected {
        assert_eq!(stage_text(&c, &job, name, "stdout").await, out, "{name}");
        assert_eq!(stage_text(&c, &job, name, "stderr").await, err, "{name}");
    }
    let ranges: Vec<[u64; 2]> = job.stages.iter().map(|s| s.stdout).collect();
    assert_eq!(ranges.first().unwrap()[0], 0);
    assert_eq!(ranges.last().unwrap()[1], job.stdout_bytes);
    for pair in ranges.windows(2) {
        assert_eq!(
            pair[0][1], pair[1][0],
            "the ranges tile the log: {ranges:?}"
        );
    }
    let mut last_start = 0;
    for st in &job.stages {
        let (start, took) = (st.started_ms.unwrap(), st.duration_ms.unwrap());
        assert!(
            start >= last_start,
            "stages start in order: {:?}",
            job.stages
        );
        last_start = start + took;
        assert_eq!(st.exit_code, Some(0));
    }
    // artifact.json has the same table.
    let record: serde_json::Value =
        serde_json::from_slice(&c.artifact(&job.job_id, "artifact.json").await.unwrap()).unwrap();
    assert_eq!(record["stages"][1]["name"], "build");
    assert_eq!(record["stages"][4]["always"], true);
    assert_eq!(
        record["stages"][1]["stdout"],
        serde_json::json!(job.stages[1].stdout)
    );

    // The first failure ends the pipeline, but the always stage still runs.
    let sub = c
        .submit(&req("pipeline", &[("FAIL_AT", "test")]))
        .await
        .unwrap();
    let job = wait_terminal(&c, &sub.job_id).await;
    assert_eq!(job.status, JobStatus::Failed, "{job:?}");
    assert_eq!(job.reason.as_deref(), Some("stage_failed: test"));
    assert_eq!(job.exit_code, Some(3));
    assert_eq!(
        statuses(&job),
        [
            ("deps", Succeeded),
            ("build", Succeeded),
            ("test", Failed),
            ("report", Skipped),
            ("collect", Succeeded)
        ]
    );
    assert_eq!(job.stages[2].exit_code, Some(3));
    assert_eq!(job.stages[3].started_ms, None);
    assert_eq!(stage_text(&c, &job, "report", "stdout").await, "");
    assert_eq!(
        stage_text(&c, &job, "collect", "stdout").await,
        "collect-out\n"
    );
    let collected = c.artifact(&job.job_id, "collected.txt").await.unwrap();
    assert_eq!(collected, b"collected\n");

    let sub = c
        .submit(&req("pipeline", &[("FAIL_AT", "build")]))
        .await
        .unwrap();
    let job = wait_terminal(&c, &sub.job_id).await;
    assert_eq!(job.reason.as_deref(), Some("stage_failed: build"));
    assert_eq!(job.exit_code, Some(1));
    assert_eq!(
        statuses(&job),
        [
            ("deps", Succeeded),
            ("build", Failed),
            ("test", Skipped),
            ("report", Skipped),
            ("collect", Succeeded)
        ]
    );
}

#[tokio::test]
async fn a_writable_root_is_shared_by_the_stages() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&write_config_with(dir.path(), PIPELINES));
    let c = server.client();
    let sub = c.submit(&req("writable", &[])).await.unwrap();
    let job = wait_terminal(&c, &sub.job_id).await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    assert_eq!(stage_text(&c, &job, "use", "stdout").await, "tool-ran\n");
    let changes: serde_json::Value =
        serde_json::from_slice(&c.artifact(&job.job_id, "changes.json").await.unwrap()).unwrap();
    assert!(
        changes.to_string().contains("usr/bin/warden-stage-tool"),
        "{changes}"
    );
    assert!(!std::path::Path::new("/usr/bin/warden-stage-tool").exists());
}

#[tokio::test]
async fn a_stage_past_its_timeout_is_killed_and_the_always_stage_still_runs() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&write_config_with(dir.path(), PIPELINES));
    let c = server.client();
    let sub = c.submit(&req("slow", &[])).await.unwrap();
    let job = wait_job(&c, &sub.job_id, Duration::from_secs(20), |j| {
        j.status.is_terminal()
    })
    .await;
    assert_eq!(job.status, JobStatus::TimedOut, "{job:?}");
    assert_eq!(job.reason.as_deref(), Some("stage_timed_out: hang"));
    use StageStatus::*;
    assert_eq!(
        statuses(&job),
        [
            ("quick", Succeeded),
            ("hang", TimedOut),
            ("after", Skipped),
            ("collect", Succeeded)
        ]
    );
    let hang = &job.stages[1];
    assert_eq!(hang.signal, Some(9));
    let took = hang.duration_ms.unwrap();
    assert!((1000..5000).contains(&took), "killed at its 1 s: {took} ms");
    assert_eq!(stage_text(&c, &job, "hang", "stdout").await, "hanging\n");
    assert_eq!(
        stage_text(&c, &job, "collect", "stdout").await,
        "collect-ran\n"
    );
}

#[tokio::test]
async fn a_cancel_mid_pipeline_runs_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&write_config_with(dir.path(), PIPELINES));
    let c = server.client();
    let sub = c.submit(&req("cancel-me", &[])).await.unwrap();
    wait_running_with_output(&c, &sub.job_id).await;
    c.cancel(&sub.job_id).await.unwrap();
    let job = wait_terminal(&c, &sub.job_id).await;
    assert_eq!(job.status, JobStatus::Cancelled, "{job:?}");
    use StageStatus::*;
    assert_eq!(statuses(&job), [("first", Failed), ("collect", NotRun)]);
    let out = c.logs_raw(&job.job_id, "stdout", 0).await.unwrap();
    assert_eq!(
        out, b"started\n",
        "the always stage did not run after a cancel"
    );
}

#[tokio::test]
async fn a_stage_that_kills_the_stage_runner_fails_and_the_next_stage_still_runs() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&write_config_with(dir.path(), PIPELINES));
    let c = server.client();
    let sub = c.submit(&req("rogue", &[])).await.unwrap();
    let job = wait_terminal(&c, &sub.job_id).await;
    assert_eq!(job.status, JobStatus::Failed, "{job:?}");
    assert_eq!(job.reason.as_deref(), Some("stage_failed: kill-runner"));
    use StageStatus::*;
    assert_eq!(
        statuses(&job),
        [("kill-runner", Failed), ("collect", Succeeded)]
    );
    // Its end could not be reported by the runner it killed: it is recorded as killed.
    assert_eq!(job.stages[0].signal, Some(9));
    assert!(
        stage_text(&c, &job, "kill-runner", "stdout")
            .await
            .starts_with("before\n")
    );
    assert_eq!(
        stage_text(&c, &job, "collect", "stdout").await,
        "collect-ran\n"
    );
}

#[tokio::test]
async fn a_stage_that_cannot_start_fails_with_127_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&write_config_with(dir.path(), PIPELINES));
    let c = server.client();
    let sub = c.submit(&req("missing", &[])).await.unwrap();
    let job = wait_terminal(&c, &sub.job_id).await;
    assert_eq!(job.status, JobStatus::Failed, "{job:?}");
    assert_eq!(job.reason.as_deref(), Some("stage_failed: nope"));
    assert_eq!(job.stages[1].exit_code, Some(127));
    let err = stage_text(&c, &job, "nope", "stderr").await;
    assert!(
        err.starts_with("warden: stage nope: exec /nonexistent/tool:"),
        "{err:?}"
    );
}

fn cli(server: &Server, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(WARDEN)
        .args(args)
        .env_remove("WARDEN_CONFIG")
        .env("WARDEN_SERVER", &server.url)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_cli_shows_the_stage_table_and_one_stages_log() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&write_config_with(dir.path(), PIPELINES));
    let c = server.client();
    let sub = c
        .submit(&req("pipeline", &[("FAIL_AT", "test")]))
        .await
        .unwrap();
    let job = wait_terminal(&c, &sub.job_id).await;
    let id = job.job_id.as_str();

    let (code, out, _) = cli(&server, &["job", "get", id]);
    assert_eq!(code, 0);
    assert!(out.contains("STAGE"), "{out}");
    let row = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .to_string()
    };
    assert!(row("test").contains("failed"), "{out}");
    assert!(row("report").contains("skipped"), "{out}");
    assert!(row("collect").contains("succeeded (always)"), "{out}");

    let (code, out, _) = cli(&server, &["job", "logs", id, "--stage", "build"]);
    assert_eq!((code, out.as_str()), (0, "state\nvar=only-build\n"));
    let (code, out, _) = cli(
        &server,
        &["job", "logs", id, "--stage", "build", "--stream", "stderr"],
    );
    assert_eq!((code, out.as_str()), (0, "build-err\n"));
    let (code, _, err) = cli(&server, &["job", "logs", id, "--stage", "lint"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("has no stage \"lint\" (its stages: deps, build, test, report, collect)"),
        "{err}"
    );
    let (code, _, err) = cli(&server, &["job", "logs", id, "--stage", "x", "-f"]);
    assert_eq!(code, 2, "{err}");
}
