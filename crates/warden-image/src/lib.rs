//! OCI images as job roots, without a container daemon: references resolved to digests,
//! blobs pulled from a registry or read from a local layout, layers unpacked defensively
//! (see [`unpack`]) into a content-addressed cache that jobs share read-only.
//!
//! The cache, under `images.dir`:
//!
//! ```text
//! roots/<manifest hex>/rootfs/       the unpacked image (never changed once here)
//! roots/<manifest hex>/image.json    what the image says about running it, and its size
//! locks/<manifest hex>               held shared by each job using the root, exclusively to evict it
//! staging/                           pulls in progress (removed at start)
//! ```
//!
//! A root appears by `rename(2)` of a finished staging directory, so a root that exists is
//! complete. Eviction takes the root's lock exclusively without waiting: a root any job holds
//! is never removed.

#[doc(hidden)]
pub mod fuzzing;
mod layout;
mod oci;
mod registry;
pub mod unpack;
mod user;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use warden_core::config::ImagesConfig;
use warden_core::image::{Digest, ImageRef};

pub use unpack::{Caps, Report, UnpackError};

/// Why an image could not be resolved or prepared.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ImageError {
    /// It could not be reached or read (registry down, file missing, no such tag).
    #[error("{0}")]
    Unavailable(String),
    /// What was read is not acceptable (digest mismatch, a hostile layer, over a cap).
    #[error("{0}")]
    Refused(String),
}

impl ImageError {
    /// The job's reason code.
    pub fn code(&self) -> &'static str {
        match self {
            ImageError::Unavailable(_) => "image_unavailable",
            ImageError::Refused(_) => "image_refused",
        }
    }
}

/// What the image says about running it (its config's `Env`, `WorkingDir`, `User`), and what
/// unpacking it took.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub reference: String,
    pub digest: String,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub unpacked: Report,
}

/// An unpacked image a job is using: the root stays while this lives.
#[derive(Debug)]
pub struct Root {
    pub rootfs: PathBuf,
    pub info: ImageInfo,
    _lock: OwnedFd,
}

/// The image cache and the registries it pulls from.
pub struct Images {
    dir: PathBuf,
    config: ImagesConfig,
    /// Registry host → password, for registries with a credential.
    passwords: BTreeMap<String, String>,
    /// One pull per digest at a time in this process.
    pulls: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// One client per registry host, kept: its TLS setup and token are paid once, not at every
    /// submission.
    clients: Mutex<HashMap<String, Arc<registry::Registry>>>,
}

impl std::fmt::Debug for Images {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Images")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Images {
    /// Opens (making if needed) the cache at `dir`; pulls left over by an earlier process are
    /// removed.
    pub fn open(
        dir: PathBuf,
        config: ImagesConfig,
        passwords: BTreeMap<String, String>,
    ) -> io::Result<Images> {
        for sub in ["roots", "locks", "staging"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        // Another process sharing the cache may be pulling right now: only what is older than
        // the longest pull is left over.
        let stale = Duration::from_secs(config.pull_timeout_s.get().saturating_mul(2));
        if let Ok(entries) = std::fs::read_dir(dir.join("staging")) {
            for e in entries.flatten() {
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > stale);
                if old {
                    remove_tree(&e.path());
                }
            }
        }
        Ok(Images {
            dir,
            config,
            passwords,
            pulls: Mutex::new(HashMap::new()),
            clients: Mutex::new(HashMap::new()),
        })
    }

    fn caps(&self) -> Caps {
        Caps {
            max_bytes: self.config.max_unpacked_mb.get().saturating_mul(1 << 20),
            max_entries: self.config.max_entries.get(),
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.config.pull_timeout_s.get())
    }

    fn registry(&self, r: &ImageRef) -> Result<Arc<registry::Registry>, ImageError> {
        let host = r.registry().expect("a registry reference");
        if let Some(c) = self.clients.lock().expect("clients").get(host) {
            return Ok(c.clone());
        }
        let client = Arc::new(registry::Registry::new(
            host,
            self.config.registries.get(host),
            self.passwords.get(host).cloned(),
            self.timeout(),
        )?);
        self.clients
            .lock()
            .expect("clients")
            .insert(host.to_string(), client.clone());
        Ok(client)
    }

