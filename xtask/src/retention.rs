//! `cargo xtask bench retention`: retention's collector on a big history, beside the queue.
//!
//! An embedded store (SQLite, as `warden serve` opens it) holds `--jobs` finished jobs, each
//! with a 1 KiB log and an artifact directory whose file makes their total `--gb` (sparse
//! files: their apparent size is what the job records count; unlinking them costs what
//! unlinking written files costs, less freeing the blocks), plus 50 running jobs with
//! artifact directories. The budget is half of it. Claim throughput (1,000 new jobs, claimed
//! and completed by 4 claimers) is measured without the collector, then while one pass brings
//! the store under the budget; then the pass is checked: under the budget, every running job
//! and its directory still there.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use warden_core::{Config, JobId, JobStatus};
use warden_server::gc::Collector;
use warden_store::{Store, now_millis};
use warden_store_sqlite::SqliteStore;

use crate::flag;
use crate::queue::drain;

const CLAIMERS: usize = 4;
const NEW_JOBS: usize = 1_000;
const RUNNING: usize = 50;

pub fn bench_retention(rest: &[&str]) -> anyhow::Result<()> {
    let jobs = flag(rest, "--jobs", 200_000)?;
    let gb = flag(rest, "--gb", 20)?;
    let rounds = flag(rest, "--rounds", 3)?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("warden.db");
    let artifacts = dir.path().join("artifacts");
    std::fs::create_dir_all(&artifacts)?;
    let total = (gb as u64) << 30;
    let per_job = total / jobs.max(1) as u64;
    let budget_mb = (total >> 20) / 2;
    eprintln!("retention: {jobs} finished jobs, {gb} GiB, budget {budget_mb} MiB: filling ...");
    let filled = Instant::now();
    fill(&db, &artifacts, jobs, per_job)?;
    eprintln!("  filled in {:.0} s", filled.elapsed().as_secs_f64());

    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&db)?);
        let running = start_running(&store, &artifacts).await?;
        let config = Config::from_yaml_str(
            &format!("retention: {{max_mb: {budget_mb}, batch: 500}}\n"),
            "bench",
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let collector = Collector {
            store: store.clone(),
            config: Arc::new(config),
            artifacts: artifacts.clone(),
            repos: None,
            owner: "bench".into(),
            s3: None,
            metrics: None,
        };

        let mut quiet = Vec::new();
        for _ in 0..rounds {
            quiet.push(drain(store.clone(), NEW_JOBS, CLAIMERS, 1, 1).await?);
        }
        let started = Instant::now();
        let pass = tokio::spawn(async move { collector.run_once(false).await });
        // Let the pass reach its deletions before the first round.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut busy = Vec::new();
        for _ in 0..rounds {
            if pass.is_finished() {
                break;
            }
            busy.push(drain(store.clone(), NEW_JOBS, CLAIMERS, 1, 1).await?);
        }
        let report = pass.await??;
        let gc_took = started.elapsed();
        if busy.is_empty() {
            bail!("the pass ended before a claim round could run beside it: use more --jobs");
        }

        let usage: u64 = store.finished_usage().await?.iter().map(|u| u.bytes).sum();
        if usage > budget_mb << 20 {
            bail!("still over the budget: {usage} bytes");
        }
        for id in &running {
            let job = store.get(*id).await?;
            if job.status != JobStatus::Running || !artifacts.join(id.to_string()).is_dir() {
                bail!("running job {id} was touched: {job:?}");
            }
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (q, b) = (median(quiet), median(busy.clone()));
        println!("| claims of {NEW_JOBS} new jobs ({CLAIMERS} claimers) | jobs/s (median) |");
        println!("|---|---|");
        println!("| without the collector | {q:.0} |");
        println!(
            "| during the pass ({} of {rounds} rounds) | {b:.0} |",
            busy.len()
        );
        println!("| **ratio** | **{:.2}×** |", b / q);
        println!(
            "pass: deleted {} jobs ({:.1} GiB) in {:.1} s, gave back {:.0} MiB of database; \
             {RUNNING} running jobs untouched; now {:.1} GiB (budget {:.1} GiB)",
            report.jobs_deleted(),
            report.bytes_freed() as f64 / (1u64 << 30) as f64,
            gc_took.as_secs_f64(),
            report.compacted_bytes as f64 / (1u64 << 20) as f64,
            usage as f64 / (1u64 << 30) as f64,
            (budget_mb as f64) / 1024.0,
        );
        anyhow::Ok(())
    })
}

/// `jobs` finished jobs, written in bulk as months of history would have left them.
fn fill(db: &Path, artifacts: &Path, jobs: usize, per_job: u64) -> anyhow::Result<()> {
    drop(SqliteStore::open(db)?); // the schema
    let mut conn = rusqlite::Connection::open(db)?;
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF;")?;
    let log = vec![b'x'; 1024];
    let tx = conn.transaction()?;
    {
        let mut job = tx.prepare(
            "INSERT INTO jobs (id, tenant, job_type, params, status, max_attempts, attempts,
                 created_at, started_at, finished_at, exit_code, stdout_bytes, artifact_bytes)
             VALUES (?1, 'default', 'noop', '{}', 'succeeded', 1, 1, ?2, ?2, ?2, 0, 1024, ?3)",
        )?;
        let mut chunk = tx.prepare(
            "INSERT INTO log_chunks (job_id, stream, offset, data) VALUES (?1, 1, 0, ?2)",
        )?;
        let base = now_millis() - jobs as i64;
        for i in 0..jobs {
            let id = JobId::new().to_string();
            job.execute(rusqlite::params![id, base + i as i64, per_job as i64])?;
            chunk.execute(rusqlite::params![id, log])?;
            let d = artifacts.join(&id);
            std::fs::create_dir(&d)?;
            std::fs::File::create(d.join("out.bin"))?.set_len(per_job)?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Jobs claimed and left running, each with an artifact directory.
async fn start_running(store: &Arc<dyn Store>, artifacts: &Path) -> anyhow::Result<Vec<JobId>> {
    let mut ids = Vec::new();
    for _ in 0..RUNNING {
        let job = warden_store::NewJob::plain("long", now_millis());
        store.submit(job).await?;
    }
    let claimed = store
        .claim_many(
            "bench-running",
            Some(&["long".into()]),
            RUNNING,
            3_600_000,
            now_millis(),
        )
        .await?;
    for c in claimed {
        let d = artifacts.join(c.job.id.to_string());
        std::fs::create_dir(&d)?;
        std::fs::write(d.join("partial"), b"still being written")?;
        ids.push(c.job.id);
    }
    if ids.len() != RUNNING {
        bail!("claimed {} of {RUNNING} running jobs", ids.len());
    }
    Ok(ids)
}
