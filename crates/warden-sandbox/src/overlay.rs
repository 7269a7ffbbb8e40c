//! A writable root: its overlays (mounted by `mounts::build_root`) and what the job changed in
//! it, read by the init from the overlays' upper directories once every process of the job is
//! gone.
//!
//! In an upper directory a regular file, link or fifo is something the job wrote (new, or
//! copied up and changed), a character device 0:0 is a deletion (a whiteout), and a directory
//! is either new, or *opaque* (the job removed and recreated it), or only the parent of a change.
//! Whether a path is new is told by looking it up in the lower directory (read-only, opened before
//! `pivot_root`), resolved inside it.

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use serde::{Deserialize, Serialize};

use crate::SandboxSpec;
use crate::mounts::{RESERVED_TOP, bind_ro, inside};
use crate::sys::{Kernel, Step, fail};

/// Where the upper directories of a writable root live (a size-capped tmpfs mounted here,
/// opened by the init and detached before the job starts: the job sees an empty directory).
pub(crate) const UPPER: &str = "/.warden-upper";

/// Inside the job's root: the top-level directories a writable root made overlays of (every
/// directory but the ones warden fills itself and the detached upper's mount point).
pub(crate) fn overlay_dirs() -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir("/") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            !RESERVED_TOP.contains(&n.as_str()) && Path::new("/").join(n) != Path::new(UPPER)
        })
        .map(|n| Path::new("/").join(n))
        .collect()
}

/// How the system directories are mounted: read-only binds, or, for a writable root, each an
/// overlay whose upper directory is in the job's own capped tmpfs. The lower directory is an
/// idmapped bind in which what root owns belongs to the job's host ids, so the job (not root,
/// in a user namespace where host root does not exist) owns what it may now change; nothing is
/// written to the lower directory either way.
pub(crate) struct System {
    upper: Option<PathBuf>,
    idmap: Option<std::os::fd::RawFd>,
    userxattr: bool,
    /// The job's host ids: the upper directories' roots are the job's, as the lower ones
    /// appear through the id mapping (an overlay's root takes its owner from the upper).
    ids: (u32, u32),
}

impl System {
    pub(crate) fn new(
        k: &mut impl Kernel,
        root: &Path,
        spec: &SandboxSpec,
        idmap: Option<std::os::fd::RawFd>,
    ) -> Step<System> {
        let Some(bytes) = spec.writable_root_bytes else {
            return Ok(System {
                upper: None,
                idmap: None,
                userxattr: false,
                ids: (spec.uid, spec.gid),
            });
        };
        let Some(idmap) = idmap else {
            return Err(fail(
                "writable root",
                std::io::Error::other("no id-mapping user namespace"),
            ));
        };
        let upper = inside(root, UPPER);
        k.mkdir(&upper)?;
        k.mount(
            Some(Path::new("tmpfs")),
            &upper,
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some(&format!(
                "size={bytes},nr_inodes={},mode=0700",
                (bytes / 4096).max(1024)
            )),
        )?;
        k.mkdir(&upper.join("u"))?;
        k.mkdir(&upper.join("w"))?;
        k.mkdir(&upper.join("l"))?;
        Ok(System {
            ids: (spec.uid, spec.gid),
            upper: Some(upper),
            idmap: Some(idmap),
            // In a user namespace of its own (rootless) overlayfs keeps its metadata in user.*
            // extended attributes.
            userxattr: spec.rootless,
        })
    }

    /// `src` (a directory) at `dst`, named `name` in the upper tmpfs.
    pub(crate) fn mount(&self, k: &mut impl Kernel, src: &Path, dst: &Path, name: &str) -> Step {
        let Some(upper) = &self.upper else {
            return bind_ro(k, src, dst);
        };
        let (u, w) = (upper.join("u").join(name), upper.join("w").join(name));
        let l = upper.join("l").join(name);
        k.mkdir(&u)?;
        k.chown(&u, self.ids.0, self.ids.1)?;
        k.mkdir(&w)?;
        k.mkdir(&l)?;
        if let Some(userns) = self.idmap {
            k.idmapped_bind(src, &l, userns)?;
        }
        let paths = [l.as_path(), &u, &w];
        if let Some(bad) = paths
            .iter()
            .find(|p| p.to_string_lossy().contains([',', ':', '\\']))
        {
            return Err(fail(
                format!("overlay {}", bad.display()),
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "a writable root's directories may not contain ',', ':' or '\\'",
                ),
            ));
        }
        let mut options = format!(
            "lowerdir={},upperdir={},workdir={}",
            l.display(),
            u.display(),
            w.display()
        );
        if self.userxattr {
            options.push_str(",userxattr");
        }
        k.mount(
            Some(Path::new("overlay")),
            dst,
            Some("overlay"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some(&options),
        )
    }
}

/// The most changes listed one by one; all are counted.
pub const MAX_LISTED: usize = 10_000;

