//! `warden worker`: runs jobs for a remote control plane.
//!
//! The worker has its own configuration (job types: how to run each here, with this host's
//! paths; sandbox settings) and its own data directory (mirrors, checkout cache, scratch,
//! artifacts until uploaded). It talks only to the control plane, never to the database.

use std::sync::Arc;
use std::time::Duration;

use warden_core::config::{Positive, is_valid_label, read_token};
use warden_proto::pb;
use warden_sandbox::Isolation;
use warden_worker::{
    DataDir, Events, Executor, RemoteCoordinator, RemoteOptions, WorkerConfig, WorkerPool,
};

use crate::cli::WorkerArgs;
use crate::exit;

fn load(args: &WorkerArgs) -> Result<(warden_core::Config, RemoteOptions), String> {
    let mut config = crate::commands::serve::read_config(args.config.as_deref())?;
    if let Some(d) = &args.data_dir {
        config.data_dir = d.clone();
    }
    if let Some(s) = args.slots {
        config.slots = Positive(s);
    }
    for l in &args.labels {
        if !is_valid_label(l) {
            return Err(format!(
                "--labels: {l:?} is not a valid label: labels match ^[a-z0-9][a-z0-9_.-]{{0,63}}$"
            ));
        }
    }
    let token = read_token(args.token_file.as_deref())?.ok_or(
        "no worker token: set WARDEN_WORKER_TOKEN or pass --token-file (never on the command line)",
    )?;
    let tls_ca = match &args.tls_ca {
        Some(p) => Some(
            std::fs::read(p).map_err(|e| format!("cannot read --tls-ca {}: {e}", p.display()))?,
        ),
        None => None,
    };
    for url in args.server.split(',').map(str::trim) {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "--server {url:?} must start with http:// or https:// (comma-separate replicas)"
            ));
        }
        if url.starts_with("https://") && tls_ca.is_none() {
            return Err(format!(
                "--server {url:?} is https: pass --tls-ca with the CA that signed its certificate"
            ));
        }
    }
    let worker_id = match &args.worker_id {
        Some(id) => id.clone(),
        None => format!(
            "{}-{}",
            rustix::system::uname().nodename().to_string_lossy(),
            &uuid::Uuid::now_v7().simple().to_string()[24..]
        ),
    };
    let opts = RemoteOptions {
        server: args.server.clone(),
        token,
        tls_ca,
        worker_id,
        slots: config.slots.get() as u32,
        labels: args.labels.clone(),
        job_types: config.job_types.keys().map(|k| k.0.clone()).collect(),
        sandbox: pb::SandboxCapabilities::default(),
    };
    Ok((config, opts))
}

pub async fn run(args: WorkerArgs) -> i32 {
    let (config, mut opts) = match load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: cannot locate the warden binary to supervise jobs: {e}");
            return exit::UNAVAILABLE;
        }
    };
    let data = match prepare_data_dir(&config.data_dir) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let (data, _lock) = data;
    let executor = warden_server::serve::local_executor(&config, &data, exe).await;
    opts.sandbox = pb::SandboxCapabilities {
        isolation: match executor.isolation() {
            Isolation::Sandbox => "sandbox",
            Isolation::UnsafeFallback => "unsafe_fallback",
        }
        .to_string(),
        cgroups: warden_sandbox::cgroups::CgroupLayout::detect().describe(),
        landlock_abi: warden_sandbox::landlock_abi().max(0) as u32,
    };
    let repos = match warden_repo::Repos::open(&data.git(), &config.git) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            eprintln!("error: {}: {e}", data.git().display());
            return exit::UNAVAILABLE;
        }
    };
    let server = opts.server.clone();
    let worker_id = opts.worker_id.clone();
    let (remote, mut cancels) = match RemoteCoordinator::start(opts, data.clone()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    eprintln!("connecting to {server} as {worker_id} ...");
    let registered = tokio::select! {
        r = remote.registered() => match r {
            Ok(r) => r,
            Err(why) => {
                eprintln!("error: the control plane refused this worker: {why}");
                return exit::USAGE;
            }
        },
        _ = warden_server::serve::wait_for_stop_signal() => return exit::OK,
    };
    println!(
        "warden worker {worker_id} registered with {server}: job types [{}]",
        registered.job_types.join(", ")
    );
    let config = Arc::new(config);
    let worker = WorkerConfig {
        worker_id: worker_id.clone(),
        slots: config.slots.get() as usize,
        lease_ms: registered.lease_ms.max(1000),
        cancel_grace: Duration::from_secs(config.cancel_grace_s.get()),
        // The server holds each claim open; an empty answer means "ask again".
        idle_poll: Duration::from_millis(10),
        job_types: None,
    };
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
            _ = warden_server::serve::wait_for_stop_signal() => break,
        }
    }
    let grace = Duration::from_secs(config.shutdown_grace_s.get());
    eprintln!(
        "stopping: running jobs get {} s, then go back to the queue",
        grace.as_secs()
    );
    pool.shutdown(grace).await;
    exit::OK
}

/// Makes the worker's data directory and takes its lock (one worker per directory).
fn prepare_data_dir(dir: &std::path::Path) -> Result<(DataDir, std::fs::File), String> {
    let err = |e: std::io::Error| format!("data directory {}: {e}", dir.display());
    std::fs::create_dir_all(dir).map_err(err)?;
    let root = std::fs::canonicalize(dir).map_err(err)?;
    let data = DataDir::new(&root);
    for d in [data.artifacts_root(), data.scratch_root()] {
        std::fs::create_dir_all(&d).map_err(err)?;
    }
    data.prepare_sandbox_dirs().map_err(err)?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(data.lock_file())
        .map_err(err)?;
    if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        return Err(format!(
            "data directory {} is in use by another warden process; give each worker its own \
             --data-dir",
            root.display()
        ));
    }
    // Nothing from a previous run is reused: its jobs were re-queued by the control plane.
    for d in [data.scratch_root(), data.artifacts_root()] {
        if let Ok(entries) = std::fs::read_dir(&d) {
            for e in entries.flatten() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok((data, lock))
}
