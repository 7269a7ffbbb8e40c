//! Prometheus metrics (`/metrics`, prometheus-client's text exposition).
//!
//! Most are counted where every job passes anyway: [`MeteredStore`] wraps the store the server
//! and its embedded worker use, so each submission, completion, stored log chunk, lease
//! expiry and store call is seen once, on the replica that made it (with PostgreSQL, each
//! replica exports its own view). Queue depth and running jobs come from the shared store at
//! scrape time.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
mod metered;

pub use metered::MeteredStore;

use warden_core::{JobId, JobStatus};
use warden_store::{
    AuditEntry, AuditFilter, AuditRecord, CancelOutcome, ClaimFor, Claimed, Completion, FairShare,
    FinishedJob, Hand, Handed, HeartbeatReply, JobRecord, Lease, ListFilter, LogStream, Millis,
    NewJob, OnCommit, Reaped, Result, RunTelemetry, Store, SubmitOutcome, TenantUsage, TestResult,
    TestsQuery, TokenRecord,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    job_type: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FinishedLabels {
    job_type: String,
    status: String,
    /// The reason's code (`stage_failed`, `output_limit`, …), never its free text.
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    job_type: String,
    tenant: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabel {
    call: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabel {
    stream: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabel {
    /// The setup step that failed (`cgroup`, `pivot_root`, `egress gateway`, …).
    step: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabel {
    result: &'static str,
}

/// Jobs claimed here that have stored no log byte yet: when each was submitted, its type.
type Pending = std::sync::Mutex<std::collections::HashMap<JobId, (Millis, String)>>;

/// More jobs than this waiting for their first byte means their ends went elsewhere (another
/// replica completed them): start again rather than grow.
const PENDING_MAX: usize = 100_000;

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn seconds() -> Histogram {
    // 1 ms .. ~9 h.
    Histogram::new(exponential_buckets(0.001, 3.0, 16))
}

fn store_seconds() -> Histogram {
    // 50 µs .. ~3 s.
    Histogram::new(exponential_buckets(0.00005, 3.0, 11))
}

/// Every metric this replica exports.
pub struct Metrics {
    registry: Registry,
    submitted: Family<TypeLabel, Counter>,
    finished: Family<FinishedLabels, Counter>,
    queue_wait: Histograms<TypeLabel>,
    run_time: Histograms<TypeLabel>,
    log_bytes: Family<StreamLabel, Counter>,
    lease_expiries: Family<OutcomeLabel, Counter>,
    store_calls: Histograms<CallLabel>,
    queued: Family<StateLabels, Gauge>,
    running: Family<StateLabels, Gauge>,
    pub retention_jobs: Counter,
    pub retention_bytes: Counter,
    /// Events this replica's publisher had acknowledged by JetStream.
    pub events_published: Counter,
    /// Publishing passes that failed (NATS unreachable, no acknowledgement): events wait.
    pub events_publish_failures: Counter,
    /// Remote workers' sessions open on this replica.
    pub worker_sessions: Gauge,
    first_log_byte: Histograms<TypeLabel>,
    sandbox_start: Histograms<TypeLabel>,
    setup_failures: Family<StepLabel, Counter>,
    log_dropped: Counter,
    checkouts: Family<CacheLabel, Counter>,
    checkout_bytes: Counter,
    cache_evictions: Counter,
    pending: Pending,
    /// Store calls made for a job or a caller so far (not exported): how the memory keeper
    /// tells that work stopped. Not the idle polling: a claim that found nothing, the reaper's
    /// and the collector's rounds, the outbox's.
    work_done: std::sync::atomic::AtomicU64,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// Store calls this replica has made for a job or a caller so far.
    pub(crate) fn work_done(&self) -> u64 {
        self.work_done.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn worked(&self) {
        self.work_done
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("warden"),
            submitted: Family::default(),
            finished: Family::default(),
            queue_wait: Family::new_with_constructor(seconds),
            run_time: Family::new_with_constructor(seconds),
            log_bytes: Family::default(),
            lease_expiries: Family::default(),
            store_calls: Family::new_with_constructor(store_seconds),
            queued: Family::default(),
            running: Family::default(),
            retention_jobs: Counter::default(),
            retention_bytes: Counter::default(),
            events_published: Counter::default(),
            events_publish_failures: Counter::default(),
            worker_sessions: Gauge::default(),
            first_log_byte: Family::new_with_constructor(seconds),
            sandbox_start: Family::new_with_constructor(store_seconds),
            setup_failures: Family::default(),
            log_dropped: Counter::default(),
            checkouts: Family::default(),
            checkout_bytes: Counter::default(),
            cache_evictions: Counter::default(),
            pending: Pending::default(),
            work_done: Default::default(),
        };
        let r = &mut m.registry;
        r.register(
            "jobs_submitted",
            "Jobs accepted by this replica",
            m.submitted.clone(),
        );
        r.register(
            "jobs_finished",
            "Jobs whose end this replica recorded, by status and reason",
            m.finished.clone(),
        );
        r.register(
            "job_queue_wait_seconds",
            "From submission to the start of the attempt that finished",
            m.queue_wait.clone(),
        );
        r.register(
            "job_run_seconds",
            "From the start of the attempt to its end",
            m.run_time.clone(),
        );
        r.register("log_bytes_stored", "Log bytes stored", m.log_bytes.clone());
        r.register(
            "lease_expiries",
            "Leases that expired: requeued (attempts left) or lost (worker_lost)",
            m.lease_expiries.clone(),
        );
        r.register(
            "store_call_seconds",
            "Latency of each store call",
            m.store_calls.clone(),
        );
        r.register(
            "jobs_queued",
            "Jobs waiting, from the store",
            m.queued.clone(),
        );
        r.register(
            "jobs_running",
            "Jobs running, from the store",
            m.running.clone(),
        );
        r.register(
            "retention_deleted_jobs",
            "Finished jobs deleted by retention",
            m.retention_jobs.clone(),
        );
        r.register(
            "events_published",
            "Events (job state changes, log chunks) acknowledged by JetStream",
            m.events_published.clone(),
        );
        r.register(
            "events_publish_failures",
            "Publishing passes that failed; their events wait in the outbox",
            m.events_publish_failures.clone(),
        );
        r.register(
            "worker_sessions",
            "Remote workers' sessions open on this replica",
            m.worker_sessions.clone(),
        );
        r.register(
            "retention_freed_bytes",
            "Log and artifact bytes freed by retention",
            m.retention_bytes.clone(),
        );
        r.register(
            "job_first_log_byte_seconds",
            "From submission to the job's first log byte stored",
            m.first_log_byte.clone(),
        );
        r.register(
            "sandbox_start_seconds",
            "From the spawn request to the job's program exec'd in its sandbox",
            m.sandbox_start.clone(),
        );
        r.register(
            "sandbox_setup_failures",
            "Jobs that ended sandbox_setup_failed, by the step that failed",
            m.setup_failures.clone(),
        );
        r.register(
            "log_bytes_dropped",
            "Output read past jobs' output caps and not stored",
            m.log_dropped.clone(),
        );
        r.register(
            "checkouts",
            "Jobs' repository trees, from the checkout cache (hit) or checked out (miss)",
            m.checkouts.clone(),
        );
        r.register(
            "checkout_bytes",
            "Bytes of the trees checked out on cache misses",
            m.checkout_bytes.clone(),
        );
        r.register(
            "checkout_cache_evictions",
            "Checkout cache entries evicted by the workers of this replica's jobs",
            m.cache_evictions.clone(),
        );
        // Known label values start at zero, so a rate over them exists before the first event.
        for result in ["hit", "miss"] {
            let _ = m.checkouts.get_or_create(&CacheLabel { result });
        }
        // The worker's own setup steps (the sandbox's are named by the step that failed).
        for step in ["start", "supervisor", "egress gateway", "gvisor"] {
            let _ = m
                .setup_failures
                .get_or_create(&StepLabel { step: step.into() });
        }
        for outcome in ["requeued", "lost"] {
            let _ = m.lease_expiries.get_or_create(&OutcomeLabel { outcome });
        }
        for stream in ["stdout", "stderr"] {
            let _ = m.log_bytes.get_or_create(&StreamLabel { stream });
        }
        m
    }

    /// The exposition, with queue depth and running jobs read from `store` now.
    pub async fn render(&self, store: &dyn Store) -> Result<String> {
        let labels = |jobs: Vec<JobRecord>| -> Vec<StateLabels> {
            jobs.into_iter()
                .map(|j| StateLabels {
                    job_type: j.job_type,
                    tenant: j.tenant,
                })
                .collect()
        };
        let queued_now = labels(warden_store::all_with_status(store, JobStatus::Queued).await?);
        let running_now = labels(warden_store::all_with_status(store, JobStatus::Running).await?);
        for (family, now) in [(&self.queued, queued_now), (&self.running, running_now)] {
            family.clear();
            for labels in now {
                family.get_or_create(&labels).inc();
            }
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .map_err(|e| warden_store::StoreError::Backend(format!("encode metrics: {e}")))?;
        Ok(out)
    }

    fn claimed(&self, c: &Claimed) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.len() >= PENDING_MAX {
            pending.clear();
        }
        pending.insert(c.job.id, (c.job.created_at, c.job.job_type.clone()));
    }

    fn first_byte(&self, id: JobId) {
        let taken = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        if let Some((created, job_type)) = taken {
            let waited = (warden_store::now_millis() - created).max(0) as f64 / 1000.0;
            self.first_log_byte
                .get_or_create(&TypeLabel { job_type })
                .observe(waited);
        }
    }

    fn forget(&self, id: JobId) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// What the worker measured about a run it completed.
    fn ran(&self, job_type: &str, reason: Option<&str>, t: &RunTelemetry) {
        if let Some(us) = t.sandbox_start_us {
            self.sandbox_start
                .get_or_create(&TypeLabel {
                    job_type: job_type.to_string(),
                })
                .observe(us as f64 / 1e6);
        }
        self.log_dropped.inc_by(t.log_bytes_dropped);
        if let Some(hit) = t.checkout_cache_hit {
            let result = if hit { "hit" } else { "miss" };
            self.checkouts.get_or_create(&CacheLabel { result }).inc();
        }
        self.checkout_bytes.inc_by(t.checkout_bytes);
        self.cache_evictions.inc_by(t.cache_evictions);
        if let Some(step) = reason.and_then(|r| r.strip_prefix("sandbox_setup_failed: ")) {
            self.setup_failures
                .get_or_create(&StepLabel {
                    step: setup_step(step),
                })
                .inc();
        }
    }

    fn finished_job(&self, job: &JobRecord) {
        let reason = job
            .reason
            .as_deref()
            .map(|r| r.split([':', ' ']).next().unwrap_or(r))
            .unwrap_or("")
            .to_string();
        self.finished
            .get_or_create(&FinishedLabels {
                job_type: job.job_type.clone(),
                status: job.status.to_string(),
                reason,
            })
            .inc();
        let ty = TypeLabel {
            job_type: job.job_type.clone(),
        };
        if let (Some(started), Some(finished)) = (job.started_at, job.finished_at) {
            let wait = (started - job.created_at).max(0) as f64 / 1000.0;
            self.queue_wait.get_or_create(&ty).observe(wait);
            let run = (finished - started).max(0) as f64 / 1000.0;
            self.run_time.get_or_create(&ty).observe(run);
        }
    }
}

/// The step of a setup failure's `<step>: <error>`, as a label: short, plain, or `other`.
fn setup_step(detail: &str) -> String {
    let step = detail.split(':').next().unwrap_or("").trim();
    let plain = step
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '_' | '-' | '/' | '.'));
    if step.is_empty() || step.len() > 40 || !plain {
        "other".into()
    } else {
        step.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setup_failure_is_counted_by_its_step_never_its_free_text() {
        assert_eq!(setup_step("cgroup: EACCES"), "cgroup");
        assert_eq!(setup_step("egress gateway: no route"), "egress gateway");
        assert_eq!(setup_step("pivot_root"), "pivot_root");
        assert_eq!(setup_step(""), "other");
        assert_eq!(setup_step(&"x".repeat(41)), "other");
        assert_eq!(setup_step("mount \"/etc\\n\": x"), "other");
    }

    #[tokio::test]
    async fn a_completion_s_telemetry_reaches_the_exposition() {
        let m = Metrics::new();
        m.ran(
            "echo",
            Some("sandbox_setup_failed: cgroup: EACCES"),
            &RunTelemetry {
                sandbox_start_us: Some(5_000),
                log_bytes_dropped: 7,
                checkout_cache_hit: Some(false),
                checkout_bytes: 4096,
                cache_evictions: 2,
            },
        );
        m.ran("echo", None, &RunTelemetry::default());
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry).unwrap();
        for line in [
            "warden_sandbox_setup_failures_total{step=\"cgroup\"} 1",
            "warden_sandbox_start_seconds_count{job_type=\"echo\"} 1",
            "warden_log_bytes_dropped_total 7",
            "warden_checkouts_total{result=\"miss\"} 1",
            "warden_checkouts_total{result=\"hit\"} 0",
            "warden_checkout_bytes_total 4096",
            "warden_checkout_cache_evictions_total 2",
        ] {
            assert!(out.contains(line), "{line} not in\n{out}");
        }
    }
}
