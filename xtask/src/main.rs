//! `cargo xtask bench e2e|sandbox|checkout|queue|perimeter|egress|images|retention|events ...`,
//! `cargo xtask vm-test`, `cargo xtask image` and `cargo xtask deploy-check` (see `usage`)
//!
//! Benchmarks are not tests: they print a table of medians and ratios against a baseline run in
//! the same invocation. Results and the command that reproduces them go to docs/benchmarks.md.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use warden_api::SubmitJobRequest;
use warden_client::Client;

mod burst;
mod checkout;
mod deploy_check;
mod egress;
mod events;
mod image;
mod images;
mod logs;
mod perimeter;
mod queue;
mod results;
mod retention;
mod sandbox;
mod ui;
mod vm;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["bench", "e2e", rest @ ..] => bench_e2e(rest),
        ["bench", "sandbox", rest @ ..] => sandbox::bench_sandbox(rest),
        ["bench", "gvisor", rest @ ..] => sandbox::bench_gvisor(rest),
        ["bench", "pipeline", rest @ ..] => sandbox::bench_pipeline(rest),
        ["bench", "checkout", rest @ ..] => checkout::bench_checkout(rest),
        ["bench", "queue", rest @ ..] => queue::bench_queue(rest),
        ["bench", "perimeter", rest @ ..] => perimeter::bench_perimeter(rest),
        ["bench", "egress", rest @ ..] => egress::bench_egress(rest),
        ["bench", "images", rest @ ..] => images::bench_images(rest),
        ["bench", "junit", rest @ ..] => results::bench_junit(rest),
        ["bench", "retention", rest @ ..] => retention::bench_retention(rest),
        ["bench", "ui", rest @ ..] => ui::bench_ui(rest),
        ["bench", "events", rest @ ..] => events::bench_events(rest),
        ["vm-test", rest @ ..] => vm::vm_test(rest),
        ["image", rest @ ..] => image::image(rest),
        ["deploy-check", rest @ ..] => deploy_check::deploy_check(rest),
        _ => {
            eprintln!(
                "usage: cargo xtask bench e2e [--jobs N] [--sequential N] [--concurrency C] [--slots S] [--rounds R] [--log-mb N | --no-logs] [--random-mb N] [--log-rounds R] [--burst N] [--burst-clients C] [--followers N] [--follow-mb M]\n       cargo xtask bench sandbox [--runs N]\n       cargo xtask bench gvisor [--runs N]\n       cargo xtask bench pipeline [--runs N] [--stages N]\n       cargo xtask bench junit [--cases N] [--runs N]\n       cargo xtask bench checkout [--files N] [--mb M] [--runs R] [--jobs J]\n       cargo xtask bench queue [--jobs N] [--claimers C] [--history H] [--starts S]\n       cargo xtask bench perimeter [--sequential N] [--jobs N] [--claimers C] [--claims-only] [--log-mb N]\n       cargo xtask bench egress [--mb N] [--downloads N] [--connections N] [--starts N]\n       cargo xtask bench images [--mb N] [--starts N] [--rounds N]\n       cargo xtask bench retention [--jobs N] [--gb G] [--rounds R]\n       cargo xtask bench ui [--jobs N] [--first N]\n       cargo xtask bench events [--jobs N] [--rounds R]\n       cargo xtask image [--no-run]\n       cargo xtask deploy-check\n       cargo xtask vm-test [--bench] [--kvm] [--systemd-only] [--timeout-min M] [--memory-mb M]"
            );
            std::process::exit(2);
        }
    }
}

