//! `bench e2e`'s log half: what storing a job's output costs the job. A job printing N MiB of
//! 100-byte lines through warden against the same job writing to `/dev/null`, in the same
//! server; then a pseudo-random log stored and read back byte for byte.

use std::time::{Duration, Instant};

use anyhow::bail;
use sha2::Digest;
use warden_api::{JobStatus, SubmitJobRequest};
use warden_client::Client;

/// 99 characters and a newline.
const LINE: &str = "warden log bench line: the quick brown fox jumps over the lazy dog, 0123456789 abcdefghijklmnopqrst";
/// A deterministic pseudo-random stream (AES-CTR of zeros under a fixed key): the job and the
/// bench make the same bytes.
const RANDOM: &str = "openssl enc -aes-128-ctr -nosalt -K 000102030405060708090a0b0c0d0e0f \
                      -iv 00000000000000000000000000000000 < /dev/zero 2>/dev/null";

/// `follow_mb` MiB of the bench's lines.
fn lines_script(mb: u64) -> String {
    format!("yes \"{LINE}\" | head -n {}", (mb << 20) / 100)
}

/// The job types the log half runs (appended to the bench server's `job_types:`).
pub(crate) fn job_types(mb: u64, random_mb: u64, follow_mb: u64) -> String {
    let chatty = lines_script(mb);
    let random = format!("{RANDOM} | head -c {}", random_mb << 20);
    let cap = mb.max(random_mb).max(follow_mb) + 16;
    let one = |name: &str, script: &str| {
        format!(
            "  {name}:\n    argv: [\"/bin/sh\", \"-c\", {script:?}]\n    timeout_s: 3600\n    \
             limits: {{output_mb: {cap}}}\n"
        )
    };
    [
        one("chatty", &chatty),
        one("quiet", &format!("{chatty} > /dev/null")),
        one("random", &random),
        one("followed", &lines_script(follow_mb)),
    ]
    .concat()
}

pub(crate) struct Followed {
    pub followers: usize,
    pub mb: u64,
    /// The same job with no follower, run just before and just after the followed one.
    pub alone: [Duration; 2],
    /// The same job's submit → terminal with the followers on.
    pub followed: Duration,
    /// Until the last follower had the whole log.
    pub all_delivered: Duration,
}

/// A runtime for the bench's own follower clients, whose threads take the lowest CPU priority.
/// They stand for followers on other machines: on this one they would otherwise take half its
/// two CPUs from the job whose ingest is measured. The server's side of every follow (reading,
/// encoding, sending every byte to every follower) is unchanged, and every byte is still checked.
pub(crate) fn followers_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-followers")
        .enable_all()
        .on_thread_start(|| {
            let me = rustix::thread::gettid();
            // Best effort: at the normal priority the ratio is only more pessimistic.
            let _ = rustix::process::setpriority_process(Some(me), 19);
        })
        .build()?)
}

