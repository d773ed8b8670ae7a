//! Watermarks of a stream read from several partitions.
//!
//! Each partition is in event-time order only roughly, and partitions move
//! at their own pace. A partition's watermark is the largest event time read
//! from it minus the allowed lateness; an event older than its own
//! partition's watermark is late. The stream's watermark is the minimum over
//! the partitions, so an event is released to the matcher only when no
//! partition can still deliver an earlier one — except that a partition
//! silent for longer than the idle timeout is left out of the minimum, so
//! one quiet partition cannot stall every alert (its next record is then
//! judged against the stream's watermark too). Silence is not idleness when
//! records are known to be waiting in the partition (the consumer reports a
//! backlog, [`PartitionClocks::set_backlog`]): a slow broker or a paused
//! fetch must not let the other partitions run ahead and turn in-order
//! events into late ones.
//!
//! The engine is driven one millisecond *behind* the minimum (see
//! [`PartitionClocks::engine_watermark`]): every event released is then
//! strictly older than any event still to come, so events of equal time
//! leave in their tie-break order however the partitions interleave. That
//! makes a re-read after a restart produce the same matches.
//!
//! Wall-clock time enters only through the `now` arguments (milliseconds of
//! any monotonic clock), which keeps this testable without sleeping.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A partition, named `topic/partition`.
pub type PartitionId = str;

/// A stream's watermark, as partitions report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watermark {
    /// No event older than this is still expected.
    EventTime(i64),
    /// Every partition is idle: nothing to say.
    Idle,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Clock {
    /// Largest event time read (`i64::MIN` before any).
    newest: i64,
    /// When the partition last delivered a record (or was assigned).
    #[serde(skip)]
    last_seen: u64,
    /// Records are known to be waiting in the partition: never idle.
    #[serde(skip)]
    backlog: bool,
}

/// The watermarks of one stream's partitions.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PartitionClocks {
    lateness: i64,
    idle_after: u64,
    clocks: BTreeMap<String, Clock>,
}

impl PartitionClocks {
    /// `lateness` and `idle_after` in milliseconds.
    pub fn new(lateness: i64, idle_after: u64) -> Self {
        PartitionClocks {
            lateness: lateness.max(0),
            idle_after,
            clocks: BTreeMap::new(),
        }
    }

    /// A partition joins: it holds the watermark back until it delivers a
    /// record or goes idle. A partition already known keeps its clock.
    pub fn assign(&mut self, id: &PartitionId, now: u64) {
        self.clocks
            .entry(id.to_string())
            .and_modify(|c| c.last_seen = now)
            .or_insert(Clock {
                newest: i64::MIN,
                last_seen: now,
                backlog: false,
            });
    }

    pub fn revoke(&mut self, id: &PartitionId) {
        self.clocks.remove(id);
    }

    pub fn is_empty(&self) -> bool {
        self.clocks.is_empty()
    }

    /// Events of partition `id` older than this are late.
    pub fn late_before(&self, id: &PartitionId) -> i64 {
        self.clocks
            .get(id)
            .map_or(i64::MIN, |c| c.newest.saturating_sub(self.lateness))
    }

    /// A record of `id` was read (`time`: its event time, if it had one).
    pub fn observe(&mut self, id: &PartitionId, time: Option<i64>, now: u64) {
        if !self.clocks.contains_key(id) {
            self.assign(id, now);
        }
        let c = self.clocks.get_mut(id).expect("just assigned");
        c.last_seen = now;
        if let Some(t) = time {
            c.newest = c.newest.max(t);
        }
    }

    /// Whether records are known to be waiting in partition `id` (the
    /// consumer's lag): a partition with a backlog is never idle.
    pub fn set_backlog(&mut self, id: &PartitionId, waiting: bool) {
        if let Some(c) = self.clocks.get_mut(id) {
            c.backlog = waiting;
        }
    }

    /// The minimum of the partitions' watermarks, idle partitions left out.
    pub fn watermark(&self, now: u64) -> Watermark {
        self.clocks
            .values()
            .filter(|c| c.backlog || now.saturating_sub(c.last_seen) < self.idle_after)
            .map(|c| c.newest.saturating_sub(self.lateness))
            .min()
            .map_or(Watermark::Idle, Watermark::EventTime)
    }

