//! `cargo xtask bench e2e|sandbox|checkout|queue ...` (see `usage` below)
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

mod queue;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["bench", "e2e", rest @ ..] => bench_e2e(rest),
        ["bench", "sandbox", rest @ ..] => bench_sandbox(rest),
        ["bench", "checkout", rest @ ..] => bench_checkout(rest),
        ["bench", "queue", rest @ ..] => queue::bench_queue(rest),
        _ => {
            eprintln!(
                "usage: cargo xtask bench e2e [--jobs N] [--sequential N] [--concurrency C] [--slots S]\n       cargo xtask bench sandbox [--runs N]\n       cargo xtask bench checkout [--files N] [--mb M] [--runs R] [--jobs J]\n       cargo xtask bench queue [--jobs N] [--claimers C] [--history H] [--starts S]"
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

fn build_release() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "-p", "warden"])
        .current_dir(&root)
        .status()?;
    if !status.success() {
        bail!("cargo build --release failed");
    }
    Ok(root.join("target/release/warden"))
}

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
    let mut server = Command::new(warden)
        .args(["serve", "--config"])
        .arg(config)
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
    let warden = build_release()?;
    let dir = std::env::temp_dir().join(format!("warden-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("bench.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\ngrpc_listen: 127.0.0.1:0\ndata_dir: {}\nslots: {slots}\nunsafe_fallback: true\njob_types:\n  noop:\n    argv: {:?}\n    timeout_s: 60\n",
            dir.join("data").display(),
            NOOP
        ),
    )?;
    let (mut server, url) = start_server(&warden, &config)?;
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(run_e2e(&url, jobs, sequential, concurrency));
    let _ = Command::new("kill").arg(server.id().to_string()).status();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let (seq, tput) = result?;

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
    let (d, w) = (stats(direct), stats(seq));

    println!();
    println!(
        "e2e: {NOOP:?}, {sequential} sequential jobs for latency, {jobs} jobs at concurrency \
         {concurrency} for throughput, {slots} slots (direct baseline: 2 threads)"
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
    Ok(())
}

async fn run_e2e(
    url: &str,
    jobs: usize,
    sequential: usize,
    concurrency: usize,
) -> anyhow::Result<(Vec<Duration>, f64)> {
    let client = Client::new(url, Duration::from_secs(30), None)?;
    let req = SubmitJobRequest {
        job_type: "noop".into(),
        ..SubmitJobRequest::default()
    };
    // Warm-up.
    for _ in 0..20 {
        one(&client, &req).await?;
    }
    let mut lat = Vec::with_capacity(sequential);
    for _ in 0..sequential {
        lat.push(one(&client, &req).await?);
    }
    let t = Instant::now();
    let results: Vec<anyhow::Result<Duration>> = futures::stream::iter(0..jobs)
        .map(|_| one(&client, &req))
        .buffer_unordered(concurrency)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok((lat, jobs as f64 / t.elapsed().as_secs_f64()))
}

