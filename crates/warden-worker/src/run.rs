//! One job, from claim to completion.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio_util::sync::CancellationToken;
use warden_api::{Invariants, JobStatus, ResourceUsage};
use warden_core::repo::parse_repo_url;
use warden_core::{JobType, Limits};
use warden_repo::{Checkout, Remote, RepoError};
use warden_sandbox::{
    Bind, ExitReport, GitMounts, Isolation, KilledBy, Rlimits, SANDBOX_ARTIFACTS, SANDBOX_WORK,
    SandboxSpec, SpawnSpec,
};
use warden_store::{Claimed, Completion, JobRecord, Lease, LogStream, StoreError, now_millis};

use crate::artifact::{ArtifactJson, CheckoutSummary, LogSummary, Timings, write_artifact_json};
use crate::pool::Shared;

/// Signals the pool can send to a running job.
#[derive(Clone, Default)]
pub(crate) struct JobSignals {
    /// The caller cancelled it: SIGTERM, grace, SIGKILL; ends `cancelled`.
    pub cancel: CancellationToken,
    /// warden is stopping and the grace period is over: kill it and give it back to the queue.
    pub shutdown: CancellationToken,
}

/// Filesystem work runs on the blocking pool: it must never stall the runtime's few threads
/// (an fsync on a worker thread stalls every request that thread serves).
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// What the run left for the record, when the job got as far as running.
#[derive(Clone)]
struct ExecInfo {
    report: Option<ExitReport>,
    limits: BTreeMap<String, String>,
    log_bytes: (u64, u64),
}

/// What to tell the coordinator at the end. (One per job, moved a few times: its size does
/// not matter.)
#[allow(clippy::large_enum_variant)]
enum Outcome {
    Complete(Completion),
    /// Back to the queue (shutdown): the attempt does not count.
    Release,
    /// The lease was lost: someone else owns the job now; say nothing.
    Abandon,
}

fn refuse(reason: impl Into<String>) -> Outcome {
    Outcome::Complete(Completion {
        status: Some(JobStatus::Error),
        reason: Some(reason.into()),
        ..Completion::default()
    })
}

/// The repository a job runs on, as this worker reaches it. `Err` is the refusal reason.
fn job_remote(shared: &Shared, job: &JobRecord) -> Option<Result<(Remote, String), String>> {
    let name = job.repo_name.as_ref()?;
    Some((|| {
        // The configured URL wins: the operator's allowlist is the truth, not the submission.
        let url = match (shared.config.repos.get(name), &job.remote_url) {
            (Some(repo), _) => repo.url.clone(),
            (None, Some(url)) => url.clone(),
            (None, None) => {
                return Err(format!(
                    "repo_not_allowed: repository {name:?} is no longer configured"
                ));
            }
        };
        let transport = parse_repo_url(&url).map_err(|e| format!("repo_not_allowed: {e}"))?;
        if matches!(transport, warden_core::repo::Transport::Local(_))
            && !shared.config.repos.contains_key(name)
        {
            return Err("repo_not_allowed: local repositories must be configured".into());
        }
        let sha = job
            .sha
            .clone()
            .ok_or_else(|| "invalid_ref: the job names a repository but no commit".to_string())?;
        Ok((Remote { url, transport }, sha))
    })())
}

/// How waiting for something before the job starts ended.
#[allow(clippy::large_enum_variant)]
enum Waited<T> {
    Done(T),
    Stopped(Outcome),
}