    /// What to drive the engine to: one millisecond behind
    /// [`PartitionClocks::watermark`] (see the module notes), or `None`
    /// while it says nothing.
    pub fn engine_watermark(&self, now: u64) -> Option<i64> {
        match self.watermark(now) {
            Watermark::EventTime(i64::MIN) | Watermark::Idle => None,
            Watermark::EventTime(t) => Some(t - 1),
        }
    }

    /// Each partition's watermark (`None` before its first event), for
    /// metrics.
    pub fn partition_watermarks(&self) -> impl Iterator<Item = (&str, Option<i64>)> {
        self.clocks.iter().map(|(n, c)| {
            let w = (c.newest != i64::MIN).then(|| c.newest.saturating_sub(self.lateness));
            (n.as_str(), w)
        })
    }

    /// After a restore: every known partition counts as just seen.
    pub fn touch_all(&mut self, now: u64) {
        for c in self.clocks.values_mut() {
            c.last_seen = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: i32) -> String {
        format!("t/{n}")
    }

    #[test]
    fn the_slowest_partition_holds_the_watermark() {
        let mut c = PartitionClocks::new(10, 1_000);
        c.assign(&p(0), 0);
        c.assign(&p(1), 0);
        c.observe(&p(0), Some(500), 1);
        assert_eq!(c.watermark(1), Watermark::EventTime(i64::MIN), "p1 unheard");
        assert_eq!(c.engine_watermark(1), None);
        c.observe(&p(1), Some(200), 2);
        assert_eq!(c.watermark(2), Watermark::EventTime(190));
        assert_eq!(c.engine_watermark(2), Some(189));
        assert_eq!(c.late_before(&p(0)), 490, "lateness is per partition");
        assert_eq!(c.late_before(&p(1)), 190);
    }

    #[test]
    fn an_idle_partition_is_left_out_until_it_speaks() {
        let mut c = PartitionClocks::new(0, 100);
        c.assign(&p(0), 0);
        c.assign(&p(1), 0);
        c.observe(&p(0), Some(1_000), 50);
        assert_eq!(c.watermark(99), Watermark::EventTime(i64::MIN));
        assert_eq!(c.watermark(120), Watermark::EventTime(1_000), "p1 idle");
        c.observe(&p(1), Some(400), 130);
        assert_eq!(c.watermark(130), Watermark::EventTime(400), "p1 back");
        assert_eq!(c.watermark(500), Watermark::Idle, "both idle");
    }

    #[test]
    fn a_silent_partition_with_waiting_records_is_not_idle() {
        let mut c = PartitionClocks::new(0, 100);
        c.observe(&p(0), Some(1_000), 0);
        c.observe(&p(1), Some(400), 0);
        // Partition 1 stalls (a slow broker) with records waiting.
        c.set_backlog(&p(1), true);
        assert_eq!(c.watermark(10_000), Watermark::EventTime(400));
        assert_eq!(c.late_before(&p(1)), 400, "its next records are not late");
        // Drained: silence is idleness again.
        c.set_backlog(&p(1), false);
        c.observe(&p(0), Some(2_000), 10_000);
        assert_eq!(c.watermark(10_050), Watermark::EventTime(2_000));
    }

    #[test]
    fn revoked_partitions_stop_counting() {
        let mut c = PartitionClocks::new(0, 100);
        c.observe(&p(0), Some(10), 0);
        c.observe(&p(1), Some(20), 0);
        c.revoke(&p(0));
        assert_eq!(c.watermark(1), Watermark::EventTime(20));
        assert_eq!(c.late_before(&p(0)), i64::MIN);
    }

    #[test]
    fn clocks_survive_serde_but_not_their_wall_times() {
        let mut c = PartitionClocks::new(5, 100);
        c.observe(&p(3), Some(77), 1_000_000);
        let mut back: PartitionClocks =
            serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        back.touch_all(7);
        assert_eq!(back.late_before(&p(3)), 72);
        assert_eq!(back.watermark(8), Watermark::EventTime(72));
    }
}
