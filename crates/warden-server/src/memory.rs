//! The memory keeper: an idle server gives back what its busiest minute left it holding.

use std::sync::Arc;
use std::time::Duration;

use warden_store::Store;

use crate::metrics::Metrics;

/// How often the memory keeper looks whether the server went idle.
const IDLE_TICK: Duration = Duration::from_secs(1);

/// Store calls made for jobs or callers since the last release that make another worth it once
/// they stop: a few jobs' (each makes at least four: submitted, claimed, completed, read).
const CALLS_BEFORE_RELEASE: u64 = 16;

/// Starts the keeper: once work stops (no store call for a job or a caller for a whole
/// [`IDLE_TICK`]; see [`Metrics::work_done`]) after some, the store gives back its caches and
/// pooled buffers and the allocator its free memory, so that an idle server holds what it needs
/// and not what its busiest minute did.
pub(crate) fn start_keeper(
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    release_heap: Option<fn()>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(IDLE_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut idle = IdleWatch::new(metrics.work_done());
        loop {
            tick.tick().await;
            if idle.stopped(metrics.work_done()) {
                store.release_memory().await;
                if let Some(release) = release_heap {
                    let _ = tokio::task::spawn_blocking(release).await;
                }
                tracing::debug!("idle: memory given back");
            }
        }
    })
}

/// When work has stopped, from a count of work done read once per tick.
struct IdleWatch {
    /// The count at the last tick.
    seen: u64,
    /// The count when memory was last given back.
    released: u64,
}

impl IdleWatch {
    fn new(done: u64) -> IdleWatch {
        IdleWatch {
            seen: done,
            released: done,
        }
    }

    /// Whether to give memory back now, `done` being the count at this tick: it did not move
    /// since the last tick, and moved by at least [`CALLS_BEFORE_RELEASE`] since the last
    /// release. Once per stop.
    fn stopped(&mut self, done: u64) -> bool {
        let quiet = done == self.seen;
        self.seen = done;
        let release = quiet && done - self.released >= CALLS_BEFORE_RELEASE;
        if release {
            self.released = done;
        }
        release
    }
}

#[cfg(test)]
mod tests {
    use super::{CALLS_BEFORE_RELEASE, IdleWatch};

    /// Memory goes back once per stop of work, never while work goes on, and not for the odd
    /// call of an otherwise idle server.
    #[test]
    fn memory_goes_back_once_work_stops() {
        let mut idle = IdleWatch::new(3);
        // Busy: the count moves at every tick.
        for done in [10, 40, 90, 200] {
            assert!(!idle.stopped(done), "released while busy at {done}");
        }
        assert!(idle.stopped(200), "not released once work stopped");
        assert!(!idle.stopped(200), "released twice for one stop");
        assert!(!idle.stopped(200), "released twice for one stop");
        // An idle server's odd call (a caller's read now and then) is not worth a release...
        assert!(!idle.stopped(201));
        assert!(!idle.stopped(201));
        assert!(!idle.stopped(205));
        assert!(!idle.stopped(205));
        // ...until enough of them add up, and then only once they stop.
        let more = 200 + CALLS_BEFORE_RELEASE;
        assert!(!idle.stopped(more));
        assert!(idle.stopped(more), "not released after the next stop");
        assert!(!idle.stopped(more));
    }
}
