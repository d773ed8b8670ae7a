//! Decoding a record for one pattern: its key (a message key, one field,
//! or several joined), its event time, and the fields the pattern keeps in
//! event slots, from wherever they are found (a parsed document, or values
//! captured from JSON text or a CSV row).

use std::hash::Hasher;
use std::sync::Arc;

use crate::compiler::Automaton;
use crate::dsl::ast::TimeFormat;
use crate::event::{
    lookup, parse_time, DecodeError, Event, Key, RecordValues, Slots, INLINE_SLOTS, KEY_SEPARATOR,
};
use crate::extract::{Field, Fields};
use crate::value::Value;

use super::{captures::CaptureSlots, Record};

/// A field a pattern reads, as [`decode_with`] asks for it.
#[derive(Clone, Copy, Debug)]
pub enum FieldRef {
    /// The `n`th key path.
    Key(usize),
    Time,
    /// Slot `n` of the pattern's field table.
    Slot(usize),
}

/// Decodes a document for one pattern: key, event time and slots.
pub fn decode(
    a: &Automaton,
    doc: &serde_json::Value,
    hash: u64,
    raw: Option<Arc<serde_json::Value>>,
) -> Result<Event, DecodeError> {
    decode_with(
        a,
        |f| match f {
            FieldRef::Key(n) => lookup(doc, &a.key_paths[n]).map(Field::of_json),
            FieldRef::Time => lookup(doc, &a.time.field.segments).map(Field::of_json),
            FieldRef::Slot(n) => lookup(doc, &a.fields.paths[n]).map(Field::of_json),
        },
        hash,
        raw,
    )
}

/// Decodes an event from wherever `get` finds the pattern's fields (a parsed
/// document, or values a [`crate::extract::Extractor`] captured from JSON
/// text).
pub fn decode_with<'v>(
    a: &Automaton,
    get: impl Fn(FieldRef) -> Option<Field<'v>>,
    hash: u64,
    raw: Option<Arc<serde_json::Value>>,
) -> Result<Event, DecodeError> {
    let rec = Record {
        hash,
        ..Record::default()
    };
    let slot = |n| get(FieldRef::Slot(n)).map_or(Value::Missing, Field::to_value);
    decode_parts(a, &get, slot, &rec, raw)
}

/// One key field as text (a number's decimal form; null and absent are
/// errors).
fn key_text(field: Option<Field>, path: &[String]) -> Result<String, DecodeError> {
    let mut text = String::new();
    match field {
        Some(f) if f.push_key_text(&mut text) => Ok(text),
        _ => Err(missing_key(path)),
    }
}

fn missing_key(path: &[String]) -> DecodeError {
    DecodeError(format!("missing key field `{}`", path.join(".")))
}

/// Room for a composite key's text that fits an event's inline key.
const COMPOSITE_KEY: usize = 32;

/// [`decode_with`], taking key and time from `rec` where it carries them.
///
/// The key and the time are decoded here in line, not by [`decode_key`]
/// and [`decode_time`]: through them (a `Result` returned, then moved into
/// the event) the peer file's one pattern measured 3 % slower, and forcing
/// them inline made it slower still. This is the path of every engine
/// whose patterns share nothing.
pub(super) fn decode_parts<'v>(
    a: &Automaton,
    get: impl Fn(FieldRef) -> Option<Field<'v>>,
    slot_value: impl Fn(usize) -> Value,
    rec: &Record,
    raw: Option<Arc<serde_json::Value>>,
) -> Result<Event, DecodeError> {
    let hash = rec.hash;
    let key = if let Some(k) = rec.key {
        Key::new(k)
    } else if let [only] = &a.key_paths[..] {
        match get(FieldRef::Key(0)) {
            Some(Field::Str(s)) => Key::new(s),
            other => Key::new(&key_text(other, only)?),
        }
    } else {
        composite_key(a, &get)?
    };
    let time = match rec.time {
        Some(t) => t,
        None => {
            let tv = get(FieldRef::Time).ok_or_else(|| missing_time(a))?;
            parse_time(tv, &a.time.format).map_err(DecodeError)?
        }
    };
    let slots = Slots::from_fn(a.fields.paths.len(), slot_value);
    Ok(Event {
        time,
        key,
        slots,
        hash,
        raw,
    })
}

/// The event's key: `rec`'s, else the pattern's key fields (several
/// joined by [`KEY_SEPARATOR`]).
#[inline]
fn decode_key<'v>(
    a: &Automaton,
    get: impl Fn(FieldRef) -> Option<Field<'v>>,
    rec: &Record,
) -> Result<Key, DecodeError> {
    if let Some(k) = rec.key {
        return Ok(Key::new(k));
    }
    if let [only] = &a.key_paths[..] {
        return match get(FieldRef::Key(0)) {
            Some(Field::Str(s)) => Ok(Key::new(s)),
            other => Ok(Key::new(&key_text(other, only)?)),
        };
    }
    composite_key(a, &get)
}

