//! The checkout cache: one read-only tree per commit, shared by every job at that commit.
//!
//! An entry is a directory `<mirror>-<sha>.<generation>/` holding
//! - `tree/`: the files of the commit, owned by root and not writable by anyone, with an empty
//!   `.git/` directory as the mount point of the job's git directory;
//! - `git/`: that git directory (`HEAD` = the commit, an index, an empty `objects/` that the
//!   sandbox covers with the mirror's object store);
//! - `git-hooks-*/`: the same with `core.hooksPath` set, for job types that ask for it;
//! - `meta.json`: what the entry is (written last; an entry without it is debris).
//!
//! The cache hands out [`Checkout`]s, counted references. Eviction (least recently used first,
//! down to the size budget) only takes entries nobody holds. A tainted entry (the clean-tree
//! proof failed) leaves the index at once and its directory goes with its last user.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use warden_sandbox::child::ChildLimits;

use crate::RepoError;
use crate::git::Git;
use crate::mirror::MirrorCommit;
use crate::proof::{self, TreeProof};
use crate::tree_fs::{remove_in_background, remove_tree, seal, write_gitdir};

/// What `meta.json` records about an entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    mirror_id: String,
    mirror: PathBuf,
    sha: String,
    tree: String,
    bytes: u64,
    files: u64,
}

pub struct Entry {
    key: String,
    dir: PathBuf,
    meta: Meta,
    users: AtomicUsize,
    last_used: AtomicU64,
    tainted: AtomicBool,
    /// Entries found on disk at start are proven clean before their first use.
    verified: AtomicBool,
    variants: Mutex<()>,
}

impl Entry {
    fn tree(&self) -> PathBuf {
        self.dir.join("tree")
    }

    fn objects(&self) -> PathBuf {
        self.meta.mirror.join("objects")
    }
}

enum Slot {
    Ready(Arc<Entry>),
    Building(watch::Receiver<()>),
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Slot>,
    clock: u64,
}

pub struct CheckoutCache {
    root: PathBuf,
    git: Git,
    budget_bytes: u64,
    state: Mutex<State>,
    /// Entries evicted and not yet reported ([`CheckoutCache::take_evictions`]).
    evictions: AtomicU64,
}

/// How full the cache is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CacheStats {
    pub entries: usize,
    pub bytes: u64,
    pub in_use: usize,
}

/// A job's hold on a cached tree. The tree stays while any `Checkout` of it lives.
pub struct Checkout {
    entry: Arc<Entry>,
    /// The tree was already cached.
    pub hit: bool,
    /// Time to get it (fetch and checkout included on a miss).
    pub took: Duration,
}

impl std::fmt::Debug for Checkout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkout")
            .field("dir", &self.entry.dir)
            .field("sha", &self.entry.meta.sha)
            .field("hit", &self.hit)
            .finish()
    }
}

impl Checkout {
    /// The tree the job runs in (read-only).
    pub fn tree(&self) -> PathBuf {
        self.entry.tree()
    }

    pub fn sha(&self) -> &str {
        &self.entry.meta.sha
    }

    /// The commit's root tree id.
    pub fn tree_id(&self) -> &str {
        &self.entry.meta.tree
    }

    /// The mirror's object store (shown to the job at `/work/.git/objects`).
    pub fn objects(&self) -> PathBuf {
        self.entry.objects()
    }

    /// Size of the tree's files.
    pub fn bytes(&self) -> u64 {
        self.entry.meta.bytes
    }

    pub fn files(&self) -> u64 {
        self.entry.meta.files
    }

    /// The git directory a job sees: `core.hooksPath` set to `hooks_path` when given (made on
    /// first use, then shared).
    pub fn gitdir(&self, hooks_path: Option<&str>) -> Result<PathBuf, RepoError> {
        let Some(hooks) = hooks_path else {
            return Ok(self.entry.dir.join("git"));
        };
        let digest = Sha256::digest(hooks.as_bytes());
        let tag: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        let dir = self.entry.dir.join(format!("git-hooks-{tag}"));
        let _one_at_a_time = self
            .entry
            .variants
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if dir.is_dir() {
            return Ok(dir);
        }
        let tmp = self.entry.dir.join(format!(".git-tmp-{tag}"));
        let _ = std::fs::remove_dir_all(&tmp);
        let made = (|| -> std::io::Result<()> {
            write_gitdir(&tmp, &self.entry.meta.sha, Some(hooks))?;
            std::fs::hard_link(self.entry.dir.join("git/index"), tmp.join("index"))?;
            std::fs::rename(&tmp, &dir)
        })();
        made.map_err(|e| RepoError::Io(format!("git directory with hooksPath: {e}")))?;
        Ok(dir)
    }

