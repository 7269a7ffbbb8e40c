//! An idle slot offered to the next submission: the job claimed for it in the submission's own
//! transaction and handed over, and every way an offer can end without losing a job.

use std::sync::Arc;
use std::time::{Duration, Instant};

use warden_api::JobStatus;
use warden_core::Config;
use warden_sandbox::{Host, Launcher, Tier};
use warden_store::{Claimed, JobRecord, NewJob, Store, SubmitOutcome, now_millis};
use warden_store_sqlite::SqliteStore;
use warden_worker::{
    DataDir, Events, SlotOffer, SupervisedExecutor, WorkerConfig, WorkerHandle, WorkerPool,
};

use crate::support::WARDEN;

struct Pool {
    handle: Arc<WorkerHandle>,
    store: Arc<SqliteStore>,
    _dir: tempfile::TempDir,
}

/// One slot that polls the queue only once a minute: within a test, a job reaches it only by
/// a hand-off or a wake.
fn pool() -> Pool {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "unsafe_fallback: true\nslots: 1\njob_types:\n  t:\n    argv: [/bin/sh, -c, 'echo ran']\n    timeout_s: 30\n";
    let config = Arc::new(Config::from_yaml_str(yaml, "test.yaml").unwrap());
    let data = DataDir::new(dir.path());
    std::fs::create_dir_all(data.artifacts_root()).unwrap();
    std::fs::create_dir_all(data.scratch_root()).unwrap();
    let store = Arc::new(SqliteStore::open(&data.database()).unwrap());
    let executor = Arc::new(SupervisedExecutor::new(
        Launcher::new(WARDEN),
        Tier::UnsafeFallback,
        Host::without_cgroups("dispatch test"),
    ));
    let repos = Arc::new(warden_repo::Repos::open(&data.git(), &config.git).unwrap());
    let worker = WorkerConfig {
        idle_poll: Duration::from_secs(60),
        ..WorkerConfig::from_config(&config)
    };
    let handle = WorkerPool::start(
        store.clone(),
        executor,
        config,
        data,
        Events::new(),
        worker,
        repos,
    );
    Pool {
        handle,
        store,
        _dir: dir,
    }
}

/// The slot's offer, once it is idle.
async fn idle_slot(handle: &WorkerHandle) -> SlotOffer {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(offer) = handle.offer() {
            return offer;
        }
        assert!(Instant::now() < deadline, "the slot never went idle");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A job submitted with the claim `offer` asks for.
async fn submit_for(p: &Pool, offer: &SlotOffer) -> (NewJob, SubmitOutcome, Option<Claimed>) {
    let job = NewJob::plain("t", now_millis());
    let (outcome, claimed) = p
        .store
        .submit_and_claim(job.clone(), offer.claim(), now_millis())
        .await
        .unwrap();
    (job, outcome, claimed)
}

async fn ended(store: &SqliteStore, job: &NewJob) -> JobRecord {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let rec = store.get(job.id).await.unwrap();
        if rec.status.is_terminal() {
            return rec;
        }
        assert!(
            Instant::now() < deadline,
            "the job never ended: {:?}",
            rec.status
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_job_submitted_to_an_idle_slot_is_claimed_with_its_row_and_runs_there() {
    let p = pool();
    let offer = idle_slot(&p.handle).await;
    let (job, outcome, claimed) = submit_for(&p, &offer).await;
    assert!(matches!(outcome, SubmitOutcome::Created(_)));
    let claimed = claimed.expect("claimed in the submission");
    assert_eq!(claimed.job.id, job.id);
    assert_eq!(claimed.lease.worker, offer.claim().worker);
    assert!(offer.hand(claimed).is_ok());
    let rec = ended(&p.store, &job).await;
    assert_eq!(rec.status, JobStatus::Succeeded, "{:?}", rec.reason);
    assert_eq!(rec.attempts, 1);
    assert_eq!(rec.stdout_bytes, 4, "its output: \"ran\\n\"");
}

#[tokio::test]
async fn a_slot_woken_while_a_submission_holds_its_offer_waits_for_the_job() {
    let p = pool();
    let offer = idle_slot(&p.handle).await;
    // The slot looks again, finds its offer taken, and must not claim for itself meanwhile.
    p.handle.wake();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (job, _, claimed) = submit_for(&p, &offer).await;
    assert!(offer.hand(claimed.unwrap()).is_ok());
    assert_eq!(ended(&p.store, &job).await.status, JobStatus::Succeeded);
}

#[tokio::test]
async fn an_offer_dropped_unused_sends_the_slot_back_to_claiming() {
    let p = pool();
    drop(idle_slot(&p.handle).await);
    // Queued without a wake: only a slot that went back to claiming runs it.
    let job = NewJob::plain("t", now_millis());
    p.store.submit(job.clone()).await.unwrap();
    assert_eq!(ended(&p.store, &job).await.status, JobStatus::Succeeded);
}

#[tokio::test]
async fn a_job_handed_to_a_stopping_pool_goes_back_to_the_queue() {
    let p = pool();
    let offer = idle_slot(&p.handle).await;
    let (job, _, claimed) = submit_for(&p, &offer).await;
    let handle = p.handle.clone();
    let stopping = tokio::spawn(async move { handle.shutdown(Duration::from_secs(5)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !stopping.is_finished(),
        "the slot waits for the job its offer was taken for"
    );
    assert!(p.handle.offer().is_none(), "a stopping pool offers nothing");
    assert!(offer.hand(claimed.unwrap()).is_ok());
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("the pool stops")
        .unwrap();
    let rec = p.store.get(job.id).await.unwrap();
    assert_eq!(rec.status, JobStatus::Queued, "given back, not run");
    assert_eq!(rec.attempts, 0, "the attempt is not counted");
}