/// Waits for `work` (a fetch and checkout, which can take minutes) while keeping the lease
/// alive and answering cancellation and shutdown.
async fn under_lease<T>(
    shared: &Shared,
    lease: &Lease,
    signals: &JobSignals,
    work: impl std::future::Future<Output = T>,
) -> Waited<T> {
    tokio::pin!(work);
    let mut heartbeat = tokio::time::interval(shared.worker.heartbeat_every());
    heartbeat.tick().await;
    loop {
        tokio::select! {
            done = &mut work => return Waited::Done(done),
            _ = heartbeat.tick() => {
                match shared.coordinator.heartbeat(lease, shared.worker.lease_ms, now_millis()).await {
                    Ok(reply) if reply.cancel_requested => signals.cancel.cancel(),
                    Ok(_) => {}
                    Err(StoreError::LeaseLost(_)) => return Waited::Stopped(Outcome::Abandon),
                    Err(e) => tracing::warn!(job = %lease.job_id, error = %e, "heartbeat failed"),
                }
            }
            _ = signals.cancel.cancelled() => {
                return Waited::Stopped(Outcome::Complete(Completion {
                    status: Some(JobStatus::Cancelled),
                    reason: Some("cancelled".into()),
                    ..Completion::default()
                }));
            }
            _ = signals.shutdown.cancelled() => return Waited::Stopped(Outcome::Release),
        }
    }
}

pub(crate) async fn run_job(shared: &Shared, claimed: Claimed, signals: JobSignals) {
    let Claimed { job, lease } = claimed;
    let started_ms = job.started_at.unwrap_or_else(now_millis);
    // The repository first: fetched and checked out (or found in the cache) under the lease.
    let checkout: Result<Option<Arc<Checkout>>, Outcome> = match job_remote(shared, &job) {
        None => Ok(None),
        Some(Err(reason)) => Err(refuse(reason)),
        Some(Ok((remote, sha))) => {
            match under_lease(
                shared,
                &lease,
                &signals,
                shared.repos.checkout(&remote, &sha),
            )
            .await
            {
                Waited::Done(Ok(co)) => {
                    tracing::info!(job = %job.id, hit = co.hit, took_ms = co.took.as_millis() as u64, "worktree ready");
                    Ok(Some(Arc::new(co)))
                }
                Waited::Done(Err(e)) => Err(refuse(e.to_string())),
                Waited::Stopped(outcome) => Err(outcome),
            }
        }
    };
    let (mut outcome, info, checkout) = match checkout {
        Err(outcome) => (outcome, None, None),
        Ok(checkout) => {
            let preparing = (shared.clone(), job.clone(), checkout.clone());
            match blocking(move || prepare(&preparing.0, &preparing.1, preparing.2.as_deref()))
                .await
            {
                Err(reason) => (refuse(reason), None, checkout),
                Ok(prepared) => {
                    let (outcome, info) = execute(shared, &job, &lease, prepared, &signals).await;
                    (outcome, Some(info), checkout)
                }
            }
        }
    };
    // The proof: whatever the job did or how it ended, the tree it saw must still be the commit.
    let invariants = match &checkout {
        Some(co) if info.is_some() => Some(prove(shared, &job, co, &mut outcome).await),
        Some(co) => Some(Invariants {
            read_only_ok: None,
            clean_tree_ok: None,
            tree: Some(co.tree_id().to_string()),
            ..Invariants::default()
        }),
        None => None,
    };
    if let Outcome::Complete(done) = &mut outcome {
        done.invariants = invariants.clone();
    }
    let checkout_summary = checkout.as_ref().map(|co| CheckoutSummary {
        cache_hit: co.hit,
        ms: co.took.as_millis() as u64,
        files: co.files(),
        bytes: co.bytes(),
    });
    let id = job.id;
    // Scratch space goes before the end is recorded: whoever sees the job finished sees it clean.
    let scratch = shared.data.scratch(id);
    blocking(move || {
        let _ = std::fs::remove_dir_all(scratch);
    })
    .await;
    match outcome {
        Outcome::Abandon => {
            tracing::warn!(job = %id, "lease lost; another worker owns the job now");
        }
        Outcome::Release => {
            if let Err(e) = shared.coordinator.release(&lease).await {
                tracing::warn!(job = %id, error = %e, "could not give the job back to the queue");
            } else {
                tracing::info!(job = %id, "job re-queued at shutdown");
            }
        }
        Outcome::Complete(mut done) => {
            let finished_ms = now_millis();
            done.resources = info
                .as_ref()
                .and_then(|i| i.report.as_ref())
                .map(|r| ResourceUsage {
                    wall_ms: r.wall_ms,
                    user_cpu_ms: r.user_cpu_ms,
                    system_cpu_ms: r.system_cpu_ms,
                    max_rss_kb: r.max_rss_kb,
                    peak_memory_bytes: r.peak_memory_bytes,
                });
            let writing = (shared.clone(), job.clone(), done.clone(), info.clone());
            let written = blocking(move || {
                let (shared, job, done, info) = writing;
                let artifact_dir = shared.data.artifacts(job.id);
                if !artifact_dir.is_dir() {
                    return Ok(());
                }
                let mut record =
                    artifact_record(&shared, &job, &done, started_ms, finished_ms, info.as_ref());
                record.checkout = checkout_summary;
                write_artifact_json(&artifact_dir, &record)
            })
            .await;
            if let Err(e) = written {
                tracing::error!(job = %id, error = %e, "could not write artifact.json");
                done.warnings.push("ARTIFACT_JSON_WRITE_FAILED".into());
            }
            match shared.coordinator.complete(&lease, done, finished_ms).await {
                Ok(rec) => tracing::info!(job = %id, status = %rec.status, "job finished"),
                Err(StoreError::LeaseLost(_)) => {
                    tracing::warn!(job = %id, "lease lost before completion was recorded")
                }
                Err(e) => tracing::error!(job = %id, error = %e, "could not record completion"),
            }
        }
    }
    // The job's hold on its tree ends here (a tainted tree is deleted with its last user).
    drop(checkout);
    shared.events.job_changed(id);
}

