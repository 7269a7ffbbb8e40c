//! WAL checkpoints on a connection and a thread of their own.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses its threshold: that commit
//! copies the log into the database file and syncs it, and every store call queued behind the
//! one connection waits — a stall of tens of milliseconds under a job's log. Here the store's
//! connection only appends to the WAL; once about [`EVERY`] bytes were written, this thread
//! copies what is committed into the database file (`PASSIVE`: it never blocks the writer or a
//! reader). That is SQLite's own default pace (1,000 pages), off the writer's path. The
//! automatic checkpoint stays as a backstop, far above what the thread lets build up.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::Duration;

use rusqlite::Connection;

/// The store connection's own checkpoint threshold, in pages: reached only if this thread
/// stops keeping up (16,384 pages of 4 KiB: 64 MiB of WAL).
pub(crate) const BACKSTOP_PAGES: u32 = 16_384;
/// About this many bytes written between checkpoints.
pub(crate) const EVERY: u64 = 4 << 20;
/// What a store call that writes no log is counted as (a page or so of rows and index).
pub(crate) const CALL_BYTES: u64 = 4096;
/// Writes within this long of a nudge share one checkpoint.
const GATHER: Duration = Duration::from_millis(20);

/// Dropping it stops the thread (after the checkpoint it may be running).
pub(crate) struct Checkpointer {
    nudge: SyncSender<()>,
    /// Bytes written since the last nudge (approximately: see [`CALL_BYTES`]).
    written: AtomicU64,
}

impl Checkpointer {
    /// A thread checkpointing `path`'s WAL whenever it is nudged.
    pub(crate) fn start(path: &Path) -> rusqlite::Result<Checkpointer> {
        let conn = Connection::open(path)?;
        conn.execute_batch("PRAGMA busy_timeout = 5000;")?;
        let (nudge, nudged) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("warden-checkpoint".into())
            .spawn(move || run(conn, nudged))
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(Checkpointer {
            nudge,
            written: AtomicU64::new(0),
        })
    }

    /// About `bytes` were written: checkpoint soon once enough have been. Never blocks.
    pub(crate) fn wrote(&self, bytes: u64) {
        let before = self.written.fetch_add(bytes, Ordering::Relaxed);
        if before + bytes < EVERY {
            return;
        }
        self.written.store(0, Ordering::Relaxed);
        // Full: one is due already. Gone: the store's own checkpoint takes over.
        let _ = self.nudge.try_send(());
    }
}

fn run(conn: Connection, nudged: Receiver<()>) {
    while nudged.recv().is_ok() {
        // Let a burst of commits finish: one checkpoint for all of them.
        let _ = nudged.recv_timeout(GATHER);
        if let Err(e) = super::query_row(&conn, "PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "WAL checkpoint failed; the store's own will run instead");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use warden_store::{LogStream, NewJob, Store};

    use crate::SqliteStore;

    /// A log written through the store reaches the database file without any call that
    /// checkpoints, and the WAL does not grow past the backstop.
    #[tokio::test]
    async fn written_logs_reach_the_database_file_from_the_checkpoint_thread() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("warden.db");
        let store = SqliteStore::open(&db).unwrap();
        let job = NewJob::plain("chatty", 1);
        let id = job.id;
        store.submit(job).await.unwrap();
        let claimed = store.claim("w", None, 60_000, 2).await.unwrap().unwrap();
        assert_eq!(claimed.job.id, id);
        let chunk = vec![b'x'; 1 << 20];
        for i in 0..48u64 {
            store
                .append_log(&claimed.lease, LogStream::Stdout, i << 20, &chunk)
                .await
                .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        // All but the last few MiB (written after the last nudge) are in the file by now;
        // without the thread, none would be (the backstop is above 48 MiB of WAL).
        while std::fs::metadata(&db).unwrap().len() < (48 << 20) - 2 * super::EVERY {
            assert!(
                Instant::now() < deadline,
                "the log never reached the database file"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let wal = std::fs::metadata(dir.path().join("warden.db-wal")).unwrap();
        assert!(wal.len() < 80 << 20, "WAL of {} bytes", wal.len());
        let stored = store
            .read_log(id, LogStream::Stdout, 0, 64 << 20)
            .await
            .unwrap();
        assert_eq!(stored.len(), 48 << 20);
    }
}
