//! `warden serve`: the embedded control plane on one machine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use warden_core::Config;
use warden_sandbox::{Isolation, Launcher};
use warden_store::{Store, now_millis};
use warden_store_sqlite::SqliteStore;
use warden_worker::{DataDir, SupervisedExecutor, sandbox_self_test};

use crate::http::app;
use crate::service::JobService;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "data directory {0} is in use by another warden process (lock held on warden.lock); \
         stop it or choose another --data-dir"
    )]
    Locked(PathBuf),
    #[error("store: {0}")]
    Store(#[from] warden_store::StoreError),
    #[error("listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("serve: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs the server until SIGTERM or SIGINT, then stops gracefully. `supervisor_exe` is the
/// `warden` binary, started per job as its supervisor. `ready` receives the bound address.
pub async fn run(
    config: Config,
    supervisor_exe: PathBuf,
    ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<(), ServeError> {
    let data_dir_err = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| ServeError::DataDir { path, source }
    };
    std::fs::create_dir_all(&config.data_dir).map_err(data_dir_err(&config.data_dir))?;
    let root = std::fs::canonicalize(&config.data_dir).map_err(data_dir_err(&config.data_dir))?;
    let data = DataDir::new(&root);
    for dir in [data.artifacts_root(), data.scratch_root()] {
        std::fs::create_dir_all(&dir).map_err(data_dir_err(&dir))?;
    }
    data.prepare_sandbox_dirs().map_err(data_dir_err(&root))?;
    // One server per data directory: SQLite's embedded queue assumes it owns every lease.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(data.lock_file())
        .map_err(data_dir_err(&root))?;
    if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        return Err(ServeError::Locked(root));
    }

    let sqlite = Arc::new(SqliteStore::open(&data.database())?);
    let store: Arc<dyn Store> = sqlite.clone();
    // Every lease in this database was held by a previous run of this very server, which is gone
    // (we hold the lock): re-queue its jobs now, or end them `worker_lost` when out of attempts.
    for r in store.reap_expired(i64::MAX, now_millis()).await? {
        tracing::warn!(job = %r.job_id, now = %r.now, "recovered a job from a previous run");
    }
    // Scratch space of jobs from a previous run is never reused.
    if let Ok(entries) = std::fs::read_dir(data.scratch_root()) {
        for e in entries.flatten() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }

    // Can this host give jobs the full sandbox? Learn it once, now, by running one.
    let launcher = Launcher::new(supervisor_exe);
    let sandbox = SupervisedExecutor::new(launcher.clone(), Isolation::Sandbox);
    let self_test = match warden_sandbox::prepare_etc(&data.sandbox_etc()) {
        Ok(()) => {
            sandbox_self_test(
                &sandbox,
                &data.scratch_root(),
                &data.sandbox_etc(),
                config.sandbox_uid,
                config.sandbox_gid,
            )
            .await
        }
        Err(e) => Err(format!("prepare /etc: {e}")),
    };
    let executor = match self_test {
        Ok(()) => {
            tracing::info!("kernel sandbox available: every job runs in it");
            Arc::new(sandbox)
        }
        Err(e) if config.unsafe_fallback => {
            tracing::warn!(
                reason = %e,
                "the kernel sandbox cannot be set up on this host; unsafe_fallback is on, so \
                 jobs run as supervised processes WITHOUT the sandbox (recorded on every job); \
                 run `warden doctor`"
            );
            Arc::new(SupervisedExecutor::new(launcher, Isolation::UnsafeFallback))
        }
        Err(e) => {
            tracing::error!(
                reason = %e,
                "the kernel sandbox cannot be set up on this host: jobs will end `error` \
                 (fail closed); run `warden doctor`"
            );
            Arc::new(sandbox)
        }
    };
    for (name, t) in config.job_types.iter().filter(|(_, t)| t.network) {
        tracing::warn!(
            job_type = %name,
            argv0 = %t.argv[0],
            "network: true shares the host's network namespace: these jobs can reach the \
             network and services on the host's loopback; grant it only to trusted job types"
        );
    }
    let config = Arc::new(config);
    let lease_ms = (config.lease_s.get() as i64).saturating_mul(1000);
    let repos = warden_repo::Repos::open(&data.git(), &config.git).map_err(|source| {
        ServeError::DataDir {
            path: data.git(),
            source,
        }
    })?;
    let service = Arc::new(JobService::embedded(
        sqlite,
        executor,
        config.clone(),
        data,
        Arc::new(repos),
    ));
    let events = service.events.clone();

    // The reaper: a lease that was not renewed in time means its worker is gone.
    let reaper = {
        let store = store.clone();
        let events = events.clone();
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval(Duration::from_millis((lease_ms / 2).max(100) as u64));
            loop {
                tick.tick().await;
                let now = now_millis();
                match store.reap_expired(now, now).await {
                    Ok(r) if !r.is_empty() => {
                        for j in &r {
                            tracing::warn!(job = %j.job_id, now = %j.now, "lease expired");
                            events.job_changed(j.job_id);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "lease reaper failed"),
                }
            }
        })
    };

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, data_dir = %root.display(), slots = config.slots.get(), "warden listening");
    println!("warden listening on http://{addr}");
    if let Some(tx) = ready {
        let _ = tx.send(addr);
    }

    let grace = Duration::from_secs(config.shutdown_grace_s.get());
    let shutdown = {
        let service = service.clone();
        async move {
            wait_for_stop_signal().await;
            tracing::info!(
                grace_s = grace.as_secs(),
                "stopping: no new jobs; running jobs get a grace period"
            );
            service.drain(grace).await;
            tracing::info!("all slots stopped; unfinished jobs are back in the queue");
        }
    };
    // Small answers (a job id, one log event) must not wait for delayed ACKs (Nagle).
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
    });
    axum::serve(listener, app(service))
        .with_graceful_shutdown(shutdown)
        .await?;
    reaper.abort();
    drop(lock);
    Ok(())
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the server can only be killed; keep serving.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