fn flag(rest: &[&str], name: &str, default: usize) -> anyhow::Result<usize> {
    match rest.iter().position(|a| *a == name) {
        None => Ok(default),
        Some(i) => {
            let v = rest
                .get(i + 1)
                .with_context(|| format!("{name} needs a value"))?;
            let n: usize = v
                .parse()
                .with_context(|| format!("{name} {v:?} is not a number"))?;
            if n == 0 {
                bail!("{name} must be at least 1");
            }
            Ok(n)
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The release `warden` binary, built first (unless `XTASK_NO_BUILD` is set: inside the VM of
/// `vm-test`, where there is no cargo and the binary was put in place).
fn build_release() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    if std::env::var_os("XTASK_NO_BUILD").is_some() {
        return Ok(root.join("target/release/warden"));
    }
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "-p", "warden"])
        .current_dir(&root)
        .status()?;
    if !status.success() {
        bail!("cargo build --release failed");
    }
    Ok(root.join("target/release/warden"))
}

#[derive(Debug, Clone, Copy, Default)]
struct Stats {
    p50: Duration,
    p99: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    Stats {
        p50: at(0.50),
        p99: at(0.99),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

const NOOP: [&str; 1] = ["/bin/true"];

/// Starts `warden serve --config <config>` and waits for the address it listens on.
fn start_server(warden: &Path, config: &Path) -> anyhow::Result<(std::process::Child, String)> {
    let mut cmd = Command::new(warden);
    cmd.args(["serve", "--config"]).arg(config);
    start_command(cmd)
}

/// Starts `cmd` (a `warden serve`, perhaps behind a wrapper that execs it) and waits for the
/// address it listens on.
fn start_command(mut cmd: Command) -> anyhow::Result<(std::process::Child, String)> {
    let mut server = cmd
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = server.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        if let Some(u) = line?.strip_prefix("warden listening on ") {
            // Keep draining, so the server never writes into a closed pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return Ok((server, u.to_string()));
        }
    }
    let _ = server.kill();
    bail!("warden did not start")
}

fn bench_e2e(rest: &[&str]) -> anyhow::Result<()> {
    let jobs = flag(rest, "--jobs", 1000)?;
    let sequential = flag(rest, "--sequential", 200)?;
    let concurrency = flag(rest, "--concurrency", 32)?;
    let slots = flag(rest, "--slots", 2)?;
    let rounds = flag(rest, "--rounds", 4)?.max(1);
    let log_mb = if rest.contains(&"--no-logs") {
        0
    } else {
        flag(rest, "--log-mb", 1024)? as u64
    };
    let random_mb = flag(rest, "--random-mb", 256)? as u64;
    let log_rounds = flag(rest, "--log-rounds", 2)?;
    let burst_jobs = flag(rest, "--burst", 1000)?;
    let burst_clients = flag(rest, "--burst-clients", 64)?;
    let followers = flag(rest, "--followers", 100)?;
    let follow_mb = flag(rest, "--follow-mb", 256)? as u64;
    let warden = build_release()?;
    let dir = std::env::temp_dir().join(format!("warden-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("bench.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\ngrpc_listen: 127.0.0.1:0\nauth: {{loopback_trusted: true}}\ndata_dir: {}\nslots: {slots}\nunsafe_fallback: true\njob_types:\n  noop:\n    argv: {:?}\n    timeout_s: 60\n{}",
            dir.join("data").display(),
            NOOP,
            logs::job_types(log_mb, random_mb, follow_mb),
        ),
    )?;
    let (mut server, url) = start_server(&warden, &config)?;
    let idle_at_start = logs::idle_rss_kb(server.id());
    let rt = tokio::runtime::Runtime::new()?;
    // The limit: the same job through the sandbox alone, as many at once as the server has
    // slots, measured in turn with the server.
    let mut raw = sandbox::RawSandbox::new(&warden, slots)?;
    let cpu_before = cpu_time(server.id());
    let shape = Shape {
        jobs,
        sequential,
        concurrency,
        rounds,
    };
    // The latency and throughput parts' client on one thread: its requests, their I/O and the
    // futures that wait on them in one place, with no wake-up across threads of its own.
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = run_e2e(&client_rt, &mut raw, &url, &shape, server.id());
    drop(raw);
    let cpu = match &result {
        Ok(m) => cpu_before
            .zip(cpu_time(server.id()))
            .map(|(b, a)| (a - b) / (WARM_UP + sequential + m.jobs) as u32),
        Err(_) => None,
    };
    let burst = match &result {
        Ok(_) => Some(rt.block_on(burst::run(&url, burst_jobs, burst_clients))),
        Err(_) => None,
    };
    let log_result = match (&result, log_mb) {
        (Ok(_), 1..) => Some(rt.block_on(async {
            let client = Client::new(&url, Duration::from_secs(600), None)?;
            logs::run_logs(&client, log_mb, random_mb, log_rounds, (server.id(), &dir)).await
        })),
        _ => None,
    };
    let followed = match (&result, log_mb) {
        (Ok(_), 1..) => Some(logs::followers_runtime().and_then(|on| {
            rt.block_on(logs::run_followers(&url, followers, follow_mb, on.handle()))
        })),
        _ => None,
    };
    let idle = [idle_at_start, logs::idle_rss_kb(server.id())];
    let _ = Command::new("kill").arg(server.id().to_string()).status();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let Measured {
        seq,
        raw_lat,
        standby_lat,
        tput,
        raw_tput,
        by_round,
        e2e_cpu,
        raw_cpu,
        ..
    } = result?;

    // Baseline: the same command as a bare process, in the same invocation.
    let mut direct = Vec::with_capacity(sequential);
    for _ in 0..sequential {
        let t = Instant::now();
        Command::new(NOOP[0]).status()?;
        direct.push(t.elapsed());
    }
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..jobs / 2 {
                    let _ = Command::new(NOOP[0]).status();
                }
            });
        }
    });
    let direct_tput = (jobs / 2 * 2) as f64 / t.elapsed().as_secs_f64();
    let (d, w, r, rs) = (
        stats(direct),
        stats(seq),
        stats(raw_lat),
        stats(standby_lat),
    );

    println!();
    println!(
        "e2e: {NOOP:?}, {sequential} sequential jobs for latency, {jobs} jobs at concurrency \
         {concurrency} for throughput in {rounds} rounds, {slots} slots (direct baseline: 2 \
         threads); the raw sandbox's samples taken in turn with warden's"
    );
    println!("| path                         | p50 ms | p99 ms | jobs/s |");
    println!("|------------------------------|-------:|-------:|-------:|");
    println!(
        "| direct fork/exec             | {:>6} | {:>6} | {:>6.0} |",
        ms(d.p50),
        ms(d.p99),
        direct_tput
    );
    println!(
        "| raw sandbox (Launcher::spawn)| {:>6} | {:>6} | {:>6.0} |",
        ms(r.p50),
        ms(r.p99),
        raw_tput
    );
    println!(
        "| raw sandbox, on standby      | {:>6} | {:>6} |      — |",
        ms(rs.p50),
        ms(rs.p99)
    );
    println!(
        "| warden HTTP submit→terminal  | {:>6} | {:>6} | {:>6.0} |",
        ms(w.p50),
        ms(w.p99),
        tput
    );
    println!(
        "ratio warden/direct: p50 {:.1}x, throughput {:.2}x",
        w.p50.as_secs_f64() / d.p50.as_secs_f64(),
        tput / direct_tput
    );
    println!(
        "ratio e2e/raw sandbox: p50 {:.2}x (goal ≤ 1.25x), throughput {:.2}x (goal ≥ 0.8x; raw on \
         {slots} threads)",
        w.p50.as_secs_f64() / r.p50.as_secs_f64(),
        tput / raw_tput
    );
    let mut ratios: Vec<f64> = by_round.iter().map(|(e, r)| e / r).collect();
    let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    ratios.sort_by(f64::total_cmp);
    let mid = ratios.len() / 2;
    let median = match ratios.len() % 2 {
        1 => ratios[mid],
        _ => (ratios[mid - 1] + ratios[mid]) / 2.0,
    };
    println!(
        "throughput e2e/raw by round: {} (median {median:.2}x)",
        shown.join(" ")
    );
    println!(
        "ratio e2e/raw sandbox on standby (its supervisor forked before the clock, as a slot's): \
         p50 {:.2}x",
        w.p50.as_secs_f64() / rs.p50.as_secs_f64()
    );
    if let Some(cpu) = cpu {
        println!(
            "the server's own CPU per job: {:.2} ms (its threads; the sandboxes are started by \
             another process)",
            cpu.as_secs_f64() * 1e3
        );
    }
    if let (Some(raw), Some(e2e)) = (raw_cpu, e2e_cpu) {
        print_cpu_split(raw, e2e);
    }
    if let Some(b) = burst {
        burst::print(&b?, tput);
    }
    if let Some(r) = log_result {
        logs::print(&r?);
    }
    if let Some(f) = followed {
        logs::print_followers(&f?);
    }
    logs::print_idle(idle);
    Ok(())
}

