//! A run (a partial match), and how it is saved.
//!
//! A run's start, its position among the key's events and its time, is
//! its first binding's: a run is kept only once it has bound an event, so
//! the start is not stored twice. With the first binding inline (see
//! [`Bindings`]) a run is 72 bytes and a waiting key's entry 128: two cache
//! lines, where 152 bytes spanned three or four, each a miss at 10M keys
//! (the key curve in BENCHMARKS.md). Saved as before, start included, so
//! checkpoints read either way.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::compiler::{Binding, Bindings, NodeId};

#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    pub(super) node: NodeId,
    pub(super) alive: u64,
    /// No event has been offered since the run arrived at `node`.
    pub(super) fresh: bool,
    pub(super) last_time: i64,
    /// Never empty (see the module doc).
    pub(super) bindings: Bindings,
}

impl Run {
    /// Position of the run's first event among its key's events.
    #[inline]
    pub(super) fn start_pos(&self) -> u64 {
        self.first().pos
    }

    /// Event time of the run's first event.
    #[inline]
    pub(super) fn start_time(&self) -> i64 {
        self.first().event.time
    }

    #[inline]
    fn first(&self) -> &Binding {
        // A run with no binding is never kept (a seed that binds nothing
        // is dropped, and one read back is refused).
        self.bindings
            .first()
            .expect("a kept run has bound an event")
    }
}

#[derive(Serialize)]
struct SavedRef<'a> {
    node: NodeId,
    alive: u64,
    fresh: bool,
    start_pos: u64,
    start_time: i64,
    last_time: i64,
    bindings: &'a Bindings,
}

#[derive(Deserialize)]
struct Saved {
    node: NodeId,
    alive: u64,
    fresh: bool,
    last_time: i64,
    bindings: Bindings,
}

impl Serialize for Run {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SavedRef {
            node: self.node,
            alive: self.alive,
            fresh: self.fresh,
            start_pos: self.start_pos(),
            start_time: self.start_time(),
            last_time: self.last_time,
            bindings: &self.bindings,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Run {
    /// The saved start is its first binding's, and so not read.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Run, D::Error> {
        let saved = Saved::deserialize(d)?;
        if saved.bindings.is_empty() {
            return Err(serde::de::Error::custom("a run without bound events"));
        }
        Ok(Run {
            node: saved.node,
            alive: saved.alive,
            fresh: saved.fresh,
            last_time: saved.last_time,
            bindings: saved.bindings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compiler::BoundEvent;
    use crate::event::Slots;

    fn run() -> Run {
        let bound = |var, pos: u64, time| Binding {
            var,
            pos,
            event: BoundEvent::new(time, pos * 10, Slots::from_fn(0, |_| unreachable!()), None),
        };
        Run {
            node: 2,
            alive: 1,
            fresh: false,
            last_time: 9_000,
            bindings: Bindings::from_oldest_first([bound(0, 4, 1_000), bound(1, 7, 9_000)]),
        }
    }

    #[test]
    fn saved_with_its_start_as_before() {
        let r = run();
        assert_eq!((r.start_pos(), r.start_time()), (4, 1_000));
        let text = serde_json::to_string(&r).unwrap();
        let head = r#"{"node":2,"alive":1,"fresh":false,"start_pos":4,"start_time":1000,"last_time":9000,"bindings":[{"var":0,"pos":4,"#;
        assert!(text.starts_with(head), "{text}");
        let back: Run = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn a_saved_run_without_bound_events_is_refused() {
        let text = r#"{"node":2,"alive":1,"fresh":false,"start_pos":4,"start_time":1000,"last_time":9000,"bindings":[]}"#;
        let err = serde_json::from_str::<Run>(text).unwrap_err();
        assert!(err.to_string().contains("without bound events"), "{err}");
    }
}
