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
