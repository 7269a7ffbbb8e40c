//! Retention's collector: deletes finished jobs past their tenant's age, then the oldest
//! finished jobs while a tenant is over its size budget (a job goes whole — record, logs, test
//! results, artifacts — or not at all), artifact directories whose job is gone, and this
//! host's mirrors no job has used for a while; then gives the database's room back.
//!
//! Safe with several replicas: the job part runs under the store's collector lease (one
//! collector at a time over every replica); mirrors are each host's own. It never touches a
//! queued or running job: the store deletes only rows that are finished at the moment of the
//! delete, and a mirror a queued or running job's repository maps to is kept.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use warden_core::{Config, JobId, JobStatus};
use warden_repo::Repos;
use warden_store::{Millis, Store, StoreError, TenantUsage, now_millis};

const DAY_MS: i64 = 86_400_000;

/// How long the collector's lease lasts without renewal (renewed after every batch).
const LEASE_MS: i64 = 10 * 60 * 1000;

/// When more than this share of the artifact directories looked at has no job in the store,
/// the store is probably not this data directory's (a wrong `--database-url`): none is removed.
const ORPHAN_SANITY: f64 = 0.5;

/// Artifact directories younger than this are never orphans (a job's row is written first,
/// but a directory and its row may be seen across two reads of a busy store).
const ORPHAN_MIN_AGE: Duration = Duration::from_secs(3600);

/// What the collector needs: the store, the policy, where artifacts are, this host's mirrors.
pub struct Collector {
    pub store: Arc<dyn Store>,
    pub config: Arc<Config>,
    pub artifacts: PathBuf,
    /// `None`: mirrors are not this collector's (another process owns the data directory).
    pub repos: Option<Arc<Repos>>,
    /// Names this collector in the store's lease.
    pub owner: String,
    /// The bucket artifacts are in (`artifact_store:`), when not the artifact directory.
    pub s3: Option<Arc<crate::artifact_store::S3Artifacts>>,
    /// Where what each pass freed is counted (`/metrics`).
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// What one pass freed (or, on a dry run, would free).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    /// `false`: another replica's collector held the lease; jobs were left to it.
    pub jobs_collected: bool,
    pub tenants: Vec<TenantReport>,
    pub orphan_dirs: u64,
    pub orphan_bytes: u64,
    pub mirrors: Vec<MirrorReport>,
    /// Database bytes given back to the filesystem (SQLite's incremental vacuum).
    pub compacted_bytes: u64,
}

impl GcReport {
    pub fn jobs_deleted(&self) -> u64 {
        self.tenants
            .iter()
            .map(|t| t.deleted_by_age + t.deleted_by_size)
            .sum()
    }

