//! A job's output into its log: one pump per stream. The reading half drains the job's pipe as
//! fast as the job fills it — everything there in one go, up to [`BATCH`] — masks it and counts
//! it against the output cap; the writing half stores one batch while the next is read, so the
//! job waits on the store only when the store is a whole batch behind. The two halves pass the
//! same few batch buffers back and forth: a stored batch's buffer is the next one filled, so
//! ingest does not map, fault in and unmap a fresh megabyte per batch.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};
use warden_store::{Lease, LogStream};

use super::execute::OutputBudget;
use crate::shared::Shared;

/// The most one store write holds. A pipe read gives at most what the pipe holds; a job that
/// writes faster than the store takes fills a batch while the previous one is stored.
pub(super) const BATCH: usize = 1 << 20;
/// How much one read takes from the pipe (a batch holds at most `BATCH + READ - 1`).
const READ: usize = 256 << 10;
/// The first reads' buffer. Most jobs write little or nothing: a buffer of [`READ`] would be
/// mapped and unmapped for each stream of each job (it is above the allocator's mmap
/// threshold; `warden`'s `main`), two `mmap`s, two `munmap`s and their TLB shootdowns per job.
/// A read that fills this one grows it to [`READ`] for the rest of the stream.
const FIRST_READ: usize = 16 << 10;
/// A batch past this size is given a whole batch's room.
const BIG: usize = 64 << 10;
/// The job's pipes hold this much (best effort: `/proc/sys/fs/pipe-max-size` may cap it), so
/// a job writing while a batch is stored is not stopped at the kernel's default 64 KiB.
pub(crate) const PIPE_BYTES: usize = 1 << 20;

/// What the reading half hands the writing half.
enum Batch {
    Data(Vec<u8>),
    /// Answer with the stream's offset once everything before is stored (a stage boundary).
    Flush(oneshot::Sender<u64>),
}

/// Copies one stream into the log until the job's tree closes it, with the job's secrets
/// masked. Returns the number of bytes stored.
///
/// A request on `drains` is answered, once everything already in the pipe is stored, with the
/// stream's offset (a stage boundary).
pub(super) async fn pump(
    shared: Shared,
    lease: Lease,
    stream: LogStream,
    (mut reader, mut drains): (
        pipe::Receiver,
        mpsc::UnboundedReceiver<oneshot::Sender<u64>>,
    ),
    budget: Arc<OutputBudget>,
    mask: Option<Arc<crate::secrets::MaskSet>>,
) -> u64 {
    // One batch waits while one is stored and one is filled: at most 3 × BATCH per stream.
    let (tx, rx) = mpsc::channel(1);
    let (spare_tx, spare) = std::sync::mpsc::channel();
    let failed = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(store_batches(
        shared.clone(),
        lease.clone(),
        stream,
        (rx, spare_tx),
        failed.clone(),
    ));
    let mut taker = Taker {
        budget: &budget,
        failed: &failed,
        masker: mask.as_deref().map(crate::secrets::Masker::new),
        batch: Vec::new(),
        spare,
        keeping: true,
    };
    let mut buf = vec![0u8; FIRST_READ];
    'reading: loop {
        let full = taker.batch.len() >= BATCH;
        tokio::select! {
            biased;
            Some(reply) = drains.recv() => {
                // Everything in the pipe now belongs before the boundary.
                let ended = loop {
                    match reader.try_read(&mut buf) {
                        Ok(0) => break true,
                        Ok(n) => taker.take(grown(&mut buf, n)),
                        // Empty now (or unreadable: the read below says so).
                        Err(_) => break false,
                    }
                };
                if !taker.batch.is_empty() {
                    let _ = tx.send(Batch::Data(taker.hand_over())).await;
                }
                let _ = tx.send(Batch::Flush(reply)).await;
                if ended {
                    break 'reading;
                }
            }
            permit = tx.reserve(), if !taker.batch.is_empty() => {
                let Ok(permit) = permit else { break 'reading };
                permit.send(Batch::Data(taker.hand_over()));
            }
            read = reader.read(&mut buf), if !full => {
                match read {
                    Ok(0) => break 'reading,
                    Ok(n) => taker.take(grown(&mut buf, n)),
                    Err(e) => {
                        tracing::warn!(job = %lease.job_id, error = %e, "reading job output failed");
                        break 'reading;
                    }
                }
                // Whatever else is in the pipe joins this batch.
                while taker.batch.len() < BATCH {
                    match reader.try_read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => taker.take(grown(&mut buf, n)),
                    }
                }
            }
        }
    }
    taker.finish();
    if !taker.batch.is_empty() {
        let _ = tx.send(Batch::Data(taker.hand_over())).await;
    }
    drop(tx);
    writer.await.unwrap_or(0)
}