/// A key of several fields, joined by [`KEY_SEPARATOR`]. Not inlined: in
/// line (it is on the path of every key), the peer file's one pattern,
/// keyed by one field, ran 1.3 % slower with fewer instructions (median
/// of 15 interleaved runs; 0.5 % from before the stack buffer here).
#[inline(never)]
fn composite_key<'v>(
    a: &Automaton,
    get: impl Fn(FieldRef) -> Option<Field<'v>>,
) -> Result<Key, DecodeError> {
    // Texts that fit joined on the stack (a string made and freed a
    // record was a tenth of the flight year's `carrier, origin` key);
    // numbers and longer keys written into a string.
    let mut buf = [0u8; COMPOSITE_KEY];
    let mut len = 0;
    for (n, p) in a.key_paths.iter().enumerate() {
        let part = match get(FieldRef::Key(n)) {
            Some(Field::Str(s)) => s,
            None | Some(Field::Null) => return Err(missing_key(p)),
            Some(_) => return composite_key_text(a, get),
        };
        let sep = if n > 0 { KEY_SEPARATOR.len_utf8() } else { 0 };
        let Some(place) = buf.get_mut(len..len + sep + part.len()) else {
            return composite_key_text(a, get);
        };
        if sep > 0 {
            KEY_SEPARATOR.encode_utf8(&mut place[..sep]);
        }
        place[sep..].copy_from_slice(part.as_bytes());
        len += sep + part.len();
    }
    // Texts and a separator: UTF-8.
    let text = std::str::from_utf8(&buf[..len]).map_err(|e| DecodeError(e.to_string()))?;
    Ok(Key::new(text))
}

/// [`composite_key`], each part written straight into one string.
fn composite_key_text<'v>(
    a: &Automaton,
    get: impl Fn(FieldRef) -> Option<Field<'v>>,
) -> Result<Key, DecodeError> {
    // (A string per part, and the joined one grown as they came, was three
    // allocations a record for the flight year's `carrier, origin`.)
    let mut text = String::with_capacity(COMPOSITE_KEY);
    for (n, p) in a.key_paths.iter().enumerate() {
        if n > 0 {
            text.push(KEY_SEPARATOR);
        }
        match get(FieldRef::Key(n)) {
            Some(f) if f.push_key_text(&mut text) => {}
            _ => return Err(missing_key(p)),
        }
    }
    Ok(Key::new(&text))
}

/// The event time: `rec`'s, else the pattern's time field.
#[inline]
fn decode_time<'v>(
    a: &Automaton,
    get: impl Fn(FieldRef) -> Option<Field<'v>>,
    rec: &Record,
    last: Option<&mut TimeText>,
) -> Result<i64, DecodeError> {
    if let Some(t) = rec.time {
        return Ok(t);
    }
    let tv = get(FieldRef::Time).ok_or_else(|| missing_time(a))?;
    match (tv, &a.time.format, last) {
        (Field::Str(s), TimeFormat::Auto | TimeFormat::Rfc3339, Some(last)) => last.read(s),
        (tv, format, _) => parse_time(tv, format),
    }
    .map_err(DecodeError)
}

/// The last event time read from an RFC 3339 text, and that text: input
/// in time order repeats it (the flight year's `time_hour` is the same for
/// the 40 or so flights of a scheduled hour), and comparing it costs a
/// tenth of reading it again (300 instructions a row).
#[derive(Default)]
pub(super) struct TimeText {
    text: [u8; TIME_TEXT],
    /// The text's length; `None` before the first.
    len: Option<usize>,
    millis: i64,
}

/// Longer texts are read each time.
const TIME_TEXT: usize = 32;

impl TimeText {
    /// `s` read as [`parse_time`] reads an RFC 3339 text.
    #[inline]
    fn read(&mut self, s: &str) -> Result<i64, String> {
        let b = s.as_bytes();
        if self.len == Some(b.len()) && self.text[..b.len()] == *b {
            return Ok(self.millis);
        }
        let millis = parse_time(Field::Str(s), &TimeFormat::Rfc3339)?;
        if let Some(place) = self.text.get_mut(..b.len()) {
            place.copy_from_slice(b);
            (self.len, self.millis) = (Some(b.len()), millis);
        }
        Ok(millis)
    }
}

fn missing_time(a: &Automaton) -> DecodeError {
    DecodeError(format!("missing time field `{}`", a.time.field.dotted()))
}

