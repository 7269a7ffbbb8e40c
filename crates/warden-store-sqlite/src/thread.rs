//! The store's connection lives on a thread of its own, and every call is a closure sent to it.
//! Calls queue instead of each taking a blocking-pool thread that then waits on a lock: under
//! load the thread runs them back to back without sleeping in between, and the async side pays
//! one wake-up to send and one for the answer.
//!
//! **Group commit.** The calls that queued while one ran are run together in one transaction
//! (up to [`BATCH`]): each call's own transaction becomes a savepoint within it ([`Tx`]), and
//! their callers hear back once it commits. Ten jobs' claims, completions and log appends then
//! cost one `BEGIN`, one `COMMIT` and one write of each page they share, instead of ten. A call
//! that fails rolls back to its savepoint only; a commit that fails is every call's error; no
//! caller is told "done" before its writes are committed. Calls that only read run after that
//! commit, outside the transaction ([`Kind::Read`]), so they never delay it.

use std::ops::Deref;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc;

use rusqlite::Connection;
use warden_store::{Result, StoreError};

use crate::exec;

/// The most calls one transaction carries: their callers wait for all of them.
const BATCH: usize = 32;

/// Runs a call on the connection; what it returns tells its caller (with the batch's error if
/// the batch's commit failed), once the batch is committed.
type Call = Box<dyn FnOnce(&mut Connection) -> Reply + Send>;
type Reply = Box<dyn FnOnce(Option<&str>) + Send>;

/// A queued call, and how it runs beside the others.
struct Queued {
    call: Call,
    kind: Kind,
}

#[derive(Clone, Copy)]
enum Kind {
    /// May share a transaction with the calls queued beside it.
    Shared,
    /// Outside any transaction, in its place in the queue.
    Alone,
    /// Writes nothing: runs after the writes queued beside it are committed and answered, so
    /// that a follower's log read never holds up the commit a job's output waits for.
    Read,
}

/// A handle to the store thread; the thread ends (and closes the connection) when the last
/// handle is dropped.
#[derive(Clone)]
pub(crate) struct StoreThread {
    tx: mpsc::Sender<Queued>,
}

impl StoreThread {
    pub(crate) fn start(mut conn: Connection) -> std::io::Result<StoreThread> {
        let (tx, rx) = mpsc::channel::<Queued>();
        std::thread::Builder::new()
            .name("warden-sqlite".into())
            .spawn(move || {
                let mut batch = Vec::with_capacity(BATCH);
                while let Ok(first) = rx.recv() {
                    batch.push(first);
                    while batch.len() < BATCH {
                        match rx.try_recv() {
                            Ok(next) => batch.push(next),
                            Err(_) => break,
                        }
                    }
                    run_batch(&mut conn, &mut batch);
                }
            })?;
        Ok(StoreThread { tx })
    }

    /// Runs `f` on the connection and returns its answer, possibly in one transaction with
    /// other calls (see the module's doc): `f`'s writes go in a [`Tx`]. A panic in `f` is that
    /// call's error (its savepoint or transaction rolled back as the panic unwound); the
    /// thread goes on.
    pub(crate) async fn call<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        self.queue(f, |t| t, Kind::Shared).await
    }

    /// [`call`](Self::call), and `then` given its answer on the store thread the moment its
    /// writes are committed, before its caller is woken: what `then` wakes runs beside the
    /// caller instead of after it. Not run when the call or the commit failed.
    pub(crate) async fn call_then<T, U, F, G>(&self, f: F, then: G) -> Result<U>
    where
        T: Send + 'static,
        U: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
        G: FnOnce(T) -> U + Send + 'static,
    {
        self.queue(f, then, Kind::Shared).await
    }

    /// Runs `f`, which only reads, after the writes queued beside it (see [`Kind::Read`]).
    pub(crate) async fn call_read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        self.queue(f, |t| t, Kind::Read).await
    }

    /// Runs `f` on the connection outside any transaction (a statement SQLite refuses inside
    /// one, such as some pragmas).
    pub(crate) async fn call_alone<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        self.queue(f, |t| t, Kind::Alone).await
    }

    async fn queue<T, U, F, G>(&self, f: F, then: G, kind: Kind) -> Result<U>
    where
        T: Send + 'static,
        U: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
        G: FnOnce(T) -> U + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let call: Call = Box::new(move |conn| {
            let out = std::panic::catch_unwind(AssertUnwindSafe(|| f(conn)))
                .unwrap_or_else(|_| Err(StoreError::Backend("store call panicked".into())));
            Box::new(move |batch_failed: Option<&str>| {
                let out = match (out, batch_failed) {
                    (Ok(_), Some(why)) => Err(StoreError::Backend(why.to_string())),
                    (Ok(t), None) => std::panic::catch_unwind(AssertUnwindSafe(|| then(t)))
                        .map_err(|_| StoreError::Backend("store call's follow-up panicked".into())),
                    (Err(e), _) => Err(e),
                };
                // The caller may have gone (its future dropped): nobody to tell.
                let _ = reply.send(out);
            })
        });
        self.tx
            .send(Queued { call, kind })
            .map_err(|_| StoreError::Backend("store thread is gone".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Backend("store thread is gone".into()))?
    }
}

