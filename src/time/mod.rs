//! Event time: watermarks and the reorder buffer.
//!
//! Input may arrive out of order. Each pattern's events wait in a
//! [`ReorderBuffer`] until the watermark (the largest event time seen minus
//! the allowed lateness) passes them; they then leave in event-time order,
//! ties in arrival order. An event older than the watermark is late: the
//! buffer hands it back to the caller instead of dropping it, and the caller
//! counts it and routes it to the late-event output.
//!
//! Window expiry and absence are driven by the same watermark (see
//! [`crate::engine`]), never by the wall clock, so a replay of a day of data
//! behaves exactly like the live day did.

pub mod partitions;
pub mod rfc3339;

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

use serde::{Deserialize, Serialize};

/// A watermark value: no event older than this is still expected.
pub type Watermark = i64;

/// The watermark before any event: nothing is late yet.
pub const NO_WATERMARK: Watermark = i64::MIN;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Pending<T> {
    time: i64,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Pending<T> {
    fn eq(&self, o: &Self) -> bool {
        (self.time, self.seq) == (o.time, o.seq)
    }
}
impl<T> Eq for Pending<T> {}
impl<T> PartialOrd for Pending<T> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<T> Ord for Pending<T> {
    // Reversed: `BinaryHeap` is a max-heap and we want the earliest first.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.time, o.seq).cmp(&(self.time, self.seq))
    }
}

/// Where an arriving item goes; see [`ReorderBuffer::admit`].
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Older than the watermark: late.
    Late,
    /// Nothing earlier is pending and the watermark has passed it: use it now.
    Now,
    /// Must wait for the watermark: [`ReorderBuffer::insert`] it.
    Buffer,
}

/// Holds items until the watermark passes their time.
///
/// Most input is in order, or nearly: an item that sorts after every item
/// already in order goes to the back of a queue, in constant time; only an
/// item that overtakes one goes to the heap. The earliest of the two fronts
/// leaves first. (With a 5 s lateness and 1M events in order, the heap alone
/// was a tenth of `cep replay`'s time: every event sifted down ten levels.)
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReorderBuffer<T> {
    /// Items that arrived in order, in order.
    #[serde(default = "VecDeque::new")]
    in_order: VecDeque<Pending<T>>,
    /// Items that arrived before one they sort after.
    heap: BinaryHeap<Pending<T>>,
    seq: u64,
    max_seen: i64,
    lateness: i64,
    flushed: bool,
    /// Set when the caller owns the watermark (the service merges
    /// per-partition watermarks, see [`crate::time::partitions`]): the
    /// buffer then never derives one from the times it sees.
    #[serde(default)]
    external: Option<Watermark>,
}

impl<T> ReorderBuffer<T> {
    /// `lateness`: how far (ms) behind the largest time seen an event may
    /// arrive and still be placed in order.
    pub fn new(lateness: i64) -> Self {
        ReorderBuffer {
            in_order: VecDeque::new(),
            heap: BinaryHeap::new(),
            seq: 0,
            max_seen: i64::MIN,
            lateness: lateness.max(0),
            flushed: false,
            external: None,
        }
    }

    /// A buffer whose watermark only moves by [`ReorderBuffer::advance_to`].
    pub fn external() -> Self {
        ReorderBuffer {
            external: Some(NO_WATERMARK),
            ..ReorderBuffer::new(0)
        }
    }

    /// Raises an external watermark (it never goes back). No effect on a
    /// buffer that derives its own.
    pub fn advance_to(&mut self, watermark: Watermark) {
        if let Some(w) = &mut self.external {
            *w = (*w).max(watermark);
        }
    }

    pub fn watermark(&self) -> Watermark {
        if self.flushed {
            return i64::MAX;
        }
        if let Some(w) = self.external {
            return w;
        }
        if self.max_seen == i64::MIN {
            return NO_WATERMARK;
        }
        self.max_seen.saturating_sub(self.lateness)
    }

    /// The largest time seen (`i64::MIN` before any).
    pub fn newest(&self) -> i64 {
        self.max_seen
    }

    pub fn len(&self) -> usize {
        self.in_order.len() + self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.in_order.is_empty() && self.heap.is_empty()
    }

    /// Registers an item's time and says where the item goes. Deciding
    /// without taking the item keeps the in-order fast path free of moves.
    #[inline]
    pub fn admit(&mut self, time: i64) -> Admit {
        if time < self.watermark() {
            return Admit::Late;
        }
        self.max_seen = self.max_seen.max(time);
        if self.is_empty() && time <= self.watermark() {
            Admit::Now
        } else {
            Admit::Buffer
        }
    }

    /// Buffers an item that [`ReorderBuffer::admit`] said must wait.
    #[inline]
    pub fn insert(&mut self, time: i64, item: T) {
        let seq = self.seq;
        self.seq += 1;
        self.hold(Pending { time, seq, item });
    }