    pub fn bytes_freed(&self) -> u64 {
        self.tenants.iter().map(|t| t.freed_bytes).sum::<u64>()
            + self.orphan_bytes
            + self.mirrors.iter().map(|m| m.bytes).sum::<u64>()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TenantReport {
    pub tenant: String,
    pub jobs_days: u64,
    pub max_bytes: Option<u64>,
    /// Finished jobs and their bytes before the pass.
    pub jobs: u64,
    pub bytes: u64,
    pub deleted_by_age: u64,
    pub deleted_by_size: u64,
    pub freed_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MirrorReport {
    pub id: String,
    pub bytes: u64,
    pub unused_days: Option<u64>,
}

impl Collector {
    /// A unique owner name for this process's collector.
    pub fn owner_name() -> String {
        let host = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned();
        format!("{host}:{}:{}", std::process::id(), JobId::new())
    }

    /// One pass. Store errors end the pass (the next one starts over); what was deleted stays
    /// deleted and is reported in the log as it goes.
    pub async fn run_once(&self, dry_run: bool) -> Result<GcReport, StoreError> {
        let now = now_millis();
        let mut report = GcReport {
            dry_run,
            ..GcReport::default()
        };
        report.jobs_collected = dry_run || self.store.gc_lease(&self.owner, LEASE_MS, now).await?;
        if report.jobs_collected {
            for usage in self.store.finished_usage().await? {
                let t = self.tenant(usage, now, dry_run).await?;
                if t.deleted_by_age + t.deleted_by_size > 0 {
                    tracing::info!(
                        tenant = %t.tenant, by_age = t.deleted_by_age, by_size = t.deleted_by_size,
                        freed_bytes = t.freed_bytes, dry_run, "retention: deleted finished jobs"
                    );
                }
                report.tenants.push(t);
            }
            (report.orphan_dirs, report.orphan_bytes) = self.orphans(dry_run).await?;
            if !dry_run {
                // Given back, not left to run out: a `warden gc` by hand between two passes
                // is not told that another collector is running when none is.
                self.store.gc_lease(&self.owner, 0, now_millis()).await?;
            }
        }
        if let Some(repos) = &self.repos {
            report.mirrors = self.mirrors(repos, dry_run).await?;
        }
        if !dry_run && report.jobs_deleted() > 0 {
            report.compacted_bytes = self.store.compact().await?;
        }
        Ok(report)
    }

    async fn tenant(
        &self,
        usage: TenantUsage,
        now: Millis,
        dry_run: bool,
    ) -> Result<TenantReport, StoreError> {
        let policy = self.config.retention_for(&usage.tenant);
        let batch = self.config.retention.batch.get().min(10_000) as u32;
        let mut t = TenantReport {
            tenant: usage.tenant.clone(),
            jobs_days: policy.jobs_days,
            max_bytes: policy.max_bytes,
            jobs: usage.jobs,
            bytes: usage.bytes,
            ..TenantReport::default()
        };
        // Oldest first, by age: every job that ended before the cutoff.
        let cutoff = now.saturating_sub((policy.jobs_days as i64).saturating_mul(DAY_MS));
        let mut cursor = None;
        loop {
            let page = self
                .store
                .oldest_finished(&usage.tenant, Some(cutoff), cursor, batch)
                .await?;
            let Some(last) = page.last() else { break };
            cursor = Some((last.finished_at, last.id));
            let (n, bytes) = self.delete(&page, dry_run).await?;
            t.deleted_by_age += n;
            t.freed_bytes += bytes;
            if page.len() < batch as usize {
                break;
            }
        }
        // Then, over the budget, the oldest of what is left (continuing from the cursor: on a
        // dry run, what the age pass would have deleted is still there).
        if let Some(max) = policy.max_bytes {
            let mut left = usage.bytes.saturating_sub(t.freed_bytes);
            while left > max {
                let page = self
                    .store
                    .oldest_finished(&usage.tenant, None, cursor, batch)
                    .await?;
                let Some(last) = page.last() else { break };
                cursor = Some((last.finished_at, last.id));
                let mut take = Vec::new();
                for job in page.iter() {
                    if left <= max {
                        break;
                    }
                    left = left.saturating_sub(job.bytes);
                    take.push(job.clone());
                }
                let (n, bytes) = self.delete(&take, dry_run).await?;
                t.deleted_by_size += n;
                t.freed_bytes += bytes;
                if page.len() < batch as usize {
                    break;
                }
            }
        }
        Ok(t)
    }

    /// Deletes one batch (rows first, then the artifact directories of the rows that went),
    /// renewing the lease; returns how many and their bytes.
    async fn delete(
        &self,
        jobs: &[warden_store::FinishedJob],
        dry_run: bool,
    ) -> Result<(u64, u64), StoreError> {
        if jobs.is_empty() {
            return Ok((0, 0));
        }
        if dry_run {
            return Ok((jobs.len() as u64, jobs.iter().map(|j| j.bytes).sum()));
        }
        if !self
            .store
            .gc_lease(&self.owner, LEASE_MS, now_millis())
            .await?
        {
            return Err(StoreError::Backend(
                "the collector's lease was taken over by another replica".into(),
            ));
        }
        let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
        let took = std::time::Instant::now();
        let deleted: HashSet<JobId> = self
            .store
            .delete_finished(&ids)
            .await?
            .into_iter()
            .collect();
        let dirs: Vec<PathBuf> = deleted
            .iter()
            .map(|id| self.artifacts.join(id.to_string()))
            .collect();
        tokio::task::spawn_blocking(move || {
            for d in dirs {
                let _ = std::fs::remove_dir_all(d);
            }
        })
        .await
        .map_err(|e| StoreError::Backend(format!("collector task failed: {e}")))?;
        if let Some(s3) = &self.s3 {
            for id in &deleted {
                if let Err(e) = s3.delete_job(*id).await {
                    tracing::warn!(job = %id, error = %e, "could not delete a job's artifacts from the bucket");
                }
            }
        }
        // The collector is never in a hurry: after each batch it leaves the store to the
        // queue for as long as the batch held it, so claims keep most of their pace.
        tokio::time::sleep(took.elapsed().min(Duration::from_secs(1))).await;
        let bytes = jobs
            .iter()
            .filter(|j| deleted.contains(&j.id))
            .map(|j| j.bytes)
            .sum();
        Ok((deleted.len() as u64, bytes))
    }

    /// Artifact directories whose job is not in the store (a pass cut short between a row and
    /// its directory): removed when an hour old, unless most directories look so (then the
    /// store is not this data directory's, and nothing is removed).
    async fn orphans(&self, dry_run: bool) -> Result<(u64, u64), StoreError> {
        let root = self.artifacts.clone();
        let dirs = tokio::task::spawn_blocking(move || job_dirs(&root))
            .await
            .map_err(|e| StoreError::Backend(format!("collector task failed: {e}")))?;
        let mut missing = Vec::new();
        for chunk in dirs.chunks(500) {
            let ids: Vec<JobId> = chunk.iter().map(|d| d.id).collect();
            let found: HashSet<JobId> = self.store.existing_jobs(&ids).await?.into_iter().collect();
            missing.extend(chunk.iter().filter(|d| !found.contains(&d.id)).cloned());
        }
        if missing.len() as f64 > dirs.len() as f64 * ORPHAN_SANITY {
            tracing::warn!(
                without_job = missing.len(), dirs = dirs.len(), artifacts = %self.artifacts.display(),
                "most artifact directories have no job in this store: is it this data \
                 directory's store? none removed"
            );
            return Ok((0, 0));
        }
        let (mut n, mut bytes) = (0, 0);
        for d in missing.into_iter().filter(|d| d.old) {
            bytes += warden_repo::dir_bytes(&d.path);
            n += 1;
            if !dry_run {
                let _ = std::fs::remove_dir_all(&d.path);
            }
        }
        Ok((n, bytes))
    }

    async fn mirrors(&self, repos: &Repos, dry_run: bool) -> Result<Vec<MirrorReport>, StoreError> {
        let mut needed = HashSet::new();
        for status in [JobStatus::Queued, JobStatus::Running] {
            let jobs = warden_store::all_with_status(self.store.as_ref(), status).await?;
            needed.extend(
                jobs.iter()
                    .filter_map(|j| j.remote_url.as_deref())
                    .map(warden_repo::mirror_id),
            );
        }
        let days = self.config.retention.mirrors_unused_days.get();
        let since = SystemTime::now() - Duration::from_secs(days.saturating_mul(86_400));
        let removed = repos.mirrors.remove_unused(since, &needed, dry_run).await;
        for m in &removed {
            tracing::info!(mirror = %m.id, bytes = m.bytes, dry_run, "retention: removed an unused mirror");
        }
        Ok(removed
            .into_iter()
            .map(|m| MirrorReport {
                unused_days: m
                    .last_used
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .map(|d| d.as_secs() / 86_400),
                id: m.id,
                bytes: m.bytes,
            })
            .collect())
    }
}

#[derive(Debug, Clone)]
struct JobDir {
    id: JobId,
    path: PathBuf,
    /// Old enough to be judged an orphan.
    old: bool,
}

/// The job directories under the artifacts root (names that are job ids).
fn job_dirs(root: &Path) -> Vec<JobDir> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let now = SystemTime::now();
    entries
        .flatten()
        .filter_map(|e| {
            let id: JobId = e.file_name().to_str()?.parse().ok()?;
            let m = e.metadata().ok()?;
            let age = now.duration_since(m.modified().ok()?).unwrap_or_default();
            m.is_dir().then(|| JobDir {
                id,
                path: e.path(),
                old: age >= ORPHAN_MIN_AGE,
            })
        })
        .collect()
}

/// Runs the collector every `retention.interval_s` (the first pass after at most a minute).
pub fn start(collector: Collector) -> tokio::task::JoinHandle<()> {
    let every = Duration::from_secs(collector.config.retention.interval_s.get());
    tokio::spawn(async move {
        tokio::time::sleep(every.min(Duration::from_secs(60))).await;
        loop {
            let pass = collector.run_once(false).await;
            if let (Ok(r), Some(m)) = (&pass, &collector.metrics) {
                m.retention_jobs.inc_by(r.jobs_deleted());
                m.retention_bytes.inc_by(r.bytes_freed());
            }
            match pass {
                Ok(r) if r.jobs_deleted() > 0 || !r.mirrors.is_empty() || r.orphan_dirs > 0 => {
                    tracing::info!(
                        jobs = r.jobs_deleted(),
                        orphan_dirs = r.orphan_dirs,
                        mirrors = r.mirrors.len(),
                        freed_bytes = r.bytes_freed(),
                        compacted_bytes = r.compacted_bytes,
                        "retention pass"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "retention pass failed"),
            }
            tokio::time::sleep(every).await;
        }
    })
}
