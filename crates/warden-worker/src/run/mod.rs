//! One job, from claim to completion, in parts: [`prepare`] (may it run here; its directories
//! and spawn spec), [`execute`] (run it under the lease), the clean-tree proof, [`verdict`]
//! (how it ended, decided from facts alone) and [`record`] (`artifact.json`, the completion).

mod blocking;
mod execute;
mod gvisor;
mod outputs;
mod prepare;
mod pump;
mod record;
mod results;
mod verdict;

use std::sync::Arc;

use warden_api::Invariants;
use warden_repo::Checkout;
use warden_sandbox::Tier;
use warden_store::{Claimed, Completion, JobRecord, Lease, StoreError, now_millis};

use self::blocking::blocking;
use self::execute::{ExecInfo, execute};
pub(crate) use self::prepare::cgroup_limits;
use self::prepare::prepare;
pub(crate) use self::pump::PIPE_BYTES;
use self::record::{RecordInput, artifact_record, resources};
use self::verdict::{Outcome, Proof, Refusal, apply_proof, verdict};
use crate::Standby;
use crate::artifact::{CheckoutSummary, write_artifact_json};
use crate::shared::{JobSignals, Shared};

pub(crate) use self::outputs::check_properties as outputs_check;

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
    work: impl Future<Output = T>,
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
                return Waited::Stopped(Outcome::ended(warden_api::JobStatus::Cancelled, "cancelled"));
            }
            _ = signals.shutdown.cancelled() => return Waited::Stopped(Outcome::Release),
        }
    }
}

/// The job's worktree, fetched and checked out (or found in the cache) under the lease.
async fn check_out(
    shared: &Shared,
    job: &JobRecord,
    lease: &Lease,
    signals: &JobSignals,
) -> Result<Option<Arc<Checkout>>, Outcome> {
    let Some(name) = &job.repo_name else {
        return Ok(None);
    };
    // The operator's allowlist is the truth, not the submission: the same rule the service
    // applied, against this worker's configuration.
    let remote = shared
        .config
        .run_remote(&job.job_type, name, job.remote_url.as_deref())
        .map_err(|e| Outcome::refused(&Refusal::new("repo_not_allowed", e.to_string())))?;
    let Some(sha) = &job.sha else {
        return Err(Outcome::refused(&Refusal::new(
            "invalid_ref",
            "the job names a repository but no commit",
        )));
    };
    if let Some(since) = review_base(shared, job) {
        // A review bundle's base must be a commit of the repository (fetched if the mirror
        // lacks it); otherwise the job fails before it runs.
        match under_lease(
            shared,
            lease,
            signals,
            shared.repos.mirrors.ensure_commit(&remote, &since),
        )
        .await
        {
            Waited::Done(Ok(_)) => {}
            Waited::Done(Err(e)) => {
                let r = Refusal::from(e);
                return Err(Outcome::ended(
                    warden_api::JobStatus::Failed,
                    format!("{}: SINCE_SHA: {}", r.code, r.message),
                ));
            }
            Waited::Stopped(outcome) => return Err(outcome),
        }
    }
    match under_lease(shared, lease, signals, shared.repos.checkout(&remote, sha)).await {
        Waited::Done(Ok(co)) => {
            tracing::info!(job = %job.id, hit = co.hit, took_ms = co.took.as_millis() as u64, "worktree ready");
            Ok(Some(Arc::new(co)))
        }
        Waited::Done(Err(e)) => Err(Outcome::refused(&Refusal::from(e))),
        Waited::Stopped(outcome) => Err(outcome),
    }
}

/// A review bundle's base commit (`SINCE_SHA`), for a job of a review bundle type.
fn review_base(shared: &Shared, job: &JobRecord) -> Option<String> {
    let t = shared.config.job_type(&job.job_type)?;
    (t.kind == warden_core::config::JobKind::ReviewBundle)
        .then(|| job.params.get("SINCE_SHA").cloned())
        .flatten()
}

