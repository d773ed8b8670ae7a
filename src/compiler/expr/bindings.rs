//! A run's bound events as a persistent list.
//!
//! A run that takes an event becomes a new run with one more binding, and
//! with `skip none` or `any` contiguity the old run lives on beside it. With
//! a vector, each step copied every earlier binding, so a loop over n events
//! cost n²/2 copies (and n²/2 reference-count increments): the per-event
//! cost of a greedy `big{1,}` grew with the burst. Here a step adds one link
//! pointing at the run's earlier bindings, which the runs branching off one
//! another share: constant cost per step whatever the run's length.
//!
//! Conditions read the newest bindings first (`a.amount` is the last event
//! bound to `a`), which is the list's natural order; alerts and aggregates,
//! which want the oldest first, collect the list once.
//!
//! The first binding is held in the list itself, not in a link: most runs
//! wait on one bound event (`a then b`), and a link of its own cost each of
//! them a 64-byte allocation and free, and each event that meets the run a
//! cache miss on a 4 KiB page (the key curve in BENCHMARKS.md). Runs that
//! branch copy the first binding instead of sharing it, which costs no
//! allocation either (a bound event's fields are behind a shared pointer).

use triomphe::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Binding, BoundEvent};

/// The events a run has bound, newest first, sharing older links.
#[derive(Clone, Debug)]
pub struct Bindings {
    /// The first binding, or [`UNBOUND`] for none. Not an `Option`: that
    /// would take 8 bytes more (a binding has no spare value for `None`),
    /// which is what keeps a waiting key's entry in two cache lines (see
    /// [`crate::engine`]'s runs).
    first: Binding,
    /// The bindings after the first, newest first.
    newest: Option<Arc<Link>>,
}

#[derive(Debug)]
struct Link {
    binding: Binding,
    older: Option<Arc<Link>>,
}

/// The first binding of a list that has none: a position no event takes
/// (a key's events are counted from 0 in a `u64`).
const UNBOUND: Binding = Binding {
    var: 0,
    pos: u64::MAX,
    event: BoundEvent::UNBOUND,
};

impl Default for Bindings {
    fn default() -> Bindings {
        Bindings::EMPTY
    }
}

impl Bindings {
    pub const EMPTY: Bindings = Bindings {
        first: UNBOUND,
        newest: None,
    };

    pub fn new() -> Bindings {
        Bindings::default()
    }

    pub fn is_empty(&self) -> bool {
        self.first.pos == UNBOUND.pos
    }

    /// The first binding (the run's start: its position and time).
    #[inline]
    pub fn first(&self) -> Option<&Binding> {
        (!self.is_empty()).then_some(&self.first)
    }

    /// These bindings and then `b`; `self` is unchanged (and shared).
    pub fn with(&self, b: Binding) -> Bindings {
        match self.is_empty() {
            true => Bindings {
                first: b,
                newest: None,
            },
            false => Bindings {
                first: self.first.clone(),
                newest: Some(Arc::new(Link {
                    binding: b,
                    older: self.newest.clone(),
                })),
            },
        }
    }

    /// Where the newest link lives (its address and size in bytes), for
    /// a caller that fetches it into the cache before the run is read;
    /// none while the run holds one binding (it is inline).
    pub fn newest_link(&self) -> Option<(usize, usize)> {
        self.newest.as_ref().map(|l| {
            // The count sits before the link in the same allocation.
            (l.heap_ptr() as usize, std::mem::size_of::<Link>() + 8)
        })
    }

    /// Newest first.
    pub fn newest_first(&self) -> NewestFirst<'_> {
        NewestFirst {
            next: self.newest.as_deref(),
            first: self.first(),
        }
    }

    /// The last binding.
    pub fn last(&self) -> Option<&Binding> {
        match &self.newest {
            Some(l) => Some(&l.binding),
            None => self.first(),
        }
    }

    /// Oldest first, collected (for alerts and order-sensitive aggregates).
    pub fn oldest_first(&self) -> Vec<&Binding> {
        let mut all: Vec<&Binding> = self.newest_first().collect();
        all.reverse();
        all
    }

    /// Builds the list from bindings oldest first.
    pub fn from_oldest_first(bindings: impl IntoIterator<Item = Binding>) -> Bindings {
        bindings
            .into_iter()
            .fold(Bindings::new(), |list, b| list.with(b))
    }
}

