//! `cargo xtask bench junit`: ingesting a JUnit report of N test cases (parse into records,
//! then store them under a lease in SQLite, as a worker does) against Python's
//! `xml.etree.ElementTree.parse` of the same file (timed inside Python: its start-up is not
//! counted), interleaved.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use warden_store::{NewJob, Store};

use crate::{Stats, flag, ms, stats};

/// A pytest-shaped report: one in ten tests fails with a traceback, one in twenty is skipped.
fn report(cases: usize) -> String {
    let mut xml = String::from(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<testsuites><testsuite name=\"pytest\">\n",
    );
    for i in 0..cases {
        let class = format!("tests.test_module_{}", i / 50);
        match i % 20 {
            0 | 10 => xml.push_str(&format!(
                "<testcase classname=\"{class}\" name=\"test_case_{i}\" time=\"0.0{i}\"><failure message=\"assert {i} == 0\">def test_case_{i}():\n&gt;       assert {i} == 0\nE       assert {i} == 0\n\ntests/test_module.py:{i}: AssertionError</failure></testcase>\n"
            )),
            5 => xml.push_str(&format!(
                "<testcase classname=\"{class}\" name=\"test_case_{i}\" time=\"0\"><skipped message=\"not on this platform\"/></testcase>\n"
            )),
            _ => xml.push_str(&format!(
                "<testcase classname=\"{class}\" name=\"test_case_{i}\" time=\"0.001\"/>\n"
            )),
        }
    }
    xml.push_str("</testsuite></testsuites>\n");
    xml
}

pub fn bench_junit(rest: &[&str]) -> anyhow::Result<()> {
    let cases = flag(rest, "--cases", 10_000)?;
    let runs = flag(rest, "--runs", 20)?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("junit.xml");
    let xml = report(cases);
    std::fs::write(&file, &xml)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let store = warden_store_sqlite::SqliteStore::open(&dir.path().join("warden.db"))?;
    let python = format!(
        "import sys, time, xml.etree.ElementTree as E\nt = time.perf_counter()\nE.parse({:?})\nprint(time.perf_counter() - t)",
        file.display().to_string()
    );
    let (mut parse, mut ingest, mut py) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..runs + 2 {
        // Parse alone.
        let bytes = std::fs::read(&file)?;
        let t = Instant::now();
        let mut c = warden_worker::junit::Collector::default();
        c.add_file(&bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
        let parsed = t.elapsed();
        if c.counts.total != cases as u64 {
            bail!("parsed {} of {cases} test cases", c.counts.total);
        }
        // The job whose report it is, claimed (not timed: it ran before its report is read).
        let claimed = rt.block_on(async {
            store
                .submit(NewJob::plain("bench", round as i64))
                .await
                .context("submit")?;
            store
                .claim("bench", None, 60_000, round as i64)
                .await?
                .context("nothing to claim")
        })?;
        // Read, parse and store, as a worker ingests a finished job's report.
        let t = Instant::now();
        let bytes = std::fs::read(&file)?;
        let mut c = warden_worker::junit::Collector::default();
        c.add_file(&bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
        rt.block_on(store.append_tests(&claimed.lease, 0, c.cases))?;
        let ingested = t.elapsed();
        let out = std::process::Command::new("python3")
            .args(["-c", &python])
            .output()
            .context("python3")?;
        if !out.status.success() {
            bail!("python3: {}", String::from_utf8_lossy(&out.stderr));
        }
        let secs: f64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
        if round >= 2 {
            parse.push(parsed);
            ingest.push(ingested);
            py.push(Duration::from_secs_f64(secs));
        }
    }
    let (parse, ingest, py) = (stats(parse), stats(ingest), stats(py));
    println!();
    println!(
        "junit: a {cases}-test-case report ({:.1} MiB), {runs} interleaved rounds",
        xml.len() as f64 / (1 << 20) as f64
    );
    println!("| path                                              | p50 ms | p99 ms | × python |");
    println!("|---------------------------------------------------|-------:|-------:|---------:|");
    let ratio = |s: &Stats| s.p50.as_secs_f64() / py.p50.as_secs_f64();
    for (name, s) in [
        ("python3 xml.etree.ElementTree.parse              ", &py),
        ("warden: parse into records                       ", &parse),
        ("warden: read + parse + store (SQLite, one lease) ", &ingest),
    ] {
        println!(
            "| {name} | {:>6} | {:>6} | {:>8.2} |",
            ms(s.p50),
            ms(s.p99),
            ratio(s)
        );
    }
    Ok(())
}
