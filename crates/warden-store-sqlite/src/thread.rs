//! The store's connection lives on a thread of its own, and every call is a closure sent to it.
//! Calls queue instead of each taking a blocking-pool thread that then waits on a lock: under
//! load the thread runs them back to back without sleeping in between, and the async side pays
//! one wake-up to send and one for the answer.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;

use rusqlite::Connection;
use warden_store::{Result, StoreError};

type Call = Box<dyn FnOnce(&mut Connection) + Send>;

/// A handle to the store thread; the thread ends (and closes the connection) when the last
/// handle is dropped.
#[derive(Clone)]
pub(crate) struct StoreThread {
    tx: mpsc::Sender<Call>,
}

impl StoreThread {
    pub(crate) fn start(mut conn: Connection) -> std::io::Result<StoreThread> {
        let (tx, rx) = mpsc::channel::<Call>();
        std::thread::Builder::new()
            .name("warden-sqlite".into())
            .spawn(move || {
                while let Ok(call) = rx.recv() {
                    call(&mut conn);
                }
            })?;
        Ok(StoreThread { tx })
    }

    /// Runs `f` on the connection and returns its answer. A panic in `f` is that call's error
    /// (its transaction, if any, rolled back as the panic unwound); the thread goes on.
    pub(crate) async fn call<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let call: Call = Box::new(move |conn| {
            let out = std::panic::catch_unwind(AssertUnwindSafe(|| f(conn)))
                .unwrap_or_else(|_| Err(StoreError::Backend("store call panicked".into())));
            // The caller may have gone (its future dropped): nobody to tell.
            let _ = reply.send(out);
        });
        self.tx
            .send(call)
            .map_err(|_| StoreError::Backend("store thread is gone".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Backend("store thread is gone".into()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn concurrent_calls_all_run_and_a_panic_fails_only_its_own() {
        let t = StoreThread::start(Connection::open_in_memory().unwrap()).unwrap();
        t.call(|c| {
            c.execute_batch("CREATE TABLE t (n INTEGER)")
                .map_err(|e| StoreError::Backend(e.to_string()))
        })
        .await
        .unwrap();
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
                let tx = c.transaction().unwrap();
                tx.execute("INSERT INTO t VALUES (-1)", []).unwrap();
                panic!("a bug in one call")
            })
            .await;
        assert!(matches!(panicked, Err(StoreError::Backend(m)) if m.contains("panicked")));
        let mut ns: Vec<i64> = t
            .call(|c| {
                let mut s = c.prepare("SELECT n FROM t").unwrap();
                let rows = s.query_map([], |r| r.get(0)).unwrap();
                Ok(rows.map(|r| r.unwrap()).collect())
            })
            .await
            .unwrap();
        ns.sort();
        assert_eq!(
            ns,
            (0..50).collect::<Vec<_>>(),
            "all of them; the panicked call rolled back"
        );
    }
}
