//! Bare mirrors, one per repository URL, that nobody can push from.
//!
//! A mirror is `git clone --bare --no-local` of the remote, with `remote.origin.pushurl` set to
//! `DISABLED` and fetch refspecs for branches and tags only. Fetches into one mirror take turns
//! (a lock per mirror); reads (checkouts, proofs) never wait for them: git only ever adds packs
//! and renames refs into place atomically.

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use warden_core::repo::{Transport, check_ref_name, normalize_repo_url};
use warden_sandbox::child::ChildLimits;

use crate::RepoError;
use crate::git::{Git, GitCommand, GitError, GitOutput};

/// The push URL of every mirror: not a URL git can push to.
pub const PUSH_DISABLED: &str = "DISABLED";

pub use warden_core::repo::Remote;

/// A mirror known to hold a commit.
#[derive(Debug, Clone)]
pub struct MirrorCommit {
    /// The mirror's directory (a bare repository).
    pub mirror: PathBuf,
    /// Its key in the data directory (`<hash>-<name>`).
    pub mirror_id: String,
    pub sha: String,
    /// The commit's root tree id.
    pub tree: String,
    /// Whether a fetch was needed to have it.
    pub fetched: bool,
}

pub struct Mirrors {
    root: PathBuf,
    git: Git,
    fetch_timeout: Duration,
    fetch_max_bytes: u64,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Logins for private https repositories, by secret name ([`Mirrors::set_logins`]).
    logins: std::sync::RwLock<HashMap<String, Arc<Vec<u8>>>>,
}

/// The mirror of `remote`: a remote with a credential never shares a mirror (nor, through its
/// id, checkouts) with one of the same URL without it, so that what was fetched with the
/// operator's login is only ever served to jobs of the repository that has it.
pub fn remote_mirror_id(remote: &Remote) -> String {
    let id = mirror_id(&remote.url);
    match &remote.credential {
        None => id,
        Some(c) => {
            let digest = Sha256::digest(format!("{}\0{}", c.username, c.secret).as_bytes());
            let tag: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
            format!("{id}.login-{tag}")
        }
    }
}

/// The directory name of a URL's mirror: a hash of the normalised URL (so any URL is a safe
/// name), then a readable tail.
pub fn mirror_id(url: &str) -> String {
    let norm = normalize_repo_url(url);
    let digest = Sha256::digest(norm.as_bytes());
    let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let tail: String = norm
        .rsplit(['/', ':'])
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(40)
        .collect();
    let tail = tail.trim_start_matches('.');
    if tail.is_empty() {
        hash
    } else {
        format!("{hash}-{tail}")
    }
}

fn fetch_error(e: GitError, timeout: Duration) -> RepoError {
    match e {
        GitError::Timeout(_) => RepoError::FetchTimeout(timeout.as_secs()),
        GitError::Spawn(e) => RepoError::Io(format!("start git: {e}")),
    }
}

impl Mirrors {
    pub fn new(
        root: impl Into<PathBuf>,
        git: Git,
        fetch_timeout: Duration,
        fetch_max_bytes: u64,
    ) -> std::io::Result<Mirrors> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        // Half-made clones of a previous run.
        if let Ok(entries) = std::fs::read_dir(&root) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(".tmp-") {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Ok(Mirrors {
            root,
            git,
            fetch_timeout,
            fetch_max_bytes,
            locks: Mutex::new(HashMap::new()),
            logins: Default::default(),
        })
    }

