//! Messages waiting to be written to one agent, bounded in bytes per agent and across all
//! agents. A slow agent (a weak link, a busy device) must not make the manager hold every
//! message for it in RAM, nor a hundred slow agents a hundred times that: past either bound a
//! message is dropped, and the sync protocol, built for lossy links, sends what it carried in a
//! later anti-entropy round.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::mpsc;

/// Bytes queued for one agent before further messages to it are dropped: a few large sync
/// messages, or thousands of pushes.
pub const PER_AGENT_BYTES: usize = 16 << 20;

/// Bytes queued for all agents together before further messages are dropped.
pub const TOTAL_BYTES: usize = 256 << 20;

/// What every outbox of one manager shares: the bytes queued across all of them, kept in the
/// gauge that `/metrics` shows.
#[derive(Clone)]
pub struct OutboxBudget {
    queued: Gauge,
    max_bytes: usize,
}

impl OutboxBudget {
    pub fn new(max_bytes: usize, queued: Gauge) -> Self {
        Self { queued, max_bytes }
    }

    /// Bytes queued across all outboxes now.
    pub fn queued(&self) -> usize {
        usize::try_from(self.queued.get()).unwrap_or(0)
    }
}

#[derive(Clone)]
pub struct Outbox {
    sender: mpsc::UnboundedSender<Vec<u8>>,
    queued_bytes: Arc<AtomicUsize>,
    max_bytes: usize,
    budget: OutboxBudget,
    /// Marked when the queue grew long: the sync engine is told to stop building replies for
    /// this agent until the queue has emptied.
    backlogged: Arc<AtomicBool>,
}

impl Outbox {
    /// The outbox and the receiving end its writer drains (calling [`Outbox::written`]).
    pub fn new(max_bytes: usize, budget: OutboxBudget) -> (Self, mpsc::UnboundedReceiver<Vec<u8>>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let outbox = Self {
            sender,
            queued_bytes: Arc::default(),
            max_bytes,
            budget,
            backlogged: Arc::default(),
        };
        (outbox, receiver)
    }

    /// Queues `bytes`; false when it is dropped (an outbox or the budget is full) or the
    /// writer is gone.
    pub fn send(&self, bytes: Vec<u8>) -> bool {
        let len = bytes.len();
        let queued = self.queued_bytes.load(Ordering::SeqCst);
        // One message always fits an empty outbox, however large and however full the others
        // are: every agent keeps making progress.
        if queued > 0 && (queued + len > self.max_bytes || self.budget.queued() + len > self.budget.max_bytes)
        {
            return false;
        }
        self.queued_bytes.fetch_add(len, Ordering::SeqCst);
        self.budget.queued.inc_by(len as i64);
        if self.sender.send(bytes).is_err() {
            self.release(len);
            return false;
        }
        true
    }

    /// True once, when this outbox has just become backlogged: a quarter of its own bound is
    /// queued, or three quarters of the shared budget while it holds anything.
    pub fn mark_if_backlogged(&self) -> bool {
        let queued = self.queued_bytes.load(Ordering::SeqCst);
        let long = queued >= self.max_bytes / 4
            || (queued > 0 && self.budget.queued() >= self.budget.max_bytes / 4 * 3);
        long && !self.backlogged.swap(true, Ordering::SeqCst)
    }

    /// True once, when a backlogged outbox has emptied. Both the writer (after each write)
    /// and the marker (right after marking) ask, so an outbox that emptied between the two is
    /// never left marked with nothing queued to clear it.
    pub fn take_cleared(&self) -> bool {
        self.queued_bytes.load(Ordering::SeqCst) == 0 && self.backlogged.swap(false, Ordering::SeqCst)
    }

    /// The writer took `len` bytes off the queue.
    pub fn written(&self, len: usize) {
        self.release(len);
    }

    fn release(&self, len: usize) {
        self.queued_bytes.fetch_sub(len, Ordering::SeqCst);
        self.budget.queued.dec_by(len as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::{Outbox, OutboxBudget};

    #[test]
    fn an_outbox_is_bounded_in_bytes_and_frees_what_is_written() {
        let (outbox, mut receiver) =
            Outbox::new(100, OutboxBudget::new(super::TOTAL_BYTES, Default::default()));
        assert!(outbox.send(vec![0; 60]));
        assert!(!outbox.send(vec![0; 60]), "over the bound: dropped");
        assert!(outbox.send(vec![0; 40]));
        let first = receiver.try_recv().unwrap();
        outbox.written(first.len());
        assert!(outbox.send(vec![0; 60]), "room again once written");
        // One message larger than the bound still goes through an empty outbox.
        let (big, _receiver) = Outbox::new(10, OutboxBudget::new(super::TOTAL_BYTES, Default::default()));
        assert!(big.send(vec![0; 1000]));
        drop(receiver);
        assert!(!outbox.send(vec![1]), "writer gone");
    }

    #[test]
    fn outboxes_share_one_total_budget() {
        let budget = OutboxBudget::new(100, Default::default());
        let (a, mut a_out) = Outbox::new(1000, budget.clone());
        let (b, _b_out) = Outbox::new(1000, budget.clone());
        assert!(a.send(vec![0; 70]));
        assert!(b.send(vec![0; 20]));
        assert_eq!(budget.queued(), 90);
        assert!(!a.send(vec![0; 20]), "the budget is spent: dropped");
        // An empty outbox still takes one message, so no agent starves behind the others.
        let (c, _c_out) = Outbox::new(1000, budget.clone());
        assert!(c.send(vec![0; 50]));
        assert!(!b.send(vec![0; 1]), "over the budget");
        a.written(a_out.try_recv().unwrap().len());
        assert_eq!(budget.queued(), 70);
        assert!(b.send(vec![0; 30]), "room again once another outbox drained");
        drop(a_out);
        assert!(!a.send(vec![0; 1]), "writer gone");
        assert_eq!(
            budget.queued(),
            100,
            "a refused message leaves the budget as it was"
        );
    }

    #[test]
    fn a_long_queue_is_marked_once_and_cleared_once_when_empty() {
        let (outbox, mut out) = Outbox::new(400, OutboxBudget::new(1000, Default::default()));
        assert!(outbox.send(vec![0; 50]));
        assert!(!outbox.mark_if_backlogged(), "short queue");
        assert!(outbox.send(vec![0; 60]));
        assert!(outbox.mark_if_backlogged(), "a quarter of the bound queued");
        assert!(!outbox.mark_if_backlogged(), "marked once");
        outbox.written(out.try_recv().unwrap().len());
        assert!(!outbox.take_cleared(), "not empty yet");
        outbox.written(out.try_recv().unwrap().len());
        assert!(outbox.take_cleared());
        assert!(!outbox.take_cleared(), "cleared once");
        // Most of the shared budget spent elsewhere: even a short queue counts as long.
        let budget = OutboxBudget::new(100, Default::default());
        let (hog, _hog_out) = Outbox::new(1000, budget.clone());
        let (small, _small_out) = Outbox::new(1000, budget);
        assert!(hog.send(vec![0; 80]));
        assert!(small.send(vec![0; 1]));
        assert!(small.mark_if_backlogged());
    }
}
