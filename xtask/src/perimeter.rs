//! `cargo xtask bench perimeter`: what the perimeter costs, against itself without it, in the
//! same invocation.
//!
//! 1. Submit→terminal of a no-op job (sequential, p50/p99) on two servers started side by side:
//!    one trusting loopback callers (no token), one checking a bearer token on every request
//!    (store lookup, constant-time hash comparison, rate limiter). Jobs alternate between them
//!    so that the machine's noise falls on both alike.
//! 2. Claim+complete throughput on PostgreSQL with the queue spread over 100 tenants against
//!    one tenant (fair-share scheduling against plain FIFO order of one tenant).

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use warden_api::SubmitJobRequest;
use warden_client::Client;
use warden_store::{Completion, NewJob, Store, now_millis};
use warden_store_postgres::PgStore;
use warden_store_postgres::testing::TestDb;

use crate::queue::drain;
use crate::{build_release, flag, ms, one, start_server, stats};

fn config(dir: &std::path::Path, name: &str, trusted: bool) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "listen: 127.0.0.1:0\ngrpc_listen: 127.0.0.1:0\n\
             auth: {{loopback_trusted: {trusted}, rate_limit: {{per_second: 1000000, burst: 1000000}}}}\n\
             data_dir: {}\nslots: 2\nunsafe_fallback: true\n\
             job_types:\n  noop:\n    argv: [\"/bin/true\"]\n    timeout_s: 60\n",
            dir.join(name).display()
        ),
    )?;
    Ok(path)
}

pub fn bench_perimeter(rest: &[&str]) -> anyhow::Result<()> {
    let sequential = flag(rest, "--sequential", 300)?;
    let jobs = flag(rest, "--jobs", 20_000)?;
    let claimers = flag(rest, "--claimers", 16)?;
    let rt = tokio::runtime::Runtime::new()?;
    if let Some(i) = rest.iter().position(|a| *a == "--log-mb") {
        let mb: u64 = rest
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .filter(|m| *m > 0)
            .context("--log-mb needs a number of MiB")?;
        return masked_log(mb, &rt);
    }
    if !rest.contains(&"--claims-only") {
        auth_on_off(sequential, &rt)?;
    }
    let (one_tenant, hundred, fifo) = rt.block_on(async {
        let db = TestDb::create().await;
        let pg = PgStore::connect(&db.url, claimers as u32 + 2).await?;
        // Alternating, twice each: the better of each.
        let (mut one, mut many, mut fifo) = (0f64, 0f64, 0f64);
        for _ in 0..2 {
            fifo = fifo.max(drain_fifo(&pg, jobs, claimers).await?);
            one = one.max(drain(Arc::new(pg.clone()), jobs, claimers, 1, 1).await?);
            many = many.max(drain(Arc::new(pg.clone()), jobs, claimers, 1, 100).await?);
        }
        anyhow::Ok((one, many, fifo))
    })?;
    println!();
    println!("| claim+complete, PostgreSQL, {jobs} jobs, {claimers} claimers | jobs/s | ratio |");
    println!("|---|---|---|");
    println!(
        "| FIFO claim without tenants (the statement before fair share; baseline) | {fifo:.0} | 1.00× |"
    );
    println!(
        "| fair claim, 1 tenant | {one_tenant:.0} | {:.2}× |",
        one_tenant / fifo
    );
    println!(
        "| fair claim, 100 tenants | {hundred:.0} | {:.2}× (of 1 tenant: {:.2}×, goal ≥ 0.9×) |",
        hundred / fifo,
        hundred / one_tenant
    );
    Ok(())
}

