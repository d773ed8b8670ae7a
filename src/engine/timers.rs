//! The matcher's timer queue: each key's next deadline, earliest first,
//! the key named by its slot in the matcher's map (see
//! [`super::key_map`]; the matcher puts the keys due at one deadline in
//! key order).
//!
//! Deadlines mostly arrive in order: events come in event-time order and a
//! pattern's window is the same for every run, so a run started later ends
//! later. A deadline later than every one queued so far goes to the back of
//! a queue in constant time. One that overtakes it goes to a radix heap
//! ([`Overtaking`]): mostly a key whose deadline moved later, queued when
//! its earlier one fires. The earliest of the fronts, by (deadline, slot),
//! leaves first, which is the order a heap alone gives, so a restored
//! matcher (whose timers are rebuilt) fires in the same order as the saved
//! one. With a heap alone, a million open runs cost each new timer a climb
//! through twenty levels out of cache; with a binary heap for the
//! overtaking ones, taking one out cost the same climb down (a third of
//! firing at 10M keys; the key curve in BENCHMARKS.md).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use super::key_map::Slot;

#[derive(Clone, Debug, Default)]
pub struct Timers {
    /// Strictly increasing deadlines.
    in_order: VecDeque<(i64, Slot)>,
    overtaking: Overtaking,
}

impl Timers {
    pub fn push(&mut self, deadline: i64, slot: Slot) {
        match self.in_order.back() {
            Some((last, _)) if deadline <= *last => self.overtaking.push(deadline, slot),
            _ => self.in_order.push_back((deadline, slot)),
        }
    }

    /// The earliest deadline.
    #[inline]
    pub fn next_deadline(&self) -> Option<i64> {
        match (self.in_order.front(), self.overtaking.peek()) {
            (Some((q, _)), Some((h, _))) => Some((*q).min(h)),
            (Some((q, _)), None) => Some(*q),
            (None, Some((h, _))) => Some(h),
            (None, None) => None,
        }
    }

    /// The slot of the timer `n` places behind the front of the in-order
    /// queue (one that fires soon, unless others overtake it).
    #[inline]
    pub fn ahead(&self, n: usize) -> Option<Slot> {
        self.in_order.get(n).map(|&(_, s)| s)
    }

    /// Slots of timers that overtook the queue and leave soon, in two
    /// groups: the first leave before the second (see [`Overtaking`]).
    #[inline]
    pub fn overtaking_soon(&self) -> [impl Iterator<Item = Slot> + '_; 2] {
        self.overtaking
            .soon()
            .map(|ts| ts.iter().map(|&t| unpack(t).1))
    }

    /// Takes the earliest (deadline, slot).
    pub fn pop(&mut self) -> Option<(i64, Slot)> {
        let from_queue = match (self.in_order.front(), self.overtaking.peek()) {
            (Some(q), Some(h)) => *q <= h,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if from_queue {
            self.in_order.pop_front()
        } else {
            self.overtaking.pop()
        }
    }
}

/// The timers that overtook the in-order queue's back, earliest first.
///
/// A radix heap: it takes only timers not earlier than the last it gave
/// out (`last`), which the overtaking ones nearly all are (a deadline
/// re-queued when an earlier one fires lies ahead of it). Bucket `b > 0`
/// holds those whose highest bit differing from `last` is bit `b - 1`;
/// bucket 0 those equal to it. Taking one from bucket 0 is constant time;
/// when it empties, the lowest non-empty bucket is spread into lower ones
/// around its least timer, each timer moving a few times in its life,
/// through vectors read and written in order (where a binary heap's climb
/// down misses the cache at each of its lower levels). The rare timer
/// earlier than `last` (a deadline equal to one just fired, for a lower
/// slot) waits in a binary heap beside it.
#[derive(Clone, Debug, Default)]
struct Overtaking {
    /// The last timer taken out, or the least one held: none in `buckets`
    /// is below it, and bucket 0 is not empty while any bucket is not.
    last: u128,
    buckets: Vec<Vec<u128>>,
    /// Bit `b` set when bucket `b` is not empty.
    held: u128,
    early: BinaryHeap<Reverse<u128>>,
}

/// Bits of a packed timer: deadline (64) and slot (32).
const BUCKETS: usize = 97;

impl Overtaking {
    fn push(&mut self, deadline: i64, slot: Slot) {
        let t = pack(deadline, slot);
        if self.buckets.is_empty() {
            self.buckets = vec![Vec::new(); BUCKETS];
        }
        if self.buckets[0].is_empty() {
            // Nothing held: the new timer is the least.
            self.last = t;
        }
        if t < self.last {
            self.early.push(Reverse(t));
        } else {
            self.hold(t);
        }
    }

