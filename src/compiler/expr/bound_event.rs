//! An event as a run keeps it once a variable has bound it.
//!
//! A waiting key's memory is mostly its run's bindings (see BENCHMARKS.md,
//! "Memory per key"), and most bound events are never read again but for
//! their time and hash (the alert id): `a then b` reads no field of `a`
//! once `a` is bound. So a bound event holds its time and hash inline and
//! its field values and document behind one pointer, and only when the
//! pattern reads the variable's fields ([`super::reads_bound_fields`]) or
//! alerts carry the matched events. A binding and its event then take 40
//! bytes: inline in the run's list for its first, else a 56-byte link (a
//! 64-byte allocation) instead of 120 (128).
//!
//! Not its key either (the run's key is the key). Saved as before: time,
//! slots, hash and document (the slots empty when not kept); checkpoints
//! written before carry the key too, which is ignored.

use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::event::{Event, Slots};
use crate::value::Value;

#[derive(Clone, Debug, PartialEq)]
pub struct BoundEvent {
    pub time: i64,
    pub hash: u64,
    /// Shared, not boxed: runs that branch copy their first binding
    /// (see [`super::Bindings`]), which then costs a count, not an
    /// allocation.
    kept: Option<triomphe::Arc<Kept>>,
}

/// What is kept of a bound event beyond its time and hash.
#[derive(Clone, Debug, PartialEq)]
struct Kept {
    slots: Slots,
    raw: Option<Arc<serde_json::Value>>,
}

const NO_SLOTS: &Slots = &Slots::Inline(0, [Value::Missing, Value::Missing]);

impl BoundEvent {
    /// No event (what an empty run's list of bindings holds in place of
    /// its first).
    pub(crate) const UNBOUND: BoundEvent = BoundEvent {
        time: 0,
        hash: 0,
        kept: None,
    };

    /// `ev` as a variable binds it; its field values kept when `read`.
    #[inline]
    pub fn of(ev: &Event, read: bool) -> BoundEvent {
        let kept = (read || ev.raw.is_some()).then(|| {
            triomphe::Arc::new(Kept {
                slots: if read {
                    ev.slots.clone()
                } else {
                    Slots::from_fn(0, |_| Value::Missing)
                },
                raw: ev.raw.clone(),
            })
        });
        BoundEvent {
            time: ev.time,
            hash: ev.hash,
            kept,
        }
    }

    /// The field values, in slot order; none when the pattern reads none.
    #[inline]
    pub fn slots(&self) -> &Slots {
        self.kept.as_ref().map_or(NO_SLOTS, |k| &k.slots)
    }

    /// The value in slot `s` (missing when not kept).
    #[inline]
    pub fn slot(&self, s: u32) -> &Value {
        const MISSING: Value = Value::Missing;
        self.slots().get(s as usize).unwrap_or(&MISSING)
    }

    /// The original document, when alerts carry matched events.
    pub fn raw(&self) -> Option<&serde_json::Value> {
        self.kept.as_ref()?.raw.as_deref()
    }

    /// A bound event as written out in full (tests, old checkpoints).
    pub fn new(
        time: i64,
        hash: u64,
        slots: Slots,
        raw: Option<Arc<serde_json::Value>>,
    ) -> BoundEvent {
        let kept =
            (!slots.is_empty() || raw.is_some()).then(|| triomphe::Arc::new(Kept { slots, raw }));
        BoundEvent { time, hash, kept }
    }
}

#[derive(Serialize)]
struct SavedRef<'a> {
    time: i64,
    slots: &'a Slots,
    hash: u64,
    raw: Option<&'a serde_json::Value>,
}

#[derive(Deserialize)]
struct Saved {
    time: i64,
    #[serde(default)]
    slots: Option<Slots>,
    hash: u64,
    #[serde(default)]
    raw: Option<Arc<serde_json::Value>>,
}

impl Serialize for BoundEvent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SavedRef {
            time: self.time,
            slots: self.slots(),
            hash: self.hash,
            raw: self.raw(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for BoundEvent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<BoundEvent, D::Error> {
        let saved = Saved::deserialize(d)?;
        let slots = saved
            .slots
            .unwrap_or_else(|| Slots::from_fn(0, |_| Value::Missing));
        Ok(BoundEvent::new(saved.time, saved.hash, slots, saved.raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Key;

    fn event(raw: bool) -> Event {
        Event {
            time: 7,
            key: Key::new("k"),
            slots: Slots::from_fn(2, |n| Value::Int(n as i64 + 1)),
            hash: 42,
            raw: raw.then(|| Arc::new(serde_json::json!({"amount": 1}))),
        }
    }

    #[test]
    fn keeps_fields_only_when_read() {
        let unread = BoundEvent::of(&event(false), false);
        assert_eq!(unread.slots(), NO_SLOTS);
        assert_eq!(unread.slot(1), &Value::Missing);
        assert!(unread.kept.is_none());
        let read = BoundEvent::of(&event(false), true);
        assert_eq!(read.slot(1), &Value::Int(2));
        let with_doc = BoundEvent::of(&event(true), false);
        assert_eq!(with_doc.raw(), Some(&serde_json::json!({"amount": 1})));
        assert_eq!((with_doc.time, with_doc.hash), (7, 42));
    }

    #[test]
    fn saved_in_the_format_of_before() {
        let b = BoundEvent::of(&event(true), true);
        let text = serde_json::to_string(&b).unwrap();
        assert_eq!(
            text,
            r#"{"time":7,"slots":[{"Int":1},{"Int":2}],"hash":42,"raw":{"amount":1}}"#
        );
        let back: BoundEvent = serde_json::from_str(&text).unwrap();
        assert_eq!(back, b);
        // Written before: the key too, which is ignored.
        let old: BoundEvent =
            serde_json::from_str(r#"{"time":7,"key":"k","slots":[],"hash":42,"raw":null}"#)
                .unwrap();
        assert_eq!(old, BoundEvent::of(&event(false), false));
    }

    #[test]
    fn a_binding_link_is_one_small_allocation() {
        // Time, hash and one pointer: with the variable and position, and
        // the list's link and count, 56 bytes (see the module doc).
        assert_eq!(std::mem::size_of::<BoundEvent>(), 24);
    }
}
