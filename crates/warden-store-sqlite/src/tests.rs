use super::*;

async fn fresh() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("warden.db")).unwrap();
    (store, dir)
}

mod conformance {
    use super::fresh;
    warden_store::conformance_tests!(fresh());
}

#[tokio::test]
async fn reopening_keeps_jobs_and_does_not_reapply_migrations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warden.db");
    let id = {
        let store = SqliteStore::open(&path).unwrap();
        let job = NewJob::plain("t", 1);
        store.submit(job).await.unwrap().job().id
    };
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.get(id).await.unwrap().status, JobStatus::Queued);
    let mode: String = store
        .with(|c| {
            c.query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .map_err(backend)
        })
        .await
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn the_claims_tenant_scan_seeks_the_queued_index_whatever_the_statistics() {
    let (store, _dir) = fresh().await;
    for tenant in ["a", "b"] {
        let mut job = NewJob::plain("t", 1);
        job.tenant = tenant.into();
        store.submit(job).await.unwrap();
    }
    let plan: Vec<String> = store
        .with(|c| {
            let mut s = c
                .prepare(&format!("EXPLAIN QUERY PLAN {}", perimeter::QUEUED_TENANTS))
                .map_err(backend)?;
            let rows = s
                .query_map([], |r| r.get::<_, String>(3))
                .map_err(backend)?;
            rows.collect::<rusqlite::Result<_>>().map_err(backend)
        })
        .await
        .unwrap();
    let searches: Vec<&String> = plan.iter().filter(|p| p.contains("jobs")).collect();
    assert!(
        !searches.is_empty()
            && searches
                .iter()
                .all(|p| p.contains("INDEX jobs_queued_tenant")),
        "{plan:?}"
    );
    let tenants: Vec<String> = store
        .with(|c| {
            let mut s = c.prepare(perimeter::QUEUED_TENANTS).map_err(backend)?;
            let rows = s.query_map([], |r| r.get(0)).map_err(backend)?;
            rows.collect::<rusqlite::Result<_>>().map_err(backend)
        })
        .await
        .unwrap();
    assert_eq!(tenants, ["a", "b"]);
}

/// Each read a job's path runs has an index of its own: the next queued job of a tenant, and a
/// commit's flaky tests (which only jobs with a commit enter).
#[tokio::test]
async fn the_queue_and_a_commits_tests_are_read_along_their_indexes() {
    let (store, _dir) = fresh().await;
    store.submit(NewJob::plain("t", 1)).await.unwrap();
    let plan = |sql: &'static str| {
        let store = store.clone();
        async move {
            store
                .with(move |c| {
                    let mut s = c
                        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                        .map_err(backend)?;
                    let n = s.parameter_count();
                    let nulls = vec![rusqlite::types::Null; n];
                    let rows = s
                        .query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3))
                        .map_err(backend)?;
                    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
                })
                .await
                .unwrap()
        }
    };
    let next = plan(perimeter::NEXT_OF).await;
    assert!(
        next.iter().any(|p| p.contains("INDEX jobs_queued_tenant")),
        "{next:?}"
    );
    let flaky = plan(crate::results::FLAKY_AT_COMMIT).await;
    assert!(
        flaky.iter().any(|p| p.contains("INDEX jobs_commit")),
        "{flaky:?}"
    );
    let indexes: Vec<String> = store
        .with(|c| {
            let mut s = c
                .prepare(
                    "SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'jobs'",
                )
                .map_err(backend)?;
            let rows = s.query_map([], |r| r.get(0)).map_err(backend)?;
            rows.collect::<rusqlite::Result<_>>().map_err(backend)
        })
        .await
        .unwrap();
    assert!(!indexes.iter().any(|i| i == "jobs_queued"), "{indexes:?}");
}

/// A job's status as another connection sees it: what is committed.
fn committed_status(path: &Path, id: JobId) -> String {
    let conn = Connection::open(path).unwrap();
    conn.query_row(
        "SELECT status FROM jobs WHERE id = ?1",
        [id.to_string()],
        |r| r.get(0),
    )
    .unwrap()
}