/// The sizes of `bench e2e`'s latency and throughput parts.
struct Shape {
    jobs: usize,
    sequential: usize,
    concurrency: usize,
    rounds: usize,
}

/// What `bench e2e` measured of warden and of the raw sandbox, in turn.
struct Measured {
    /// Submit → `end` of one job at a time.
    seq: Vec<Duration>,
    /// The raw sandbox one at a time, each taken right after one of `seq`.
    raw_lat: Vec<Duration>,
    /// The same, its supervisor on standby.
    standby_lat: Vec<Duration>,
    /// Jobs through warden in the throughput part.
    jobs: usize,
    /// Jobs per second over every round, warden's and the raw sandbox's.
    tput: f64,
    raw_tput: f64,
    /// Each round's jobs per second: (warden, raw sandbox).
    by_round: Vec<(f64, f64)>,
    e2e_cpu: Option<CpuSplit>,
    raw_cpu: Option<CpuSplit>,
}

/// Warden's jobs and the raw sandbox's in turn: one sequential job of each at a time, then
/// `rounds` blocks of each at full concurrency. A machine whose speed drifts (its neighbours,
/// the hypervisor) moves both sides of every ratio alike.
fn run_e2e(
    rt: &tokio::runtime::Runtime,
    raw: &mut sandbox::RawSandbox,
    url: &str,
    shape: &Shape,
    server: u32,
) -> anyhow::Result<Measured> {
    let client = Client::new(url, Duration::from_secs(30), None)?;
    let req = SubmitJobRequest {
        job_type: "noop".into(),
        ..SubmitJobRequest::default()
    };
    rt.block_on(async {
        for _ in 0..WARM_UP {
            one(&client, &req).await?;
        }
        anyhow::Ok(())
    })?;
    let mut m = Measured {
        seq: Vec::with_capacity(shape.sequential),
        raw_lat: Vec::with_capacity(shape.sequential),
        standby_lat: Vec::with_capacity(shape.sequential),
        jobs: 0,
        tput: 0.0,
        raw_tput: 0.0,
        by_round: Vec::with_capacity(shape.rounds),
        e2e_cpu: None,
        raw_cpu: None,
    };
    for _ in 0..shape.sequential {
        m.seq.push(rt.block_on(one(&client, &req))?);
        let (spawned, on_standby) = raw.one()?;
        m.raw_lat.push(spawned);
        m.standby_lat.push(on_standby);
    }
    let per_round = shape.jobs.div_ceil(shape.rounds);
    let (mut e2e_time, mut raw_time, mut raw_jobs) = (Duration::ZERO, Duration::ZERO, 0);
    let (mut e2e_cpus, mut raw_cpus) = (Vec::new(), Vec::new());
    for _ in 0..shape.rounds {
        let (t, mark) = (Instant::now(), CpuMark::now(Some(server)));
        let results: Vec<anyhow::Result<Duration>> = rt.block_on(
            futures::stream::iter(0..per_round)
                .map(|_| one(&client, &req))
                .buffer_unordered(shape.concurrency)
                .collect(),
        );
        let (took, cpu) = (t.elapsed(), mark.per_job(per_round));
        for r in results {
            r?;
        }
        let (ran, raw_took, raw_cpu) = raw.block(per_round)?;
        m.by_round.push((
            per_round as f64 / took.as_secs_f64(),
            ran as f64 / raw_took.as_secs_f64(),
        ));
        (e2e_time, raw_time) = (e2e_time + took, raw_time + raw_took);
        (m.jobs, raw_jobs) = (m.jobs + per_round, raw_jobs + ran);
        e2e_cpus.extend(cpu);
        raw_cpus.extend(raw_cpu);
    }
    m.tput = m.jobs as f64 / e2e_time.as_secs_f64();
    m.raw_tput = raw_jobs as f64 / raw_time.as_secs_f64();
    m.e2e_cpu = CpuSplit::mean(&e2e_cpus, shape.rounds);
    m.raw_cpu = CpuSplit::mean(&raw_cpus, shape.rounds);
    Ok(m)
}

