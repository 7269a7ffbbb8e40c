use super::testing::TestDb;
use super::*;
use warden_store::{NewJob, Store};

async fn fresh() -> (PgStore, TestDb) {
    let db = TestDb::create().await;
    let store = PgStore::connect(&db.url, 4).await.unwrap();
    (store, db)
}

mod conformance {
    use super::fresh;
    warden_store::conformance_tests!(fresh());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_database_never_claim_a_job_twice() {
    let (a, _db) = fresh().await;
    let b = PgStore::connect(&_db.url, 4).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..200 {
        let job = NewJob::plain(if i % 2 == 0 { "even" } else { "odd" }, 1);
        ids.push(a.submit(job).await.unwrap().job().id);
    }
    let claimers = (0..8).map(|i| {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(c) = store
                .claim(&format!("w{i}"), None, 30_000, 2)
                .await
                .unwrap()
            {
                got.push(c.job.id);
            }
            got
        })
    });
    let mut all: Vec<JobId> = Vec::new();
    for c in claimers {
        all.extend(c.await.unwrap());
    }
    all.sort();
    ids.sort();
    assert_eq!(all, ids, "every job claimed exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_reach_another_replica() {
    let (a, db) = fresh().await;
    let b = PgStore::connect(&db.url, 2).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let tx2 = tx.clone();
    let task = b.listen(
        move || {
            let _ = tx.send(None);
        },
        move |id| {
            let _ = tx2.send(Some(id));
        },
    );
    // The listener's first act is a catch-up wake-up.
    assert_eq!(rx.recv().await, Some(None));
    let job = NewJob::plain("t", 1);
    let id = job.id;
    a.submit(job).await.unwrap();
    let mut saw = (false, false);
    while saw != (true, true) {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(None)) => saw.0 = true,
            Ok(Some(Some(j))) if j == id => saw.1 = true,
            Ok(_) => {}
            Err(_) => panic!("no notification within 10 s: {saw:?}"),
        }
    }
    task.abort();
}
