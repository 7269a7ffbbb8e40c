//! Logs in `log_chunks`: a batch written into its row's pages without an intermediate copy,
//! and a range of a stream read back from only the chunks that hold it.

use std::sync::Mutex;

use rusqlite::{Connection, params};
use warden_core::JobId;
use warden_store::{LogStream, Result};

use crate::{backend, exec, rows::stream_code};

/// Buffers kept for batches on their way to the store thread.
const KEPT: usize = 4;
/// A buffer larger than this (an unusually large append) is not kept.
const KEPT_BYTES: usize = 4 << 20;

/// The buffers that carry log batches to the store thread, used again: a fresh megabyte per
/// batch is mapped, faulted in page by page and unmapped again (large allocations are mmaps
/// here: see `return_large_buffers` in the `warden` binary).
#[derive(Default)]
pub(crate) struct Buffers(Mutex<Vec<Vec<u8>>>);

impl Buffers {
    /// `data` in a buffer of its own.
    pub(crate) fn copy(&self, data: &[u8]) -> Vec<u8> {
        let mut buf = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_default();
        buf.extend_from_slice(data);
        buf
    }

    /// Drops the kept buffers (an idle store gives its memory back).
    pub(crate) fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// How many buffers are kept.
    #[cfg(test)]
    pub(crate) fn kept(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// `buf` is done with.
    pub(crate) fn give_back(&self, mut buf: Vec<u8>) {
        if buf.capacity() > KEPT_BYTES {
            return;
        }
        buf.clear();
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() < KEPT {
            kept.push(buf);
        }
    }
}

/// Stores `data` as the chunk of `stream` at `offset`. The row is made with a zeroed blob that
/// `data` is then written into: bound as a parameter, SQLite would copy it whole first.
pub(crate) fn insert(
    conn: &Connection,
    id: JobId,
    stream: LogStream,
    offset: u64,
    data: &[u8],
) -> Result<()> {
    exec(
        conn,
        "INSERT INTO log_chunks (job_id, stream, offset, data) VALUES (?1, ?2, ?3, zeroblob(?4))",
        params![
            id.to_string(),
            stream_code(stream),
            offset as i64,
            data.len() as i64
        ],
    )
    .map_err(backend)?;
    let mut blob = conn
        .blob_open(
            rusqlite::MAIN_DB,
            "log_chunks",
            "data",
            conn.last_insert_rowid(),
            false,
        )
        .map_err(backend)?;
    blob.write_at(data, 0).map_err(backend)
}

/// Up to `max` bytes from `offset`: only the chunks that hold them, and of each only the part
/// wanted (incremental blob reads), so that a small read of a large log stays small.
pub(crate) fn read(
    conn: &Connection,
    id: JobId,
    stream: LogStream,
    offset: u64,
    max: usize,
) -> Result<Vec<u8>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT rowid, offset, length(data) FROM log_chunks
             WHERE job_id = ?1 AND stream = ?2 AND offset < ?3 + ?4
               AND offset >= coalesce((SELECT offset FROM log_chunks
                                       WHERE job_id = ?1 AND stream = ?2 AND offset <= ?3
                                       ORDER BY offset DESC LIMIT 1), 0)
             ORDER BY offset",
        )
        .map_err(backend)?;
    let max = max.min(i64::MAX as usize);
    let chunks = stmt
        .query_map(
            params![
                id.to_string(),
                stream_code(stream),
                offset as i64,
                max as i64
            ],
            |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            },
        )
        .map_err(backend)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(backend)?;
    // Sized once: the untouched part of a large read is never paged in.
    let mut out = Vec::with_capacity(max.min(16 << 20));
    for (rowid, start, len) in chunks {
        let skip = (offset as i64 - start).max(0) as usize;
        let take = (max - out.len()).min((len as usize).saturating_sub(skip));
        if take == 0 {
            continue;
        }
        let blob = conn
            .blob_open(rusqlite::MAIN_DB, "log_chunks", "data", rowid, true)
            .map_err(backend)?;
        let at = out.len();
        out.resize(at + take, 0);
        blob.read_at_exact(&mut out[at..], skip).map_err(backend)?;
        if out.len() >= max {
            break;
        }
    }
    Ok(out)
}
