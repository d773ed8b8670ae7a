//! Reading only the fields patterns need, straight from JSON text.
//!
//! Building a whole `serde_json::Value` for every event (a map, a string for
//! every key and value) costs far more than matching it. An [`Extractor`]
//! knows every field path the engine's patterns read (keys, event times,
//! condition and output fields), arranged as a trie, and walks the JSON text
//! once with serde: fields on a path are captured, everything else is
//! skipped without allocating. The captured values then feed the same
//! decoding as a parsed document does (see [`crate::engine::decode_with`]).
//!
//! Semantics match [`crate::event::lookup`]: object members by name (the last
//! of duplicate names wins), array elements by decimal index, anything else
//! missing. The whole text is still checked to be one JSON object.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// A set of field paths and how to read them from JSON text.
#[derive(Clone, Debug, Default)]
pub struct Extractor {
    nodes: Vec<TrieNode>,
    captures: usize,
}

#[derive(Clone, Debug, Default)]
struct TrieNode {
    children: Vec<(String, usize)>,
    /// The capture slot of the path that ends here.
    capture: Option<usize>,
}

/// Captured values, indexed by the numbers [`Extractor::add`] returned.
pub type Captures = Vec<Option<serde_json::Value>>;

impl Extractor {
    pub fn new() -> Extractor {
        Extractor {
            nodes: vec![TrieNode::default()],
            captures: 0,
        }
    }

    /// Registers a path; returns its capture slot (the same for the same path).
    pub fn add(&mut self, path: &[String]) -> usize {
        if self.nodes.is_empty() {
            self.nodes.push(TrieNode::default());
        }
        let mut node = 0;
        for seg in path {
            node = match self.nodes[node].children.iter().find(|(s, _)| s == seg) {
                Some((_, child)) => *child,
                None => {
                    self.nodes.push(TrieNode::default());
                    let child = self.nodes.len() - 1;
                    self.nodes[node].children.push((seg.clone(), child));
                    child
                }
            };
        }
        *self.nodes[node].capture.get_or_insert_with(|| {
            self.captures += 1;
            self.captures - 1
        })
    }

    /// Reads `json` (one JSON object) into `out`, which is resized to hold
    /// every capture; paths not present are `None`.
    pub fn extract(&self, json: &[u8], out: &mut Captures) -> Result<(), String> {
        out.clear();
        out.resize(self.captures, None);
        if self.nodes.is_empty() {
            return Ok(());
        }
        // JSON is UTF-8 text. serde_json checks strings it reads but not the
        // ones it skips, so a byte slice with bad UTF-8 in an unread field
        // would pass here while every other reader refuses it (found by
        // fuzzing). Checking the whole text first is cheap (an ASCII fast
        // path) and lets the parser trust its strings after.
        let text = std::str::from_utf8(json)
            .map_err(|e| format!("invalid JSON: not UTF-8 text (at byte {})", e.valid_up_to()))?;
        let mut de = serde_json::Deserializer::from_str(text);
        let mut is_object = false;
        Walk {
            ex: self,
            node: 0,
            out,
            is_object: Some(&mut is_object),
        }
        .deserialize(&mut de)
        .and_then(|_| de.end())
        .map_err(|e| format!("invalid JSON: {e}"))?;
        if !is_object {
            return Err("an event must be a JSON object".into());
        }
        Ok(())
    }

    /// Fills the captures below `node` from an already parsed value.
    fn fill_from(&self, node: usize, v: &serde_json::Value, out: &mut Captures) {
        for (seg, child) in &self.nodes[node].children {
            let inner = match v {
                serde_json::Value::Object(m) => m.get(seg),
                serde_json::Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
                _ => None,
            };
            if let Some(inner) = inner {
                if let Some(c) = self.nodes[*child].capture {
                    out[c] = Some(inner.clone());
                }
                self.fill_from(*child, inner, out);
            }
        }
    }
}

struct Walk<'a, 'b> {
    ex: &'a Extractor,
    node: usize,
    out: &'b mut Captures,
    /// Set at the root only: reports whether the document is an object.
    is_object: Option<&'b mut bool>,
}

