//! `cargo xtask vm-test`: warden's sandbox on a pure cgroup v2 host, proven in a VM.
//!
//! Boots Debian's cloud kernel under `qemu-system-x86_64` (TCG: nested KVM hangs on the
//! machines this runs on; `--kvm` tries it) with `cgroup_no_v1=all`, on a Debian root
//! filesystem made by `debootstrap`, with the workspace's debug binaries and test executables
//! on a second disk mounted at the workspace's own path (so every path the tests were built
//! with holds). Inside, as root: `warden doctor`, the sandbox crate's tests, the hostile-job
//! suite and the rootless tests (an unprivileged user with a delegated subtree); with
//! `--bench`, `xtask bench sandbox` beside bwrap. Then the same VM boots again with systemd as
//! init for the deployment checks (`systemd.rs`: install, job, reboot, job, uninstall;
//! `--systemd-only` runs just those). Prints `vm-test: N passed, M failed`.
//!
//! Everything large is cached under `target/vm/`: the root filesystem (and its image) and the
//! kernel are made once; a second run rebuilds only the payload disk and boots in seconds.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::workspace_root;

mod initrd;
mod systemd;

use initrd::ensure_initrd;

const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
/// Packages the tests call inside the VM (git for mirrors and worktrees, python3 for the
/// memory bombs, bubblewrap for the benchmark, util-linux for setpriv and runuser, systemd
/// for the deployment boot, passwd for the installer's useradd).
const PACKAGES: &str =
    "git,python3,bubblewrap,util-linux,procps,iproute2,kmod,systemd,systemd-sysv,dbus,passwd";
const KERNEL_PACKAGE: &str = "linux-image-cloud-amd64";
/// Modules the initramfs loads to reach its disks (the cloud kernel builds them as modules).
const BOOT_MODULES: &[&str] = &["virtio_pci", "virtio_blk", "ext4"];

struct Options {
    bench: bool,
    systemd_only: bool,
    kvm: bool,
    timeout: Duration,
    memory_mb: u32,
}

pub fn vm_test(rest: &[&str]) -> anyhow::Result<()> {
    let opts = Options {
        bench: rest.contains(&"--bench"),
        systemd_only: rest.contains(&"--systemd-only"),
        kvm: rest.contains(&"--kvm"),
        timeout: Duration::from_secs(crate::flag(rest, "--timeout-min", 45)? as u64 * 60),
        memory_mb: crate::flag(rest, "--memory-mb", 4096)? as u32,
    };
    let root = workspace_root();
    let vm = root.join("target/vm");
    std::fs::create_dir_all(&vm)?;
    let rootfs = vm.join("rootfs");
    ensure_rootfs(&rootfs)?;
    let kernel = ensure_kernel(&rootfs)?;
    let initrd = ensure_initrd(&vm, &kernel)?;
    let rootfs_img = ensure_image(&rootfs, &vm.join("rootfs.ext4"), "3G")?;
    let tests = build_tests(&root, opts.bench)?;
    let payload = make_payload(&root, &vm, &tests, opts.bench)?;
    let disks = Disks {
        vmlinuz: &kernel.vmlinuz,
        initrd: &initrd,
        rootfs: &rootfs_img,
        payload: &payload,
    };
    let mut total = Summary::default();
    let mut unfinished = Vec::new();
    let boots: &[Boot] = if opts.systemd_only {
        &[Boot::Systemd]
    } else {
        &[Boot::Tests, Boot::Systemd]
    };
    for &b in boots {
        let s = boot(&opts, &disks, &root, b)?;
        total.passed += s.passed;
        total.failed += s.failed;
        if !s.finished {
            unfinished.push(b.name());
        }
    }
    println!("vm-test: {} passed, {} failed", total.passed, total.failed);
    if !unfinished.is_empty() {
        bail!(
            "the VM's {} boot did not finish its run (crash, hang or timeout): see the console \
             above",
            unfinished.join(" and ")
        );
    }
    if total.failed > 0 || total.passed == 0 {
        bail!("vm-test failed");
    }
    Ok(())
}

/// What a boot runs: the test executables (the script as init), or the deployment checks
/// (systemd as init).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Boot {
    Tests,
    Systemd,
}

impl Boot {
    fn name(self) -> &'static str {
        match self {
            Boot::Tests => "tests",
            Boot::Systemd => "systemd",
        }
    }

    /// The script the initramfs hands over to, relative to the workspace.
    fn script(self) -> &'static str {
        match self {
            Boot::Tests => "target/vm-run.sh",
            Boot::Systemd => "target/vm-systemd.sh",
        }
    }
}

