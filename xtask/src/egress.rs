//! `cargo xtask bench egress [--mb N] [--downloads N] [--connections N] [--starts N]`: the
//! egress gateway against the host's own network, in one invocation.
//!
//! - **Download**: `curl` fetches N MiB from an HTTP server of this bench, once from warden's
//!   host and once from a job whose policy allows exactly that server (`IP/32:PORT`),
//!   alternating, `--downloads` times each (default 9); the median MB/s as curl measured it,
//!   and the median of each adjacent pair's ratio. Twice: with the server on the host's
//!   loopback (the gateway's worst case: the baseline crosses one loopback connection, the job
//!   two), and, as root, on "another host": warden and the baseline in a network namespace of
//!   the bench's, the server in a second one across a veth link (the host's own interfaces
//!   untouched).
//! - **Connection setup**: a small request, connect to last byte, repeated; p50 from the host
//!   and from a job (every request through the gateway: accept, policy, upstream connect).
//! - **Job start**: submit→terminal of `/bin/true` with an egress policy and with `none`.

use std::io::{BufRead, BufReader, Write};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use warden_api::SubmitJobRequest;
use warden_client::Client;

use crate::{build_release, flag, ms, one, stats};

/// Serves `GET /big` (`bytes` bytes) and anything else (2 bytes) on `listener`.
fn serve(listener: std::net::TcpListener, bytes: usize) {
    std::thread::spawn(move || {
        let big = std::sync::Arc::new(vec![b'x'; bytes]);
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let big = big.clone();
            std::thread::spawn(move || {
                let _ = conn.set_nodelay(true);
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut first = String::new();
                let _ = reader.read_line(&mut first);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                let body: &[u8] = if first.contains("/big") { &big } else { b"ok" };
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(body);
            });
        }
    });
}

/// The setup-latency probe: `n` requests, connect to the end of the answer, p50 and p99 in ms.
fn latency_script(addr: std::net::SocketAddr, n: usize) -> String {
    let (ip, port) = (addr.ip(), addr.port());
    format!(
        "import socket, time\nt = []\nfor i in range({n}):\n  a = time.perf_counter()\n  s = socket.create_connection(('{ip}', {port}))\n  s.sendall(b'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n  while s.recv(4096): pass\n  s.close()\n  t.append(time.perf_counter() - a)\nt.sort()\nprint('%.3f %.3f' % (t[len(t)//2]*1000, t[int(len(t)*0.99)]*1000))\n"
    )
}

fn curl_args(addr: std::net::SocketAddr) -> Vec<String> {
    vec![
        "-s".into(),
        "-o".into(),
        "/dev/null".into(),
        "-w".into(),
        "%{speed_download}".into(),
        format!("http://{addr}/big"),
    ]
}

/// Two network namespaces of the bench's, joined by veth: `here` (10.98.0.1) for warden and
/// the baseline, `there` (10.98.0.2) for the server.
struct Link {
    here: String,
    there: String,
}

