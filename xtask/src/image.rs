//! `cargo xtask image`: builds warden's container image (`deploy/Containerfile`) with buildah,
//! from a Debian base made by debootstrap (nothing is pulled), checks what its configuration
//! promises, and smoke-runs it.
//!
//! 1. The base: `debootstrap --variant=minbase bookworm` with git and ca-certificates, cached
//!    under `target/image/`, imported as `localhost/warden-base:bookworm` (`buildah add` of a
//!    tarball keeps owners and modes).
//! 2. `buildah bud --isolation chroot --format docker` (HEALTHCHECK is part of the docker
//!    image format), tagged `localhost/warden:dev`, written as `target/image/warden.oci.tar`.
//! 3. Checks of the image's configuration: a non-root user, a healthcheck that runs
//!    `warden health`, the OCI labels (source, revision), the entrypoint.
//! 4. A smoke run: the image's own command (`warden serve` with the image's configuration, as
//!    its user) under `buildah run`, answering `warden health` from the host.
//!
//! Prints `image: N passed, M failed` like the other checks and fails on any failure.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{build_release, workspace_root};

const BASE: &str = "localhost/warden-base:bookworm";
const IMAGE: &str = "localhost/warden:dev";
const PACKAGES: &str = "git,ca-certificates,procps";

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("start {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn image(rest: &[&str]) -> anyhow::Result<()> {
    let root = workspace_root();
    let dir = root.join("target/image");
    std::fs::create_dir_all(&dir)?;
    ensure_base(&dir)?;
    build_release()?;
    let revision = run(Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(&root))
    .map(|s| s.trim().to_string())
    .unwrap_or_else(|_| "unknown".into());
    eprintln!("image: buildah bud -f deploy/Containerfile ({revision})");
    let built = Instant::now();
    run(Command::new("buildah")
        .args([
            "bud",
            "--isolation",
            "chroot",
            "--format",
            "docker",
            "--layers=false",
        ])
        .args(["--build-arg", &format!("BASE={BASE}")])
        .args(["--build-arg", &format!("REVISION={revision}")])
        .args(["-f", "deploy/Containerfile", "-t", IMAGE, "."])
        .current_dir(&root)
        .stdout(Stdio::null()))?;
    let archive = dir.join("warden.oci.tar");
    let _ = std::fs::remove_file(&archive);
    run(Command::new("buildah")
        .args(["push", IMAGE])
        .arg(format!("oci-archive:{}", archive.display())))?;
    eprintln!(
        "image: built in {:.0} s, {} MiB as {}",
        built.elapsed().as_secs_f64(),
        std::fs::metadata(&archive)?.len() >> 20,
        archive.display()
    );

    let mut passed = 0;
    let mut failed = Vec::new();
    let mut check = |name: &str, ok: anyhow::Result<()>| match ok {
        Ok(()) => {
            println!("image: {name}: ok");
            passed += 1;
        }
        Err(e) => {
            println!("image: {name}: FAILED: {e:#}");
            failed.push(name.to_string());
        }
    };
    let inspect: serde_json::Value = serde_json::from_str(&run(
        Command::new("buildah").args(["inspect", "--type", "image", IMAGE])
    )?)?;
    let config = &inspect["Docker"]["config"];
    check("non-root user", non_root(config));
    check("healthcheck runs warden health", healthcheck(config));
    check("OCI labels", labels(config, &revision));
    check(
        "entrypoint and command",
        expect(
            config["Entrypoint"] == serde_json::json!(["/usr/local/bin/warden"])
                && config["Cmd"]
                    == serde_json::json!(["serve", "--config", "/etc/warden/warden.yaml"]),
            || format!("{} {}", config["Entrypoint"], config["Cmd"]),
        ),
    );
    if !rest.contains(&"--no-run") {
        check("smoke run: serve answers health", smoke_run());
    }
    println!("image: {passed} passed, {} failed", failed.len());
    if !failed.is_empty() {
        bail!("image checks failed: {}", failed.join(", "));
    }
    Ok(())
}

fn expect(ok: bool, what: impl FnOnce() -> String) -> anyhow::Result<()> {
    if ok { Ok(()) } else { bail!("got {}", what()) }
}

fn non_root(config: &serde_json::Value) -> anyhow::Result<()> {
    let user = config["User"].as_str().unwrap_or_default();
    let uid = user.split(':').next().unwrap_or_default();
    expect(!uid.is_empty() && uid != "0" && uid != "root", || {
        format!("User {user:?}")
    })
}