/// The job's image, unpacked (pulled first if this worker does not have it) and held in the
/// cache until the job is over; `None` for a job type without one.
async fn image_root(
    shared: &Shared,
    job: &JobRecord,
    lease: &Lease,
    signals: &JobSignals,
) -> Result<Option<Arc<warden_image::Root>>, Outcome> {
    let Some(reference) = shared
        .config
        .job_type(&job.job_type)
        .and_then(|t| t.image.clone())
    else {
        return Ok(None);
    };
    let refuse = |code, message: String| Outcome::refused(&Refusal::new(code, message));
    let digest = job
        .image
        .as_deref()
        .and_then(|pinned| pinned.rsplit_once('@'))
        .and_then(|(_, d)| d.parse::<warden_core::image::Digest>().ok());
    let Some(digest) = digest else {
        // Fail closed: never a digest other than the one the job was submitted with.
        return Err(refuse(
            "image_unavailable",
            format!(
                "the job type runs in {reference}, but the job was not pinned to an image digest \
                 when it was submitted; submit it again"
            ),
        ));
    };
    let Some(images) = shared.worker.images.clone() else {
        return Err(refuse(
            "image_unavailable",
            "this worker has no image cache".to_string(),
        ));
    };
    let pull = async move { images.prepare(&reference, &digest).await };
    match under_lease(shared, lease, signals, pull).await {
        Waited::Done(Ok(root)) => {
            tracing::info!(job = %job.id, image = %root.info.digest, "image ready");
            Ok(Some(Arc::new(root)))
        }
        Waited::Done(Err(e)) => Err(refuse(e.code(), e.to_string())),
        Waited::Stopped(outcome) => Err(outcome),
    }
}

/// Runs one claimed job in slot `slot` (whose host uid and gid its sandbox maps to), in the
/// slot's `standby` when it has one (taken only when the job gets as far as starting).
pub(crate) async fn run_job(
    shared: &Shared,
    claimed: Claimed,
    signals: JobSignals,
    slot: usize,
    standby: &mut Option<Standby>,
) {
    let Claimed { job, lease } = claimed;
    let started_ms = job.started_at.unwrap_or_else(now_millis);
    let sent_secrets = shared.coordinator.take_secrets(job.id);
    let sources = async {
        let checkout = check_out(shared, &job, &lease, &signals).await?;
        let image = image_root(shared, &job, &lease, &signals).await?;
        Ok::<_, Outcome>((checkout, image))
    };
    let (outcome, info, checkout, invariants) = match sources.await {
        Err(outcome) => (outcome, None, None, None),
        Ok((checkout, image)) => {
            let preparing = (shared.clone(), job.clone(), checkout.clone());
            let claim = lease.token;
            let prepared = blocking(move || {
                prepare(
                    &preparing.0,
                    &preparing.1,
                    preparing.2.as_deref(),
                    image,
                    slot,
                    claim,
                    sent_secrets,
                )
            })
            .await;
            match prepared {
                Err(refusal) => {
                    // It never ran: the commit's tree is known, nothing about it was proven.
                    let inv = checkout.as_ref().map(|co| Invariants {
                        tree: Some(co.tree_id().to_string()),
                        ..Invariants::default()
                    });
                    (Outcome::refused(&refusal), None, checkout, inv)
                }
                Ok(prepared) => {
                    audit_secrets(shared, &job, &prepared.secret_names).await;
                    let (executed, info) =
                        execute(shared, &lease, prepared, &signals, standby.take()).await;
                    // The proof: whatever the job did or how it ended, the tree it saw must
                    // still be the commit.
                    let (proof, inv) = match &checkout {
                        Some(co) => {
                            let (proof, inv) = prove(shared, &job, co).await;
                            (proof, Some(inv))
                        }
                        None => (Proof::NotMade, None),
                    };
                    let outcome = match executed {
                        Ok((report, end)) => verdict(&report, end, &proof, &info.stages()),
                        Err(refusal) => apply_proof(Outcome::refused(&refusal), &proof),
                    };
                    (outcome, Some(info), checkout, inv)
                }
            }
        }
    };
    let told = finish(
        shared, &job, &lease, outcome, invariants, info, &checkout, started_ms,
    )
    .await;
    // The job's hold on its tree ends here (a tainted tree is deleted with its last user).
    drop(checkout);
    if !told {
        shared.events.job_changed(job.id);
    }
}

/// Every job given secrets is in the audit trail, by secret name (never the value).
async fn audit_secrets(shared: &Shared, job: &JobRecord, names: &[String]) {
    if names.is_empty() {
        return;
    }
    let entries = names
        .iter()
        .map(|name| warden_store::AuditEntry {
            at: now_millis(),
            action: "secret.use".into(),
            tenant: Some(job.tenant.clone()),
            target: Some(name.clone()),
            outcome: "ok".into(),
            detail: Some(format!("job {} ({})", job.id, job.job_type)),
            ..Default::default()
        })
        .collect();
    if let Err(e) = shared.coordinator.audit(entries).await {
        tracing::error!(job = %job.id, error = %e, "could not audit the secrets given to the job");
    }
}