/// Submits one job and follows it to its end; the time from submit to the `end` event.
async fn one(client: &Client, req: &SubmitJobRequest) -> anyhow::Result<Duration> {
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

/// `/bin/true` under the full warden sandbox (all limits on) beside bwrap with equivalent
/// mounts, plain `unshare`, and a bare fork/exec; rounds interleaved so drift hits all alike.
fn bench_sandbox(rest: &[&str]) -> anyhow::Result<()> {
    use warden_sandbox::{Bind, Isolation, Launcher, Rlimits, SandboxSpec, SpawnSpec};
    let runs = flag(rest, "--runs", 200)?;
    let warden = build_release()?;
    let dir = std::env::temp_dir().join(format!("warden-bench-sandbox-{}", std::process::id()));
    let (work, artifacts) = (dir.join("work"), dir.join("artifacts"));
    std::fs::create_dir_all(&work)?;
    std::fs::create_dir_all(&artifacts)?;
    std::os::unix::fs::chown(&artifacts, Some(65534), Some(65534))?;
    let etc = dir.join("etc");
    warden_sandbox::prepare_etc(&etc)?;
    let bwrap = [
        "bwrap",
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--ro-bind",
        "/usr",
        "/usr",
        "--symlink",
        "usr/bin",
        "/bin",
        "--symlink",
        "usr/lib",
        "/lib",
        "--symlink",
        "usr/lib64",
        "/lib64",
        "--symlink",
        "usr/sbin",
        "/sbin",
        "--ro-bind",
        "/etc/ld.so.cache",
        "/etc/ld.so.cache",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
        "--ro-bind",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        work.display().to_string(),
        "/work".into(),
        "--bind".into(),
        artifacts.display().to_string(),
        "/artifacts".into(),
        "--chdir".into(),
        "/work".into(),
        "/bin/true".into(),
    ])
    .collect::<Vec<_>>();
    let unshare = [
        "--user",
        "--map-root-user",
        "--mount",
        "--pid",
        "--fork",
        "--net",
        "--ipc",
        "--uts",
        "/bin/true",
    ];
    let launcher = Launcher::new(&warden);
    // The harness drives one launch at a time: a current-thread runtime keeps its own wake-ups
    // (not the sandbox) out of the measurement.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut n = 0u64;
    let mut warden_run = || -> anyhow::Result<Duration> {
        n += 1;
        let root = dir.join(format!("root-{n}"));
        std::fs::create_dir_all(&root)?;
        let spec = SpawnSpec {
            argv: vec!["/bin/true".into()],
            env: [("PATH".to_string(), "/usr/bin:/bin".to_string())].into(),
            timeout_ms: 60_000,
            rlimits: Rlimits {
                cpu_s: Some(60),
                file_size_bytes: Some(64 << 20),
                open_files: Some(1024),
            },
            isolation: Isolation::Sandbox(Box::new(SandboxSpec {
                root: root.clone(),
                work: work.clone(),
                git: None,
                artifacts: artifacts.clone(),
                etc: etc.clone(),
                rootfs: None,
                binds: Vec::<Bind>::new(),
                network: false,
                uid: 65534,
                gid: 65534,
                memory_bytes: Some(256 << 20),
                pids: Some(128),
                tmpfs_bytes: 64 << 20,
                cgroup_name: format!("bench-{}-{n}", std::process::id()),
            })),
        };
        let t = Instant::now();
        let report = rt.block_on(async {
            let (r_out, w_out) = std::io::pipe()?;
            let (r_err, w_err) = std::io::pipe()?;
            let job = launcher.spawn(&spec, w_out.into(), w_err.into()).await?;
            let report = job.wait().await?;
            drop((r_out, r_err));
            anyhow::Ok(report)
        })?;
        let d = t.elapsed();
        std::fs::remove_dir(&root)?;
        if let Some(e) = report.setup_error {
            bail!("warden sandbox failed: {e}");
        }
        if report.exit_code != Some(0) {
            bail!("/bin/true ended {:?}", report.exit_code);
        }
        Ok(d)
    };
    let time = |program: &str, args: &[String]| -> anyhow::Result<Duration> {
        let t = Instant::now();
        let st = Command::new(program).args(args).status()?;
        if !st.success() {
            bail!("{program} failed: {st}");
        }
        Ok(t.elapsed())
    };
    let unshare: Vec<String> = unshare.iter().map(|s| s.to_string()).collect();
    let (mut w, mut b, mut u, mut f) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..10 {
        warden_run()?;
        time("bwrap", &bwrap[1..])?;
    }
    for _ in 0..runs {
        w.push(warden_run()?);
        b.push(time("bwrap", &bwrap[1..])?);
        u.push(time("unshare", &unshare)?);
        f.push(time("/bin/true", &[])?);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let (w, b, u, f) = (stats(w), stats(b), stats(u), stats(f));
    println!();
    println!("sandbox: start+exit of /bin/true, {runs} interleaved runs each");
    println!("| path                                             | p50 ms | p99 ms | × bwrap |");
    println!("|--------------------------------------------------|-------:|-------:|--------:|");
    let ratio = |s: &Stats| s.p50.as_secs_f64() / b.p50.as_secs_f64();
    println!(
        "| warden sandbox (all namespaces, cgroup, seccomp, Landlock, limits) | {:>6} | {:>6} | {:>7.2} |",
        ms(w.p50),
        ms(w.p99),
        ratio(&w)
    );
    println!(
        "| bwrap --unshare-all, equivalent mounts           | {:>6} | {:>6} | {:>7.2} |",
        ms(b.p50),
        ms(b.p99),
        1.0
    );
    println!(
        "| unshare -U -m -p -f -n -i -u                     | {:>6} | {:>6} | {:>7.2} |",
        ms(u.p50),
        ms(u.p99),
        ratio(&u)
    );
    println!(
        "| bare fork/exec                                   | {:>6} | {:>6} | {:>7.2} |",
        ms(f.p50),
        ms(f.p99),
        ratio(&f)
    );
    Ok(())
}

/// A generated repository of `files` files and `mb` MiB (printable pseudo-random text, 50 files
/// per directory), committed once and kept under target/ for later invocations.
fn bench_repo(files: usize, mb: usize) -> anyhow::Result<(PathBuf, String)> {
    let repo = workspace_root().join(format!("target/bench-checkout/src-{files}-{mb}"));
    let git = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new("git")
            .current_dir(&repo)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .args([
                "-c",
                "user.name=bench",
                "-c",
                "user.email=bench@example.com",
            ])
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    };
    if repo.join(".git/refs/heads/main").exists() {
        return Ok((repo.clone(), git(&["rev-parse", "main"])?));
    }
    let _ = std::fs::remove_dir_all(&repo);
    std::fs::create_dir_all(&repo)?;
    eprintln!("generating a repository of {files} files, {mb} MiB ...");
    let per_file = (mb << 20) / files;
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut buf = vec![0u8; per_file];
    for i in 0..files {
        let dir = repo.join(format!("src/m{:03}/p{:02}", i / 500, (i / 50) % 10));
        std::fs::create_dir_all(&dir)?;
        for b in buf.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Printable text with newlines, like source code (about 6 bits of entropy a byte).
            *b = match x % 64 {
                0 => b'\n',
                n => b' ' + (n as u8 + 30) % 95,
            };
        }
        std::fs::write(dir.join(format!("f{i:05}.txt")), &buf)?;
    }
    git(&["init", "-q", "-b", "main"])?;
    git(&["add", "-A"])?;
    git(&["commit", "-q", "-m", "generated"])?;
    Ok((repo.clone(), git(&["rev-parse", "main"])?))
}

