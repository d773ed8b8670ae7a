//! Decoding a record for one pattern: its key (a message key, one field,
//! or several joined), its event time, and the fields the pattern keeps in
//! event slots, from wherever they are found (a parsed document, or values
//! captured from JSON text or a CSV row).

use std::sync::Arc;

use crate::compiler::Automaton;
use crate::event::{lookup, parse_time, DecodeError, Event, Key, Slots, KEY_SEPARATOR};
use crate::extract::Field;
use crate::value::Value;

use super::Record;

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
        _ => Err(DecodeError(format!(
            "missing key field `{}`",
            path.join(".")
        ))),
    }
}

/// [`decode_with`], taking key and time from `rec` where it carries them.
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
        let mut text = String::new();
        for (n, p) in a.key_paths.iter().enumerate() {
            if n > 0 {
                text.push(KEY_SEPARATOR);
            }
            text.push_str(&key_text(get(FieldRef::Key(n)), p)?);
        }
        Key::new(&text)
    };
    let time = match rec.time {
        Some(t) => t,
        None => {
            let tv = get(FieldRef::Time).ok_or_else(|| {
                DecodeError(format!("missing time field `{}`", a.time.field.dotted()))
            })?;
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
