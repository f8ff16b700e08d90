//! The in-flight window of the sender: outbox records published and not yet acknowledged by
//! the broker, in publish order. The outbox may be acked only up to the highest seq such that
//! every record published before it has been PubAck'ed.

use std::collections::VecDeque;

#[derive(Debug, Default)]
pub struct Window {
    /// (seq, acked) in publish order.
    inflight: VecDeque<(u64, bool)>,
    /// The highest seq up to which everything published is acknowledged.
    acked_upto: u64,
}

impl Window {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.inflight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inflight.is_empty()
    }

    /// The newest seq published, if any is in flight.
    pub fn last_published(&self) -> Option<u64> {
        self.inflight.back().map(|(s, _)| *s)
    }

    pub fn published(&mut self, seq: u64) {
        debug_assert!(self.last_published().is_none_or(|l| seq > l));
        self.inflight.push_back((seq, false));
    }

    /// Marks `seq` acknowledged; returns the new contiguous position when it moved.
    pub fn acked(&mut self, seq: u64) -> Option<u64> {
        if let Some(e) = self.inflight.iter_mut().find(|(s, _)| *s == seq) {
            e.1 = true;
        }
        let mut moved = None;
        while let Some(&(s, true)) = self.inflight.front() {
            self.inflight.pop_front();
            self.acked_upto = s;
            moved = Some(s);
        }
        moved
    }

    pub fn acked_upto(&self) -> u64 {
        self.acked_upto
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_advance_only_over_a_contiguous_prefix() {
        let mut w = Window::new();
        for s in [3, 4, 7, 9] {
            w.published(s);
        }
        assert_eq!(w.acked(4), None, "3 is still in flight");
        assert_eq!(w.acked(9), None);
        assert_eq!(w.acked_upto(), 0);
        assert_eq!(w.acked(3), Some(4), "3 and 4 done; 7 is not");
        assert_eq!(w.len(), 2);
        assert_eq!(w.acked(7), Some(9), "7 completes the prefix up to 9");
        assert!(w.is_empty());
        assert_eq!(w.acked(42), None, "an unknown ack moves nothing");
        assert_eq!(w.acked_upto(), 9);
        w.published(10);
        assert_eq!(w.last_published(), Some(10));
        assert_eq!(w.acked(10), Some(10));
    }
}
