//! "Job X changed" notifications: sent on every state change and log append, so that log
//! followers re-read the store for their own job instead of polling it. A follower only wakes
//! for its job; one that fell behind wakes once and re-reads. Appends of followed jobs are
//! also kept in memory for a while ([`LogCache`]), so their followers share one copy.

use std::sync::Arc;

use tokio::sync::broadcast;
use warden_core::JobId;
use warden_store::LogStream;

use crate::log_cache::LogCache;

/// How many notifications a slow follower may fall behind before it is told it lagged.
const BACKLOG: usize = 4096;

#[derive(Clone)]
pub struct Events {
    /// The job, and whether only its logs grew (its record did not change).
    tx: broadcast::Sender<(JobId, bool)>,
    logs: Arc<LogCache>,
}

impl Default for Events {
    fn default() -> Self {
        Events::new()
    }
}

impl Events {
    pub fn new() -> Events {
        Events {
            tx: broadcast::Sender::new(BACKLOG),
            logs: Arc::default(),
        }
    }

    /// Something about `job`'s record changed (its state, its counters).
    pub fn job_changed(&self, job: JobId) {
        // No follower listening is fine.
        let _ = self.tx.send((job, false));
    }

    /// `data` was stored at `offset` of one of `job`'s streams.
    pub fn log_appended(&self, job: JobId, stream: LogStream, offset: u64, data: &[u8]) {
        self.logs.appended(job, stream, offset, data);
        let _ = self.tx.send((job, true));
    }

    /// `job` went back to the queue, or its logs were deleted: what was kept of them is stale.
    pub fn logs_reset(&self, job: JobId) {
        self.logs.reset(job);
        let _ = self.tx.send((job, false));
    }

    /// The recent logs of followed jobs.
    pub fn logs(&self) -> &Arc<LogCache> {
        &self.logs
    }

    /// Every job's notifications from now on (a lagging reader skips what it missed).
    pub fn subscribe_all(&self) -> impl futures::Stream<Item = JobId> + Send + Unpin + use<> {
        use tokio_stream::StreamExt;
        tokio_stream::wrappers::BroadcastStream::new(self.tx.subscribe())
            .filter_map(|r| r.ok().map(|(job, _)| job))
    }

    /// Notifications from now on; none is lost between subscribing and waiting.
    pub fn subscribe(&self) -> JobEvents {
        JobEvents {
            rx: self.tx.subscribe(),
        }
    }
}

pub struct JobEvents {
    rx: broadcast::Receiver<(JobId, bool)>,
}

impl JobEvents {
    /// Returns when `job` changed since the last call (or notifications were missed, which may
    /// have concerned it). Never returns if the sender is gone.
    pub async fn changed(&mut self, job: JobId) {
        self.changed_how(job).await;
    }

    /// As [`changed`](Self::changed), and says whether only the job's logs grew (`true`: its
    /// record is as it was; `false`: it may have changed, or notifications were missed).
    pub async fn changed_how(&mut self, job: JobId) -> bool {
        loop {
            match self.rx.recv().await {
                Ok((id, logs_only)) if id == job => return logs_only,
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(_)) => return false,
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_wake_only_for_their_job() {
        let events = Events::new();
        let (mine, other) = (JobId::new(), JobId::new());
        let mut rx = events.subscribe();
        events.job_changed(other);
        events.job_changed(other);
        let waited = tokio::time::timeout(std::time::Duration::from_millis(50), rx.changed(mine));
        assert!(waited.await.is_err(), "woke for another job");
        events.job_changed(mine);
        tokio::time::timeout(std::time::Duration::from_secs(5), rx.changed(mine))
            .await
            .expect("a change of its own job wakes it");
        events.log_appended(mine, LogStream::Stdout, 0, b"x");
        events.job_changed(mine);
        assert!(
            rx.changed_how(mine).await,
            "an append says only the logs grew"
        );
        assert!(!rx.changed_how(mine).await, "a state change says so");
    }
}
