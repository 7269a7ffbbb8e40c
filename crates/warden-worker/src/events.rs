//! "Job X changed" notifications: sent on every state change and log append, so that log
//! followers re-read the store for their own job instead of polling it. A follower only wakes
//! for its job; one that fell behind wakes once and re-reads.

use tokio::sync::broadcast;
use warden_core::JobId;

/// How many notifications a slow follower may fall behind before it is told it lagged.
const BACKLOG: usize = 4096;

#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<JobId>,
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
        }
    }

    /// Something about `job` changed: its state, or its logs.
    pub fn job_changed(&self, job: JobId) {
        // No follower listening is fine.
        let _ = self.tx.send(job);
    }

    /// Every job's notifications from now on (a lagging reader skips what it missed).
    pub fn subscribe_all(&self) -> impl futures::Stream<Item = JobId> + Send + Unpin + use<> {
        use tokio_stream::StreamExt;
        tokio_stream::wrappers::BroadcastStream::new(self.tx.subscribe()).filter_map(|r| r.ok())
    }

    /// Notifications from now on; none is lost between subscribing and waiting.
    pub fn subscribe(&self) -> JobEvents {
        JobEvents {
            rx: self.tx.subscribe(),
        }
    }
}

pub struct JobEvents {
    rx: broadcast::Receiver<JobId>,
}

impl JobEvents {
    /// Returns when `job` changed since the last call (or notifications were missed, which may
    /// have concerned it). Never returns if the sender is gone.
    pub async fn changed(&mut self, job: JobId) {
        loop {
            match self.rx.recv().await {
                Ok(id) if id == job => return,
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(_)) => return,
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
    }
}