/// Runs the clean-tree proof after a job, records it, and turns any difference into
/// `mutation_detected` (and a proof that cannot be made into `error`): fail closed.
async fn prove(
    shared: &Shared,
    job: &JobRecord,
    co: &Checkout,
    outcome: &mut Outcome,
) -> Invariants {
    let read_only_ok = shared.executor.isolation() == Isolation::Sandbox;
    let mut inv = Invariants {
        // Sandboxed, the worktree is a read-only bind checked from inside before the job starts
        // (setup fails otherwise); unsandboxed, nothing stops the job writing.
        read_only_ok: Some(read_only_ok),
        clean_tree_ok: None,
        tree: Some(co.tree_id().to_string()),
        ..Invariants::default()
    };
    let verdict: Option<(JobStatus, String)> = match shared.repos.cache.verify(co).await {
        Ok(proof) if proof.clean => {
            inv.clean_tree_ok = Some(true);
            None
        }
        Ok(proof) => {
            inv.clean_tree_ok = Some(false);
            inv.changed_count = proof.changed_count as u64;
            inv.changed_paths = proof.changed.clone();
            shared.repos.cache.taint(co);
            let shown: Vec<String> = proof
                .changed
                .iter()
                .take(5)
                .map(|p| format!("{p:?}"))
                .collect();
            tracing::error!(job = %job.id, changed = proof.changed_count, "worktree mutated");
            Some((
                JobStatus::MutationDetected,
                format!(
                    "mutation_detected: {} path(s) differ from commit {}: {}{}",
                    proof.changed_count,
                    co.sha(),
                    shown.join(", "),
                    if proof.changed_count > shown.len() {
                        ", ..."
                    } else {
                        ""
                    }
                ),
            ))
        }
        Err(e) => {
            shared.repos.cache.taint(co);
            tracing::error!(job = %job.id, error = %e, "clean-tree proof failed");
            Some((JobStatus::Error, e.to_string()))
        }
    };
    if let (Some((status, reason)), Outcome::Complete(done)) = (verdict, &mut *outcome) {
        done.status = Some(status);
        done.reason = Some(reason);
    }
    inv
}

struct Prepared {
    spec: SpawnSpec,
    job_type: JobType,
}

