//! Every rule about jobs, independent of the wire: HTTP (and later gRPC) handlers only translate.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use warden_api::{ArtifactEntry, ErrorCode, JobTypeView, JobView, SubmitJobRequest};
use warden_core::repo::{Transport, is_full_sha, parse_repo_url};
use warden_core::{Config, JobId, validate_params};
use warden_repo::{Remote, RepoError, Repos};
use warden_sandbox::Isolation;
use warden_store::{
    CancelOutcome, JobRecord, ListFilter, LogStream, NewJob, Store, SubmitOutcome, now_millis,
};
use warden_store_sqlite::SqliteStore;
use warden_worker::{DataDir, Events, Executor, WorkerConfig, WorkerHandle, WorkerPool};

use crate::error::ApiError;

/// The tenant of every job until authentication arrives.
pub const DEFAULT_TENANT: &str = "default";

/// How often a log follower or job watcher looks again without being woken: a worker attached
/// to another replica writes without notifying this one (see the PostgreSQL store's triggers).
pub const FOLLOW_POLL: Duration = Duration::from_millis(250);

pub struct JobService {
    pub store: Arc<dyn Store>,
    pub config: Arc<Config>,
    pub data: DataDir,
    pub events: Events,
    pub repos: Arc<Repos>,
    worker: Option<Arc<WorkerHandle>>,
    /// Jobs run without the kernel sandbox (recorded on each job).
    unsafe_fallback: bool,
    accepting: AtomicBool,
    /// Bumped whenever a job may be waiting (queued here, or on another replica): claims
    /// held open for remote workers look again.
    queued: tokio::sync::watch::Sender<u64>,
    /// Cancelled when the server stops: live log streams end.
    pub shutdown: tokio_util::sync::CancellationToken,
}

fn invalid(code: ErrorCode, message: impl Into<String>) -> ApiError {
    ApiError::new(code, message)
}

/// Treats `""` like an absent optional field: some clients send every field.
fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

pub use warden_core::repo::normalize_repo_url;