/// Holds the store thread with a slow call for a while; the calls queued meanwhile run
/// together, in one transaction, after it.
async fn hold_the_store_thread(store: &SqliteStore) -> tokio::task::JoinHandle<Result<()>> {
    let slow = store.clone();
    let holding = tokio::spawn(async move {
        slow.with(|_| {
            std::thread::sleep(std::time::Duration::from_millis(200));
            Ok(())
        })
        .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    holding
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_shared_transaction_hands_over_is_committed_by_then() {
    let (store, dir) = fresh().await;
    let path = dir.path().join("warden.db");
    // A slow call holds the store thread while the submissions queue behind it: they then
    // share one transaction, whose savepoints are released long before its commit.
    let holding = hold_the_store_thread(&store).await;
    let slot = ClaimFor {
        worker: "w".into(),
        job_types: None,
        lease_ms: 60_000,
    };
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut submissions = Vec::new();
    for _ in 0..8 {
        let (store, slot, path, seen) = (store.clone(), slot.clone(), path.clone(), seen.clone());
        submissions.push(tokio::spawn(async move {
            let hand: warden_store::Hand = Box::new(move |c: Claimed| {
                let status = committed_status(&path, c.job.id);
                seen.lock().unwrap().push(status);
                Ok(())
            });
            store
                .submit_and_hand(NewJob::plain("t", 1), &slot, 2, hand)
                .await
                .unwrap()
        }));
    }
    holding.await.unwrap().unwrap();
    let mut ended = Vec::new();
    for s in submissions {
        let (_, handed) = s.await.unwrap();
        let warden_store::Handed::Taken(id) = handed else {
            panic!("not handed: {handed:?}");
        };
        let c = store.claim("w2", None, 1, 3).await.unwrap();
        assert!(c.is_none(), "every job was claimed for the slot");
        ended.push(id);
    }
    assert_eq!(*seen.lock().unwrap(), vec!["running"; 8]);

    // The same for completions: told only once another connection sees the job ended.
    let told = Arc::new(std::sync::Mutex::new(Vec::new()));
    let holding = hold_the_store_thread(&store).await;
    let mut completions = Vec::new();
    for id in ended {
        let rec = store.get(id).await.unwrap();
        let lease = Lease {
            job_id: id,
            worker: "w".into(),
            token: rec.lease_token,
        };
        let (store, path, told) = (store.clone(), path.clone(), told.clone());
        completions.push(tokio::spawn(async move {
            let done = Completion {
                status: Some(JobStatus::Succeeded),
                ..Completion::default()
            };
            let tell: warden_store::OnCommit = Box::new(move |rec: &JobRecord| {
                told.lock().unwrap().push(committed_status(&path, rec.id));
            });
            store.complete_then(&lease, done, 4, tell).await.unwrap()
        }));
    }
    holding.await.unwrap().unwrap();
    for c in completions {
        assert_eq!(c.await.unwrap().status, JobStatus::Succeeded);
    }
    assert_eq!(*told.lock().unwrap(), vec!["succeeded"; 8]);
}

/// An idle store's memory goes back (its pooled log buffers, its page cache) and it answers as
/// before: the logs written before are read back whole, and new ones are written.
#[tokio::test]
async fn a_store_that_gave_its_memory_back_answers_as_before() {
    let (store, _dir) = fresh().await;
    store.submit(NewJob::plain("t", 1)).await.unwrap();
    let c = store.claim("w", None, 60_000, 2).await.unwrap().unwrap();
    let chunk = vec![b'x'; 100_000];
    for i in 0..4u64 {
        store
            .append_log(&c.lease, LogStream::Stdout, i * 100_000, &chunk)
            .await
            .unwrap();
    }
    assert!(store.buffers.kept() > 0, "no buffer was kept to give back");
    store.release_memory().await;
    assert_eq!(store.buffers.kept(), 0, "the pooled buffers were kept");
    let read = store
        .read_log(c.job.id, LogStream::Stdout, 0, 1 << 20)
        .await
        .unwrap();
    assert_eq!(read.len(), 400_000);
    assert!(read.iter().all(|&b| b == b'x'));
    store
        .append_log(&c.lease, LogStream::Stdout, 400_000, b"after\n")
        .await
        .unwrap();
    let tail = store
        .read_log(c.job.id, LogStream::Stdout, 400_000, 100)
        .await
        .unwrap();
    assert_eq!(tail, b"after\n");
}