struct Disks<'a> {
    vmlinuz: &'a Path,
    initrd: &'a Path,
    rootfs: &'a Path,
    payload: &'a Path,
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("start {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A Debian root filesystem with the packages the tests call, made once.
fn ensure_rootfs(rootfs: &Path) -> anyhow::Result<()> {
    // The marker names the package list: a new list makes a new root filesystem.
    let digest = PACKAGES
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b.into()));
    let done = rootfs.join(format!(".warden-vm-ready-{digest:08x}"));
    if done.exists() {
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(rootfs);
    eprintln!(
        "vm-test: debootstrap {SUITE} into {} (once)",
        rootfs.display()
    );
    run(Command::new("debootstrap")
        .args(["--variant=minbase", &format!("--include={PACKAGES}"), SUITE])
        .arg(rootfs)
        .arg(MIRROR)
        .stdout(Stdio::null()))?;
    // The unprivileged user of the rootless tests needs nothing but a uid: they use setpriv.
    std::fs::write(rootfs.join("etc/hostname"), "warden-vm\n")?;
    std::fs::write(&done, "")?;
    Ok(())
}

struct Kernel {
    vmlinuz: PathBuf,
    /// `lib/modules/<version>` inside the root filesystem.
    modules: PathBuf,
}

/// Debian's cloud kernel, unpacked into the root filesystem (its modules live there).
fn ensure_kernel(rootfs: &Path) -> anyhow::Result<Kernel> {
    if let Some(k) = find_kernel(rootfs)? {
        return Ok(k);
    }
    let deps = output(Command::new("apt-cache").args(["depends", KERNEL_PACKAGE]))?;
    let image = deps
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .filter(|p| p.starts_with("linux-image-"))
        .context("apt-cache names no kernel image for linux-image-cloud-amd64")?
        .to_string();
    let tmp = tempfile::tempdir()?;
    eprintln!("vm-test: apt-get download {image} (once)");
    run(Command::new("apt-get")
        .args(["download", "-q", &image])
        .current_dir(tmp.path()))?;
    // Unpacked aside, then moved in: a package's `lib/` would replace the merged-/usr
    // root's `lib -> usr/lib` link with a directory.
    let unpacked = tmp.path().join("unpacked");
    for deb in std::fs::read_dir(tmp.path())? {
        let deb = deb?.path();
        if deb.extension().is_some_and(|e| e == "deb") {
            run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
        }
    }
    for (from, to) in [("boot", "boot"), ("lib/modules", "usr/lib/modules")] {
        let (from, to) = (unpacked.join(from), rootfs.join(to));
        std::fs::create_dir_all(&to)?;
        for e in std::fs::read_dir(&from)? {
            let e = e?;
            std::fs::rename(e.path(), to.join(e.file_name()))?;
        }
    }
    find_kernel(rootfs)?.context("the kernel package held no vmlinuz")
}

fn find_kernel(rootfs: &Path) -> anyhow::Result<Option<Kernel>> {
    let Ok(entries) = std::fs::read_dir(rootfs.join("boot")) else {
        return Ok(None);
    };
    for e in entries {
        let name = e?.file_name().to_string_lossy().into_owned();
        if let Some(version) = name.strip_prefix("vmlinuz-") {
            let modules = rootfs.join("lib/modules").join(version);
            if modules.join("modules.order").exists() {
                return Ok(Some(Kernel {
                    vmlinuz: rootfs.join("boot").join(&name),
                    modules,
                }));
            }
        }
    }
    Ok(None)
}

/// An ext4 image of `dir` (`mke2fs -d`: no mount needed), rebuilt when missing.
fn ensure_image(dir: &Path, img: &Path, size: &str) -> anyhow::Result<PathBuf> {
    if img.exists() {
        return Ok(img.to_path_buf());
    }
    make_image(dir, img, size)
}

fn make_image(dir: &Path, img: &Path, size: &str) -> anyhow::Result<PathBuf> {
    let tmp = img.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    run(Command::new("mke2fs")
        .args(["-q", "-t", "ext4", "-F", "-d"])
        .arg(dir)
        .arg(&tmp)
        .arg(size))?;
    std::fs::rename(&tmp, img)?;
    Ok(img.to_path_buf())
}

/// Test executables the VM runs, by what they test.
struct Tests {
    sandbox_unit: PathBuf,
    sandbox_it: PathBuf,
    warden_it: PathBuf,
    xtask: Option<PathBuf>,
}

