//! The job's `/artifacts`: a tmpfs capped in bytes and inodes, so that a job writing without
//! end meets `ENOSPC` from the kernel and the host's disk is never touched beyond the cap. When
//! every process of the job is gone, the init copies the tree out to the host's artifact
//! directory (opened before `pivot_root`), which warden then seals and serves.
//!
//! The copy runs with the init's privileges over a tree the job wrote, so it trusts nothing in
//! it: nothing else runs any more (the job's whole PID namespace is reaped first), every
//! destination is resolved beneath the host directory without following a link
//! (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), files are created exclusively, and only regular
//! files, directories and symlinks (as links, never followed) are kept; setuid/setgid bits
//! never survive.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use serde::{Deserialize, Serialize};

/// Inodes of an artifacts tmpfs: one per 16 KiB of its size, at least 4096 — far below what
/// would run the host low, and enough for a test report tree.
pub fn inode_cap(bytes: u64) -> u64 {
    (bytes / 16_384).max(4096)
}

/// What the copy-out did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CopyOut {
    pub files: u64,
    pub bytes: u64,
    /// Entries that are not regular files, directories or symlinks (fifos, sockets), left out.
    pub skipped: u64,
    /// The tmpfs was full (bytes or inodes) when the job ended: the job met the cap.
    pub full: bool,
    /// Why the copy stopped early, if it did.
    pub error: Option<String>,
}

/// Copies the tree at `src` (the job's `/artifacts`) into the directory `dst`.
pub(crate) fn copy_out(src: &Path, dst: &OwnedFd) -> CopyOut {
    let mut out = CopyOut::default();
    // One statvfs says whether the job met the cap (no block or no inode left) and whether
    // there is anything at all to copy (the root directory is the only inode in use).
    if let Ok(s) = rustix::fs::statvfs(src) {
        out.full = s.f_bavail == 0 || s.f_favail == 0;
        if s.f_files.saturating_sub(s.f_ffree) <= 1 {
            return out;
        }
    }
    if let Err(e) = copy_tree(src, dst, &mut out) {
        out.error = Some(e.to_string());
    }
    out
}

fn copy_tree(src: &Path, dst: &OwnedFd, out: &mut CopyOut) -> std::io::Result<()> {
    // Breadth first, by relative path: no recursion and no descriptor per level.
    let mut queue: VecDeque<PathBuf> = VecDeque::from([PathBuf::new()]);
    while let Some(rel) = queue.pop_front() {
        let dir = if rel.as_os_str().is_empty() {
            dst.as_fd().try_clone_to_owned()?
        } else {
            beneath(dst, &rel, OFlags::DIRECTORY | OFlags::RDONLY)?
        };
        let mut entries: Vec<(OsString, std::fs::FileType)> = Vec::new();
        for entry in std::fs::read_dir(src.join(&rel))? {
            let entry = entry?;
            entries.push((entry.file_name(), entry.file_type()?));
        }
        for (name, kind) in entries {
            let from = src.join(&rel).join(&name);
            if kind.is_dir() {
                use std::os::unix::fs::MetadataExt;
                let mode = std::fs::symlink_metadata(&from)?.mode() & 0o777;
                rustix::fs::mkdirat(&dir, name.as_bytes(), Mode::from_raw_mode(0o700))?;
                // Its own mode, past the umask (a directory just made here: not a link).
                rustix::fs::chmodat(
                    &dir,
                    name.as_bytes(),
                    Mode::from_raw_mode(mode),
                    rustix::fs::AtFlags::empty(),
                )?;
                queue.push_back(rel.join(&name));
            } else if kind.is_symlink() {
                let target = std::fs::read_link(&from)?;
                rustix::fs::symlinkat(target.as_os_str().as_bytes(), &dir, name.as_bytes())?;
            } else if kind.is_file() {
                out.bytes += copy_file(&from, &dir, &name)?;
                out.files += 1;
            } else {
                out.skipped += 1;
            }
        }
    }
    Ok(())
}