    /// The digest `r` names now: what a job submitted with it is pinned to.
    pub async fn resolve(&self, r: &ImageRef) -> Result<Digest, ImageError> {
        let work = async {
            match r {
                ImageRef::Registry { .. } => self.registry(r)?.resolve(r).await,
                ImageRef::OciDir { dir, tag } => {
                    let (dir, tag) = (dir.clone(), tag.clone());
                    blocking(move || layout::Layout::Dir(dir).resolve(tag.as_deref())).await
                }
                ImageRef::OciArchive { path, tag } => {
                    let (path, tag) = (path.clone(), tag.clone());
                    blocking(move || layout::Layout::Archive(path).resolve(tag.as_deref())).await
                }
            }
        };
        tokio::time::timeout(self.timeout(), work)
            .await
            .map_err(|_| ImageError::Unavailable(format!("resolving {r} took too long")))?
    }

    /// The unpacked root of image `digest` (from `r`), pulled and unpacked first if it is not
    /// in the cache. The root stays until the returned [`Root`] is dropped.
    pub async fn prepare(&self, r: &ImageRef, digest: &Digest) -> Result<Root, ImageError> {
        if let Some(root) = self.cached(digest).await? {
            return Ok(root);
        }
        let gate = self
            .pulls
            .lock()
            .expect("pulls")
            .entry(digest.hex().to_string())
            .or_default()
            .clone();
        let _one_pull = gate.lock().await;
        if let Some(root) = self.cached(digest).await? {
            return Ok(root);
        }
        let staging = self.dir.join("staging").join(format!(
            "{}.{}.{}",
            digest.hex(),
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        ));
        let pulled = tokio::time::timeout(self.timeout(), self.pull(r, digest, &staging))
            .await
            .unwrap_or_else(|_| {
                Err(ImageError::Unavailable(format!(
                    "pulling {r} took longer than images.pull_timeout_s"
                )))
            });
        let info = match pulled {
            Ok(info) => info,
            Err(e) => {
                let s = staging.clone();
                let _ = tokio::task::spawn_blocking(move || remove_tree(&s)).await;
                return Err(e);
            }
        };
        let dir = self.dir.clone();
        let hex = digest.hex().to_string();
        let budget = self.config.cache_mb.get().saturating_mul(1 << 20);
        blocking(move || {
            let target = dir.join("roots").join(&hex);
            std::fs::create_dir_all(staging.join("rootfs"))
                .and_then(|()| {
                    std::fs::write(
                        staging.join("image.json"),
                        serde_json::to_vec_pretty(&info).expect("serialisable"),
                    )
                })
                .map_err(|e| ImageError::Unavailable(format!("the image cache: {e}")))?;
            match std::fs::rename(&staging, &target) {
                Ok(()) => {}
                // Another process finished the same image first: theirs is as good.
                Err(e) if target.join("image.json").exists() => {
                    tracing::debug!(error = %e, "image already in the cache");
                    remove_tree(&staging);
                }
                Err(e) => {
                    remove_tree(&staging);
                    return Err(ImageError::Unavailable(format!("the image cache: {e}")));
                }
            }
            evict(&dir, budget, &hex);
            Ok(())
        })
        .await?;
        self.cached(digest).await?.ok_or_else(|| {
            ImageError::Unavailable(format!("image {digest} left the cache as it was added"))
        })
    }

