//! `cargo xtask bench ui`: what the web UI costs, in one invocation.
//!
//! 1. Submit→terminal of a short job (`--jobs` sequential, after a warm-up), with a job page
//!    open in headless Chromium following a chatty job's log (a line every 10 ms), against the
//!    same with the chatty job running and no page: the UI's follower's cost to everyone else.
//! 2. Time to the first log line: from submission until a job's first line is on its page
//!    (Chromium, navigated to the job page right after the submit), against `curl -N` on the
//!    SSE endpoint started at the same moment.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use warden_api::SubmitJobRequest;
use warden_client::Client;

use crate::{build_release, flag, ms, one, start_server, stats};

const TYPES: &str = r#"job_types:
  short:
    argv: ["/bin/sh", "-c", "echo done"]
    timeout_s: 60
  chatty:
    argv: ["/bin/sh", "-c", "i=0; while [ $i -lt 100000 ]; do echo \"chat line $i\"; i=$((i+1)); sleep 0.01; done"]
    timeout_s: 3600
  first:
    argv: ["/bin/sh", "-c", "echo first-line; sleep 1"]
    timeout_s: 60
"#;

pub fn bench_ui(rest: &[&str]) -> anyhow::Result<()> {
    let jobs = flag(rest, "--jobs", 100)?;
    let firsts = flag(rest, "--first", 15)?;
    let warden = build_release()?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("bench.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\ngrpc_listen: 127.0.0.1:0\nauth: {{loopback_trusted: true}}\n\
             data_dir: {}\nslots: 4\nunsafe_fallback: true\n{TYPES}",
            dir.path().join("data").display()
        ),
    )?;
    let (mut server, url) = start_server(&warden, &config)?;
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(run(&url, dir.path(), jobs, firsts));
    let _ = Command::new("kill").arg(server.id().to_string()).status();
    let _ = server.wait();
    let (without, with, curl, page) = result?;
    let (a, b) = (stats(without), stats(with));
    let (c, p) = (stats(curl), stats(page));
    println!();
    println!("ui: {jobs} sequential short jobs, a chatty job running throughout (a line / 10 ms)");
    println!("| submit→terminal                               | p50 ms | p99 ms |");
    println!("|-----------------------------------------------|-------:|-------:|");
    println!(
        "| no page open                                  | {:>6} | {:>6} |",
        ms(a.p50),
        ms(a.p99)
    );
    println!(
        "| job page open in Chromium, following the log  | {:>6} | {:>6} |",
        ms(b.p50),
        ms(b.p99)
    );
    println!(
        "ratio with/without page: p50 {:.3}x (goal ≤ 1.05x)",
        b.p50.as_secs_f64() / a.p50.as_secs_f64()
    );
    println!();
    println!("time to the first log line, {firsts} jobs each");
    println!("| from submission                               | p50 ms | p99 ms |");
    println!("|-----------------------------------------------|-------:|-------:|");
    println!(
        "| curl -N on /jobs/{{id}}/logs?follow=true         | {:>6} | {:>6} |",
        ms(c.p50),
        ms(c.p99)
    );
    println!(
        "| the job page in Chromium (navigate + render)  | {:>6} | {:>6} |",
        ms(p.p50),
        ms(p.p99)
    );
    println!(
        "ratio page/curl: p50 {:.2}x",
        p.p50.as_secs_f64() / c.p50.as_secs_f64()
    );
    Ok(())
}

type Runs = (Vec<Duration>, Vec<Duration>, Vec<Duration>, Vec<Duration>);

