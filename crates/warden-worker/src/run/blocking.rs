//! A job's blocking filesystem work, kept off the runtime's threads without a hand-off.

/// Filesystem work must never stall the runtime's few threads (a slow disk under a worker
/// thread stalls every request that thread serves). On a multi-thread runtime it runs in place,
/// in the job's own task, after the thread has handed its other tasks to another
/// (`block_in_place`): the job waits for it anyway, and no thread has to be woken for it and then
/// wake the job's again — two hand-offs fewer on a job's path each time. Elsewhere (a
/// current-thread runtime, where nothing could take the other tasks) it goes to the blocking pool.
pub(super) async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    if Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread {
        return tokio::task::block_in_place(work);
    }
    match tokio::task::spawn_blocking(work).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::time::Duration;

    /// While a job's filesystem work runs, the runtime's other tasks go on, even with a single
    /// worker thread; and a current-thread runtime gets the blocking pool instead.
    #[test]
    fn blocking_work_never_stalls_the_other_tasks() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (ticks, done) = (
            Arc::new(AtomicU32::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let other = rt.spawn({
            let (ticks, done) = (ticks.clone(), done.clone());
            async move {
                while !done.load(Ordering::SeqCst) {
                    ticks.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        let job = rt.spawn({
            let ticks = ticks.clone();
            async move {
                super::blocking(move || {
                    let before = ticks.load(Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(300));
                    ticks.load(Ordering::SeqCst) - before
                })
                .await
            }
        });
        let ticked = rt.block_on(job).unwrap();
        done.store(true, Ordering::SeqCst);
        rt.block_on(other).unwrap();
        assert!(
            ticked >= 10,
            "the other task ticked {ticked} times in 300 ms of blocking work (every 5 ms if free)"
        );

        let local = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let on = local.block_on(super::blocking(|| std::thread::current().id()));
        assert_ne!(on, std::thread::current().id(), "ran on the blocking pool");
    }
}
