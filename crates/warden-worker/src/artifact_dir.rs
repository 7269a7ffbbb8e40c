//! A job's artifact directory, as the privileged side touches it: a tree the job wrote, so
//! nothing in it is trusted. Every access here goes by descriptor from the directory itself —
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` to open, `statat(AT_SYMLINK_NOFOLLOW)` to
//! look — so a link, or a directory swapped for one while we walk, never leads outside it.
//! Used by the service (listing, downloads), the gRPC upload (creating) and the worker (the
//! record's `outputs`, the remote upload).

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

/// Most entries a listing returns.
pub const MAX_ENTRIES: usize = 10_000;

/// Names warden writes itself while a record is being put in place.
const RECORD_TEMP_PREFIX: &str = ".artifact.json.";

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("artifact path {path:?} {why}")]
    InvalidPath { path: String, why: &'static str },
    #[error("no artifact {0:?}")]
    NotFound(PathBuf),
    #[error("artifact {0:?} is or passes through a symbolic link; links are never followed")]
    Link(PathBuf),
    #[error("artifact {path:?} is not a regular file ({kind}); only files can be downloaded")]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error("artifact {path:?}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the artifact directory.
    pub path: PathBuf,
    pub kind: EntryKind,
    /// Bytes, for regular files; 0 otherwise.
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Other,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Dir => "dir",
            EntryKind::Symlink => "symlink",
            EntryKind::Other => "other",
        }
    }

    fn of(kind: FileType) -> EntryKind {
        match kind {
            FileType::RegularFile => EntryKind::File,
            FileType::Directory => EntryKind::Dir,
            FileType::Symlink => EntryKind::Symlink,
            _ => EntryKind::Other,
        }
    }
}

/// A relative artifact path a caller sent: plain components only, no `..`, no NUL.
pub fn validate_path(rel: &str) -> Result<PathBuf, ArtifactError> {
    validate_path_bytes(rel.as_bytes())
}

/// [`validate_path`] for a path given as exact bytes (names need not be UTF-8).
pub fn validate_path_bytes(rel: &[u8]) -> Result<PathBuf, ArtifactError> {
    let bad = |why| ArtifactError::InvalidPath {
        path: String::from_utf8_lossy(rel).chars().take(200).collect(),
        why,
    };
    if rel.is_empty() {
        return Err(bad("is empty"));
    }
    if rel.contains(&0) {
        return Err(bad("contains a NUL byte"));
    }
    for c in Path::new(OsStr::from_bytes(rel)).components() {
        match c {
            Component::Normal(_) => {}
            Component::ParentDir => return Err(bad("may not contain '..'")),
            Component::RootDir => return Err(bad("must be relative")),
            _ => return Err(bad("is not a plain relative path")),
        }
    }
    Ok(PathBuf::from(OsStr::from_bytes(rel)))
}

const BENEATH: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

fn io_err(path: &Path) -> impl FnOnce(rustix::io::Errno) -> ArtifactError + '_ {
    move |e| match e {
        rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR => {
            ArtifactError::NotFound(path.to_path_buf())
        }
        rustix::io::Errno::LOOP | rustix::io::Errno::XDEV => {
            ArtifactError::Link(path.to_path_buf())
        }
        // A unix socket the job left: it exists, and is not a file.
        rustix::io::Errno::NXIO => ArtifactError::NotAFile {
            path: path.to_path_buf(),
            kind: "other",
        },
        e => ArtifactError::Io {
            path: path.to_path_buf(),
            source: e.into(),
        },
    }
}

fn open_root(root: &Path) -> Result<OwnedFd, ArtifactError> {
    rustix::fs::open(
        root,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_err(Path::new("")))
}

/// Opens one artifact for reading: a regular file strictly beneath `root`, reached without
/// following any link. Returns it with its size.
pub fn open_beneath(root: &Path, rel: &Path) -> Result<(std::fs::File, u64), ArtifactError> {
    let dir = open_root(root).map_err(|_| ArtifactError::NotFound(rel.to_path_buf()))?;
    // NONBLOCK: opening a FIFO the job planted must not hang the server.
    let fd = rustix::fs::openat2(
        &dir,
        rel,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
        BENEATH,
    )
    .map_err(io_err(rel))?;
    let stat = rustix::fs::fstat(&fd).map_err(io_err(rel))?;
    let kind = FileType::from_raw_mode(stat.st_mode);
    if kind != FileType::RegularFile {
        return Err(ArtifactError::NotAFile {
            path: rel.to_path_buf(),
            kind: EntryKind::of(kind).as_str(),
        });
    }
    Ok((std::fs::File::from(fd), stat.st_size as u64))
}

/// Creates (truncating) `rel` beneath `root` with its parent directories, never following a
/// link on the way.
pub fn create_beneath(root: &Path, rel: &Path) -> Result<std::fs::File, ArtifactError> {
    std::fs::create_dir_all(root).map_err(|source| ArtifactError::Io {
        path: PathBuf::new(),
        source,
    })?;
    let mut dir = open_root(root)?;
    let components: Vec<&OsStr> = rel.iter().collect();
    let Some((name, parents)) = components.split_last() else {
        return Err(ArtifactError::InvalidPath {
            path: String::new(),
            why: "is empty",
        });
    };
    for part in parents {
        match rustix::fs::mkdirat(&dir, *part, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(io_err(rel)(e)),
        }
        dir = rustix::fs::openat2(
            &dir,
            *part,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            BENEATH,
        )
        .map_err(io_err(rel))?;
    }
    let fd = rustix::fs::openat2(
        &dir,
        *name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
        BENEATH,
    )
    .map_err(io_err(rel))?;
    Ok(std::fs::File::from(fd))
}

/// What a listing found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// Sorted by path.
    pub entries: Vec<Entry>,
    /// Stopped at [`MAX_ENTRIES`].
    pub truncated: bool,
}

/// Lists everything beneath `root` (without `root` itself), by descriptor: each directory is
/// opened from its parent's descriptor with `O_NOFOLLOW` and `RESOLVE_BENEATH`, so a directory
/// the job swaps for a link while we walk is reported as what it is, never entered. A root that
/// does not exist lists empty.
pub fn list(root: &Path) -> Listing {
    let mut out = Listing::default();
    let Ok(dir) = open_root(root) else {
        return out;
    };
    let mut stack: Vec<(OwnedFd, PathBuf)> = vec![(dir, PathBuf::new())];
    while let Some((dir, prefix)) = stack.pop() {
        for (name, stat) in read_entries(&dir) {
            let path = prefix.join(&name);
            let kind = FileType::from_raw_mode(stat.st_mode);
            if prefix.as_os_str().is_empty()
                && name.as_bytes().starts_with(RECORD_TEMP_PREFIX.as_bytes())
            {
                continue;
            }
            if kind == FileType::Directory
                && let Some(sub) = open_subdir(&dir, &name)
            {
                stack.push((sub, path.clone()));
            }
            out.entries.push(Entry {
                size: if kind == FileType::RegularFile {
                    stat.st_size as u64
                } else {
                    0
                },
                kind: EntryKind::of(kind),
                path,
            });
            if out.entries.len() >= MAX_ENTRIES {
                out.truncated = true;
                stack.clear();
                break;
            }
        }
    }
    out.entries.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// Bytes of every regular file beneath `root`, by descriptor and never following a link
/// (what retention counts a job's artifacts as); 0 for a root that does not exist. Unlike
/// [`list`], not capped: a sealed directory is walked once, when its job ends.
pub fn total_bytes(root: &Path) -> u64 {
    let Ok(dir) = open_root(root) else {
        return 0;
    };
    let mut total = 0u64;
    let mut stack = vec![dir];
    while let Some(dir) = stack.pop() {
        for (name, stat) in read_entries(&dir) {
            match FileType::from_raw_mode(stat.st_mode) {
                FileType::RegularFile => total = total.saturating_add(stat.st_size as u64),
                FileType::Directory => stack.extend(open_subdir(&dir, &name)),
                _ => {}
            }
        }
    }
    total
}

/// Takes a finished job's artifact directory back from the job: every entry owned by `uid:gid`
/// (warden), setuid, setgid and world-write bits removed, so that nothing the job left can be
/// run by another user of the host to become the job's uid, or changed by a later job of that
/// uid. By descriptor, never following a link. Call only once the job's processes are gone.
/// Returns how many entries it changed.
pub fn seal(root: &Path, uid: u32, gid: u32) -> std::io::Result<u64> {
    use rustix::fs::{Gid, Uid};
    let owner = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
    let mut changed = 0;
    let Ok(dir) = open_root(root) else {
        return Ok(0);
    };
    rustix::fs::fchown(&dir, owner.0, owner.1)?;
    rustix::fs::fchmod(&dir, Mode::from_raw_mode(0o755))?;
    let mut stack = vec![dir];
    while let Some(dir) = stack.pop() {
        for (name, stat) in read_entries(&dir) {
            let kind = FileType::from_raw_mode(stat.st_mode);
            rustix::fs::chownat(&dir, &name, owner.0, owner.1, AtFlags::SYMLINK_NOFOLLOW)?;
            if kind == FileType::Symlink {
                continue;
            }
            let mode = stat.st_mode & 0o7777;
            let safe = mode & !(libc_bits::S_ISUID | libc_bits::S_ISGID | libc_bits::S_IWOTH);
            if safe != mode || stat.st_uid != uid {
                changed += 1;
            }
            // Not a link (statat said so, and the job that could swap it is gone): the mode of
            // the entry itself.
            rustix::fs::chmodat(&dir, &name, Mode::from_raw_mode(safe), AtFlags::empty())?;
            if kind == FileType::Directory
                && let Some(sub) = open_subdir(&dir, &name)
            {
                stack.push(sub);
            }
        }
    }
    Ok(changed)
}

/// Mode bits (as in `<sys/stat.h>`).
mod libc_bits {
    pub const S_ISUID: u32 = 0o4000;
    pub const S_ISGID: u32 = 0o2000;
    pub const S_IWOTH: u32 = 0o0002;
}

/// The regular files beneath `root` (relative paths, sorted), as the job left them.
pub fn regular_files(root: &Path) -> Vec<PathBuf> {
    list(root)
        .entries
        .into_iter()
        .filter(|e| e.kind == EntryKind::File)
        .map(|e| e.path)
        .collect()
}

/// A directory entry of `dir` as a directory of its own, opened from `dir`'s descriptor:
/// `None` when it is not a directory (any more) or would take a link to reach.
fn open_subdir(dir: &OwnedFd, name: &OsStr) -> Option<OwnedFd> {
    rustix::fs::openat2(
        dir,
        name,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        BENEATH,
    )
    .ok()
}

/// The names in `dir` (without `.` and `..`) with what `statat` says of each, not following
/// links. An entry that vanished meanwhile is skipped.
fn read_entries(dir: &OwnedFd) -> Vec<(std::ffi::OsString, rustix::fs::Stat)> {
    let Ok(dup) = rustix::io::fcntl_dupfd_cloexec(dir, 0) else {
        return Vec::new();
    };
    let Ok(reader) = rustix::fs::Dir::new(dup) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in reader.flatten() {
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let name = OsStr::from_bytes(name).to_os_string();
        if let Ok(stat) = rustix::fs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
            out.push((name, stat));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/report.txt"), "hello").unwrap();
        std::fs::write(root.join("top"), "x").unwrap();
        std::fs::write(root.join(".artifact.json.0123"), "partial").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("etc-link")).unwrap();
        dir
    }

    #[test]
    fn listing_reports_links_as_links_and_never_enters_them() {
        let dir = tree();
        let listing = list(dir.path());
        let got: Vec<(String, &str, u64)> = listing
            .entries
            .iter()
            .map(|e| (e.path.display().to_string(), e.kind.as_str(), e.size))
            .collect();
        assert_eq!(
            got,
            [
                ("a".to_string(), "dir", 0),
                ("a/b".to_string(), "dir", 0),
                ("a/b/report.txt".to_string(), "file", 5),
                ("etc-link".to_string(), "symlink", 0),
                ("top".to_string(), "file", 1),
            ]
        );
        assert!(!listing.truncated);
        assert_eq!(
            regular_files(dir.path()),
            [PathBuf::from("a/b/report.txt"), PathBuf::from("top")]
        );
    }

    #[test]
    fn opening_refuses_links_and_non_files() {
        let dir = tree();
        let (_, size) = open_beneath(dir.path(), Path::new("a/b/report.txt")).unwrap();
        assert_eq!(size, 5);
        assert!(matches!(
            open_beneath(dir.path(), Path::new("etc-link/passwd")),
            Err(ArtifactError::Link(_))
        ));
        assert!(matches!(
            open_beneath(dir.path(), Path::new("a")),
            Err(ArtifactError::NotAFile { kind: "dir", .. })
        ));
        assert!(matches!(
            open_beneath(dir.path(), Path::new("missing")),
            Err(ArtifactError::NotFound(_))
        ));
    }

    #[test]
    fn creating_never_writes_through_a_link() {
        let dir = tree();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).unwrap();
        assert!(create_beneath(dir.path(), Path::new("out/x")).is_err());
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
        use std::io::Write;
        let mut f = create_beneath(dir.path(), Path::new("new/dir/file")).unwrap();
        f.write_all(b"ok").unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("new/dir/file")).unwrap(),
            b"ok"
        );
    }

    #[test]
    fn sealing_strips_setuid_and_world_write_and_takes_ownership() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tree();
        let root = dir.path();
        let set = |p: &str, mode: u32| {
            std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(mode)).unwrap()
        };
        set("top", 0o6755);
        set("a", 0o2777);
        set("a/b/report.txt", 0o4777);
        std::os::unix::fs::chown(root.join("top"), Some(12345), Some(12345)).unwrap();
        let (uid, gid) = (rustix::process::geteuid(), rustix::process::getegid());
        let changed = seal(root, uid.as_raw(), gid.as_raw()).unwrap();
        assert_eq!(changed, 3);
        let mode = |p: &str| std::fs::symlink_metadata(root.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("top"), 0o755);
        assert_eq!(mode("a"), 0o775);
        assert_eq!(mode("a/b/report.txt"), 0o775);
        assert_eq!(
            std::fs::metadata(root.join("top")).unwrap().uid(),
            uid.as_raw()
        );
        // The link itself was not followed: /etc keeps its mode.
        assert_eq!(std::fs::metadata("/etc").unwrap().mode() & 0o7777, 0o755);
    }

    #[test]
    fn artifact_paths_are_plain_relative() {
        for bad in ["", "../x", "a/../../b", "/etc/passwd", "a\0b", "./."] {
            assert!(validate_path(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_path("out/report.txt").is_ok());
    }
}
