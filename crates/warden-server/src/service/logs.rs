//! A job's logs: the last lines, exact byte ranges, and following them live.

use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use warden_core::JobId;
use warden_store::{JobRecord, LogStream};
use warden_worker::log_cache::{BLOCK, Following, Lookup, Memo};

use super::{FOLLOW_POLL, JobService, ServiceError};

/// One reader of a stream: where it is, and what it last knew of the job.
struct State {
    svc: Arc<JobService>,
    rx: warden_worker::JobEvents,
    following: Option<Following>,
    offset: u64,
    /// The record may have changed since `job` was read: read it again before waiting.
    look: bool,
    job: Option<JobRecord>,
    done: bool,
}

impl State {
    /// The next bytes at `offset`: what followed appends left in memory; else from the store
    /// when it has more — by what the cache knows, or by the record (read again only when what
    /// it said is used up and it may have changed: a changed record can only have grown the
    /// log). `None` or empty: nothing more now.
    async fn next_bytes(
        &mut self,
        id: JobId,
        stream: LogStream,
        chunk: usize,
    ) -> Result<Option<(Bytes, Option<Arc<Memo>>)>, ServiceError> {
        let lookup = match &self.following {
            Some(_) => self.svc.events.logs().read(id, stream, self.offset, chunk),
            None => Lookup::Unknown,
        };
        if let Lookup::Hit(c) = lookup {
            return Ok(Some((c.data, c.memo)));
        }
        let known = self.job.as_ref().map(|j| j.log_len(stream));
        if known.is_none_or(|len| self.look && self.offset >= len) {
            self.job = Some(self.svc.latest_for_logs(&self.rx, id).await?);
            self.look = false;
        }
        let len = self.job.as_ref().map_or(0, |j| j.log_len(stream));
        if !matches!(lookup, Lookup::Miss) && self.offset >= len {
            return Ok(None);
        }
        let read = self
            .svc
            .read_store(self.following.as_ref(), id, stream, self.offset, chunk);
        Ok(Some(read.await?))
    }
}

/// A job's record and its changes from before it was read ([`JobService::get_watched`]).
pub struct Watched {
    rx: warden_worker::JobEvents,
    job: JobRecord,
}

impl Watched {
    pub fn job(&self) -> &JobRecord {
        &self.job
    }
}

/// One step of a followed log.
#[derive(Debug, Clone, PartialEq)]
pub enum LogItem {
    /// Bytes at `offset` of the stream; `memo` holds their encoding for the wire when every
    /// follower in step sends the same (a whole block of the [`LogCache`]).
    Chunk {
        offset: u64,
        data: Bytes,
        memo: Option<Arc<Memo>>,
    },
    /// Caught up. `ended`: the job is over and nothing more will come; otherwise (when not
    /// following) the stream may still grow.
    End {
        job: Box<JobRecord>,
        next_offset: u64,
        ended: bool,
    },
}

impl JobService {
    /// The job's record as its waiter `rx` should see it now: the record its completion
    /// committed when it ended in this process, otherwise read from the store.
    async fn latest(
        &self,
        rx: &warden_worker::JobEvents,
        id: JobId,
    ) -> Result<JobRecord, ServiceError> {
        match rx.ended() {
            Some(job) => Ok(JobRecord::clone(&job)),
            None => self.load(id).await,
        }
    }

    /// [`latest`](Self::latest) for a log follower, which also takes the record its claim here
    /// committed while nothing else changed the job. A follower needs of the record only
    /// whether the job has ended and how long its logs were: a change told here between the
    /// claim's commit and its notice (a cancellation asked meanwhile) ends nothing, and the
    /// end itself is always told after the claim.
    async fn latest_for_logs(
        &self,
        rx: &warden_worker::JobEvents,
        id: JobId,
    ) -> Result<JobRecord, ServiceError> {
        match (rx.ended(), rx.current()) {
            (None, Some(claimed)) => Ok(JobRecord::clone(&claimed)),
            _ => self.latest(rx, id).await,
        }
    }