    /// Buffers an item with a caller-chosen tie-break among equal times (the
    /// service passes the record's position in its partition, so that ties
    /// leave in the same order however partitions interleave on re-reading).
    pub fn insert_ordered(&mut self, time: i64, order: u64, item: T) {
        self.hold(Pending {
            time,
            seq: order,
            item,
        });
    }

    #[inline]
    fn hold(&mut self, p: Pending<T>) {
        match self.in_order.back() {
            Some(last) if (p.time, p.seq) < (last.time, last.seq) => self.heap.push(p),
            _ => self.in_order.push_back(p),
        }
    }

    /// The item `n` places behind the front of the in-order queue (what
    /// leaves `n` items later, unless one overtakes it from the heap).
    #[inline]
    pub fn ahead(&self, n: usize) -> Option<&T> {
        self.in_order.get(n).map(|p| &p.item)
    }

    /// The earliest item the watermark has passed, if any.
    pub fn pop_ready(&mut self) -> Option<T> {
        let from_queue = match (self.in_order.front(), self.heap.peek()) {
            (Some(q), Some(h)) => (q.time, q.seq) <= (h.time, h.seq),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return None,
        };
        let watermark = self.watermark();
        if from_queue {
            (self.in_order.front()?.time <= watermark)
                .then(|| self.in_order.pop_front())
                .flatten()
                .map(|p| p.item)
        } else {
            (self.heap.peek()?.time <= watermark)
                .then(|| self.heap.pop())
                .flatten()
                .map(|p| p.item)
        }
    }

    /// End of input: the watermark jumps to the end of time.
    pub fn flush(&mut self) {
        self.flushed = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(b: &mut ReorderBuffer<&'static str>) -> Vec<&'static str> {
        std::iter::from_fn(|| b.pop_ready()).collect()
    }

    #[test]
    fn in_order_input_takes_the_fast_path() {
        let mut b: ReorderBuffer<()> = ReorderBuffer::new(0);
        assert_eq!(b.admit(10), Admit::Now);
        assert_eq!(b.admit(10), Admit::Now, "a tie is not late");
        assert_eq!(b.admit(9), Admit::Late);
        assert_eq!(b.watermark(), 10);
    }

    #[test]
    fn releases_in_time_order_ties_in_arrival_order() {
        let mut b = ReorderBuffer::new(5);
        for (t, name) in [(10, "a"), (8, "b"), (10, "c"), (7, "d")] {
            assert_eq!(b.admit(t), Admit::Buffer);
            b.insert(t, name);
        }
        assert_eq!(b.watermark(), 5);
        assert!(drain(&mut b).is_empty());
        assert_eq!(b.admit(14), Admit::Buffer);
        b.insert(14, "e");
        assert_eq!(drain(&mut b), ["d", "b"], "watermark 9 passes 7 and 8");
        assert_eq!(b.admit(3), Admit::Late);
        b.flush();
        assert_eq!(drain(&mut b), ["a", "c", "e"]);
    }

    #[test]
    fn items_in_order_and_overtaking_ones_leave_in_time_order() {
        let mut b = ReorderBuffer::new(100);
        let times = [5, 7, 6, 7, 9, 1, 12, 12, 8, 30, 29];
        for (n, t) in times.into_iter().enumerate() {
            assert_eq!(b.admit(t), Admit::Buffer);
            b.insert(t, n);
        }
        assert_eq!(b.len(), times.len());
        b.flush();
        let order: Vec<usize> = std::iter::from_fn(|| b.pop_ready()).collect();
        let mut want: Vec<usize> = (0..times.len()).collect();
        want.sort_by_key(|&n| (times[n], n));
        assert_eq!(order, want);
        assert!(b.is_empty());
    }

    #[test]
    fn an_external_watermark_moves_only_when_told() {
        let mut b = ReorderBuffer::external();
        assert_eq!(b.admit(100), Admit::Buffer, "no watermark yet");
        b.insert_ordered(100, 7, "late-tie");
        assert_eq!(b.admit(100), Admit::Buffer);
        b.insert_ordered(100, 3, "early-tie");
        assert_eq!(b.admit(500), Admit::Buffer, "times seen do not move it");
        b.insert_ordered(500, 1, "later");
        assert_eq!(b.watermark(), NO_WATERMARK);
        b.advance_to(100);
        b.advance_to(50);
        assert_eq!(b.watermark(), 100, "never goes back");
        assert_eq!(drain(&mut b), ["early-tie", "late-tie"], "ties by order");
        assert_eq!(b.admit(99), Admit::Late);
    }

    #[test]
    fn survives_a_serde_round_trip() {
        let mut b = ReorderBuffer::new(100);
        b.admit(50);
        b.insert(50, "x".to_string());
        let json = serde_json::to_string(&b).unwrap();
        let mut back: ReorderBuffer<String> = serde_json::from_str(&json).unwrap();
        assert_eq!(back.watermark(), b.watermark());
        back.flush();
        assert_eq!(back.pop_ready().as_deref(), Some("x"));
    }
}
