//! While a job runs: start it, pump its output into the log under the output cap, keep the
//! lease alive, and answer cancellation, shutdown and a lost lease.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;
use warden_core::Limits;
use warden_sandbox::{ExitReport, JobControl, Tier};
use warden_store::{Lease, LogStream, StoreError, now_millis};

use super::prepare::Prepared;
use super::verdict::{Refusal, RunEnd};
use crate::Standby;
use crate::shared::{JobSignals, Shared};

/// What the run left for the record.
#[derive(Clone, Default)]
pub(super) struct ExecInfo {
    pub report: Option<ExitReport>,
    /// What enforced each limit.
    pub limits: BTreeMap<String, String>,
    pub log_bytes: (u64, u64),
    /// An egress job's gateway decisions and their summary.
    pub egress: Option<Vec<crate::egress::Decision>>,
    /// The tier the job ran under (the worker's, or gVisor when its type asks for it).
    pub tier: Option<Tier>,
    /// A staged job's stage starts: (stage index, stdout offset, stderr offset).
    pub stage_marks: Vec<(usize, u64, u64)>,
    /// A staged job's stages: name and `always`.
    pub stage_specs: Vec<(String, bool)>,
    /// What the job declared in `warden-outputs.json` (checked), for `artifact.json`.
    pub job_outputs: serde_json::Map<String, serde_json::Value>,
    /// A review bundle's outcome: `Some(None)` it fitted, `Some(Some(_))` the checked fallback.
    pub review: Option<Option<crate::review::Fallback>>,
    /// From the spawn request to the job's program exec'd in its sandbox.
    pub sandbox_start_us: Option<u64>,
    /// Output read past the output cap (not stored).
    pub log_bytes_dropped: u64,
}

impl ExecInfo {
    /// A staged job's stage table (empty for a job without stages).
    pub fn stages(&self) -> Vec<warden_api::StageRecord> {
        super::verdict::stage_records(
            &self.stage_specs,
            self.report.as_ref(),
            &self.stage_marks,
            self.log_bytes,
        )
    }
}

/// How a started job ended: its report and how the watch over it ended, or why it could not
/// be started or supervised.
pub(super) type Executed = Result<(ExitReport, RunEnd), Refusal>;

/// How long an egress job's init may take to hand over its gateway sockets (it does so right
/// after its network namespace is ready, before anything slow).
const GATEWAY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