    /// The last `tail` lines of a stream and the byte offset where they start.
    pub async fn tail(
        &self,
        job: &JobRecord,
        stream: LogStream,
        tail: usize,
    ) -> Result<(Vec<String>, u64), ServiceError> {
        let total = job.log_len(stream);
        let mut window: u64 = 64 * 1024;
        loop {
            let start = total.saturating_sub(window);
            let bytes = self
                .store
                .read_log(job.id, stream, start, (total - start) as usize)
                .await?;
            let newlines = bytes.iter().filter(|b| **b == b'\n').count();
            // Enough lines, the whole stream, or 16 MiB read: stop widening.
            if newlines > tail || start == 0 || window >= 16 << 20 {
                return Ok(last_lines(&bytes, start, tail, start == 0));
            }
            window *= 4;
        }
    }

    /// `id` as `caller` may read it, with its changes from before the read on: where a follow
    /// starts ([`follow_log`](Self::follow_log)).
    pub async fn get_watched(
        &self,
        caller: &crate::auth::Caller,
        id: JobId,
    ) -> Result<Watched, ServiceError> {
        // Subscribed before the read: no change between the two is missed.
        let rx = self.events.subscribe(id);
        let job = self.get(caller, id).await?;
        Ok(Watched { rx, job })
    }

    /// Up to `limit` bytes of a stream from `offset`.
    pub async fn read_log(
        &self,
        id: JobId,
        stream: LogStream,
        offset: u64,
        limit: usize,
    ) -> Result<Vec<u8>, ServiceError> {
        Ok(self.store.read_log(id, stream, offset, limit).await?)
    }

    /// The stream from `offset` in chunks of at most `chunk` bytes, then one [`LogItem::End`].
    /// With `follow`, waits for more until the job has ended and everything was read (woken by
    /// this replica's events, and polling behind them for writes on other replicas); without,
    /// ends once caught up. Stops early when the server shuts down.
    ///
    /// A follower reads through the [`LogCache`]: the job's new bytes as they were appended, and
    /// a block missing there from the store once for all followers in step. Its record is read
    /// again only when it changed (not when its logs merely grew) or on a poll.
    ///
    /// It starts from `from`: the record its caller was authorized on, read after subscribing
    /// to the job's changes, so that what changed since is seen and the record is not read
    /// twice.
    pub fn follow_log(
        self: &std::sync::Arc<Self>,
        from: Watched,
        stream: LogStream,
        offset: u64,
        chunk: usize,
        follow: bool,
    ) -> impl Stream<Item = Result<LogItem, ServiceError>> + Send + 'static {
        let Watched { rx, job } = from;
        let id = job.id;
        let state = State {
            rx,
            following: follow.then(|| self.events.logs().follow(id)),
            svc: self.clone(),
            offset,
            look: false,
            job: Some(job),
            done: false,
        };
        futures::stream::unfold(state, move |mut st| async move {
            if st.done {
                return None;
            }
            loop {
                let got = match st.next_bytes(id, stream, chunk).await {
                    Ok(got) => got,
                    Err(e) => {
                        st.done = true;
                        return Some((Err(e), st));
                    }
                };
                if let Some((data, memo)) = got.filter(|(d, _)| !d.is_empty()) {
                    if let Some(f) = &st.following {
                        f.pace().await;
                    }
                    let at = st.offset;
                    st.offset += data.len() as u64;
                    return Some((
                        Ok(LogItem::Chunk {
                            offset: at,
                            data,
                            memo,
                        }),
                        st,
                    ));
                }
                // Nothing more now. The record is as fresh as the last change notified.
                if let Some(job) = &st.job {
                    let ended = job.status.is_terminal() && st.offset >= job.log_len(stream);
                    if ended || !follow {
                        st.done = true;
                        let end = LogItem::End {
                            job: Box::new(job.clone()),
                            next_offset: st.offset,
                            ended,
                        };
                        return Some((Ok(end), st));
                    }
                }
                tokio::select! {
                    logs_only = st.rx.changed_how() => st.look |= !logs_only,
                    // Another replica may be writing and its notice lost: look again.
                    _ = tokio::time::sleep(FOLLOW_POLL) => st.look = true,
                    _ = st.svc.shutdown.cancelled() => return None,
                }
            }
        })
    }

    /// Bytes at `offset` from the store: for a follower, the whole block holding it, read once
    /// for all followers in step and kept in the cache.
    async fn read_store(
        &self,
        following: Option<&Following>,
        id: JobId,
        stream: LogStream,
        offset: u64,
        chunk: usize,
    ) -> Result<(Bytes, Option<Arc<Memo>>), ServiceError> {
        let Some(following) = following else {
            let data = self.store.read_log(id, stream, offset, chunk).await?;
            return Ok((Bytes::from(data), None));
        };
        let logs = self.events.logs();
        let _one = following.miss_lock().await;
        // Another follower may have read it while this one waited.
        if let Lookup::Hit(c) = logs.read(id, stream, offset, chunk) {
            return Ok((c.data, c.memo));
        }
        let start = offset - offset % BLOCK as u64;
        let block = Bytes::from(self.store.read_log(id, stream, start, BLOCK).await?);
        logs.fill(id, stream, start, block.clone());
        let skip = (offset - start) as usize;
        if block.len() <= skip {
            return Ok((Bytes::new(), None));
        }
        let end = block.len().min(skip + chunk);
        Ok((block.slice(skip..end), None))
    }

    /// The job now and after every change, until it has ended (or the server stops).
    pub async fn watch(
        self: &std::sync::Arc<Self>,
        caller: &crate::auth::Caller,
        id: JobId,
    ) -> Result<impl Stream<Item = Result<JobRecord, ServiceError>> + Send + 'static, ServiceError>
    {
        // Subscribed before the first read: no change between the two is missed.
        let rx = self.events.subscribe(id);
        let first = self.get(caller, id).await?;
        let svc = self.clone();
        let state = (svc, rx, Some(first), None::<JobRecord>);
        Ok(futures::stream::unfold(
            state,
            move |(svc, mut rx, first, last)| async move {
                if let Some(job) = first {
                    return Some((Ok(job.clone()), (svc, rx, None, Some(job))));
                }
                let mut last = last?;
                loop {
                    if last.status.is_terminal() {
                        return None;
                    }
                    tokio::select! {
                        _ = rx.changed() => {}
                        _ = tokio::time::sleep(FOLLOW_POLL) => {}
                        _ = svc.shutdown.cancelled() => return None,
                    }
                    match svc.latest(&rx, id).await {
                        Ok(job) if job != last => {
                            return Some((Ok(job.clone()), (svc, rx, None, Some(job))));
                        }
                        Ok(job) => last = job,
                        Err(e) => return Some((Err(e), (svc, rx, None, None))),
                    }
                }
            },
        ))
    }
}