/// A job printing `mb` MiB of lines, alone, then with `followers` SSE followers from its first
/// byte (their clients on `on`), then alone again: each follower must see every byte, in order
/// (offsets contiguous, the text's SHA-256 the stream's). The runs alone on both sides of the
/// followed one keep the machine's drift out of the ratio.
pub(crate) async fn run_followers(
    url: &str,
    followers: usize,
    mb: u64,
    on: &tokio::runtime::Handle,
) -> anyhow::Result<Followed> {
    let client = Client::new(url, Duration::from_secs(600), None)?;
    let (_, before, _) = run(&client, "followed").await?;
    let want = {
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", &format!("{} | sha256sum", lines_script(mb))])
            .output()?;
        String::from_utf8_lossy(&out.stdout)[..64].to_string()
    };
    let t = Instant::now();
    let id = client
        .submit(&SubmitJobRequest {
            job_type: "followed".into(),
            ..SubmitJobRequest::default()
        })
        .await?
        .job_id;
    let job_done = {
        let (client, id) = (client.clone(), id.clone());
        async move {
            loop {
                if client.get(&id).await?.status.is_terminal() {
                    return anyhow::Ok(t.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let all = futures::future::join_all((0..followers).map(|_| {
        let client = client.clone();
        let id = id.clone();
        on.spawn(async move {
            let mut hash = sha2::Sha256::new();
            let mut next = 0u64;
            let mut gap = None;
            let end = client
                .follow(&id, "stdout", Some(0), None, |item| {
                    if let warden_client::FollowItem::Log(ev) = item {
                        if ev.offset != next && gap.is_none() {
                            gap = Some((next, ev.offset));
                        }
                        next = ev.next_offset;
                        hash.update(ev.text.as_bytes());
                    }
                })
                .await?;
            if let Some((want, got)) = gap {
                bail!("a follower's events skipped from {want} to {got}");
            }
            anyhow::Ok((end, next, format!("{:x}", hash.finalize())))
        })
    }));
    let (followed, ends) = futures::future::join(job_done, all).await;
    let (followed, all_delivered) = (followed?, t.elapsed());
    for e in ends {
        let (end, next, got) = e??;
        if end.status != JobStatus::Succeeded || next != end.next_offset || got != want {
            bail!(
                "a follower got {next} bytes ({got}), the job {:?} ended at {}",
                end.status,
                end.next_offset
            );
        }
    }
    let (_, after, _) = run(&client, "followed").await?;
    Ok(Followed {
        followers,
        mb,
        alone: [before, after],
        followed,
        all_delivered,
    })
}

pub(crate) fn print_followers(f: &Followed) {
    let [before, after] = f.alone.map(|d| d.as_secs_f64());
    println!(
        "followers: a job printing {} MiB of lines, alone {before:.2} s before and {after:.2} s \
         after; with {} SSE followers from its first byte (the bench's clients at nice 19) \
         {:.2} s: ingest {:.2}x alone's mean (goal ≥ 0.9x); every follower had every byte, in \
         order, after {:.2} s",
        f.mb,
        f.followers,
        f.followed.as_secs_f64(),
        (before + after) / 2.0 / f.followed.as_secs_f64(),
        f.all_delivered.as_secs_f64()
    );
}

pub(crate) struct LogResult {
    pub mb: u64,
    /// Best of the rounds, each.
    pub stored: Duration,
    pub devnull: Duration,
    pub random_mb: u64,
    pub random_stored: Duration,
    /// The same script on the host, outside warden and its sandbox (best of rounds):
    /// to `/dev/null`, through a pipe to `cat > /dev/null`, into a fresh file.
    pub floor: [Duration; 3],
    /// The server's peak RSS (KiB) before the logs (after the no-op jobs), after storing them,
    /// and after reading one back.
    pub peak_kb: [Option<u64>; 3],
}

/// Submit → terminal, polled every 10 ms (a backing-off wait would blur a few-second job).
async fn run(client: &Client, job_type: &str) -> anyhow::Result<(String, Duration, u64)> {
    let t = Instant::now();
    let id = client
        .submit(&SubmitJobRequest {
            job_type: job_type.into(),
            ..SubmitJobRequest::default()
        })
        .await?
        .job_id;
    loop {
        let job = client.get(&id).await?;
        if job.status.is_terminal() {
            if job.status != JobStatus::Succeeded {
                bail!("{job_type} job {id} ended {}: {:?}", job.status, job.reason);
            }
            return Ok((id, t.elapsed(), job.stdout_bytes));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What this machine itself charges for the bytes, without warden: the job's script on the
/// host writing to `/dev/null`, into a pipe that a reader drains, and into a new file in
/// `scratch` (on the data directory's filesystem). Best of `rounds` each.
fn floor(mb: u64, rounds: usize, scratch: &std::path::Path) -> anyhow::Result<[Duration; 3]> {
    let script = lines_script(mb);
    let file = scratch.join("floor.log");
    let ways = [
        format!("{script} > /dev/null"),
        format!("{script} | cat > /dev/null"),
        format!("{script} > {}", file.display()),
    ];
    let mut best = [Duration::MAX; 3];
    for _ in 0..rounds.max(1) {
        for (way, best) in ways.iter().zip(best.iter_mut()) {
            let t = Instant::now();
            let st = std::process::Command::new("/bin/sh")
                .args(["-c", way])
                .status()?;
            let took = t.elapsed();
            let _ = std::fs::remove_file(&file);
            if !st.success() {
                bail!("floor: {way:?} failed: {st}");
            }
            *best = (*best).min(took);
        }
    }
    Ok(best)
}

pub(crate) async fn run_logs(
    client: &Client,
    mb: u64,
    random_mb: u64,
    rounds: usize,
    (server, scratch): (u32, &std::path::Path),
) -> anyhow::Result<LogResult> {
    let before = peak_rss_kb(server);
    let (mut stored, mut devnull) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (_, d, _) = run(client, "quiet").await?;
        devnull.push(d);
        let (id, d, bytes) = run(client, "chatty").await?;
        if bytes != (mb << 20) / 100 * 100 {
            bail!("chatty job {id} stored {bytes} bytes");
        }
        stored.push(d);
    }
    // Byte for byte: the stored log against the same stream made here.
    let (id, random_stored, bytes) = run(client, "random").await?;
    let ingested = peak_rss_kb(server);
    let want = random_mb << 20;
    if bytes != want {
        bail!("random job {id} stored {bytes} of {want} bytes");
    }
    let mut got = sha2::Sha256::new();
    let mut offset = 0u64;
    while offset < want {
        let chunk = client.logs_raw(&id, "stdout", offset).await?;
        if chunk.is_empty() {
            bail!("random job {id}: the log ends at {offset} of {want}");
        }
        offset += chunk.len() as u64;
        got.update(&chunk);
    }
    let local = std::process::Command::new("/bin/sh")
        .args(["-c", &format!("{RANDOM} | head -c {want} | sha256sum")])
        .output()?;
    let local = String::from_utf8_lossy(&local.stdout);
    let got = format!("{:x}", got.finalize());
    if !local.starts_with(&got) {
        bail!("random job {id}: stored log sha256 {got}, the stream's {local}");
    }
    let best = |v: &[Duration]| v.iter().min().copied().unwrap_or_default();
    let floor = floor(mb, rounds, scratch)?;
    Ok(LogResult {
        mb,
        stored: best(&stored),
        devnull: best(&devnull),
        random_mb,
        random_stored,
        floor,
        peak_kb: [before, ingested, peak_rss_kb(server)],
    })
}

/// The server's peak resident set so far (`VmHWM`), in KiB.
pub(crate) fn peak_rss_kb(pid: u32) -> Option<u64> {
    status_kb(pid, "VmHWM:")
}

/// The server's resident set once it has been idle for a while, in KiB: all of it (`VmRSS`) and
/// its anonymous part (`RssAnon`: the heap and stacks, not the binary's pages mapped from the
/// page cache). Read after three seconds (an idle server gives back its caches and free heap
/// within two: see `memory.rs` in warden-server), then every 250 ms until two
/// readings are within 64 KiB of each other (at most 5 s more).
pub(crate) fn idle_rss_kb(pid: u32) -> Option<(u64, u64)> {
    let read = || Some((status_kb(pid, "VmRSS:")?, status_kb(pid, "RssAnon:")?));
    std::thread::sleep(Duration::from_secs(3));
    let mut last = read()?;
    for _ in 0..16 {
        std::thread::sleep(Duration::from_millis(250));
        let now = read()?;
        if now.0.abs_diff(last.0) < 64 {
            return Some(now);
        }
        last = now;
    }
    Some(last)
}

/// A `/proc/{pid}/status` field given in kB.
fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The idle server's resident set at start and after every part of the bench.
pub(crate) fn print_idle(kb: [Option<(u64, u64)>; 2]) {
    let mib = |k: u64| k as f64 / 1024.0;
    let [start, end] = kb.map(|k| {
        k.map_or("unknown".into(), |(rss, anon)| {
            format!("{:.1} MiB (anonymous {:.1})", mib(rss), mib(anon))
        })
    });
    let met = kb
        .iter()
        .all(|k| k.is_some_and(|(rss, _)| rss <= IDLE_GOAL_KB));
    println!(
        "server RSS when idle: {start} after start, {end} after every part above (goal ≤ 30 \
         MiB: {})",
        if met { "met" } else { "not met" }
    );
}

/// Idle server RSS goal (issue 19): 30 MiB.
const IDLE_GOAL_KB: u64 = 30 << 10;

pub(crate) fn print(r: &LogResult) {
    println!();
    println!(
        "logs: a job printing {} MiB of 100-byte lines, stored vs to /dev/null (best of rounds)",
        r.mb
    );
    println!("| job output        | submit→terminal | ratio |");
    println!("|-------------------|----------------:|------:|");
    println!(
        "| /dev/null         | {:>13.2} s |       |",
        r.devnull.as_secs_f64()
    );
    println!(
        "| stored by warden  | {:>13.2} s | {:>4.2}x |",
        r.stored.as_secs_f64(),
        r.stored.as_secs_f64() / r.devnull.as_secs_f64()
    );
    let [null, piped, file] = r.floor.map(|d| d.as_secs_f64());
    println!(
        "the machine's floor, the same script on the host without warden: to /dev/null {null:.2} s, \
         piped to `cat > /dev/null` {piped:.2} s ({:.2}x), into a new file on the data directory's \
         filesystem {file:.2} s ({:.2}x); warden stored it in {:.2}x the new file's time",
        piped / null,
        file / null,
        r.stored.as_secs_f64() / file
    );
    println!(
        "ingest {:.0} MB/s; {} MiB pseudo-random log stored in {:.2} s and read back byte-exact",
        (r.mb << 20) as f64 / 1e6 / r.stored.as_secs_f64(),
        r.random_mb,
        r.random_stored.as_secs_f64(),
    );
    let mib = |k: Option<u64>| {
        k.map_or("unknown".into(), |k| {
            format!("{:.1} MiB", k as f64 / 1024.0)
        })
    };
    println!(
        "server peak RSS: {} after the no-op jobs, {} after storing the logs, {} after reading \
         {} MiB back (16 MiB reads)",
        mib(r.peak_kb[0]),
        mib(r.peak_kb[1]),
        mib(r.peak_kb[2]),
        r.random_mb
    );
}
