//! What retention's collector relies on: finished jobs' usage and order, deletion of finished
//! jobs only (with their logs and test results), and one collector lease.

use warden_core::{JobId, JobStatus};

use super::{LEASE_MS, new_job, submit};
use crate::{
    Claimed, Completion, LogStream, Store, StoreError, TenantUsage, TestResult, TestStatus,
    TestsQuery,
};

async fn claim_type(store: &dyn Store, job_type: &str, now: i64) -> Claimed {
    store
        .claim("w", Some(&[job_type.to_string()]), LEASE_MS, now)
        .await
        .unwrap()
        .unwrap()
}

async fn finish(store: &dyn Store, c: &Claimed, artifact_bytes: u64, now: i64) {
    let done = Completion {
        status: Some(JobStatus::Succeeded),
        artifact_bytes,
        ..Completion::default()
    };
    let rec = store.complete(&c.lease, done, now).await.unwrap();
    assert_eq!(rec.artifact_bytes, artifact_bytes);
}

pub async fn retention_deletes_only_finished_jobs_oldest_first(store: &dyn Store) {
    let mut jobs = Vec::new();
    for (job_type, tenant) in [
        ("t1", "a"),
        ("t2", "a"),
        ("tb", "b"),
        ("t3", "a"),
        ("tq", "a"),
    ] {
        let mut j = new_job(job_type, None, 1);
        j.tenant = tenant.into();
        jobs.push(submit(store, j).await.id);
    }
    let [a1, a2, b1, a3, q] = jobs[..] else {
        unreachable!()
    };
    let c1 = claim_type(store, "t1", 2).await;
    store
        .append_log(&c1.lease, LogStream::Stdout, 0, &[7u8; 100])
        .await
        .unwrap();
    let test = TestResult {
        suite: "s".into(),
        classname: "c".into(),
        name: "n".into(),
        status: TestStatus::Passed,
        duration_ms: None,
        message: None,
        flaky: false,
    };
    store.append_tests(&c1.lease, 0, vec![test]).await.unwrap();
    finish(store, &c1, 1000, 10).await;
    let c2 = claim_type(store, "t2", 11).await;
    finish(store, &c2, 50, 20).await;
    let cb = claim_type(store, "tb", 12).await;
    finish(store, &cb, 7, 15).await;
    let c3 = claim_type(store, "t3", 13).await; // left running

    assert_eq!(
        store.finished_usage().await.unwrap(),
        vec![
            TenantUsage {
                tenant: "a".into(),
                jobs: 2,
                bytes: 1150
            },
            TenantUsage {
                tenant: "b".into(),
                jobs: 1,
                bytes: 7
            },
        ]
    );
    let ids = |v: Vec<crate::FinishedJob>| v.into_iter().map(|j| j.id).collect::<Vec<_>>();
    let all = store.oldest_finished("a", None, None, 10).await.unwrap();
    assert_eq!((all[0].finished_at, all[0].bytes), (10, 1100));
    assert_eq!(
        ids(all),
        vec![a1, a2],
        "oldest end first; running and queued never listed"
    );
    assert_eq!(
        ids(store
            .oldest_finished("a", Some(15), None, 10)
            .await
            .unwrap()),
        vec![a1]
    );
    assert_eq!(
        ids(store
            .oldest_finished("a", None, Some((10, a1)), 10)
            .await
            .unwrap()),
        vec![a2],
        "the cursor continues after the previous page"
    );
    assert_eq!(
        ids(store.oldest_finished("a", None, None, 1).await.unwrap()),
        vec![a1]
    );

    // A running and a queued job are not deleted, even when named.
    let deleted = store.delete_finished(&[a1, a3, q]).await.unwrap();
    assert_eq!(deleted, vec![a1]);
    assert!(matches!(store.get(a1).await, Err(StoreError::NotFound(_))));
    assert_eq!(store.get(a3).await.unwrap().status, JobStatus::Running);
    assert_eq!(store.get(q).await.unwrap().status, JobStatus::Queued);
    assert_eq!(store.get(b1).await.unwrap().status, JobStatus::Succeeded);
    let query = TestsQuery {
        job: a1,
        attempt: 1,
        status: None,
        after: 0,
        limit: 10,
    };
    assert!(store.tests(&query).await.unwrap().is_empty());
    let log = store.read_log(a1, LogStream::Stdout, 0, 1000).await;
    assert!(
        matches!(&log, Err(StoreError::NotFound(_))) || log.as_ref().is_ok_and(|l| l.is_empty()),
        "{log:?}"
    );
    // The running job goes on as before.
    store
        .append_log(&c3.lease, LogStream::Stdout, 0, b"still here")
        .await
        .unwrap();

    let stranger = JobId::new();
    assert_eq!(
        store.existing_jobs(&[a1, a2, stranger]).await.unwrap(),
        vec![a2]
    );
    assert_eq!(store.finished_usage().await.unwrap()[0].bytes, 50);
    store.compact().await.unwrap();
}

pub async fn one_collector_holds_the_lease_until_it_expires(store: &dyn Store) {
    assert!(store.gc_lease("x", 1000, 100).await.unwrap());
    assert!(!store.gc_lease("y", 1000, 500).await.unwrap(), "x holds it");
    assert!(store.gc_lease("x", 1000, 600).await.unwrap(), "x renews it");
    assert!(
        !store.gc_lease("y", 1000, 1500).await.unwrap(),
        "renewed until 1600"
    );
    assert!(
        store.gc_lease("y", 1000, 1600).await.unwrap(),
        "expired: y takes it"
    );
    assert!(!store.gc_lease("x", 1000, 1700).await.unwrap());
    // A lease of 0 ms gives it up: the next collector need not wait for it to run out.
    assert!(store.gc_lease("y", 0, 1800).await.unwrap(), "y gives it up");
    assert!(
        store.gc_lease("x", 1000, 1800).await.unwrap(),
        "given up: x takes it at once"
    );
    assert!(
        !store.gc_lease("y", 0, 1900).await.unwrap(),
        "giving up a lease another holds changes nothing"
    );
    assert!(
        !store.gc_lease("y", 1000, 1900).await.unwrap(),
        "x still holds it"
    );
}