/// Runs the clean-tree proof after a job and records it; a tree that differs or cannot be
/// proven is taken out of the cache.
async fn prove(shared: &Shared, job: &JobRecord, co: &Checkout) -> (Proof, Invariants) {
    let mut inv = Invariants {
        // Sandboxed, the worktree is a read-only bind checked from inside before the job
        // starts (setup fails otherwise); unsandboxed, nothing stops the job writing.
        read_only_ok: Some(shared.executor.tier() != Tier::UnsafeFallback),
        clean_tree_ok: None,
        tree: Some(co.tree_id().to_string()),
        ..Invariants::default()
    };
    let proof = match shared.repos.cache.verify(co).await {
        Ok(proof) if proof.clean => {
            inv.clean_tree_ok = Some(true);
            Proof::Clean
        }
        Ok(proof) => {
            shared.repos.cache.taint(co);
            tracing::error!(job = %job.id, changed = proof.changed_count, "worktree mutated");
            inv.clean_tree_ok = Some(false);
            inv.changed_count = proof.changed_count as u64;
            inv.changed_paths = proof.changed.clone();
            Proof::Changed {
                count: proof.changed_count,
                shown: proof
                    .changed
                    .iter()
                    .take(5)
                    .map(|p| format!("{p:?}"))
                    .collect(),
                sha: co.sha().to_string(),
            }
        }
        Err(e) => {
            shared.repos.cache.taint(co);
            tracing::error!(job = %job.id, error = %e, "clean-tree proof failed");
            Proof::Failed(e.to_string())
        }
    };
    (proof, inv)
}

/// The job's test reports, when its type names some: stored under the lease, counted on the
/// record; what could not be read or stored is a warning, never a change of status.
async fn test_results(shared: &Shared, job: &JobRecord, lease: &Lease, done: &mut Completion) {
    let Some(results) = shared
        .config
        .job_type(&job.job_type)
        .map(|t| t.results.clone())
        .filter(|r| !r.junit.is_empty())
    else {
        return;
    };
    let dir = shared.data.artifacts(job.id);
    let got = blocking(move || results::collect(&dir, &results)).await;
    done.warnings.extend(got.warnings);
    // One transaction in the store (a remote worker's coordinator sends it in pieces that
    // each fit a message).
    if let Err(e) = shared.coordinator.append_tests(lease, 0, got.tests).await {
        tracing::warn!(job = %job.id, error = %e, "could not store the test results");
        done.warnings.push(format!("TEST_RESULTS_NOT_STORED: {e}"));
    }
    done.tests = Some(got.counts);
}

/// A review bundle's size-cap fallback, believed only once its archive and packets are there;
/// a job that claims one it did not complete fails (fail closed).
async fn review_fallback(
    shared: &Shared,
    job: &JobRecord,
    info: &mut ExecInfo,
    done: &mut Completion,
) {
    let dir = shared.data.artifacts(job.id);
    match blocking(move || crate::review::check_fallback(&dir)).await {
        Ok(fallback) => info.review = Some(fallback),
        Err(why) => {
            if done.status == Some(warden_api::JobStatus::Succeeded) {
                done.status = Some(warden_api::JobStatus::Failed);
                done.reason = Some(format!("review_bundle_incomplete: {why}"));
            }
        }
    }
}

