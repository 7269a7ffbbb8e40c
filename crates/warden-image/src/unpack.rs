//! Unpacking an image's layers into a root directory, defensively: the layers come from
//! whoever built the image, and warden unpacks them with its own privileges.
//!
//! Every path is resolved *inside* the root (`openat2` with `RESOLVE_IN_ROOT`): an absolute
//! symlink, `..` in a link's target or a chain of links all land inside it, as they would for
//! the job. Names with `..` are refused outright; a leading `/` is dropped. The last component
//! is never followed: what is there is removed and replaced. Hard links must name a file
//! already in the root. Device nodes are dropped, setuid/setgid/sticky bits cleared (the
//! sandbox mounts everything `nosuid` as well), files are owned by warden's user, and the
//! total size and number of entries are capped across all layers. Whiteouts (`.wh.NAME`) and
//! opaque directories (`.wh..wh..opq`) are honoured; a whiteout of the root is refused.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};

/// Caps across all the layers of one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Total bytes of regular files (as declared, before they are written).
    pub max_bytes: u64,
    /// Tar entries, of every type, whiteouts included.
    pub max_entries: u64,
}

impl Default for Caps {
    fn default() -> Self {
        Caps {
            max_bytes: 8 << 30,
            max_entries: 500_000,
        }
    }
}

/// Why an image could not be unpacked. The partial root is the caller's to remove.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("entry {path:?} leaves the image's root ('..')")]
    Escapes { path: String },
    #[error("entry {path:?} is a whiteout of the image's root")]
    WhiteoutOfRoot { path: String },
    #[error("hard link {path:?} names {target:?}, which is not a file in the image")]
    LinkOutside { path: String, target: String },
    #[error(
        "the image unpacks to more than {max} bytes (entry {path:?}); raise images.max_unpacked_mb"
    )]
    TooLarge { path: String, max: u64 },
    #[error("the image has more than {max} entries; raise images.max_entries")]
    TooManyEntries { max: u64 },
    #[error("entry {path:?}: {source}")]
    Entry { path: String, source: io::Error },
    #[error("reading the layer: {0}")]
    Read(io::Error),
}

/// What unpacking changed from what the layers said.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub entries: u64,
    pub bytes: u64,
    /// Device nodes not created.
    pub devices_dropped: u64,
    /// Files and directories whose setuid, setgid or sticky bit was cleared.
    pub special_bits_cleared: u64,
    /// Entries with a leading `/`, unpacked relative to the root.
    pub absolute_names: u64,
}

/// Unpacks layers, in order, into one root directory.
pub struct Unpacker {
    root: OwnedFd,
    caps: Caps,
    report: Report,
    /// Directory modes, applied when every layer is in (a read-only directory must stay
    /// writable until then, for a rootless warden).
    dir_modes: Vec<(String, u32)>,
}

const IN_ROOT: ResolveFlags = ResolveFlags::IN_ROOT
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

impl Unpacker {
    /// `root` must be an existing, empty directory.
    pub fn new(root: &Path, caps: Caps) -> io::Result<Unpacker> {
        let root = rustix::fs::open(
            root,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )?;
        Ok(Unpacker {
            root,
            caps,
            report: Report::default(),
            dir_modes: Vec::new(),
        })
    }

