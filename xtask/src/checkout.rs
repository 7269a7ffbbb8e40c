//! `cargo xtask bench checkout`: the checkout cache and the clean-tree proof beside
//! `git worktree add`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use warden_api::SubmitJobRequest;
use warden_client::Client;

use crate::{build_release, flag, ms, start_server, workspace_root};

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

/// What one invocation measured, each a list of samples.
#[derive(Default)]
struct Samples {
    /// `git worktree add` + `chmod -R a-w`, and the `worktree add` part alone.
    base: Vec<Duration>,
    base_wt: Vec<Duration>,
    cold: Vec<Duration>,
    warm: Vec<Duration>,
    proof: Vec<Duration>,
    fetch: Duration,
    repo_start: Vec<Duration>,
    plain_start: Vec<Duration>,
}

fn chmod(mode: &str, path: &Path) -> anyhow::Result<bool> {
    Ok(Command::new("chmod")
        .arg("-R")
        .arg(mode)
        .arg(path)
        .status()?
        .success())
}

/// The baseline: `git worktree add` of the commit, then made read-only; returns (total, add).
fn baseline_round(clone: &Path, wt: &Path, sha: &str) -> anyhow::Result<(Duration, Duration)> {
    let t = Instant::now();
    let st = Command::new("git")
        .arg("-C")
        .arg(clone)
        .args(["worktree", "add", "-q", "--detach"])
        .arg(wt)
        .arg(sha)
        .status()?;
    let added = t.elapsed();
    let sealed = chmod("a-w", wt)?;
    let total = t.elapsed();
    if !st.success() || !sealed {
        bail!("git worktree add / chmod failed");
    }
    chmod("u+w", wt)?;
    Command::new("git")
        .arg("-C")
        .arg(clone)
        .args(["worktree", "remove", "--force"])
        .arg(wt)
        .status()?;
    Ok((total, added))
}

/// warden cold: an empty cache, the commit already in the mirror.
fn cold_round(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    round: usize,
    commit: &warden_repo::mirror::MirrorCommit,
) -> anyhow::Result<Duration> {
    let cache_dir = dir.join(format!("cold-{round}"));
    let cache = warden_repo::CheckoutCache::open(
        &cache_dir,
        warden_repo::Git::new(dir.join("home"))?,
        u64::MAX,
    )?;
    let t = Instant::now();
    let co = rt.block_on(cache.checkout(commit))?;
    let took = t.elapsed();
    assert!(!co.hit);
    drop(co);
    drop(cache);
    chmod("u+w", &cache_dir)?;
    std::fs::remove_dir_all(&cache_dir)?;
    Ok(took)
}

/// Interleaved rounds of the baseline, a cold checkout, warm checkouts and the proof.
fn rounds(dir: &Path, src: &Path, sha: &str, runs: usize) -> anyhow::Result<Samples> {
    // The baseline's repository: a plain clone (worktrees hang off a normal repository).
    let clone = dir.join("clone");
    let st = Command::new("git")
        .args(["clone", "-q", "--no-local", "--no-checkout"])
        .arg(src)
        .arg(&clone)
        .status()?;
    if !st.success() {
        bail!("git clone failed");
    }
    let rt = tokio::runtime::Runtime::new()?;
    let git_config = warden_core::GitConfig::default();
    let repos = warden_repo::Repos::open(&dir.join("git"), &git_config)?;
    let remote = warden_repo::Remote::new(
        src.to_string_lossy(),
        warden_core::repo::Transport::Local(src.to_path_buf()),
    );
    let mut s = Samples::default();
    let t = Instant::now();
    let commit = rt.block_on(repos.mirrors.ensure_commit(&remote, sha))?;
    s.fetch = t.elapsed();
    let keep = rt.block_on(repos.checkout(&remote, sha))?;
    for round in 0..runs {
        let (total, added) = baseline_round(&clone, &dir.join(format!("wt-{round}")), sha)?;
        s.base.push(total);
        s.base_wt.push(added);
        s.cold.push(cold_round(&rt, dir, round, &commit)?);
        // warden warm: what a job start at a cached commit costs.
        for _ in 0..20 {
            let t = Instant::now();
            let co = rt.block_on(repos.checkout(&remote, sha))?;
            s.warm.push(t.elapsed());
            assert!(co.hit);
        }
        // The proof after a job.
        let t = Instant::now();
        let p = rt.block_on(repos.cache.verify(&keep))?;
        s.proof.push(t.elapsed());
        assert!(p.clean);
    }
    Ok(s)
}

