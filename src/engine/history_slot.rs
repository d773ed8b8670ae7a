//! Where a key's history lives in its map entry, if the pattern has one.
//!
//! A key's entry in the matcher's map is read for every event of the key,
//! and its size decides how many entries stay in cache and how much memory
//! a waiting key costs. A history (`avg(amount) over 30d`, `seen in`) lives
//! inline in the entry, which keeps history patterns fast (boxing it made
//! `engine/unusually_large` a third slower); a pattern without history has
//! no slot at all, so its entries are 72 bytes instead of 152 (see
//! BENCHMARKS.md, "Memory per key"). The matcher is generic over the slot.

use std::fmt::Debug;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::history::KeyHistory;

/// A key's history slot: a history, or nothing (patterns without one).
pub trait HistorySlot: Clone + Debug + Default + PartialEq {
    fn get(&self) -> Option<&KeyHistory>;
    fn get_mut(&mut self) -> Option<&mut KeyHistory>;
    /// Sets or clears the history. A slot that holds none ignores it (its
    /// pattern never asks).
    fn set(&mut self, h: Option<KeyHistory>);

    fn is_none(&self) -> bool {
        self.get().is_none()
    }

    fn from_option(h: Option<KeyHistory>) -> Self {
        let mut slot = Self::default();
        slot.set(h);
        slot
    }
}

impl HistorySlot for Option<KeyHistory> {
    #[inline]
    fn get(&self) -> Option<&KeyHistory> {
        self.as_ref()
    }
    #[inline]
    fn get_mut(&mut self) -> Option<&mut KeyHistory> {
        self.as_mut()
    }
    fn set(&mut self, h: Option<KeyHistory>) {
        *self = h;
    }
}

/// The slot of a pattern that keeps no history: no bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NoHistory;

impl HistorySlot for NoHistory {
    #[inline]
    fn get(&self) -> Option<&KeyHistory> {
        None
    }
    #[inline]
    fn get_mut(&mut self) -> Option<&mut KeyHistory> {
        None
    }
    fn set(&mut self, _: Option<KeyHistory>) {}
}

/// Never written (the field is skipped when empty).
impl Serialize for NoHistory {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_none()
    }
}

/// Whatever was saved is dropped: the pattern keeps no history.
impl<'de> Deserialize<'de> for NoHistory {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<NoHistory, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| NoHistory)
    }
}