/// Builds the debug binaries and the test executables, and finds them.
fn build_tests(root: &Path, bench: bool) -> anyhow::Result<Tests> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(&cargo)
        .args(["build", "-p", "warden", "-p", "warden-sandbox", "--bins"])
        .current_dir(root))?;
    let json = output(
        Command::new(&cargo)
            .args([
                "test",
                "--no-run",
                "--message-format=json",
                "-p",
                "warden",
                "-p",
                "warden-sandbox",
            ])
            .current_dir(root),
    )?;
    let mut found = std::collections::HashMap::new();
    for line in json.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(exe), Some(pkg), Some(name), Some(kind)) = (
            v["executable"].as_str(),
            v["package_id"].as_str(),
            v["target"]["name"].as_str(),
            v["target"]["kind"][0].as_str(),
        ) else {
            continue;
        };
        let pkg = if pkg.contains("warden-sandbox") {
            "sandbox"
        } else {
            "warden"
        };
        found.insert(format!("{pkg}:{kind}:{name}"), PathBuf::from(exe));
    }
    let get = |k: &str| {
        found
            .get(k)
            .cloned()
            .with_context(|| format!("no test executable {k} in {found:?}"))
    };
    let xtask = if bench {
        run(Command::new(&cargo)
            .args(["build", "--release", "-p", "xtask", "-p", "warden"])
            .current_dir(root))?;
        Some(root.join("target/release/xtask"))
    } else {
        None
    };
    Ok(Tests {
        sandbox_unit: get("sandbox:lib:warden_sandbox")?,
        sandbox_it: get("sandbox:test:it")?,
        warden_it: get("warden:test:it")?,
        xtask,
    })
}

/// The second disk: the binaries and tests at their workspace paths, and the run script.
fn make_payload(root: &Path, vm: &Path, tests: &Tests, bench: bool) -> anyhow::Result<PathBuf> {
    let dir = vm.join("payload");
    let _ = std::fs::remove_dir_all(&dir);
    let place = |p: &Path| -> anyhow::Result<()> {
        let rel = p.strip_prefix(root)?;
        let dst = dir.join(rel);
        std::fs::create_dir_all(dst.parent().unwrap())?;
        // Hard links: no copy of hundreds of MiB (same filesystem under target/).
        if std::fs::hard_link(p, &dst).is_err() {
            std::fs::copy(p, &dst)?;
        }
        Ok(())
    };
    for p in [
        root.join("target/debug/warden"),
        root.join("target/debug/warden-probe"),
        tests.sandbox_unit.clone(),
        tests.sandbox_it.clone(),
        tests.warden_it.clone(),
    ] {
        place(&p)?;
    }
    if let Some(x) = &tests.xtask {
        place(x)?;
        place(&root.join("target/release/warden"))?;
    }
    let rel = |p: &Path| p.strip_prefix(root).unwrap().display().to_string();
    let bench_step = if bench {
        format!(
            "export XTASK_NO_BUILD=1\nstep bench-sandbox {} bench sandbox --runs 100\n",
            rel(tests.xtask.as_ref().unwrap())
        )
    } else {
        String::new()
    };
    let script = format!(
        r#"#!/bin/sh
# Generated by `cargo xtask vm-test`: runs inside the VM as its init.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmpfs /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up
hostname warden-vm
echo "vm: kernel $(uname -r), cgroup controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
cd {root}
step() {{
    name=$1; shift
    echo "=== vm-step $name"
    "$@" 2>&1
    echo "=== vm-step $name exit $?"
}}
step doctor target/debug/warden doctor
# One test at a time: each asserts that no process of its jobs' uids is left, and libtest runs
# every test of a binary in one process (one uid range).
step sandbox-unit {sandbox_unit} --test-threads=1 --color=never
step sandbox-it {sandbox_it} --test-threads=1 --color=never
# The gVisor cases need runsc, which the VM's root does not have: they run on the host.
step hostile {warden_it} hostile rootless --skip ::gvisor --test-threads=1 --color=never
{bench_step}echo "=== vm-test-finished"
sync
echo 1 > /proc/sys/kernel/sysrq
echo o > /proc/sysrq-trigger
"#,
        root = root.display(),
        sandbox_unit = rel(&tests.sandbox_unit),
        sandbox_it = rel(&tests.sandbox_it),
        warden_it = rel(&tests.warden_it),
    );
    std::fs::write(dir.join("target/vm-run.sh"), script)?;
    // The deployment boot: the installer, the units and the guide, at their workspace paths.
    for p in [
        "deploy/install.sh",
        "deploy/uninstall.sh",
        "deploy/systemd/warden.service",
        "deploy/systemd/warden-worker.service",
        "deploy/systemd/warden.yaml",
        "deploy/systemd/worker.yaml",
        "docs/deploy.md",
    ] {
        place(&root.join(p))?;
    }
    let at = root.display().to_string();
    std::fs::write(dir.join("target/vm-systemd.sh"), systemd::init_script(&at))?;
    std::fs::write(
        dir.join("target/vm-systemd-check.sh"),
        systemd::check_script(&at),
    )?;
    let size = dir_size(&dir)? / (1 << 20) + 256;
    make_image(&dir, &vm.join("payload.ext4"), &format!("{size}M"))
}

