//! Reading logs back: a range of a stream, from only the chunks that hold it.

use rusqlite::{Connection, params};
use warden_core::JobId;
use warden_store::{LogStream, Result};

use crate::{backend, rows::stream_code};

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
