//! Where things live under the data directory.

use std::path::{Path, PathBuf};

use warden_core::JobId;

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("data directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "data directory {0} is in use by another warden process (lock held on warden.lock); \
         stop it or choose another --data-dir"
    )]
    Locked(PathBuf),
}

/// The exclusive hold on a data directory: one warden process per directory, for as long as
/// this lives.
#[derive(Debug)]
pub struct DataDirLock {
    _file: std::fs::File,
}

/// Marks warden's own data directory as the top of unrelated directory trees (`chattr +T`, the
/// hint ext4 documents for `/home`): a directory made in it — `artifacts` among them, where every
/// job makes its own directory and `artifact.json` — is placed by ext4 in a block group with room
/// and few directories instead of beside the parent's, and each job's directory and file are then
/// allocated there. Beside a busy parent (a `/tmp` full of recently deleted files, on ext4
/// without a journal) a job's directory and file cost 0.3 ms each to allocate, against 0.05–0.09
/// ms in a group of their own (docs/benchmarks.md). A hint only: filesystems without inode flags,
/// or a directory warden does not own, keep the default placement.
fn tops_of_trees(dir: &Path) {
    use rustix::fs::{IFlags, Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let Ok(fd) = rustix::fs::open(dir, flags, Mode::empty()) else {
        return;
    };
    match rustix::fs::ioctl_getflags(&fd) {
        Ok(f) if !f.contains(IFlags::TOPDIR) => {
            if let Err(e) = rustix::fs::ioctl_setflags(&fd, f | IFlags::TOPDIR) {
                tracing::debug!(dir = %dir.display(), error = %e, "data directory keeps the default placement");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(dir = %dir.display(), error = %e, "no inode flags here"),
    }
}

/// Makes `dir` (a data directory's `artifacts`, in a parent marked by [`tops_of_trees`]) under a
/// name of its own, then renames it into place. ext4 starts its search for a top-level
/// directory's block group at a hash of the new directory's name and takes the first group with
/// the fewest directories: under a fixed name every new data directory's `artifacts` lands in the
/// same group — the one its predecessor at the same spot emptied when it was deleted, where, on
/// ext4 without a journal, every allocation then walks past each inode freed in the last minutes
/// (a benchmark run after another: a fifth of the server's CPU). A random name starts the search
/// elsewhere. Best effort: whatever fails leaves `dir` to be made as before.
fn placed_apart(dir: &Path) {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return;
    };
    if dir.symlink_metadata().is_ok() {
        return;
    }
    let fresh = parent.join(format!(
        ".{}-{}",
        name.to_string_lossy(),
        uuid::Uuid::now_v7().simple()
    ));
    if std::fs::create_dir(&fresh).is_err() {
        return;
    }
    let placed = rustix::fs::renameat_with(
        rustix::fs::CWD,
        &fresh,
        rustix::fs::CWD,
        dir,
        rustix::fs::RenameFlags::NOREPLACE,
    );
    if let Err(e) = placed {
        tracing::debug!(dir = %dir.display(), error = %e, "made in place instead");
        let _ = std::fs::remove_dir(&fresh);
    }
}

#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
    artifacts: PathBuf,
}

impl DataDir {
    /// `root` should be absolute (the server canonicalises it at start).
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        let root = root.into();
        DataDir {
            artifacts: root.join("artifacts"),
            root,
        }
    }

    /// Creates the data directory (and `artifacts`, when artifacts live elsewhere), makes
    /// every directory warden needs in it, and takes its lock: one warden process per data
    /// directory. Paths are made absolute.
    pub fn open_locked(
        root: &Path,
        artifacts: Option<&Path>,
    ) -> Result<(DataDir, DataDirLock), DataDirError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DataDirError::Io { path, source }
        };
        use std::os::unix::fs::PermissionsExt;
        // warden's alone: the database, other jobs' artifacts and the mirrors are no business of
        // any other user of the host (jobs see only what is bound into their sandbox).
        let private = |dir: &Path| {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        };
        private(root).map_err(io(root))?;
        let abs = std::fs::canonicalize(root).map_err(io(root))?;
        let mut data = DataDir::new(&abs);
        if let Some(dir) = artifacts {
            private(dir).map_err(io(dir))?;
            data = data.with_artifacts(std::fs::canonicalize(dir).map_err(io(dir))?);
        } else {
            tops_of_trees(&abs);
            placed_apart(&data.artifacts_root());
        }
        for dir in [data.artifacts_root(), data.scratch_root()] {
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        }
        data.prepare_sandbox_dirs().map_err(io(&abs))?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(data.lock_file())
            .map_err(io(&abs))?;
        if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            return Err(DataDirError::Locked(abs));
        }
        Ok((data, DataDirLock { _file: file }))
    }

    /// Removes everything under `dir` (scratch or artifacts of a previous run, never reused).
    pub fn clear(dir: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// Keeps artifacts in `dir` (a directory replicas share) instead of under the root.
    pub fn with_artifacts(mut self, dir: impl Into<PathBuf>) -> DataDir {
        self.artifacts = dir.into();
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn database(&self) -> PathBuf {
        self.root.join("warden.db")
    }

    pub fn lock_file(&self) -> PathBuf {
        self.root.join("warden.lock")
    }

    pub fn artifacts_root(&self) -> PathBuf {
        self.artifacts.clone()
    }

    /// A job's artifact directory, its `ARTIFACT_DIR`.
    pub fn artifacts(&self, id: JobId) -> PathBuf {
        self.artifacts_root().join(id.to_string())
    }

    /// The mount point every sandboxed job's root is mounted on, inside its own mount namespace
    /// (the host only ever sees an empty directory).
    pub fn sandbox_root(&self) -> PathBuf {
        self.root.join("sandbox").join("root")
    }

    /// The empty, read-only directory sandboxed jobs without a repository see at `/work`.
    pub fn sandbox_work(&self) -> PathBuf {
        self.root.join("sandbox").join("work")
    }

    /// Makes the shared sandbox directories (idempotent).
    pub fn prepare_sandbox_dirs(&self) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        for dir in [self.sandbox_root(), self.sandbox_work()] {
            std::fs::create_dir_all(&dir)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555))?;
        }
        Ok(())
    }

    /// The sandbox's `/etc`, rebuilt at every start.
    pub fn sandbox_etc(&self) -> PathBuf {
        self.root.join("sandbox").join("etc")
    }

    /// Git mirrors, the checkout cache and git's empty `HOME` (see `warden-repo`).
    pub fn git(&self) -> PathBuf {
        self.root.join("git")
    }

    /// A remote worker's copies of the tool bundles its jobs were sent (by SHA-256).
    pub fn tool_bundles(&self) -> PathBuf {
        self.root.join("tool-bundles")
    }

    pub fn scratch_root(&self) -> PathBuf {
        self.root.join("scratch")
    }

    /// A job's private scratch space (`HOME`, `TMPDIR`, working directory), removed afterwards.
    pub fn scratch(&self, id: JobId) -> PathBuf {
        self.scratch_root().join(id.to_string())
    }
}

