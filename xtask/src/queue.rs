//! `cargo xtask bench queue`: the queue without execution, then submit→start with a remote worker.
//!
//! 1. Claim+complete throughput with a no-op executor: `--jobs` queued jobs drained by
//!    `--claimers` concurrent claimers, each claiming and completing at once, on SQLite and on
//!    PostgreSQL (a fresh database), then on PostgreSQL again with `--history` finished jobs in
//!    the table (the hot path must stay on active rows).
//! 2. Submit→start with an idle remote worker: a control plane on PostgreSQL and one
//!    `warden worker` (separate processes, gRPC), a no-op job submitted over gRPC, timed until
//!    the client sees it `running` (claimed and handed to the worker) and until its first log
//!    byte (the sandboxed process ran).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use warden_proto::pb;
use warden_store::{Completion, NewJob, Store, now_millis};
use warden_store_postgres::PgStore;
use warden_store_postgres::testing::TestDb;
use warden_store_sqlite::SqliteStore;

use crate::{build_release, flag, ms, stats};

/// Job `i` of a queue spread round-robin over `tenants`.
fn new_job(i: usize, tenants: usize) -> NewJob {
    NewJob {
        tenant: if tenants == 1 {
            "default".to_string()
        } else {
            format!("t{}", i % tenants)
        },
        ..NewJob::plain("noop", i as i64)
    }
}

/// Queues `n` jobs spread over `tenants` (16 submitters), then drains them with `claimers`
/// loops that each claim up to `batch` jobs at once (as a worker session with idle slots does)
/// and complete each. Returns jobs per second of the drain.
pub(crate) async fn drain(
    store: Arc<dyn Store>,
    n: usize,
    claimers: usize,
    batch: usize,
    tenants: usize,
) -> anyhow::Result<f64> {
    let submitters: Vec<_> = (0..16)
        .map(|s| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in (s..n).step_by(16) {
                    store.submit(new_job(i, tenants)).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for s in submitters {
        s.await??;
    }
    let started = Instant::now();
    let loops: Vec<_> = (0..claimers)
        .map(|c| {
            let store = store.clone();
            tokio::spawn(async move {
                let worker = format!("bench-{c}");
                let mut done = 0usize;
                loop {
                    let claimed = if batch == 1 {
                        store
                            .claim(&worker, None, 30_000, now_millis())
                            .await?
                            .into_iter()
                            .collect()
                    } else {
                        store
                            .claim_many(&worker, None, batch, 30_000, now_millis())
                            .await?
                    };
                    if claimed.is_empty() {
                        break;
                    }
                    for c in claimed {
                        let ok = Completion {
                            status: Some(warden_core::JobStatus::Succeeded),
                            exit_code: Some(0),
                            ..Completion::default()
                        };
                        store.complete(&c.lease, ok, now_millis()).await?;
                        done += 1;
                    }
                }
                anyhow::Ok(done)
            })
        })
        .collect();
    let mut total = 0;
    for l in loops {
        total += l.await??;
    }
    let took = started.elapsed();
    if total != n {
        bail!("drained {total} of {n} jobs");
    }
    Ok(n as f64 / took.as_secs_f64())
}

/// Fills the table with `n` finished jobs, the way months of history would.
async fn add_history(pg: &PgStore, n: usize) -> anyhow::Result<()> {
    warden_store_postgres::testing::add_finished_history(pg, n).await?;
    Ok(())
}

pub fn bench_queue(rest: &[&str]) -> anyhow::Result<()> {
    let jobs = flag(rest, "--jobs", 20_000)?;
    let claimers = flag(rest, "--claimers", 16)?;
    let history = flag(rest, "--history", 1_000_000)?;
    let starts = flag(rest, "--starts", 200)?;
    let batch = flag(rest, "--batch", 16)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        println!("queue only: {jobs} jobs, {claimers} claimers, claim + complete each");
        let dir = tempfile::tempdir()?;
        let sqlite: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("q.db"))?);
        let sqlite_rate = drain(sqlite, jobs, claimers, 1, 1).await?;
        println!("  sqlite: {sqlite_rate:.0} jobs/s");

        let db = TestDb::create().await;
        let pg = PgStore::connect(&db.url, claimers as u32 + 2).await?;
        let pg_rate = drain(Arc::new(pg.clone()), jobs, claimers, 1, 1).await?;
        println!("  postgres: {pg_rate:.0} jobs/s");
        let pg_batch = drain(Arc::new(pg.clone()), jobs, claimers, batch, 1).await?;
        println!("  postgres, claims of up to {batch}: {pg_batch:.0} jobs/s");
        eprintln!("  adding {history} finished jobs ...");
        add_history(&pg, history).await?;
        let pg_hist = drain(Arc::new(pg.clone()), jobs, claimers, 1, 1).await?;
        println!("  postgres with {history} finished jobs: {pg_hist:.0} jobs/s");
        drop(pg);
        // The baseline: what this PostgreSQL does with pgbench's simple-update transactions at
        // the same concurrency (a claim+complete is two write transactions).
        let pgbench_tps = pgbench(&db.url, claimers)?;
        println!("  pgbench simple-update: {pgbench_tps:.0} transactions/s");

        let (running, first_byte) = submit_to_start(&db.url, starts).await?;
        let run = stats(running);
        let byte = stats(first_byte);
        println!();
        println!("| measurement | result | goal |");
        println!("|---|---|---|");
        println!("| claim+complete, SQLite ({claimers} claimers) | {sqlite_rate:.0} jobs/s | |");
        println!(
            "| claim+complete, PostgreSQL ({claimers} claimers) | {pg_rate:.0} jobs/s | ≥ 5,000 |"
        );
        println!(
            "| claim+complete, PostgreSQL, claims of up to {batch} (one statement) | {pg_batch:.0} jobs/s | ≥ 5,000 |"
        );
        println!(
            "| pgbench `-N` (simple update), same database and concurrency (baseline) | {pgbench_tps:.0} tx/s = {:.0} two-transaction jobs/s | |",
            pgbench_tps / 2.0
        );
        println!(
            "| warden / pgbench, per write transaction | {:.2}× | |",
            pg_rate * 2.0 / pgbench_tps
        );
        println!(
            "| claim+complete, PostgreSQL with {history} finished jobs | {pg_hist:.0} jobs/s ({:.2}× empty) | stays fast |",
            pg_hist / pg_rate
        );
        println!(
            "| submit→running, idle remote worker (p50 / p99, {starts} jobs) | {} / {} ms | p50 ≤ 5 ms |",
            ms(run.p50),
            ms(run.p99)
        );
        println!(
            "| submit→first log byte, sandboxed (p50 / p99) | {} / {} ms | |",
            ms(byte.p50),
            ms(byte.p99)
        );
        anyhow::Ok(())
    })
}