    /// Unpacks one layer (an uncompressed tar stream) over what is there.
    pub fn layer(&mut self, tar: impl Read) -> Result<(), UnpackError> {
        let mut archive = tar::Archive::new(tar);
        let mut this_layer: HashSet<String> = HashSet::new();
        for entry in archive.entries().map_err(UnpackError::Read)? {
            let mut entry = entry.map_err(UnpackError::Read)?;
            self.report.entries += 1;
            if self.report.entries > self.caps.max_entries {
                return Err(UnpackError::TooManyEntries {
                    max: self.caps.max_entries,
                });
            }
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let kind = entry.header().entry_type();
            if matches!(
                kind,
                tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
            ) {
                continue;
            }
            let (path, absolute) = normalise(&raw)?;
            if absolute {
                self.report.absolute_names += 1;
            }
            let entry_err = |source| UnpackError::Entry {
                path: raw.clone(),
                source,
            };
            let Some((parent, name)) = split(&path) else {
                // The root itself: its mode is warden's.
                continue;
            };
            if let Some(hidden) = name.strip_prefix(".wh.") {
                if hidden == ".wh..opq" {
                    self.opaque(parent, &this_layer).map_err(entry_err)?;
                } else if hidden.is_empty() || hidden == "." || hidden == ".." {
                    return Err(UnpackError::WhiteoutOfRoot { path: raw });
                } else {
                    let dir = self.dir(parent, false).map_err(entry_err)?;
                    if let Some(dir) = dir {
                        remove(&dir, hidden).map_err(entry_err)?;
                    }
                }
                continue;
            }
            let mode = entry.header().mode().map_err(entry_err)?;
            let clean = mode & 0o777;
            if mode & 0o7000 != 0 {
                self.report.special_bits_cleared += 1;
            }
            match kind {
                tar::EntryType::Directory => {
                    let dir = self.dir(parent, true).map_err(entry_err)?.expect("made");
                    match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(st) if is_dir(st.st_mode) => {}
                        Ok(_) => {
                            remove(&dir, name).map_err(entry_err)?;
                            mkdir(&dir, name).map_err(entry_err)?;
                        }
                        Err(_) => mkdir(&dir, name).map_err(entry_err)?,
                    }
                    self.dir_modes.push((path.clone(), clean));
                }
                tar::EntryType::Regular
                | tar::EntryType::Continuous
                | tar::EntryType::GNUSparse => {
                    let size = entry.size();
                    if self.report.bytes.saturating_add(size) > self.caps.max_bytes {
                        return Err(UnpackError::TooLarge {
                            path: raw,
                            max: self.caps.max_bytes,
                        });
                    }
                    self.report.bytes += size;
                    let dir = self.dir(parent, true).map_err(entry_err)?.expect("made");
                    remove(&dir, name).map_err(entry_err)?;
                    let file = rustix::fs::openat(
                        &dir,
                        name,
                        OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::WRONLY
                            | OFlags::NOFOLLOW
                            | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    )
                    .map_err(|e| entry_err(e.into()))?;
                    let mut file = std::fs::File::from(file);
                    // Never more than declared, whatever the stream holds.
                    let copied =
                        io::copy(&mut (&mut entry).take(size), &mut file).map_err(entry_err)?;
                    if copied != size {
                        return Err(entry_err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("{copied} of {size} bytes in the layer"),
                        )));
                    }
                    file.flush().map_err(entry_err)?;
                    rustix::fs::fchmod(&file, Mode::from_raw_mode(clean))
                        .map_err(|e| entry_err(e.into()))?;
                }
                tar::EntryType::Symlink => {
                    let target = link_name(&entry);
                    let dir = self.dir(parent, true).map_err(entry_err)?.expect("made");
                    remove(&dir, name).map_err(entry_err)?;
                    // Where it points is resolved only ever inside the root: by the job in
                    // its own mount namespace, by warden with RESOLVE_IN_ROOT.
                    rustix::fs::symlinkat(target.as_str(), &dir, name)
                        .map_err(|e| entry_err(e.into()))?;
                }
                tar::EntryType::Link => {
                    let target_raw = link_name(&entry);
                    let (target, _) = normalise(&target_raw)?;
                    let outside = || UnpackError::LinkOutside {
                        path: raw.clone(),
                        target: target_raw.clone(),
                    };
                    if target.is_empty() {
                        return Err(outside());
                    }
                    let src = rustix::fs::openat2(
                        &self.root,
                        target.as_str(),
                        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                        IN_ROOT,
                    )
                    .map_err(|_| outside())?;
                    let st = rustix::fs::fstat(&src).map_err(|e| entry_err(e.into()))?;
                    if is_dir(st.st_mode) {
                        return Err(outside());
                    }
                    let dir = self.dir(parent, true).map_err(entry_err)?.expect("made");
                    remove(&dir, name).map_err(entry_err)?;
                    // Through /proc/self/fd: linkat(AT_EMPTY_PATH) needs CAP_DAC_READ_SEARCH,
                    // which a rootless warden does not have.
                    let proc_path = format!("/proc/self/fd/{}", fd_number(&src));
                    rustix::fs::linkat(
                        rustix::fs::CWD,
                        proc_path.as_str(),
                        &dir,
                        name,
                        AtFlags::SYMLINK_FOLLOW,
                    )
                    .map_err(|e| entry_err(e.into()))?;
                }
                tar::EntryType::Fifo => {
                    let dir = self.dir(parent, true).map_err(entry_err)?.expect("made");
                    remove(&dir, name).map_err(entry_err)?;
                    rustix::fs::mknodat(
                        &dir,
                        name,
                        rustix::fs::FileType::Fifo,
                        Mode::from_raw_mode(clean),
                        0,
                    )
                    .map_err(|e| entry_err(e.into()))?;
                }
                tar::EntryType::Char | tar::EntryType::Block => {
                    self.report.devices_dropped += 1;
                    continue;
                }
                // Long names and pax headers are read by `tar` itself; anything else is
                // metadata warden does not need.
                _ => continue,
            }
            this_layer.insert(path);
        }
        Ok(())
    }

    /// Makes directory `path` (absolute or relative to the root) with its parents, resolved
    /// inside the root, if it is not there: an image's `WorkingDir`, as a container runtime
    /// would make it.
    pub fn ensure_dir(&mut self, path: &str) -> Result<(), UnpackError> {
        let (rel, _) = normalise(path)?;
        self.dir(&rel, true).map_err(|source| UnpackError::Entry {
            path: path.to_string(),
            source,
        })?;
        Ok(())
    }

    /// Applies the directory modes and returns what was unpacked.
    pub fn finish(self) -> Result<Report, UnpackError> {
        // Deepest first, so a read-only parent never blocks its child's chmod (rootless).
        let mut modes = self.dir_modes;
        modes.sort_by_key(|m| std::cmp::Reverse(m.0.len()));
        for (path, mode) in modes {
            let Ok(fd) = rustix::fs::openat2(
                &self.root,
                path.as_str(),
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                IN_ROOT,
            ) else {
                // Whited out or replaced by a later layer.
                continue;
            };
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(|e| UnpackError::Entry {
                path,
                source: e.into(),
            })?;
        }
        Ok(self.report)
    }

    /// The directory `rel` inside the root (resolved in it), made with its parents if `make`.
    fn dir(&self, rel: &str, make: bool) -> io::Result<Option<OwnedFd>> {
        let open = |rel: &str| {
            rustix::fs::openat2(
                &self.root,
                if rel.is_empty() { "." } else { rel },
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
                IN_ROOT,
            )
        };
        match open(rel) {
            Ok(fd) => Ok(Some(fd)),
            Err(rustix::io::Errno::NOENT) if make => {
                let (parent, name) = split(rel).expect("the root always exists");
                let parent = self.dir(parent, true)?.expect("made");
                match mkdir(&parent, name) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e),
                }
                Ok(Some(open(rel)?))
            }
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// `.wh..wh..opq` in `dir`: what lower layers put there goes; this layer's entries stay.
    fn opaque(&self, dir: &str, this_layer: &HashSet<String>) -> io::Result<()> {
        let Some(fd) = self.dir(dir, true)? else {
            return Ok(());
        };
        for name in names(&fd)? {
            let path = if dir.is_empty() {
                name.clone()
            } else {
                format!("{dir}/{name}")
            };
            if !this_layer.contains(&path) {
                remove(&fd, &name)?;
            }
        }
        Ok(())
    }
}

