//! The matcher's timer queue: each key's next deadline, earliest first,
//! the key named by its slot in the matcher's map (see
//! [`super::key_map`]; the matcher puts the keys due at one deadline in
//! key order).
//!
//! Deadlines mostly arrive in order: events come in event-time order and a
//! pattern's window is the same for every run, so a run started later ends
//! later. A deadline later than every one queued so far goes to the back of
//! a queue in constant time; only one that overtakes (an earlier or equal
//! deadline: a max gap, a shorter path) goes to a heap. The earlier of the
//! two fronts, by (deadline, slot), leaves first, which is the order a heap
//! alone gives, so a restored matcher (whose timers are rebuilt) fires in
//! the same order as the saved one. With a heap alone, a million open runs
//! cost each new timer a climb through twenty levels out of cache (see the
//! key curve in BENCHMARKS.md).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use super::key_map::Slot;

#[derive(Clone, Debug, Default)]
pub struct Timers {
    /// Strictly increasing deadlines.
    in_order: VecDeque<(i64, Slot)>,
    heap: BinaryHeap<Reverse<(i64, Slot)>>,
}

impl Timers {
    pub fn push(&mut self, deadline: i64, slot: Slot) {
        match self.in_order.back() {
            Some((last, _)) if deadline <= *last => self.heap.push(Reverse((deadline, slot))),
            _ => self.in_order.push_back((deadline, slot)),
        }
    }

    /// The earliest deadline.
    #[inline]
    pub fn next_deadline(&self) -> Option<i64> {
        match (self.in_order.front(), self.heap.peek()) {
            (Some((q, _)), Some(Reverse((h, _)))) => Some((*q).min(*h)),
            (Some((q, _)), None) => Some(*q),
            (None, Some(Reverse((h, _)))) => Some(*h),
            (None, None) => None,
        }
    }

    /// The slot of the timer `n` places behind the front of the in-order
    /// queue (one that fires soon, unless others overtake it).
    #[inline]
    pub fn ahead(&self, n: usize) -> Option<Slot> {
        self.in_order.get(n).map(|&(_, s)| s)
    }

    /// Takes the earliest (deadline, slot).
    pub fn pop(&mut self) -> Option<(i64, Slot)> {
        let from_queue = match (self.in_order.front(), self.heap.peek()) {
            (Some(q), Some(Reverse(h))) => q <= h,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if from_queue {
            self.in_order.pop_front()
        } else {
            self.heap.pop().map(|Reverse(t)| t)
        }
    }
}

impl FromIterator<(i64, Slot)> for Timers {
    /// Sorted first, so that all of them take the queue.
    fn from_iter<I: IntoIterator<Item = (i64, Slot)>>(iter: I) -> Timers {
        let mut all: Vec<(i64, Slot)> = iter.into_iter().collect();
        all.sort_unstable();
        let mut timers = Timers::default();
        for (d, k) in all {
            timers.push(d, k);
        }
        timers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the order of pushes and pops, timers leave as a heap
        /// alone would let them: by deadline, then slot.
        #[test]
        fn leave_in_heap_order(ops in prop::collection::vec((0i64..20, 0u8..4, any::<bool>()), 0..60)) {
            let mut timers = Timers::default();
            let mut heap = BinaryHeap::new();
            for (deadline, slot, pop) in ops {
                if pop {
                    prop_assert_eq!(timers.next_deadline(), heap.peek().map(|Reverse((d, _)): &Reverse<(i64, Slot)>| *d));
                    prop_assert_eq!(timers.pop(), heap.pop().map(|Reverse(t)| t));
                } else {
                    let slot = Slot::from(slot);
                    timers.push(deadline, slot);
                    heap.push(Reverse((deadline, slot)));
                }
            }
            while let Some(Reverse(t)) = heap.pop() {
                prop_assert_eq!(timers.pop(), Some(t));
            }
            prop_assert_eq!(timers.pop(), None);
        }
    }
}
