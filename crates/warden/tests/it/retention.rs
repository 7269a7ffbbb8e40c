//! Retention: `warden gc --dry-run` says what goes and deletes nothing; then the server's own
//! collector deletes the finished job past its age and the oldest over the size budget —
//! whole: record, logs, artifacts — while a job runs untouched, removes an artifact
//! directory whose job is gone, and the database file shrinks.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use warden_api::{JobStatus, SubmitJobRequest};
use warden_client::Client;

use crate::support::{Server, WARDEN, wait_running_with_output, wait_terminal, write_config_with};

const TYPES: &str = r#"job_types:
  big:
    argv:
      - /bin/sh
      - -c
      - |
        yes x | head -c 524288
        head -c 262144 /dev/zero > "$ARTIFACT_DIR/blob"
    timeout_s: 60
  slow:
    argv:
      - /bin/sh
      - -c
      - |
        head -c 1000 /dev/zero > "$ARTIFACT_DIR/keep"
        echo started
        sleep 120
    timeout_s: 300
"#;

fn config(dir: &Path, interval_s: u64) -> std::path::PathBuf {
    write_config_with(
        dir,
        &format!("retention: {{jobs_days: 7, max_mb: 1, interval_s: {interval_s}}}\n{TYPES}"),
    )
}

fn db_bytes(data: &Path) -> u64 {
    ["warden.db", "warden.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(data.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

async fn submit(c: &Client, job_type: &str) -> String {
    c.submit(&SubmitJobRequest {
        job_type: job_type.into(),
        ..SubmitJobRequest::default()
    })
    .await
    .unwrap()
    .job_id
}

#[tokio::test]
async fn finished_jobs_past_age_and_budget_are_collected_whole_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let artifacts = data.join("artifacts");
    let setup = config(dir.path(), 3600);
    let server = Server::start(&setup);
    let c = server.client();
    let mut big = Vec::new();
    for _ in 0..4 {
        let id = submit(&c, "big").await;
        let j = wait_terminal(&c, &id).await;
        assert_eq!(j.status, JobStatus::Succeeded, "{j:?}");
        assert!(j.artifact_bytes >= 262_144, "{j:?}");
        big.push(id);
    }
    drop(server);

    // The oldest ended ten days ago (the store's clock, moved back by hand).
    let db = rusqlite::Connection::open(data.join("warden.db")).unwrap();
    db.execute(
        "UPDATE jobs SET finished_at = finished_at - 864000000 WHERE id = ?1",
        [&big[0]],
    )
    .unwrap();
    drop(db);
    // An artifact directory whose job is not in the store (a pass cut short), an hour old.
    let orphan = artifacts.join(warden_core::JobId::new().to_string());
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::write(orphan.join("left"), vec![1u8; 5000]).unwrap();
    std::fs::File::open(&orphan)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(2 * 3600))
        .unwrap();
    let before = db_bytes(&data);

    // What would go: one by age, then the two oldest until the tenant fits in 1 MiB.
    let out = Command::new(WARDEN)
        .args(["gc", "--dry-run", "--json", "--config"])
        .arg(&setup)
        .env_remove("WARDEN_DATABASE_URL")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let t = &report["tenants"][0];
    assert_eq!(t["tenant"], "default", "{report}");
    assert_eq!(t["jobs"], 4, "{report}");
    assert_eq!(t["deleted_by_age"], 1, "{report}");
    assert_eq!(t["deleted_by_size"], 2, "{report}");
    assert_eq!(report["orphan_dirs"], 1, "{report}");
    assert_eq!(report["dry_run"], true);
    for id in &big {
        assert!(artifacts.join(id).is_dir(), "a dry run deletes nothing");
    }
    assert!(orphan.is_dir());

    // The server's collector, every second, while a job runs.
    let server = Server::start(&config(dir.path(), 1));
    let c = server.client();
    let slow = submit(&c, "slow").await;
    wait_running_with_output(&c, &slow).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.get(&big[2]).await.is_ok() || orphan.exists() {
        assert!(Instant::now() < deadline, "the collector never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for gone in &big[..3] {
        let err = c.get(gone).await.unwrap_err().to_string();
        assert!(err.contains("404") || err.contains("not found"), "{err}");
        assert!(!artifacts.join(gone).exists(), "its artifacts go with it");
    }
    let kept = c.get(&big[3]).await.unwrap();
    assert_eq!(kept.status, JobStatus::Succeeded);
    let log = c.logs_raw(&big[3], "stdout", 0).await.unwrap();
    assert_eq!(log.len(), 524_288, "the newest job keeps its whole log");
    assert!(artifacts.join(&big[3]).join("blob").is_file());
    // The running job: untouched, still running.
    let running = c.get(&slow).await.unwrap();
    assert_eq!(running.status, JobStatus::Running);
    assert!(running.stdout_bytes > 0);
    // The room of 1.5 MiB of deleted logs is given back to the filesystem.
    let deadline = Instant::now() + Duration::from_secs(30);
    while db_bytes(&data) + (1 << 20) > before {
        assert!(
            Instant::now() < deadline,
            "the database did not shrink: {before} -> {}",
            db_bytes(&data)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.cancel(&slow).await.unwrap();
    let ended = wait_terminal(&c, &slow).await;
    assert_eq!(ended.status, JobStatus::Cancelled);
    assert!(
        artifacts.join(&slow).join("keep").is_file(),
        "what the running job wrote is all there when it ends"
    );
}

#[test]
fn gc_refuses_to_run_beside_a_server_and_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let setup = config(dir.path(), 3600);
    let _server = Server::start(&setup);
    let out = Command::new(WARDEN)
        .args(["gc", "--config"])
        .arg(&setup)
        .env_remove("WARDEN_DATABASE_URL")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--dry-run"), "{stderr}");
    // A bad retention key is a configuration error with its place.
    let bad = write_config_with(dir.path(), "retention: {jobs_days: 0}\n");
    let out = Command::new(WARDEN)
        .args(["gc", "--dry-run", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("jobs_days") || stderr.contains("at least 1"),
        "{stderr}"
    );
}