/// `pgbench -N` on a scratch schema of the bench database; transactions per second.
fn pgbench(url: &str, clients: usize) -> anyhow::Result<f64> {
    let run = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new("pgbench")
            .args(args)
            .arg(url)
            .output()
            .context("pgbench (Debian package postgresql-client) is needed for the baseline")?;
        if !out.status.success() {
            bail!("pgbench {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    run(&["-i", "-q", "-s", "4"])?;
    let clients = clients.to_string();
    let out = run(&["-N", "-n", "-c", &clients, "-j", "2", "-T", "10"])?;
    out.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .context("no tps in pgbench's output")
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `warden <args>` and returns it with the rest of the first stdout line after `prefix`.
fn spawn_announcing(
    warden: &Path,
    args: &[&str],
    prefix: &str,
) -> anyhow::Result<(Killed, String)> {
    let mut child = Command::new(warden)
        .args(args)
        .env("RUST_LOG", "error")
        .env("WARDEN_WORKER_TOKEN", "bench-token-0123456789abcdef")
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("no stdout")?;
    let child = Killed(child);
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        if let Some(rest) = line?.strip_prefix(prefix) {
            std::thread::spawn(move || lines.for_each(drop));
            return Ok((child, rest.to_string()));
        }
    }
    bail!("warden {args:?} did not announce {prefix:?}")
}

async fn submit_to_start(db_url: &str, n: usize) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let warden = build_release()?;
    let dir = tempfile::tempdir()?;
    let yaml = |data: &Path| {
        format!(
            "listen: 127.0.0.1:0\ngrpc_listen: 127.0.0.1:0\nauth: {{loopback_trusted: true}}\ndata_dir: {}\nunsafe_fallback: true\n\
             job_types:\n  noop:\n    argv: [\"/bin/echo\", \"started\"]\n    timeout_s: 60\n",
            data.display()
        )
    };
    let cp_config = dir.path().join("cp.yaml");
    std::fs::write(&cp_config, yaml(&dir.path().join("cp")))?;
    let w_config = dir.path().join("w.yaml");
    std::fs::write(&w_config, yaml(&dir.path().join("w")))?;
    let cp_path = cp_config.to_string_lossy().into_owned();
    let (_cp, grpc) = spawn_announcing(
        &warden,
        &["serve", "--config", &cp_path, "--database-url", db_url],
        "warden gRPC listening on ",
    )?;
    let w_path = w_config.to_string_lossy().into_owned();
    let (_worker, _) = spawn_announcing(
        &warden,
        &[
            "worker", "--server", &grpc, "--config", &w_path, "--slots", "2",
        ],
        "warden worker ",
    )?;
    let channel = tonic::transport::Endpoint::from_shared(grpc.clone())?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let mut jobs = pb::job_service_client::JobServiceClient::new(channel);
    let (mut running, mut first_byte) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n + 10 {
        let t0 = Instant::now();
        let job = jobs
            .submit_job(pb::SubmitJobRequest {
                job_type: "noop".into(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .job
            .context("no job")?;
        if i == 10 {
            eprintln!("  submit RPC alone: {:?}", t0.elapsed());
        }
        let mut watch = jobs
            .watch_job(pb::WatchJobRequest {
                job_id: job.job_id.clone(),
            })
            .await?
            .into_inner();
        let (mut t_run, mut t_byte) = (None, None);
        while let Some(j) = watch.message().await? {
            if t_run.is_none() && j.status != pb::JobStatus::Queued as i32 {
                t_run = Some(t0.elapsed());
            }
            if t_byte.is_none() && j.stdout_bytes > 0 {
                t_byte = Some(t0.elapsed());
            }
            if t_run.is_some() && t_byte.is_some() {
                break;
            }
        }
        // The first few warm the caches and connections.
        if i >= 10 {
            running.push(t_run.context("never ran")?);
            first_byte.push(t_byte.context("no output")?);
        }
        // Idle between jobs: the worker is waiting, not busy.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((running, first_byte))
}
