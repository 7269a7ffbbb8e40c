//! "Job X changed" notifications: sent on every state change and log append, so that log
//! followers re-read the store for their own job instead of polling it. A follower waits on its
//! own job's counters and is woken only for that job: a change of one job costs its own
//! followers, not every follower of every job. Appends of followed jobs are also kept in memory
//! for a while ([`LogCache`]), so their followers share one copy. Remote workers' sessions see
//! every job's notifications ([`Events::subscribe_all`]), to push cancellations.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, broadcast};
use warden_core::JobId;
use warden_store::{JobRecord, LogStream};

use crate::log_cache::LogCache;

/// How many notifications a slow whole-stream reader may fall behind before it skips.
const BACKLOG: usize = 4096;

#[derive(Clone)]
pub struct Events {
    /// Every job's notifications, for [`subscribe_all`](Events::subscribe_all).
    tx: broadcast::Sender<JobId>,
    /// The jobs someone waits on, each with its own counters.
    watched: Arc<Mutex<HashMap<JobId, Arc<Watched>>>>,
    logs: Arc<LogCache>,
}

/// One watched job: how often its record changed and its logs grew, and its waiters.
#[derive(Default)]
struct Watched {
    record: AtomicU64,
    logs: AtomicU64,
    notify: Notify,
    /// Its record as the completion that ended it returned it, when that ran here.
    ended: Mutex<Option<Arc<JobRecord>>>,
    /// Its record as its claim here committed it, with the `record` counter the claim left:
    /// current while the counter has not moved since.
    latest: Mutex<Option<(u64, Arc<JobRecord>)>>,
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
            watched: Arc::default(),
            logs: Arc::default(),
        }
    }

    fn watched(&self) -> MutexGuard<'_, HashMap<JobId, Arc<Watched>>> {
        // Counters and a Notify: sound whatever a panicking holder left.
        self.watched.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn tell(&self, job: JobId, logs_only: bool) {
        self.tell_noting(job, logs_only, |_, _| {});
    }

    /// [`tell`](Self::tell), with `note` given the job's watch and the counter the change left
    /// before its waiters wake (only when someone watches it).
    fn tell_noting(&self, job: JobId, logs_only: bool, note: impl FnOnce(&Watched, u64)) {
        if let Some(w) = self.watched().get(&job) {
            let counter = if logs_only { &w.logs } else { &w.record };
            note(w, counter.fetch_add(1, Ordering::SeqCst) + 1);
            w.notify.notify_waiters();
        }
        // No session listening is fine.
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(job);
        }
    }

    /// Something about `job`'s record changed (its state, its counters).
    pub fn job_changed(&self, job: JobId) {
        self.tell(job, false);
    }

    /// `job` ended, and `record` is what its completion committed: its waiters take it from
    /// here instead of reading it back from the store.
    pub fn job_ended(&self, record: JobRecord) {
        let job = record.id;
        if let Some(w) = self.watched().get(&job) {
            *w.ended.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(record));
        }
        self.tell(job, false);
    }

    /// `record` was claimed here (its logs start over, as on [`logs_reset`](Self::logs_reset)),
    /// and is what the claim committed: its waiters take it from here while nothing else
    /// changed the job, instead of reading it back from the store.
    pub fn job_claimed(&self, record: &JobRecord) {
        self.logs.reset(record.id);
        // A change told after this one moves the counter past the one kept with the record.
        self.tell_noting(record.id, false, |w, counter| {
            *w.latest.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((counter, Arc::new(record.clone())));
        });
    }

    /// `data` was stored at `offset` of one of `job`'s streams.
    pub fn log_appended(&self, job: JobId, stream: LogStream, offset: u64, data: &[u8]) {
        self.logs.appended(job, stream, offset, data);
        self.tell(job, true);
    }

    /// `job` went back to the queue, or its logs were deleted: what was kept of them is stale.
    pub fn logs_reset(&self, job: JobId) {
        self.logs.reset(job);
        self.tell(job, false);
    }

    /// The recent logs of followed jobs.
    pub fn logs(&self) -> &Arc<LogCache> {
        &self.logs
    }

    /// Every job's notifications from now on (a lagging reader skips what it missed).
    pub fn subscribe_all(&self) -> impl futures::Stream<Item = JobId> + Send + Unpin + use<> {
        use tokio_stream::StreamExt;
        tokio_stream::wrappers::BroadcastStream::new(self.tx.subscribe()).filter_map(|r| r.ok())
    }

    /// `job`'s notifications from now on; none is lost between subscribing and waiting.
    pub fn subscribe(&self, job: JobId) -> JobEvents {
        let w = self.watched().entry(job).or_default().clone();
        JobEvents {
            seen: (
                w.record.load(Ordering::SeqCst),
                w.logs.load(Ordering::SeqCst),
            ),
            w,
            job,
            watched: self.watched.clone(),
        }
    }
}

/// Waits for changes of one job. The job is watched while any of these lives.
pub struct JobEvents {
    w: Arc<Watched>,
    /// The record's and the logs' counters when last looked at.
    seen: (u64, u64),
    job: JobId,
    watched: Arc<Mutex<HashMap<JobId, Arc<Watched>>>>,
}

