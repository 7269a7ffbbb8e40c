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

fn job_of(tenant: &str, at: i64) -> NewJob {
    NewJob {
        tenant: tenant.into(),
        ..NewJob::plain("t", at)
    }
}

/// A replica picks the tenant from its own active set; a tenant that queues its first job
/// through another replica is learnt from the notification, and served at that replica's very
/// next claim (not a rescan later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_on_another_replica_is_served_next() {
    let (a, db) = fresh().await;
    let b = PgStore::connect(&db.url, 2).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let task = b.listen(
        move || {
            let _ = tx.send(());
        },
        |_| {},
    );
    rx.recv().await.unwrap();
    for i in 0..20 {
        a.submit(job_of("flood", i)).await.unwrap();
    }
    // b learns of "flood" and serves it.
    for _ in 0..3 {
        let c = b.claim("w", None, 30_000, 2).await.unwrap().unwrap();
        assert_eq!(c.job.tenant, "flood");
    }
    while rx.try_recv().is_ok() {}
    let single = a.submit(job_of("single", 100)).await.unwrap().job().id;
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the notification of single's job reaches b")
        .unwrap();
    let next = b.claim("w", None, 30_000, 2).await.unwrap().unwrap();
    assert_eq!(next.job.id, single);
    task.abort();
}

/// What the active set believes is only a hint: a tenant whose jobs another replica drained is
/// passed over, a tenant it never heard of is found by looking, and nothing queued is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_set_recovers_from_what_it_missed() {
    let (a, db) = fresh().await;
    let b = PgStore::connect(&db.url, 2).await.unwrap();
    // b hears of "gone" and "late" only through its own look at the database.
    a.submit(job_of("gone", 1)).await.unwrap();
    let gone = b.claim("w", None, 30_000, 2).await.unwrap().unwrap();
    assert_eq!(gone.job.tenant, "gone");
    a.submit(job_of("gone", 2)).await.unwrap();
    a.submit(job_of("late", 3)).await.unwrap();
    // a takes gone's job: b, which believes "gone" is still active, finds nothing there and
    // looks at the database before it gives up.
    let taken = a.claim("w", None, 30_000, 4).await.unwrap().unwrap();
    assert_eq!(taken.job.tenant, "gone");
    let late = b.claim("w", None, 30_000, 4).await.unwrap().unwrap();
    assert_eq!(late.job.tenant, "late");
    assert!(b.claim("w", None, 30_000, 4).await.unwrap().is_none());
    assert!(a.claim("w", None, 30_000, 4).await.unwrap().is_none());
}