/// The entry's path relative to the root, and whether it was absolute. `..` anywhere is
/// refused: no legitimate image needs it, and it is how entries escape naive unpackers.
fn normalise(raw: &str) -> Result<(String, bool), UnpackError> {
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(UnpackError::Escapes {
                    path: raw.to_string(),
                });
            }
            p => parts.push(p),
        }
    }
    Ok((parts.join("/"), raw.starts_with('/')))
}

/// `a/b/c` → (`a/b`, `c`); the root → `None`.
fn split(path: &str) -> Option<(&str, &str)> {
    if path.is_empty() {
        return None;
    }
    Some(match path.rfind('/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("", path),
    })
}

fn is_dir(mode: u32) -> bool {
    rustix::fs::FileType::from_raw_mode(mode) == rustix::fs::FileType::Directory
}

fn fd_number(fd: &impl AsFd) -> i32 {
    use std::os::fd::AsRawFd;
    fd.as_fd().as_raw_fd()
}

fn mkdir(dir: &OwnedFd, name: &str) -> io::Result<()> {
    // Writable by warden until `finish` sets the layer's mode.
    Ok(rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o755))?)
}

/// Removes `name` in `dir` if it is there (a directory with everything in it), never
/// following a symlink.
pub(crate) fn remove(dir: &OwnedFd, name: &str) -> io::Result<()> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
        Ok(st) if is_dir(st.st_mode) => {
            let sub = rustix::fs::openat(
                dir,
                name,
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            // A read-only directory (rootless) must be made writable to be emptied.
            let _ = rustix::fs::fchmod(&sub, Mode::from_raw_mode(0o700));
            for child in names(&sub)? {
                remove(&sub, &child)?;
            }
            Ok(rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?)
        }
        Ok(_) => Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?),
    }
}

/// An entry's link target, as text (empty if it has none).
fn link_name<R: Read>(entry: &tar::Entry<'_, R>) -> String {
    entry
        .link_name_bytes()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn names(dir: &OwnedFd) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut d = rustix::fs::Dir::read_from(dir)?;
    while let Some(entry) = d.read() {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != "." && name != ".." {
            out.push(name);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_or_refused() {
        assert_eq!(normalise("./usr/bin/").unwrap(), ("usr/bin".into(), false));
        assert_eq!(
            normalise("/etc/passwd").unwrap(),
            ("etc/passwd".into(), true)
        );
        assert!(matches!(
            normalise("a/../../etc/cron.d/x"),
            Err(UnpackError::Escapes { .. })
        ));
        assert_eq!(split("a/b/c"), Some(("a/b", "c")));
        assert_eq!(split("c"), Some(("", "c")));
        assert_eq!(split(""), None);
    }
}