/// The `n` bytes a read put in `buf`, which is grown to [`READ`] for the next read if this one
/// filled it. (The bytes come back from the grown buffer: the old one's are copied over.)
fn grown(buf: &mut Vec<u8>, n: usize) -> &[u8] {
    if n == buf.len() && n < READ {
        buf.resize(READ, 0);
    }
    &buf[..n]
}

/// The reading half's side of the cap and the mask.
struct Taker<'a> {
    budget: &'a OutputBudget,
    failed: &'a AtomicBool,
    masker: Option<crate::secrets::Masker<'a>>,
    batch: Vec<u8>,
    /// Buffers the writing half is done with.
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
    /// False past the cap or after a failed store: the pipe is still drained, so the job never
    /// blocks on it before it is killed, but nothing more is kept.
    keeping: bool,
}

impl Taker<'_> {
    fn take(&mut self, data: &[u8]) {
        if !self.keeping || self.failed.load(Ordering::Relaxed) {
            self.keeping = false;
            return;
        }
        match &mut self.masker {
            Some(m) => {
                let masked = m.push(data);
                self.keep(&masked);
            }
            None => self.keep(data),
        }
    }

    /// The masker's held-back tail, at the end of the stream.
    fn finish(&mut self) {
        if !self.keeping || self.failed.load(Ordering::Relaxed) {
            return;
        }
        if let Some(m) = &mut self.masker {
            let rest = m.finish();
            self.keep(&rest);
        }
    }

    /// The batch so far, for the writing half; the next is filled into a stored one's buffer.
    fn hand_over(&mut self) -> Vec<u8> {
        let next = self.spare.try_recv().unwrap_or_default();
        std::mem::replace(&mut self.batch, next)
    }

    fn keep(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let keep = self.budget.admit(data.len());
        let want = self.batch.len() + keep;
        if want > self.batch.capacity() && want > BIG {
            // A job that writes a lot: room for a whole batch at once (growing by doubling
            // would copy it twice over). One that writes a little never needs a megabyte.
            self.batch
                .reserve_exact((BATCH + READ).max(want) - self.batch.len());
        }
        self.batch.extend_from_slice(&data[..keep]);
        if keep < data.len() {
            self.keeping = false;
        }
    }
}

/// The writing half: each batch appended at the stream's offset, under the lease, and its
/// buffer handed back emptied. After a failed append nothing more is stored (the reading half
/// stops keeping).
async fn store_batches(
    shared: Shared,
    lease: Lease,
    stream: LogStream,
    (mut rx, spare): (mpsc::Receiver<Batch>, std::sync::mpsc::Sender<Vec<u8>>),
    failed: Arc<AtomicBool>,
) -> u64 {
    let mut offset = 0u64;
    while let Some(batch) = rx.recv().await {
        match batch {
            Batch::Flush(reply) => {
                let _ = reply.send(offset);
            }
            Batch::Data(data) if failed.load(Ordering::Relaxed) || data.is_empty() => {}
            Batch::Data(mut data) => {
                match shared
                    .coordinator
                    .append_log(&lease, stream, offset, &data)
                    .await
                {
                    Ok(()) => {
                        shared
                            .events
                            .log_appended(lease.job_id, stream, offset, &data);
                        offset += data.len() as u64;
                    }
                    Err(e) => {
                        tracing::warn!(job = %lease.job_id, error = %e, "log append failed");
                        failed.store(true, Ordering::Relaxed);
                    }
                }
                data.clear();
                // The reading half may be gone (the stream ended): the buffer goes with it.
                let _ = spare.send(data);
            }
        }
    }
    offset
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_that_fills_the_first_buffer_grows_it_and_keeps_its_bytes() {
        let mut buf = vec![0u8; FIRST_READ];
        buf[..5].copy_from_slice(b"hello");
        // A short read leaves the buffer as it is: most jobs never map a big one.
        assert_eq!(grown(&mut buf, 5), b"hello");
        assert_eq!(buf.len(), FIRST_READ);
        // A full one: the next read may take READ, and this one's bytes are still the answer.
        let full: Vec<u8> = (0..FIRST_READ).map(|i| i as u8).collect();
        buf.copy_from_slice(&full);
        assert_eq!(grown(&mut buf, FIRST_READ), &full[..]);
        assert_eq!(buf.len(), READ);
        // At READ it stays.
        assert_eq!(grown(&mut buf, READ).len(), READ);
        assert_eq!(buf.len(), READ);
    }
}