pub(super) async fn execute(
    shared: &Shared,
    lease: &Lease,
    prepared: Prepared,
    signals: &JobSignals,
    standby: Option<Standby>,
) -> (Executed, ExecInfo) {
    let Prepared {
        spec,
        job_type,
        unenforced,
        mask,
        // Holds the image in the cache until the job is over.
        image: _image,
        ..
    } = prepared;
    let mut info = ExecInfo {
        limits: limit_enforcement(&job_type.limits, spec.isolation.tier()),
        tier: Some(spec.isolation.tier()),
        stage_specs: spec
            .stages
            .iter()
            .map(|s| (s.name.clone(), s.always))
            .collect(),
        ..ExecInfo::default()
    };
    let spawn_at = warden_sandbox::monotonic_us();
    let mut execution = match shared.executor.start(spec, standby).await {
        Ok(e) => e,
        Err(e) => {
            let refusal = Refusal::new("sandbox_setup_failed", format!("start: {e}"));
            return (Err(refusal), info);
        }
    };
    // An egress job's namespace hands its sockets over before the job starts; without them
    // (setup failed: the report says why) there is nothing to serve.
    let gateway = match job_type.network.egress() {
        None => None,
        Some(policy) => match tokio::time::timeout(GATEWAY_WAIT, execution.job.take_gateway())
            .await
            .unwrap_or_else(|_| {
                Err(warden_sandbox::SandboxError::Control(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the job's namespace did not hand over its sockets within 30 s",
                )))
            }) {
            Ok(None) => None,
            Ok(Some(sockets)) => {
                match crate::egress::Gateway::start(policy.clone(), sockets, &shared.config.egress)
                {
                    Ok(g) => Some(g),
                    Err(e) => {
                        // Fail closed: the job never runs without its gateway.
                        execution.job.control.kill().await;
                        let _ = execution.job.wait().await;
                        let refusal =
                            Refusal::new("sandbox_setup_failed", format!("egress gateway: {e}"));
                        return (Err(refusal), info);
                    }
                }
            }
            Err(e) => {
                execution.job.control.kill().await;
                let refusal = Refusal::new("sandbox_setup_failed", format!("egress gateway: {e}"));
                return (Err(refusal), info);
            }
        },
    };
    let network_limit = gateway
        .as_ref()
        .map_or_else(CancellationToken::new, |g| g.limit());
    let output = Arc::new(OutputBudget::new(job_type.limits.output_bytes()));
    let (drain_out, drain_out_rx) = tokio::sync::mpsc::unbounded_channel();
    let (drain_err, drain_err_rx) = tokio::sync::mpsc::unbounded_channel();
    let pumps = [
        (LogStream::Stdout, execution.stdout, drain_out_rx),
        (LogStream::Stderr, execution.stderr, drain_err_rx),
    ]
    .map(|(stream, reader, drains)| {
        tokio::spawn(super::pump::pump(
            shared.clone(),
            lease.clone(),
            stream,
            (reader, drains),
            output.clone(),
            mask.clone(),
        ))
    });
    let control = execution.job.control.clone();
    let mut marks = Vec::new();
    let (report, mut end) = watch(
        shared,
        lease,
        signals,
        &control,
        (&output, &network_limit),
        follow_stages(execution.job, [drain_out, drain_err], &mut marks),
    )
    .await;
    info.stage_marks = marks;
    let mut egress_summary = None;
    if let Some(gateway) = gateway {
        let (decisions, summary, limit) = gateway.finish().await;
        let mut shown = summary.to_string();
        if let Some(why) = limit {
            end.network_limit = true;
            shown = format!("{shown}; stopped: {why}");
        }
        egress_summary = Some(shown);
        info.egress = Some(decisions);
    }
    let [out, err] = pumps;
    info.log_bytes = (out.await.unwrap_or(0), err.await.unwrap_or(0));
    end.output_truncated = output.exceeded.is_cancelled();
    info.log_bytes_dropped = output
        .used
        .load(Ordering::SeqCst)
        .saturating_sub(output.limit);
    let mut report = match report {
        Ok(r) => r,
        Err(e) => {
            let refusal = Refusal::new("sandbox_setup_failed", format!("supervisor: {e}"));
            return (Err(refusal), info);
        }
    };
    info.sandbox_start_us = report.exec_mono_us.map(|at| at.saturating_sub(spawn_at));
    if report.enforcement.is_empty() {
        report.enforcement = info.limits.clone();
    }
    // What the job type accepted running without, and why, in place of "not set".
    report.enforcement.extend(unenforced);
    if let Some(shown) = egress_summary {
        report.enforcement.insert("egress".into(), shown);
    }
    if let Some(tier) = info.tier {
        report
            .enforcement
            .insert("isolation".into(), tier.as_str().into());
    }
    if let Some(c) = &report.root_changes {
        report.enforcement.insert(
            "root".into(),
            format!(
                "writable (overlay, changes in a {} MiB tmpfs): {} added, {} modified, {} deleted{}",
                job_type.limits.root_mb(),
                c.added,
                c.modified,
                c.deleted,
                if c.error.is_some() { " (report incomplete)" } else { "" }
            ),
        );
    }
    info.limits = report.enforcement.clone();
    info.report = Some(report.clone());
    (Ok((report, end)), info)
}

/// Waits for the job's report. Before each stage of a staged job starts, everything the job
/// wrote so far is stored and the offsets noted: the stage's log begins exactly there.
async fn follow_stages(
    mut job: warden_sandbox::RunningJob,
    drains: [tokio::sync::mpsc::UnboundedSender<tokio::sync::oneshot::Sender<u64>>; 2],
    marks: &mut Vec<(usize, u64, u64)>,
) -> Result<ExitReport, warden_sandbox::SandboxError> {
    use warden_sandbox::{JobEvent, StageEvent};
    loop {
        match job.next_event().await? {
            JobEvent::Stage(StageEvent::StageStart { index, wait: false }) => {
                // The first stage: nothing written yet.
                marks.push((index, 0, 0));
            }
            JobEvent::Stage(StageEvent::StageStart { index, wait: true }) => {
                let [out, err] = drains.each_ref().map(|d| {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let _ = d.send(tx);
                    rx
                });
                // A pump that is gone (its stream closed) has nothing more to store.
                let (out, err) = tokio::join!(out, err);
                marks.push((index, out.unwrap_or(0), err.unwrap_or(0)));
                job.control.go().await;
            }
            JobEvent::Stage(_) => {}
            JobEvent::Report(report) => return Ok(*report),
        }
    }
}

