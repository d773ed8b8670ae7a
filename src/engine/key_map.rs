//! A matcher's keys: each key's entry in a dense slab, found through a
//! small index table.
//!
//! A hash map that holds its entries in its own table spreads them over a
//! power-of-two number of buckets, and after growing it is often half
//! empty: at a million waiting keys the map of 72-byte entries took 2²¹
//! buckets, about 153 bytes per key, and every bucket's page is touched.
//! Here the table holds only a 4-byte slot number per key (2²¹ buckets
//! are 10 MB at a million keys), and the entries live one after another
//! in a vector, so resident memory follows the number of keys (see
//! BENCHMARKS.md, "Memory per key").
//!
//! A key keeps its slot for as long as it is in the map; a removed key's
//! slot goes to a free list and is reused by the next new key. Stable
//! slots let the timer queue name a key by its slot (8 bytes with the
//! deadline's 8) instead of by a copy of the key (32): a timer whose
//! key has gone, or whose slot now holds another key, is recognised by
//! the entry's own deadline (see [`super::matcher`]).
//!
//! With millions of keys every lookup is a cache miss twice over (the
//! index, then the entry), so the map lets the engine fetch both ahead of
//! an event ([`KeyMap::prefetch_index`], then [`KeyMap::prefetch`]), and
//! keeps slab and index in 2 MiB pages where the system allows
//! ([`super::huge_pages`]): with 4 KiB pages each miss also missed the
//! address translation.
//!
//! Iteration goes in slot order, which depends on the order keys came and
//! went; nothing that must be reproducible depends on it (changes and
//! fired timers are put in key order where order matters).

use std::fmt;
use std::hash::Hasher;
use std::marker::PhantomData;

use allocator_api2::vec::Vec;
use hashbrown::HashTable;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::huge_pages::HugePages;
use crate::event::Key;

/// Where a key's entry lives: its index in the slab.
pub type Slot = u32;

pub struct KeyMap<V> {
    /// Slot numbers, hashed by their key.
    index: HashTable<Slot, HugePages>,
    /// Where the index keeps its control bytes, for
    /// [`KeyMap::prefetch_index`]; 0 while unknown. An address hint only:
    /// it is never read through, and a stale one (the table moved) costs
    /// useless fetches, nothing else.
    ctrl: usize,
    slab: Vec<Entry<V>, HugePages>,
    /// The first vacant slot, `NONE` when every slot is taken.
    free: Slot,
    len: usize,
}

#[derive(Clone)]
enum Entry<V> {
    Taken(Key, V),
    /// A removed key's slot, and the next vacant one.
    Vacant(Slot),
}

const NONE: Slot = Slot::MAX;

/// Entries from which [`KeyMap::prefetch`] fetches: about 1 MiB of them,
/// one core's L2 cache here.
const PREFETCH_FROM: usize = 10_000;

/// The table's hash of a key: its stored hash mixed once more, so that
/// both the bucket (low bits) and the table's tag (high bits) spread.
#[inline]
fn hash_of(key: &Key) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    h.write_u64(key.hash_value());
    h.finish()
}

impl<V> Default for KeyMap<V> {
    fn default() -> KeyMap<V> {
        KeyMap {
            index: HashTable::new_in(HugePages),
            ctrl: 0,
            slab: Vec::new_in(HugePages),
            free: NONE,
            len: 0,
        }
    }
}

impl<V> KeyMap<V> {
    pub fn len(&self) -> usize {
        self.len
    }

    /// The slot of `key`, if it is in the map.
    #[inline]
    pub fn slot_of(&self, key: &Key) -> Option<Slot> {
        let slab = &self.slab;
        self.index
            .find(hash_of(key), |&s| slab[s as usize].key() == Some(key))
            .copied()
    }

    pub fn get(&self, key: &Key) -> Option<&V> {
        let s = self.slot_of(key)?;
        self.at(s).map(|(_, v)| v)
    }

    /// Starts fetching the index bucket where a lookup of `key` begins,
    /// for an event that comes a little later than the one whose entry
    /// [`KeyMap::prefetch`] fetches: the two stages together take both
    /// misses of a lookup (the index's and the entry's) off the event's
    /// path. Without it, `prefetch` itself waits for the index.
    ///
    /// The address follows hashbrown's layout: a table of `n` buckets
    /// keeps `n` control bytes at `ctrl` and bucket `i`'s value at
    /// `ctrl - (i + 1) * size_of::<Slot>()`, and a lookup starts at bucket
    /// `hash & (n - 1)` (checked by the test `index_layout_is_known`).
    #[inline]
    pub fn prefetch_index(&self, key: &Key) {
        if !self.prefetching() || self.ctrl == 0 {
            return;
        }
        let at = hash_of(key) as usize & (self.index.num_buckets() - 1);
        let ctrl = self.ctrl as *const u8;
        // The control group a lookup reads (16 bytes from `at`, which can
        // cross into the next line), and the group before it (wrapping
        // around the table, as hashbrown's erase computes it), which a
        // removal reads to choose between an empty mark and a tombstone:
        // removing a key whose deadline fired waited on it (a third of
        // `remove_slot` at 10M keys; key curve 10M 215 -> 190 ns).
        prefetch(ctrl.wrapping_add(at));
        prefetch(ctrl.wrapping_add(at + 15));
        prefetch(ctrl.wrapping_add(at.wrapping_sub(16) & (self.index.num_buckets() - 1)));
        prefetch(ctrl.wrapping_sub((at + 1) * std::mem::size_of::<Slot>()));
    }