/// Where the events decoded from one record take their slots' values.
#[derive(Clone, Copy)]
pub(super) enum SlotValues<'r> {
    /// The record's values, shared by patterns that keep many slots.
    Record(&'r RecordValues),
    /// The record's values decoded into the engine's scratch space, cloned
    /// into each event.
    Scratch(&'r [Value]),
}

/// The event of pattern `a`, whose captures are `at`, from a record's
/// captured fields (`get`) and values.
#[inline(always)]
pub(super) fn decode_captured<'v>(
    a: &Automaton,
    at: &CaptureSlots,
    get: impl Fn(FieldRef) -> Option<Field<'v>>,
    rec: &Record,
    values: SlotValues,
    last: &mut LastDecoded,
    raw: Option<Arc<serde_json::Value>>,
) -> Result<Event, DecodeError> {
    // A pattern keyed or timed unlike any other decodes its own.
    let key = match at.key_as {
        None => decode_key(a, &get, rec)?,
        Some(like) => last.key(like, || decode_key(a, &get, rec))?,
    };
    let time = match at.time_as {
        None => decode_time(a, &get, rec, last.time_text.as_deref_mut())?,
        Some(like) => {
            let text = last.time_text.as_deref_mut();
            remember(&mut last.time, like, || decode_time(a, &get, rec, text))?
        }
    };
    let n = at.slots.len();
    let slots = match values {
        SlotValues::Record(r) if n > INLINE_SLOTS => Slots::Shared(r.clone(), at.map.clone()),
        SlotValues::Record(r) => Slots::from_fn(n, |i| r[at.slots[i]].clone()),
        SlotValues::Scratch(v) => Slots::from_fn(n, |i| v[at.slots[i]].clone()),
    };
    Ok(Event {
        time,
        key,
        slots,
        hash: rec.hash,
        raw,
    })
}

/// The key and the time decoded for the last pattern a record went to,
/// kept for the next pattern that reads them from the same fields the
/// same way: patterns on one stream are mostly keyed and timed alike (four
/// of the five flight patterns by `tailnum`, all five by `time_hour`), and
/// each is then decoded once a record, not once a pattern.
pub(super) struct LastDecoded<'t> {
    key: Option<(usize, Result<Key, DecodeError>)>,
    time: Option<(usize, Result<i64, DecodeError>)>,
    /// Kept from record to record (see [`TimeText`]), when there is one.
    time_text: Option<&'t mut TimeText>,
}

impl LastDecoded<'_> {
    /// Nothing decoded yet for a record; `time_text` is what the records
    /// before left.
    pub(super) fn new(time_text: Option<&mut TimeText>) -> LastDecoded<'_> {
        LastDecoded {
            key: None,
            time: None,
            time_text,
        }
    }

    /// The key of a pattern that decodes it like pattern `like` (the
    /// first that decodes it the same way): the last one decoded if that
    /// was decoded alike, else `decode`'s, kept for the next pattern.
    #[inline]
    fn key(
        &mut self,
        like: usize,
        decode: impl FnOnce() -> Result<Key, DecodeError>,
    ) -> Result<Key, DecodeError> {
        remember(&mut self.key, like, decode)
    }
}

#[inline(always)]
fn remember<T: Clone>(last: &mut Option<(usize, T)>, like: usize, decode: impl FnOnce() -> T) -> T {
    match last {
        Some((n, v)) if *n == like => v.clone(),
        _ => last.insert((like, decode())).1.clone(),
    }
}

/// One record's values for the events of every pattern it goes to (see
/// [`RecordValues`]): value `c` is capture `c`'s, for the `captures` some
/// pattern keeps in a slot (sorted), else missing.
pub(super) fn record_values(
    fields: &Fields,
    captures: &[usize],
    texts: &mut [TextCache],
) -> RecordValues {
    let mut wanted = captures.iter().copied().peekable();
    // A range mapped has an exact length: one allocation, built in place.
    (0..texts.len())
        .map(|c| match wanted.next_if_eq(&c) {
            Some(_) => texts[c].value(fields.get(c)),
            None => Value::Missing,
        })
        .collect()
}

/// The texts one captured field decoded to lately, so that a text seen
/// again shares the string made the first time instead of allocating its
/// own: the cells patterns read are mostly a few values repeated (the
/// flight year's carriers, airports and scheduled hours); on its first
/// 100,000 sorted rows the cache saved 2.5 % of the instructions (a string
/// made and freed a cell, five a row). A small
/// table indexed by a hash of the text, each place holding the last text
/// that fell there: bounded memory, no eviction policy to run.
#[derive(Clone, Default)]
pub(super) struct TextCache {
    places: Vec<Option<Arc<str>>>,
}