/// CPU per job over the throughput part of a bench: the whole machine's busy time, and what
/// the server and the bench itself (the client) took of it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuSplit {
    machine: Duration,
    server: Duration,
    client: Duration,
}

impl CpuSplit {
    /// The mean of `rounds` rounds' splits of as many jobs each; `None` unless every round's
    /// counters were read.
    fn mean(splits: &[CpuSplit], rounds: usize) -> Option<CpuSplit> {
        let n = u32::try_from(splits.len()).ok().filter(|&n| n > 0)?;
        if splits.len() != rounds {
            return None;
        }
        let sum = |f: fn(&CpuSplit) -> Duration| splits.iter().map(f).sum::<Duration>() / n;
        Some(CpuSplit {
            machine: sum(|s| s.machine),
            server: sum(|s| s.server),
            client: sum(|s| s.client),
        })
    }
}

/// Where the CPU counters stood when a part of a bench began.
pub(crate) struct CpuMark {
    server: Option<u32>,
    machine: Option<Duration>,
    server_cpu: Option<Duration>,
    client: Option<Duration>,
}

impl CpuMark {
    pub(crate) fn now(server: Option<u32>) -> CpuMark {
        CpuMark {
            server,
            machine: machine_busy(),
            server_cpu: server.and_then(cpu_time),
            client: cpu_time(std::process::id()),
        }
    }