/// Cold checkout, warm (cached) job start and the proof, beside `git worktree add` + `chmod -R
/// a-w` of the same commit; rounds interleaved.
fn bench_checkout(rest: &[&str]) -> anyhow::Result<()> {
    let files = flag(rest, "--files", 5000)?;
    let mb = flag(rest, "--mb", 64)?;
    let runs = flag(rest, "--runs", 7)?;
    let jobs = flag(rest, "--jobs", 50)?;
    let (src, sha) = bench_repo(files, mb)?;
    let dir = std::env::temp_dir().join(format!("warden-bench-checkout-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    // The baseline's repository: a plain clone (worktrees hang off a normal repository).
    let clone = dir.join("clone");
    let st = Command::new("git")
        .args(["clone", "-q", "--no-local", "--no-checkout"])
        .arg(&src)
        .arg(&clone)
        .status()?;
    if !st.success() {
        bail!("git clone failed");
    }
    let rt = tokio::runtime::Runtime::new()?;
    let git_config = warden_core::GitConfig::default();
    let repos = warden_repo::Repos::open(&dir.join("git"), &git_config)?;
    let remote = warden_repo::Remote {
        url: src.to_string_lossy().into_owned(),
        transport: warden_core::repo::Transport::Local(src.clone()),
    };
    let t = Instant::now();
    let commit = rt.block_on(repos.mirrors.ensure_commit(&remote, &sha))?;
    let fetch = t.elapsed();

    let (mut base, mut base_wt, mut cold, mut warm, mut proof) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let keep = rt.block_on(repos.checkout(&remote, &sha))?;
    for round in 0..runs {
        // Baseline: git worktree add, then make it read-only.
        let wt = dir.join(format!("wt-{round}"));
        let t = Instant::now();
        let st = Command::new("git")
            .arg("-C")
            .arg(&clone)
            .args(["worktree", "add", "-q", "--detach"])
            .arg(&wt)
            .arg(&sha)
            .status()?;
        let added = t.elapsed();
        let st2 = Command::new("chmod")
            .arg("-R")
            .arg("a-w")
            .arg(&wt)
            .status()?;
        base.push(t.elapsed());
        base_wt.push(added);
        if !st.success() || !st2.success() {
            bail!("git worktree add / chmod failed");
        }
        Command::new("chmod")
            .arg("-R")
            .arg("u+w")
            .arg(&wt)
            .status()?;
        Command::new("git")
            .arg("-C")
            .arg(&clone)
            .args(["worktree", "remove", "--force"])
            .arg(&wt)
            .status()?;

        // warden cold: an empty cache, the commit already in the mirror.
        let cache_dir = dir.join(format!("cold-{round}"));
        let cache = warden_repo::CheckoutCache::open(
            &cache_dir,
            warden_repo::Git::new(dir.join("home"))?,
            u64::MAX,
        )?;
        let t = Instant::now();
        let co = rt.block_on(cache.checkout(&commit))?;
        cold.push(t.elapsed());
        assert!(!co.hit);
        drop(co);
        drop(cache);
        Command::new("chmod")
            .arg("-R")
            .arg("u+w")
            .arg(&cache_dir)
            .status()?;
        std::fs::remove_dir_all(&cache_dir)?;

        // warden warm: what a job start at a cached commit costs.
        for _ in 0..20 {
            let t = Instant::now();
            let co = rt.block_on(repos.checkout(&remote, &sha))?;
            warm.push(t.elapsed());
            assert!(co.hit);
        }
        // The proof after a job.
        let t = Instant::now();
        let p = rt.block_on(repos.cache.verify(&keep))?;
        proof.push(t.elapsed());
        assert!(p.clean);
    }
    drop(keep);

    // Warm job start through the real server: submit → first output byte, a job on the cached
    // commit beside the same job without a repository.
    let (repo_start, plain_start) = job_starts(&dir, &src, &sha, jobs)?;
    let _ = Command::new("chmod")
        .arg("-R")
        .arg("u+w")
        .arg(&dir)
        .status();
    let _ = std::fs::remove_dir_all(&dir);

    let med = |v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort();
        v[v.len() / 2]
    };
    let (b, c, w, p) = (med(&base), med(&cold), med(&warm), med(&proof));
    let (rs, ps) = (med(&repo_start), med(&plain_start));
    println!();
    println!(
        "checkout: {files} files, {mb} MiB, {runs} rounds (warm: {} samples, job starts: {jobs} each); medians",
        warm.len()
    );
    println!("| path                                         |      ms |");
    println!("|----------------------------------------------|--------:|");
    println!(
        "| git worktree add (baseline, part)            | {:>7} |",
        ms(med(&base_wt))
    );
    println!(
        "| git worktree add + chmod -R a-w (baseline)   | {:>7} |",
        ms(b)
    );
    println!(
        "| warden cold checkout (commit in mirror)      | {:>7} |",
        ms(c)
    );
    println!(
        "| warden warm checkout (cache hit)             | {:>7.3} |",
        w.as_secs_f64() * 1000.0
    );
    println!(
        "| warden clean-tree proof (git status)         | {:>7} |",
        ms(p)
    );
    println!(
        "| job start, no repository (submit→1st byte)   | {:>7} |",
        ms(ps)
    );
    println!(
        "| job start, cached repository (submit→1st byte)| {:>6} |",
        ms(rs)
    );
    println!(
        "| first fetch into the mirror (local clone)    | {:>7} |",
        ms(fetch)
    );
    println!(
        "ratios: cold/baseline {:.2}x; baseline/warm job start {:.0}x; repo overhead on job start {:+.2} ms",
        c.as_secs_f64() / b.as_secs_f64(),
        b.as_secs_f64() / rs.as_secs_f64(),
        (rs.as_secs_f64() - ps.as_secs_f64()) * 1000.0
    );
    Ok(())
}

/// Submit → first stdout byte of `jobs` sequential jobs at a cached commit, and of as many
/// without a repository, interleaved, through a release `warden serve` with the sandbox.
fn job_starts(
    dir: &Path,
    src: &Path,
    sha: &str,
    jobs: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let warden = build_release()?;
    let config = dir.join("serve.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\ngrpc_listen: 127.0.0.1:0\ndata_dir: {}\nslots: 2\nrepos:\n  bench: {{url: \"{}\"}}\njob_types:\n  on_repo:\n    argv: [\"/bin/echo\", \"started\"]\n    requires_repo: true\n    timeout_s: 60\n  plain:\n    argv: [\"/bin/echo\", \"started\"]\n    timeout_s: 60\n",
            dir.join("serve-data").display(),
            src.display()
        ),
    )?;
    let (mut server, url) = start_server(&warden, &config)?;
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(async {
        let client = Client::new(&url, Duration::from_secs(120), None)?;
        let on_repo = SubmitJobRequest {
            job_type: "on_repo".into(),
            repo_name: Some("bench".into()),
            sha: Some(sha.to_string()),
            ..SubmitJobRequest::default()
        };
        let plain = SubmitJobRequest {
            job_type: "plain".into(),
            ..SubmitJobRequest::default()
        };
        // The first one checks out (cold); the rest start from the cache.
        first_byte(&client, &on_repo).await?;
        for _ in 0..5 {
            first_byte(&client, &plain).await?;
        }
        let (mut r, mut p) = (Vec::new(), Vec::new());
        for _ in 0..jobs {
            r.push(first_byte(&client, &on_repo).await?);
            p.push(first_byte(&client, &plain).await?);
        }
        anyhow::Ok((r, p))
    });
    let _ = Command::new("kill").arg(server.id().to_string()).status();
    let _ = server.wait();
    result
}

/// Submit → the job's first stdout byte seen by a live follower; waits for the end too.
async fn first_byte(client: &Client, req: &SubmitJobRequest) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let sub = client.submit(req).await?;
    let mut first = None;
    let end = client
        .follow(&sub.job_id, "stdout", Some(0), None, |item| {
            if first.is_none() && matches!(item, warden_client::FollowItem::Log(_)) {
                first = Some(t.elapsed());
            }
        })
        .await?;
    if end.status != warden_api::JobStatus::Succeeded {
        bail!("job {} ended {}", sub.job_id, end.status);
    }
    first.context("the job printed nothing")
}
