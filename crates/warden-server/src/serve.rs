//! `warden serve`: a control plane. On the embedded SQLite store (the default) it also runs jobs
//! in-process; on PostgreSQL (`--database-url`) it is one of any number of replicas, and jobs run
//! on remote workers (`warden worker`). Both serve HTTP and gRPC. This is the wiring: the rules
//! are in the service, the job running in `warden-worker`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use warden_core::Config;
use warden_core::JobId;
use warden_repo::Repos;
use warden_sandbox::Tier;
use warden_store::{Store, now_millis};
pub use warden_store_postgres::OpenError;
use warden_store_postgres::PgStore;
use warden_store_sqlite::SqliteStore;
use warden_worker::token::read_worker_token;
use warden_worker::{
    DataDir, DataDirError, Events, Executor, WorkerConfig, WorkerHandle, WorkerPool, local_executor,
};

use crate::grpc::{Auth, WorkerHub};
use crate::http::app;
use crate::service::{JobService, LocalWorkers, Sources};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    DataDir(#[from] DataDirError),
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

impl ServeError {
    /// Whether the operator's input is at fault (exit code 2) rather than the host (8).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            ServeError::DataDir(DataDirError::Locked(_))
                | ServeError::Bind { .. }
                | ServeError::Config(_)
                | ServeError::Database(OpenError::Url(_))
        )
    }
}

/// How `warden serve` runs beyond its configuration file.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// `postgres://…`: share this database with other replicas; jobs run on remote workers.
    pub database_url: Option<String>,
    /// Connections in the PostgreSQL pool.
    pub database_pool: u32,
    /// Gives the allocator's free memory back to the system (the binary's `malloc_trim`): run
    /// with the store's [`release_memory`](Store::release_memory) once the server goes idle.
    pub release_heap: Option<fn()>,
}

#[tonic::async_trait]
impl LocalWorkers for WorkerHandle {
    fn wake(&self) {
        WorkerHandle::wake(self)
    }
    fn offer(&self) -> Option<warden_worker::SlotOffer> {
        WorkerHandle::offer(self)
    }
    fn cancel(&self, id: JobId) -> bool {
        WorkerHandle::cancel(self, id)
    }
    async fn shutdown(&self, grace: Duration) {
        WorkerHandle::shutdown(self, grace).await
    }
}

/// The embedded control plane: an in-process worker pool of `config.slots` over the SQLite
/// store, and the service in front of it.
pub fn embedded<S: Store>(
    sqlite: Arc<S>,
    executor: Arc<dyn Executor>,
    config: Arc<Config>,
    data: DataDir,
    repos: Arc<Repos>,
    images: Arc<warden_image::Images>,
    secrets: Arc<warden_worker::secrets::Secrets>,
) -> JobService {
    let unsafe_fallback = executor.tier() == Tier::UnsafeFallback;
    let events = Events::new();
    let pool = WorkerPool::start(
        sqlite.clone(),
        executor,
        config.clone(),
        data.clone(),
        events.clone(),
        WorkerConfig {
            secrets,
            images: Some(images.clone()),
            ..WorkerConfig::from_config(&config)
        },
        repos.clone(),
    );
    JobService::new(
        sqlite,
        config,
        data,
        events,
        Sources { repos, images },
        Some(pool as Arc<dyn LocalWorkers>),
        unsafe_fallback,
    )
}