impl Link {
    fn create() -> anyhow::Result<Link> {
        let tag = std::process::id() % 60000;
        let (here, there) = (format!("wdn-bh{tag}"), format!("wdn-bt{tag}"));
        let run = |args: &[&str]| -> anyhow::Result<()> {
            let out = Command::new("ip").args(args).output()?;
            if !out.status.success() {
                bail!("ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(())
        };
        let link = Link { here, there };
        for ns in [&link.here, &link.there] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            run(&["netns", "add", ns])?;
            run(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        let (a, b) = (format!("wbh{tag}"), format!("wbt{tag}"));
        run(&[
            "-n",
            &link.here,
            "link",
            "add",
            &a,
            "type",
            "veth",
            "peer",
            "name",
            &b,
            "netns",
            &link.there,
        ])?;
        run(&["-n", &link.here, "addr", "add", "10.98.0.1/24", "dev", &a])?;
        run(&["-n", &link.there, "addr", "add", "10.98.0.2/24", "dev", &b])?;
        run(&["-n", &link.here, "link", "set", &a, "up"])?;
        run(&["-n", &link.there, "link", "set", &b, "up"])?;
        Ok(link)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        for ns in [&self.here, &self.there] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Runs `f` on a thread of its own in network namespace `ns` (or here, for `None`).
fn in_netns<T: Send + 'static>(
    ns: Option<&str>,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let path = ns.map(|n| std::path::PathBuf::from("/run/netns").join(n));
    std::thread::spawn(move || {
        if let Some(path) = path {
            let fd = std::fs::File::open(&path)?;
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&fd),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )?;
        }
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("bench thread panicked"))?
}

/// A command, run inside `ns` when there is one.
fn command(ns: Option<&str>, program: &str) -> Command {
    match ns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}"))
                .arg("--")
                .arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// What one placement of the server measured.
struct Round {
    host_dl: f64,
    job_dl: f64,
    /// The same job with `network: host`: the sandbox's own cost, without the gateway.
    sandbox_dl: f64,
    host_lat: (f64, f64),
    job_lat: (f64, f64),
    starts: Option<(crate::Stats, crate::Stats)>,
    /// The median of job/host over the adjacent download pairs.
    pair_ratio: f64,
}

#[allow(clippy::too_many_arguments)]
fn round(
    warden: &std::path::Path,
    dir: &std::path::Path,
    ns: Option<&str>,
    server: std::net::SocketAddr,
    downloads: usize,
    connections: usize,
    starts: usize,
) -> anyhow::Result<Round> {
    let config = dir.join("egress.yaml");
    let curl: Vec<String> = std::iter::once("/usr/bin/curl".to_string())
        .chain(curl_args(server))
        .collect();
    let latency = latency_script(server, connections);
    let entry = format!("{}/32:{}", server.ip(), server.port());
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\ngrpc_listen: 127.0.0.1:0\nauth: {{loopback_trusted: true}}\n\
             data_dir: {data}\nslots: 2\n\
             job_types:\n\
             \x20 download:\n    argv: {curl:?}\n    timeout_s: 600\n\
             \x20   network: {{egress: [{entry:?}]}}\n\
             \x20 download_host:\n    argv: {curl:?}\n    timeout_s: 600\n\
             \x20   network: host\n\
             \x20 latency:\n    argv: [\"/usr/bin/python3\", \"-c\", {latency:?}]\n    timeout_s: 600\n\
             \x20   network: {{egress: [{entry:?}]}}\n\
             \x20 start_egress:\n    argv: [/bin/true]\n    timeout_s: 30\n\
             \x20   network: {{egress: [{entry:?}]}}\n\
             \x20 start_none:\n    argv: [/bin/true]\n    timeout_s: 30\n",
            data = dir.join(format!("data-{}", ns.unwrap_or("host"))).display(),
        ),
    )?;
    let mut cmd = command(ns, &warden.to_string_lossy());
    cmd.args(["serve", "--config"]).arg(&config);
    let (mut process, url) = crate::start_command(cmd)?;
    let ns_owned = ns.map(str::to_string);
    let (latency2, ns2) = (latency.clone(), ns_owned.clone());
    let result = in_netns(ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let client = Client::new(&url, Duration::from_secs(600), None)?;
            let job_out = |job_type: &'static str| {
                let client = client.clone();
                async move {
                    let sub = client
                        .submit(&SubmitJobRequest {
                            job_type: job_type.into(),
                            ..SubmitJobRequest::default()
                        })
                        .await?;
                    let end = client.wait(&sub.job_id, |_| {}).await?;
                    if end.status != warden_api::JobStatus::Succeeded {
                        bail!(
                            "{job_type} job {} ended {:?}: {:?}",
                            sub.job_id,
                            end.status,
                            end.reason
                        );
                    }
                    let out = client.logs_raw(&sub.job_id, "stdout", 0).await?;
                    anyhow::Ok(String::from_utf8_lossy(&out).into_owned())
                }
            };
            let (mut host_dl, mut job_dl, mut sandbox_dl) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..downloads {
                let out = command(ns2.as_deref(), "curl")
                    .args(curl_args(server))
                    .output()?;
                host_dl.push(String::from_utf8_lossy(&out.stdout).trim().parse::<f64>()?);
                job_dl.push(job_out("download").await?.trim().parse::<f64>()?);
                sandbox_dl.push(job_out("download_host").await?.trim().parse::<f64>()?);
            }
            let out = command(ns2.as_deref(), "python3")
                .args(["-c", &latency2])
                .output()?;
            let host_lat = String::from_utf8_lossy(&out.stdout).into_owned();
            let job_lat = job_out("latency").await?;
            let measured_starts = if ns2.is_none() {
                let (mut egress, mut none) = (Vec::new(), Vec::new());
                let req = |t: &str| SubmitJobRequest {
                    job_type: t.into(),
                    ..SubmitJobRequest::default()
                };
                for _ in 0..starts {
                    egress.push(one(&client, &req("start_egress")).await?);
                    none.push(one(&client, &req("start_none")).await?);
                }
                Some((stats(egress), stats(none)))
            } else {
                None
            };
            anyhow::Ok((
                host_dl,
                job_dl,
                sandbox_dl,
                host_lat,
                job_lat,
                measured_starts,
            ))
        })
    });
    let _ = Command::new("kill").arg(process.id().to_string()).status();
    let _ = process.wait();
    let (mut host_dl, mut job_dl, mut sandbox_dl, host_lat, job_lat, starts) = result?;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let parse = |s: &str| -> anyhow::Result<(f64, f64)> {
        let mut it = s.split_whitespace().map(str::parse::<f64>);
        Ok((it.next().context("no p50")??, it.next().context("no p99")??))
    };
    // Each job download ran right after its host download: their ratio is what this machine's
    // drift over the run disturbs least.
    let mut pairs: Vec<f64> = job_dl.iter().zip(&host_dl).map(|(j, h)| j / h).collect();
    Ok(Round {
        pair_ratio: median(&mut pairs),
        host_dl: median(&mut host_dl) / 1e6,
        job_dl: median(&mut job_dl) / 1e6,
        sandbox_dl: median(&mut sandbox_dl) / 1e6,
        host_lat: parse(&host_lat)?,
        job_lat: parse(&job_lat)?,
        starts,
    })
}

