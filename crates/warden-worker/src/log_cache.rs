//! The recent log of followed jobs, in memory: a job with followers has its newest blocks kept
//! here as they are appended, so that a hundred followers of one job read each block once — from
//! the append itself, or from one shared store read — instead of a hundred times from the store.
//! A block also carries its encoding for the wire ([`Memo`]), made by the first follower that
//! sends it whole and reused by the others.
//!
//! Readers yield to the writer: while a job is writing (an append in the last [`QUIET`]), its
//! followers together send at most one event per [`SLOT`] ([`Following::pace`]); what they do
//! not send then, they send at full speed once it pauses or ends. A hundred followers of a job
//! that prints as fast as it can would otherwise take the CPU that storing its output needs.
//!
//! Nothing here is the truth: the store is. A block is a copy of the stream's bytes
//! `[k·BLOCK, k·BLOCK + len)`, which never change once written (a stream only grows; a new
//! attempt starts it again at 0, which drops the job's blocks). Jobs nobody follows cost one
//! map lookup per append.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use warden_core::JobId;
use warden_store::LogStream;

/// Bytes per block: the unit of sharing, and the most one follower's read returns.
pub const BLOCK: usize = 256 * 1024;

/// Bytes kept over all followed jobs, blocks and their wire encodings together; the least
/// recently used block goes first.
const CAPACITY: usize = 32 << 20;

/// While a job writes, its followers together send one event per slot.
pub const SLOT: Duration = Duration::from_millis(10);

/// A job that appended nothing for this long is not writing: its followers are not paced.
pub const QUIET: Duration = Duration::from_millis(20);

/// A block's encoding for one wire format, made once: the bytes to send and how much of the
/// block they consumed (less than all when a character is split at the block's end).
pub type Memo = OnceLock<(Bytes, usize)>;

type Key = (JobId, LogStream, u64);

#[derive(Default)]
pub struct LogCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    followed: HashMap<JobId, Followed>,
    blocks: HashMap<Key, Block>,
    /// How far each followed stream is known to reach (by appends seen and blocks read).
    ends: HashMap<(JobId, LogStream), u64>,
    bytes: usize,
    tick: u64,
}

/// A followed job.
#[derive(Default)]
struct Followed {
    followers: usize,
    /// Lets one follower read a missing block from the store while the others wait for it.
    miss: Arc<tokio::sync::Mutex<()>>,
    last_append: Option<Instant>,
    next_slot: Option<Instant>,
}

struct Block {
    data: Bytes,
    memo: Arc<Memo>,
    used: u64,
}

impl Block {
    /// Bytes of its wire encoding, once a follower has made it (about as many as the block's).
    fn encoded(&self) -> usize {
        self.memo.get().map_or(0, |(frame, _)| frame.len())
    }
}

/// One hit: bytes of the stream, and the block's shared encoding when they are a whole block.
pub struct Cached {
    pub data: Bytes,
    pub memo: Option<Arc<Memo>>,
}

/// What a read found.
pub enum Lookup {
    Hit(Cached),
    /// Nothing past this offset was appended here since the job was followed; only an append
    /// through another server would be missing, so a poll should still read the store.
    AtEnd,
    /// The stream is known to reach past this offset, but the block is not here: read the
    /// store (and [`fill`](LogCache::fill) the block).
    Miss,
    /// Nothing is known here of this stream past what is kept: the job's record says how long
    /// it is.
    Unknown,
}

/// Held by a follower for as long as it follows: while a job has one, its appends are kept.
pub struct Following {
    cache: Arc<LogCache>,
    job: JobId,
    miss: Arc<tokio::sync::Mutex<()>>,
}

impl Following {
    /// Taken around a store read of a missing block, so that followers in step read it once.
    pub async fn miss_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.miss.lock().await
    }

    /// Waits for this follower's turn to send an event while the job is writing (its
    /// followers share one event per [`SLOT`]); returns at once when it is not.
    pub async fn pace(&self) {
        let wait = self.cache.lock().slot(self.job, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        let mut inner = self.cache.lock();
        if let Some(f) = inner.followed.get_mut(&self.job) {
            f.followers -= 1;
            if f.followers == 0 {
                inner.followed.remove(&self.job);
                inner.drop_job(self.job, None);
            }
        }
    }
}