impl JobEvents {
    /// The job's terminal record, when the completion that ended it ran in this process and
    /// told [`Events::job_ended`] while this waiter watched (a terminal record no longer
    /// changes); otherwise the store has it.
    pub fn ended(&self) -> Option<Arc<JobRecord>> {
        self.w
            .ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The job's record as its claim here committed it, when no change was told after that
    /// claim's (see [`Events::job_claimed`]); otherwise the store has it. A change committed
    /// after the claim but told before it may be missing from it.
    pub fn current(&self) -> Option<Arc<JobRecord>> {
        let latest = self.w.latest.lock().unwrap_or_else(|p| p.into_inner());
        latest
            .as_ref()
            .filter(|(counter, _)| *counter == self.w.record.load(Ordering::SeqCst))
            .map(|(_, record)| record.clone())
    }

    /// Returns when the job changed since the last call (or since subscribing).
    pub async fn changed(&mut self) {
        self.changed_how().await;
    }

    /// As [`changed`](Self::changed), and says whether only the job's logs grew since (`true`:
    /// its record is as it was; `false`: it changed, perhaps besides its logs). Changes that
    /// came while nobody waited are told together, once.
    pub async fn changed_how(&mut self) -> bool {
        loop {
            // Registered before looking: a change between the look and the wait still wakes it.
            let woken = self.w.notify.notified();
            let now = (
                self.w.record.load(Ordering::SeqCst),
                self.w.logs.load(Ordering::SeqCst),
            );
            if now != self.seen {
                let logs_only = now.0 == self.seen.0;
                self.seen = now;
                return logs_only;
            }
            woken.await;
        }
    }
}

impl Drop for JobEvents {
    fn drop(&mut self) {
        let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        // The map's handle and this one: the last waiter of the job is going.
        if Arc::strong_count(&self.w) == 2 {
            watched.remove(&self.job);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn followers_wake_only_for_their_job() {
        let events = Events::new();
        let (mine, other) = (JobId::new(), JobId::new());
        let mut rx = events.subscribe(mine);
        events.job_changed(other);
        events.log_appended(other, LogStream::Stdout, 0, b"x");
        let waited = tokio::time::timeout(Duration::from_millis(50), rx.changed());
        assert!(waited.await.is_err(), "woke for another job");
        events.job_changed(mine);
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .expect("a change of its own job wakes it");
        events.log_appended(mine, LogStream::Stdout, 0, b"x");
        assert!(rx.changed_how().await, "an append says only the logs grew");
        events.log_appended(mine, LogStream::Stdout, 1, b"y");
        events.job_changed(mine);
        assert!(
            !rx.changed_how().await,
            "a state change among appends says so"
        );
        let again = tokio::time::timeout(Duration::from_millis(50), rx.changed());
        assert!(again.await.is_err(), "changes told once were told");
    }

    #[tokio::test]
    async fn an_ended_job_hands_its_record_to_its_waiters_only() {
        let events = Events::new();
        let mut ended = crate::run::tests::record();
        ended.status = warden_api::JobStatus::Succeeded;
        ended.stdout_bytes = 42;
        let mut rx = events.subscribe(ended.id);
        assert!(rx.ended().is_none(), "running: the store has its record");
        events.job_ended(ended.clone());
        assert!(!rx.changed_how().await, "the end is a change of its record");
        assert_eq!(rx.ended().as_deref(), Some(&ended));
        // A job nobody waits on keeps nothing here.
        let mut other = crate::run::tests::record();
        other.status = warden_api::JobStatus::Failed;
        let other_id = other.id;
        events.job_ended(other);
        assert!(!events.watched().contains_key(&other_id));
        assert!(events.subscribe(other_id).ended().is_none());
    }

    #[tokio::test]
    async fn a_claimed_record_is_current_until_the_next_change_and_resets_the_logs() {
        let events = Events::new();
        let claimed = crate::run::tests::record();
        let id = claimed.id;
        let mut rx = events.subscribe(id);
        let follow = events.logs().follow(id);
        events.log_appended(id, LogStream::Stdout, 0, b"an earlier attempt's");
        assert!(rx.changed_how().await);
        assert!(rx.current().is_none(), "nothing claimed here yet");
        events.job_claimed(&claimed);
        assert!(!rx.changed_how().await, "a claim is a change of its record");
        assert_eq!(rx.current().as_deref(), Some(&claimed));
        assert!(
            !matches!(
                events.logs().read(id, LogStream::Stdout, 0, 64),
                crate::log_cache::Lookup::Hit(_)
            ),
            "the earlier attempt's logs are gone from the cache"
        );
        // Logs growing leave the record as it was; any other change makes it stale.
        events.log_appended(id, LogStream::Stdout, 0, b"x");
        assert_eq!(rx.current().as_deref(), Some(&claimed));
        events.job_changed(id);
        assert!(
            rx.current().is_none(),
            "changed since its claim: the store has it"
        );
        // A job nobody waits on keeps nothing here.
        let other = crate::run::tests::record();
        events.job_claimed(&other);
        assert!(events.subscribe(other.id).current().is_none());
        drop(follow);
    }

    #[tokio::test]
    async fn a_waiter_wakes_for_a_change_from_another_task_and_the_last_one_unwatches() {
        let events = Events::new();
        let job = JobId::new();
        let (mut a, b) = (events.subscribe(job), events.subscribe(job));
        let sender = events.clone();
        let wait = tokio::spawn(async move {
            a.changed().await;
            a
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        sender.job_changed(job);
        let a = tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .expect("woken")
            .unwrap();
        drop(a);
        assert!(events.watched().contains_key(&job), "b still waits on it");
        drop(b);
        assert!(events.watched().is_empty(), "nobody waits: not watched");
        // A job nobody waits on is still told to whole-stream readers.
        let mut all = events.subscribe_all();
        events.job_changed(job);
        use tokio_stream::StreamExt;
        assert_eq!(all.next().await, Some(job));
    }
}
