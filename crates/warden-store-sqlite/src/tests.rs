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