    #[inline]
    fn hold(&mut self, t: u128) {
        let b = bucket(self.last, t);
        self.buckets[b].push(t);
        self.held |= 1 << b;
    }

    /// Slots of timers that leave soon after the least (the two lowest
    /// non-empty buckets but 0, a few of each): all of the first leave
    /// before any of the second.
    fn soon(&self) -> [&[u128]; 2] {
        const FEW: usize = 4;
        let rest = self.held & !1;
        let first = rest.trailing_zeros() as usize;
        let second = (rest & rest.wrapping_sub(1)).trailing_zeros() as usize;
        [first, second].map(|b| match self.buckets.get(b) {
            Some(timers) => &timers[..timers.len().min(FEW)],
            None => &[],
        })
    }

    #[inline]
    fn peek(&self) -> Option<(i64, Slot)> {
        let radix = self.buckets.first().and_then(|b| b.last().copied());
        let early = self.early.peek().map(|Reverse(t)| *t);
        match (radix, early) {
            (Some(r), Some(e)) => Some(unpack(r.min(e))),
            (r, e) => r.or(e).map(unpack),
        }
    }

    fn pop(&mut self) -> Option<(i64, Slot)> {
        let radix = self.buckets.first().and_then(|b| b.last().copied());
        match (radix, self.early.peek()) {
            (Some(r), Some(Reverse(e))) if *e < r => self.early.pop().map(|Reverse(t)| unpack(t)),
            (Some(r), _) => {
                self.buckets[0].pop();
                if self.buckets[0].is_empty() {
                    self.held &= !1;
                    self.refill();
                }
                Some(unpack(r))
            }
            (None, _) => self.early.pop().map(|Reverse(t)| unpack(t)),
        }
    }

