//! The job's filesystem: a fresh tmpfs root holding read-only binds of the host's system
//! directories and a handful of `/etc` files, its own `/proc`, a minimal `/dev`, a size-capped
//! `/tmp`, the worktree read-only at `/work` and the artifact directory at `/artifacts`; then
//! `pivot_root` into it and detach the old root. Runs as root in the job's new mount namespace.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use crate::SandboxSpec;
use crate::sys::{Step, check, cstr, fail, mount};

/// Where things appear inside the sandbox.
pub const WORK: &str = "/work";
pub const ARTIFACTS: &str = "/artifacts";

/// System directories bound read-only (a symlink on the host, as on merged-/usr systems,
/// becomes the same symlink).
const SYSTEM_DIRS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];

/// `/etc` entries programs need to start, find libraries and verify TLS. Deliberately absent:
/// shadow, gshadow, ssh, sudoers, machine-id, `ssl/private` and anything with host credentials.
const ETC_ENTRIES: &[&str] = &[
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "nsswitch.conf",
    "localtime",
    "ssl/certs",
    "ssl/openssl.cnf",
    "ca-certificates.conf",
    "os-release",
    "mime.types",
    "protocols",
    "services",
    "debian_version",
    "resolv.conf",
];

/// Largest tree copied for one `/etc` entry (files), so a surprising host cannot stall start-up.
const ETC_MAX_FILES: usize = 10_000;

/// Builds the sandbox's `/etc` in `dir`: copies of the host entries above (files copied,
/// symlinks kept as symlinks, directories copied), and identity files of its own (root and the
/// job user only, hostname `warden`). Done once when warden starts, then bound read-only into
/// every job: one mount instead of one per file. The new tree replaces the old atomically.
pub fn prepare_etc(dir: &Path) -> std::io::Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent)?;
    let tmp = parent.join(format!(".etc-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    let mut budget = ETC_MAX_FILES;
    for entry in ETC_ENTRIES {
        copy_tree(
            &Path::new("/etc").join(entry),
            &tmp.join(entry),
            &mut budget,
        )?;
    }
    let uid = crate::JOB_UID;
    fs::write(
        tmp.join("passwd"),
        format!(
            "root:x:0:0:root:/root:/usr/sbin/nologin\nwarden:x:{uid}:{uid}:warden job:/tmp/home:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        ),
    )?;
    fs::write(
        tmp.join("group"),
        format!("root:x:0:\nwarden:x:{uid}:\nnogroup:x:65534:\n"),
    )?;
    let host = crate::sandbox::HOSTNAME;
    fs::write(tmp.join("hostname"), format!("{host}\n"))?;
    fs::write(
        tmp.join("hosts"),
        format!("127.0.0.1 localhost {host}\n::1 localhost\n"),
    )?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
    let _ = fs::remove_dir_all(dir);
    fs::rename(&tmp, dir)
}

fn copy_tree(src: &Path, dst: &Path, budget: &mut usize) -> std::io::Result<()> {
    let Ok(meta) = fs::symlink_metadata(src) else {
        return Ok(());
    };
    if *budget == 0 {
        return Ok(());
    }
    *budget -= 1;
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent)?;
    }
    let ft = meta.file_type();
    if ft.is_symlink() {
        symlink(fs::read_link(src)?, dst)?;
    } else if ft.is_dir() {
        fs::create_dir_all(dst)?;
        for e in fs::read_dir(src)?.flatten() {
            copy_tree(&e.path(), &dst.join(e.file_name()), budget)?;
        }
    } else if ft.is_file() {
        // Only world-readable files: nothing the host keeps private.
        if meta.permissions().mode() & 0o004 != 0 {
            fs::copy(src, dst)?;
            fs::set_permissions(dst, fs::Permissions::from_mode(0o644))?;
        }
    }
    Ok(())
}

const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom"];

/// Top-level names warden fills itself; a job type's rootfs does not provide them.
const RESERVED_TOP: &[&str] = &["proc", "dev", "tmp", "work", "artifacts", "sys"];

const RO: libc::c_ulong = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;

fn mkdir(p: &Path) -> Step {
    fs::create_dir_all(p).map_err(|e| fail(format!("mkdir {}", p.display()), e))
}

fn touch(p: &Path) -> Step {
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(p)
        .map(drop)
        .map_err(|e| fail(format!("create {}", p.display()), e))
}