/// Checks the job may run here and lays out its directories. An `Err` is the refusal reason.
fn prepare(
    shared: &Shared,
    job: &JobRecord,
    checkout: Option<&Checkout>,
) -> Result<Prepared, String> {
    let Some(job_type) = shared.config.job_type(&job.job_type).cloned() else {
        return Err(format!(
            "unknown_job_type: {:?} is no longer configured",
            job.job_type
        ));
    };
    if job_type.requires_repo && checkout.is_none() {
        // Fail closed: a repository job never runs without its pinned, read-only worktree.
        return Err("repo_required: the job has no repository to run on".into());
    }
    let gitdir = match checkout {
        Some(co) => Some(
            co.gitdir(job_type.hooks_path.as_deref())
                .map_err(|e: RepoError| e.to_string())?,
        ),
        None => None,
    };
    if shared.executor.isolation() == Isolation::UnsafeFallback && !shared.config.unsafe_fallback {
        return Err(
            "sandbox_unavailable: the kernel sandbox is not available in this build and \
                    unsafe_fallback is not enabled"
                .into(),
        );
    }
    let artifacts = shared.data.artifacts(job.id);
    let scratch = shared.data.scratch(job.id);
    let isolation = shared.executor.isolation();
    let sandboxed = isolation == Isolation::Sandbox;
    // A sandboxed job keeps HOME and TMPDIR in its own tmpfs, mounts its root on the shared
    // (always empty) mount point inside its private mount namespace, and sees the shared empty
    // read-only worktree: no per-job directories on the host but its artifacts. (Creating and
    // deleting directories per job was a third of the server's CPU time on ext4.)
    let (home, tmp) = (scratch.join("home"), scratch.join("tmp"));
    let (root, mut work) = if sandboxed {
        (shared.data.sandbox_root(), shared.data.sandbox_work())
    } else {
        (scratch.join("root"), scratch.join("work"))
    };
    if let Some(co) = checkout {
        work = co.tree();
    }
    let setup = || -> std::io::Result<()> {
        // A re-run after a lost worker starts from an empty artifact directory.
        if artifacts.exists() {
            std::fs::remove_dir_all(&artifacts)?;
        }
        if scratch.exists() {
            std::fs::remove_dir_all(&scratch)?;
        }
        std::fs::create_dir_all(&artifacts)?;
        if !sandboxed {
            for dir in [&home, &tmp] {
                std::fs::create_dir_all(dir)?;
            }
            if checkout.is_none() {
                std::fs::create_dir_all(&work)?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o555))?;
            }
        }
        if sandboxed {
            // The job's uid 1000 is this host uid: it owns its artifact directory, nothing else.
            std::os::unix::fs::chown(
                &artifacts,
                Some(shared.config.sandbox_uid),
                Some(shared.config.sandbox_gid),
            )?;
        }
        Ok(())
    };
    setup().map_err(|e| format!("sandbox_setup_failed: directories: {e}"))?;

    let mut env: BTreeMap<String, String> = job.params.clone();
    env.insert("WARDEN_JOB_ID".into(), job.id.to_string());
    env.insert("WARDEN_ATTEMPT".into(), job.attempts.to_string());
    env.insert("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into());
    if let Some(co) = checkout {
        env.insert("WARDEN_SHA".into(), co.sha().to_string());
        if let Some(name) = &job.repo_name {
            env.insert("WARDEN_REPO".into(), name.clone());
        }
        if sandboxed {
            // The worktree and its git directory belong to a uid the job does not have: tell
            // git that this one repository is fine to read.
            env.insert("GIT_CONFIG_COUNT".into(), "1".into());
            env.insert("GIT_CONFIG_KEY_0".into(), "safe.directory".into());
            env.insert("GIT_CONFIG_VALUE_0".into(), SANDBOX_WORK.into());
        } else if let Some(gitdir) = &gitdir {
            let mut host = co.host_git_env();
            host.retain(|(k, _)| k != "GIT_INDEX_FILE" && k != "GIT_DIR");
            env.insert("GIT_DIR".into(), path_str(gitdir));
            env.insert("GIT_INDEX_FILE".into(), path_str(&gitdir.join("index")));
            for (k, v) in host {
                env.insert(k, path_str(&v));
            }
        }
    }
    if sandboxed {
        env.insert("ARTIFACT_DIR".into(), SANDBOX_ARTIFACTS.into());
        env.insert("HOME".into(), "/tmp/home".into());
        env.insert("TMPDIR".into(), "/tmp".into());
    } else {
        env.insert("ARTIFACT_DIR".into(), path_str(&artifacts));
        env.insert("HOME".into(), path_str(&home));
        env.insert("TMPDIR".into(), path_str(&tmp));
    }
    let limits = &job_type.limits;
    let sandbox = sandboxed.then(|| SandboxSpec {
        root: root.clone(),
        work: work.clone(),
        git: match (checkout, &gitdir) {
            (Some(co), Some(dir)) => Some(GitMounts {
                dir: dir.clone(),
                objects: co.objects(),
            }),
            _ => None,
        },
        artifacts: artifacts.clone(),
        etc: shared.data.sandbox_etc(),
        rootfs: job_type.rootfs.clone(),
        binds: job_type
            .binds
            .iter()
            .map(|b| Bind {
                host: b.host.clone(),
                at: b.at.clone(),
            })
            .collect(),
        network: job_type.network,
        uid: shared.config.sandbox_uid,
        gid: shared.config.sandbox_gid,
        memory_bytes: limits.memory_mb.map(|m| m.get().saturating_mul(1 << 20)),
        pids: limits.pids.map(|p| p.get()),
        tmpfs_bytes: limits.tmpfs_mb.map(|m| m.get()).unwrap_or(DEFAULT_TMPFS_MB) << 20,
        cgroup_name: job.id.to_string(),
    });
    let spec = SpawnSpec {
        sandbox,
        argv: job_type.argv.clone(),
        env,
        cwd: if sandboxed {
            PathBuf::from(SANDBOX_WORK)
        } else {
            work
        },
        timeout_ms: job_type.timeout_s.get().saturating_mul(1000),
        rlimits: Rlimits {
            cpu_s: limits.cpu_s.map(|p| p.get()),
            file_size_bytes: limits.file_size_mb.map(|p| p.get().saturating_mul(1 << 20)),
            open_files: limits.open_files.map(|p| p.get()),
        },
        isolation: shared.executor.isolation(),
    };
    Ok(Prepared { spec, job_type })
}