    /// The CPU each of `jobs` took since the mark; `None` where a counter could not be read.
    pub(crate) fn per_job(&self, jobs: usize) -> Option<CpuSplit> {
        let jobs = u32::try_from(jobs.max(1)).ok()?;
        let since = |before: Option<Duration>, now: Option<Duration>| {
            Some(now?.checked_sub(before?)? / jobs)
        };
        let server = match self.server {
            Some(pid) => since(self.server_cpu, cpu_time(pid))?,
            None => Duration::ZERO,
        };
        Some(CpuSplit {
            machine: since(self.machine, machine_busy())?,
            server,
            client: since(self.client, cpu_time(std::process::id()))?,
        })
    }
}

/// What the throughput parts cost the machine per job, and the server's overhead on the
/// sandbox's own cost — the "server's overhead ≤ 25% of the sandbox's", read off CPU
/// time instead of a jobs/s ratio that also moves with the client and the machine's neighbours.
/// The overhead is what a job costs the machine through warden, less what the bench's client
/// took, over what the same job costs through `Launcher::spawn` alone (that bench's own thread
/// included: it is the spawning side the server has too).
fn print_cpu_split(raw: CpuSplit, e2e: CpuSplit) {
    let served = e2e.machine.saturating_sub(e2e.client);
    let rest = served.saturating_sub(e2e.server);
    println!(
        "CPU per job in the throughput parts (the machine's busy time / jobs): raw sandbox {} ms; \
         warden {} ms = the bench's client {} + the server {} + the rest {} (zygote, sandboxes, \
         kernel)",
        ms(raw.machine),
        ms(e2e.machine),
        ms(e2e.client),
        ms(e2e.server),
        ms(rest),
    );
    println!(
        "the server's overhead on the sandbox's CPU: {:+.0}% (warden less its client, over the raw \
         sandbox; goal ≤ 25%)",
        100.0 * (served.as_secs_f64() / raw.machine.as_secs_f64() - 1.0)
    );
}

/// CPU time the whole machine spent busy so far, every CPU's user, nice, system, irq and
/// softirq time (the first line of `/proc/stat`, in clock ticks; not steal, which is the
/// hypervisor's other guests).
fn machine_busy() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_ascii_whitespace()
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let busy: u64 = [0, 1, 2, 5, 6]
        .iter()
        .map(|&i| fields.get(i).copied().unwrap_or(0))
        .sum();
    let tick = Duration::from_secs(1) / rustix::param::clock_ticks_per_second() as u32;
    Some(tick * u32::try_from(busy).ok()?)
}

/// Jobs run before the measured ones (the server's caches, the client's connections).
const WARM_UP: usize = 20;

/// CPU time a process used so far in its own threads (user and system), from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (in parentheses, and it may hold spaces) start at the
    // third; utime and stime are the 14th and the 15th, in clock ticks.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut fields = rest.split(' ').skip(11);
    let mut next = || fields.next()?.parse::<u64>().ok();
    let ticks = next()? + next()?;
    let tick = Duration::from_secs(1) / rustix::param::clock_ticks_per_second() as u32;
    Some(tick * ticks as u32)
}

/// Submits one job and follows it to its end; the time from submit to the `end` event.
pub(crate) async fn one(client: &Client, req: &SubmitJobRequest) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let sub = client.submit(req).await?;
    let end = client
        .follow(&sub.job_id, "stdout", Some(0), None, |_| {})
        .await?;
    if end.status != warden_api::JobStatus::Succeeded {
        bail!("job {} ended {}", sub.job_id, end.status);
    }
    Ok(t.elapsed())
}
