//! `warden gc`: one pass of retention's collector, by hand — usually with `--dry-run` to see
//! what the server's own collector (every `retention.interval_s`) is going to delete.

use std::sync::Arc;

use warden_server::gc::{Collector, GcReport};
use warden_store::Store;

use crate::cli::{GcArgs, HealthArgs};
use crate::exit;
use crate::tables::human_bytes;

pub async fn run(args: GcArgs) -> i32 {
    match collect(&args).await {
        Ok(report) => {
            if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return exit::UNAVAILABLE;
                    }
                }
            } else {
                print!("{}", render(&report));
            }
            exit::OK
        }
        Err((code, message)) => {
            eprintln!("error: {message}");
            code
        }
    }
}

/// `warden health`: for a container's HEALTHCHECK (the image has no curl) and probes.
pub async fn health(args: HealthArgs) -> i32 {
    let timeout = std::time::Duration::from_secs(args.timeout);
    let client = match warden_client::Client::new(&args.url, timeout, None) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: --url {}: {e}", args.url);
            return exit::USAGE;
        }
    };
    match client.healthz().await {
        Ok(_) => {
            println!("ok: {} is healthy", args.url);
            exit::OK
        }
        Err(e) => {
            eprintln!("error: {}: {e}", args.url);
            exit::UNAVAILABLE
        }
    }
}

async fn collect(args: &GcArgs) -> Result<GcReport, (i32, String)> {
    let usage = |m: String| (exit::USAGE, m);
    let mut config =
        crate::config_file::read(args.config.as_deref()).map_err(|e| usage(e.to_string()))?;
    if let Some(d) = &args.data_dir {
        config.data_dir = d.clone();
    }
    let mut data = warden_worker::DataDir::new(&config.data_dir);
    if let Some(a) = &config.artifact_dir {
        data = data.with_artifacts(a);
    }
    // The data directory's lock says whether a server runs on it: then its mirrors (and, on
    // SQLite, its jobs) are that server's collector's business.
    let lock = if data.root().is_dir() {
        warden_worker::DataDir::open_locked(&config.data_dir, config.artifact_dir.as_deref()).ok()
    } else {
        None
    };
    let store: Arc<dyn Store> = match &args.database_url {
        Some(url) => Arc::new(
            warden_store_postgres::PgStore::connect(url, 2)
                .await
                .map_err(|e| (exit::UNAVAILABLE, e.to_string()))?,
        ),
        None => {
            let db = data.database();
            if !db.is_file() {
                return Err(usage(format!(
                    "{} does not exist: nothing to collect",
                    db.display()
                )));
            }
            if lock.is_none() && !args.dry_run {
                return Err(usage(format!(
                    "a warden server runs on {} and collects every retention.interval_s \
                     ({} s): see what it will delete with --dry-run, or stop it first",
                    data.root().display(),
                    config.retention.interval_s.get()
                )));
            }
            Arc::new(
                warden_store_sqlite::SqliteStore::open(&db)
                    .map_err(|e| (exit::UNAVAILABLE, e.to_string()))?,
            )
        }
    };
    let repos = match &lock {
        Some(_) => Some(Arc::new(
            warden_repo::Repos::open(&data.git(), &config.git)
                .map_err(|e| (exit::UNAVAILABLE, format!("{}: {e}", data.git().display())))?,
        )),
        None => None,
    };
    let s3 = match &config.artifact_store {
        Some(a) => {
            let secrets =
                warden_worker::secrets::Secrets::load(&config).map_err(|e| usage(e.to_string()))?;
            let s3 = warden_server::artifact_store::S3Artifacts::connect(a, |n| {
                secrets.value(n).map(|v| v.bytes().to_vec())
            })
            .map_err(usage)?;
            Some(Arc::new(s3))
        }
        None => None,
    };
    let collector = Collector {
        store,
        config: Arc::new(config),
        artifacts: data.artifacts_root(),
        repos,
        owner: Collector::owner_name(),
        s3,
        metrics: None,
    };
    let report = collector
        .run_once(args.dry_run)
        .await
        .map_err(|e| (exit::UNAVAILABLE, e.to_string()))?;
    drop(lock);
    Ok(report)
}

fn render(r: &GcReport) -> String {
    let verb = if r.dry_run { "would delete" } else { "deleted" };
    let mut out = String::new();
    if !r.jobs_collected {
        out.push_str("jobs: another replica's collector is running; left to it\n");
    }
    for t in &r.tenants {
        let budget = t.max_bytes.map_or("no size budget".to_string(), |b| {
            format!("budget {}", human_bytes(b))
        });
        out.push_str(&format!(
            "tenant {}: {} finished jobs, {} (keep {} days, {budget}): {verb} {} by age, {} by \
             size, {}\n",
            t.tenant,
            t.jobs,
            human_bytes(t.bytes),
            t.jobs_days,
            t.deleted_by_age,
            t.deleted_by_size,
            human_bytes(t.freed_bytes)
        ));
    }
    if r.orphan_dirs > 0 {
        out.push_str(&format!(
            "artifact directories without a job: {verb} {} ({})\n",
            r.orphan_dirs,
            human_bytes(r.orphan_bytes)
        ));
    }
    for m in &r.mirrors {
        let days = m.unused_days.map_or("?".into(), |d| d.to_string());
        out.push_str(&format!(
            "mirror {} (unused {days} days): {verb} ({})\n",
            m.id,
            human_bytes(m.bytes)
        ));
    }
    if r.compacted_bytes > 0 {
        out.push_str(&format!(
            "database: {} given back to the filesystem\n",
            human_bytes(r.compacted_bytes)
        ));
    }
    out.push_str(&format!(
        "total: {verb} {} jobs, {}\n",
        r.jobs_deleted(),
        human_bytes(r.bytes_freed())
    ));
    out
}