impl LogCache {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding it leaves a cache of immutable bytes: still sound.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts following `job`: its appends are kept from now on.
    pub fn follow(self: &Arc<Self>, job: JobId) -> Following {
        let mut inner = self.lock();
        let entry = inner.followed.entry(job).or_default();
        entry.followers += 1;
        Following {
            cache: self.clone(),
            job,
            miss: entry.miss.clone(),
        }
    }

    /// `data` was stored at `offset` of a stream of `job`.
    pub fn appended(&self, job: JobId, stream: LogStream, offset: u64, data: &[u8]) {
        let mut inner = self.lock();
        let Some(followed) = inner.followed.get_mut(&job) else {
            return;
        };
        if data.is_empty() {
            return;
        }
        followed.last_append = Some(Instant::now());
        if offset == 0 {
            // A new attempt writes the stream again from its start.
            inner.drop_job(job, Some(stream));
        }
        inner.reached(job, stream, offset + data.len() as u64);
        let (mut pos, mut rest) = (offset, data);
        while !rest.is_empty() {
            let (k, within) = (pos / BLOCK as u64, (pos % BLOCK as u64) as usize);
            let n = rest.len().min(BLOCK - within);
            let piece = &rest[..n];
            let key = (job, stream, k);
            let grown = if within == 0 {
                Some(Bytes::copy_from_slice(piece))
            } else {
                match inner.blocks.get(&key) {
                    // Only a block that ends exactly here grows; any other keeps what it has.
                    Some(b) if b.data.len() == within => {
                        let mut joined = BytesMut::with_capacity(within + n);
                        joined.extend_from_slice(&b.data);
                        joined.extend_from_slice(piece);
                        Some(joined.freeze())
                    }
                    _ => None,
                }
            };
            if let Some(data) = grown {
                inner.put(key, data);
            }
            pos += n as u64;
            rest = &rest[n..];
        }
        inner.evict();
    }

    /// Up to `max` bytes of the stream from `offset`, if the block holding `offset` is here and
    /// reaches past it. Never more than the rest of that block.
    pub fn read(&self, job: JobId, stream: LogStream, offset: u64, max: usize) -> Lookup {
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let within = (offset % BLOCK as u64) as usize;
        if let Some(block) = inner.blocks.get_mut(&(job, stream, offset / BLOCK as u64))
            && block.data.len() > within
            && max > 0
        {
            block.used = tick;
            let end = block.data.len().min(within + max);
            let whole = within == 0 && end == BLOCK;
            return Lookup::Hit(Cached {
                data: block.data.slice(within..end),
                memo: whole.then(|| block.memo.clone()),
            });
        }
        match inner.ends.get(&(job, stream)) {
            Some(end) if offset >= *end => Lookup::AtEnd,
            Some(_) => Lookup::Miss,
            None => Lookup::Unknown,
        }
    }

    /// Keeps a block read from the store (starting at a block boundary), unless the job is no
    /// longer followed or a longer copy is already here.
    pub fn fill(&self, job: JobId, stream: LogStream, start: u64, data: Bytes) {
        debug_assert_eq!(start % BLOCK as u64, 0);
        let mut inner = self.lock();
        let key = (job, stream, start / BLOCK as u64);
        let longer = inner
            .blocks
            .get(&key)
            .is_some_and(|b| b.data.len() >= data.len());
        if data.is_empty() || data.len() > BLOCK || !inner.followed.contains_key(&job) {
            return;
        }
        inner.reached(job, stream, start + data.len() as u64);
        if longer {
            return;
        }
        inner.put(key, data);
        inner.evict();
    }

    /// Forgets everything kept for `job` (its logs were deleted, or it went back to the queue).
    pub fn reset(&self, job: JobId) {
        self.lock().drop_job(job, None);
    }

    #[cfg(test)]
    fn kept_bytes(&self) -> usize {
        let inner = self.lock();
        inner.bytes + inner.blocks.values().map(Block::encoded).sum::<usize>()
    }
}