/// Iterator over a run's bindings, newest first.
pub struct NewestFirst<'a> {
    next: Option<&'a Link>,
    first: Option<&'a Binding>,
}

impl<'a> Iterator for NewestFirst<'a> {
    type Item = &'a Binding;

    #[inline]
    fn next(&mut self) -> Option<&'a Binding> {
        match self.next {
            Some(link) => {
                self.next = link.older.as_deref();
                Some(&link.binding)
            }
            None => self.first.take(),
        }
    }
}

impl Drop for Bindings {
    /// Unlinks iteratively: the default recursive drop of a long chain
    /// would overflow the stack (a run can bind tens of thousands).
    fn drop(&mut self) {
        let mut next = self.newest.take();
        while let Some(link) = next {
            next = match Arc::try_unwrap(link) {
                Ok(mut owned) => owned.older.take(),
                Err(_) => None, // still shared: the other owner drops the rest
            };
        }
    }
}

impl PartialEq for Bindings {
    fn eq(&self, other: &Bindings) -> bool {
        self.newest_first().eq(other.newest_first())
    }
}

/// Saved as the sequence of bindings, oldest first (the format of the
/// vector it replaced, so checkpoints read either way).
impl Serialize for Bindings {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.oldest_first())
    }
}

impl<'de> Deserialize<'de> for Bindings {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bindings, D::Error> {
        Ok(Bindings::from_oldest_first(Vec::<Binding>::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compiler::BoundEvent;
    use crate::event::Slots;

    fn binding(var: u16, pos: u64) -> Binding {
        Binding {
            var,
            pos,
            event: BoundEvent::new(pos as i64, pos, Slots::from_fn(0, |_| unreachable!()), None),
        }
    }

    #[test]
    fn a_link_is_56_bytes() {
        // With glibc's 8-byte header, a 64-byte allocation per binding
        // after the first (BENCHMARKS.md, "Memory per key").
        assert_eq!(
            std::mem::size_of::<Link>() + std::mem::size_of::<usize>(),
            56
        );
    }

    #[test]
    fn the_first_binding_is_held_in_48_bytes() {
        // A binding (40) and the link pointer: no `Option` around the
        // first (see the field's comment).
        assert_eq!(std::mem::size_of::<Bindings>(), 48);
    }

    #[test]
    fn the_first_binding_needs_no_link() {
        let one = Bindings::new().with(binding(0, 1));
        assert_eq!(one.newest_link(), None, "held inline, nothing allocated");
        assert_eq!(one.last().map(|b| b.pos), Some(1));
        assert!(!one.is_empty() && Bindings::new().is_empty());
        let two = one.with(binding(1, 2));
        assert!(two.newest_link().is_some());
        let newest: Vec<u64> = two.newest_first().map(|b| b.pos).collect();
        assert_eq!(newest, [2, 1]);
        assert_eq!(one.oldest_first().len(), 1, "unchanged by the branch");
    }

    #[test]
    fn branches_share_their_common_past() {
        let base = Bindings::new().with(binding(0, 1)).with(binding(1, 2));
        let left = base.with(binding(1, 3));
        let right = base.with(binding(2, 4));
        let pos = |b: &Bindings| b.oldest_first().iter().map(|b| b.pos).collect::<Vec<_>>();
        assert_eq!(pos(&base), [1, 2]);
        assert_eq!(pos(&left), [1, 2, 3]);
        assert_eq!(pos(&right), [1, 2, 4]);
        assert_eq!(left.last().map(|b| b.pos), Some(3));
        let newest: Vec<u64> = right.newest_first().map(|b| b.pos).collect();
        assert_eq!(newest, [4, 2, 1]);
        drop(base);
        assert_eq!(
            pos(&left),
            [1, 2, 3],
            "dropping one owner keeps the shared links"
        );
    }

    #[test]
    fn a_long_chain_drops_without_recursion() {
        let mut list = Bindings::new();
        for pos in 0..200_000 {
            list = list.with(binding(0, pos));
        }
        drop(list);
    }

    #[test]
    fn saved_oldest_first_like_a_vector() {
        let list = Bindings::from_oldest_first([binding(0, 1), binding(1, 2)]);
        let json = serde_json::to_string(&list).unwrap();
        let as_vec = serde_json::to_string(&vec![binding(0, 1), binding(1, 2)]).unwrap();
        assert_eq!(json, as_vec);
        let back: Bindings = serde_json::from_str(&json).unwrap();
        assert_eq!(back, list);
    }
}