/// Runs the queued calls: in order, runs of calls that may share a transaction sharing one;
/// the reads after all of them. (Calls queued together were sent concurrently: any order of
/// them is one their callers could have seen.)
fn run_batch(conn: &mut Connection, batch: &mut Vec<Queued>) {
    let mut shared = Vec::with_capacity(batch.len());
    let mut reads = Vec::new();
    for q in batch.drain(..) {
        match q.kind {
            Kind::Shared => shared.push(q.call),
            Kind::Read => reads.push(q.call),
            Kind::Alone => {
                run_shared(conn, &mut shared);
                (q.call)(conn)(None);
            }
        }
    }
    run_shared(conn, &mut shared);
    for read in reads {
        read(conn)(None);
    }
}

/// Runs `calls` in one transaction (one alone in its own), then tells their callers.
fn run_shared(conn: &mut Connection, calls: &mut Vec<Call>) {
    let mut left = std::mem::take(calls).into_iter();
    if left.len() > 1 {
        match exec(conn, "BEGIN IMMEDIATE", []) {
            Ok(_) => run_in_transaction(conn, &mut left),
            Err(e) => tracing::warn!(error = %e, "store: cannot begin a shared transaction"),
        }
    }
    // One call alone, or those left when no shared transaction could begin: each in its own.
    for call in left {
        call(conn)(None);
    }
}

/// Runs `calls` in the transaction just begun, commits it, and tells their callers; stops
/// early, leaving the rest in `calls`, if SQLite rolled it back and no new one could begin.
fn run_in_transaction(conn: &mut Connection, calls: &mut impl Iterator<Item = Call>) {
    let mut replies = Vec::new();
    for call in calls.by_ref() {
        replies.push(call(conn));
        if conn.is_autocommit() {
            // SQLite rolled the shared transaction back (a full disk, an I/O error): what
            // the calls so far wrote is gone. The rest start over in a new one.
            let why = "store: the transaction was rolled back by an error in another call; retry";
            for reply in replies.drain(..) {
                reply(Some(why));
            }
            if exec(conn, "BEGIN IMMEDIATE", []).is_err() {
                break;
            }
        }
    }
    let failed = if conn.is_autocommit() {
        None
    } else {
        match exec(conn, "COMMIT", []) {
            Ok(_) => None,
            Err(e) => {
                let _ = exec(conn, "ROLLBACK", []);
                Some(format!("store: commit failed: {e}"))
            }
        }
    };
    for reply in replies {
        reply(failed.as_deref());
    }
}

/// A call's write transaction: `BEGIN IMMEDIATE … COMMIT` when the call runs alone, a
/// savepoint when it shares the store thread's transaction with others. Rolled back when
/// dropped uncommitted (an error returned early, a panic). The statements come from the
/// connection's cache: parsed once, not on every call.
pub(crate) struct Tx<'c> {
    conn: &'c Connection,
    nested: bool,
    open: bool,
}

impl<'c> Tx<'c> {
    pub(crate) fn begin(conn: &'c Connection) -> Result<Tx<'c>> {
        let nested = !conn.is_autocommit();
        let sql = if nested {
            "SAVEPOINT call"
        } else {
            "BEGIN IMMEDIATE"
        };
        exec(conn, sql, []).map_err(crate::backend)?;
        Ok(Tx {
            conn,
            nested,
            open: true,
        })
    }

    pub(crate) fn commit(mut self) -> Result<()> {
        self.open = false;
        let sql = if self.nested {
            "RELEASE call"
        } else {
            "COMMIT"
        };
        exec(self.conn, sql, []).map_err(crate::backend)?;
        Ok(())
    }
}

impl Deref for Tx<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        // Nothing to tell anyone if this fails: the caller already has its error, and a
        // transaction SQLite itself rolled back has nothing left to undo.
        if self.nested {
            let _ = exec(self.conn, "ROLLBACK TO call", []);
            let _ = exec(self.conn, "RELEASE call", []);
        } else if !self.conn.is_autocommit() {
            let _ = exec(self.conn, "ROLLBACK", []);
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods, reason = "tests run statements once")]
mod tests {
    use super::*;

