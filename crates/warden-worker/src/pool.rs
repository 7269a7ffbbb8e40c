//! The slot pool: `slots` loops that each claim a job, run it, and claim the next.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use warden_core::{Config, JobId};
use warden_repo::Repos;
use warden_store::{ClaimFor, Claimed, now_millis};

use crate::run::run_job;
pub use crate::shared::WorkerConfig;
use crate::shared::{JobSignals, Shared};
use crate::{Coordinator, DataDir, Events, Executor, Standby};

pub struct WorkerPool;

/// Steers a started pool.
pub struct WorkerHandle {
    shared: Shared,
    wake: Notify,
    offers: Mutex<Offers>,
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
            offers: Mutex::default(),
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

/// The idle slots, each waiting for a job handed to it (see [`WorkerHandle::offer`]).
#[derive(Default)]
struct Offers {
    next: u64,
    waiting: Vec<(u64, oneshot::Sender<Box<Claimed>>)>,
}

/// An idle slot's offer to take a job as it is submitted: the submission claims for it in its
/// own transaction ([`ClaimFor`]) and hands it the job, instead of waking it to claim after.
pub struct SlotOffer {
    claim: ClaimFor,
    slot: oneshot::Sender<Box<Claimed>>,
}

impl SlotOffer {
    /// The claim to make for the slot.
    pub fn claim(&self) -> &ClaimFor {
        &self.claim
    }

    /// Gives the slot the job claimed for it; `Err` gives the job back when the slot is gone
    /// (its pool stopped), and its lease is then the caller's to release. An offer dropped
    /// unused sends the slot back to claiming for itself.
    pub fn hand(self, claimed: Claimed) -> Result<(), Box<Claimed>> {
        self.slot.send(Box::new(claimed))
    }
}

impl WorkerHandle {
    /// An idle slot, if there is one, offered to the next submission (see [`SlotOffer`]).
    pub fn offer(&self) -> Option<SlotOffer> {
        if self.stop_claiming.is_cancelled() {
            return None;
        }
        let (_, slot) = self.lock_offers().waiting.pop()?;
        let w = &self.shared.worker;
        Some(SlotOffer {
            claim: ClaimFor {
                worker: w.worker_id.clone(),
                job_types: w.job_types.clone(),
                lease_ms: w.lease_ms,
            },
            slot,
        })
    }

    fn lock_offers(&self) -> std::sync::MutexGuard<'_, Offers> {
        self.offers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes back an idle slot's offer; when a submission took it first, waits for what that
    /// hands over (it is already claimed: its answer follows its transaction).
    async fn withdraw(
        &self,
        id: u64,
        handed: oneshot::Receiver<Box<Claimed>>,
    ) -> Option<Box<Claimed>> {
        {
            let mut offers = self.lock_offers();
            if let Some(at) = offers.waiting.iter().position(|(o, _)| *o == id) {
                offers.waiting.swap_remove(at);
                return None;
            }
        }
        handed.await.ok()
    }

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
                Ok(Some(claimed)) => self.run(claimed, slot, &mut standby).await,
                Ok(None) => match self.idle().await {
                    Woken::Handed(claimed) => self.run(*claimed, slot, &mut standby).await,
                    Woken::Look => {}
                    Woken::Stop => return,
                },
                Err(e) => {
                    tracing::error!(slot, error = %e, "claiming a job failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// An idle slot's wait: offered to the next submission (which may hand it a job), and
    /// looking again when woken (a job queued without taking the offer) or at the next poll.
    async fn idle(&self) -> Woken {
        let (id, mut handed) = {
            let mut offers = self.lock_offers();
            let (tx, rx) = oneshot::channel();
            offers.next += 1;
            let id = offers.next;
            offers.waiting.push((id, tx));
            (id, rx)
        };
        let stop = tokio::select! {
            got = &mut handed => return got.map_or(Woken::Look, Woken::Handed),
            _ = self.wake.notified() => false,
            _ = tokio::time::sleep(self.shared.worker.idle_poll) => false,
            _ = self.stop_claiming.cancelled() => true,
        };
        match self.withdraw(id, handed).await {
            // Handed as the pool stops: back to the queue, for a slot that stays.
            Some(claimed) if stop => {
                if let Err(e) = self.shared.coordinator.release(&claimed.lease).await {
                    tracing::warn!(job = %claimed.job.id, error = %e, "could not give the job back to the queue");
                }
                Woken::Stop
            }
            Some(claimed) => Woken::Handed(claimed),
            None if stop => Woken::Stop,
            None => Woken::Look,
        }
    }

    /// Runs a job this slot claimed or was handed.
    async fn run(&self, claimed: Claimed, slot: usize, standby: &mut Option<Standby>) {
        let shared = &self.shared;
        let id = claimed.job.id;
        tracing::info!(job = %id, slot, job_type = %claimed.job.job_type, "job started");
        shared.events.job_claimed(&claimed.job);
        let signals = JobSignals::default();
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, signals.clone());
        run_job(shared, claimed, signals, slot, standby).await;
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
}

/// How an idle slot's wait ended.
enum Woken {
    /// A submission claimed a job for it.
    Handed(Box<Claimed>),
    /// Time to claim again.
    Look,
    Stop,
}
