//! `bench e2e`'s burst: many clients submitting at once, half over HTTP/1.1 keep-alive and half
//! over HTTP/2, then the queue drained. Every submission must be answered — accepted, or
//! refused with a 4xx (a full queue is a 429) — never a 5xx or a timeout.

use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::{Stats, stats};

pub(crate) struct Burst {
    pub clients: usize,
    pub submitted: usize,
    pub accepted: usize,
    /// 4xx answers, by status.
    pub refused: Vec<(u16, usize)>,
    /// 5xx answers, transport errors and timeouts, each described.
    pub errors: Vec<String>,
    pub submit: Stats,
    /// From the first submission until no job is queued or running.
    pub drained: Duration,
}

pub(crate) async fn run(url: &str, jobs: usize, clients: usize) -> anyhow::Result<Burst> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut pool = Vec::with_capacity(clients);
    for i in 0..clients {
        let b = reqwest::Client::builder()
            .tls_certs_only([])
            .timeout(Duration::from_secs(30))
            .tcp_nodelay(true);
        pool.push(if i % 2 == 0 {
            b.http1_only().build()?
        } else {
            b.http2_prior_knowledge().build()?
        });
    }
    let per = jobs.div_ceil(clients);
    let t = Instant::now();
    let answers: Vec<Vec<(Duration, Result<u16, String>)>> =
        futures::stream::iter(pool.into_iter().map(|c| {
            let url = format!("{url}/jobs");
            async move {
                let mut out = Vec::with_capacity(per);
                for _ in 0..per {
                    let at = Instant::now();
                    let r = c
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(r#"{"job_type":"noop"}"#)
                        .send()
                        .await;
                    let r = match r {
                        Ok(resp) => {
                            let status = resp.status().as_u16();
                            let _ = resp.bytes().await;
                            Ok(status)
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    out.push((at.elapsed(), r));
                }
                out
            }
        }))
        .buffer_unordered(clients)
        .collect()
        .await;
    let mut b = Burst {
        clients,
        submitted: 0,
        accepted: 0,
        refused: Vec::new(),
        errors: Vec::new(),
        submit: Stats::default(),
        drained: Duration::ZERO,
    };
    let mut lat = Vec::new();
    for (d, r) in answers.into_iter().flatten() {
        b.submitted += 1;
        lat.push(d);
        match r {
            Ok(s) if (200..300).contains(&s) => b.accepted += 1,
            Ok(s) if (400..500).contains(&s) => match b.refused.iter_mut().find(|r| r.0 == s) {
                Some(r) => r.1 += 1,
                None => b.refused.push((s, 1)),
            },
            Ok(s) => b.errors.push(format!("HTTP {s}")),
            Err(e) => b.errors.push(e),
        }
    }
    b.submit = stats(lat);
    let client = warden_client::Client::new(url, Duration::from_secs(30), None)?;
    loop {
        let busy = |status: &'static str| warden_client::ListQuery {
            status: Some(status.into()),
            limit: Some(1),
            ..Default::default()
        };
        if client.list(&busy("queued")).await?.jobs.is_empty()
            && client.list(&busy("running")).await?.jobs.is_empty()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    b.drained = t.elapsed();
    Ok(b)
}

pub(crate) fn print(b: &Burst, steady_jobs_per_s: f64) {
    println!();
    println!(
        "burst: {} submissions from {} clients at once (half HTTP/1.1 keep-alive, half HTTP/2)",
        b.submitted, b.clients
    );
    println!(
        "accepted {}, refused {:?} (status, count), errors/timeouts {}{}",
        b.accepted,
        b.refused,
        b.errors.len(),
        b.errors
            .first()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    let drain = b.accepted as f64 / b.drained.as_secs_f64();
    println!(
        "submit p50 {:.2} ms, p99 {:.2} ms: p99/p50 {:.1}x (goal ≤ 10x); drained at {:.0} jobs/s, \
         {:.2}x the steady state's {:.0}",
        b.submit.p50.as_secs_f64() * 1e3,
        b.submit.p99.as_secs_f64() * 1e3,
        b.submit.p99.as_secs_f64() / b.submit.p50.as_secs_f64(),
        drain,
        drain / steady_jobs_per_s,
        steady_jobs_per_s
    );
}