/// Places in each field's [`TextCache`].
const TEXT_PLACES: usize = 64;

/// Texts longer than this are not looked up (rarely repeated, and slower
/// to compare).
const CACHED_TEXT: usize = 40;

impl TextCache {
    /// `field`'s value; a text from the cache when it holds it.
    #[inline(always)]
    pub(super) fn value(&mut self, field: Option<Field>) -> Value {
        match field {
            Some(Field::Str(s)) if s.len() <= CACHED_TEXT => Value::Str(self.text(s)),
            Some(f) => f.to_value(),
            None => Value::Missing,
        }
    }

    #[inline(never)]
    fn text(&mut self, s: &str) -> Arc<str> {
        if self.places.is_empty() {
            self.places = vec![None; TEXT_PLACES];
        }
        let mut h = rustc_hash::FxHasher::default();
        h.write(s.as_bytes());
        let place = &mut self.places[h.finish() as usize % TEXT_PLACES];
        match place {
            Some(t) if **t == *s => t.clone(),
            _ => place.insert(Arc::from(s)).clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(v: &Value) -> &Arc<str> {
        match v {
            Value::Str(s) => s,
            other => panic!("a text, found {other:?}"),
        }
    }

    #[test]
    fn a_composite_key_is_its_parts_joined_whatever_they_are() {
        let src =
            "pattern p\n  from s\n  key a, b\n  time t\n  match x\n  define x as v > 0\nend\n";
        let a = &crate::compiler::compile_source("p.cep", src).unwrap()[0];
        let long = "x".repeat(COMPOSITE_KEY);
        let parts: [Option<Field>; 7] = [
            Some(Field::Str("EV")),
            Some(Field::Str("")),
            Some(Field::Str(&long)),
            Some(Field::Str("é")),
            Some(Field::Int(-42)),
            Some(Field::Null),
            None,
        ];
        for first in parts {
            for second in parts {
                let get = |f| match f {
                    FieldRef::Key(0) => first,
                    FieldRef::Key(_) => second,
                    _ => None,
                };
                let (fast, slow) = (composite_key(a, get), composite_key_text(a, get));
                assert_eq!(
                    fast.as_ref()
                        .map(|k| k.as_str().to_string())
                        .map_err(|e| &e.0),
                    slow.as_ref()
                        .map(|k| k.as_str().to_string())
                        .map_err(|e| &e.0),
                    "{first:?} {second:?}"
                );
                if let Ok(k) = fast {
                    assert_eq!(k, slow.unwrap());
                }
            }
        }
        let get = |f| match f {
            FieldRef::Key(0) => Some(Field::Str("EV")),
            _ => Some(Field::Str("JFK")),
        };
        assert_eq!(composite_key(a, get).unwrap().as_str(), "EV\u{1f}JFK");
    }

    #[test]
    fn a_time_text_seen_again_reads_as_it_did_and_every_text_as_parse_time_reads_it() {
        let long = "2013-01-01T10:00:00.000000000000000+00:00";
        assert!(long.len() > TIME_TEXT);
        let texts = [
            "2013-01-01T10:00:00Z",
            "2013-01-01T10:00:00Z",
            "2013-01-01T11:00:00Z",
            "not a time",
            "2013-01-01T11:00:00Z",
            long,
            long,
            "2013-01-01T10:00:00Z",
            "",
            "2013-01-01T10:00:00+01:00",
        ];
        let mut last = TimeText::default();
        for s in texts {
            let want = parse_time(Field::Str(s), &TimeFormat::Auto);
            assert_eq!(last.read(s), want, "{s}");
        }
    }

    #[test]
    fn a_text_seen_again_shares_its_string_and_every_value_is_its_own_text() {
        let mut cache = TextCache::default();
        let first = cache.value(Some(Field::Str("EWR")));
        let again = cache.value(Some(Field::Str("EWR")));
        assert!(Arc::ptr_eq(text(&first), text(&again)));
        // More texts than places: collisions replace, values stay right.
        let names: Vec<String> = (0..500).map(|n| format!("N{n}")).collect();
        for round in 0..2 {
            for n in &names {
                let v = cache.value(Some(Field::Str(n)));
                assert_eq!(&**text(&v), n.as_str(), "round {round}");
            }
        }
        let long = "x".repeat(CACHED_TEXT + 1);
        let (a, b) = (
            cache.value(Some(Field::Str(&long))),
            cache.value(Some(Field::Str(&long))),
        );
        assert_eq!(a, b);
        assert!(!Arc::ptr_eq(text(&a), text(&b)));
        assert_eq!(cache.value(Some(Field::Int(7))), Value::Int(7));
        assert_eq!(cache.value(None), Value::Missing);
    }
}
