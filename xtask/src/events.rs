//! `cargo xtask bench events`: end-to-end throughput with JetStream events on against off, in
//! the same invocation. The same release binary serves both (a fresh data directory each
//! round, rounds alternating off/on); "on" publishes every job's state changes and its log to a
//! nats-server of the bench's own (JetStream on a temporary directory). Each round runs
//! `--jobs` jobs (`/bin/echo`: one log chunk each) at concurrency 32 through HTTP submit and
//! follow; an "on" round also waits until JetStream holds every job event, and reports how
//! long after the last job ended that was (the publishing lag).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use warden_api::SubmitJobRequest;
use warden_client::Client;

use crate::{build_release, flag, one, start_server};

const CONCURRENCY: usize = 32;

pub fn bench_events(rest: &[&str]) -> anyhow::Result<()> {
    let jobs = flag(rest, "--jobs", 1000)?;
    let rounds = flag(rest, "--rounds", 3)?.max(1);
    let warden = build_release()?;
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut nats = Command::new("/usr/sbin/nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir.path().join("nats"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("nats-server (scripts/setup.sh installs it)")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nats-server did not listen");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let rt = tokio::runtime::Runtime::new()?;
    let mut off = Vec::new();
    let mut on = Vec::new();
    let mut lags = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        for round in 0..rounds {
            for events in [false, true] {
                let data = dir.path().join(format!("data-{round}-{events}"));
                let config = dir.path().join("bench.yaml");
                let section = if events {
                    format!(
                        "events:\n  nats: {{url: \"nats://127.0.0.1:{port}\", stream_prefix: B{round}, subject_prefix: bench{round}}}\n"
                    )
                } else {
                    String::new()
                };
                std::fs::write(
                    &config,
                    format!(
                        "listen: 127.0.0.1:0\ngrpc_listen: 127.0.0.1:0\nauth: {{loopback_trusted: true}}\n\
                         data_dir: {}\nslots: 2\nunsafe_fallback: true\n{section}job_types:\n  echo:\n    argv: [\"/bin/echo\", \"hello\"]\n    timeout_s: 60\n",
                        data.display()
                    ),
                )?;
                let (mut server, url) = start_server(&warden, &config)?;
                let measured = rt.block_on(async {
                    let tput = throughput(&url, jobs).await?;
                    let lag = if events {
                        Some(drained(port, round, jobs + 20).await?)
                    } else {
                        None
                    };
                    anyhow::Ok((tput, lag))
                });
                let _ = Command::new("kill").arg(server.id().to_string()).status();
                let _ = server.wait();
                let (tput, lag) = measured?;
                if events {
                    on.push(tput);
                    lags.extend(lag);
                } else {
                    off.push(tput);
                }
            }
        }
        Ok(())
    })();
    let _ = nats.kill();
    let _ = nats.wait();
    result?;
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (off_m, on_m) = (median(off.clone()), median(on.clone()));
    let lag_m = {
        let mut l = lags.clone();
        l.sort();
        l[l.len() / 2]
    };
    println!();
    println!(
        "events: {jobs} jobs (/bin/echo) at concurrency {CONCURRENCY}, 2 slots, {rounds} rounds \
         alternating; JetStream on a local nats-server"
    );
    println!("| events        | jobs/s per round     | median jobs/s |");
    println!("|---------------|----------------------|--------------:|");
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("| off           | {:<20} | {:>13.0} |", fmt(&off), off_m);
    println!("| on (JetStream)| {:<20} | {:>13.0} |", fmt(&on), on_m);
    println!(
        "ratio on/off: {:.2}x (goal >= 0.9x); every job event in JetStream {} ms (median) after \
         the last job ended",
        on_m / off_m,
        lag_m.as_millis()
    );
    Ok(())
}

async fn throughput(url: &str, jobs: usize) -> anyhow::Result<f64> {
    let client = Client::new(url, Duration::from_secs(30), None)?;
    let req = SubmitJobRequest {
        job_type: "echo".into(),
        ..SubmitJobRequest::default()
    };
    for _ in 0..20 {
        one(&client, &req).await?;
    }
    let t = Instant::now();
    let results: Vec<anyhow::Result<Duration>> = futures::stream::iter(0..jobs)
        .map(|_| one(&client, &req))
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(jobs as f64 / t.elapsed().as_secs_f64())
}

/// Waits until JetStream holds the 3 state events of each of `jobs` jobs; how long that took.
async fn drained(port: u16, round: usize, jobs: usize) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let client = async_nats::connect(format!("nats://127.0.0.1:{port}")).await?;
    let js = async_nats::jetstream::new(client);
    let want = jobs as u64 * 3;
    loop {
        let have = match js.get_stream(format!("B{round}_JOBS")).await {
            Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        };
        if have >= want {
            return Ok(t.elapsed());
        }
        if t.elapsed() > Duration::from_secs(120) {
            bail!("JetStream holds {have} of {want} job events after 2 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