/// Size of `/tmp` (and `/dev/shm`) when the job type does not say.
const DEFAULT_TMPFS_MB: u64 = 256;

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Which mechanism enforces each limit under the given isolation, for the record.
fn limit_enforcement(limits: &Limits, isolation: Isolation) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("wall_time".into(), "supervisor".into());
    m.insert("output_bytes".into(), "worker".into());
    m.insert("core_dumps".into(), "rlimit (off)".into());
    let rl = |on: bool| if on { "rlimit" } else { "not set" }.to_string();
    m.insert("cpu_time".into(), rl(limits.cpu_s.is_some()));
    m.insert("file_size".into(), rl(limits.file_size_mb.is_some()));
    m.insert("open_files".into(), rl(limits.open_files.is_some()));
    match isolation {
        Isolation::Sandbox => {}
        Isolation::UnsafeFallback => {
            for (name, set) in [
                ("memory", limits.memory_mb.is_some()),
                ("pids", limits.pids.is_some()),
                ("tmpfs", limits.tmpfs_mb.is_some()),
            ] {
                if set {
                    m.insert(
                        name.into(),
                        "not enforced (unsafe_fallback: no sandbox)".into(),
                    );
                }
            }
        }
    }
    m
}

async fn execute(
    shared: &Shared,
    job: &JobRecord,
    lease: &Lease,
    prepared: Prepared,
    signals: &JobSignals,
) -> (Outcome, ExecInfo) {
    let Prepared { spec, job_type } = prepared;
    let mut info = ExecInfo {
        report: None,
        limits: limit_enforcement(&job_type.limits, spec.isolation),
        log_bytes: (0, 0),
    };
    let execution = match shared.executor.start(spec).await {
        Ok(e) => e,
        Err(e) => return (refuse(format!("sandbox_setup_failed: start: {e}")), info),
    };
    let control = execution.job.control.clone();
    let output = Arc::new(OutputBudget::new(job_type.limits.output_bytes()));
    let pumps = [
        (LogStream::Stdout, execution.stdout),
        (LogStream::Stderr, execution.stderr),
    ]
    .map(|(stream, reader)| {
        tokio::spawn(pump(
            shared.clone(),
            lease.clone(),
            stream,
            reader,
            output.clone(),
        ))
    });

    let wait = execution.job.wait();
    tokio::pin!(wait);
    let mut heartbeat = tokio::time::interval(shared.worker.heartbeat_every());
    heartbeat.tick().await;
    let mut cancelled = false;
    let mut shutting_down = false;
    let mut lease_lost = false;
    let mut kill_at: Option<tokio::time::Instant> = None;

    let report = loop {
        let grace = async {
            match kill_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            report = &mut wait => break report,
            _ = heartbeat.tick() => {
                match shared.coordinator.heartbeat(lease, shared.worker.lease_ms, now_millis()).await {
                    Ok(reply) if reply.cancel_requested && !cancelled => signals.cancel.cancel(),
                    Ok(_) => {}
                    Err(StoreError::LeaseLost(_)) => {
                        lease_lost = true;
                        control.kill().await;
                    }
                    Err(e) => tracing::warn!(job = %job.id, error = %e, "heartbeat failed"),
                }
            }
            _ = signals.cancel.cancelled(), if !cancelled => {
                cancelled = true;
                control.terminate().await;
                kill_at = Some(tokio::time::Instant::now() + shared.worker.cancel_grace);
            }
            _ = grace => {
                kill_at = None;
                control.kill().await;
            }
            _ = signals.shutdown.cancelled(), if !shutting_down => {
                shutting_down = true;
                control.kill().await;
            }
            _ = output.exceeded.cancelled(), if !output.killed.swap(true, Ordering::SeqCst) => {
                control.kill().await;
            }
        }
    };
    let [out, err] = pumps;
    info.log_bytes = (out.await.unwrap_or(0), err.await.unwrap_or(0));
    let truncated = output.exceeded.is_cancelled();
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            return (
                refuse(format!("sandbox_setup_failed: supervisor: {e}")),
                info,
            );
        }
    };
    info.report = Some(report.clone());
    if !report.enforcement.is_empty() {
        info.limits = report.enforcement.clone();
    }
    if let Some(err) = &report.setup_error {
        return (refuse(format!("sandbox_setup_failed: {err}")), info);
    }
    let mut warnings = Vec::new();
    let ended_by_kill = report.killed_by.is_some();
    let (status, reason) = if lease_lost {
        return (Outcome::Abandon, info);
    } else if cancelled {
        (JobStatus::Cancelled, Some("cancelled".to_string()))
    } else if shutting_down && ended_by_kill {
        return (Outcome::Release, info);
    } else if truncated {
        (JobStatus::Failed, Some("output_limit".to_string()))
    } else if report.killed_by == Some(KilledBy::Timeout) {
        (JobStatus::TimedOut, Some("timed_out".to_string()))
    } else if report.exit_code == Some(0) {
        if let Some(limit) = &report.limit_hit {
            // It hit a limit (e.g. a fork failed at pids.max) and still succeeded.
            warnings.push(format!("{}_HIT", limit.to_uppercase()));
        }
        (JobStatus::Succeeded, None)
    } else if let Some(limit) = &report.limit_hit {
        (JobStatus::Failed, Some(limit.clone()))
    } else if let Some(sig) = report.signal {
        (JobStatus::Failed, Some(format!("signal: {sig}")))
    } else {
        (
            JobStatus::Failed,
            Some(format!("exit_code: {}", report.exit_code.unwrap_or(-1))),
        )
    };
    let done = Completion {
        status: Some(status),
        reason,
        exit_code: report.exit_code,
        signal: report.signal,
        warnings,
        resources: None,
        log_truncated: truncated,
        enforcement: info.limits.clone(),
        invariants: None,
    };
    (Outcome::Complete(done), info)
}