    /// Starts fetching the entry of `key` into the cache, for an event
    /// that comes a few events later (see [`super::PatternState`]'s
    /// release loop). The slot is the first whose tag matches, without
    /// comparing keys: comparing would read the very entry being fetched.
    /// A wrong guess (a tag shared by another key, one in 128) only costs
    /// a useless fetch.
    #[inline]
    pub fn prefetch(&self, key: &Key) {
        // A small map stays in cache by itself; the lookup would be waste.
        if !self.prefetching() {
            return;
        }
        if let Some(s) = self.guess_slot(key) {
            self.fetch(s);
        }
    }

    /// Whether the map is large enough for prefetching to pay.
    #[inline]
    pub fn prefetching(&self) -> bool {
        self.slab.len() >= PREFETCH_FROM
    }

    /// The first slot whose tag matches `key`'s: its slot, unless another
    /// key shares the tag (one in 128). For prefetching only.
    #[inline]
    pub fn guess_slot(&self, key: &Key) -> Option<Slot> {
        self.index.find(hash_of(key), |_| true).copied()
    }

    /// Starts fetching the entry in slot `s` (a timer's key, due soon).
    #[inline]
    pub fn prefetch_slot(&self, s: Slot) {
        if self.prefetching() {
            self.fetch(s);
        }
    }

    #[inline]
    fn fetch(&self, s: Slot) {
        if let Some(entry) = self.slab.get(s as usize) {
            // Entries of 128 bytes in a slab in 2 MiB pages are two whole
            // lines; others can straddle three.
            prefetch_span(
                entry as *const Entry<V> as usize,
                std::mem::size_of::<Entry<V>>(),
            );
        }
    }

    /// Bytes an entry takes in the slab.
    #[cfg(test)]
    pub(super) fn entry_size() -> usize {
        std::mem::size_of::<Entry<V>>()
    }

    /// The key and entry in slot `s`, if the slot is taken.
    #[inline]
    pub fn at(&self, s: Slot) -> Option<(&Key, &V)> {
        match self.slab.get(s as usize)? {
            Entry::Taken(k, v) => Some((k, v)),
            Entry::Vacant(_) => None,
        }
    }

    #[inline]
    pub fn at_mut(&mut self, s: Slot) -> Option<(&Key, &mut V)> {
        match self.slab.get_mut(s as usize)? {
            Entry::Taken(k, v) => Some((&*k, v)),
            Entry::Vacant(_) => None,
        }
    }

    /// The entry of `key` and its slot, made with `new` if missing (the
    /// key is copied only then).
    #[inline]
    pub fn get_or_insert_with(&mut self, key: &Key, new: impl FnOnce() -> V) -> (Slot, &mut V) {
        self.found_or_insert(self.slot_of(key), key, new)
    }

    /// As [`KeyMap::get_or_insert_with`], with the slot [`KeyMap::slot_of`]
    /// found for `key` already in hand (one lookup per event, not two).
    #[inline]
    pub fn found_or_insert(
        &mut self,
        found: Option<Slot>,
        key: &Key,
        new: impl FnOnce() -> V,
    ) -> (Slot, &mut V) {
        debug_assert_eq!(found, self.slot_of(key));
        let s = match found {
            Some(s) => s,
            None => self.insert_new(key.clone(), new()),
        };
        match &mut self.slab[s as usize] {
            Entry::Taken(_, v) => (s, v),
            Entry::Vacant(_) => unreachable!("a found slot is taken"),
        }
    }

    /// Puts `value` under `key`, replacing what was there.
    pub fn insert(&mut self, key: Key, value: V) {
        match self.slot_of(&key) {
            Some(s) => self.slab[s as usize] = Entry::Taken(key, value),
            None => {
                self.insert_new(key, value);
            }
        }
    }