impl Inner {
    /// How long a follower of `job` waits, from `now`, for its event's slot.
    fn slot(&mut self, job: JobId, now: Instant) -> Duration {
        let Some(f) = self.followed.get_mut(&job) else {
            return Duration::ZERO;
        };
        if f.last_append.is_none_or(|t| now.duration_since(t) > QUIET) {
            return Duration::ZERO;
        }
        let slot = f.next_slot.map_or(now, |s| s.max(now));
        f.next_slot = Some(slot + SLOT);
        slot - now
    }

    fn put(&mut self, key: Key, data: Bytes) {
        self.tick += 1;
        self.bytes += data.len();
        let block = Block {
            data,
            memo: Arc::default(),
            used: self.tick,
        };
        if let Some(old) = self.blocks.insert(key, block) {
            self.bytes -= old.data.len();
        }
    }

    fn reached(&mut self, job: JobId, stream: LogStream, end: u64) {
        let known = self.ends.entry((job, stream)).or_default();
        *known = (*known).max(end);
    }

    fn drop_job(&mut self, job: JobId, stream: Option<LogStream>) {
        self.ends
            .retain(|(j, s), _| !(*j == job && stream.is_none_or(|st| st == *s)));
        let mut freed = 0;
        self.blocks.retain(|(j, s, _), b| {
            let gone = *j == job && stream.is_none_or(|st| st == *s);
            if gone {
                freed += b.data.len();
            }
            !gone
        });
        self.bytes -= freed;
    }