/// The output cap shared by a job's two streams.
struct OutputBudget {
    limit: u64,
    used: AtomicU64,
    exceeded: CancellationToken,
    killed: AtomicBool,
}

impl OutputBudget {
    fn new(limit: u64) -> OutputBudget {
        OutputBudget {
            limit,
            used: AtomicU64::new(0),
            exceeded: CancellationToken::new(),
            killed: AtomicBool::new(false),
        }
    }

    /// How many of `n` new bytes may still be kept.
    fn admit(&self, n: usize) -> usize {
        let before = self.used.fetch_add(n as u64, Ordering::SeqCst);
        let left = self.limit.saturating_sub(before);
        let keep = left.min(n as u64) as usize;
        if keep < n {
            self.exceeded.cancel();
        }
        keep
    }
}

/// Copies one stream into the log, chunk by chunk, until the job's tree closes it. Returns the
/// number of bytes stored.
async fn pump(
    shared: Shared,
    lease: Lease,
    stream: LogStream,
    mut reader: pipe::Receiver,
    budget: Arc<OutputBudget>,
) -> u64 {
    let mut buf = vec![0u8; 64 * 1024];
    let mut offset = 0u64;
    let mut writing = true;
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(job = %lease.job_id, error = %e, "reading job output failed");
                break;
            }
        };
        // Past the cap or after a failed write, keep draining so the job never blocks on a full
        // pipe before it is killed.
        if !writing {
            continue;
        }
        let keep = budget.admit(n);
        if keep == 0 {
            writing = false;
            continue;
        }
        match shared
            .coordinator
            .append_log(&lease, stream, offset, &buf[..keep])
            .await
        {
            Ok(()) => {
                offset += keep as u64;
                shared.events.job_changed(lease.job_id);
            }
            Err(e) => {
                tracing::warn!(job = %lease.job_id, error = %e, "log append failed");
                writing = false;
            }
        }
        if keep < n {
            writing = false;
        }
    }
    offset
}

