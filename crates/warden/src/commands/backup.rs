//! `warden backup` and `warden restore`: the embedded database copied while the server runs,
//! and put back as the database of a fresh data directory. (Artifacts are plain files: copy
//! the data directory's `artifacts/` with them. PostgreSQL has `pg_dump`: docs/deploy.md.)

use std::path::{Path, PathBuf};

use crate::cli::{BackupArgs, RestoreArgs};
use crate::exit;

fn data_dir(config: Option<&Path>, over: Option<&PathBuf>) -> Result<PathBuf, String> {
    let config = crate::config_file::read(config).map_err(|e| e.to_string())?;
    Ok(over.cloned().unwrap_or(config.data_dir))
}

pub fn backup(args: BackupArgs) -> i32 {
    if args.database_url.is_some() {
        eprintln!(
            "error: a PostgreSQL-backed server is backed up with pg_dump (pg_dump --format=custom \
             --file=FILE URL) and restored with pg_restore: see docs/deploy.md"
        );
        return exit::USAGE;
    }
    let dir = match data_dir(args.config.as_deref(), args.data_dir.as_ref()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let db = warden_worker::DataDir::new(&dir).database();
    if !db.is_file() {
        eprintln!("error: {} does not exist: nothing to back up", db.display());
        return exit::USAGE;
    }
    if args.out.exists() {
        eprintln!(
            "error: {} exists: a backup is only written to a new file",
            args.out.display()
        );
        return exit::USAGE;
    }
    match warden_store_sqlite::backup(&db, &args.out)
        .and_then(|bytes| warden_store_sqlite::check_backup(&args.out).map(|i| (bytes, i)))
    {
        Ok((bytes, info)) => {
            println!(
                "backed up {} ({} jobs, schema {}) to {} ({bytes} bytes)",
                db.display(),
                info.jobs,
                info.schema_version,
                args.out.display()
            );
            exit::OK
        }
        Err(e) => {
            // It did not exist before: nothing half-written is left behind.
            let _ = std::fs::remove_file(&args.out);
            eprintln!("error: {e}");
            exit::UNAVAILABLE
        }
    }
}

pub fn restore(args: RestoreArgs) -> i32 {
    let dir = match data_dir(args.config.as_deref(), args.data_dir.as_ref()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let db = warden_worker::DataDir::new(&dir).database();
    if db.exists() {
        eprintln!(
            "error: {} exists: restore only into a fresh data directory (stop the server and \
             move the old one aside first)",
            db.display()
        );
        return exit::USAGE;
    }
    let info = match warden_store_sqlite::check_backup(&args.from) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    // Under a temporary name, then renamed: a restore cut short leaves no half database.
    let partial = dir.join(".warden.db.restoring");
    let copied = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::copy(&args.from, &partial))
        .and_then(|_| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o600))
        })
        .and_then(|()| std::fs::rename(&partial, &db));
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&partial);
        eprintln!("error: restore into {}: {e}", dir.display());
        return exit::UNAVAILABLE;
    }
    println!(
        "restored {} ({} jobs, schema {}) into {}",
        args.from.display(),
        info.jobs,
        info.schema_version,
        db.display()
    );
    exit::OK
}
