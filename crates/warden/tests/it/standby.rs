//! A slot's standby: the supervisor forked before its job is known, then handed the job.

use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use warden_sandbox::{Host, Isolation, Launcher, SpawnSpec, Tier};
use warden_worker::{Executor, SupervisedExecutor};

use crate::support::WARDEN;

fn executor() -> SupervisedExecutor {
    SupervisedExecutor::new(
        Launcher::new(WARDEN),
        Tier::UnsafeFallback,
        Host::without_cgroups("standby test"),
    )
}

/// A job that prints its parent: under the unsafe fallback, the supervisor that started it.
fn print_parent(cwd: &std::path::Path) -> SpawnSpec {
    SpawnSpec {
        stages: Vec::new(),
        argv: vec!["/bin/sh".into(), "-c".into(), "echo $PPID".into()],
        env: [("PATH".to_string(), "/usr/bin:/bin".to_string())].into(),
        timeout_ms: 10_000,
        rlimits: warden_sandbox::Rlimits::default(),
        isolation: Isolation::UnsafeFallback {
            cwd: cwd.to_path_buf(),
        },
    }
}

/// Runs `spec` and returns its stdout and exit code.
async fn run(
    executor: &SupervisedExecutor,
    spec: SpawnSpec,
    standby: Option<warden_worker::Standby>,
) -> (String, Option<i32>) {
    let mut exec = executor.start(spec, standby).await.unwrap();
    let mut out = String::new();
    let mut err = Vec::new();
    let (report, _, _) = tokio::join!(
        exec.job.wait(),
        exec.stdout.read_to_string(&mut out),
        exec.stderr.read_to_end(&mut err)
    );
    (out, report.unwrap().exit_code)
}

fn gone(pid: i32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[tokio::test]
async fn a_job_runs_in_the_supervisor_made_ready_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let executor = executor();
    let standby = executor.standby().await.unwrap();
    let supervisor = standby.supervisor();
    // It waits for its job, however long that takes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(std::path::Path::new(&format!("/proc/{supervisor}")).exists());
    let (out, code) = run(&executor, print_parent(dir.path()), Some(standby)).await;
    assert_eq!(code, Some(0));
    assert_eq!(out.trim(), supervisor.to_string(), "the job's parent");
    assert!(
        gone(supervisor, Duration::from_secs(5)),
        "it ends with its job"
    );
}

#[tokio::test]
async fn a_standby_whose_supervisor_died_starts_its_job_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let executor = executor();
    let standby = executor.standby().await.unwrap();
    let supervisor = standby.supervisor();
    let killed = std::process::Command::new("kill")
        .args(["-9", &supervisor.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert!(gone(supervisor, Duration::from_secs(5)));
    let (out, code) = run(&executor, print_parent(dir.path()), Some(standby)).await;
    assert_eq!(code, Some(0), "the job ran anyway");
    let parent: i32 = out.trim().parse().unwrap();
    assert_ne!(parent, supervisor, "in a new supervisor");
}

#[tokio::test]
async fn a_dropped_standby_leaves_no_process() {
    let executor = executor();
    let standby = executor.standby().await.unwrap();
    let supervisor = standby.supervisor();
    drop(standby);
    assert!(
        gone(supervisor, Duration::from_secs(5)),
        "supervisor {supervisor} outlived its standby"
    );
}
