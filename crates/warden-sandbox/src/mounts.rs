//! The job's filesystem: a fresh tmpfs root holding read-only binds of the host's system
//! directories and the prepared `/etc` (see `etc.rs`), its own `/proc`, a minimal `/dev`, a
//! size-capped `/tmp`, the worktree read-only at `/work` and a size-capped `/artifacts`; then `pivot_root` into it and detach the old root. Runs as root in the job's
//! new mount namespace, through a [`Kernel`] so that the order is testable without root.

use std::fs;
use std::path::{Path, PathBuf};

use crate::overlay::System;
use crate::paths::{ARTIFACTS, HOME, TMP, WORK};
use crate::sys::{Kernel, Step, fail};
use crate::{Bind, SandboxSpec};

/// System directories bound read-only (a symlink on the host, as on merged-/usr systems,
/// becomes the same symlink).
pub(crate) const SYSTEM_DIRS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];

const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom"];

/// Top-level names warden fills itself; a job type's rootfs does not provide them.
pub(crate) const RESERVED_TOP: &[&str] = &["proc", "dev", "tmp", "work", "artifacts", "sys", "run"];

const RO: libc::c_ulong = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;

/// Builds the root at `spec.root` and pivots into it. Afterwards `/` is the job's root.
/// `idmap`: for a writable root, a user namespace mapping 0 to the job's host ids (see
/// `System`).
pub(crate) fn build_root(
    k: &mut impl Kernel,
    spec: &SandboxSpec,
    idmap: Option<std::os::fd::RawFd>,
) -> Step {
    let root = spec.root.as_path();
    make_mounts_private(k)?;
    mount_root_tmpfs(k, root)?;
    let system = System::new(k, root, spec, idmap)?;
    match &spec.rootfs {
        None => bind_host_system(k, root, &spec.etc, &system)?,
        Some(rootfs) => bind_rootfs(k, root, rootfs, &system)?,
    }
    mount_proc(k, root)?;
    make_dev(k, root, spec.tmpfs_bytes)?;
    make_tmp(k, root, spec)?;
    bind_worktree(k, root, spec)?;
    mount_artifacts(k, root, spec)?;
    make_secrets(k, root, spec)?;
    bind_extra(k, root, &spec.binds)?;
    pivot(k, root)?;
    seal_root(k)
}

/// The root a gVisor job's `runsc` serves at `spec.root` (see `gvisor.rs`): the same tree,
/// built on the host side, without the host's `/proc` and device nodes (the sentry has its
/// own), never pivoted into, and sealed read-only but for its tmpfs mounts.
pub(crate) fn build_gvisor_root(k: &mut impl Kernel, spec: &SandboxSpec) -> Step {
    let root = spec.root.as_path();
    mount_root_tmpfs(k, root)?;
    let system = System::new(k, root, spec, None)?;
    match &spec.rootfs {
        None => bind_host_system(k, root, &spec.etc, &system)?,
        Some(rootfs) => bind_rootfs(k, root, rootfs, &system)?,
    }
    k.mkdir(&root.join("proc"))?;
    k.mkdir(&root.join("dev"))?;
    make_shm(k, &root.join("dev"), spec.tmpfs_bytes)?;
    make_tmp(k, root, spec)?;
    bind_worktree(k, root, spec)?;
    mount_artifacts(k, root, spec)?;
    make_secrets(k, root, spec)?;
    bind_extra(k, root, &spec.binds)?;
    k.mount(
        None,
        root,
        None,
        libc::MS_REMOUNT | libc::MS_BIND | RO,
        None,
    )
}

/// Nothing we mount may propagate back to the host.
pub(crate) fn make_mounts_private(k: &mut impl Kernel) -> Step {
    k.mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )
}

/// The root itself: a small tmpfs holding only mount points and generated files.
fn mount_root_tmpfs(k: &mut impl Kernel, root: &Path) -> Step {
    k.mount(
        Some(Path::new("tmpfs")),
        root,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("size=1m,mode=0755"),
    )
}