    /// Inserts a key known to be missing.
    fn insert_new(&mut self, key: Key, value: V) -> Slot {
        let hash = hash_of(&key);
        let s = if self.free == NONE {
            let s = Slot::try_from(self.slab.len()).expect("fewer than 2³² keys");
            assert!(s != NONE, "fewer than 2³² - 1 keys");
            self.slab.push(Entry::Taken(key, value));
            s
        } else {
            let s = self.free;
            let Entry::Vacant(next) = self.slab[s as usize] else {
                unreachable!("the free list holds vacant slots")
            };
            self.free = next;
            self.slab[s as usize] = Entry::Taken(key, value);
            s
        };
        let slab = &self.slab;
        let placed = self
            .index
            .insert_unique(hash, s, |&t| slab[t as usize].key().map_or(0, hash_of));
        // The table may have grown and moved.
        self.ctrl = ctrl_of(placed.bucket_index(), placed.get());
        self.len += 1;
        s
    }

    pub fn remove(&mut self, key: &Key) -> Option<V> {
        let s = self.slot_of(key)?;
        self.remove_slot(s)
    }

    /// Empties slot `s`, returning its entry.
    pub fn remove_slot(&mut self, s: Slot) -> Option<V> {
        let key = self.slab.get(s as usize)?.key()?;
        let hash = hash_of(key);
        if let Ok(found) = self.index.find_entry(hash, |&t| t == s) {
            found.remove();
        }
        let old = std::mem::replace(&mut self.slab[s as usize], Entry::Vacant(self.free));
        self.free = s;
        self.len -= 1;
        match old {
            Entry::Taken(_, v) => Some(v),
            Entry::Vacant(_) => None,
        }
    }

    /// Keeps the entries for which `keep` says yes.
    pub fn retain(&mut self, mut keep: impl FnMut(&Key, &mut V) -> bool) {
        for s in 0..self.slab.len() {
            let gone = match &mut self.slab[s] {
                Entry::Taken(k, v) => !keep(k, v),
                Entry::Vacant(_) => false,
            };
            if gone {
                self.remove_slot(s as Slot);
            }
        }
    }

    /// Every key with its slot and entry, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (Slot, &Key, &V)> {
        self.slab.iter().enumerate().filter_map(|(s, e)| match e {
            Entry::Taken(k, v) => Some((s as Slot, k, v)),
            Entry::Vacant(_) => None,
        })
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, _, v)| v)
    }

    /// The entries, taken out of the map.
    pub fn into_entries(self) -> impl Iterator<Item = (Key, V)> {
        self.slab.into_iter().filter_map(|e| match e {
            Entry::Taken(k, v) => Some((k, v)),
            Entry::Vacant(_) => None,
        })
    }
}

/// The address of a table's control bytes, from one of its buckets (see
/// [`KeyMap::prefetch_index`]).
fn ctrl_of(bucket: usize, value: &Slot) -> usize {
    value as *const Slot as usize + (bucket + 1) * std::mem::size_of::<Slot>()
}

impl<V: Clone> Clone for KeyMap<V> {
    /// The copy's table lives elsewhere: its hint is found anew.
    fn clone(&self) -> KeyMap<V> {
        let index = self.index.clone();
        let ctrl = (0..index.num_buckets())
            .find_map(|b| Some(ctrl_of(b, index.get_bucket(b)?)))
            .unwrap_or(0);
        KeyMap {
            index,
            ctrl,
            slab: self.slab.clone(),
            free: self.free,
            len: self.len,
        }
    }
}

/// Asks the processor to bring the `size` bytes at `at` closer.
#[inline(always)]
pub(super) fn prefetch_span(at: usize, size: usize) {
    let at = at as *const u8;
    prefetch(at);
    if size > 64 {
        if size > 128 {
            prefetch(at.wrapping_add(size / 2));
        }
        prefetch(at.wrapping_add(size - 1));
    }
}

/// Asks the processor to bring the cache line holding `at` closer.
#[inline(always)]
fn prefetch(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it reads nothing the program sees and
    // never faults, whatever the address (here always inside the slab).
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(at as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

impl<V> Entry<V> {
    #[inline]
    fn key(&self) -> Option<&Key> {
        match self {
            Entry::Taken(k, _) => Some(k),
            Entry::Vacant(_) => None,
        }
    }
}

impl<V> FromIterator<(Key, V)> for KeyMap<V> {
    fn from_iter<I: IntoIterator<Item = (Key, V)>>(iter: I) -> KeyMap<V> {
        let mut map = KeyMap::default();
        for (k, v) in iter {
            map.insert(k, v);
        }
        map
    }
}

impl<V: fmt::Debug> fmt::Debug for KeyMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(_, k, v)| (k, v)))
            .finish()
    }
}

