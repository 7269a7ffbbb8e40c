//! Backups of the embedded store: a consistent copy taken while the server runs (`VACUUM
//! INTO`, which reads one snapshot of the database and writes a compact new file), and the
//! check a copy must pass before it is restored.
// Statements run once per backup or restore: parsing them each time is right.
#![allow(clippy::disallowed_methods)]

use std::path::Path;

use rusqlite::{Connection, OpenFlags};
use warden_store::{Result, StoreError};

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Copies the database at `db` into the new file `out` (which must not exist), readable by
/// warden only, while other connections go on reading and writing. Returns its size.
pub fn backup(db: &Path, out: &Path) -> Result<u64> {
    if out.exists() {
        return Err(StoreError::Backend(format!(
            "{} exists: a backup is only written to a new file",
            out.display()
        )));
    }
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| StoreError::Backend(format!("open {}: {e}", db.display())))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(backend)?;
    let target = out
        .to_str()
        .ok_or_else(|| StoreError::Backend(format!("{} is not UTF-8", out.display())))?;
    conn.execute("VACUUM INTO ?1", [target])
        .map_err(|e| StoreError::Backend(format!("write {}: {e}", out.display())))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o600)).map_err(backend)?;
    Ok(std::fs::metadata(out).map_err(backend)?.len())
}

/// What a backup holds, once it passed SQLite's integrity check and is a warden database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupInfo {
    pub schema_version: i64,
    pub jobs: i64,
}

/// Checks that `file` is a sound warden database (SQLite's integrity check, warden's schema).
pub fn check_backup(file: &Path) -> Result<BackupInfo> {
    let conn = Connection::open_with_flags(file, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| StoreError::Backend(format!("open {}: {e}", file.display())))?;
    let not_warden = |e: rusqlite::Error| {
        StoreError::Backend(format!("{} is not a warden database: {e}", file.display()))
    };
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(not_warden)?;
    if integrity != "ok" {
        return Err(StoreError::Backend(format!(
            "{} failed SQLite's integrity check: {integrity}",
            file.display()
        )));
    }
    let schema_version = conn
        .query_row("SELECT MAX(version) FROM schema_migrations", [], |r| {
            r.get(0)
        })
        .map_err(not_warden)?;
    let jobs = conn
        .query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get(0))
        .map_err(not_warden)?;
    Ok(BackupInfo {
        schema_version,
        jobs,
    })
}