fn rfc3339(ms: i64) -> String {
    const MAX_MS: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
    let t = UNIX_EPOCH + Duration::from_millis(ms.clamp(0, MAX_MS) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

fn artifact_record(
    shared: &Shared,
    job: &JobRecord,
    done: &Completion,
    started_ms: i64,
    finished_ms: i64,
    info: Option<&ExecInfo>,
) -> ArtifactJson {
    let outputs = list_outputs(&shared.data.artifacts(job.id));
    let (stdout_bytes, stderr_bytes) = info.map(|i| i.log_bytes).unwrap_or_default();
    ArtifactJson {
        job_id: job.id.to_string(),
        job_type: job.job_type.clone(),
        tenant: job.tenant.clone(),
        repo: job.repo_name.clone(),
        remote_url: job.remote_url.clone(),
        sha: job.sha.clone(),
        params: job.params.clone(),
        status: done.status.unwrap_or(JobStatus::Error),
        reason: done.reason.clone(),
        exit_code: done.exit_code,
        signal: done.signal,
        attempt: job.attempts,
        timings: Timings {
            created_at: rfc3339(job.created_at),
            started_at: Some(rfc3339(started_ms)),
            finished_at: rfc3339(finished_ms),
            queue_ms: (started_ms - job.created_at).max(0) as u64,
            wall_ms: done.resources.as_ref().map(|r| r.wall_ms).unwrap_or(0),
        },
        resources: done.resources.clone(),
        limits: info.map(|i| i.limits.clone()).unwrap_or_default(),
        invariants: done.invariants.clone().unwrap_or_default(),
        git_ref: job.git_ref.clone(),
        checkout: None,
        isolation: match shared.executor.isolation() {
            Isolation::UnsafeFallback => "unsafe_fallback".into(),
            Isolation::Sandbox => "sandbox".into(),
        },
        unsafe_fallback: shared.executor.isolation() == Isolation::UnsafeFallback,
        warnings: done.warnings.clone(),
        log: LogSummary {
            stdout_bytes,
            stderr_bytes,
            truncated: done.log_truncated,
        },
        outputs,
    }
}

/// Relative paths of the regular files under `dir`, never following links, at most 10,000.
fn list_outputs(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(ft) = entry.file_type() else { continue };
            let path = entry.path();
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file()
                && let Ok(rel) = path.strip_prefix(dir)
            {
                let rel = rel.to_string_lossy().into_owned();
                if rel != "artifact.json" && !rel.starts_with(".artifact.json.") {
                    out.push(rel);
                }
            }
            if out.len() >= 10_000 {
                return out;
            }
        }
    }
    out.sort();
    out
}