/// Runs the server until `stop` completes (SIGTERM or SIGINT in the binary), then stops
/// gracefully. `supervisor_exe` is the `warden` binary, started per job as its supervisor.
pub async fn run(
    config: Config,
    supervisor_exe: PathBuf,
    options: ServeOptions,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let token = read_worker_token(config.worker_token_file.as_deref())
        .map_err(|e| ServeError::Config(e.to_string()))?;
    if crate::grpc::is_public(config.grpc_listen) && token.is_none() {
        return Err(ServeError::Config(format!(
            "grpc_listen {} is not loopback: every caller there must present the worker token, \
             and none is configured (set WARDEN_WORKER_TOKEN or worker_token_file)",
            config.grpc_listen
        )));
    }
    let http_tls = config
        .tls
        .as_ref()
        .map(|t| crate::tls::server_config(&t.cert, &t.key))
        .transpose()
        .map_err(ServeError::Config)?;
    if config.auth.insecure_plaintext_behind_proxy && config.tls.is_none() {
        tracing::warn!(
            listen = %config.listen,
            "insecure_plaintext_behind_proxy: serving plaintext; tokens cross the network in the \
             clear unless a TLS-terminating proxy stands in front"
        );
    }
    if config.auth.loopback_trusted {
        tracing::info!("auth.loopback_trusted: callers on loopback need no token");
    }
    // Secret files that others could read, or that are missing, refuse the start (with the path).
    let secrets = Arc::new(
        warden_worker::secrets::Secrets::load(&config)
            .map_err(|e| ServeError::Config(e.to_string()))?,
    );
    if config.artifact_store.is_some() && options.database_url.is_none() {
        return Err(ServeError::Config(
            "artifact_store is for replicated control planes (--database-url) whose remote \
             workers upload artifacts; the embedded server keeps them in its data directory \
             (artifact_dir)"
                .into(),
        ));
    }
    let s3 = config
        .artifact_store
        .as_ref()
        .map(|a| {
            crate::artifact_store::S3Artifacts::connect(a, |name| {
                secrets.value(name).map(|v| v.bytes().to_vec())
            })
        })
        .transpose()
        .map_err(ServeError::Config)?
        .map(Arc::new);
    let (data, lock) = DataDir::open_locked(&config.data_dir, config.artifact_dir.as_deref())?;
    let (store, sqlite, pg) = open_store(&data, &options).await?;
    // Every store call of this replica (its service, its embedded worker, its reaper and
    // collector) goes through the metered store.
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let sqlite = sqlite.map(|s| Arc::new(crate::metrics::MeteredStore::new(s, metrics.clone())));
    let store: Arc<dyn Store> = match &sqlite {
        Some(s) => s.clone(),
        None => Arc::new(crate::metrics::MeteredStore::new(store, metrics.clone())),
    };
    store.set_fair_share(fair_share(&config));
    // Scratch space of jobs from a previous run is never reused.
    DataDir::clear(&data.scratch_root());

    let config = Arc::new(config);
    let repos = Repos::open(&data.git(), &config.git).map_err(|source| DataDirError::Io {
        path: data.git(),
        source,
    })?;
    secrets
        .give_logins(&config, &repos.mirrors)
        .map_err(|e| ServeError::Config(e.to_string()))?;
    let repos = Arc::new(repos);
    let images = Arc::new(
        secrets
            .open_images(&config, &config.data_dir)
            .map_err(|e| ServeError::Config(format!("the image cache: {e}")))?,
    );
    let mut service = match sqlite {
        Some(sqlite) => {
            let executor = local_executor(&config, &data, supervisor_exe).await;
            // Ready only where jobs can run: in the sandbox, or knowingly without it.
            let sandbox = match executor.self_test_failure() {
                None => Ok(()),
                Some(_) if executor.tier() == Tier::UnsafeFallback => Ok(()),
                Some(why) => Err(why.to_string()),
            };
            let mut service = embedded(
                sqlite,
                executor,
                config.clone(),
                data.clone(),
                repos,
                images,
                secrets.clone(),
            );
            service.sandbox = sandbox;
            service
        }
        None => JobService::new(
            store.clone(),
            config.clone(),
            data.clone(),
            Events::new(),
            Sources { repos, images },
            None,
            // Jobs may run on workers without the sandbox only where this is allowed; such a
            // worker's completions also carry an UNSAFE_FALLBACK warning.
            config.unsafe_fallback,
        ),
    };
    service.s3 = s3;
    service.metrics = Some(metrics.clone());
    let service = Arc::new(service);
    // Wake-ups from the other replicas: queued jobs, changed jobs.
    let listener_task = pg.map(|pg| {
        let (svc, events) = (service.clone(), service.events.clone());
        pg.listen(move || svc.job_queued(), move |id| events.job_changed(id))
    });
    let reaper = start_reaper(store.clone(), service.clone());
    let keeper = crate::memory::start_keeper(store.clone(), metrics, options.release_heap);
    let collector = crate::gc::start(crate::gc::Collector {
        store: store.clone(),
        config: config.clone(),
        artifacts: data.artifacts_root(),
        repos: Some(service.repos.clone()),
        owner: crate::gc::Collector::owner_name(),
        s3: service.s3.clone(),
        metrics: service.metrics.clone(),
    });
    // The outbox is written while `events:` asks for it (replicas share one configuration).
    let events = &config.events;
    let outbox = events.nats.is_some() || events.webhooks.is_some();
    store.set_outbox(outbox).await?;
    let owner = crate::gc::Collector::owner_name();
    let publisher = outbox.then(|| {
        crate::events::Publisher {
            store: store.clone(),
            config: events.nats.clone(),
            webhooks: events.webhooks.is_some(),
            keep: Duration::from_secs(events.keep_days.get().saturating_mul(86_400)),
            owner: owner.clone(),
            shutdown: service.shutdown.clone(),
            metrics: service.metrics.clone(),
        }
        .start()
    });
    let dispatcher = match &events.webhooks {
        Some(hooks) => {
            let key = secrets.value(&hooks.secret).map(|v| v.bytes().to_vec());
            let Some(key) = key else {
                return Err(ServeError::Config(format!(
                    "events.webhooks.secret {:?} has no value",
                    hooks.secret
                )));
            };
            Some(
                crate::webhooks::Dispatcher {
                    store: store.clone(),
                    config: hooks.clone(),
                    key,
                    owner,
                    shutdown: service.shutdown.clone(),
                }
                .start(),
            )
        }
        None => None,
    };
    let result = listen(
        &config,
        &data,
        (service, store, secrets),
        token,
        http_tls,
        stop,
    )
    .await;
    reaper.abort();
    collector.abort();
    keeper.abort();
    if let Some(d) = dispatcher {
        d.abort();
    }
    if let Some(p) = publisher {
        // A batch in flight is finished; what is left goes out on the next start (the outbox
        // keeps it).
        let _ = tokio::time::timeout(Duration::from_secs(2), p).await;
    }
    if let Some(t) = listener_task {
        t.abort();
    }
    drop(lock);
    result
}