/// The host's system directories, and the sandbox's own /etc (see `prepare_etc`).
fn bind_host_system(k: &mut impl Kernel, root: &Path, etc: &Path, system: &System) -> Step {
    for dir in SYSTEM_DIRS {
        bind_host(k, root, Path::new(dir), system)?;
    }
    let at = root.join("etc");
    k.mkdir(&at)?;
    system.mount(k, etc, &at, "etc")
}

/// A root filesystem the job type names: each of its top-level entries, read-only, except the
/// places warden provides itself.
fn bind_rootfs(k: &mut impl Kernel, root: &Path, rootfs: &Path, system: &System) -> Step {
    let entries =
        fs::read_dir(rootfs).map_err(|e| fail(format!("rootfs {}", rootfs.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| fail("rootfs entry", e))?;
        let name = entry.file_name();
        if RESERVED_TOP.iter().any(|r| name == *r) {
            continue;
        }
        let src = entry.path();
        let dst = root.join(&name);
        let meta =
            fs::symlink_metadata(&src).map_err(|e| fail(format!("stat {}", src.display()), e))?;
        if meta.file_type().is_symlink() {
            let target =
                fs::read_link(&src).map_err(|e| fail(format!("readlink {}", src.display()), e))?;
            k.symlink(&target, &dst)?;
        } else if meta.is_dir() {
            mount_point(k, &dst, true)?;
            system.mount(k, &src, &dst, &name.to_string_lossy())?;
        } else {
            mount_point(k, &dst, false)?;
            bind_ro(k, &src, &dst)?;
        }
    }
    Ok(())
}

/// /proc of the job's own PID namespace.
fn mount_proc(k: &mut impl Kernel, root: &Path) -> Step {
    let proc_dir = root.join("proc");
    k.mkdir(&proc_dir)?;
    k.mount(
        Some(Path::new("proc")),
        &proc_dir,
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )
}

/// A minimal /dev: a few host device nodes bound in, a private /dev/shm.
fn make_dev(k: &mut impl Kernel, root: &Path, tmpfs_bytes: u64) -> Step {
    let dev = root.join("dev");
    k.mkdir(&dev)?;
    k.mount(
        Some(Path::new("tmpfs")),
        &dev,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("size=64k,mode=0755"),
    )?;
    for d in DEVICES {
        let dst = dev.join(d);
        k.touch(&dst)?;
        k.mount(
            Some(&Path::new("/dev").join(d)),
            &dst,
            None,
            libc::MS_BIND,
            None,
        )?;
    }
    // nosuid and noexec on every device bind at once (one call instead of a remount each).
    k.set_mount_attrs(&dev, libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NOEXEC)?;
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        k.symlink(Path::new(target), &dev.join(name))?;
    }
    make_shm(k, &dev, tmpfs_bytes)
}

/// `/dev/shm`: a size-capped tmpfs of the job's own.
fn make_shm(k: &mut impl Kernel, dev: &Path, tmpfs_bytes: u64) -> Step {
    let shm = dev.join("shm");
    k.mkdir(&shm)?;
    k.mount(
        Some(Path::new("tmpfs")),
        &shm,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some(&tmpfs_options(tmpfs_bytes)),
    )
}

/// Inodes are capped with the size (one per 4 KiB, at least 1024): no inode exhaustion of
/// anything but the job's own tmpfs.
fn tmpfs_options(bytes: u64) -> String {
    format!(
        "size={bytes},nr_inodes={},mode=1777",
        (bytes / 4096).max(1024)
    )
}