pub fn bench_egress(rest: &[&str]) -> anyhow::Result<()> {
    let mb = flag(rest, "--mb", 256)?;
    let downloads = flag(rest, "--downloads", 9)?.max(1);
    let connections = flag(rest, "--connections", 300)?;
    let starts = flag(rest, "--starts", 40)?;
    let warden = build_release()?;
    let dir = std::env::temp_dir().join(format!("warden-bench-egress-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let local = std::net::TcpListener::bind("127.0.0.1:0")?;
    let local_addr = local.local_addr()?;
    serve(local, mb << 20);
    let mut rounds = vec![(
        "server on the host's loopback",
        round(
            &warden,
            &dir,
            None,
            local_addr,
            downloads,
            connections,
            starts,
        )?,
    )];
    if rustix::process::geteuid().is_root() {
        let link = Link::create()?;
        let remote = in_netns(Some(&link.there), || {
            Ok(std::net::TcpListener::bind("10.98.0.2:0")?)
        })?;
        let remote_addr = remote.local_addr()?;
        serve(remote, mb << 20);
        rounds.push((
            "server on another host (veth)",
            round(
                &warden,
                &dir,
                Some(&link.here),
                remote_addr,
                downloads,
                connections,
                starts,
            )?,
        ));
    } else {
        println!("(not root: the veth round is skipped)");
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!();
    println!(
        "| {mb} MiB download, median of {downloads} | from warden's host (baseline) | from a job, through the gateway | ratio of medians | median of pair ratios (goal ≥ 0.8×) | a job with network: host | gateway vs host-network job |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (what, r) in &rounds {
        println!(
            "| {what} | {:.0} MB/s | {:.0} MB/s | {:.2}× | {:.2}× | {:.0} MB/s | {:.2}× |",
            r.host_dl,
            r.job_dl,
            r.job_dl / r.host_dl,
            r.pair_ratio,
            r.sandbox_dl,
            r.job_dl / r.sandbox_dl
        );
    }
    println!();
    println!(
        "| request setup, connect to last byte ({connections} requests) | from the host | through the gateway | ratio |"
    );
    println!("|---|---|---|---|");
    for (what, r) in &rounds {
        println!(
            "| {what}: p50 / p99 | {:.3} / {:.3} ms | {:.3} / {:.3} ms | {:.2}× / {:.2}× |",
            r.host_lat.0,
            r.host_lat.1,
            r.job_lat.0,
            r.job_lat.1,
            r.job_lat.0 / r.host_lat.0,
            r.job_lat.1 / r.host_lat.1
        );
    }
    if let Some((e, n)) = rounds.first().and_then(|(_, r)| r.starts.as_ref()) {
        println!();
        println!(
            "| job start, submit→terminal ({starts} each, alternating) | network: none | egress policy | difference | goal |"
        );
        println!("|---|---|---|---|---|");
        println!(
            "| p50 | {} ms | {} ms | {:+.2} ms | ≤ +2 ms |",
            ms(n.p50),
            ms(e.p50),
            (e.p50.as_secs_f64() - n.p50.as_secs_f64()) * 1000.0
        );
        println!(
            "| p99 | {} ms | {} ms | {:+.2} ms | |",
            ms(n.p99),
            ms(e.p99),
            (e.p99.as_secs_f64() - n.p99.as_secs_f64()) * 1000.0
        );
    }
    Ok(())
}