    /// The logins private repositories fetch with: for each `(repository, username, secret
    /// name, value)`. A value git's credential protocol cannot carry is refused, naming the
    /// repository and the secret.
    pub fn set_logins<'a>(
        &self,
        logins: impl IntoIterator<Item = (&'a str, &'a str, &'a str, &'a [u8])>,
    ) -> Result<(), String> {
        let mut map = HashMap::new();
        for (repo, username, secret, value) in logins {
            let lines = crate::git::credential_lines(username, value).map_err(|e| {
                format!("repos.{repo}.credential: secret {secret} cannot be a git login: {e}")
            })?;
            map.insert(format!("{username}\0{secret}"), Arc::new(lines));
        }
        *self.logins.write().unwrap_or_else(|p| p.into_inner()) = map;
        Ok(())
    }

    /// A git command that may reach `remote`: only over its transport, with its CA and login.
    fn remote_command(&self, remote: &Remote) -> Result<GitCommand, RepoError> {
        let mut cmd = self.git.command(Some(remote.transport.git_protocol()));
        if let Some(ca) = &remote.ca_file {
            cmd = cmd
                .arg("-c")
                .arg(format!("http.sslCAInfo={}", ca.display()));
        }
        if let Some(c) = &remote.credential {
            let key = format!("{}\0{}", c.username, c.secret);
            let lines = self
                .logins
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
                .cloned()
                .ok_or_else(|| {
                    RepoError::FetchFailed(format!(
                        "{} logs in with secret {}, which this host does not have (define it \
                         under secrets: in this host's configuration)",
                        remote.url, c.secret
                    ))
                })?;
            let origin = https_origin(&remote.url).ok_or_else(|| {
                RepoError::FetchFailed(format!("{} is not an https URL", remote.url))
            })?;
            cmd = cmd.credential(&origin, lines.to_vec());
        }
        Ok(cmd)
    }

    pub fn git(&self) -> &Git {
        &self.git
    }

    pub fn path(&self, url: &str) -> PathBuf {
        self.root.join(mirror_id(url))
    }

    /// The directory every mirror is under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn lock_for(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(id.to_string()).or_default().clone()
    }

    /// The commit's tree id if the mirror has `sha` as a commit.
    async fn commit_tree(&self, mirror: &Path, sha: &str) -> Result<Option<String>, RepoError> {
        if !mirror.join("HEAD").is_file() {
            return Ok(None);
        }
        let out = self
            .git
            .command(None)
            .git_dir(mirror)
            .args(["cat-file", "commit", sha])
            .run()
            .await
            .map_err(|e| RepoError::Io(e.to_string()))?;
        if !out.success() {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let tree = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("tree "))
            .map(str::to_string);
        Ok(tree)
    }

    /// Makes sure the mirror of `remote` holds commit `sha`, cloning or fetching as needed.
    /// A commit the remote does not have is `invalid_ref`.
    pub async fn ensure_commit(
        &self,
        remote: &Remote,
        sha: &str,
    ) -> Result<MirrorCommit, RepoError> {
        let id = remote_mirror_id(remote);
        let mirror = self.root.join(&id);
        crate::unused::mark_used(&mirror);
        let found = |tree: String, fetched: bool| MirrorCommit {
            mirror: mirror.clone(),
            mirror_id: id.clone(),
            sha: sha.to_string(),
            tree,
            fetched,
        };
        if let Some(tree) = self.commit_tree(&mirror, sha).await? {
            return Ok(found(tree, false));
        }
        let lock = self.lock_for(&id);
        let _turn = lock.lock().await;
        // Someone else may have fetched it while we waited.
        if let Some(tree) = self.commit_tree(&mirror, sha).await? {
            return Ok(found(tree, false));
        }
        if mirror.join("HEAD").is_file() {
            self.fetch(&mirror, remote, None).await?;
        } else {
            self.clone_mirror(&mirror, remote, sha.len()).await?;
        }
        if let Some(tree) = self.commit_tree(&mirror, sha).await? {
            return Ok(found(tree, true));
        }
        // Not on any branch or tag: servers that allow it serve a commit asked for by id.
        if self.fetch(&mirror, remote, Some(sha)).await.is_ok()
            && let Some(tree) = self.commit_tree(&mirror, sha).await?
        {
            return Ok(found(tree, true));
        }
        Err(RepoError::InvalidRef(format!(
            "commit {sha} is not in {} (not on any branch or tag, and the server would not \
             serve it by id)",
            remote.url
        )))
    }

    fn fetch_limits(&self) -> ChildLimits {
        ChildLimits {
            umask: Some(0o022),
            // git writes what it receives as one pack file (unpackLimit=1): capping the size of
            // any file it writes caps the fetch.
            file_size_bytes: Some(self.fetch_max_bytes),
        }
    }

    fn classify(&self, mirror: &Path, out: GitOutput, what: &str) -> Result<(), RepoError> {
        if out.success() {
            return Ok(());
        }
        // index-pack dies of SIGXFSZ at the cap, and fetch only says its output was invalid: the
        // evidence is the temporary pack it left, as large as the cap. Leftovers go either way.
        let mut hit_cap = out.status.signal() == Some(rustix::process::Signal::XFSZ.as_raw());
        if let Ok(entries) = std::fs::read_dir(mirror.join("objects/pack")) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with("tmp_") {
                    if e.metadata().is_ok_and(|m| m.len() >= self.fetch_max_bytes) {
                        hit_cap = true;
                    }
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        if hit_cap {
            return Err(RepoError::FetchTooLarge(self.fetch_max_bytes >> 20));
        }
        Err(RepoError::FetchFailed(format!(
            "{what}: {}",
            out.stderr_tail()
        )))
    }

    async fn clone_mirror(
        &self,
        mirror: &Path,
        remote: &Remote,
        sha_len: usize,
    ) -> Result<(), RepoError> {
        let tmp = self
            .root
            .join(format!(".tmp-{}", uuid::Uuid::now_v7().simple()));
        // No template: no sample hooks, nothing but what git needs.
        let mut init = self
            .git
            .command(None)
            .args(["init", "--bare", "--quiet", "--template="]);
        if sha_len == 64 {
            init = init.arg("--object-format=sha256");
        }
        let out = init
            .arg("--")
            .arg(&tmp)
            .run()
            .await
            .map_err(|e| RepoError::Io(e.to_string()))?;
        if !out.success() {
            let _ = tokio::fs::remove_dir_all(&tmp).await;
            return Err(RepoError::Io(format!("init mirror: {}", out.stderr_tail())));
        }
        for (key, value, add) in [
            ("remote.origin.url", remote.url.as_str(), false),
            ("remote.origin.pushurl", PUSH_DISABLED, false),
            ("remote.origin.fetch", "+refs/heads/*:refs/heads/*", false),
            ("remote.origin.fetch", "+refs/tags/*:refs/tags/*", true),
            ("remote.origin.tagOpt", "--no-tags", false),
            ("core.logAllRefUpdates", "false", false),
            ("gc.auto", "0", false),
        ] {
            let mut cmd = self.git.command(None).git_dir(&tmp).arg("config");
            if add {
                cmd = cmd.arg("--add");
            }
            let out = cmd
                .arg(key)
                .arg(value)
                .run()
                .await
                .map_err(|e| RepoError::Io(e.to_string()))?;
            if !out.success() {
                let _ = tokio::fs::remove_dir_all(&tmp).await;
                return Err(RepoError::Io(format!(
                    "configure mirror: {}",
                    out.stderr_tail()
                )));
            }
        }
        let fetched = self.fetch(&tmp, remote, None).await;
        if let Err(e) = fetched {
            let _ = tokio::fs::remove_dir_all(&tmp).await;
            return Err(e);
        }
        tokio::fs::rename(&tmp, mirror)
            .await
            .map_err(|e| RepoError::Io(format!("install mirror: {e}")))
    }

    async fn fetch(
        &self,
        mirror: &Path,
        remote: &Remote,
        sha: Option<&str>,
    ) -> Result<(), RepoError> {
        // The URL is given on the command line (as a file:// URL for local repositories, so that
        // git's transport and GIT_ALLOW_PROTOCOL apply), with the mirror's refspecs.
        let mut cmd = self
            .remote_command(remote)?
            .git_dir(mirror)
            .args(["-c", "fetch.unpackLimit=1", "-c", "transfer.unpackLimit=1"])
            .args(["fetch", "--quiet", "--no-write-fetch-head", "--no-auto-gc"])
            .args(["--no-recurse-submodules", "--no-tags"]);
        cmd = match sha {
            // An explicit id: keep it reachable under a warden-owned ref.
            Some(sha) => cmd
                .arg("--")
                .arg(git_url(remote))
                .arg(format!("+{sha}:refs/warden/pinned/{sha}")),
            None => cmd
                .args(["--prune", "--"])
                .arg(git_url(remote))
                .args(["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"]),
        };
        let out = cmd
            .timeout(self.fetch_timeout)
            .limits(self.fetch_limits())
            .run()
            .await
            .map_err(|e| fetch_error(e, self.fetch_timeout))?;
        self.classify(mirror, out, "fetch")
    }

    /// Resolves a ref of the remote (`main`, `v1.0`, `refs/heads/x`, `HEAD`) to a full commit id
    /// by asking the remote (`git ls-remote`). Short names try tags, then branches, as git does;
    /// a name that is both, at different commits, is refused as ambiguous.
    pub async fn resolve_ref(&self, remote: &Remote, name: &str) -> Result<String, RepoError> {
        check_ref_name(name).map_err(|e| RepoError::InvalidRef(e.0))?;
        let candidates: Vec<String> = if name == "HEAD" || name.starts_with("refs/") {
            vec![name.to_string()]
        } else {
            vec![format!("refs/tags/{name}"), format!("refs/heads/{name}")]
        };
        // No patterns: a pattern would hide the peeled `^{}` line of an annotated tag.
        let mut cmd = self.remote_command(remote)?.args(["ls-remote", "--quiet"]);
        if candidates.len() > 1 {
            cmd = cmd.args(["--heads", "--tags"]);
        }
        let out = cmd
            .arg("--")
            .arg(git_url(remote))
            .timeout(self.fetch_timeout.min(Duration::from_secs(60)))
            .run()
            .await
            .map_err(|e| fetch_error(e, self.fetch_timeout.min(Duration::from_secs(60))))?;
        if !out.success() {
            return Err(RepoError::FetchFailed(format!(
                "ls-remote: {}",
                out.stderr_tail()
            )));
        }
        let listing = String::from_utf8_lossy(&out.stdout);
        let mut found: Vec<(String, String)> = Vec::new();
        for candidate in &candidates {
            let exact = listing.lines().find_map(|l| {
                let (sha, r) = l.split_once('\t')?;
                (r == candidate).then(|| sha.to_string())
            });
            // An annotated tag: the commit is the peeled value.
            let peeled = listing.lines().find_map(|l| {
                let (sha, r) = l.split_once('\t')?;
                (r == format!("{candidate}^{{}}")).then(|| sha.to_string())
            });
            if let Some(sha) = peeled.or(exact) {
                found.push((candidate.clone(), sha));
            }
        }
        match found.as_slice() {
            [] => Err(RepoError::InvalidRef(format!(
                "ref {name:?} is not a branch or tag of {}",
                remote.url
            ))),
            [(_, sha)] => Ok(sha.clone()),
            [(a, sa), (b, sb), ..] if sa != sb => Err(RepoError::InvalidRef(format!(
                "ref {name:?} is ambiguous in {}: {a} and {b} point at different commits; \
                 name one of them in full",
                remote.url
            ))),
            [(_, sha), ..] => Ok(sha.clone()),
        }
    }
}

/// `https://host[:port]` of an https URL: what a credential helper is scoped to.
fn https_origin(url: &str) -> Option<String> {
    let rest = url.strip_prefix("https://")?;
    let authority = rest.split('/').next().filter(|a| !a.is_empty())?;
    Some(format!("https://{authority}"))
}

/// The URL git is given. Local paths go as `file://` URLs so that git uses its transport (and
/// `GIT_ALLOW_PROTOCOL=file` applies) instead of reading the other repository's files directly.
fn git_url(remote: &Remote) -> String {
    match &remote.transport {
        Transport::Local(p) => format!("file://{}", p.display()),
        _ => remote.url.clone(),
    }
}
