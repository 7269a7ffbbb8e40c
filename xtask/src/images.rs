//! `cargo xtask bench images [--mb N] [--starts N] [--rounds N]`: warden's image support
//! against the tools people use, in the same invocation.
//!
//! - First pull + unpack of an N MiB image (gzip layers) from a registry on loopback (Debian's
//!   `docker-registry`): warden's `Images::prepare` — the worker's own code — into an empty
//!   cache, against `skopeo copy docker://… oci:DIR` followed by `umoci unpack`.
//! - Job start (submit → terminal of `true`) from the cached image against the host root: the
//!   same static busybox in both (the image's `/bin/true`, the host's `/bin/busybox true`).
//!
//! The image is built here with buildah from scratch: a static busybox and N MiB of files, half
//! random (incompressible) and half text.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use warden_api::SubmitJobRequest;
use warden_client::Client;

use crate::{build_release, flag, ms, one, start_server, stats};

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A tree of `mb` MiB beside busybox, built into `dest` with gzip layers.
fn build_image(dir: &Path, mb: usize, dest: &str) -> anyhow::Result<()> {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("bin"))?;
    std::fs::create_dir_all(tree.join("data/text"))?;
    std::fs::create_dir_all(tree.join("data/random"))?;
    std::fs::copy("/bin/busybox", tree.join("bin/busybox"))
        .context("/bin/busybox (scripts/setup.sh installs busybox-static)")?;
    for applet in ["sh", "true"] {
        std::os::unix::fs::symlink("busybox", tree.join("bin").join(applet))?;
    }
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut random = vec![0u8; 1 << 20];
    for i in 0..mb {
        if i % 2 == 0 {
            for chunk in random.chunks_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
            }
            std::fs::write(tree.join(format!("data/random/{i}.bin")), &random)?;
        } else {
            // Text in small files, as a package tree has them: 64 files of 16 KiB.
            for j in 0..64 {
                let line = format!("line {i}.{j}: the quick brown fox jumps over the lazy dog\n");
                let text = line.repeat((16 << 10) / line.len() + 1);
                std::fs::write(
                    tree.join(format!("data/text/{i}-{j}.txt")),
                    &text.as_bytes()[..16 << 10],
                )?;
            }
        }
    }
    let buildah = |args: &[&str]| {
        run(Command::new("buildah")
            .arg("--root")
            .arg(dir.join("buildah/root"))
            .arg("--runroot")
            .arg(dir.join("buildah/run"))
            .args(["--storage-driver", "vfs"])
            .args(args))
    };
    let c = buildah(&["from", "scratch"])?;
    buildah(&["copy", &c, tree.to_str().context("path")?, "/"])?;
    buildah(&["config", "--env", "PATH=/bin", &c])?;
    buildah(&["commit", "-q", "--disable-compression=false", &c, dest])?;
    buildah(&["rm", &c])?;
    Ok(())
}