fn dir_size(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        total += if m.is_dir() {
            dir_size(&e.path())?
        } else {
            m.len()
        };
    }
    Ok(total)
}

#[derive(Default)]
struct Summary {
    passed: u64,
    failed: u64,
    finished: bool,
}

/// Folds one console line into the summary: libtest's result lines, and the end marker.
fn tally(line: &str, s: &mut Summary) {
    if line.contains("=== vm-test-finished") {
        s.finished = true;
    }
    if let Some(rest) = line.trim().strip_prefix("test result: ") {
        // `ok. 16 passed; 0 failed; ...` (the first part may carry colour codes).
        let num = |word: &str| {
            rest.split(';')
                .find_map(|part| {
                    let n = part.trim().strip_suffix(word)?.trim_end();
                    n.rsplit(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
                })
                .unwrap_or(0)
        };
        s.passed += num("passed");
        s.failed += num("failed");
    }
    // A step that ended without a libtest result line (doctor, a crash) counts by its exit.
    if let Some(code) = line.strip_prefix("=== vm-step ").and_then(|l| {
        let (name, code) = l.rsplit_once(" exit ")?;
        Some((name.to_string(), code.trim().parse::<i32>().ok()?))
    }) {
        let by_exit = |n: &str| n == "doctor" || n == "bench-sandbox" || n.starts_with("systemd-");
        match code {
            (name, 0) if by_exit(&name) => s.passed += 1,
            (name, _) if by_exit(&name) => s.failed += 1,
            _ => {}
        }
    }
}

fn boot(opts: &Options, disks: &Disks<'_>, root: &Path, what: Boot) -> anyhow::Result<Summary> {
    let append = format!(
        "console=ttyS0 panic=-1 cgroup_no_v1=all systemd.unified_cgroup_hierarchy=1 \
         lsm=landlock,lockdown,yama,apparmor warden.payload={} warden.script={}",
        root.display(),
        what.script()
    );
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", if opts.kvm { "kvm" } else { "tcg,thread=multi" }])
        .args(["-m", &opts.memory_mb.to_string(), "-smp", "2"])
        .args(["-nographic", "-nic", "none"]);
    // The systemd boot reboots the guest once: the same QEMU process, so the root disk's
    // snapshot (what the installer wrote) survives it. A kernel panic (`panic=-1`) would
    // reboot too; the watchdog ends a VM that never finishes.
    if what == Boot::Tests {
        cmd.arg("-no-reboot");
    }
    cmd.arg("-kernel")
        .arg(disks.vmlinuz)
        .arg("-initrd")
        .arg(disks.initrd)
        .args(["-append", &append])
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio,snapshot=on",
            disks.rootfs.display()
        ))
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio,snapshot=on",
            disks.payload.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    eprintln!(
        "vm-test: booting for the {} ({})",
        what.name(),
        if opts.kvm { "kvm" } else { "tcg" }
    );
    let started = Instant::now();
    let mut child = cmd.spawn().context("start qemu-system-x86_64")?;
    let stdout = child.stdout.take().unwrap();
    let pid = child.id();
    let timeout = opts.timeout;
    // The watchdog: the VM never outlives its budget.
    let watchdog = std::thread::spawn(move || {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(500));
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return;
            }
        }
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    });
    let mut summary = Summary::default();
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(stdout).split(b'\n') {
        let line = String::from_utf8_lossy(&line?).replace('\r', "");
        tally(&line, &mut summary);
        writeln!(out, "{line}")?;
    }
    let status = child.wait()?;
    let _ = watchdog.join();
    eprintln!(
        "vm-test: VM ended ({status}) after {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_is_tallied_by_libtest_results_and_step_exits() {
        let mut s = Summary::default();
        for line in [
            "=== vm-step doctor exit 0",
            "test result: ok. 16 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out",
            "test result: \u{1b}[31mFAILED\u{1b}[m. 40 passed; 2 failed; 0 ignored; 0 measured; 70 filtered out; finished in 9s",
            "=== vm-step hostile exit 101",
        ] {
            tally(line, &mut s);
        }
        assert_eq!((s.passed, s.failed, s.finished), (57, 2, false));
        tally("=== vm-test-finished", &mut s);
        assert!(s.finished);
        tally("=== vm-step doctor exit 1", &mut s);
        assert_eq!(s.failed, 3);
    }
}