    /// The cached root of `digest`, locked for use, if it is there.
    async fn cached(&self, digest: &Digest) -> Result<Option<Root>, ImageError> {
        let dir = self.dir.clone();
        let hex = digest.hex().to_string();
        blocking(move || {
            let lock = lock_file(&dir, &hex)?;
            // Waits only while an evictor removes it.
            rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockShared)
                .map_err(|e| ImageError::Unavailable(format!("locking the image: {e}")))?;
            let root = dir.join("roots").join(&hex);
            let meta = root.join("image.json");
            let bytes = match std::fs::read(&meta) {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(ImageError::Unavailable(format!("{}: {e}", meta.display()))),
            };
            let info: ImageInfo = serde_json::from_slice(&bytes).map_err(|e| {
                ImageError::Unavailable(format!(
                    "{}: {e} (remove it to pull again)",
                    meta.display()
                ))
            })?;
            // Recently used: the last to be evicted.
            let _ = std::fs::File::options()
                .append(true)
                .open(&meta)
                .and_then(|f| f.set_modified(SystemTime::now()));
            Ok(Some(Root {
                rootfs: root.join("rootfs"),
                info,
                _lock: lock,
            }))
        })
        .await
    }

    /// Fetches and unpacks the image into `staging/rootfs`.
    async fn pull(
        &self,
        r: &ImageRef,
        digest: &Digest,
        staging: &Path,
    ) -> Result<ImageInfo, ImageError> {
        let made = |e: io::Error| ImageError::Unavailable(format!("the image cache: {e}"));
        tokio::fs::create_dir_all(staging.join("rootfs"))
            .await
            .map_err(made)?;
        let caps = self.caps();
        let (rs, ds, st) = (r.to_string(), digest.clone(), staging.to_path_buf());
        match r {
            ImageRef::OciDir { dir, .. } => {
                let dir = dir.clone();
                blocking(move || unpack_layout(&layout::Layout::Dir(dir), &ds, &st, caps, rs)).await
            }
            ImageRef::OciArchive { path, .. } => {
                let path = path.clone();
                blocking(move || {
                    // The archive is a tar like any other: unpacked with the same care, then
                    // read as a layout directory.
                    let extracted = st.join("archive");
                    std::fs::create_dir(&extracted).map_err(made)?;
                    let file = std::fs::File::open(&path)
                        .map_err(|e| ImageError::Unavailable(format!("{}: {e}", path.display())))?;
                    let mut u = unpack::Unpacker::new(&extracted, caps).map_err(made)?;
                    u.layer(io::BufReader::new(file)).map_err(refused)?;
                    u.finish().map_err(refused)?;
                    let info =
                        unpack_layout(&layout::Layout::Dir(extracted.clone()), &ds, &st, caps, rs);
                    remove_tree(&extracted);
                    info
                })
                .await
            }
            ImageRef::Registry { .. } => {
                let registry = self.registry(r)?;
                let manifest = registry.manifest(r, digest).await?;
                let m = oci::Manifest::parse(&manifest)?;
                let config = m.config.as_ref().ok_or_else(|| {
                    ImageError::Refused(format!("{digest} is an index, not an image manifest"))
                })?;
                check_descriptors(&m, caps)?;
                // Blobs go into the staging directory's own layout, then unpack as one.
                let blobs = staging.join("blobs/sha256");
                tokio::fs::create_dir_all(&blobs).await.map_err(made)?;
                tokio::fs::write(blobs.join(digest.hex()), &manifest)
                    .await
                    .map_err(made)?;
                for d in std::iter::once(config).chain(&m.layers) {
                    registry.blob(r, d, &blobs.join(d.digest.hex())).await?;
                }
                let info = blocking(move || {
                    unpack_layout(&layout::Layout::Dir(st.clone()), &ds, &st, caps, rs)
                })
                .await;
                let b = staging.join("blobs");
                let _ = tokio::task::spawn_blocking(move || remove_tree(&b)).await;
                info
            }
        }
    }
}

fn refused(e: UnpackError) -> ImageError {
    ImageError::Refused(e.to_string())
}

/// Refuses a manifest before anything is downloaded if its layers cannot fit.
fn check_descriptors(m: &oci::Manifest, caps: Caps) -> Result<(), ImageError> {
    if let Some(c) = &m.config
        && c.size > oci::MAX_JSON
    {
        return Err(ImageError::Refused(format!(
            "the image config is {} bytes (at most {})",
            c.size,
            oci::MAX_JSON
        )));
    }
    let total: u64 = m.layers.iter().map(|l| l.size).fold(0, u64::saturating_add);
    if total > caps.max_bytes {
        return Err(ImageError::Refused(format!(
            "the image's layers are {total} bytes compressed, more than it may unpack to \
             ({} bytes, images.max_unpacked_mb)",
            caps.max_bytes
        )));
    }
    Ok(())
}