/// Formats a timestamp; values beyond year 9999 (which RFC 3339 cannot write) are clamped.
pub fn rfc3339(ms: i64) -> String {
    const MAX_MS: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
    let ms = ms.clamp(0, MAX_MS) as u64;
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

impl JobService {
    pub fn new(
        store: Arc<dyn Store>,
        config: Arc<Config>,
        data: DataDir,
        events: Events,
        repos: Arc<Repos>,
        worker: Option<Arc<WorkerHandle>>,
        unsafe_fallback: bool,
    ) -> JobService {
        JobService {
            unsafe_fallback,
            repos,
            store,
            config,
            data,
            events,
            worker,
            accepting: AtomicBool::new(true),
            queued: tokio::sync::watch::Sender::new(0),
            shutdown: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// The embedded control plane: an in-process worker pool of `config.slots` over the SQLite
    /// store, and the service in front of it.
    pub fn embedded(
        sqlite: Arc<SqliteStore>,
        executor: Arc<dyn Executor>,
        config: Arc<Config>,
        data: DataDir,
        repos: Arc<Repos>,
    ) -> JobService {
        let unsafe_fallback = executor.isolation() == Isolation::UnsafeFallback;
        let events = Events::new();
        let worker = WorkerPool::start(
            sqlite.clone(),
            executor,
            config.clone(),
            data.clone(),
            events.clone(),
            WorkerConfig::from_config(&config),
            repos.clone(),
        );
        JobService::new(
            sqlite,
            config,
            data,
            events,
            repos,
            Some(worker),
            unsafe_fallback,
        )
    }

    /// Stops gracefully: new submissions get 503, running jobs get `grace` to finish before
    /// they are killed and re-queued, then live log streams end.
    pub async fn drain(&self, grace: Duration) {
        self.accepting.store(false, Ordering::SeqCst);
        if let Some(w) = &self.worker {
            w.shutdown(grace).await;
        }
        self.shutdown.cancel();
    }

    /// A job may be waiting: wake the in-process slots and the claims held open for workers.
    pub fn job_queued(&self) {
        self.queued.send_modify(|n| *n = n.wrapping_add(1));
        if let Some(w) = &self.worker {
            w.wake();
        }
    }

    /// Ticks on every [`job_queued`](Self::job_queued).
    pub fn queued_events(&self) -> tokio::sync::watch::Receiver<u64> {
        self.queued.subscribe()
    }

    pub fn parse_id(raw: &str) -> Result<JobId, ApiError> {
        raw.parse().map_err(|e: warden_core::id::InvalidJobId| {
            invalid(ErrorCode::InvalidJobId, e.to_string())
        })
    }

    pub async fn submit(&self, req: SubmitJobRequest) -> Result<(JobRecord, bool), ApiError> {
        if !self.accepting.load(Ordering::SeqCst) {
            return Err(invalid(
                ErrorCode::ShuttingDown,
                "warden is shutting down; retry later",
            ));
        }
        let Some(job_type) = self.config.job_type(&req.job_type) else {
            let known: Vec<&str> = self.config.job_types.keys().map(|k| k.0.as_str()).collect();
            return Err(invalid(
                ErrorCode::UnknownJobType,
                format!(
                    "unknown job_type {:?}; configured job types: {}",
                    req.job_type.chars().take(80).collect::<String>(),
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        };
        validate_params(&req.job_type, job_type, &req.params).map_err(|e| {
            let code = match e {
                warden_core::ParamError::Unknown { .. } => ErrorCode::UnknownParam,
                _ => ErrorCode::InvalidParam,
            };
            invalid(code, e.to_string())
        })?;
        let repo_name = non_empty(req.repo_name);
        let remote_url = non_empty(req.remote_url);
        let mut sha = non_empty(req.sha);
        let git_ref = non_empty(req.git_ref);
        if job_type.requires_repo && repo_name.is_none() {
            return Err(invalid(
                ErrorCode::RepoRequired,
                format!(
                    "job type {:?} needs repo_name (and sha or ref)",
                    req.job_type
                ),
            ));
        }
        if repo_name.is_none() && (remote_url.is_some() || sha.is_some() || git_ref.is_some()) {
            return Err(invalid(
                ErrorCode::InvalidRequest,
                "remote_url, sha and ref need repo_name",
            ));
        }
        let remote = match &repo_name {
            Some(name) => Some(self.check_repo(&req.job_type, job_type, name, &remote_url)?),
            None => None,
        };
        if let Some(s) = &sha
            && !is_full_sha(s)
        {
            return Err(invalid(
                ErrorCode::InvalidRequest,
                format!(
                    "sha must be a full commit id: 40 (SHA-1) or 64 (SHA-256) lowercase hex \
                     digits{}",
                    if s.len() < 40 && !s.is_empty() {
                        "; to run at a branch or tag, send it as \"ref\""
                    } else {
                        ""
                    }
                ),
            ));
        }
        match (&remote, &sha, &git_ref) {
            (Some(_), Some(_), Some(_)) => {
                return Err(invalid(
                    ErrorCode::InvalidRequest,
                    "give sha or ref, not both",
                ));
            }
            (Some(_), None, None) => {
                return Err(invalid(
                    ErrorCode::InvalidRequest,
                    "a job on a repository needs sha (the full commit id) or ref (a branch or \
                     tag, resolved now)",
                ));
            }
            (Some(remote), None, Some(name)) => {
                // Resolved once, here: the job runs at that commit however the ref moves later.
                sha = Some(self.repos.mirrors.resolve_ref(remote, name).await.map_err(
                    |e| match e {
                        RepoError::InvalidRef(m) => invalid(ErrorCode::InvalidRef, m),
                        other => invalid(
                            ErrorCode::RepoUnavailable,
                            format!("could not resolve ref {name:?}: {other}"),
                        ),
                    },
                )?);
            }
            _ => {}
        }
        let idempotency_key = non_empty(req.idempotency_key);
        if let Some(key) = &idempotency_key
            && (key.len() > 255 || key.chars().any(char::is_control))
        {
            return Err(invalid(
                ErrorCode::InvalidRequest,
                "idempotency_key must be at most 255 bytes without control characters",
            ));
        }
        let new = NewJob {
            id: JobId::new(),
            tenant: DEFAULT_TENANT.to_string(),
            job_type: req.job_type,
            repo_name,
            remote_url,
            sha,
            git_ref,
            params: req.params,
            idempotency_key,
            max_attempts: self.config.max_attempts.get() as u32,
            unsafe_fallback: self.unsafe_fallback,
            created_at: now_millis(),
        };
        let outcome = self.store.submit(new).await?;
        let created = matches!(outcome, SubmitOutcome::Created(_));
        if created {
            self.job_queued();
        }
        let job = match outcome {
            SubmitOutcome::Created(j) | SubmitOutcome::Existing(j) => j,
        };
        Ok((job, created))
    }

    /// Checks a submission's repository against the allowlist and the allowed transports, and
    /// returns it as warden will fetch it.
    fn check_repo(
        &self,
        job_type_name: &str,
        job_type: &warden_core::JobType,
        name: &str,
        remote_url: &Option<String>,
    ) -> Result<Remote, ApiError> {
        if name.len() > 200 || name.chars().any(char::is_control) {
            return Err(invalid(
                ErrorCode::InvalidRequest,
                "repo_name must be at most 200 bytes without control characters",
            ));
        }
        match self.config.repos.get(name) {
            Some(repo) => {
                if let Some(url) = remote_url
                    && normalize_repo_url(url) != normalize_repo_url(&repo.url)
                {
                    return Err(invalid(
                        ErrorCode::RepoNotAllowed,
                        format!(
                            "remote_url {url:?} does not match the allowlisted URL of {name:?}"
                        ),
                    ));
                }
                Ok(Remote {
                    url: repo.url.clone(),
                    transport: repo.transport.clone(),
                })
            }
            None if job_type.requires_repo_allowlist => Err(invalid(
                ErrorCode::RepoNotAllowed,
                format!(
                    "repository {name:?} is not in the server's repos allowlist (job type \
                     {job_type_name:?} requires it)"
                ),
            )),
            None => {
                let Some(url) = remote_url else {
                    return Err(invalid(
                        ErrorCode::InvalidRequest,
                        format!(
                            "repository {name:?} is not configured on the server: send its \
                             remote_url"
                        ),
                    ));
                };
                let transport =
                    parse_repo_url(url).map_err(|e| invalid(ErrorCode::RepoNotAllowed, e))?;
                if matches!(transport, Transport::Local(_)) {
                    return Err(invalid(
                        ErrorCode::RepoNotAllowed,
                        "local paths and file:// URLs are allowed only for repositories the \
                         operator configured",
                    ));
                }
                Ok(Remote {
                    url: url.clone(),
                    transport,
                })
            }
        }
    }

    pub async fn get(&self, id: JobId) -> Result<JobRecord, ApiError> {
        Ok(self.store.get(id).await?)
    }

    pub async fn list(&self, filter: ListFilter) -> Result<Vec<JobRecord>, ApiError> {
        Ok(self.store.list(&filter).await?)
    }

    pub async fn cancel(&self, id: JobId) -> Result<JobRecord, ApiError> {
        match self.store.request_cancel(id, now_millis()).await? {
            CancelOutcome::Cancelled(job) => {
                self.events.job_changed(id);
                Ok(job)
            }
            CancelOutcome::Requested(job) => {
                // In-process worker: stop it now rather than at its next heartbeat; a remote
                // worker's session hears of the change and pushes the cancellation.
                if let Some(w) = &self.worker {
                    w.cancel(id);
                }
                self.events.job_changed(id);
                Ok(job)
            }
            CancelOutcome::AlreadyFinished(job) => Err(invalid(
                ErrorCode::JobFinished,
                format!("job {id} already ended as {}", job.status),
            )),
        }
    }

    pub fn job_types(&self) -> Vec<JobTypeView> {
        self.config
            .job_types
            .iter()
            .map(|(name, t)| JobTypeView {
                name: name.0.clone(),
                argv: t.argv.clone(),
                timeout_s: t.timeout_s.get(),
                requires_repo: t.requires_repo,
                allowed_params: t.allowed_params.clone(),
                network: t.network,
            })
            .collect()
    }

    pub fn view(&self, job: &JobRecord) -> JobView {
        JobView {
            job_id: job.id.to_string(),
            tenant: job.tenant.clone(),
            job_type: job.job_type.clone(),
            status: job.status,
            reason: job.reason.clone(),
            repo_name: job.repo_name.clone(),
            remote_url: job.remote_url.clone(),
            sha: job.sha.clone(),
            git_ref: job.git_ref.clone(),
            params: job.params.clone(),
            idempotency_key: job.idempotency_key.clone(),
            invariants: job.invariants.clone(),
            exit_code: job.exit_code,
            signal: job.signal,
            attempts: job.attempts,
            max_attempts: job.max_attempts,
            cancel_requested: job.cancel_requested,
            unsafe_fallback: job.unsafe_fallback,
            warnings: job.warnings.clone(),
            created_at: rfc3339(job.created_at),
            started_at: job.started_at.map(rfc3339),
            finished_at: job.finished_at.map(rfc3339),
            stdout_bytes: job.stdout_bytes,
            stderr_bytes: job.stderr_bytes,
            log_truncated: job.log_truncated,
            resources: job.resources.clone(),
            enforcement: job.enforcement.clone(),
            artifact_dir: self.artifact_dir(job.id),
        }
    }

    pub fn artifact_dir(&self, id: JobId) -> String {
        self.data.artifacts(id).to_string_lossy().into_owned()
    }

    /// The last `tail` lines of a stream and the byte offset where they start.
    pub async fn tail(
        &self,
        job: &JobRecord,
        stream: LogStream,
        tail: usize,
    ) -> Result<(Vec<String>, u64), ApiError> {
        let total = job.log_len(stream);
        let mut window: u64 = 64 * 1024;
        loop {
            let start = total.saturating_sub(window);
            let bytes = self
                .store
                .read_log(job.id, stream, start, (total - start) as usize)
                .await?;
            let newlines = bytes.iter().filter(|b| **b == b'\n').count();
            // Enough lines, the whole stream, or 16 MiB read: stop widening.
            if newlines > tail || start == 0 || window >= 16 << 20 {
                return Ok(last_lines(&bytes, start, tail, start == 0));
            }
            window *= 4;
        }
    }

    /// Lists a job's artifact directory without following links.
    pub async fn artifacts(&self, id: JobId) -> Result<Vec<ArtifactEntry>, ApiError> {
        self.store.get(id).await?;
        let root = self.data.artifacts(id);
        tokio::task::spawn_blocking(move || list_artifacts(&root))
            .await
            .map_err(|e| ApiError::internal("artifact listing task", e))
    }

    /// Opens one artifact for download: a regular file strictly beneath the job's artifact
    /// directory, reached without following any link.
    pub async fn open_artifact(
        &self,
        id: JobId,
        rel: &str,
    ) -> Result<(std::fs::File, u64), ApiError> {
        self.store.get(id).await?;
        let rel = validate_artifact_path(rel)?;
        let root = self.data.artifacts(id);
        tokio::task::spawn_blocking(move || open_beneath(&root, &rel))
            .await
            .map_err(|e| ApiError::internal("artifact open task", e))?
    }
}

/// Splits `bytes` (which start at stream offset `start`) into lines and keeps the last `tail`.
/// When the window did not start at the stream's beginning, its first partial line is dropped.
fn last_lines(bytes: &[u8], start: u64, tail: usize, from_beginning: bool) -> (Vec<String>, u64) {
    let mut body = bytes;
    let mut offset = start;
    if !from_beginning && let Some(pos) = body.iter().position(|b| *b == b'\n') {
        body = &body[pos + 1..];
        offset += pos as u64 + 1;
    }
    let trimmed = body.strip_suffix(b"\n").unwrap_or(body);
    if trimmed.is_empty() && body.is_empty() {
        return (Vec::new(), offset);
    }
    let lines: Vec<&[u8]> = trimmed.split(|b| *b == b'\n').collect();
    let skip = lines.len().saturating_sub(tail);
    for line in &lines[..skip] {
        offset += line.len() as u64 + 1;
    }
    let kept = lines[skip..]
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    (kept, offset)
}

fn validate_artifact_path(rel: &str) -> Result<PathBuf, ApiError> {
    let bad = |why: &str| {
        invalid(
            ErrorCode::InvalidPath,
            format!(
                "artifact path {:?} {why}",
                rel.chars().take(200).collect::<String>()
            ),
        )
    };
    if rel.is_empty() {
        return Err(bad("is empty"));
    }
    if rel.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    let path = Path::new(rel);
    for c in path.components() {
        match c {
            Component::Normal(_) => {}
            Component::ParentDir => return Err(bad("may not contain '..'")),
            Component::RootDir => return Err(bad("must be relative")),
            _ => return Err(bad("is not a plain relative path")),
        }
    }
    Ok(path.to_path_buf())
}

fn open_beneath(root: &Path, rel: &Path) -> Result<(std::fs::File, u64), ApiError> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let not_found = || {
        invalid(
            ErrorCode::ArtifactNotFound,
            format!("no artifact {:?}", rel),
        )
    };
    let dir = match rustix::fs::open(
        root,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(d) => d,
        Err(rustix::io::Errno::NOENT) => return Err(not_found()),
        Err(e) => return Err(ApiError::internal("open artifact dir", e)),
    };
    // NONBLOCK: opening a FIFO the job planted must not hang the server.
    let fd = rustix::fs::openat2(
        &dir,
        rel,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    );
    let fd = match fd {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::NOTDIR) => return Err(not_found()),
        Err(rustix::io::Errno::LOOP) | Err(rustix::io::Errno::XDEV) => {
            return Err(invalid(
                ErrorCode::NotAFile,
                format!(
                    "artifact {rel:?} is or passes through a symbolic link; links are never followed"
                ),
            ));
        }
        Err(e) => return Err(ApiError::internal("open artifact", e)),
    };
    let stat = rustix::fs::fstat(&fd).map_err(|e| ApiError::internal("stat artifact", e))?;
    let kind = rustix::fs::FileType::from_raw_mode(stat.st_mode);
    if kind != rustix::fs::FileType::RegularFile {
        return Err(invalid(
            ErrorCode::NotAFile,
            format!(
                "artifact {rel:?} is not a regular file ({kind:?}); only files can be downloaded"
            ),
        ));
    }
    Ok((std::fs::File::from(fd), stat.st_size as u64))
}

fn list_artifacts(root: &Path) -> Vec<ArtifactEntry> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            let rel = rel.to_string_lossy().into_owned();
            if rel.starts_with(".artifact.json.") {
                continue;
            }
            let ft = meta.file_type();
            let kind = if ft.is_file() {
                "file"
            } else if ft.is_dir() {
                stack.push(path);
                "dir"
            } else if ft.is_symlink() {
                "symlink"
            } else {
                "other"
            };
            out.push(ArtifactEntry {
                path: rel,
                kind: kind.into(),
                size: if ft.is_file() { meta.len() } else { 0 },
            });
            if out.len() >= 10_000 {
                return out;
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_keeps_offsets_exact() {
        let (lines, off) = last_lines(b"a\nbb\nccc\n", 0, 2, true);
        assert_eq!(lines, ["bb", "ccc"]);
        assert_eq!(off, 2);
        let (lines, off) = last_lines(b"a\nbb\nccc", 0, 10, true);
        assert_eq!(lines, ["a", "bb", "ccc"]);
        assert_eq!(off, 0);
        // A window that starts mid-line drops the partial first line.
        let (lines, off) = last_lines(b"tail\nx\ny\n", 100, 5, false);
        assert_eq!(lines, ["x", "y"]);
        assert_eq!(off, 105);
        assert_eq!(last_lines(b"", 0, 5, true), (vec![], 0));
    }

    #[test]
    fn timestamps_beyond_rfc3339_are_clamped_not_a_panic() {
        assert_eq!(rfc3339(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(-5), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn repo_urls_normalise() {
        assert_eq!(
            normalize_repo_url("https://github.com/pallets/click.git/"),
            normalize_repo_url("https://github.com/pallets/click")
        );
        assert_ne!(
            normalize_repo_url("https://a/x"),
            normalize_repo_url("https://a/y")
        );
    }

    #[test]
    fn artifact_paths_are_plain_relative() {
        for bad in ["", "../x", "a/../../b", "/etc/passwd", "a\0b", "./."] {
            assert!(validate_artifact_path(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_artifact_path("out/report.txt").is_ok());
    }
}