fn inside(root: &Path, at: &str) -> PathBuf {
    root.join(at.trim_start_matches('/'))
}

/// Sets mount attributes on `dst` and every mount below it (mount_setattr, Linux ≥ 5.12).
fn set_attr_recursive(dst: &Path, attr_set: u64) -> Step {
    let attr = libc::mount_attr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let dst_c = cstr(dst)?;
    // SAFETY: dst_c is a valid C string and attr a valid mount_attr of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            dst_c.as_ptr(),
            libc::AT_RECURSIVE,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    check(&format!("mount_setattr {}", dst.display()), rc as i32)
}

/// Bind `src` at `dst` read-only (recursively: mount_setattr makes every submount read-only).
fn bind_ro(src: &Path, dst: &Path) -> Step {
    mount(Some(src), dst, None, libc::MS_BIND | libc::MS_REC, None)?;
    let attrs = libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
    if set_attr_recursive(dst, attrs).is_err() {
        // Kernels before 5.12: remount the top mount read-only.
        mount(None, dst, None, libc::MS_BIND | libc::MS_REMOUNT | RO, None)?;
    }
    Ok(())
}

fn require_read_only(dst: &Path) -> Step {
    let c = cstr(dst)?;
    // SAFETY: statvfs writes into a zeroed struct of the right type; c is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    check(&format!("statvfs {}", dst.display()), unsafe {
        libc::statvfs(c.as_ptr(), &mut st)
    })?;
    if st.f_flag & libc::ST_RDONLY == 0 {
        return Err(fail(
            format!("{} is not read-only", dst.display()),
            std::io::Error::from_raw_os_error(libc::EROFS),
        ));
    }
    Ok(())
}

/// Binds a host path (dir or file) read-only at the same place under `root`.
fn bind_host(root: &Path, host: &Path) -> Step {
    let Ok(meta) = fs::symlink_metadata(host) else {
        return Ok(());
    };
    let dst = root.join(host.strip_prefix("/").unwrap_or(host));
    if meta.file_type().is_symlink() {
        let target =
            fs::read_link(host).map_err(|e| fail(format!("readlink {}", host.display()), e))?;
        if let Some(parent) = dst.parent() {
            mkdir(parent)?;
        }
        return symlink(&target, &dst).map_err(|e| fail(format!("symlink {}", dst.display()), e));
    }
    if meta.is_dir() {
        mkdir(&dst)?;
    } else {
        if let Some(parent) = dst.parent() {
            mkdir(parent)?;
        }
        touch(&dst)?;
    }
    bind_ro(host, &dst)
}