/// Unpacks manifest `digest` of `layout` into `staging/rootfs`.
fn unpack_layout(
    layout: &layout::Layout,
    digest: &Digest,
    staging: &Path,
    caps: Caps,
    reference: String,
) -> Result<ImageInfo, ImageError> {
    let m = oci::Manifest::parse(&layout.json(digest, "manifest")?)?;
    let Some(config) = &m.config else {
        return Err(ImageError::Refused(format!(
            "{digest} is an index, not an image manifest"
        )));
    };
    check_descriptors(&m, caps)?;
    let config: oci::ImageConfigFile =
        serde_json::from_slice(&layout.json(&config.digest, "image config")?)
            .map_err(|e| ImageError::Refused(format!("the image config is not valid: {e}")))?;
    let rootfs = staging.join("rootfs");
    let mut u = unpack::Unpacker::new(&rootfs, caps)
        .map_err(|e| ImageError::Unavailable(format!("the image cache: {e}")))?;
    for layer in &m.layers {
        let file = layout.open(&layer.digest)?;
        let mut verified = oci::Verified::new(file, &layer.digest, layer.size);
        {
            let tar = oci::decompress(io::BufReader::with_capacity(256 << 10, &mut verified))?;
            u.layer(tar)
                .map_err(|e| ImageError::Refused(format!("layer {}: {e}", layer.digest)))?;
        }
        verified.finish()?;
    }
    let run = config.config.unwrap_or_default();
    if let Some(dir) = run.working_dir.as_deref().filter(|w| !w.is_empty()) {
        u.ensure_dir(dir).map_err(refused)?;
    }
    let unpacked = u.finish().map_err(refused)?;
    Ok(ImageInfo {
        reference,
        digest: digest.to_string(),
        env: run.env.unwrap_or_default(),
        working_dir: run.working_dir.filter(|w| !w.is_empty()),
        user: run.user.filter(|u| !u.is_empty()),
        unpacked,
    })
}

fn lock_file(dir: &Path, hex: &str) -> Result<OwnedFd, ImageError> {
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("locks").join(hex))
        .map_err(|e| ImageError::Unavailable(format!("the image cache's lock: {e}")))?;
    Ok(file.into())
}

/// Removes the least recently used roots not in use until the cache fits `budget` (never
/// `keep`, the one just added).
fn evict(dir: &Path, budget: u64, keep: &str) {
    let mut roots = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir.join("roots")) else {
        return;
    };
    for e in entries.flatten() {
        let hex = e.file_name().to_string_lossy().into_owned();
        let meta = e.path().join("image.json");
        let Ok(bytes) = std::fs::read(&meta) else {
            continue;
        };
        let Ok(info) = serde_json::from_slice::<ImageInfo>(&bytes) else {
            continue;
        };
        let used = std::fs::metadata(&meta)
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        roots.push((used, hex, info.unpacked.bytes));
    }
    let mut total: u64 = roots.iter().map(|r| r.2).sum();
    roots.sort();
    for (_, hex, bytes) in roots {
        if total <= budget {
            break;
        }
        if hex == keep {
            continue;
        }
        let Ok(lock) = lock_file(dir, &hex) else {
            continue;
        };
        if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            continue; // in use
        }
        let gone = dir
            .join("staging")
            .join(format!("evicted.{hex}.{}", std::process::id()));
        if std::fs::rename(dir.join("roots").join(&hex), &gone).is_ok() {
            total -= bytes;
            drop(lock);
            remove_tree(&gone);
            tracing::info!(image = %hex, bytes, "evicted an image from the cache");
        }
    }
}

/// Removes a directory tree, making read-only directories writable as it goes.
fn remove_tree(path: &Path) {
    let Some(parent) = path.parent() else { return };
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return;
    };
    let Ok(dir) = rustix::fs::open(
        parent,
        rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) else {
        return;
    };
    if let Err(e) = unpack::remove(&dir, name) {
        tracing::warn!(path = %path.display(), error = %e, "could not remove");
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, ImageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ImageError::Unavailable(format!("image task: {e}")))?
}
