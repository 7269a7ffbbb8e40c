//! The sandbox's `/etc`: a few host entries copied and identity files of its own, made once
//! when warden starts and bound read-only into every job.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use crate::paths::{HOME, HOSTNAME, JOB_UID};

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
    let uid = JOB_UID;
    fs::write(
        tmp.join("passwd"),
        format!(
            "root:x:0:0:root:/root:/usr/sbin/nologin\nwarden:x:{uid}:{uid}:warden job:{HOME}:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        ),
    )?;
    fs::write(
        tmp.join("group"),
        format!("root:x:0:\nwarden:x:{uid}:\nnogroup:x:65534:\n"),
    )?;
    let host = HOSTNAME;
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
