//! `cargo xtask bench sandbox`: `/bin/true` under the full warden sandbox (all limits on)
//! beside bwrap with equivalent mounts, plain `unshare`, and a bare fork/exec; rounds
//! interleaved so drift hits all alike.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::bail;
use warden_sandbox::{
    Bind, CgroupLimits, GvisorSpec, Host, Isolation, Launcher, Rlimits, SandboxSpec, SpawnSpec,
    StageSpec,
};

use crate::{Stats, build_release, flag, ms, stats};

/// bwrap with the mounts warden gives a job: read-only /usr (and its merged-/usr links), the
/// loader cache, its own /proc, /dev and /tmp, the worktree read-only, the artifacts writable.
fn bwrap_args(work: &Path, artifacts: &Path) -> Vec<String> {
    [
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
    .collect()
}

/// Starts `/bin/true` in warden's sandbox with every limit on, one launch at a time.
struct WardenRuns {
    launcher: Launcher,
    /// A current-thread runtime keeps its own wake-ups (not the sandbox) out of the measurement.
    rt: tokio::runtime::Runtime,
    dir: PathBuf,
    etc: PathBuf,
    host: Host,
    n: u64,
    /// Under gVisor instead of natively.
    gvisor: Option<GvisorSpec>,
    /// A staged job of this many `/bin/true` stages instead of one `/bin/true`.
    stages: usize,
    /// Each run's supervisor is forked before the clock starts (`Launcher::standby`), as a
    /// worker slot has one ready while it waits for a job; measured from handing it the spec.
    standby: bool,
}

/// A sandbox bench's scratch directory `warden-bench-<name>-<pid>`: `work`, `artifacts` (owned
/// by the job's uid) and a prepared `etc`. Returns it and its `etc`.
fn bench_dir(name: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = std::env::temp_dir().join(format!("warden-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("work"))?;
    std::fs::create_dir_all(dir.join("artifacts"))?;
    std::os::unix::fs::chown(dir.join("artifacts"), Some(65534), Some(65534))?;
    let etc = dir.join("etc");
    warden_sandbox::prepare_etc(&etc)?;
    Ok((dir, etc))
}

impl WardenRuns {
    /// Native, one `/bin/true`, roots numbered from `first` (runs sharing `dir` keep apart).
    fn new(warden: &Path, dir: &Path, etc: &Path, first: u64) -> anyhow::Result<WardenRuns> {
        Ok(WardenRuns {
            launcher: Launcher::new(warden),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
            dir: dir.to_path_buf(),
            etc: etc.to_path_buf(),
            host: Host::establish(),
            n: first,
            gvisor: None,
            stages: 0,
            standby: false,
        })
    }

    fn spec(&self, root: PathBuf) -> SpawnSpec {
        SpawnSpec {
            stages: (0..self.stages)
                .map(|i| StageSpec {
                    name: format!("s{i}"),
                    argv: vec!["/bin/true".into()],
                    env: Default::default(),
                    timeout_ms: None,
                    always: false,
                })
                .collect(),
            argv: vec!["/bin/true".into()],
            env: [("PATH".to_string(), "/usr/bin:/bin".to_string())].into(),
            timeout_ms: 60_000,
            rlimits: Rlimits {
                cpu_s: Some(60),
                file_size_bytes: Some(64 << 20),
                open_files: Some(1024),
            },
            isolation: Isolation::Sandbox(Box::new(SandboxSpec {
                root,
                work: self.dir.join("work"),
                git: None,
                artifacts: self.dir.join("artifacts"),
                artifacts_bytes: 64 << 20,
                etc: self.etc.clone(),
                rootfs: None,
                binds: Vec::<Bind>::new(),
                network: false,
                egress: None,
                inotify: false,
                // Rootless, the job's ids are the init's own root (the calling user outside).
                uid: if self.host.rootless { 0 } else { 65534 },
                gid: if self.host.rootless { 0 } else { 65534 },
                rootless: self.host.rootless,
                cgroups: self.host.cgroups.clone(),
                limits: CgroupLimits {
                    memory_bytes: self.host.cgroups.enforces("memory").then_some(256 << 20),
                    pids: self.host.cgroups.enforces("pids").then_some(128),
                    cpu_millis: None,
                },
                tmpfs_bytes: 64 << 20,
                cgroup_name: format!("bench-{}-{}", std::process::id(), self.n),
                secrets: Vec::new(),
                cwd: None,
                job_ids: None,
                writable_root_bytes: None,
                gvisor: self.gvisor.clone(),
            })),
        }
    }

    fn run(&mut self) -> anyhow::Result<Duration> {
        self.n += 1;
        let root = self.dir.join(format!("root-{}", self.n));
        std::fs::create_dir_all(&root)?;
        let spec = self.spec(root.clone());
        let (report, d) = self.rt.block_on(async {
            let (r_out, w_out) = std::io::pipe()?;
            let (r_err, w_err) = std::io::pipe()?;
            let (job, t) = if self.standby {
                let ready = self.launcher.standby(w_out.into(), w_err.into()).await?;
                // As in a slot between jobs: the zygote has refilled its network namespaces.
                tokio::time::sleep(Duration::from_millis(2)).await;
                let t = Instant::now();
                (ready.start(&spec).await?, t)
            } else {
                let t = Instant::now();
                let job = self
                    .launcher
                    .spawn(&spec, w_out.into(), w_err.into())
                    .await?;
                (job, t)
            };
            let report = job.wait().await?;
            let d = t.elapsed();
            drop((r_out, r_err));
            anyhow::Ok((report, d))
        })?;
        std::fs::remove_dir(&root)?;
        if let Some(e) = report.setup_error {
            bail!("warden sandbox failed: {e}");
        }
        if report.exit_code != Some(0) {
            bail!("/bin/true ended {:?}", report.exit_code);
        }
        Ok(d)
    }
}

/// The limit a server's job throughput is measured against: the same `/bin/true` through
/// `Launcher::spawn` directly, no server and no store. `bench e2e` takes its samples in turn
/// with the server's (one job each, a block of jobs each), so that a ratio compares the two at
/// the same moment of a noisy machine instead of a minute apart.
pub(crate) struct RawSandbox {
    dir: PathBuf,
    /// One at a time.
    one: WardenRuns,
    /// One at a time, its supervisor forked on standby before the clock starts, as a server's
    /// slot has one.
    ready: WardenRuns,
    /// As many at once as the server has slots, one thread each.
    threads: Vec<WardenRuns>,
}

impl RawSandbox {
    pub(crate) fn new(warden: &Path, threads: usize) -> anyhow::Result<RawSandbox> {
        let (dir, etc) = bench_dir("raw")?;
        let mut ready = WardenRuns::new(warden, &dir, &etc, 1 << 40)?;
        ready.standby = true;
        let mut raw = RawSandbox {
            one: WardenRuns::new(warden, &dir, &etc, 0)?,
            ready,
            threads: (0..threads.max(1))
                .map(|i| WardenRuns::new(warden, &dir, &etc, 1_000_000 * (i as u64 + 1)))
                .collect::<anyhow::Result<Vec<_>>>()?,
            dir,
        };
        for _ in 0..10 {
            raw.one()?;
        }
        Ok(raw)
    }

    /// One job, then one on standby: how long each took.
    pub(crate) fn one(&mut self) -> anyhow::Result<(Duration, Duration)> {
        Ok((self.one.run()?, self.ready.run()?))
    }

    /// At least `jobs` at once on its threads: how many ran, how long they took, and what they
    /// cost the machine per job.
    pub(crate) fn block(
        &mut self,
        jobs: usize,
    ) -> anyhow::Result<(usize, Duration, Option<crate::CpuSplit>)> {
        let per = jobs.div_ceil(self.threads.len());
        let ran = per * self.threads.len();
        let (t, mark) = (Instant::now(), crate::CpuMark::now(None));
        std::thread::scope(|s| {
            let handles: Vec<_> = self
                .threads
                .iter_mut()
                .map(|r| s.spawn(move || (0..per).try_for_each(|_| r.run().map(drop))))
                .collect();
            handles
                .into_iter()
                .try_for_each(|h| h.join().map_err(|_| anyhow::anyhow!("a thread panicked"))?)
        })?;
        Ok((ran, t.elapsed(), mark.per_job(ran)))
    }
}

impl Drop for RawSandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn time(program: &str, args: &[String]) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let st = Command::new(program).args(args).status()?;
    if !st.success() {
        bail!("{program} failed: {st}");
    }
    Ok(t.elapsed())
}

pub fn bench_sandbox(rest: &[&str]) -> anyhow::Result<()> {
    let runs = flag(rest, "--runs", 200)?;
    let warden = build_release()?;
    let (dir, etc) = bench_dir("sandbox")?;
    let (work, artifacts) = (dir.join("work"), dir.join("artifacts"));
    let bwrap = bwrap_args(&work, &artifacts);
    let unshare: Vec<String> = [
        "--user",
        "--map-root-user",
        "--mount",
        "--pid",
        "--fork",
        "--net",
        "--ipc",
        "--uts",
        "/bin/true",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut wardens = WardenRuns::new(&warden, &dir, &etc, 0)?;
    let mut ready = WardenRuns::new(&warden, &dir, &etc, 1 << 32)?;
    ready.standby = true;
    let [mut w, mut s, mut b, mut u, mut f]: [Vec<Duration>; 5] = Default::default();
    for _ in 0..10 {
        wardens.run()?;
        ready.run()?;
        time("bwrap", &bwrap)?;
    }
    for _ in 0..runs {
        w.push(wardens.run()?);
        s.push(ready.run()?);
        b.push(time("bwrap", &bwrap)?);
        u.push(time("unshare", &unshare)?);
        f.push(time("/bin/true", &[])?);
    }
    let _ = std::fs::remove_dir_all(&dir);
    print_table(runs, [stats(w), stats(s), stats(b), stats(u), stats(f)]);
    Ok(())
}

fn print_table(runs: usize, [w, s, b, u, f]: [Stats; 5]) {
    println!();
    println!("sandbox: start+exit of /bin/true, {runs} interleaved runs each");
    println!("| path                                             | p50 ms | p99 ms | × bwrap |");
    println!("|--------------------------------------------------|-------:|-------:|--------:|");
    let ratio = |s: &Stats| s.p50.as_secs_f64() / b.p50.as_secs_f64();
    for (name, s) in [
        (
            "warden sandbox (all namespaces, cgroup, seccomp, Landlock, limits)",
            &w,
        ),
        ("warden sandbox, supervisor forked on standby    ", &s),
        ("bwrap --unshare-all, equivalent mounts           ", &b),
        ("unshare -U -m -p -f -n -i -u                     ", &u),
        ("bare fork/exec                                   ", &f),
    ] {
        println!(
            "| {name} | {:>6} | {:>6} | {:>7.2} |",
            ms(s.p50),
            ms(s.p99),
            ratio(s)
        );
    }
}

/// `cargo xtask bench gvisor`: `/bin/true` in warden's native sandbox, in warden's gVisor tier
/// (the same sandbox with `runsc run` inside it), and under `runsc do` alone (gVisor without
/// warden), interleaved.
pub fn bench_gvisor(rest: &[&str]) -> anyhow::Result<()> {
    let runs = flag(rest, "--runs", 30)?;
    let runsc = warden_core::GvisorConfig::default()
        .runsc()
        .ok_or_else(|| anyhow::anyhow!("runsc not found: scripts/setup.sh installs it"))?;
    let warden = build_release()?;
    let (dir, etc) = bench_dir("gvisor")?;
    let mut native = WardenRuns::new(&warden, &dir, &etc, 0)?;
    let mut gvisor = WardenRuns::new(&warden, &dir, &etc, 1 << 32)?;
    gvisor.gvisor = Some(GvisorSpec {
        runsc: runsc.clone(),
    });
    let runsc_root = dir.join("runsc-state");
    std::fs::create_dir_all(&runsc_root)?;
    let runsc_do: Vec<String> = [
        format!("--root={}", runsc_root.display()),
        "--network=none".into(),
        "--ignore-cgroups".into(),
        "do".into(),
        "/bin/true".into(),
    ]
    .into();
    let runsc = runsc.display().to_string();
    for _ in 0..3 {
        native.run()?;
        gvisor.run()?;
        time(&runsc, &runsc_do)?;
    }
    let (mut n, mut g, mut d) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        n.push(native.run()?);
        g.push(gvisor.run()?);
        d.push(time(&runsc, &runsc_do)?);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let (n, g, d) = (stats(n), stats(g), stats(d));
    println!();
    println!("gvisor: start+exit of /bin/true, {runs} interleaved runs each");
    println!("| path                                   | p50 ms | p99 ms | × native |");
    println!("|----------------------------------------|-------:|-------:|---------:|");
    let ratio = |s: &Stats| s.p50.as_secs_f64() / n.p50.as_secs_f64();
    for (name, s) in [
        ("warden, native sandbox                ", &n),
        ("warden, isolation: gvisor (runsc run) ", &g),
        ("runsc do, without warden              ", &d),
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

/// `cargo xtask bench pipeline`: one `/bin/true` job against a staged job of `--stages N`
/// (default 5) `/bin/true` stages in one sandbox, interleaved. Each stage is a fork and exec
/// in the job's namespaces and a go-ahead round trip through the supervisor; the sandbox is
/// built once.
pub fn bench_pipeline(rest: &[&str]) -> anyhow::Result<()> {
    let runs = flag(rest, "--runs", 100)?;
    let n_stages = flag(rest, "--stages", 5)?;
    let warden = build_release()?;
    let (dir, etc) = bench_dir("pipeline")?;
    let mut one = WardenRuns::new(&warden, &dir, &etc, 0)?;
    let mut staged = WardenRuns::new(&warden, &dir, &etc, 1 << 32)?;
    staged.stages = n_stages;
    for _ in 0..5 {
        one.run()?;
        staged.run()?;
    }
    let (mut o, mut s, mut f) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        o.push(one.run()?);
        s.push(staged.run()?);
        f.push(time("/bin/true", &[])?);
    }
    // The same through warden: submit over HTTP until the job's end is followed.
    let (e2e_one, e2e_staged) = e2e_pipeline(&warden, &dir, n_stages, runs)?;
    let _ = std::fs::remove_dir_all(&dir);
    let (o, s, f) = (stats(o), stats(s), stats(f));
    println!();
    println!("pipeline: start+exit, {runs} interleaved runs each");
    println!("| job                                  | p50 ms | p99 ms | × one job |");
    println!("|--------------------------------------|-------:|-------:|----------:|");
    let ratio = |p50: Duration| p50.as_secs_f64() / o.p50.as_secs_f64();
    for (name, x) in [
        ("one /bin/true job                   ".to_string(), &o),
        (format!("{n_stages} /bin/true stages in one sandbox  "), &s),
    ] {
        println!(
            "| {name} | {:>6} | {:>6} | {:>9.2} |",
            ms(x.p50),
            ms(x.p99),
            ratio(x.p50)
        );
    }
    // What no pipeline can beat: the one job, then each further stage a bare spawn and wait of
    // /bin/true (measured from this process, outside any sandbox).
    let floor = o.p50 + f.p50 * (n_stages.saturating_sub(1) as u32);
    println!(
        "| floor: one job + {} bare /bin/true    | {:>6} |        | {:>9.2} |",
        n_stages.saturating_sub(1),
        ms(floor),
        ratio(floor)
    );
    let (eo, es) = (stats(e2e_one), stats(e2e_staged));
    println!();
    println!("pipeline through warden: HTTP submit → end followed, {runs} interleaved jobs each");
    println!("| job                                  | p50 ms | p99 ms | × one job |");
    println!("|--------------------------------------|-------:|-------:|----------:|");
    for (name, x) in [
        ("one /bin/true job                   ".to_string(), &eo),
        (format!("{n_stages} /bin/true stages in one sandbox  "), &es),
    ] {
        println!(
            "| {name} | {:>6} | {:>6} | {:>9.2} |",
            ms(x.p50),
            ms(x.p99),
            x.p50.as_secs_f64() / eo.p50.as_secs_f64()
        );
    }
    Ok(())
}

/// One `/bin/true` job and a job of `n` `/bin/true` stages through a real `warden serve`,
/// interleaved: submit→end times of each.
fn e2e_pipeline(
    warden: &Path,
    dir: &Path,
    n: usize,
    runs: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let stages: String = (0..n)
        .map(|i| format!("      - {{name: s{i}, argv: [/bin/true]}}\n"))
        .collect();
    let config = dir.join("pipeline.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\ngrpc_listen: 127.0.0.1:0\nauth: {{loopback_trusted: true}}\n\
             data_dir: {}\nslots: 2\njob_types:\n  one:\n    argv: [/bin/true]\n    \
             timeout_s: 60\n  staged:\n    timeout_s: 60\n    stages:\n{stages}",
            dir.join("data").display()
        ),
    )?;
    let (mut server, url) = crate::start_server(warden, &config)?;
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(async {
        let client = warden_client::Client::new(&url, Duration::from_secs(30), None)?;
        let req = |t: &str| warden_api::SubmitJobRequest {
            job_type: t.into(),
            ..Default::default()
        };
        let (one, staged) = (req("one"), req("staged"));
        for _ in 0..5 {
            crate::one(&client, &one).await?;
            crate::one(&client, &staged).await?;
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            a.push(crate::one(&client, &one).await?);
            b.push(crate::one(&client, &staged).await?);
        }
        anyhow::Ok((a, b))
    });
    let _ = Command::new("kill").arg(server.id().to_string()).status();
    let _ = server.wait();
    result
}
