//! A worker process for a remote control plane (`warden worker`): its own data directory and
//! sandbox, the same slot pool as the embedded one, and the control plane as its coordinator.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use warden_core::Config;
use warden_proto::pb;

use crate::{
    DataDir, DataDirError, Events, Executor, RemoteCoordinator, RemoteError, RemoteOptions,
    WorkerConfig, WorkerPool, local_executor,
};

#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    #[error("{0}")]
    DataDir(#[from] DataDirError),
    #[error("{path}: {source}")]
    Repos {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Remote(#[from] RemoteError),
    #[error("the control plane refused this worker: {0}")]
    Refused(#[from] crate::remote::Refused),
    #[error("{0}")]
    Secret(#[from] crate::secrets::SecretError),
}

impl StandaloneError {
    /// Whether the operator's input is at fault (exit code 2) rather than the host (8).
    pub fn is_usage(&self) -> bool {
        !matches!(self, StandaloneError::Repos { .. })
    }
}

/// Runs jobs for the control plane until `stop` completes, then gives running jobs the
/// configured grace and hands what is left back to the queue.
pub async fn run(
    config: Config,
    mut opts: RemoteOptions,
    supervisor_exe: PathBuf,
    stop: impl Fn() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
) -> Result<(), StandaloneError> {
    // Secrets this worker grants are its host's: read (and checked) before anything starts.
    let secrets = Arc::new(crate::secrets::Secrets::load(&config)?);
    let (data, _lock) = DataDir::open_locked(&config.data_dir, None)?;
    // Nothing from a previous run is reused: its jobs were re-queued by the control plane.
    DataDir::clear(&data.scratch_root());
    DataDir::clear(&data.artifacts_root());
    let executor = local_executor(&config, &data, supervisor_exe).await;
    opts.sandbox = pb::SandboxCapabilities {
        isolation: executor.tier().as_str().to_string(),
        cgroups: executor.host().cgroups.describe(),
        landlock_abi: warden_sandbox::landlock_abi().max(0) as u32,
    };
    let repos = warden_repo::Repos::open(&data.git(), &config.git).map_err(|source| {
        StandaloneError::Repos {
            path: data.git(),
            source,
        }
    })?;
    secrets.give_logins(&config, &repos.mirrors)?;
    let repos = Arc::new(repos);
    let images = secrets
        .open_images(&config, &config.data_dir)
        .map_err(|source| StandaloneError::Repos {
            path: config.data_dir.join("images"),
            source,
        })?;
    let (server, worker_id) = (opts.server.clone(), opts.worker_id.clone());
    let (remote, mut cancels) = RemoteCoordinator::start(opts, data.clone())?;
    eprintln!("connecting to {server} as {worker_id} ...");
    let registered = tokio::select! {
        r = remote.registered() => r?,
        _ = stop() => return Ok(()),
    };
    println!(
        "warden worker {worker_id} registered with {server}: job types [{}]",
        registered.job_types.join(", ")
    );
    let config = Arc::new(config);
    let worker = WorkerConfig {
        worker_id,
        slots: config.slots.get() as usize,
        lease_ms: registered.lease_ms.max(1000),
        cancel_grace: Duration::from_secs(config.cancel_grace_s.get()),
        // The server holds each claim open; an empty answer means "ask again".
        idle_poll: Duration::from_millis(10),
        job_types: None,
        secrets,
        images: Some(Arc::new(images)),
        // The bundles the control plane sends with its jobs are kept here.
        tool_bundles: Some(crate::tool_bundles::ToolBundles::new(data.tool_bundles())),
    };
    let mirror_gc = collect_mirrors(repos.clone(), &config);
    let pool = WorkerPool::start(
        Arc::new(remote),
        executor as Arc<dyn Executor>,
        config.clone(),
        data,
        Events::new(),
        worker,
        repos,
    );
    loop {
        tokio::select! {
            Some(id) = cancels.recv() => {
                if pool.cancel(id) {
                    tracing::info!(job = %id, "cancelled by the control plane");
                }
            }
            _ = stop() => break,
        }
    }
    let grace = Duration::from_secs(config.shutdown_grace_s.get());
    eprintln!(
        "stopping: running jobs get {} s, then go back to the queue",
        grace.as_secs()
    );
    pool.shutdown(grace).await;
    mirror_gc.abort();
    Ok(())
}

/// This host's mirrors no job used for `retention.mirrors_unused_days`, removed every
/// `retention.interval_s` (the control plane collects jobs; a worker has only its mirrors). A
/// job that uses a mirror stamps it first, so a running job's mirror is never unused.
fn collect_mirrors(repos: Arc<warden_repo::Repos>, config: &Config) -> tokio::task::JoinHandle<()> {
    let every = Duration::from_secs(config.retention.interval_s.get());
    let unused = Duration::from_secs(
        config
            .retention
            .mirrors_unused_days
            .get()
            .saturating_mul(86_400),
    );
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every.min(Duration::from_secs(60))).await;
            let since = std::time::SystemTime::now() - unused;
            let none = std::collections::HashSet::new();
            for m in repos.mirrors.remove_unused(since, &none, false).await {
                tracing::info!(mirror = %m.id, bytes = m.bytes, "retention: removed an unused mirror");
            }
            tokio::time::sleep(every.saturating_sub(Duration::from_secs(60))).await;
        }
    })
}
