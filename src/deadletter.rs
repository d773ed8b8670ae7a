//! Dead letters: records that could not be matched, kept whole and once.
//!
//! A record is dead-lettered when it cannot be read (not JSON, not an
//! object, a CSV row of the wrong width) or when a pattern cannot decode it
//! (no key, no time, a time that does not parse). However many patterns
//! refuse it, it is written **once**, with every reason, where it came from
//! (file and line, or topic, partition and offset) and its bytes: as text
//! when they are UTF-8, as base64 otherwise. A CSV row carries its header,
//! so that it stands alone.
//!
//! The same shape is written by `cep replay --dead-letter` and by the
//! service's local fallback file, and `cep replay --format dead-letter`
//! reads it back: fix the data in place, replay the file, and the events
//! keep their identity (the alert ids are those the fixed original would
//! have given).

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// One rejected record, as a JSON line.
// No `deny_unknown_fields`: serde does not support it beside `flatten`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Where the record was read.
    #[serde(flatten)]
    pub origin: Origin,
    /// Every reason it was refused (one per pattern that refused it).
    pub reasons: Vec<String>,
    /// The record's bytes, when they are UTF-8 text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
    /// The record's bytes, base64 (standard alphabet), when they are not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_base64: Option<String>,
    /// For a CSV row: the header it is read with (`raw` is the row).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csv_header: Option<Vec<String>>,
}

/// Where a dead letter came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Origin {
    /// A file (`-` for stdin) and a 1-based line.
    File { input: String, line: u64 },
    /// A Kafka record.
    Kafka {
        topic: String,
        partition: i32,
        offset: i64,
    },
}

impl DeadLetter {
    /// A dead letter of `bytes` from `origin`.
    pub fn new(origin: Origin, bytes: &[u8], reasons: Vec<String>) -> DeadLetter {
        let (raw, raw_base64) = match std::str::from_utf8(bytes) {
            Ok(text) => (Some(text.to_string()), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
            ),
        };
        DeadLetter {
            origin,
            reasons,
            raw,
            raw_base64,
            csv_header: None,
        }
    }

    /// The record's bytes, as they were read.
    pub fn bytes(&self) -> Result<Vec<u8>, String> {
        match (&self.raw, &self.raw_base64) {
            (Some(text), None) => Ok(text.as_bytes().to_vec()),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| format!("raw_base64: {e}")),
            _ => Err("a dead letter needs exactly one of `raw` or `raw_base64`".into()),
        }
    }

    /// One JSON line (without the newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("a dead letter serialises")
    }

    /// Parses one JSON line.
    pub fn from_line(line: &[u8]) -> Result<DeadLetter, String> {
        serde_json::from_slice(line).map_err(|e| format!("not a dead-letter entry: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_stays_text_and_other_bytes_become_base64() {
        let file = Origin::File {
            input: "in.jsonl".into(),
            line: 7,
        };
        let d = DeadLetter::new(file.clone(), br#"{"a":1}"#, vec!["x".into(), "y".into()]);
        assert_eq!(
            d.to_line(),
            r#"{"input":"in.jsonl","line":7,"reasons":["x","y"],"raw":"{\"a\":1}"}"#
        );
        assert_eq!(DeadLetter::from_line(d.to_line().as_bytes()).unwrap(), d);

        let bytes = [b'{', 0xff, 0x00, b'}'];
        let kafka = Origin::Kafka {
            topic: "t".into(),
            partition: 2,
            offset: 41,
        };
        let d = DeadLetter::new(kafka, &bytes, vec!["not UTF-8".into()]);
        let line = d.to_line();
        assert!(
            line.contains(r#""topic":"t","partition":2,"offset":41"#),
            "{line}"
        );
        assert!(line.contains(r#""raw_base64":"e/8AfQ==""#), "{line}");
        let back = DeadLetter::from_line(line.as_bytes()).unwrap();
        assert_eq!(back, d);
        assert_eq!(back.bytes().unwrap(), bytes);
    }

    #[test]
    fn an_entry_with_both_or_neither_raw_field_is_refused() {
        let mut d = DeadLetter::new(
            Origin::File {
                input: "-".into(),
                line: 1,
            },
            b"x",
            vec![],
        );
        d.raw_base64 = Some("eA==".into());
        assert!(d.bytes().is_err());
        d.raw = None;
        d.raw_base64 = None;
        assert!(d.bytes().is_err());
        assert!(DeadLetter::from_line(b"{\"reasons\":[]}").is_err());
    }
}
