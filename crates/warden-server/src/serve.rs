//! `warden serve`: a control plane. On the embedded SQLite store (the default) it also runs jobs
//! in-process; on PostgreSQL (`--database-url`) it is one of any number of replicas, and jobs run
//! on remote workers (`warden worker`). Both serve HTTP and gRPC.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use warden_core::Config;
use warden_sandbox::{Isolation, Launcher};
use warden_store::{Store, now_millis};
pub use warden_store_postgres::OpenError;
use warden_store_postgres::PgStore;
use warden_store_sqlite::SqliteStore;
use warden_worker::{DataDir, Events, SupervisedExecutor, sandbox_self_test};

use crate::grpc::{Auth, WorkerHub};
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
    #[error("database: {0}")]
    Database(#[from] warden_store_postgres::OpenError),
    #[error("{0}")]
    Config(String),
    #[error("listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("serve: {0}")]
    Io(#[from] std::io::Error),
}

/// How `warden serve` runs beyond its configuration file.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// `postgres://…`: share this database with other replicas; jobs run on remote workers.
    pub database_url: Option<String>,
    /// Connections in the PostgreSQL pool.
    pub database_pool: u32,
}

/// Runs the server until SIGTERM or SIGINT, then stops gracefully. `supervisor_exe` is the
/// `warden` binary, started per job as its supervisor.
pub async fn run(
    config: Config,
    supervisor_exe: PathBuf,
    options: ServeOptions,
) -> Result<(), ServeError> {
    let token = config.worker_token().map_err(ServeError::Config)?;
    if crate::grpc::is_public(config.grpc_listen) && token.is_none() {
        return Err(ServeError::Config(format!(
            "grpc_listen {} is not loopback: every caller there must present the worker token, \
             and none is configured (set WARDEN_WORKER_TOKEN or worker_token_file)",
            config.grpc_listen
        )));
    }
    let data_dir_err = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| ServeError::DataDir { path, source }
    };
    std::fs::create_dir_all(&config.data_dir).map_err(data_dir_err(&config.data_dir))?;
    let root = std::fs::canonicalize(&config.data_dir).map_err(data_dir_err(&config.data_dir))?;
    let mut data = DataDir::new(&root);
    if let Some(dir) = &config.artifact_dir {
        std::fs::create_dir_all(dir).map_err(data_dir_err(dir))?;
        data = data.with_artifacts(std::fs::canonicalize(dir).map_err(data_dir_err(dir))?);
    }
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

    let (store, sqlite, pg): (Arc<dyn Store>, _, _) = match &options.database_url {
        Some(url) => {
            let pg = PgStore::connect(url, options.database_pool.max(2)).await?;
            // Leases here belong to every replica's workers: only expiry may take them back.
            (Arc::new(pg.clone()), None, Some(pg))
        }
        None => {
            let sqlite = Arc::new(SqliteStore::open(&data.database())?);
            // Every lease in this database was held by a previous run of this very server,
            // which is gone (we hold the lock): re-queue its jobs now, or end them
            // `worker_lost` when out of attempts.
            for r in sqlite.reap_expired(i64::MAX, now_millis()).await? {
                tracing::warn!(job = %r.job_id, now = %r.now, "recovered a job from a previous run");
            }
            (sqlite.clone() as Arc<dyn Store>, Some(sqlite), None)
        }
    };
    // Scratch space of jobs from a previous run is never reused.
    if let Ok(entries) = std::fs::read_dir(data.scratch_root()) {
        for e in entries.flatten() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }

    let config = Arc::new(config);
    let lease_ms = (config.lease_s.get() as i64).saturating_mul(1000);
    let repos = Arc::new(
        warden_repo::Repos::open(&data.git(), &config.git).map_err(|source| {
            ServeError::DataDir {
                path: data.git(),
                source,
            }
        })?,
    );
    let service = Arc::new(match sqlite {
        Some(sqlite) => {
            let executor = local_executor(&config, &data, supervisor_exe).await;
            JobService::embedded(sqlite, executor, config.clone(), data.clone(), repos)
        }
        None => JobService::new(
            store.clone(),
            config.clone(),
            data.clone(),
            Events::new(),
            repos,
            None,
            // Jobs may run on workers without the sandbox only where this is allowed; such a
            // worker's completions also carry an UNSAFE_FALLBACK warning.
            config.unsafe_fallback,
        ),
    });
    let events = service.events.clone();
    // Wake-ups from the other replicas: queued jobs, changed jobs.
    let listener_task = pg.map(|pg| {
        let (svc, events) = (service.clone(), events.clone());
        pg.listen(move || svc.job_queued(), move |id| events.job_changed(id))
    });

    // The reaper: a lease that was not renewed in time means its worker is gone.
    let reaper = {
        let store = store.clone();
        let svc = service.clone();
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval(Duration::from_millis((lease_ms / 4).max(100) as u64));
            loop {
                tick.tick().await;
                let now = now_millis();
                match store.reap_expired(now, now).await {
                    Ok(r) if !r.is_empty() => {
                        for j in &r {
                            tracing::warn!(job = %j.job_id, now = %j.now, "lease expired");
                            svc.events.job_changed(j.job_id);
                        }
                        svc.job_queued();
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
    let grpc_listener = tokio::net::TcpListener::bind(config.grpc_listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.grpc_listen,
            source,
        })?;
    let grpc_addr = grpc_listener.local_addr()?;
    tracing::info!(%addr, %grpc_addr, data_dir = %root.display(), store = if options.database_url.is_some() { "postgres" } else { "sqlite" }, "warden listening");
    // Announced on stdout for scripts; a closed stdout is no reason to stop serving.
    {
        use std::io::Write;
        let mut out = std::io::stdout();
        let _ = writeln!(out, "warden listening on http://{addr}");
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let _ = writeln!(out, "warden gRPC listening on {scheme}://{grpc_addr}");
        let _ = out.flush();
    }

    let hub = Arc::new(WorkerHub {
        store: store.clone(),
        config: config.clone(),
        events: events.clone(),
        data: data.clone(),
        queued: service.queued_events(),
        lease_ms,
        shutdown: service.shutdown.clone(),
    });
    let mut grpc = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        // A worker whose host vanished is noticed within half a minute, not at TCP's timeout.
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    if let Some(tls) = &config.tls {
        let read = |p: &std::path::Path| {
            std::fs::read(p)
                .map_err(|e| ServeError::Config(format!("tls: read {}: {e}", p.display())))
        };
        let identity = tonic::transport::Identity::from_pem(read(&tls.cert)?, read(&tls.key)?);
        grpc = grpc
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| ServeError::Config(format!("tls: {e}")))?;
    }
    let grpc_shutdown = service.shutdown.clone();
    let grpc_task = tokio::spawn(
        grpc.add_routes(crate::grpc::routes(service.clone(), hub, Auth::new(token)))
            .serve_with_incoming_shutdown(
                // The builder's tcp_nodelay covers only listeners it binds itself: without it
                // here, a stream's second small message waits out a delayed ACK (40 ms).
                tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
                grpc_shutdown.cancelled_owned(),
            ),
    );

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
    match grpc_task.await {
        Ok(Err(e)) => tracing::error!(error = %e, "gRPC server failed"),
        Err(e) => tracing::error!(error = %e, "gRPC server task failed"),
        Ok(Ok(())) => {}
    }
    reaper.abort();
    if let Some(t) = listener_task {
        t.abort();
    }
    drop(lock);
    Ok(())
}

/// The executor for in-process jobs: can this host give jobs the full sandbox? Learned once,
/// now, by running one.
pub async fn local_executor(
    config: &Config,
    data: &DataDir,
    supervisor_exe: PathBuf,
) -> Arc<SupervisedExecutor> {
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
    executor
}

/// Returns at SIGTERM or SIGINT (never, if the handlers cannot be installed).
pub async fn wait_for_stop_signal() {
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