/// Saved as a map from key to entry, as the hash map before it was.
impl<V: Serialize> Serialize for KeyMap<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter().map(|(_, k, v)| (k, v)))
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for KeyMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<KeyMap<V>, D::Error> {
        struct Entries<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Entries<V> {
            type Value = KeyMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map from key to runs")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<KeyMap<V>, A::Error> {
                let mut map = KeyMap::default();
                while let Some((k, v)) = m.next_entry::<Key, V>()? {
                    map.insert(k, v);
                }
                Ok(map)
            }
        }
        d.deserialize_map(Entries(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    proptest! {
        /// Whatever the inserts and removes, the map holds what a
        /// `BTreeMap` holds, every key keeps its slot while present, and
        /// slots are reused rather than the slab growing past the most
        /// keys ever held at once.
        #[test]
        fn behaves_as_a_map(ops in prop::collection::vec((0u8..24, 0u8..3, any::<u16>()), 0..200)) {
            let mut map: KeyMap<u16> = KeyMap::default();
            let mut model: BTreeMap<Key, u16> = BTreeMap::new();
            let mut slots: BTreeMap<Key, Slot> = BTreeMap::new();
            let mut most = 0;
            for (k, op, v) in ops {
                let key = Key::new(&format!("key-{k}"));
                match op {
                    0 => {
                        let (s, e) = map.get_or_insert_with(&key, || v);
                        let e = *e;
                        let want = *model.entry(key.clone()).or_insert(v);
                        prop_assert_eq!(e, want);
                        prop_assert_eq!(*slots.entry(key).or_insert(s), s);
                    }
                    1 => {
                        prop_assert_eq!(map.remove(&key), model.remove(&key));
                        slots.remove(&key);
                    }
                    _ => {
                        map.retain(|_, e| *e % 2 == 0);
                        model.retain(|_, e| *e % 2 == 0);
                        slots.retain(|k, _| model.contains_key(k));
                    }
                }
                most = most.max(model.len());
                prop_assert_eq!(map.len(), model.len());
                prop_assert!(map.slab.len() <= most);
                for (k, v) in &model {
                    prop_assert_eq!(map.get(k), Some(v));
                    prop_assert_eq!(map.slot_of(k), slots.get(k).copied());
                }
                let listed: BTreeMap<Key, u16> = map.iter().map(|(_, k, v)| (k.clone(), *v)).collect();
                prop_assert_eq!(&listed, &model);
            }
        }
    }

    #[test]
    fn prefetching_changes_nothing() {
        let keys: Vec<Key> = (0..PREFETCH_FROM * 2)
            .map(|n| Key::new(&format!("k{n}")))
            .collect();
        let mut map: KeyMap<usize> = keys.iter().cloned().zip(0..).collect();
        for k in keys.iter().step_by(3) {
            map.remove(k);
        }
        let before = format!("{map:?}");
        for k in keys.iter().chain([&Key::new("absent")]) {
            map.prefetch_index(k);
            map.prefetch(k);
        }
        assert_eq!(format!("{map:?}"), before);
    }

    /// The layout [`KeyMap::prefetch_index`] assumes holds for the
    /// hashbrown in use: every bucket sits where the hint says, and keys
    /// sit within a group (16 buckets) of where their lookup starts.
    #[test]
    fn index_layout_is_known() {
        let keys: Vec<Key> = (0..50_000).map(|n| Key::new(&format!("k{n}"))).collect();
        let map: KeyMap<usize> = keys.iter().cloned().zip(0..).collect();
        for m in [&map, &map.clone()] {
            let n = m.index.num_buckets();
            let full: Vec<usize> = (0..n)
                .filter(|&b| m.index.get_bucket(b).is_some())
                .collect();
            assert_eq!(full.len(), keys.len());
            for b in full {
                assert_eq!(ctrl_of(b, m.index.get_bucket(b).unwrap()), m.ctrl);
            }
            let near = keys
                .iter()
                .filter(|k| {
                    let start = hash_of(k) as usize & (n - 1);
                    let at = m.index.find_bucket_index(hash_of(k), |_| true).unwrap();
                    (at.wrapping_sub(start) & (n - 1)) < 16
                })
                .count();
            assert!(
                near * 10 >= keys.len() * 9,
                "{near} of {} near their start",
                keys.len()
            );
        }
    }

    #[test]
    fn saved_as_a_map() {
        let map: KeyMap<u32> = [(Key::new("a"), 1), (Key::new("b"), 2)]
            .into_iter()
            .collect();
        let json = serde_json::to_string(&map).unwrap();
        let back: KeyMap<u32> = serde_json::from_str(&json).unwrap();
        assert_eq!(back.get(&Key::new("b")), Some(&2));
        assert_eq!(back.len(), 2);
        let as_map: BTreeMap<String, u32> = serde_json::from_str(&json).unwrap();
        assert_eq!(as_map.len(), 2);
    }
}
