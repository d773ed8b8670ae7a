//! Events as the engine sees them: a key, an event time and decoded slots.
//!
//! Input arrives as JSON. Each compiled pattern knows which field paths its
//! conditions and outputs read (its [`FieldTable`]); decoding pulls exactly
//! those into a boxed slice of [`Value`]s once, so the matching loop never
//! touches JSON or hashes a field name. The original document is kept (behind
//! an `Arc`, shared by every run that binds the event) for alerts that carry
//! their matched events.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, NaiveDateTime};
use serde::{Deserialize, Serialize};

use crate::dsl::ast::TimeFormat;
use crate::extract::Field;
use crate::value::Value;

/// The partition key of an event, as text. A composite key joins its parts
/// with the unit separator (U+001F), which never appears in real keys.
///
/// Keys are hashed once, when the event is decoded, and short keys (most
/// real ones: card numbers, tail numbers) live inline: looking a key up in
/// the run table neither allocates nor rehashes the text.
#[derive(Clone)]
pub struct Key {
    hash: u64,
    text: KeyText,
}

#[derive(Clone)]
enum KeyText {
    Inline { len: u8, buf: [u8; INLINE_KEY] },
    Heap(Arc<str>),
}

const INLINE_KEY: usize = 22;

pub const KEY_SEPARATOR: char = '\u{1f}';

impl Key {
    pub fn new(s: &str) -> Key {
        let mut h = rustc_hash::FxHasher::default();
        h.write(s.as_bytes());
        let text = if s.len() <= INLINE_KEY {
            let mut buf = [0u8; INLINE_KEY];
            buf[..s.len()].copy_from_slice(s.as_bytes());
            KeyText::Inline {
                len: s.len() as u8,
                buf,
            }
        } else {
            KeyText::Heap(Arc::from(s))
        };
        Key {
            hash: h.finish(),
            text,
        }
    }

    /// The key's hash, computed once when it was made.
    #[inline]
    pub fn hash_value(&self) -> u64 {
        self.hash
    }

    fn as_bytes(&self) -> &[u8] {
        match &self.text {
            KeyText::Inline { len, buf } => &buf[..*len as usize],
            KeyText::Heap(s) => s.as_bytes(),
        }
    }

    pub fn as_str(&self) -> &str {
        match &self.text {
            // Only ever built from a whole `&str` that fits.
            KeyText::Inline { len, buf } => {
                std::str::from_utf8(&buf[..*len as usize]).unwrap_or("")
            }
            KeyText::Heap(s) => s,
        }
    }

    /// The key as it appears in an alert: a string, or an array of strings
    /// for a composite key.
    pub fn to_json(&self) -> serde_json::Value {
        let s = self.as_str();
        if s.contains(KEY_SEPARATOR) {
            serde_json::Value::Array(
                s.split(KEY_SEPARATOR)
                    .map(|p| serde_json::Value::String(p.to_string()))
                    .collect(),
            )
        } else {
            serde_json::Value::String(s.to_string())
        }
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.hash == other.hash && self.as_bytes() == other.as_bytes()
    }
}
impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Key {
    /// The texts' order: UTF-8 bytes sort as their characters do, and
    /// comparing bytes skips checking an inline key's text again (timers
    /// due together fire in key order: sorting the flight year's keys due
    /// at one hour checked each key's text once a comparison).
    fn cmp(&self, other: &Key) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({:?})", self.as_str())
    }
}

impl Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        let s = String::deserialize(d)?;
        Ok(Key::new(&s))
    }
}

/// Decoded field values of one event, in [`FieldTable`] order. Up to
/// two live inline (most patterns read few fields), so the many events
/// that match nothing allocate and free nothing.
#[derive(Clone, Debug)]
pub enum Slots {
    Inline(u8, [Value; INLINE_SLOTS]),
    Heap(Box<[Value]>),
    /// Slots read from one record's values, which every pattern's event
    /// of the record shares (see [`RecordValues`]).
    Shared(RecordValues, SlotMap),
}

/// How many slots an event holds without an allocation.
pub const INLINE_SLOTS: usize = 2;