/// Builds the root at `spec.root` and pivots into it. Afterwards `/` is the job's root.
pub fn build_root(spec: &SandboxSpec) -> Step {
    let root = spec.root.as_path();
    // Nothing we mount may propagate back to the host.
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )?;
    // The root itself: a small tmpfs holding only mount points and generated files.
    mount(
        Some(Path::new("tmpfs")),
        root,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("size=1m,mode=0755"),
    )?;

    match &spec.rootfs {
        // The host's system directories, and the sandbox's own /etc (see `prepare_etc`).
        None => {
            for dir in SYSTEM_DIRS {
                bind_host(root, Path::new(dir))?;
            }
            let etc = root.join("etc");
            mkdir(&etc)?;
            bind_ro(&spec.etc, &etc)?;
        }
        // A root filesystem the job type names: each of its top-level entries, read-only,
        // except the places warden provides itself.
        Some(rootfs) => {
            let entries = fs::read_dir(rootfs)
                .map_err(|e| fail(format!("rootfs {}", rootfs.display()), e))?;
            for entry in entries {
                let entry = entry.map_err(|e| fail("rootfs entry", e))?;
                let name = entry.file_name();
                if RESERVED_TOP.iter().any(|r| name == *r) {
                    continue;
                }
                let src = entry.path();
                let dst = root.join(&name);
                let meta = fs::symlink_metadata(&src)
                    .map_err(|e| fail(format!("stat {}", src.display()), e))?;
                if meta.file_type().is_symlink() {
                    let target = fs::read_link(&src)
                        .map_err(|e| fail(format!("readlink {}", src.display()), e))?;
                    symlink(&target, &dst)
                        .map_err(|e| fail(format!("symlink {}", dst.display()), e))?;
                } else {
                    if meta.is_dir() {
                        mkdir(&dst)?
                    } else {
                        touch(&dst)?
                    }
                    bind_ro(&src, &dst)?;
                }
            }
        }
    }

    // /proc of the job's own PID namespace.
    let proc_dir = root.join("proc");
    mkdir(&proc_dir)?;
    mount(
        Some(Path::new("proc")),
        &proc_dir,
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )?;

    // A minimal /dev: a few host device nodes bound in, a private /dev/shm.
    let dev = root.join("dev");
    mkdir(&dev)?;
    mount(
        Some(Path::new("tmpfs")),
        &dev,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("size=64k,mode=0755"),
    )?;
    for d in DEVICES {
        let dst = dev.join(d);
        touch(&dst)?;
        mount(
            Some(&Path::new("/dev").join(d)),
            &dst,
            None,
            libc::MS_BIND,
            None,
        )?;
    }
    // nosuid and noexec on every device bind at once (one call instead of a remount each).
    set_attr_recursive(&dev, libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NOEXEC)?;
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(target, dev.join(name)).map_err(|e| fail(format!("symlink /dev/{name}"), e))?;
    }
    // Inodes are capped with the size (one per 4 KiB, at least 1024): no inode exhaustion of
    // anything but the job's own tmpfs.
    let tmpfs_opts = format!(
        "size={},nr_inodes={},mode=1777",
        spec.tmpfs_bytes,
        (spec.tmpfs_bytes / 4096).max(1024)
    );
    let shm = dev.join("shm");
    mkdir(&shm)?;
    mount(
        Some(Path::new("tmpfs")),
        &shm,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some(&tmpfs_opts),
    )?;

    // Scratch: /tmp (with the job's HOME in it), size-capped.
    let tmp = root.join("tmp");
    mkdir(&tmp)?;
    mount(
        Some(Path::new("tmpfs")),
        &tmp,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(&tmpfs_opts),
    )?;
    let home = tmp.join("home");
    mkdir(&home)?;
    let home_c = cstr(&home)?;
    // SAFETY: home_c is a valid C string.
    check("chown /tmp/home", unsafe {
        libc::chown(home_c.as_ptr(), spec.uid, spec.gid)
    })?;
    fs::set_permissions(&home, fs::Permissions::from_mode(0o700))
        .map_err(|e| fail("chmod /tmp/home", e))?;

    // The worktree, read-only, and the artifact directory, writable.
    let work = inside(root, WORK);
    mkdir(&work)?;
    bind_ro(&spec.work, &work)?;
    if let Some(git) = &spec.git {
        let dir = work.join(".git");
        bind_ro(&git.dir, &dir)?;
        bind_ro(&git.objects, &dir.join("objects"))?;
    }
    // The read-only guarantee is checked, not assumed: the job's worktree must report read-only.
    require_read_only(&work)?;
    let artifacts = inside(root, ARTIFACTS);
    mkdir(&artifacts)?;
    mount(Some(&spec.artifacts), &artifacts, None, libc::MS_BIND, None)?;
    mount(
        None,
        &artifacts,
        None,
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV,
        None,
    )?;
    for bind in &spec.binds {
        let dst = inside(root, &bind.at.to_string_lossy());
        if bind.host.is_dir() {
            mkdir(&dst)?;
        } else {
            if let Some(p) = dst.parent() {
                mkdir(p)?;
            }
            touch(&dst)?;
        }
        bind_ro(&bind.host, &dst)?;
    }

    // Into the new root; the old one is detached so nothing of the host stays reachable.
    std::env::set_current_dir(root).map_err(|e| fail("chdir new root", e))?;
    let dot = cstr(Path::new("."))?;
    // SAFETY: pivot_root with "." for both arguments stacks the old root under the new one.
    let rc = unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) };
    check("pivot_root", rc as i32)?;
    // SAFETY: detaches the old root, now mounted at "." on top of the new one.
    check("detach old root", unsafe {
        libc::umount2(dot.as_ptr(), libc::MNT_DETACH)
    })?;
    std::env::set_current_dir("/").map_err(|e| fail("chdir /", e))?;
    // The root tmpfs itself becomes read-only now that everything is in place.
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REMOUNT | libc::MS_BIND | RO,
        None,
    )?;
    Ok(())
}