/// A writable root's changes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RootChanges {
    pub added: u64,
    pub modified: u64,
    pub deleted: u64,
    /// Bytes of the files added or modified.
    pub bytes: u64,
    /// The changes, by path, at most [`MAX_LISTED`].
    pub changes: Vec<Change>,
    /// More changes than were listed.
    pub truncated: bool,
    /// Why the report stopped early, if it did.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The path in the job's root, e.g. `/usr/bin/tool`.
    pub path: String,
    pub change: ChangeKind,
    /// `file`, `dir`, `symlink` or `other` (what is there now; for a deletion, what was).
    pub kind: String,
    /// Size in bytes (0 for a deletion).
    pub size: u64,
    /// Permission bits (0 for a deletion).
    pub mode: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

impl RootChanges {
    fn push(&mut self, change: Change) {
        match change.change {
            ChangeKind::Added => self.added += 1,
            ChangeKind::Modified => self.modified += 1,
            ChangeKind::Deleted => self.deleted += 1,
        }
        if change.change != ChangeKind::Deleted && change.kind == "file" {
            self.bytes += change.size;
        }
        if self.changes.len() < MAX_LISTED {
            self.changes.push(change);
        } else {
            self.truncated = true;
        }
    }
}

/// The changes under `upper/u/<name>` for each `(name, lower)`.
pub(crate) fn changes(
    upper: &OwnedFd,
    lowers: &[(String, OwnedFd)],
    userxattr: bool,
) -> RootChanges {
    let mut out = RootChanges::default();
    let opaque = if userxattr {
        "user.overlay.opaque"
    } else {
        "trusted.overlay.opaque"
    };
    for (name, lower) in lowers {
        let top = match open_dir_at(upper, &format!("u/{name}")) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => {
                out.error = Some(format!("{name}: {e}"));
                return out;
            }
        };
        if let Err(e) = walk(&top, lower, name, "", false, opaque, &mut out) {
            out.error = Some(format!("{name}: {e}"));
            return out;
        }
    }
    out.changes.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

fn open_dir_at(dir: &OwnedFd, rel: &str) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        rel,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

fn kind_of(ft: FileType) -> &'static str {
    match ft {
        FileType::RegularFile => "file",
        FileType::Directory => "dir",
        FileType::Symlink => "symlink",
        _ => "other",
    }
}

/// Something in the upper directory is new unless the lower one had it.
fn added_or_modified(lower_has: Option<FileType>) -> ChangeKind {
    match lower_has {
        Some(_) => ChangeKind::Modified,
        None => ChangeKind::Added,
    }
}

/// What the lower directory has at `rel`, resolved inside it.
fn in_lower(lower: &OwnedFd, rel: &str) -> Option<FileType> {
    let fd = rustix::fs::openat2(
        lower,
        rel,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
    .ok()?;
    rustix::fs::fstat(&fd)
        .ok()
        .map(|st| FileType::from_raw_mode(st.st_mode))
}

/// One upper directory (`rel` inside `top`); `all_new`: everything under it is new.
fn walk(
    dir: &OwnedFd,
    lower: &OwnedFd,
    top: &str,
    rel: &str,
    all_new: bool,
    opaque: &str,
    out: &mut RootChanges,
) -> rustix::io::Result<()> {
    let mut names = Vec::new();
    let mut d = rustix::fs::Dir::read_from(dir)?;
    while let Some(entry) = d.read() {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != "." && name != ".." {
            names.push(name);
        }
    }
    for name in names {
        let child_rel = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let path = format!("/{top}/{child_rel}");
        let st = rustix::fs::statat(dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)?;
        let ft = FileType::from_raw_mode(st.st_mode);
        let lower_has = if all_new {
            None
        } else {
            in_lower(lower, &child_rel)
        };
        if ft == FileType::CharacterDevice && st.st_rdev == 0 {
            out.push(Change {
                path,
                change: ChangeKind::Deleted,
                kind: lower_has.map_or("other", kind_of).to_string(),
                size: 0,
                mode: 0,
            });
            continue;
        }
        let mode = st.st_mode & 0o7777;
        let size = st.st_size.max(0) as u64;
        if ft == FileType::Directory {
            let sub = open_dir_at(dir, &name)?;
            let mut buf = [0u8; 4];
            let is_opaque =
                matches!(rustix::fs::fgetxattr(&sub, opaque, &mut buf), Ok(n) if buf[..n] == *b"y");
            let new = lower_has != Some(FileType::Directory);
            if new || is_opaque {
                out.push(Change {
                    path,
                    change: added_or_modified(lower_has),
                    kind: "dir".into(),
                    size: 0,
                    mode,
                });
            }
            walk(
                &sub,
                lower,
                top,
                &child_rel,
                all_new || new || is_opaque,
                opaque,
                out,
            )?;
            continue;
        }
        out.push(Change {
            path,
            change: added_or_modified(lower_has),
            kind: kind_of(ft).into(),
            size,
            mode,
        });
    }
    Ok(())
}