/// The decoded values of one input record's captured fields, shared by
/// the events every pattern decodes from it. Several patterns reading
/// the same stream read mostly the same fields (the flight patterns read
/// six or seven cells each, five of them the same): one allocation a
/// record, each value decoded once, in place of a boxed copy of its
/// values for each pattern, each text cloned (an atomic count) and every
/// copy freed. This was a sixth of matching the flight year.
pub type RecordValues = Arc<[Value]>;

/// Where a pattern's slots are among a record's values: slot `n` is
/// value `map[n]`. One per pattern, shared by its events.
pub type SlotMap = Arc<[u32]>;

impl Slots {
    /// How many slots there are.
    #[inline]
    pub fn len(&self) -> usize {
        match self {
            Slots::Inline(n, _) => *n as usize,
            Slots::Heap(vals) => vals.len(),
            Slots::Shared(_, map) => map.len(),
        }
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values in slot order.
    pub fn iter(&self) -> impl Iterator<Item = &Value> {
        (0..self.len()).map(|n| &self[n])
    }

    /// `len` slots, slot `n` holding `f(n)`; built in place (collecting
    /// from an iterator moved every value twice on the per-event path).
    #[inline]
    pub fn from_fn(len: usize, mut f: impl FnMut(usize) -> Value) -> Slots {
        match len {
            0 => Slots::Inline(0, [Value::Missing, Value::Missing]),
            1 => Slots::Inline(1, [f(0), Value::Missing]),
            2 => {
                let first = f(0);
                Slots::Inline(2, [first, f(1)])
            }
            _ => Slots::Heap((0..len).map(f).collect()),
        }
    }

    #[inline]
    pub fn get(&self, i: usize) -> Option<&Value> {
        match self {
            Slots::Inline(n, vals) => vals[..*n as usize].get(i),
            Slots::Heap(vals) => vals.get(i),
            Slots::Shared(record, map) => record.get(*map.get(i)? as usize),
        }
    }
}

impl PartialEq for Slots {
    fn eq(&self, other: &Slots) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl std::ops::Index<usize> for Slots {
    type Output = Value;
    #[inline]
    fn index(&self, i: usize) -> &Value {
        match self.get(i) {
            Some(v) => v,
            None => panic!("slot {i} of {}", self.len()),
        }
    }
}

impl FromIterator<Value> for Slots {
    fn from_iter<I: IntoIterator<Item = Value>>(iter: I) -> Slots {
        let mut iter = iter.into_iter();
        let mut vals: [Value; INLINE_SLOTS] = Default::default();
        for (n, slot) in vals.iter_mut().enumerate() {
            match iter.next() {
                Some(v) => *slot = v,
                None => return Slots::Inline(n as u8, vals),
            }
        }
        match iter.next() {
            None => Slots::Inline(INLINE_SLOTS as u8, vals),
            Some(v) => {
                let mut all: Vec<Value> = vals.into_iter().collect();
                all.push(v);
                all.extend(iter);
                Slots::Heap(all.into_boxed_slice())
            }
        }
    }
}

impl Serialize for Slots {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Slots {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Slots, D::Error> {
        Ok(Vec::<Value>::deserialize(d)?.into_iter().collect())
    }
}

/// One decoded event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Event time, epoch milliseconds.
    pub time: i64,
    pub key: Key,
    /// The pattern's fields, in [`FieldTable`] order.
    pub slots: Slots,
    /// A stable hash of the event's bytes; feeds the alert id.
    pub hash: u64,
    /// The original document, when alerts should carry matched events.
    pub raw: Option<Arc<serde_json::Value>>,
}

/// Field paths a pattern reads, each with its slot number.
#[derive(Clone, Debug, Default)]
pub struct FieldTable {
    pub paths: Vec<Vec<String>>,
}

impl FieldTable {
    /// The slot of `path`, adding it if new.
    pub fn slot(&mut self, path: &[String]) -> usize {
        if let Some(n) = self.paths.iter().position(|p| p == path) {
            return n;
        }
        self.paths.push(path.to_vec());
        self.paths.len() - 1
    }
}

/// Follows a dotted path into a JSON document.
pub fn lookup<'a>(doc: &'a serde_json::Value, path: &[String]) -> Option<&'a serde_json::Value> {
    let mut cur = doc;
    for seg in path {
        cur = match cur {
            serde_json::Value::Object(map) => map.get(seg)?,
            serde_json::Value::Array(items) => items.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Why an input record could not become an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

/// Reads an event time as epoch milliseconds.
pub fn parse_time(v: Field, format: &TimeFormat) -> Result<i64, String> {
    let number = |v: Field| match v {
        Field::Int(i) => Some(i as f64),
        Field::Float(f) => Some(f),
        _ => None,
    };
    match (format, v) {
        (TimeFormat::Auto | TimeFormat::Millis, Field::Int(i)) => Ok(i),
        (TimeFormat::Auto | TimeFormat::Millis, Field::Float(f)) => Ok(f as i64),
        (TimeFormat::Seconds, Field::Int(_) | Field::Float(_)) => {
            Ok((number(v).unwrap_or_default() * 1000.0).round() as i64)
        }
        (TimeFormat::Millis, Field::Str(s)) => s.trim().parse().map_err(|_| bad(s, "epoch millis")),
        (TimeFormat::Seconds, Field::Str(s)) => s
            .trim()
            .parse::<f64>()
            .map(|x| (x * 1000.0).round() as i64)
            .map_err(|_| bad(s, "epoch seconds")),
        (TimeFormat::Auto | TimeFormat::Rfc3339, Field::Str(s)) => {
            match crate::time::rfc3339::epoch_millis(s) {
                Some(ms) => Ok(ms),
                None => DateTime::parse_from_rfc3339(s)
                    .map(|t| t.timestamp_millis())
                    .map_err(|_| bad(s, "an RFC 3339 timestamp")),
            }
        }
        (TimeFormat::Chrono(f), Field::Str(s)) => DateTime::parse_from_str(s, f)
            .map(|t| t.timestamp_millis())
            .or_else(|_| {
                NaiveDateTime::parse_from_str(s, f).map(|t| t.and_utc().timestamp_millis())
            })
            .or_else(|_| {
                NaiveDate::parse_from_str(s, f)
                    .map(|d| d.and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp_millis())
            })
            .map_err(|_| bad(s, &format!("format \"{f}\""))),
        (_, other) => Err(format!(
            "event time must be a number or a string, found {other}"
        )),
    }
}

fn bad(s: &str, what: &str) -> String {
    format!("event time {s:?} is not {what}")
}

/// [`stable_hash`] of bytes that arrive in pieces (the cells of a CSV row
/// and their separators), without gathering them: the same value as the
/// hash of their concatenation, whose length must be known at the start.
pub struct StableHasher {
    h: u64,
    /// Bytes not yet making a whole word, little-endian, and how many.
    word: u64,
    filled: u32,
}

const HASH_K: u64 = 0x9e37_79b9_7f4a_7c15;

impl StableHasher {
    pub fn new(len: usize, seed: u64) -> StableHasher {
        StableHasher {
            h: seed ^ (len as u64).wrapping_mul(HASH_K),
            word: 0,
            filled: 0,
        }
    }

    #[inline]
    fn mix(&mut self, w: u64) {
        self.h = hash_word(self.h, w);
    }

    /// Small pieces are the rule (a CSV row hashes as its cells and
    /// commas, most of a few bytes): each is loaded as one word and
    /// shifted into place, where a byte at a time made hashing a row cost
    /// as much as reading it.
    #[inline]
    pub fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.push(u64::from_le_bytes(c.try_into().unwrap_or_default()), 8);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            self.push(load_le(rest), rest.len() as u32);
        }
    }

    /// `cell` and a comma, as two [`StableHasher::write`]s; a short cell
    /// and its comma go in as one word.
    #[inline]
    pub fn write_cell(&mut self, cell: &[u8]) {
        let n = cell.len();
        if n < 8 {
            self.push(load_le(cell) | u64::from(b',') << (8 * n), n as u32 + 1);
        } else {
            self.write(cell);
            self.push(u64::from(b','), 1);
        }
    }

    /// `n` bytes (1 to 8), little-endian in `v`, after those before.
    #[inline(always)]
    fn push(&mut self, v: u64, n: u32) {
        let f = self.filled;
        // Bytes past the word's end fall off here and start the next.
        self.word |= v << (8 * f);
        if f + n < 8 {
            self.filled = f + n;
            return;
        }
        let w = self.word;
        self.mix(w);
        self.word = if f == 0 { 0 } else { v >> (8 * (8 - f)) };
        self.filled = f + n - 8;
    }

    pub fn finish(self) -> u64 {
        // The last bytes as a zero-padded word (also when there are none).
        let mut h = self.h ^ self.word.wrapping_mul(HASH_K);
        // fmix64
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// A 64-bit hash that is stable across versions and platforms, which alert
/// ids need (std's hashers may change between releases). It reads eight
/// bytes at a time and ends with the MurmurHash3 finaliser; it is not meant
/// to resist deliberate collisions.
pub fn stable_hash(bytes: &[u8], seed: u64) -> u64 {
    let mut h = seed ^ (bytes.len() as u64).wrapping_mul(HASH_K);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        h = hash_word(h, u64::from_le_bytes(c.try_into().unwrap_or_default()));
    }
    hash_end(h, bytes)
}

/// [`stable_hash`] of four texts with seed 0, equal to four calls. Each
/// word of a text waits for the one before (a multiply and a rotation, 45
/// cycles for a 70-byte event, a tenth of `cep replay`'s time per event was
/// spent waiting on it); four texts side by side keep four chains in flight
/// instead of one. `input::Lines` hashes the lines of each read this way.
pub fn stable_hash4(texts: [&[u8]; 4]) -> [u64; 4] {
    let mut h = texts.map(|t| (t.len() as u64).wrapping_mul(HASH_K));
    let words = texts.map(|t| t.as_chunks::<8>().0);
    let common = words.iter().map(|w| w.len()).min().unwrap_or(0);
    // Cut to one length, so that the loop's indexing needs no checks.
    let side_by_side = words.map(|w| &w[..common]);
    for i in 0..common {
        for (h, w) in h.iter_mut().zip(side_by_side) {
            *h = hash_word(*h, u64::from_le_bytes(w[i]));
        }
    }
    for ((h, w), t) in h.iter_mut().zip(words).zip(texts) {
        for &word in &w[common..] {
            *h = hash_word(*h, u64::from_le_bytes(word));
        }
        *h = hash_end(*h, t);
    }
    h
}

/// Up to eight bytes as a little-endian word, zero-padded: two loads that
/// may overlap (an overlapped byte is the same in both), no loop.
#[inline(always)]
fn load_le(b: &[u8]) -> u64 {
    let n = b.len();
    match n {
        4..=8 => {
            let lo = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            let hi = u32::from_le_bytes([b[n - 4], b[n - 3], b[n - 2], b[n - 1]]);
            u64::from(lo) | u64::from(hi) << (8 * (n - 4))
        }
        2..=3 => {
            let lo = u16::from_le_bytes([b[0], b[1]]);
            let hi = u16::from_le_bytes([b[n - 2], b[n - 1]]);
            u64::from(lo) | u64::from(hi) << (8 * (n - 2))
        }
        1 => u64::from(b[0]),
        _ => 0,
    }
}

/// One word into [`stable_hash`]'s state.
#[inline(always)]
fn hash_word(h: u64, w: u64) -> u64 {
    (h ^ w.wrapping_mul(HASH_K))
        .rotate_left(27)
        .wrapping_mul(0x94d0_49bb_1331_11eb)
}

/// The end of [`stable_hash`] of `bytes`: its last `len % 8` bytes, then
/// the finaliser.
#[inline(always)]
fn hash_end(mut h: u64, bytes: &[u8]) -> u64 {
    // The last bytes as a little-endian word, zero-padded, assembled in a
    // register: copied into a stack array and read back as one word, the
    // load waited for the byte stores (a quarter of reading a JSON line).
    // When the text has eight bytes or more, the word is the text's last
    // eight bytes shifted down past the ones already mixed: one load in
    // place of a loop of up to seven.
    let rest = bytes.len() % 8;
    let tail = match bytes.len().checked_sub(8) {
        Some(from) if rest > 0 => {
            let last = u64::from_le_bytes(bytes[from..].try_into().unwrap_or_default());
            last >> (8 * (8 - rest))
        }
        _ => (bytes[bytes.len() - rest..].iter().enumerate())
            .fold(0u64, |t, (i, &b)| t | u64::from(b) << (8 * i)),
    };
    h ^= tail.wrapping_mul(HASH_K);
    // fmix64
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::{stable_hash, Key};

    proptest::proptest! {
        #[test]
        fn keys_order_as_their_texts(
            a in "[a-zé\u{1f}\u{10000}]{0,30}",
            b in "[a-zé\u{1f}\u{10000}]{0,30}",
        ) {
            proptest::prop_assert_eq!(Key::new(&a).cmp(&Key::new(&b)), a.cmp(&b));
        }

        #[test]
        fn four_texts_hash_as_each_alone(
            texts in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..40), 4),
        ) {
            let four = [&texts[0][..], &texts[1][..], &texts[2][..], &texts[3][..]];
            proptest::prop_assert_eq!(super::stable_hash4(four), four.map(|t| stable_hash(t, 0)));
        }

        #[test]
        fn the_hash_of_pieces_is_the_hash_of_the_whole(
            pieces in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..20), 0..8),
            seed in proptest::num::u64::ANY,
        ) {
            let whole: Vec<u8> = pieces.concat();
            let mut h = super::StableHasher::new(whole.len(), seed);
            for p in &pieces {
                h.write(p);
            }
            proptest::prop_assert_eq!(h.finish(), stable_hash(&whole, seed));
        }

        #[test]
        fn cells_hash_as_the_cells_each_followed_by_a_comma(
            cells in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..20), 0..12),
            seed in proptest::num::u64::ANY,
        ) {
            let whole: Vec<u8> = cells.iter().flat_map(|c| c.iter().copied().chain([b','])).collect();
            let mut h = super::StableHasher::new(whole.len(), seed);
            for c in &cells {
                h.write_cell(c);
            }
            proptest::prop_assert_eq!(h.finish(), stable_hash(&whole, seed));
        }
    }

    #[test]
    fn stable_hash_is_pinned() {
        // Alert ids depend on these values: they must never change.
        assert_eq!(stable_hash(b"", 0), 0);
        assert_eq!(stable_hash(b"card c1", 0), stable_hash(b"card c1", 0));
        assert_ne!(stable_hash(b"card c1", 0), stable_hash(b"card c2", 0));
        assert_ne!(stable_hash(b"card c1", 0), stable_hash(b"card c1", 1));
        assert_ne!(stable_hash(b"abcdefgh", 0), stable_hash(b"abcdefgh\0", 0));
        assert_eq!(format!("{:016x}", stable_hash(b"{\"ts\":1}", 0)), PINNED);
    }
    const PINNED: &str = "c75471dc9efec46e";
}