/// Splits `bytes` (which start at stream offset `start`) into lines and keeps the last `tail`.
/// When the window did not start at the stream's beginning, its first partial line is dropped.
fn last_lines(bytes: &[u8], start: u64, tail: usize, from_beginning: bool) -> (Vec<String>, u64) {
    let mut body = bytes;
    let mut offset = start;
    if !from_beginning && let Some(pos) = body.iter().position(|b| *b == b'\n') {
        body = &body[pos + 1..];
        offset += pos as u64 + 1;
    }
    let trimmed = body.strip_suffix(b"\n").unwrap_or(body);
    if trimmed.is_empty() && body.is_empty() {
        return (Vec::new(), offset);
    }
    let lines: Vec<&[u8]> = trimmed.split(|b| *b == b'\n').collect();
    let skip = lines.len().saturating_sub(tail);
    for line in &lines[..skip] {
        offset += line.len() as u64 + 1;
    }
    let kept = lines[skip..]
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    (kept, offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_keeps_offsets_exact() {
        let (lines, off) = last_lines(b"a\nbb\nccc\n", 0, 2, true);
        assert_eq!(lines, ["bb", "ccc"]);
        assert_eq!(off, 2);
        let (lines, off) = last_lines(b"a\nbb\nccc", 0, 10, true);
        assert_eq!(lines, ["a", "bb", "ccc"]);
        assert_eq!(off, 0);
        // A window that starts mid-line drops the partial first line.
        let (lines, off) = last_lines(b"tail\nx\ny\n", 100, 5, false);
        assert_eq!(lines, ["x", "y"]);
        assert_eq!(off, 105);
        assert_eq!(last_lines(b"", 0, 5, true), (vec![], 0));
    }
}
