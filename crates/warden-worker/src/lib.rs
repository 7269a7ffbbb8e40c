//! The worker: claims jobs under a lease, runs each through an [`Executor`], streams its output
//! as offset-addressed log chunks, enforces the output cap, writes `artifact.json`, and reports
//! the outcome under the same lease.
//!
//! The worker talks to a [`Coordinator`], never to a database directly: embedded in the server
//! the coordinator is the store itself; a remote worker's coordinator is the control plane.

mod artifact;
pub mod artifact_dir;
pub mod egress;
mod events;
mod executor;
pub mod junit;
pub mod log_cache;
pub mod review;
pub mod suites;

/// Deterministic garbage for the parsers' property tests (the fuzz targets check the same
/// properties with nightly): `count` documents of up to `max_len` bytes from `alphabet`.
#[cfg(test)]
pub(crate) fn garbage(alphabet: &[u8], max_len: u64, count: usize) -> Vec<Vec<u8>> {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    (0..count)
        .map(|_| {
            let len = next() % max_len;
            (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect()
        })
        .collect()
}

/// The fuzz target's entry point for `warden-outputs.json` (`fuzz/fuzz_targets/outputs.rs`):
/// parses `data` as the file a job writes and checks the properties any input must give.
pub fn fuzz_outputs(data: &[u8]) {
    run::outputs_check(data);
}
mod layout;
mod pool;
mod remote;
mod run;
pub mod secrets;
mod shared;
pub mod standalone;
pub mod token;
pub mod tool_bundles;

pub use artifact::{ArtifactJson, write_artifact_json};
pub use events::{Events, JobEvents};
pub use executor::{
    Execution, Executor, Standby, SupervisedExecutor, local_executor, sandbox_self_test,
};
pub use layout::{DataDir, DataDirError, DataDirLock};
pub use pool::{SlotOffer, WorkerConfig, WorkerHandle, WorkerPool};
pub use remote::{RemoteCoordinator, RemoteError, RemoteOptions};

use async_trait::async_trait;
use warden_store::{
    Claimed, Completion, HeartbeatReply, JobRecord, Lease, LogStream, Millis, Store, StoreError,
};

/// What a worker needs from whoever hands out jobs.
#[async_trait]
pub trait Coordinator: Send + Sync + 'static {
    /// The next job for this worker (of one of `job_types`, when given), or `None` when there
    /// is none now.
    async fn claim(
        &self,
        worker: &str,
        job_types: Option<&[String]>,
        lease_ms: i64,
        now: Millis,
    ) -> Result<Option<Claimed>, StoreError>;
    async fn heartbeat(
        &self,
        lease: &Lease,
        lease_ms: i64,
        now: Millis,
    ) -> Result<HeartbeatReply, StoreError>;
    async fn append_log(
        &self,
        lease: &Lease,
        stream: LogStream,
        offset: u64,
        data: &[u8],
    ) -> Result<(), StoreError>;
    /// Stores test results of the lease's attempt from position `first` (see `Store`).
    async fn append_tests(
        &self,
        lease: &Lease,
        first: u32,
        tests: Vec<warden_store::TestResult>,
    ) -> Result<(), StoreError>;
    async fn complete(
        &self,
        lease: &Lease,
        done: Completion,
        now: Millis,
    ) -> Result<JobRecord, StoreError>;
    /// [`complete`](Self::complete), with `on_commit` told the record once it is committed
    /// (see [`Store::complete_then`]: the embedded store tells it before this returns, on its
    /// own thread; a remote worker's coordinator when the control plane answered).
    async fn complete_then(
        &self,
        lease: &Lease,
        done: Completion,
        now: Millis,
        on_commit: warden_store::OnCommit,
    ) -> Result<JobRecord, StoreError> {
        let record = self.complete(lease, done, now).await?;
        on_commit(&record);
        Ok(record)
    }
    async fn release(&self, lease: &Lease) -> Result<(), StoreError>;
    /// The secrets a control plane sent with this job (remote workers; taken once). `None`:
    /// the worker's own grants apply. `Some(Err)`: the job may not run (they were withheld).
    fn take_secrets(
        &self,
        _job: warden_core::JobId,
    ) -> Option<Result<crate::secrets::JobSecrets, String>> {
        None
    }
    /// Records what the worker did that the audit trail keeps (a job given secrets). A remote
    /// worker's control plane audits what it sends instead: its worker only logs.
    async fn audit(&self, entries: Vec<warden_store::AuditEntry>) -> Result<(), StoreError> {
        for e in entries {
            tracing::info!(action = %e.action, target = ?e.target, tenant = ?e.tenant, "audit");
        }
        Ok(())
    }
}

#[async_trait]
impl<S: Store + ?Sized> Coordinator for S {
    async fn claim(
        &self,
        worker: &str,
        job_types: Option<&[String]>,
        lease_ms: i64,
        now: Millis,
    ) -> Result<Option<Claimed>, StoreError> {
        Store::claim(self, worker, job_types, lease_ms, now).await
    }
    async fn heartbeat(
        &self,
        lease: &Lease,
        lease_ms: i64,
        now: Millis,
    ) -> Result<HeartbeatReply, StoreError> {
        Store::heartbeat(self, lease, lease_ms, now).await
    }
    async fn append_log(
        &self,
        lease: &Lease,
        stream: LogStream,
        offset: u64,
        data: &[u8],
    ) -> Result<(), StoreError> {
        Store::append_log(self, lease, stream, offset, data).await
    }
    async fn append_tests(
        &self,
        lease: &Lease,
        first: u32,
        tests: Vec<warden_store::TestResult>,
    ) -> Result<(), StoreError> {
        Store::append_tests(self, lease, first, tests).await
    }
    async fn complete(
        &self,
        lease: &Lease,
        done: Completion,
        now: Millis,
    ) -> Result<JobRecord, StoreError> {
        Store::complete(self, lease, done, now).await
    }
    async fn complete_then(
        &self,
        lease: &Lease,
        done: Completion,
        now: Millis,
        on_commit: warden_store::OnCommit,
    ) -> Result<JobRecord, StoreError> {
        Store::complete_then(self, lease, done, now, on_commit).await
    }
    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        Store::release(self, lease).await
    }
    async fn audit(&self, entries: Vec<warden_store::AuditEntry>) -> Result<(), StoreError> {
        Store::append_audit(self, entries).await
    }
}