/// One regular file, its mode kept without setuid, setgid or sticky bits.
fn copy_file(from: &Path, dir: &OwnedFd, name: &OsString) -> std::io::Result<u64> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(from)?;
    let mode = reader.metadata()?.mode() & 0o777;
    let fd = rustix::fs::openat(
        dir,
        name.as_bytes(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )?;
    // Its own mode, past the umask.
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
    let mut writer = std::fs::File::from(fd);
    std::io::copy(&mut reader, &mut writer)
}

fn beneath(root: &OwnedFd, rel: &Path, flags: OFlags) -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::openat2(
        root,
        rel.as_os_str().as_bytes(),
        flags | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("warden-copyout-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn copies_files_dirs_and_links_without_following_them() {
        use std::os::unix::fs::PermissionsExt;
        let src = tempdir("src");
        let dst = tempdir("dst");
        std::fs::create_dir_all(src.join("report/deep")).unwrap();
        std::fs::set_permissions(src.join("report"), std::fs::Permissions::from_mode(0o2777))
            .unwrap();
        std::fs::write(src.join("report/deep/junit.xml"), b"<xml/>").unwrap();
        std::fs::write(src.join("run.sh"), b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(src.join("run.sh"), std::fs::Permissions::from_mode(0o4755))
            .unwrap();
        // A link that points out of the tree stays a link: its target is never read.
        std::os::unix::fs::symlink("/etc/shadow", src.join("escape")).unwrap();
        let fifo = std::ffi::CString::new(src.join("pipe").as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo with a valid C string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let fd = OwnedFd::from(std::fs::File::open(&dst).unwrap());
        let out = copy_out(&src, &fd);
        assert_eq!(out.error, None);
        assert_eq!((out.files, out.bytes, out.skipped), (2, 16, 1));
        assert_eq!(
            std::fs::read(dst.join("report/deep/junit.xml")).unwrap(),
            b"<xml/>"
        );
        let mode = std::fs::metadata(dst.join("run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755, "setuid dropped, exec kept");
        let mode = std::fs::metadata(dst.join("report"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o7777,
            0o777,
            "setgid dropped, the rest kept past the umask"
        );
        assert_eq!(
            std::fs::read_link(dst.join("escape")).unwrap(),
            Path::new("/etc/shadow")
        );
        assert!(!dst.join("pipe").exists());
        let _ = std::fs::remove_dir_all(&src);
        let _ = std::fs::remove_dir_all(&dst);
    }

    #[test]
    fn a_destination_that_is_not_empty_is_an_error_not_an_overwrite() {
        let src = tempdir("src2");
        let dst = tempdir("dst2");
        std::fs::write(src.join("a"), b"new").unwrap();
        std::fs::write(dst.join("a"), b"old").unwrap();
        let fd = OwnedFd::from(std::fs::File::open(&dst).unwrap());
        let out = copy_out(&src, &fd);
        assert!(out.error.is_some());
        assert_eq!(std::fs::read(dst.join("a")).unwrap(), b"old");
        let _ = std::fs::remove_dir_all(&src);
        let _ = std::fs::remove_dir_all(&dst);
    }

    #[test]
    fn an_empty_tree_copies_nothing() {
        let src = tempdir("src3");
        let dst = tempdir("dst3");
        let fd = OwnedFd::from(std::fs::File::open(&dst).unwrap());
        let out = copy_out(&src, &fd);
        assert_eq!((out.files, out.error), (0, None));
        assert_eq!(std::fs::read_dir(&dst).unwrap().count(), 0);
        let _ = std::fs::remove_dir_all(&src);
        let _ = std::fs::remove_dir_all(&dst);
    }

    #[test]
    fn inode_cap_scales_with_size() {
        assert_eq!(inode_cap(1 << 20), 4096);
        assert_eq!(inode_cap(1 << 30), 65_536);
    }
}
