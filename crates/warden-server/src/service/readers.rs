//! Log followers yield to the jobs they follow. A follow's work — reading the log, encoding
//! events — runs on a runtime of its own whose threads have the lowest CPU priority (nice 19),
//! and reaches the connection through a short queue. When the machine is busy running jobs
//! and storing their output, a hundred followers of a job wait for the CPU instead of slowing
//! the job down; when it is not, they get all of it. Nothing is dropped either way: a follower
//! that is behind reads on from where it is.

use std::sync::OnceLock;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use tokio::runtime::Runtime;

/// Items a follow prepares ahead of its connection.
const AHEAD: usize = 4;

/// Bytes a follow sends from the connection's own task before it moves to the readers.
pub const INLINE: usize = 1 << 20;

/// The lowest priority a thread can take without privileges.
const NICE: i32 = 19;

fn runtime() -> Option<&'static Runtime> {
    static READERS: OnceLock<Option<Runtime>> = OnceLock::new();
    READERS
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("warden-readers")
                .enable_all()
                .on_thread_start(|| {
                    let me = rustix::thread::gettid();
                    if let Err(e) = rustix::process::setpriority_process(Some(me), NICE) {
                        tracing::warn!(error = %e, "log readers keep the normal CPU priority");
                    }
                })
                .build()
                .inspect_err(|e| {
                    tracing::warn!(error = %e, "no runtime for log readers: they run inline");
                })
                .ok()
        })
        .as_ref()
}

/// `items`, produced on the readers' runtime. Ends when `items` does; dropping the returned
/// stream (the client went away) stops the producer at its next item.
fn detach<S>(items: S) -> BoxStream<'static, S::Item>
where
    S: Stream + Send + 'static,
    S::Item: Send + 'static,
{
    let Some(rt) = runtime() else {
        return items.boxed();
    };
    let (tx, rx) = tokio::sync::mpsc::channel(AHEAD);
    rt.spawn(async move {
        let mut items = std::pin::pin!(items);
        while let Some(item) = items.next().await {
            if tx.send(item).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
}

/// `items` produced where they are polled until they have yielded `inline` bytes (by `size`),
/// then [`detach`]ed for the rest. Most follows — waiting for a job to end, a short log — never
/// leave the connection's own task, and pay no hop between runtimes; a heavy one moves.
pub fn detach_after<S>(
    items: S,
    inline: usize,
    size: fn(&S::Item) -> usize,
) -> BoxStream<'static, S::Item>
where
    S: Stream + Send + 'static,
    S::Item: Send + 'static,
{
    enum Where<S: Stream> {
        Here(std::pin::Pin<Box<S>>, usize),
        There(BoxStream<'static, S::Item>),
    }
    let state = Where::Here(Box::pin(items), 0);
    futures::stream::unfold(state, move |state| async move {
        match state {
            Where::Here(mut items, sent) => {
                let item = items.next().await?;
                let sent = sent + size(&item);
                let next = if sent >= inline {
                    Where::There(detach(items))
                } else {
                    Where::Here(items, sent)
                };
                Some((item, next))
            }
            Where::There(mut rest) => {
                let item = rest.next().await?;
                Some((item, Where::There(rest)))
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn items_arrive_whole_and_in_order_from_a_low_priority_thread() {
        let items = futures::stream::iter(0..1000).then(|n| async move {
            let me = rustix::thread::gettid();
            (n, rustix::process::getpriority_process(Some(me)).unwrap())
        });
        let got: Vec<(i32, i32)> = detach(items).collect().await;
        assert_eq!(
            got.iter().map(|g| g.0).collect::<Vec<_>>(),
            (0..1000).collect::<Vec<_>>()
        );
        assert!(
            got.iter().all(|g| g.1 == NICE),
            "made on the readers' threads"
        );
    }

    #[tokio::test]
    async fn a_follow_moves_to_the_readers_once_it_has_sent_enough() {
        let items = futures::stream::iter(0..10).then(|n| async move {
            let me = rustix::thread::gettid();
            (n, rustix::process::getpriority_process(Some(me)).unwrap())
        });
        // Each item counts 100 bytes: the first three stay, the rest move.
        let got: Vec<(i32, i32)> = detach_after(items, 300, |_| 100).collect().await;
        assert_eq!(
            got.iter().map(|g| g.0).collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );
        let here = rustix::process::getpriority_process(None).unwrap();
        assert!(got[..3].iter().all(|g| g.1 == here), "{got:?}");
        assert!(got[3..].iter().all(|g| g.1 == NICE), "{got:?}");
    }

    #[tokio::test]
    async fn a_dropped_reader_stops_its_producer() {
        let (tx, mut done) = tokio::sync::oneshot::channel::<()>();
        let endless = futures::stream::unfold(tx, |tx| async move {
            tokio::task::yield_now().await;
            Some((0u8, tx))
        });
        let mut s = detach(endless);
        assert_eq!(s.next().await, Some(0));
        drop(s);
        // The producer (holding `tx`) ends, and `tx` with it.
        tokio::time::timeout(std::time::Duration::from_secs(5), &mut done)
            .await
            .expect("the producer stopped")
            .unwrap_err();
    }
}
