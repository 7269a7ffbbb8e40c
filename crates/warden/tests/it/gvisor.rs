//! The gVisor tier through real jobs: what happens when it cannot be given, and that a cancel
//! ends a gVisor job and everything runsc started for it. (The hostile suite runs under gVisor
//! too; a repository job and an egress job under gVisor are in `repo.rs` and `egress.rs`.)

use std::time::Duration;

use warden_api::{JobStatus, SubmitJobRequest};

use crate::support::{
    Server, processes_mentioning, wait_job, wait_running_with_output, wait_terminal,
    write_config_with,
};

fn req(job_type: &str) -> SubmitJobRequest {
    SubmitJobRequest {
        job_type: job_type.into(),
        ..SubmitJobRequest::default()
    }
}

#[tokio::test]
async fn without_runsc_a_gvisor_job_fails_closed_and_never_runs_natively() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with(
        dir.path(),
        "gvisor: {runsc: /nonexistent/runsc}\njob_types:\n  gv:\n    argv: [/bin/sh, -c, \"echo ran\"]\n    timeout_s: 30\n    isolation: gvisor\n  native:\n    argv: [/bin/sh, -c, \"echo native\"]\n    timeout_s: 30\n",
    );
    let server = Server::start(&config);
    let c = server.client();
    let sub = c.submit(&req("gv")).await.unwrap();
    let job = wait_terminal(&c, &sub.job_id).await;
    assert_eq!(job.status, JobStatus::Error, "{job:?}");
    assert_eq!(
        job.reason.as_deref(),
        Some("sandbox_setup_failed: gvisor: runsc /nonexistent/runsc not found (gvisor.runsc)")
    );
    assert_eq!(job.stdout_bytes, 0, "the job never ran");
    // The native tier on the same server is unaffected.
    let sub = c.submit(&req("native")).await.unwrap();
    let job = wait_terminal(&c, &sub.job_id).await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    assert_eq!(job.enforcement["isolation"], "sandbox");
}

#[tokio::test]
async fn a_cancelled_gvisor_job_ends_with_everything_runsc_started() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with(
        dir.path(),
        "job_types:\n  gv:\n    argv: [/bin/sh, -c, \"trap 'echo got TERM; exit 7' TERM; echo ready; while :; do sleep 1 & wait $!; done\"]\n    timeout_s: 60\n    isolation: gvisor\n  stubborn:\n    argv: [/bin/sh, -c, \"trap '' TERM; echo ready; while :; do sleep 1; done\"]\n    timeout_s: 60\n    isolation: gvisor\n",
    );
    let server = Server::start(&config);
    let c = server.client();
    let sandbox = dir.path().join("data/sandbox").display().to_string();
    for (job_type, out) in [("gv", "ready\ngot TERM\n"), ("stubborn", "ready\n")] {
        let sub = c.submit(&req(job_type)).await.unwrap();
        wait_running_with_output(&c, &sub.job_id).await;
        assert!(
            !processes_mentioning(&sandbox).is_empty(),
            "runsc runs the job"
        );
        c.cancel(&sub.job_id).await.unwrap();
        let job = wait_job(&c, &sub.job_id, Duration::from_secs(30), |j| {
            j.status.is_terminal()
        })
        .await;
        assert_eq!(job.status, JobStatus::Cancelled, "{job:?}");
        let log = c.logs_raw(&job.job_id, "stdout", 0).await.unwrap();
        // SIGTERM reaches the job through runsc; one that ignores it is killed at the grace.
        assert_eq!(String::from_utf8_lossy(&log), out, "{job_type}");
        let left = processes_mentioning(&sandbox);
        assert!(left.is_empty(), "runsc processes survived: {left:?}");
    }
}

#[tokio::test]
async fn a_gvisor_job_gets_its_secrets_params_and_limits_as_a_native_one_does() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("api-key");
    std::fs::write(&secret, "s3cr3t-value-for-gvisor\n").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    // The same script under both tiers: what it sees must not differ.
    let script = "v=$(cat /run/secrets/API_KEY); test \"$v\" = s3cr3t-value-for-gvisor && echo secret-read; \
                  echo \"param $GREETING\"; echo \"home $HOME tmp $TMPDIR art $ARTIFACT_DIR\"; id -u; ulimit -n; \
                  (echo x > /run/secrets/API_KEY) 2>/dev/null || echo secret-read-only; \
                  (touch /run/secrets/new) 2>/dev/null || echo no-new-secret; \
                  echo \"$v\"";
    let types: String = ["native", "gvisor"]
        .iter()
        .map(|tier| {
            format!(
                "  {tier}:\n    argv: [/bin/sh, -c, {script:?}]\n    timeout_s: 30\n    isolation: {tier}\n    \
                 secrets: [API_KEY]\n    allowed_params: [GREETING]\n    limits: {{open_files: 100}}\n"
            )
        })
        .collect();
    let config = write_config_with(
        dir.path(),
        &format!(
            "secrets:\n  API_KEY: {{file: {}}}\njob_types:\n{types}",
            secret.display()
        ),
    );
    let server = Server::start(&config);
    let c = server.client();
    let mut outs = Vec::new();
    for tier in ["native", "gvisor"] {
        let mut r = req(tier);
        r.params.insert("GREETING".into(), "hi".into());
        let sub = c.submit(&r).await.unwrap();
        let job = wait_terminal(&c, &sub.job_id).await;
        assert_eq!(job.status, JobStatus::Succeeded, "{tier}: {job:?}");
        let out = c.logs_raw(&job.job_id, "stdout", 0).await.unwrap();
        outs.push(String::from_utf8_lossy(&out).into_owned());
    }
    assert_eq!(
        outs[0],
        "secret-read\nparam hi\nhome /tmp/home tmp /tmp art /artifacts\n1000\n100\n\
         secret-read-only\nno-new-secret\n[MASKED:API_KEY]\n",
        "native"
    );
    // The secret is masked in a gVisor job's log as in a native one's.
    assert_eq!(outs[1], outs[0], "gvisor sees what native sees");
}
