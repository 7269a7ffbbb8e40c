//! `warden worker`: arguments to a worker for a remote control plane (see
//! `warden_worker::standalone`).
//!
//! The worker has its own configuration (job types: how to run each here, with this host's
//! paths; sandbox settings) and its own data directory (mirrors, checkout cache, scratch,
//! artifacts until uploaded). It talks only to the control plane, never to the database.

use warden_core::config::{Positive, is_valid_label};
use warden_proto::pb;
use warden_worker::RemoteOptions;
use warden_worker::token::read_worker_token;

use crate::cli::WorkerArgs;
use crate::{config_file, exit};

/// A flag, file or token that cannot be used, with what to fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BadWorkerArgs(String);

fn load(args: &WorkerArgs) -> Result<(warden_core::Config, RemoteOptions), BadWorkerArgs> {
    let bad = |e: &dyn std::fmt::Display| BadWorkerArgs(e.to_string());
    let mut config = config_file::read(args.config.as_deref()).map_err(|e| bad(&e))?;
    if let Some(d) = &args.data_dir {
        config.data_dir = d.clone();
    }
    if let Some(s) = args.slots {
        config.slots = Positive(s);
    }
    config.validate().map_err(|e| bad(&e))?;
    for l in &args.labels {
        if !is_valid_label(l) {
            return Err(BadWorkerArgs(format!(
                "--labels: {l:?} is not a valid label: labels match ^[a-z0-9][a-z0-9_.-]{{0,63}}$"
            )));
        }
    }
    let token = read_worker_token(args.token_file.as_deref())
        .map_err(|e| bad(&e))?
        .ok_or_else(|| {
            BadWorkerArgs(
                "no worker token: set WARDEN_WORKER_TOKEN or pass --token-file (never on the \
                 command line)"
                    .into(),
            )
        })?;
    let tls_ca = match &args.tls_ca {
        Some(p) => Some(
            std::fs::read(p)
                .map_err(|e| BadWorkerArgs(format!("cannot read --tls-ca {}: {e}", p.display())))?,
        ),
        None => None,
    };
    for url in args.server.split(',').map(str::trim) {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(BadWorkerArgs(format!(
                "--server {url:?} must start with http:// or https:// (comma-separate replicas)"
            )));
        }
        if url.starts_with("https://") && tls_ca.is_none() {
            return Err(BadWorkerArgs(format!(
                "--server {url:?} is https: pass --tls-ca with the CA that signed its certificate"
            )));
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
    let (config, opts) = match load(&args) {
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
    let stop = || Box::pin(crate::signal::stop_requested()) as _;
    match warden_worker::standalone::run(config, opts, exe, stop).await {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("error: {e}");
            if e.is_usage() {
                exit::USAGE
            } else {
                exit::UNAVAILABLE
            }
        }
    }
}