struct Registry(std::process::Child);

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_registry(dir: &Path) -> anyhow::Result<(Registry, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let host = format!("127.0.0.1:{port}");
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: {host}}}\n",
            dir.join("registry").display()
        ),
    )?;
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("docker-registry (scripts/setup.sh installs it)")?;
    let registry = Registry(child);
    for _ in 0..100 {
        if std::net::TcpStream::connect(&host).is_ok() {
            return Ok((registry, host));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the registry did not start on {host}")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub fn bench_images(rest: &[&str]) -> anyhow::Result<()> {
    let mb = flag(rest, "--mb", 100)?;
    let starts = flag(rest, "--starts", 40)?;
    let rounds = flag(rest, "--rounds", 3)?;
    let warden = build_release()?;
    let dir = tempfile::Builder::new()
        .prefix("warden-bench-images-")
        .tempdir()?;
    let dir = dir.path();
    println!("building a {mb} MiB image with buildah ...");
    let archive = format!("oci-archive:{}:v1", dir.join("image.tar").display());
    build_image(dir, mb, &archive)?;
    let (_registry, host) = start_registry(dir)?;
    run(Command::new("skopeo")
        .args(["copy", "-q", "--dest-tls-verify=false", &archive])
        .arg(format!("docker://{host}/bench/big:v1")))?;
    let reference = format!("{host}/bench/big:v1");

    // First pull + unpack, alternating, each into an empty cache / directory.
    let rt = tokio::runtime::Runtime::new()?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let image: warden_core::image::ImageRef = reference.parse().map_err(anyhow::Error::msg)?;
    let config: warden_core::Config = warden_core::Config::from_yaml_str(
        &format!("images: {{registries: {{\"{host}\": {{insecure_http: true}}}}}}\n"),
        "bench.yaml",
    )?;
    let mut unpacked_bytes = 0;
    for round in 0..rounds {
        let cache = dir.join(format!("cache-{round}"));
        let images =
            warden_image::Images::open(cache.clone(), config.images.clone(), Default::default())?;
        let t = Instant::now();
        let root = rt.block_on(async {
            let digest = images.resolve(&image).await?;
            images.prepare(&image, &digest).await
        })?;
        ours.push(t.elapsed());
        unpacked_bytes = root.info.unpacked.bytes;
        drop(root);
        let _ = std::fs::remove_dir_all(&cache);

        let layout = dir.join(format!("layout-{round}"));
        let bundle = dir.join(format!("bundle-{round}"));
        let t = Instant::now();
        run(Command::new("skopeo")
            .args(["copy", "-q", "--src-tls-verify=false"])
            .arg(format!("docker://{reference}"))
            .arg(format!("oci:{}:v1", layout.display())))?;
        run(Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:v1", layout.display()))
            .arg(&bundle))?;
        theirs.push(t.elapsed());
        let _ = std::fs::remove_dir_all(&layout);
        let _ = std::fs::remove_dir_all(&bundle);
    }

    // What pinning costs a submission: resolving the tag against the registry, client kept.
    let resolver = warden_image::Images::open(
        dir.join("cache-resolve"),
        config.images.clone(),
        Default::default(),
    )?;
    let resolve = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..starts {
            let t = Instant::now();
            resolver.resolve(&image).await?;
            v.push(t.elapsed());
        }
        anyhow::Ok(stats(v))
    })?;

    // Job start from the cached image vs the host root.
    let config_path = dir.join("serve.yaml");
    std::fs::write(
        &config_path,
        format!(
            "listen: 127.0.0.1:0\ngrpc_listen: 127.0.0.1:0\nauth: {{loopback_trusted: true}}\n\
             data_dir: {data}\nslots: 2\n\
             images: {{registries: {{\"{host}\": {{insecure_http: true}}}}}}\n\
             job_types:\n\
             \x20 from_image:\n    argv: [/bin/true]\n    timeout_s: 60\n    image: \"{reference}\"\n\
             \x20 from_host:\n    argv: [/bin/busybox, \"true\"]\n    timeout_s: 60\n",
            data = dir.join("serve-data").display()
        ),
    )?;
    let (mut server, url) = start_server(&warden, &config_path)?;
    let result = rt.block_on(async {
        let client = Client::new(&url, Duration::from_secs(600), None)?;
        let req = |t: &str| SubmitJobRequest {
            job_type: t.into(),
            ..SubmitJobRequest::default()
        };
        // The first pulls the image into the server's cache.
        let first = one(&client, &req("from_image")).await?;
        let (mut image, mut host) = (Vec::new(), Vec::new());
        for _ in 0..starts {
            image.push(one(&client, &req("from_image")).await?);
            host.push(one(&client, &req("from_host")).await?);
        }
        anyhow::Ok((first, stats(image), stats(host)))
    });
    let _ = Command::new("kill").arg(server.id().to_string()).status();
    let _ = server.wait();
    let (first, image_start, host_start) = result?;

    let (o, t) = (median(ours), median(theirs));
    println!();
    println!(
        "| first pull + unpack, {mb} MiB image ({} MB unpacked), median of {rounds} | warden | skopeo copy + umoci unpack | ratio (goal ≤ 1.0×) |",
        unpacked_bytes / 1_000_000
    );
    println!("|---|---|---|---|");
    println!(
        "| wall time | {} ms | {} ms | {:.2}× |",
        ms(o),
        ms(t),
        o.as_secs_f64() / t.as_secs_f64()
    );
    println!();
    println!(
        "resolving the tag at submission (part of every image job's start), {starts} times: p50 {} ms, p99 {} ms",
        ms(resolve.p50),
        ms(resolve.p99)
    );
    println!(
        "| job start, submit→terminal ({starts} each, alternating; first image job with the pull: {} ms) | host root | cached image | ratio (goal ≤ 1.2×) |",
        ms(first)
    );
    println!("|---|---|---|---|");
    for (what, h, i) in [
        ("p50", host_start.p50, image_start.p50),
        ("p99", host_start.p99, image_start.p99),
    ] {
        println!(
            "| {what} | {} ms | {} ms | {:.2}× |",
            ms(h),
            ms(i),
            i.as_secs_f64() / h.as_secs_f64()
        );
    }
    Ok(())
}