/// Scratch: /tmp (with the job's HOME in it, owned by the job), size-capped.
fn make_tmp(k: &mut impl Kernel, root: &Path, spec: &SandboxSpec) -> Step {
    let tmp = inside(root, TMP);
    k.mkdir(&tmp)?;
    k.mount(
        Some(Path::new("tmpfs")),
        &tmp,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(&tmpfs_options(spec.tmpfs_bytes)),
    )?;
    let home = inside(root, HOME);
    k.mkdir(&home)?;
    k.chown(&home, spec.uid, spec.gid)?;
    k.chmod(&home, 0o700)
}

/// The worktree and its git directory, read-only — checked, not assumed: the job's worktree
/// must report read-only before anything else is mounted.
fn bind_worktree(k: &mut impl Kernel, root: &Path, spec: &SandboxSpec) -> Step {
    let work = inside(root, WORK);
    k.mkdir(&work)?;
    bind_ro(k, &spec.work, &work)?;
    if let Some(git) = &spec.git {
        let dir = work.join(".git");
        bind_ro(k, &git.dir, &dir)?;
        bind_ro(k, &git.objects, &dir.join("objects"))?;
    }
    if !k.is_read_only(&work)? {
        return Err(fail(
            format!("{} is not read-only", work.display()),
            std::io::Error::from_raw_os_error(libc::EROFS),
        ));
    }
    Ok(())
}

/// The artifact directory: a tmpfs capped in bytes and inodes (the job meets `ENOSPC`, the host
/// never does), owned by the job, without setuid files or device nodes. The init copies it out
/// when the job is over (see `artifacts.rs`).
fn mount_artifacts(k: &mut impl Kernel, root: &Path, spec: &SandboxSpec) -> Step {
    let at = inside(root, ARTIFACTS);
    k.mkdir(&at)?;
    let options = format!(
        "size={},nr_inodes={},mode=0755",
        spec.artifacts_bytes,
        crate::artifacts::inode_cap(spec.artifacts_bytes)
    );
    k.mount(
        Some(Path::new("tmpfs")),
        &at,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(&options),
    )?;
    k.chown(&at, spec.uid, spec.gid)
}

/// `/run` (empty), and `/run/secrets` when the job is granted secrets: a tmpfs of its own,
/// readable by the job alone, each secret a file of mode 0400; sealed read-only, so the job
/// cannot change what it was given nor leave anything there.
fn make_secrets(k: &mut impl Kernel, root: &Path, spec: &SandboxSpec) -> Step {
    let run = inside(root, "/run");
    k.mkdir(&run)?;
    if spec.secrets.is_empty() {
        return Ok(());
    }
    let dir = run.join("secrets");
    k.mkdir(&dir)?;
    let bytes: usize = spec.secrets.iter().map(|s| s.value.len() + 4096).sum();
    k.mount(
        Some(Path::new("tmpfs")),
        &dir,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some(&format!(
            "size={},nr_inodes={},mode=0700",
            bytes + 4096,
            spec.secrets.len() + 8
        )),
    )?;
    for secret in &spec.secrets {
        let file = dir.join(&secret.name);
        k.write_new(&file, &secret.value, 0o400)?;
        k.chown(&file, spec.uid, spec.gid)?;
    }
    k.chown(&dir, spec.uid, spec.gid)?;
    k.chmod(&dir, 0o500)?;
    k.set_mount_attrs(
        &dir,
        libc::MOUNT_ATTR_RDONLY
            | libc::MOUNT_ATTR_NOSUID
            | libc::MOUNT_ATTR_NODEV
            | libc::MOUNT_ATTR_NOEXEC,
    )
}

/// Extra read-only paths the job type asks for.
fn bind_extra(k: &mut impl Kernel, root: &Path, binds: &[Bind]) -> Step {
    for bind in binds {
        let dst = inside(root, &bind.at.to_string_lossy());
        mount_point(k, &dst, bind.host.is_dir())?;
        bind_ro(k, &bind.host, &dst)?;
    }
    Ok(())
}