    /// A store thread on an in-memory database with one table of numbers.
    async fn with_table() -> StoreThread {
        let t = StoreThread::start(Connection::open_in_memory().unwrap()).unwrap();
        t.call(|c| {
            c.execute_batch("CREATE TABLE t (n INTEGER)")
                .map_err(|e| StoreError::Backend(e.to_string()))
        })
        .await
        .unwrap();
        t
    }

    /// The numbers in the table, in order.
    fn numbers(c: &Connection) -> Vec<i64> {
        let mut s = c.prepare("SELECT n FROM t ORDER BY n").unwrap();
        let rows = s.query_map([], |r| r.get(0)).unwrap();
        rows.map(|r| r.unwrap()).collect()
    }

    #[tokio::test]
    async fn concurrent_calls_all_run_and_a_panic_fails_only_its_own() {
        let t = with_table().await;
        // Sent from many tasks at once: each call runs whole, none is lost.
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..50 {
            let t = t.clone();
            tasks.spawn(async move {
                t.call(move |c| {
                    c.execute("INSERT INTO t VALUES (?1)", [n])
                        .map_err(|e| StoreError::Backend(e.to_string()))
                })
                .await
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap().unwrap();
        }
        let panicked = t
            .call::<(), _>(|c| {
                let tx = Tx::begin(c).unwrap();
                tx.execute("INSERT INTO t VALUES (-1)", []).unwrap();
                panic!("a bug in one call")
            })
            .await;
        assert!(matches!(panicked, Err(StoreError::Backend(m)) if m.contains("panicked")));
        let ns = t.call(|c| Ok(numbers(c))).await.unwrap();
        assert_eq!(
            ns,
            (0..50).collect::<Vec<_>>(),
            "all of them; the panicked call rolled back"
        );
    }

    #[tokio::test]
    async fn queued_calls_share_a_transaction_and_each_fails_alone() {
        let t = with_table().await;
        // The first call holds the thread until the others are queued behind it.
        let (open, gate) = std::sync::mpsc::channel::<()>();
        let (running, started) = tokio::sync::oneshot::channel::<()>();
        let held = tokio::spawn({
            let t = t.clone();
            async move {
                t.call(move |_| {
                    running.send(()).unwrap();
                    Ok(gate.recv().is_ok())
                })
                .await
            }
        });
        started.await.unwrap();
        // A read queued first runs after the writes queued behind it are committed.
        let read = tokio::spawn({
            let t = t.clone();
            async move { t.call_read(|c| Ok((c.is_autocommit(), numbers(c)))).await }
        });
        let mut calls = Vec::new();
        for n in 0..10 {
            let t = t.clone();
            calls.push(tokio::spawn(async move {
                t.call(move |c| {
                    let shared = !c.is_autocommit();
                    if n == 7 {
                        // What SQLite does to the whole transaction on a full disk.
                        c.execute_batch("ROLLBACK").unwrap();
                        return Ok(shared);
                    }
                    let tx = Tx::begin(c)?;
                    tx.execute("INSERT INTO t VALUES (?1)", [n]).unwrap();
                    match n {
                        3 => return Err(StoreError::Backend("refused".into())),
                        5 => panic!("a bug in one call"),
                        _ => {}
                    }
                    tx.commit()?;
                    Ok(shared)
                })
                .await
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        open.send(()).unwrap();
        assert!(held.await.unwrap().unwrap());
        let mut told = Vec::new();
        for call in calls {
            told.push(call.await.unwrap());
        }
        let kept: Vec<i64> = t.call(|c| Ok(numbers(c))).await.unwrap();
        for (n, told) in told.iter().enumerate() {
            if n != 7 {
                assert_eq!(
                    told.is_ok(),
                    kept.contains(&(n as i64)),
                    "call {n} was told {told:?}: told done exactly when its row is kept ({kept:?})"
                );
            }
            if let Ok(shared) = told {
                assert!(shared, "call {n} ran in a transaction of its own");
            }
        }
        let (outside, seen) = read.await.unwrap().unwrap();
        assert!(outside, "a read runs outside the writes' transaction");
        assert_eq!(seen, kept, "a read runs after the writes queued beside it");
        assert!(matches!(&told[3], Err(StoreError::Backend(m)) if m == "refused"));
        assert!(matches!(&told[5], Err(StoreError::Backend(m)) if m.contains("panicked")));
        assert!(
            told[8].is_ok() && told[9].is_ok(),
            "the calls after a rolled-back transaction go on in a new one: {told:?}"
        );
        assert!(
            told[..7]
                .iter()
                .any(|r| matches!(r, Err(StoreError::Backend(m)) if m.contains("rolled back"))),
            "the calls before it in its transaction are told their writes are gone: {told:?}"
        );
    }
}