/// Cold checkout, warm (cached) job start and the proof, beside `git worktree add` + `chmod -R
/// a-w` of the same commit; rounds interleaved.
pub fn bench_checkout(rest: &[&str]) -> anyhow::Result<()> {
    let files = flag(rest, "--files", 5000)?;
    let mb = flag(rest, "--mb", 64)?;
    let runs = flag(rest, "--runs", 7)?;
    let jobs = flag(rest, "--jobs", 50)?;
    let (src, sha) = bench_repo(files, mb)?;
    let dir = std::env::temp_dir().join(format!("warden-bench-checkout-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut samples = rounds(&dir, &src, &sha, runs)?;
    // Warm job start through the real server: submit → first output byte, a job on the cached
    // commit beside the same job without a repository.
    (samples.repo_start, samples.plain_start) = job_starts(&dir, &src, &sha, jobs)?;
    let _ = chmod("u+w", &dir);
    let _ = std::fs::remove_dir_all(&dir);
    println!();
    println!(
        "checkout: {files} files, {mb} MiB, {runs} rounds (warm: {} samples, job starts: {jobs} each); medians",
        samples.warm.len()
    );
    print_report(&samples);
    Ok(())
}

fn print_report(s: &Samples) {
    let med = |v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort();
        v[v.len() / 2]
    };
    let (b, c, w, p) = (med(&s.base), med(&s.cold), med(&s.warm), med(&s.proof));
    let (rs, ps) = (med(&s.repo_start), med(&s.plain_start));
    println!("| path                                         |      ms |");
    println!("|----------------------------------------------|--------:|");
    for (name, value) in [
        (
            "git worktree add (baseline, part)            ",
            ms(med(&s.base_wt)),
        ),
        ("git worktree add + chmod -R a-w (baseline)   ", ms(b)),
        ("warden cold checkout (commit in mirror)      ", ms(c)),
        (
            "warden warm checkout (cache hit)             ",
            format!("{:.3}", w.as_secs_f64() * 1000.0),
        ),
        ("warden clean-tree proof (git status)         ", ms(p)),
        ("job start, no repository (submit→1st byte)   ", ms(ps)),
        ("job start, cached repository (submit→1st byte)", ms(rs)),
        ("first fetch into the mirror (local clone)    ", ms(s.fetch)),
    ] {
        println!("| {name} | {value:>7} |");
    }
    println!(
        "ratios: cold/baseline {:.2}x; baseline/warm job start {:.0}x; repo overhead on job start {:+.2} ms",
        c.as_secs_f64() / b.as_secs_f64(),
        b.as_secs_f64() / rs.as_secs_f64(),
        (rs.as_secs_f64() - ps.as_secs_f64()) * 1000.0
    );
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
            "listen: 127.0.0.1:0\ngrpc_listen: 127.0.0.1:0\nauth: {{loopback_trusted: true}}\ndata_dir: {}\nslots: 2\nrepos:\n  bench: {{url: \"{}\"}}\njob_types:\n  on_repo:\n    argv: [\"/bin/echo\", \"started\"]\n    requires_repo: true\n    timeout_s: 60\n  plain:\n    argv: [\"/bin/echo\", \"started\"]\n    timeout_s: 60\n",
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
