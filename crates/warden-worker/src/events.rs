//! A process-wide "something changed" signal: bumped on every log append and state change, so
//! that log followers and waiters re-read the store instead of polling it.

use tokio::sync::watch;

#[derive(Clone)]
pub struct Events {
    tx: watch::Sender<u64>,
}

impl Default for Events {
    fn default() -> Self {
        Events::new()
    }
}

impl Events {
    pub fn new() -> Events {
        Events {
            tx: watch::Sender::new(0),
        }
    }

    pub fn bump(&self) {
        self.tx.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }
}