/// The tenants' shares as the store schedules them.
pub fn fair_share(config: &Config) -> warden_store::FairShare {
    warden_store::FairShare {
        shares: config
            .tenants
            .iter()
            .map(|(name, t)| {
                let share = warden_store::Share {
                    weight: t.weight.get(),
                    max_running: t.max_running.map(|m| m.get()),
                };
                (name.clone(), share)
            })
            .collect(),
    }
}

type Stores = (Arc<dyn Store>, Option<Arc<SqliteStore>>, Option<PgStore>);

async fn open_store(data: &DataDir, options: &ServeOptions) -> Result<Stores, ServeError> {
    match &options.database_url {
        Some(url) => {
            let pg = PgStore::connect(url, options.database_pool.max(2)).await?;
            // Leases here belong to every replica's workers: only expiry may take them back.
            Ok((Arc::new(pg.clone()), None, Some(pg)))
        }
        None => {
            let sqlite = Arc::new(SqliteStore::open(&data.database())?);
            // Every lease in this database was held by a previous run of this very server,
            // which is gone (we hold the lock): re-queue its jobs now, or end them
            // `worker_lost` when out of attempts.
            for r in sqlite.reap_expired(i64::MAX, now_millis()).await? {
                tracing::warn!(job = %r.job_id, now = %r.now, "recovered a job from a previous run");
            }
            Ok((sqlite.clone() as Arc<dyn Store>, Some(sqlite), None))
        }
    }
}