#[cfg(test)]
mod slot_tests {
    use super::*;

    #[test]
    fn slots_inline_and_spilled_read_alike() {
        for n in 0..6 {
            let vals: Vec<Value> = (0..n).map(Value::Int).collect();
            let slots: Slots = vals.iter().cloned().collect();
            assert!(slots.iter().eq(&vals));
            assert_eq!(
                matches!(slots, Slots::Inline(..)),
                n as usize <= INLINE_SLOTS
            );
            let json = serde_json::to_string(&slots).unwrap();
            assert_eq!(serde_json::from_str::<Slots>(&json).unwrap(), slots);
        }
    }

    #[test]
    fn shared_slots_read_and_save_as_their_own() {
        let record: RecordValues = (0..6).map(Value::Int).collect();
        let shared = Slots::Shared(record, [4, 1, 5].into_iter().collect());
        let own: Slots = [4, 1, 5].map(Value::Int).into_iter().collect();
        assert_eq!(shared.len(), 3);
        assert_eq!(shared.get(2), Some(&Value::Int(5)));
        assert_eq!(shared.get(3), None);
        assert_eq!(shared, own);
        let json = serde_json::to_string(&shared).unwrap();
        assert_eq!(json, serde_json::to_string(&own).unwrap());
        assert_eq!(serde_json::from_str::<Slots>(&json).unwrap(), own);
    }
}
