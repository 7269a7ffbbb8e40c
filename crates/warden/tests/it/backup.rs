//! `warden backup` while the server runs jobs, and `warden restore` into a fresh data
//! directory that a new server then serves: the jobs, their records and logs are all there.

use std::process::Command;

use warden_api::{JobStatus, SubmitJobRequest};

use crate::support::{Server, WARDEN, wait_running_with_output, wait_terminal, write_config_with};

fn warden(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(WARDEN)
        .args(args)
        .env_remove("WARDEN_SERVE_CONFIG")
        .env_remove("WARDEN_DATA_DIR")
        .env_remove("WARDEN_DATABASE_URL")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const TYPES: &str = "job_types:\n  echo:\n    argv: [/bin/sh, -c, \"echo backed up $WARDEN_JOB_ID\"]\n    timeout_s: 30\n  slow:\n    argv: [/bin/sh, -c, \"echo started; sleep 20\"]\n    timeout_s: 60\n";

#[tokio::test]
async fn a_backup_taken_while_jobs_run_restores_into_a_fresh_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first");
    for d in ["first", "second", "third"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    let config = write_config_with(&first, TYPES);
    let server = Server::start(&config);
    let c = server.client();
    let mut done = Vec::new();
    for _ in 0..3 {
        let sub = c
            .submit(&SubmitJobRequest {
                job_type: "echo".into(),
                ..SubmitJobRequest::default()
            })
            .await
            .unwrap();
        done.push(wait_terminal(&c, &sub.job_id).await);
    }
    // A job still running while the copy is taken.
    let slow = c
        .submit(&SubmitJobRequest {
            job_type: "slow".into(),
            ..SubmitJobRequest::default()
        })
        .await
        .unwrap();
    wait_running_with_output(&c, &slow.job_id).await;
    let out = dir.path().join("warden-backup.db");
    let out_s = out.to_str().unwrap();
    let config_s = config.to_str().unwrap();
    let (code, stdout, stderr) = warden(&["backup", "--config", config_s, "--out", out_s]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("(4 jobs, schema "), "{stdout}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Never over an existing file.
    let (code, _, stderr) = warden(&["backup", "--config", config_s, "--out", out_s]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("exists: a backup is only written to a new file"),
        "{stderr}"
    );
    let (code, _, stderr) = warden(&[
        "backup",
        "--config",
        config_s,
        "--out",
        "/tmp/x.db",
        "--database-url",
        "postgres://x/y",
    ]);
    assert_eq!(code, 2);
    assert!(stderr.contains("pg_dump"), "{stderr}");
    c.cancel(&slow.job_id).await.unwrap();
    drop(server);

    // Into a fresh data directory, served by a new server.
    let second = dir.path().join("second");
    let config2 = write_config_with(&second, TYPES);
    let config2_s = config2.to_str().unwrap();
    let (code, stdout, stderr) = warden(&["restore", "--config", config2_s, "--from", out_s]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("(4 jobs, schema "), "{stdout}");
    let (code, _, stderr) = warden(&["restore", "--config", config2_s, "--from", out_s]);
    assert_eq!(code, 2, "only into a fresh data dir");
    assert!(
        stderr.contains("restore only into a fresh data directory"),
        "{stderr}"
    );
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, "not a database at all").unwrap();
    let third = write_config_with(&dir.path().join("third"), TYPES);
    let (code, _, stderr) = warden(&[
        "restore",
        "--config",
        third.to_str().unwrap(),
        "--from",
        garbage.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(stderr.contains("garbage.db"), "{stderr}");
    assert!(
        !dir.path().join("third/data/warden.db").exists(),
        "nothing half-restored"
    );

    let server = Server::start(&config2);
    let c = server.client();
    for job in &done {
        let back = c.get(&job.job_id).await.unwrap();
        assert_eq!(back.status, JobStatus::Succeeded);
        assert_eq!(back.finished_at, job.finished_at);
        let log = c.logs_raw(&job.job_id, "stdout", 0).await.unwrap();
        assert_eq!(log, format!("backed up {}\n", job.job_id).into_bytes());
    }
    // The job that was running when the copy was taken is recovered as any job of a server
    // that stopped: back in the queue (it had attempts left), and it runs again here.
    let again = c.get(&slow.job_id).await.unwrap();
    assert!(
        matches!(again.status, JobStatus::Queued | JobStatus::Running),
        "{again:?}"
    );
    c.cancel(&slow.job_id).await.unwrap();
    assert_eq!(
        wait_terminal(&c, &slow.job_id).await.status,
        JobStatus::Cancelled
    );
}
