//! `seen in`: the values of one (field, window) a key used, each with
//! its last sighting, capped at [`SEEN_CAP`] (see the module above).

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::SEEN_CAP;
use crate::event::stable_hash;
use crate::value::Value;

/// Values of one (field, window), each with its last sighting: (hash of
/// the value, time), sorted by hash.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct SeenValues {
    /// The first inline: most keys use one value (a card's home country).
    last_seen: SmallVec<[(u64, i64); 1]>,
}

impl SeenValues {
    /// Notes `v` at `time`; returns 1 when a value had to be forgotten.
    pub(super) fn record(&mut self, time: i64, window: i64, v: &Value) -> u64 {
        let Some(id) = identity(v) else { return 0 };
        let at = match self.last_seen.binary_search_by_key(&id, |e| e.0) {
            Ok(i) => {
                self.last_seen[i].1 = time;
                return 0;
            }
            Err(i) => i,
        };
        if self.last_seen.len() < SEEN_CAP {
            self.last_seen.reserve_exact(1);
            self.last_seen.insert(at, (id, time));
            return 0;
        }
        let cutoff = time.saturating_sub(window);
        self.last_seen.retain(|e| e.1 >= cutoff);
        let mut evicted = 0;
        if self.last_seen.len() >= SEEN_CAP {
            // The least recently seen goes (ties: the smaller hash).
            let oldest = (0..self.last_seen.len())
                .min_by_key(|&i| (self.last_seen[i].1, self.last_seen[i].0))
                .expect("a full set");
            self.last_seen.remove(oldest);
            evicted = 1;
        }
        let at = self
            .last_seen
            .binary_search_by_key(&id, |e| e.0)
            .unwrap_or_else(|i| i);
        self.last_seen.insert(at, (id, time));
        evicted
    }

    /// Whether `v` was seen at or after `at - window`; `None` for a
    /// missing or null value.
    pub(super) fn seen(&self, at: i64, window: i64, v: &Value) -> Option<bool> {
        let id = identity(v)?;
        let cutoff = at.saturating_sub(window);
        Some(
            self.last_seen
                .binary_search_by_key(&id, |e| e.0)
                .is_ok_and(|i| self.last_seen[i].1 >= cutoff),
        )
    }
}

/// A value as `seen in` tells values apart: a stable 64-bit hash of its
/// type and text. Equal values (`1` and `1.0`) hash alike; values of
/// different types never compare equal. Stable across releases: the
/// hashes live in checkpoints.
fn identity(v: &Value) -> Option<u64> {
    const STR: u64 = 1;
    const NUM: u64 = 2;
    const BOOL: u64 = 3;
    Some(match v {
        Value::Missing | Value::Null => return None,
        Value::Str(s) => stable_hash(s.as_bytes(), STR),
        Value::Bool(b) => stable_hash(&[*b as u8], BOOL),
        Value::Int(i) => stable_hash(&i.to_le_bytes(), NUM),
        Value::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
            stable_hash(&(*f as i64).to_le_bytes(), NUM)
        }
        Value::Float(f) => stable_hash(&f.to_bits().to_le_bytes(), NUM + 1),
    })
}