/// Cleans up, writes `artifact.json` and tells the coordinator how the job ended. Returns
/// whether the job's waiters were told what its completion committed (they were, the moment it
/// was committed: with its record when that ended the job, or that it changed when it went back
/// to the queue for another attempt); not when the job was given back or lost.
#[allow(clippy::too_many_arguments)]
async fn finish(
    shared: &Shared,
    job: &JobRecord,
    lease: &Lease,
    outcome: Outcome,
    invariants: Option<Invariants>,
    info: Option<ExecInfo>,
    checkout: &Option<Arc<Checkout>>,
    started_ms: i64,
) -> bool {
    let id = job.id;
    // Scratch space goes before the end is recorded: whoever sees the job finished sees it clean.
    // In the same piece of blocking work: what a job that ran said about itself. When nothing
    // between that and its record needs the store (no test reports to store, no review bundle
    // to check), both go in the record's own instead: one piece of blocking work fewer per job.
    let (scratch, artifacts) = (shared.data.scratch(id), shared.data.artifacts(id));
    let ran = info.is_some() && matches!(outcome, Outcome::Complete(_));
    let at_once = ran && !has_results(shared, job) && review_base(shared, job).is_none();
    let said = if at_once {
        None
    } else {
        let scratch = scratch.clone();
        blocking(move || {
            let _ = std::fs::remove_dir_all(scratch);
            ran.then(|| outputs::read(&artifacts))
        })
        .await
    };
    let mut done = match outcome {
        Outcome::Abandon => {
            tracing::warn!(job = %id, "lease lost; another worker owns the job now");
            return false;
        }
        Outcome::Release => {
            // Its processes are gone and a re-run starts from an empty directory: what it
            // left meanwhile is defused like any finished job's.
            let dir = shared.data.artifacts(id);
            if let Err(e) = blocking(move || seal(&dir)).await {
                tracing::warn!(job = %id, error = %e, "could not seal the artifacts");
            }
            match shared.coordinator.release(lease).await {
                Ok(()) => tracing::info!(job = %id, "job re-queued at shutdown"),
                Err(e) => {
                    tracing::warn!(job = %id, error = %e, "could not give the job back to the queue")
                }
            }
            return false;
        }
        Outcome::Complete(done) => done,
    };
    done.invariants = invariants;
    done.resources = resources(info.as_ref());
    let mut info = info;
    if let (Some(i), Some(said)) = (info.as_mut(), said) {
        take_said(&mut done, i, said);
        test_results(shared, job, lease, &mut done).await;
        if review_base(shared, job).is_some() {
            review_fallback(shared, job, i, &mut done).await;
        }
    }
    let finished_ms = now_millis();
    done.telemetry = warden_core::record::RunTelemetry {
        sandbox_start_us: info.as_ref().and_then(|i| i.sandbox_start_us),
        log_bytes_dropped: info.as_ref().map_or(0, |i| i.log_bytes_dropped),
        checkout_cache_hit: checkout.as_ref().map(|co| co.hit),
        checkout_bytes: checkout
            .as_ref()
            .filter(|co| !co.hit)
            .map_or(0, |co| co.bytes()),
        cache_evictions: shared.repos.cache.take_evictions(),
    };
    let summary = checkout.as_ref().map(|co| CheckoutSummary {
        cache_hit: co.hit,
        ms: co.took.as_millis() as u64,
        files: co.files(),
        bytes: co.bytes(),
    });
    let record = RecordTrip {
        started_ms,
        finished_ms,
        info,
        checkout: summary,
        scratch: at_once.then_some(scratch),
    };
    let (mut done, written) = write_record(shared, job, done, record).await;
    match written {
        Ok(bytes) => done.artifact_bytes = bytes,
        Err(e) => {
            tracing::error!(job = %id, error = %e, "could not write artifact.json");
            done.warnings.push("ARTIFACT_JSON_WRITE_FAILED".into());
            // Fail closed: no job ends `succeeded` without its record.
            if done.status == Some(warden_api::JobStatus::Succeeded) {
                done.status = Some(warden_api::JobStatus::Error);
                done.reason = Some(format!("artifact_record_failed: {e}"));
            }
        }
    }
    // The job's waiters are told on the store's side as the completion commits (the embedded
    // store's thread): a follower sends `end` beside this task, not after it.
    let events = shared.events.clone();
    let tell: warden_store::OnCommit = Box::new(move |rec| match rec.status.is_terminal() {
        true => events.job_ended(rec.clone()),
        false => events.job_changed(rec.id),
    });
    match shared
        .coordinator
        .complete_then(lease, done, finished_ms, tell)
        .await
    {
        Ok(rec) => {
            tracing::info!(job = %id, status = %rec.status, "job finished");
            true
        }
        Err(StoreError::LeaseLost(_)) => {
            tracing::warn!(job = %id, "lease lost before completion was recorded");
            false
        }
        Err(e) => {
            tracing::error!(job = %id, error = %e, "could not record completion");
            false
        }
    }
}

/// Whether the job's type collects test reports.
fn has_results(shared: &Shared, job: &JobRecord) -> bool {
    shared
        .config
        .job_type(&job.job_type)
        .is_some_and(|t| !t.results.junit.is_empty())
}