    /// Drops the least recently used blocks until the blocks and their encodings fit. The
    /// encodings are made outside the lock, by followers, so they are counted here.
    fn evict(&mut self) {
        let mut kept = self.bytes + self.blocks.values().map(Block::encoded).sum::<usize>();
        while kept > CAPACITY {
            let Some(oldest) = self
                .blocks
                .iter()
                .min_by_key(|(_, b)| b.used)
                .map(|(k, _)| *k)
            else {
                return;
            };
            if let Some(b) = self.blocks.remove(&oldest) {
                self.bytes -= b.data.len();
                kept -= b.data.len() + b.encoded();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: LogStream = LogStream::Stdout;

    fn hit(l: Lookup) -> Option<Cached> {
        match l {
            Lookup::Hit(c) => Some(c),
            _ => None,
        }
    }

    fn stream_bytes(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn keeps_appends_only_while_followed_and_serves_them_exactly() {
        let cache = Arc::new(LogCache::default());
        let job = JobId::new();
        let all = stream_bytes(BLOCK * 2 + 1000);
        cache.appended(job, OUT, 0, &all[..1000]);
        assert!(
            matches!(cache.read(job, OUT, 0, 10), Lookup::Unknown),
            "kept for nobody"
        );

        let f = cache.follow(job);
        // Appends of odd sizes, crossing block boundaries.
        let mut at = 0;
        for n in [1000, 300_000, 7, BLOCK, all.len()] {
            let end = (at + n).min(all.len());
            cache.appended(job, OUT, at as u64, &all[at..end]);
            at = end;
        }
        let mut read = Vec::new();
        while let Some(h) = hit(cache.read(job, OUT, read.len() as u64, 100_000)) {
            assert!(h.data.len() <= 100_000);
            read.extend_from_slice(&h.data);
        }
        assert_eq!(read, all, "every byte, in order");
        assert!(matches!(
            cache.read(job, OUT, all.len() as u64, 1),
            Lookup::AtEnd
        ));
        let whole = hit(cache.read(job, OUT, 0, BLOCK)).unwrap();
        assert!(whole.memo.is_some(), "a whole block shares its encoding");
        assert!(hit(cache.read(job, OUT, 1, BLOCK)).unwrap().memo.is_none());
        assert!(hit(cache.read(job, LogStream::Stderr, 0, 10)).is_none());

        // A new attempt starts the stream again: nothing of the old one is served.
        cache.appended(job, OUT, 0, b"again");
        assert_eq!(
            &hit(cache.read(job, OUT, 0, 100)).unwrap().data[..],
            b"again"
        );
        assert!(hit(cache.read(job, OUT, BLOCK as u64, 10)).is_none());

        drop(f);
        assert!(
            hit(cache.read(job, OUT, 0, 10)).is_none(),
            "forgotten with its last follower"
        );
        assert_eq!(cache.kept_bytes(), 0);
    }

    #[test]
    fn a_gap_is_never_papered_over() {
        let cache = Arc::new(LogCache::default());
        let job = JobId::new();
        let _f = cache.follow(job);
        cache.appended(job, OUT, 0, b"abc");
        // Bytes 3..10 were appended while nobody was looking: the block must not grow past 3.
        cache.appended(job, OUT, 10, b"xyz");
        assert_eq!(&hit(cache.read(job, OUT, 0, 100)).unwrap().data[..], b"abc");
        assert!(
            matches!(cache.read(job, OUT, 3, 100), Lookup::Miss),
            "a miss (the stream is known to reach 13): read from the store"
        );
        // The store's longer copy replaces it; a shorter one does not.
        cache.fill(job, OUT, 0, Bytes::from_static(b"abcdefghijxyz"));
        cache.fill(job, OUT, 0, Bytes::from_static(b"ab"));
        assert_eq!(
            &hit(cache.read(job, OUT, 3, 100)).unwrap().data[..],
            b"defghijxyz"
        );
    }

    #[test]
    fn followers_of_a_writing_job_share_one_event_per_slot() {
        let cache = Arc::new(LogCache::default());
        let (job, quiet_job) = (JobId::new(), JobId::new());
        let (_f, _q) = (cache.follow(job), cache.follow(quiet_job));
        let now = Instant::now();
        assert_eq!(
            cache.lock().slot(job, now),
            Duration::ZERO,
            "nothing written yet"
        );
        cache.appended(job, OUT, 0, b"x");
        let now = Instant::now();
        let waits: Vec<Duration> = (0..4).map(|_| cache.lock().slot(job, now)).collect();
        assert_eq!(
            waits,
            [Duration::ZERO, SLOT, SLOT * 2, SLOT * 3],
            "one after another"
        );
        assert_eq!(cache.lock().slot(quiet_job, now), Duration::ZERO, "per job");
        // Once the job has been quiet for a while, nobody waits.
        let later = now + QUIET + SLOT * 10;
        assert_eq!(cache.lock().slot(job, later), Duration::ZERO);
    }

    #[test]
    fn stays_within_its_capacity() {
        let cache = Arc::new(LogCache::default());
        let job = JobId::new();
        let _f = cache.follow(job);
        let block = vec![1u8; BLOCK];
        let blocks = CAPACITY / BLOCK + 10;
        for k in 0..blocks {
            cache.appended(job, OUT, (k * BLOCK) as u64, &block);
        }
        assert!(cache.kept_bytes() <= CAPACITY);
        assert!(
            hit(cache.read(job, OUT, 0, 10)).is_none(),
            "the oldest went first"
        );
        assert!(hit(cache.read(job, OUT, ((blocks - 1) * BLOCK) as u64, 10)).is_some());
    }

    #[test]
    fn the_encodings_count_against_its_capacity() {
        let cache = Arc::new(LogCache::default());
        let job = JobId::new();
        let _f = cache.follow(job);
        let block = vec![1u8; BLOCK];
        let frame = Bytes::from(vec![2u8; BLOCK]);
        for k in 0..2 * CAPACITY / BLOCK {
            let at = (k * BLOCK) as u64;
            cache.appended(job, OUT, at, &block);
            // Every follower that sends a whole block makes its encoding once, as large again.
            let memo = hit(cache.read(job, OUT, at, BLOCK)).unwrap().memo.unwrap();
            memo.get_or_init(|| (frame.clone(), BLOCK));
        }
        let kept = cache.kept_bytes();
        // One block over at most: the encoding of the newest is made after its append evicted.
        assert!(kept <= CAPACITY + BLOCK, "{kept} bytes kept");
        assert!(kept >= CAPACITY / 2, "{kept} bytes kept: evicted too much");
    }
}