async fn run(url: &str, dir: &std::path::Path, jobs: usize, firsts: usize) -> anyhow::Result<Runs> {
    let client = Client::new(url, Duration::from_secs(30), None)?;
    let req = |t: &str| SubmitJobRequest {
        job_type: t.into(),
        ..SubmitJobRequest::default()
    };
    let chatty = client.submit(&req("chatty")).await?.job_id;
    let short = req("short");
    for _ in 0..10 {
        one(&client, &short).await?;
    }
    let browser = Chromium::start(dir).await?;

    // The same sequence twice, alternating halves so drift on a noisy machine hits both.
    let mut without = Vec::new();
    let mut with = Vec::new();
    for round in 0..2 {
        for _ in 0..jobs / 2 {
            without.push(one(&client, &short).await?);
        }
        browser.goto(&format!("{url}/ui/jobs/{chatty}")).await?;
        browser
            .wait_for("document.getElementById('log')?.textContent.includes('chat line')")
            .await?;
        for _ in 0..jobs / 2 {
            with.push(one(&client, &short).await?);
        }
        // Still following (the page did not stop): the newest line keeps changing.
        let a = browser
            .eval("return document.getElementById('log').textContent.length")
            .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let b = browser
            .eval("return document.getElementById('log').textContent.length")
            .await?;
        if a == b {
            bail!("round {round}: the page stopped following the chatty job's log");
        }
        browser.goto("about:blank").await?;
    }

    let mut curl = Vec::new();
    let mut page = Vec::new();
    for _ in 0..firsts {
        let t = Instant::now();
        let id = client.submit(&req("first")).await?.job_id;
        let mut child = Command::new("curl")
            .args(["-sN", &format!("{url}/jobs/{id}/logs?follow=true")])
            .stdout(Stdio::piped())
            .spawn()
            .context("curl")?;
        let out = child.stdout.take().context("curl stdout")?;
        let seen = tokio::task::spawn_blocking(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if line.contains("first-line") {
                    return Some(t.elapsed());
                }
            }
            None
        })
        .await?;
        let _ = child.kill();
        let _ = child.wait();
        curl.push(seen.context("curl never saw the first line")?);
        client.cancel(&id).await.ok();

        let t = Instant::now();
        let id = client.submit(&req("first")).await?.job_id;
        browser.goto(&format!("{url}/ui/jobs/{id}")).await?;
        browser
            .wait_for("document.getElementById('log')?.textContent.includes('first-line')")
            .await?;
        page.push(t.elapsed());
        browser.goto("about:blank").await?;
        client.cancel(&id).await.ok();
    }
    client.cancel(&chatty).await?;
    browser.end().await;
    Ok((without, with, curl, page))
}

/// Headless Chromium through chromedriver, as the UI's browser tests run it.
struct Chromium {
    wd: fantoccini::Client,
    driver: std::process::Child,
}

impl Chromium {
    async fn start(dir: &std::path::Path) -> anyhow::Result<Chromium> {
        use std::os::unix::process::CommandExt;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("chromedriver (scripts/setup.sh installs chromium-driver)")?;
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu",
                         "--disable-background-networking", "--disable-component-update",
                         "--no-first-run", "--disable-dev-shm-usage",
                         format!("--user-data-dir={}", dir.join("chrome").display())],
            }),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match fantoccini::ClientBuilder::new(
                hyper_util::client::legacy::connect::HttpConnector::new(),
            )
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            {
                Ok(wd) => return Ok(Chromium { wd, driver }),
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => bail!("no WebDriver session: {e}"),
            }
        }
    }

    async fn goto(&self, url: &str) -> anyhow::Result<()> {
        Ok(self.wd.goto(url).await?)
    }

    async fn eval(&self, script: &str) -> anyhow::Result<serde_json::Value> {
        Ok(self.wd.execute(script, vec![]).await?)
    }

    async fn wait_for(&self, condition: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let script = format!("return !!({condition});");
        while self.eval(&script).await? != serde_json::Value::Bool(true) {
            if Instant::now() > deadline {
                bail!("the page never showed {condition}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }

    async fn end(self) {
        let _ = self.wd.close().await;
        // The driver's own process group (it leads it): Chromium's processes are in it too.
        if let Some(group) = rustix::process::Pid::from_raw(self.driver.id() as i32) {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let mut driver = self.driver;
        let _ = driver.wait();
    }
}