/// What the job said about itself: warnings for the record, outputs for `artifact.json`.
fn take_said(done: &mut Completion, info: &mut ExecInfo, said: outputs::JobSaid) {
    done.warnings.extend(said.warnings);
    done.warnings.extend(said.refused);
    info.job_outputs = said.outputs;
}

/// What [`write_record`] writes besides the completion.
struct RecordTrip {
    started_ms: i64,
    finished_ms: i64,
    info: Option<ExecInfo>,
    checkout: Option<CheckoutSummary>,
    /// The job's scratch directory, when it is removed and what the job said is read on this
    /// trip (see `finish`).
    scratch: Option<std::path::PathBuf>,
}

/// Writes the job's record into its sealed artifact directory, in one piece of blocking work
/// (see [`blocking`]); returns the completion (with what the job said, when that was read on
/// this trip) and the directory's size.
async fn write_record(
    shared: &Shared,
    job: &JobRecord,
    mut done: Completion,
    trip: RecordTrip,
) -> (Completion, std::io::Result<u64>) {
    let tier = trip
        .info
        .as_ref()
        .and_then(|i| i.tier)
        .unwrap_or(shared.executor.tier());
    let job = job.clone();
    let dir = shared.data.artifacts(job.id);
    blocking(move || {
        let written = write_record_now(&dir, &job, &mut done, trip, tier);
        (done, written)
    })
    .await
}

fn write_record_now(
    dir: &std::path::Path,
    job: &JobRecord,
    done: &mut Completion,
    trip: RecordTrip,
    tier: Tier,
) -> std::io::Result<u64> {
    let RecordTrip {
        started_ms,
        finished_ms,
        mut info,
        checkout,
        scratch,
    } = trip;
    if let Some(scratch) = &scratch {
        let _ = std::fs::remove_dir_all(scratch);
    }
    if !dir.is_dir() {
        return Ok(0);
    }
    if scratch.is_some()
        && let Some(i) = info.as_mut()
    {
        take_said(done, i, outputs::read(dir));
    }
    // The job is gone: its artifacts become warden's, without setuid or world-write bits.
    seal(dir)?;
    if let Some(changes) = info
        .as_ref()
        .and_then(|i| i.report.as_ref())
        .and_then(|r| r.root_changes.as_ref())
    {
        let json = serde_json::to_vec_pretty(changes).map_err(std::io::Error::other)?;
        crate::artifact::write_warden_file(dir, "changes.json", &json)?;
    }
    if let Some(decisions) = info.as_ref().and_then(|i| i.egress.as_ref()) {
        crate::artifact::write_warden_file(
            dir,
            "egress.jsonl",
            &crate::egress::to_jsonl(decisions),
        )?;
    }
    let input = RecordInput {
        job,
        done,
        started_ms,
        finished_ms,
        info: info.as_ref(),
        tier,
        checkout,
    };
    write_artifact_json(dir, &artifact_record(input, dir))?;
    Ok(crate::artifact_dir::total_bytes(dir))
}

/// Takes a finished job's artifact directory back for warden (see `artifact_dir::seal`).
fn seal(dir: &std::path::Path) -> std::io::Result<u64> {
    let (uid, gid) = (rustix::process::geteuid(), rustix::process::getegid());
    crate::artifact_dir::seal(dir, uid.as_raw(), gid.as_raw())
}

#[cfg(test)]
pub(crate) mod tests {
    use warden_store::JobRecord;

    /// A queued job with nothing set, for tests of the pure parts.
    pub(crate) fn record() -> JobRecord {
        JobRecord {
            id: warden_core::JobId::new(),
            tenant: "default".into(),
            job_type: "t".into(),
            repo_name: None,
            remote_url: None,
            sha: None,
            git_ref: None,
            params: Default::default(),
            idempotency_key: None,
            status: warden_api::JobStatus::Running,
            reason: None,
            exit_code: None,
            signal: None,
            attempts: 1,
            max_attempts: 1,
            cancel_requested: false,
            unsafe_fallback: false,
            warnings: Vec::new(),
            created_at: 1_700_000_000_000,
            started_at: None,
            finished_at: None,
            stdout_bytes: 0,
            stderr_bytes: 0,
            log_truncated: false,
            resources: None,
            lease_owner: None,
            lease_token: 0,
            lease_expires_at: None,
            enforcement: Default::default(),
            invariants: None,
            inline_argv: None,
            image: None,
            stages: Vec::new(),
            tests: None,
            artifact_bytes: 0,
            tool_bundle: None,
        }
    }
}