/// Into the new root; the old one is detached so nothing of the host stays reachable.
fn pivot(k: &mut impl Kernel, root: &Path) -> Step {
    k.chdir(root)?;
    k.pivot_root_here()?;
    k.detach(Path::new("."))?;
    k.chdir(Path::new("/"))
}

/// The root tmpfs itself becomes read-only now that everything is in place.
fn seal_root(k: &mut impl Kernel) -> Step {
    k.mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REMOUNT | libc::MS_BIND | RO,
        None,
    )
}

pub(crate) fn inside(root: &Path, at: &str) -> PathBuf {
    root.join(at.trim_start_matches('/'))
}

/// An empty directory or file to mount on, with its parents.
fn mount_point(k: &mut impl Kernel, dst: &Path, dir: bool) -> Step {
    if dir {
        return k.mkdir(dst);
    }
    if let Some(parent) = dst.parent() {
        k.mkdir(parent)?;
    }
    k.touch(dst)
}

/// Bind `src` at `dst` read-only (recursively: mount_setattr makes every submount read-only).
pub(crate) fn bind_ro(k: &mut impl Kernel, src: &Path, dst: &Path) -> Step {
    k.mount(Some(src), dst, None, libc::MS_BIND | libc::MS_REC, None)?;
    let attrs = libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
    if k.set_mount_attrs(dst, attrs).is_err() {
        // Kernels before 5.12: remount the top mount read-only.
        k.mount(None, dst, None, libc::MS_BIND | libc::MS_REMOUNT | RO, None)?;
    }
    Ok(())
}