    /// Environment for git run on the host against this checkout (the unsandboxed fallback, and
    /// warden's own proof).
    pub fn host_git_env(&self) -> Vec<(String, PathBuf)> {
        host_env(&self.entry)
    }
}

fn host_env(e: &Entry) -> Vec<(String, PathBuf)> {
    vec![
        ("GIT_DIR".into(), e.dir.join("git")),
        ("GIT_WORK_TREE".into(), e.tree()),
        ("GIT_INDEX_FILE".into(), e.dir.join("git/index")),
        ("GIT_OBJECT_DIRECTORY".into(), e.objects()),
    ]
}

impl Drop for Checkout {
    fn drop(&mut self) {
        let left = self.entry.users.fetch_sub(1, Ordering::SeqCst) - 1;
        if left == 0 && self.entry.tainted.load(Ordering::SeqCst) {
            remove_in_background(self.entry.dir.clone());
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

impl CheckoutCache {
    /// Opens the cache at `root`, keeping the complete entries a previous run left (each is
    /// proven clean before its first use) and removing everything else.
    pub fn open(root: impl Into<PathBuf>, git: Git, budget_bytes: u64) -> std::io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        let mut state = State::default();
        let mut found: Vec<(u64, Entry)> = Vec::new();
        for e in std::fs::read_dir(&root)?.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            let meta = std::fs::read(path.join("meta.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<Meta>(&b).ok());
            let usable = !name.starts_with('.')
                && !path.join("tainted").exists()
                && meta
                    .as_ref()
                    .is_some_and(|m| m.mirror.join("objects").is_dir());
            match (usable, meta) {
                (true, Some(meta)) => {
                    let key = format!("{}-{}", meta.mirror_id, meta.sha);
                    let used = e
                        .metadata()
                        .ok()
                        .and_then(|m| m.modified().ok())
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    found.push((
                        used,
                        Entry {
                            key,
                            dir: path,
                            meta,
                            users: AtomicUsize::new(0),
                            last_used: AtomicU64::new(0),
                            tainted: AtomicBool::new(false),
                            verified: AtomicBool::new(false),
                            variants: Mutex::new(()),
                        },
                    ));
                }
                _ => remove_tree(&path)?,
            }
        }
        found.sort_by_key(|(used, _)| *used);
        for (_, entry) in found {
            state.clock += 1;
            entry.last_used.store(state.clock, Ordering::SeqCst);
            if let Some(Slot::Ready(dup)) = state.entries.get(&entry.key) {
                // Two entries for one commit (a crash between build and cleanup): keep one.
                remove_tree(&dup.dir)?;
            }
            state
                .entries
                .insert(entry.key.clone(), Slot::Ready(Arc::new(entry)));
        }
        Ok(CheckoutCache {
            root,
            git,
            budget_bytes,
            state: Mutex::new(state),
            evictions: AtomicU64::new(0),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Entries evicted since the previous call (for the worker's completion telemetry).
    pub fn take_evictions(&self) -> u64 {
        self.evictions.swap(0, Ordering::Relaxed)
    }

    pub fn stats(&self) -> CacheStats {
        let state = self.state();
        let mut s = CacheStats {
            entries: 0,
            bytes: 0,
            in_use: 0,
        };
        for slot in state.entries.values() {
            if let Slot::Ready(e) = slot {
                s.entries += 1;
                s.bytes += e.meta.bytes;
                if e.users.load(Ordering::SeqCst) > 0 {
                    s.in_use += 1;
                }
            }
        }
        s
    }

    /// The cached tree of `sha` from mirror `mirror_id`, without touching the mirror: the warm
    /// path of a job start. `None` when it is not cached (or not yet proven after a restart).
    pub fn cached(&self, mirror_id: &str, sha: &str) -> Option<Checkout> {
        let started = Instant::now();
        let key = format!("{mirror_id}-{sha}");
        let mut state = self.state();
        state.clock += 1;
        let now = state.clock;
        match state.entries.get(&key) {
            Some(Slot::Ready(e)) if e.verified.load(Ordering::SeqCst) => {
                e.users.fetch_add(1, Ordering::SeqCst);
                e.last_used.store(now, Ordering::SeqCst);
                Some(Checkout {
                    entry: e.clone(),
                    hit: true,
                    took: started.elapsed(),
                })
            }
            _ => None,
        }
    }

    /// The tree of `commit`, from the cache or checked out now. Concurrent callers for one
    /// commit share a single checkout.
    pub async fn checkout(&self, commit: &MirrorCommit) -> Result<Checkout, RepoError> {
        let started = Instant::now();
        let key = format!("{}-{}", commit.mirror_id, commit.sha);
        loop {
            enum Next {
                Use(Arc<Entry>),
                Wait(watch::Receiver<()>),
                Build(watch::Sender<()>),
            }
            let next = {
                let mut state = self.state();
                state.clock += 1;
                let now = state.clock;
                match state.entries.get(&key) {
                    Some(Slot::Ready(e)) => {
                        e.users.fetch_add(1, Ordering::SeqCst);
                        e.last_used.store(now, Ordering::SeqCst);
                        Next::Use(e.clone())
                    }
                    Some(Slot::Building(rx)) => Next::Wait(rx.clone()),
                    None => {
                        let (tx, rx) = watch::channel(());
                        state.entries.insert(key.clone(), Slot::Building(rx));
                        Next::Build(tx)
                    }
                }
            };
            match next {
                Next::Use(entry) => {
                    let mut co = Checkout {
                        entry,
                        hit: true,
                        took: Duration::ZERO,
                    };
                    if !co.entry.verified.load(Ordering::SeqCst) {
                        // Left by a previous run: prove it before anyone runs on it.
                        let proof = self.verify(&co).await;
                        if !proof.as_ref().is_ok_and(|p| p.clean) {
                            tracing::warn!(tree = %co.entry.dir.display(), "a cached tree from an earlier run is not clean; checking out again");
                            self.taint(&co);
                            continue;
                        }
                        co.entry.verified.store(true, Ordering::SeqCst);
                    }
                    co.took = started.elapsed();
                    return Ok(co);
                }
                Next::Wait(mut rx) => {
                    // Ends when the builder finishes or gives up (the sender is dropped).
                    let _ = rx.changed().await;
                }
                Next::Build(tx) => {
                    let built = self.build(&key, commit).await;
                    let mut state = self.state();
                    state.clock += 1;
                    let now = state.clock;
                    let result = match built {
                        Ok(entry) => {
                            entry.users.store(1, Ordering::SeqCst);
                            entry.last_used.store(now, Ordering::SeqCst);
                            let entry = Arc::new(entry);
                            state
                                .entries
                                .insert(key.clone(), Slot::Ready(entry.clone()));
                            let evicted = evict(&mut state, self.budget_bytes);
                            drop(state);
                            self.evictions
                                .fetch_add(evicted.len() as u64, Ordering::Relaxed);
                            for dir in evicted {
                                remove_in_background(dir);
                            }
                            Ok(Checkout {
                                entry,
                                hit: false,
                                took: started.elapsed(),
                            })
                        }
                        Err(e) => {
                            state.entries.remove(&key);
                            Err(e)
                        }
                    };
                    drop(tx);
                    return result;
                }
            }
        }
    }

    async fn build(&self, key: &str, commit: &MirrorCommit) -> Result<Entry, RepoError> {
        let gen_ = uuid::Uuid::now_v7().simple().to_string();
        let tmp = self.root.join(format!(".tmp-{gen_}"));
        let dir = self.root.join(format!("{key}.{gen_}"));
        let result = self.build_in(&tmp, commit).await;
        let meta = match result {
            Ok(meta) => meta,
            Err(e) => {
                let t = tmp.clone();
                blocking(move || remove_tree(&t)).await.ok();
                return Err(e);
            }
        };
        let (t, d) = (tmp.clone(), dir.clone());
        blocking(move || std::fs::rename(t, d))
            .await
            .map_err(|e| RepoError::Io(format!("install checkout: {e}")))?;
        Ok(Entry {
            key: key.to_string(),
            dir,
            meta,
            users: AtomicUsize::new(0),
            last_used: AtomicU64::new(0),
            tainted: AtomicBool::new(false),
            verified: AtomicBool::new(true),
            variants: Mutex::new(()),
        })
    }

    async fn build_in(&self, tmp: &Path, commit: &MirrorCommit) -> Result<Meta, RepoError> {
        crate::size::check_tree_size(&self.git, commit, self.budget_bytes).await?;
        let (t, sha) = (tmp.to_path_buf(), commit.sha.clone());
        blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(t.join("tree"))?;
            write_gitdir(&t.join("git"), &sha, None)
        })
        .await
        .map_err(|e| RepoError::Io(format!("checkout directory: {e}")))?;
        let as_root = rustix::process::geteuid().is_root();
        let out = self
            .git
            .command(None)
            .env("GIT_DIR", tmp.join("git"))
            .env("GIT_WORK_TREE", tmp.join("tree"))
            .env("GIT_INDEX_FILE", tmp.join("git/index"))
            .env("GIT_OBJECT_DIRECTORY", commit.mirror.join("objects"))
            .args([
                "-c",
                "checkout.workers=0",
                "-c",
                "checkout.thresholdForParallelism=256",
            ])
            .args(["-c", "core.symlinks=true", "-c", "core.protectNTFS=true"])
            .args(["read-tree", "--reset", "-u"])
            .arg(&commit.sha)
            .timeout(Duration::from_secs(3600))
            // As root every file and directory is created read-only right away (root can still
            // write into a 0555 directory); otherwise the walk below takes the write bits.
            .limits(ChildLimits {
                umask: Some(if as_root { 0o222 } else { 0o022 }),
                // Checked above; and no single file may pass the budget whatever git does.
                file_size_bytes: Some(self.budget_bytes),
            })
            .run()
            .await
            .map_err(|e| RepoError::CheckoutFailed(e.to_string()))?;
        if !out.success() {
            return Err(RepoError::CheckoutFailed(out.stderr_tail()));
        }
        let t = tmp.to_path_buf();
        let (bytes, files) = blocking(move || -> std::io::Result<(u64, u64)> {
            let tree = t.join("tree");
            // The mount point of the job's git directory. git never checks out a `.git`.
            std::fs::create_dir(tree.join(".git"))?;
            seal(&tree, as_root)
        })
        .await
        .map_err(|e| RepoError::CheckoutFailed(format!("seal tree: {e}")))?;
        let meta = Meta {
            mirror_id: commit.mirror_id.clone(),
            mirror: commit.mirror.clone(),
            sha: commit.sha.clone(),
            tree: commit.tree.clone(),
            bytes,
            files,
        };
        let (t, m) = (tmp.to_path_buf(), meta.clone());
        blocking(move || {
            std::fs::write(
                t.join("meta.json"),
                serde_json::to_vec(&m).expect("meta serialises"),
            )
        })
        .await
        .map_err(|e| RepoError::Io(format!("meta.json: {e}")))?;
        Ok(meta)
    }

    /// The clean-tree proof of a checkout (see [`proof`]).
    pub async fn verify(&self, co: &Checkout) -> Result<TreeProof, RepoError> {
        proof::prove(
            &self.git,
            &host_env(&co.entry),
            &co.entry.tree(),
            &co.entry.meta.sha,
            &co.entry.dir.join("git"),
        )
        .await
    }

    /// Takes a tree out of the cache: nobody gets it again, and it is deleted when its last
    /// user lets go (at once if there is none).
    pub fn taint(&self, co: &Checkout) {
        let entry = &co.entry;
        {
            let mut state = self.state();
            if let Some(Slot::Ready(e)) = state.entries.get(&entry.key)
                && Arc::ptr_eq(e, entry)
            {
                state.entries.remove(&entry.key);
            }
        }
        if !entry.tainted.swap(true, Ordering::SeqCst) {
            // Survives a crash: the next start removes it.
            let _ = std::fs::write(entry.dir.join("tainted"), b"");
            tracing::warn!(tree = %entry.dir.display(), "checkout tainted; removed from the cache");
        }
        // `co` itself is a user until it is dropped; its drop removes the directory.
    }
}

/// Least recently used entries nobody holds go until the cache fits its budget.
fn evict(state: &mut State, budget: u64) -> Vec<PathBuf> {
    let mut ready: Vec<Arc<Entry>> = state
        .entries
        .values()
        .filter_map(|s| match s {
            Slot::Ready(e) => Some(e.clone()),
            Slot::Building(_) => None,
        })
        .collect();
    let mut total: u64 = ready.iter().map(|e| e.meta.bytes).sum();
    ready.sort_by_key(|e| e.last_used.load(Ordering::SeqCst));
    let mut gone = Vec::new();
    for e in ready {
        if total <= budget {
            break;
        }
        if e.users.load(Ordering::SeqCst) > 0 {
            continue;
        }
        state.entries.remove(&e.key);
        total -= e.meta.bytes;
        // Not tainted: just gone. Marked so a crash before the removal does not bring it back.
        let _ = std::fs::write(e.dir.join("tainted"), b"");
        gone.push(e.dir.clone());
    }
    gone
}