#[cfg(test)]
mod tests {
    use rustix::fs::{IFlags, Mode, OFlags};

    use super::*;

    fn flags(dir: &Path) -> rustix::io::Result<IFlags> {
        let fd = rustix::fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
        rustix::fs::ioctl_getflags(&fd)
    }

    /// Whether this filesystem takes the top-of-trees flag at all (ext4 does; tmpfs does not).
    fn takes_topdir(dir: &Path) -> bool {
        let probe = dir.join("probe");
        std::fs::create_dir(&probe).unwrap();
        let fd = rustix::fs::open(&probe, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty());
        let took = fd.is_ok_and(|fd| {
            rustix::fs::ioctl_getflags(&fd)
                .and_then(|f| rustix::fs::ioctl_setflags(&fd, f | IFlags::TOPDIR))
                .and_then(|()| rustix::fs::ioctl_getflags(&fd))
                .is_ok_and(|f| f.contains(IFlags::TOPDIR))
        });
        std::fs::remove_dir(&probe).unwrap();
        took
    }

    /// A data directory warden lays out itself is marked as the top of unrelated trees, where
    /// the filesystem keeps the flag, so that `artifacts` is placed in a block group of its own;
    /// an artifact directory the operator chose elsewhere, and its parent, are left as they are.
    /// On a filesystem without the flag the data directory opens all the same.
    #[test]
    fn a_data_directory_of_warden_own_spreads_what_is_made_in_it() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("data");
        let (data, lock) = DataDir::open_locked(&root, None).unwrap();
        assert!(data.artifacts_root().is_dir());
        drop(lock);
        let shared = tmp.path().join("shared");
        let (data, _lock) =
            DataDir::open_locked(&tmp.path().join("other"), Some(&shared.join("artifacts")))
                .unwrap();
        assert!(data.artifacts_root().is_dir());
        if !takes_topdir(tmp.path()) {
            eprintln!("this filesystem keeps no top-of-trees flag: placement unchanged");
            return;
        }
        assert!(flags(&root).unwrap().contains(IFlags::TOPDIR));
        for untouched in [shared.clone(), shared.join("artifacts")] {
            assert!(
                !flags(&untouched).unwrap().contains(IFlags::TOPDIR),
                "{} is the operator's",
                untouched.display()
            );
        }
    }

    /// A data directory made where another was just deleted does not put its `artifacts` in the
    /// block group the other's emptied: ext4 places a directory made under a fixed name in the
    /// same group every time. Read off inode numbers: one group's inodes are consecutive, and an
    /// empty group's first directory takes one of its first free inodes.
    #[test]
    fn a_data_directory_made_again_puts_its_artifacts_elsewhere() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        if !takes_topdir(tmp.path()) {
            eprintln!("this filesystem keeps no top-of-trees flag: placement unchanged");
            return;
        }
        let root = tmp.path().join("data");
        let mut inodes = Vec::new();
        for _ in 0..3 {
            let (data, lock) = DataDir::open_locked(&root, None).unwrap();
            let artifacts = data.artifacts_root();
            assert!(artifacts.is_dir());
            inodes.push(std::fs::metadata(&artifacts).unwrap().ino());
            drop(lock);
            std::fs::remove_dir_all(&root).unwrap();
        }
        let near = |a: u64, b: u64| a.abs_diff(b) < 1024;
        assert!(
            !(near(inodes[0], inodes[1]) && near(inodes[1], inodes[2])),
            "three data directories' artifacts all in one place: inodes {inodes:?}"
        );
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}