impl<'de> DeserializeSeed<'de> for Walk<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let n = &self.ex.nodes[self.node];
        if let Some(c) = n.capture {
            // A captured field is kept whole (it may itself be an object);
            // deeper paths below it are read from the kept value.
            let v = serde_json::Value::deserialize(d)?;
            self.ex.fill_from(self.node, &v, self.out);
            self.out[c] = Some(v);
            return Ok(());
        }
        d.deserialize_any(self)
    }
}

/// Finds which child a member name leads to, without allocating.
struct Member<'a>(&'a [(String, usize)]);

impl<'de> DeserializeSeed<'de> for Member<'_> {
    type Value = Option<usize>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for Member<'_> {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a member name")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Option<usize>, E> {
        Ok(self.0.iter().find(|(name, _)| name == s).map(|(_, c)| *c))
    }
}

impl<'de> Visitor<'de> for Walk<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if let Some(flag) = self.is_object {
            *flag = true;
        }
        let children = &self.ex.nodes[self.node].children;
        while let Some(child) = map.next_key_seed(Member(children))? {
            match child {
                Some(node) => map.next_value_seed(Walk {
                    ex: self.ex,
                    node,
                    out: &mut *self.out,
                    is_object: None,
                })?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let children = &self.ex.nodes[self.node].children;
        let mut i = 0usize;
        loop {
            let child = children
                .iter()
                .find(|(name, _)| name.parse::<usize>() == Ok(i))
                .map(|(_, c)| *c);
            let more = match child {
                Some(node) => seq
                    .next_element_seed(Walk {
                        ex: self.ex,
                        node,
                        out: &mut *self.out,
                        is_object: None,
                    })?
                    .is_some(),
                None => seq.next_element::<IgnoredAny>()?.is_some(),
            };
            if !more {
                return Ok(());
            }
            i += 1;
        }
    }

    // Scalars where an object was expected: the path is simply not there.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bytes_that_are_not_utf8_are_refused_even_in_a_field_no_pattern_reads() {
        // The fuzzer's find (json_event): `"x\xf2"` inside a skipped array.
        let mut ex = super::Extractor::new();
        ex.add(&["card".to_string(), "id".to_string()]);
        let mut out = Vec::new();
        let bad = b"{\"carDag`s\":[\"x\xf2\"]}";
        assert!(serde_json::from_slice::<serde_json::Value>(bad).is_err());
        let e = ex.extract(bad, &mut out).unwrap_err();
        assert!(e.contains("not UTF-8 text (at byte 15)"), "{e}");
        ex.extract("{\"x\":\"caf\u{e9}\"}".as_bytes(), &mut out)
            .unwrap();
    }

    use super::*;
    use crate::event::lookup;

    fn paths() -> Vec<Vec<String>> {
        [
            "card.id",
            "ts",
            "amount",
            "card",
            "tags.1",
            "deep.a.b",
            "missing.x",
        ]
        .iter()
        .map(|p| p.split('.').map(str::to_string).collect())
        .collect()
    }

    #[test]
    fn captures_what_lookup_finds() {
        let docs = [
            r#"{"card":{"id":"c1","x":[1,2]},"ts":5,"amount":1.5,"tags":["a","b"],"deep":{"a":{"b":null}}}"#,
            r#"{"card":"flat","ts":"2013-01-01T00:00:00Z","amount":-3,"tags":[],"deep":{"a":7}}"#,
            r#"{"amount":1,"amount":2,"other":{"ts":9}}"#,
            r#"{}"#,
        ];
        let mut ex = Extractor::new();
        let slots: Vec<usize> = paths().iter().map(|p| ex.add(p)).collect();
        let mut out = Captures::new();
        for d in docs {
            ex.extract(d.as_bytes(), &mut out).unwrap();
            let doc: serde_json::Value = serde_json::from_str(d).unwrap();
            for (p, s) in paths().iter().zip(&slots) {
                assert_eq!(out[*s].as_ref(), lookup(&doc, p), "{d} {p:?}");
            }
        }
    }

    #[test]
    fn rejects_what_is_not_one_object() {
        let mut ex = Extractor::new();
        ex.add(&["a".to_string()]);
        let mut out = Captures::new();
        for bad in ["[1]", "3", "{\"a\":1} x", "{\"a\":", "not json"] {
            assert!(ex.extract(bad.as_bytes(), &mut out).is_err(), "{bad}");
        }
    }
}
