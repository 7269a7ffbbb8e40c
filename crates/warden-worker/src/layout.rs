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