/// The reaper: a lease that was not renewed in time means its worker is gone.
fn start_reaper(store: Arc<dyn Store>, svc: Arc<JobService>) -> tokio::task::JoinHandle<()> {
    let lease_ms = (svc.config.lease_s.get() as i64).saturating_mul(1000);
    let retention_ms = (svc.config.audit_retention_days.get() as i64).saturating_mul(86_400_000);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis((lease_ms / 4).max(100) as u64));
        let mut last_purge: Option<tokio::time::Instant> = None;
        loop {
            tick.tick().await;
            let now = now_millis();
            if last_purge.is_none_or(|t| t.elapsed() > Duration::from_secs(3600)) {
                last_purge = Some(tokio::time::Instant::now());
                match store.purge_audit(now.saturating_sub(retention_ms)).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(entries = n, "purged audit entries past retention"),
                    Err(e) => tracing::error!(error = %e, "audit purge failed"),
                }
            }
            match store.reap_expired(now, now).await {
                Ok(r) if !r.is_empty() => {
                    for j in &r {
                        tracing::warn!(job = %j.job_id, now = %j.now, "lease expired");
                        svc.events.logs_reset(j.job_id);
                    }
                    svc.job_queued();
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "lease reaper failed"),
            }
        }
    })
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ServeError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// Serves HTTP and gRPC until `stop`, then drains: no new jobs, running ones get their grace.
async fn listen(
    config: &Arc<Config>,
    data: &DataDir,
    (service, store, secrets): (
        Arc<JobService>,
        Arc<dyn Store>,
        Arc<warden_worker::secrets::Secrets>,
    ),
    token: Option<String>,
    http_tls: Option<rustls::ServerConfig>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let listener = bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let grpc_listener = bind(config.grpc_listen).await?;
    let grpc_addr = grpc_listener.local_addr()?;
    tracing::info!(%addr, %grpc_addr, data_dir = %data.root().display(), "warden listening");
    announce(addr, grpc_addr, config.tls.is_some());
    let hub = Arc::new(WorkerHub {
        store,
        config: config.clone(),
        events: service.events.clone(),
        data: data.clone(),
        queued: service.queued_events(),
        lease_ms: (config.lease_s.get() as i64).saturating_mul(1000),
        shutdown: service.shutdown.clone(),
        secrets,
        s3: service.s3.clone(),
        metrics: service.metrics.clone(),
    });
    let mut grpc = grpc_server(config)?;
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
            stop.await;
            tracing::info!(
                grace_s = grace.as_secs(),
                "stopping: no new jobs; running jobs get a grace period"
            );
            service.drain(grace).await;
            tracing::info!("all slots stopped; unfinished jobs are back in the queue");
        }
    };
    let app = app(service).into_make_service_with_connect_info::<SocketAddr>();
    use axum::serve::ListenerExt;
    match http_tls {
        Some(tls) => {
            // (tap_io: axum gives the peer address to listeners it wraps.)
            let listener = crate::tls::TlsListener::new(listener, tls)?.tap_io(|_| {});
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await?;
        }
        None => {
            // Small answers (a job id, one log event) must not wait for delayed ACKs (Nagle).
            let listener = listener.tap_io(|tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "TCP_NODELAY");
                }
            });
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await?;
        }
    }
    match grpc_task.await {
        Ok(Err(e)) => tracing::error!(error = %e, "gRPC server failed"),
        Err(e) => tracing::error!(error = %e, "gRPC server task failed"),
        Ok(Ok(())) => {}
    }
    Ok(())
}

/// Announced on stdout for scripts; a closed stdout is no reason to stop serving.
fn announce(addr: SocketAddr, grpc_addr: SocketAddr, tls: bool) {
    use std::io::Write;
    let mut out = std::io::stdout();
    let scheme = if tls { "https" } else { "http" };
    let _ = writeln!(out, "warden listening on {scheme}://{addr}");
    let _ = writeln!(out, "warden gRPC listening on {scheme}://{grpc_addr}");
    let _ = out.flush();
}

fn grpc_server(config: &Config) -> Result<tonic::transport::Server, ServeError> {
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
    Ok(grpc)
}