fn healthcheck(config: &serde_json::Value) -> anyhow::Result<()> {
    let test: Vec<&str> = config["Healthcheck"]["Test"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    expect(
        test.first() == Some(&"CMD") && test.contains(&"health"),
        || format!("Healthcheck {}", config["Healthcheck"]),
    )
}

fn labels(config: &serde_json::Value, revision: &str) -> anyhow::Result<()> {
    let l = &config["Labels"];
    expect(
        l["org.opencontainers.image.revision"] == revision
            && l["org.opencontainers.image.source"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
        || format!("Labels {l}"),
    )
}

/// The image's own command as its own user, its API answered from outside.
fn smoke_run() -> anyhow::Result<()> {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    // A writable copy of the volume: `buildah run` mounts nothing for VOLUME.
    let data = tempfile::tempdir()?;
    rustix::fs::chown(
        data.path(),
        Some(rustix::fs::Uid::from_raw(10001)),
        Some(rustix::fs::Gid::from_raw(10001)),
    )?;
    let ctr = run(Command::new("buildah").args(["from", IMAGE]))?
        .trim()
        .to_string();
    // In a process group of its own: `buildah run` leaves the container's processes to a
    // `buildah-chroot-exec` of its own, which a kill of buildah alone orphans, still serving.
    let mut server = Command::new("buildah")
        .process_group(0)
        .args(["run", "--isolation", "chroot", "--network", "host"])
        .arg("-v")
        .arg(format!("{}:/var/lib/warden", data.path().display()))
        .args([&ctr, "--", "/usr/local/bin/warden", "serve"])
        .args(["--config", "/etc/warden/warden.yaml"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--grpc-listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("buildah run")?;
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let result = loop {
        let health = Command::new(workspace_root().join("target/release/warden"))
            .args(["health", "--url", &url, "--timeout", "2"])
            .output()?;
        if health.status.success() {
            break Ok(());
        }
        if let Some(st) = server.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = server.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            break Err(anyhow::anyhow!(
                "warden serve in the image exited ({st}): {err}"
            ));
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!("no healthy answer from {url} in 60 s"));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    end_group(&mut server);
    let _ = Command::new("buildah").args(["rm", &ctr]).output();
    let owner = std::fs::metadata(data.path().join("warden.db"))
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    result?;
    expect(owner.as_ref().is_ok_and(|u| *u == 10001), || {
        format!("the database's owner {owner:?} (the image's user is 10001)")
    })
}

/// Ends a process group led by `leader` and everything in it: SIGTERM (warden shuts down
/// cleanly), then SIGKILL to whatever is left after 10 s.
fn end_group(leader: &mut std::process::Child) {
    use rustix::process::{Pid, Signal, kill_process_group};
    let Some(group) = Pid::from_raw(leader.id() as i32) else {
        return;
    };
    let _ = kill_process_group(group, Signal::TERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while matches!(leader.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Members that outlived the leader are still in its group.
    let _ = kill_process_group(group, Signal::KILL);
    let _ = leader.wait();
}

/// The base image: a debootstrap root filesystem, imported once.
fn ensure_base(dir: &Path) -> anyhow::Result<()> {
    let rootfs = dir.join("rootfs");
    let done = rootfs.join(".warden-image-base");
    if !done.exists() {
        let _ = std::fs::remove_dir_all(&rootfs);
        eprintln!("image: debootstrap bookworm for the base (once)");
        run(Command::new("debootstrap")
            .args([
                "--variant=minbase",
                &format!("--include={PACKAGES}"),
                "bookworm",
            ])
            .arg(&rootfs)
            .arg("http://deb.debian.org/debian")
            .stdout(Stdio::null()))?;
        // Nothing the image does not need: apt's lists and caches.
        for d in ["var/lib/apt/lists", "var/cache/apt/archives"] {
            let _ = std::fs::remove_dir_all(rootfs.join(d));
            std::fs::create_dir_all(rootfs.join(d))?;
        }
        std::fs::write(&done, "")?;
        let _ = Command::new("buildah").args(["rmi", "-f", BASE]).output();
    }
    let have = Command::new("buildah")
        .args(["inspect", "--type", "image", BASE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?
        .success();
    if have {
        return Ok(());
    }
    let tar = dir.join("rootfs.tar");
    run(Command::new("tar")
        .args(["--exclude=./.warden-image-base", "-C"])
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg("."))?;
    let ctr = run(Command::new("buildah").args(["from", "scratch"]))?
        .trim()
        .to_string();
    run(Command::new("buildah")
        .args(["add", &ctr])
        .arg(&tar)
        .arg("/"))?;
    run(Command::new("buildah").args([
        "config",
        "--env",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        &ctr,
    ]))?;
    run(Command::new("buildah").args(["commit", "--rm", &ctr, BASE]))?;
    let _ = std::fs::remove_file(&tar);
    Ok(())
}