/// Waits for the job's report, heartbeating the lease and steering the job meanwhile.
async fn watch(
    shared: &Shared,
    lease: &Lease,
    signals: &JobSignals,
    control: &JobControl,
    (output, network_limit): (&OutputBudget, &CancellationToken),
    wait: impl Future<Output = Result<ExitReport, warden_sandbox::SandboxError>>,
) -> (Result<ExitReport, warden_sandbox::SandboxError>, RunEnd) {
    tokio::pin!(wait);
    let mut heartbeat = tokio::time::interval(shared.worker.heartbeat_every());
    heartbeat.tick().await;
    let mut end = RunEnd::default();
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
                    Ok(reply) if reply.cancel_requested && !end.cancelled => signals.cancel.cancel(),
                    Ok(_) => {}
                    Err(StoreError::LeaseLost(_)) => {
                        end.lease_lost = true;
                        control.kill().await;
                    }
                    Err(e) => tracing::warn!(job = %lease.job_id, error = %e, "heartbeat failed"),
                }
            }
            _ = signals.cancel.cancelled(), if !end.cancelled => {
                end.cancelled = true;
                control.terminate().await;
                kill_at = Some(tokio::time::Instant::now() + shared.worker.cancel_grace);
            }
            _ = grace => {
                kill_at = None;
                control.kill().await;
            }
            _ = signals.shutdown.cancelled(), if !end.shutting_down => {
                end.shutting_down = true;
                control.kill().await;
            }
            _ = output.exceeded.cancelled(), if !output.killed.swap(true, Ordering::SeqCst) => {
                control.kill().await;
            }
            _ = network_limit.cancelled(), if !end.network_limit => {
                end.network_limit = true;
                control.kill().await;
            }
        }
    };
    (report, end)
}

/// Which mechanism enforces each limit under the given tier, for the record. (A sandboxed
/// job's supervisor reports its own, which replaces this.)
fn limit_enforcement(limits: &Limits, tier: Tier) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("wall_time".into(), "supervisor".into());
    m.insert("output_bytes".into(), "worker".into());
    m.insert("core_dumps".into(), "rlimit (off)".into());
    let rl = |on: bool| if on { "rlimit" } else { "not set" }.to_string();
    m.insert("cpu_time".into(), rl(limits.cpu_s.is_some()));
    m.insert("file_size".into(), "rlimit".into());
    m.insert("open_files".into(), rl(limits.open_files.is_some()));
    if tier == Tier::UnsafeFallback {
        for (name, set) in [
            ("memory", true),
            ("pids", true),
            ("cpus", limits.cpus.is_some()),
            ("artifacts", true),
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
    m
}

/// The output cap shared by a job's two streams.
pub(super) struct OutputBudget {
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
    pub(super) fn admit(&self, n: usize) -> usize {
        let before = self.used.fetch_add(n as u64, Ordering::SeqCst);
        let left = self.limit.saturating_sub(before);
        let keep = left.min(n as u64) as usize;
        if keep < n {
            self.exceeded.cancel();
        }
        keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_output_budget_keeps_exactly_the_cap() {
        let b = OutputBudget::new(10);
        assert_eq!(b.admit(6), 6);
        assert!(!b.exceeded.is_cancelled());
        assert_eq!(b.admit(6), 4);
        assert!(b.exceeded.is_cancelled());
        assert_eq!(b.admit(1), 0);
    }

    #[test]
    fn fallback_records_what_it_cannot_enforce() {
        let limits = Limits::default();
        let m = limit_enforcement(&limits, Tier::UnsafeFallback);
        assert_eq!(m["memory"], "not enforced (unsafe_fallback: no sandbox)");
        assert_eq!(m["pids"], "not enforced (unsafe_fallback: no sandbox)");
        assert!(!m.contains_key("tmpfs"));
        assert!(!limit_enforcement(&limits, Tier::Sandbox).contains_key("memory"));
    }
}