    /// Bucket 0 is empty: spreads the lowest non-empty bucket around its
    /// least timer, which becomes `last` (and lands in bucket 0).
    fn refill(&mut self) {
        if self.held == 0 {
            return;
        }
        let b = self.held.trailing_zeros() as usize;
        let spread = std::mem::take(&mut self.buckets[b]);
        self.held &= !(1 << b);
        self.last = spread.iter().copied().min().unwrap_or(self.last);
        for &t in &spread {
            self.hold(t);
        }
        // Keep the emptied bucket's room for its next turn.
        let mut room = spread;
        room.clear();
        if self.buckets[b].is_empty() {
            self.buckets[b] = room;
        }
    }
}

/// A timer as one number that orders as (deadline, slot) do.
fn pack(deadline: i64, slot: Slot) -> u128 {
    let d = (deadline as u64) ^ (1 << 63);
    (u128::from(d) << 32) | u128::from(slot)
}

fn unpack(t: u128) -> (i64, Slot) {
    (((t >> 32) as u64 ^ (1 << 63)) as i64, t as Slot)
}

/// Which bucket holds `t` given the last timer taken.
#[inline]
fn bucket(last: u128, t: u128) -> usize {
    (128 - (t ^ last).leading_zeros()) as usize
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

    /// Pushes and pops `ops` on timers and on a binary heap alone, and
    /// checks they give the same timers in the same order.
    fn same_as_a_heap(ops: &[(i64, Slot, bool)]) -> Result<(), TestCaseError> {
        let mut timers = Timers::default();
        let mut heap = BinaryHeap::new();
        for &(deadline, slot, pop) in ops {
            if pop {
                let d = heap.peek().map(|Reverse((d, _)): &Reverse<(i64, Slot)>| *d);
                prop_assert_eq!(timers.next_deadline(), d);
                prop_assert_eq!(timers.pop(), heap.pop().map(|Reverse(t)| t));
            } else {
                timers.push(deadline, slot);
                heap.push(Reverse((deadline, slot)));
            }
        }
        while let Some(Reverse(t)) = heap.pop() {
            prop_assert_eq!(timers.pop(), Some(t));
        }
        prop_assert_eq!(timers.pop(), None);
        Ok(())
    }

    fn deadline() -> impl Strategy<Value = i64> {
        prop_oneof![8 => -3i64..20, 1 => Just(i64::MAX), 1 => Just(i64::MIN + 1), 1 => any::<i64>()]
    }

    proptest! {
        /// Whatever the order of pushes and pops, timers leave as a heap
        /// alone would let them: by deadline, then slot.
        #[test]
        fn leave_in_heap_order(ops in prop::collection::vec((deadline(), 0u32..4, any::<bool>()), 0..60)) {
            same_as_a_heap(&ops)?;
        }

        /// As the matcher uses them: events in time order queue deadlines
        /// a window on, and a deadline that fires re-queues its key a
        /// little later (these overtake the queue's back), many at once.
        #[test]
        fn re_queued_deadlines_leave_in_heap_order(
            steps in prop::collection::vec((0i64..50, 0i64..1_000, 0u32..64, 0u8..4), 0..400)
        ) {
            let mut now = 0i64;
            let mut ops = Vec::new();
            for (gap, later, slot, what) in steps {
                now += gap;
                match what {
                    0 => ops.push((now + 1_000, slot, false)),
                    1 => ops.push((now + later, slot, false)),
                    _ => ops.push((0, 0, true)),
                }
            }
            same_as_a_heap(&ops)?;
        }
    }

    proptest! {
        /// The timers `soon` names leave in its two groups' order, before
        /// those of every higher bucket.
        #[test]
        fn soon_names_the_next_to_leave(
            pushes in prop::collection::vec((0i64..5_000, 0u32..8), 1..200),
            pops in 0usize..50,
        ) {
            let mut o = Overtaking::default();
            for (d, s) in pushes {
                o.push(d, s);
            }
            for _ in 0..pops {
                o.pop();
            }
            let [first, second] = o.soon();
            let (first, second) = (first.to_vec(), second.to_vec());
            let b2 = second.first().map(|&t| bucket(o.last, t));
            for &x in &first {
                prop_assert!(second.iter().all(|&y| x < y));
            }
            let higher = o.buckets.iter().enumerate().filter(|(b, _)| Some(*b) > b2 && b2.is_some());
            for (_, timers) in higher {
                prop_assert!(timers.iter().all(|&z| second.iter().all(|&y| y < z)));
            }
            let mut left = Vec::new();
            while let Some((d, s)) = o.pop() {
                left.push(pack(d, s));
            }
            prop_assert!(first.iter().chain(&second).all(|t| left.contains(t)));
        }
    }

    #[test]
    fn packed_timers_order_as_pairs() {
        let pairs = [
            (i64::MIN + 1, 0),
            (-1, 7),
            (0, 0),
            (0, 1),
            (1, 0),
            (i64::MAX, u32::MAX),
        ];
        for w in pairs.windows(2) {
            assert!(pack(w[0].0, w[0].1) < pack(w[1].0, w[1].1));
        }
        for (d, s) in pairs {
            assert_eq!(unpack(pack(d, s)), (d, s));
        }
    }
}