/// Binds a host path (dir or file) read-only at the same place under `root` (a directory
/// through `system`: an overlay for a writable root).
fn bind_host(k: &mut impl Kernel, root: &Path, host: &Path, system: &System) -> Step {
    let Ok(meta) = fs::symlink_metadata(host) else {
        return Ok(());
    };
    let dst = root.join(host.strip_prefix("/").unwrap_or(host));
    if meta.file_type().is_symlink() {
        let target =
            fs::read_link(host).map_err(|e| fail(format!("readlink {}", host.display()), e))?;
        if let Some(parent) = dst.parent() {
            k.mkdir(parent)?;
        }
        return k.symlink(&target, &dst);
    }
    mount_point(k, &dst, meta.is_dir())?;
    if meta.is_dir() {
        let name = host.to_string_lossy().trim_start_matches('/').to_string();
        system.mount(k, host, &dst, &name)
    } else {
        bind_ro(k, host, &dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GitMounts;
    use crate::sys::recording::{Call, Recorder};

    fn spec() -> SandboxSpec {
        SandboxSpec {
            root: "/r".into(),
            work: "/host/tree".into(),
            git: Some(GitMounts {
                dir: "/host/gitdir".into(),
                objects: "/host/objects".into(),
            }),
            artifacts: "/host/artifacts".into(),
            artifacts_bytes: 1 << 20,
            etc: "/host/etc".into(),
            rootfs: None,
            binds: vec![Bind {
                host: "/host/toolchain".into(),
                at: "/opt/toolchain".into(),
            }],
            network: false,
            egress: None,
            inotify: false,
            uid: 65534,
            gid: 65534,
            rootless: false,
            cgroups: crate::CgroupHome::Unavailable { why: "test".into() },
            limits: crate::CgroupLimits::default(),
            tmpfs_bytes: 1 << 20,
            cgroup_name: "t".into(),
            secrets: vec![crate::SecretFile {
                name: "API_KEY".into(),
                value: b"s3cr3t-value".to_vec(),
            }],
            cwd: None,
            job_ids: None,
            writable_root_bytes: None,
            gvisor: None,
        }
    }

    fn position(calls: &[Call], what: impl Fn(&Call) -> bool, name: &str) -> usize {
        calls
            .iter()
            .position(what)
            .unwrap_or_else(|| panic!("{name} never happened: {calls:#?}"))
    }

    fn mounted_at(target: &str) -> impl Fn(&Call) -> bool + '_ {
        move |c| matches!(c, Call::Mount { target: t, .. } if t == Path::new(target))
    }

    #[test]
    fn a_writable_root_overlays_idmapped_system_directories_and_needs_the_id_map() {
        let mut spec = spec();
        spec.writable_root_bytes = Some(8 << 20);
        // Without the id-mapping namespace there is no writable root (fail closed).
        assert!(build_root(&mut Recorder::default(), &spec, None).is_err());
        let mut k = Recorder::default();
        build_root(&mut k, &spec, Some(99)).unwrap();
        let calls = &k.calls;
        // The upper tmpfs, capped, before any overlay.
        let upper = position(calls, mounted_at("/r/.warden-upper"), "upper tmpfs");
        let Call::Mount { data, .. } = &calls[upper] else {
            unreachable!()
        };
        assert!(
            data.as_deref().unwrap().starts_with("size=8388608,"),
            "{data:?}"
        );
        // /usr: an idmapped bind of the host's /usr as the lower layer, then the overlay.
        let idmap = position(
            calls,
            |c| matches!(c, Call::IdmappedBind(src, dst) if src == Path::new("/usr") && dst == Path::new("/r/.warden-upper/l/usr")),
            "idmapped /usr",
        );
        let overlay = position(calls, mounted_at("/r/usr"), "overlay /usr");
        assert!(upper < idmap && idmap < overlay);
        let Call::Mount { fstype, data, .. } = &calls[overlay] else {
            unreachable!()
        };
        assert_eq!(fstype.as_deref(), Some("overlay"));
        assert_eq!(
            data.as_deref(),
            Some(
                "lowerdir=/r/.warden-upper/l/usr,upperdir=/r/.warden-upper/u/usr,workdir=/r/.warden-upper/w/usr"
            )
        );
        // The upper root is the job's: an overlay's root takes its owner from it.
        assert!(calls.contains(&Call::Chown("/r/.warden-upper/u/usr".into(), 65534, 65534)));
        // /work is never an overlay: still bound read-only and checked.
        assert!(!calls.iter().any(|c| matches!(c, Call::Mount { target, fstype: Some(f), .. } if target == Path::new("/r/work") && f == "overlay")));
        assert!(calls.contains(&Call::CheckReadOnly("/r/work".into())));
    }

    #[test]
    fn a_gvisor_root_is_the_same_tree_without_host_proc_or_devices_and_is_never_pivoted_into() {
        let mut k = Recorder::default();
        build_gvisor_root(&mut k, &spec()).unwrap();
        let calls = &k.calls;
        let work = position(calls, mounted_at("/r/work"), "worktree bind");
        let checked = position(
            calls,
            |c| *c == Call::CheckReadOnly("/r/work".into()),
            "read-only check",
        );
        let artifacts = position(calls, mounted_at("/r/artifacts"), "artifacts tmpfs");
        assert!(work < checked && checked < artifacts);
        for at in ["/r/tmp", "/r/dev/shm", "/r/run/secrets", "/r/opt/toolchain"] {
            position(calls, mounted_at(at), at);
        }
        // No host /proc, no host device node, no pivot: the sentry has its own, runsc serves
        // the tree where it is.
        assert!(!calls.iter().any(mounted_at("/r/proc")));
        assert!(!calls.iter().any(mounted_at("/r/dev/null")));
        assert!(!calls.contains(&Call::PivotRoot));
        // Sealed read-only last: only its own tmpfs mounts stay writable.
        assert!(
            matches!(calls.last(), Some(Call::Mount { target, flags, .. })
                if target == Path::new("/r") && flags & libc::MS_RDONLY != 0),
            "{:?}",
            calls.last()
        );
    }

    #[test]
    fn setup_steps_run_in_their_safe_order() {
        let mut k = Recorder::default();
        build_root(&mut k, &spec(), None).unwrap();
        let calls = &k.calls;
        // Private propagation comes before any mount, the sealed root after everything.
        assert!(
            matches!(&calls[0], Call::Mount { target, flags, .. }
                if target == Path::new("/") && flags & libc::MS_PRIVATE != 0),
            "{:?}",
            calls[0]
        );
        assert!(
            matches!(calls.last(), Some(Call::Mount { target, flags, .. })
                if target == Path::new("/") && flags & libc::MS_RDONLY != 0),
            "{:?}",
            calls.last()
        );
        let root = position(calls, mounted_at("/r"), "root tmpfs");
        let work = position(calls, mounted_at("/r/work"), "worktree bind");
        let git = position(calls, mounted_at("/r/work/.git"), "git dir bind");
        let objects = position(calls, mounted_at("/r/work/.git/objects"), "objects bind");
        let checked = position(
            calls,
            |c| *c == Call::CheckReadOnly("/r/work".into()),
            "read-only check",
        );
        let artifacts = position(calls, mounted_at("/r/artifacts"), "artifacts tmpfs");
        let extra = position(calls, mounted_at("/r/opt/toolchain"), "extra bind");
        let pivot = position(calls, |c| *c == Call::PivotRoot, "pivot_root");
        let detach = position(calls, |c| matches!(c, Call::Detach(_)), "detach");
        assert!(root < work && work < git && git < objects);
        // The worktree is proven read-only with its git mounts in place, before the job's
        // only writable bind exists.
        assert!(objects < checked && checked < artifacts);
        assert!(artifacts < extra && extra < pivot && pivot < detach);
        // The artifacts are a capped tmpfs of the job's own.
        assert!(k.calls.iter().any(|c| matches!(c, Call::Mount { target, fstype: Some(t), data: Some(d), .. }
            if target == Path::new("/r/artifacts") && t == "tmpfs" && d.contains("size=1048576") && d.contains("nr_inodes=4096"))));
        assert!(calls.contains(&Call::Chown("/r/artifacts".into(), 65534, 65534)));
        // The job's HOME is its own, private.
        let home = Path::new("/r/tmp/home");
        assert!(calls.contains(&Call::Chown(home.into(), 65534, 65534)));
        assert!(calls.contains(&Call::Chmod(home.into(), 0o700)));
        // Secrets: files of the job's alone on a tmpfs of their own, sealed read-only before
        // the job exists.
        let secrets = position(calls, mounted_at("/r/run/secrets"), "secrets tmpfs");
        let file = Path::new("/r/run/secrets/API_KEY");
        let written = position(
            calls,
            |c| *c == Call::WriteNew(file.into(), 12, 0o400),
            "secret file",
        );
        let sealed = position(
            calls,
            |c| {
                matches!(c, Call::SetAttrs(p, a) if p == Path::new("/r/run/secrets")
                && a & libc::MOUNT_ATTR_RDONLY != 0 && a & libc::MOUNT_ATTR_NOEXEC != 0)
            },
            "secrets sealed",
        );
        assert!(secrets < written && written < sealed && sealed < pivot);
        assert!(calls.contains(&Call::Chown(file.into(), 65534, 65534)));
        assert!(calls.contains(&Call::Chmod("/r/run/secrets".into(), 0o500)));
    }

    #[test]
    fn every_bind_is_made_read_only() {
        let mut k = Recorder::default();
        build_root(&mut k, &spec(), None).unwrap();
        let ro = libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
        for (i, call) in k.calls.iter().enumerate() {
            let Call::Mount {
                target,
                flags,
                src: Some(_),
                ..
            } = call
            else {
                continue;
            };
            if flags & libc::MS_BIND == 0 || target.starts_with("/r/dev") {
                continue;
            }
            let sealed = k.calls.get(i + 1) == Some(&Call::SetAttrs(target.clone(), ro));
            assert!(sealed, "bind at {} is writable", target.display());
        }
    }
}