/// Submit→terminal latency with and without a token, on two servers side by side.
fn auth_on_off(sequential: usize, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let warden = build_release()?;
    let dir = std::env::temp_dir().join(format!("warden-bench-perimeter-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (mut open, open_url) = start_server(&warden, &config(&dir, "open", true)?)?;
    let authed_config = config(&dir, "authed", false)?;
    let (mut authed, authed_url) = start_server(&warden, &authed_config)?;
    let token_file = dir.join("token");
    let made = std::process::Command::new(&warden)
        .args([
            "token",
            "create",
            "--tenant",
            "default",
            "--scopes",
            "submit,read",
        ])
        .arg("--serve-config")
        .arg(&authed_config)
        .arg("--out")
        .arg(&token_file)
        .output()?;
    if !made.status.success() {
        bail!("token create: {}", String::from_utf8_lossy(&made.stderr));
    }
    let token = std::fs::read_to_string(&token_file)?.trim().to_string();
    let latency = rt.block_on(async {
        let open = Client::new(&open_url, Duration::from_secs(30), None)?;
        let authed = Client::new(&authed_url, Duration::from_secs(30), Some(token))?;
        let req = SubmitJobRequest {
            job_type: "noop".into(),
            ..SubmitJobRequest::default()
        };
        for _ in 0..20 {
            one(&open, &req).await?;
            one(&authed, &req).await?;
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..sequential {
            a.push(one(&open, &req).await?);
            b.push(one(&authed, &req).await?);
        }
        anyhow::Ok((a, b))
    });
    for server in [&mut open, &mut authed] {
        let _ = std::process::Command::new("kill")
            .arg(server.id().to_string())
            .status();
        let _ = server.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
    let (off, on) = latency?;
    let (off, on) = (stats(off), stats(on));
    println!();
    println!("| measurement | auth off | auth on | on/off | goal |");
    println!("|---|---|---|---|---|");
    println!(
        "| submit→terminal p50 ({sequential} sequential no-op jobs each, alternating) | {} ms | {} ms | {:.3}× | ≤ 1.05× |",
        ms(off.p50),
        ms(on.p50),
        on.p50.as_secs_f64() / off.p50.as_secs_f64()
    );
    println!(
        "| submit→terminal p99 | {} ms | {} ms | {:.3}× | |",
        ms(off.p99),
        ms(on.p99),
        on.p99.as_secs_f64() / off.p99.as_secs_f64()
    );
    Ok(())
}

/// The baseline: the same drain with the claim statement warden used before tenants were
/// scheduled (oldest queued job, `FOR UPDATE SKIP LOCKED`), completing through the store.
async fn drain_fifo(pg: &PgStore, n: usize, claimers: usize) -> anyhow::Result<f64> {
    use sqlx::Row;
    for i in 0..n {
        pg.submit(NewJob::plain("noop", i as i64)).await?;
    }
    let started = Instant::now();
    let loops: Vec<_> = (0..claimers)
        .map(|c| {
            let pg = pg.clone();
            tokio::spawn(async move {
                let worker = format!("fifo-{c}");
                let mut done = 0usize;
                loop {
                    let now = now_millis();
                    let row = sqlx::query(
                        "UPDATE jobs SET status = 'running', attempts = attempts + 1,
                             started_at = $1, lease_owner = $2, lease_token = lease_token + 1,
                             lease_expires_at = $3
                         WHERE id = (SELECT id FROM jobs WHERE status = 'queued'
                                     ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
                         RETURNING id::text, lease_token",
                    )
                    .bind(now)
                    .bind(&worker)
                    .bind(now + 30_000)
                    .fetch_optional(pg.pool())
                    .await?;
                    let Some(row) = row else { break };
                    let lease = warden_store::Lease {
                        job_id: row.try_get::<String, _>(0)?.parse()?,
                        worker: worker.clone(),
                        token: row.try_get(1)?,
                    };
                    let ok = Completion {
                        status: Some(warden_core::JobStatus::Succeeded),
                        exit_code: Some(0),
                        ..Completion::default()
                    };
                    pg.complete(&lease, ok, now_millis()).await?;
                    done += 1;
                }
                anyhow::Ok(done)
            })
        })
        .collect();
    let mut total = 0;
    for l in loops {
        total += l.await??;
    }
    if total != n {
        bail!("drained {total} of {n} jobs");
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// The secret of the masked-log run: as long as its mask `[MASKED:API]`, so that both logs
/// have the same size.
const LOG_SECRET: &str = "s3cret-VALUE";
/// A 100-byte line with the secret (or a stand-in of its length) in it.
const LINE_HEAD: &str = "a log line of the job, with its ";
const LINE_TAIL: &str = " in the middle of the text, at some offset, then more..";

/// `--log-mb N`: a job printing N MiB of 100-byte lines, each holding its secret (granted as a
/// variable, so masked), against the same job printing a stand-in of the same length: time
/// submit→terminal of each, then read the stored log back whole and check that the secret is
/// nowhere and every line was masked.
fn masked_log(mb: u64, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let warden = build_release()?;
    let dir = std::env::temp_dir().join(format!("warden-bench-masking-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let secret = dir.join("api");
    std::fs::write(&secret, LOG_SECRET)?;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))?;
    let line = format!("{LINE_HEAD}$V{LINE_TAIL}");
    let bytes = mb << 20;
    let lines = bytes / 100;
    let script = format!("yes \"{line}\" | head -n {lines}");
    let config = dir.join("masking.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\ngrpc_listen: 127.0.0.1:0\nauth: {{loopback_trusted: true}}\n\
             data_dir: {}\nslots: 2\nunsafe_fallback: true\n\
             secrets: {{API: {{file: {}}}}}\n\
             job_types:\n\
             \x20 masked:\n    argv: [\"/bin/sh\", \"-c\", {script:?}]\n    timeout_s: 3600\n\
             \x20   limits: {{output_mb: {out}}}\n    secret_env: {{V: API}}\n\
             \x20 plain:\n    argv: [\"/bin/sh\", \"-c\", {script:?}]\n    timeout_s: 3600\n\
             \x20   limits: {{output_mb: {out}}}\n    allowed_params: [V]\n",
            dir.join("data").display(),
            secret.display(),
            out = mb + 16,
        ),
    )?;
    let (mut server, url) = start_server(&warden, &config)?;
    let result = rt.block_on(async {
        let client = Client::new(&url, Duration::from_secs(600), None)?;
        let run = |job_type: &str| {
            let mut req = SubmitJobRequest {
                job_type: job_type.into(),
                ..SubmitJobRequest::default()
            };
            if job_type == "plain" {
                req.params.insert("V".into(), "stand-in-abc".into());
            }
            req
        };
        let mut times = (Vec::new(), Vec::new());
        let mut masked_id = String::new();
        for _ in 0..2 {
            let t = Instant::now();
            let id = client.submit(&run("plain")).await?.job_id;
            let done = client.wait(&id, |_| {}).await?;
            times.0.push(t.elapsed());
            if done.status != warden_api::JobStatus::Succeeded || done.stdout_bytes != lines * 100 {
                bail!(
                    "plain job {id}: {:?}, {} bytes",
                    done.status,
                    done.stdout_bytes
                );
            }
            let t = Instant::now();
            let id = client.submit(&run("masked")).await?.job_id;
            let done = client.wait(&id, |_| {}).await?;
            times.1.push(t.elapsed());
            if done.status != warden_api::JobStatus::Succeeded || done.stdout_bytes != lines * 100 {
                bail!(
                    "masked job {id}: {:?}, {} bytes",
                    done.status,
                    done.stdout_bytes
                );
            }
            masked_id = id;
        }
        // The whole stored log, read back: the secret nowhere, every line masked.
        let finder = aho_corasick::AhoCorasick::new([LOG_SECRET, "[MASKED:API]"])?;
        let (mut offset, mut found, mut masks) = (0u64, 0u64, 0u64);
        let mut carry: Vec<u8> = Vec::new();
        loop {
            let chunk = client.logs_raw(&masked_id, "stdout", offset).await?;
            if chunk.is_empty() {
                break;
            }
            offset += chunk.len() as u64;
            // Lines are whole in what is scanned; a partial last line waits for the next read.
            carry.extend_from_slice(&chunk);
            let cut = carry.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
            for m in finder.find_iter(&carry[..cut]) {
                if m.pattern().as_usize() == 0 {
                    found += 1;
                } else {
                    masks += 1;
                }
            }
            carry.drain(..cut);
        }
        anyhow::Ok((times, offset, found, masks))
    });
    let _ = Command::new("kill").arg(server.id().to_string()).status();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let ((plain, masked), read, found, masks) = result?;
    if found != 0 || masks != lines || read != lines * 100 {
        bail!("{read} bytes read back: the secret {found} times, {masks} masks of {lines} lines");
    }
    let best = |v: &[Duration]| v.iter().min().copied().unwrap_or_default();
    let (p, m) = (best(&plain), best(&masked));
    println!();
    println!(
        "{mb} MiB of 100-byte lines, each with the secret: read back whole, the secret found 0 \
         times, {masks} of {lines} lines masked"
    );
    println!("| job | submit→terminal (better of 2) | ratio |");
    println!("|---|---|---|");
    println!("| stand-in, no secret (baseline) | {} ms | 1.00× |", ms(p));
    println!(
        "| the secret in every line, masked | {} ms | {:.2}× |",
        ms(m),
        m.as_secs_f64() / p.as_secs_f64()
    );
    Ok(())
}
