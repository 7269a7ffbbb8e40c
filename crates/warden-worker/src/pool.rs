//! The slot pool: `slots` loops that each claim a job, run it, and claim the next.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use warden_core::{Config, JobId};
use warden_repo::Repos;
use warden_store::now_millis;

use crate::run::run_job;
pub use crate::shared::WorkerConfig;
use crate::shared::{JobSignals, Shared};
use crate::{Coordinator, DataDir, Events, Executor, Standby};

pub struct WorkerPool;

/// Steers a started pool.
pub struct WorkerHandle {
    shared: Shared,
    wake: Notify,
    running: Arc<Mutex<HashMap<JobId, JobSignals>>>,
    stop_claiming: CancellationToken,
    slots: tokio::sync::Mutex<JoinSet<()>>,
}

impl WorkerPool {
    pub fn start(
        coordinator: Arc<dyn Coordinator>,
        executor: Arc<dyn Executor>,
        config: Arc<Config>,
        data: DataDir,
        events: Events,
        worker: WorkerConfig,
        repos: Arc<Repos>,
    ) -> Arc<WorkerHandle> {
        let shared = Shared {
            coordinator,
            executor,
            config,
            data,
            events,
            worker,
            repos,
        };
        let handle = Arc::new(WorkerHandle {
            shared: shared.clone(),
            wake: Notify::new(),
            running: Arc::default(),
            stop_claiming: CancellationToken::new(),
            slots: tokio::sync::Mutex::new(JoinSet::new()),
        });
        let mut set = JoinSet::new();
        for slot in 0..shared.worker.slots {
            let h = handle.clone();
            set.spawn(async move { h.slot_loop(slot).await });
        }
        // The JoinSet is only ever locked here and at shutdown.
        if let Ok(mut guard) = handle.slots.try_lock() {
            *guard = set;
        }
        handle
    }
}

impl WorkerHandle {
    /// A job was queued: one idle slot looks now instead of at its next poll. One, not all:
    /// every other would find nothing and cost the store a claim for it. With no slot idle,
    /// the next to finish claims anyway and the next to wait looks once more at once.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Cancels a job running in this pool at once. False when it is not running here.
    pub fn cancel(&self, id: JobId) -> bool {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        match running.get(&id) {
            Some(signals) => {
                signals.cancel.cancel();
                true
            }
            None => false,
        }
    }

    pub fn running_jobs(&self) -> usize {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Stops claiming, lets running jobs go on for `grace`, then kills what is left and gives
    /// it back to the queue. Returns when every slot has stopped.
    pub async fn shutdown(&self, grace: Duration) {
        self.stop_claiming.cancel();
        let deadline = tokio::time::Instant::now() + grace;
        while self.running_jobs() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        {
            let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            for signals in running.values() {
                signals.shutdown.cancel();
            }
        }
        let mut slots = self.slots.lock().await;
        while slots.join_next().await.is_some() {}
    }

    async fn slot_loop(self: Arc<Self>, slot: usize) {
        let shared = &self.shared;
        // A supervisor and pipes for the next job, made while the slot waits for it (or while
        // its claim is in the store): the zygote's round trip is off the job's path.
        let mut standby: Option<Standby> = None;
        loop {
            if self.stop_claiming.is_cancelled() {
                return;
            }
            let claim = shared.coordinator.claim(
                &shared.worker.worker_id,
                shared.worker.job_types.as_deref(),
                shared.worker.lease_ms,
                now_millis(),
            );
            let make = async {
                match standby {
                    Some(_) => None,
                    None => Some(shared.executor.standby().await),
                }
            };
            // A stop cancels the claim, never a fork half done (the zygote answers in order).
            let claim = async {
                tokio::select! {
                    c = claim => Some(c),
                    _ = self.stop_claiming.cancelled() => None,
                }
            };
            let (claimed, made) = tokio::join!(claim, make);
            let Some(claimed) = claimed else {
                return;
            };
            match made {
                Some(Ok(ready)) => standby = Some(ready),
                // The job's own start says why, if it cannot make one either.
                Some(Err(e)) => tracing::debug!(slot, error = %e, "no supervisor made ready"),
                None => {}
            }
            match claimed {
                Ok(Some(claimed)) => {
                    let id = claimed.job.id;
                    tracing::info!(job = %id, slot, job_type = %claimed.job.job_type, "job started");
                    shared.events.job_claimed(&claimed.job);
                    let signals = JobSignals::default();
                    self.running
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(id, signals.clone());
                    run_job(shared, claimed, signals, slot, &mut standby).await;
                    self.running
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id);
                }
                Ok(None) => {
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(shared.worker.idle_poll) => {}
                        _ = self.stop_claiming.cancelled() => return,
                    }
                }
                Err(e) => {
                    tracing::error!(slot, error = %e, "claiming a job failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}
