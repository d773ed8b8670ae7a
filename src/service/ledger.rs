//! The ledger of outputs not yet acknowledged.
//!
//! Every output the pipeline produces (an alert for each of its sinks, a
//! late event, a dead letter) is entered under a sequence number before it
//! is handed to its destination, which settles it once the destination has
//! it for good (a broker ack, a 2xx response, a synced file, or a successful
//! dead-letter write). A checkpoint taken when the last number handed out
//! was `n` may commit its offsets only once everything up to `n` is settled:
//! then no event before those offsets can have an output still in flight,
//! and a crash can lose nothing that a re-read would not bring back.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

#[derive(Default)]
struct Inner {
    next: u64,
    /// Sequence number → deliveries still outstanding.
    open: BTreeMap<u64, u32>,
}

/// Shared by the pipeline (which enters) and the sinks (which settle).
#[derive(Clone, Default)]
pub struct Ledger {
    inner: Arc<Mutex<Inner>>,
    settled: Arc<Notify>,
}

/// One entry's handle, given to each destination that must settle it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket(pub u64);

impl Ledger {
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// Enters an output with `deliveries` destinations (at least one).
    pub fn enter(&self, deliveries: u32) -> Ticket {
        let mut g = self.inner.lock().expect("ledger lock");
        g.next += 1;
        let seq = g.next;
        if deliveries > 0 {
            g.open.insert(seq, deliveries);
        }
        Ticket(seq)
    }

    /// One destination has the output for good.
    pub fn settle(&self, t: Ticket) {
        let mut g = self.inner.lock().expect("ledger lock");
        if let Some(n) = g.open.get_mut(&t.0) {
            *n -= 1;
            if *n == 0 {
                g.open.remove(&t.0);
            }
        }
        drop(g);
        self.settled.notify_waiters();
    }

    /// The last sequence number handed out.
    pub fn high(&self) -> u64 {
        self.inner.lock().expect("ledger lock").next
    }

    /// Every entry up to and including `seq` is settled.
    pub fn settled_through(&self, seq: u64) -> bool {
        let g = self.inner.lock().expect("ledger lock");
        g.open.first_key_value().is_none_or(|(&k, _)| k > seq)
    }

    /// Entries not yet settled.
    pub fn outstanding(&self) -> usize {
        self.inner.lock().expect("ledger lock").open.len()
    }

    /// Waits until everything up to `seq` is settled.
    pub async fn wait_through(&self, seq: u64) {
        loop {
            let notified = self.settled.notified();
            if self.settled_through(seq) {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_is_settled_when_all_its_deliveries_are() {
        let l = Ledger::new();
        let a = l.enter(2);
        let b = l.enter(1);
        assert!(!l.settled_through(a.0));
        l.settle(b);
        assert!(!l.settled_through(b.0), "a is still open");
        l.settle(a);
        assert!(!l.settled_through(a.0), "one of a's two deliveries is open");
        l.settle(a);
        assert!(l.settled_through(b.0));
        assert_eq!(l.outstanding(), 0);
        assert!(l.settled_through(l.high()));
    }

    #[tokio::test]
    async fn waiting_ends_when_the_last_delivery_settles() {
        let l = Ledger::new();
        let t = l.enter(1);
        let l2 = l.clone();
        let h = tokio::spawn(async move { l2.wait_through(t.0).await });
        tokio::task::yield_now().await;
        assert!(!h.is_finished());
        l.settle(t);
        h.await.unwrap();
    }
}
