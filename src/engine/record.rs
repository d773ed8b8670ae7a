//! What the engine is given and gives back: one input record as a caller
//! that knows where it came from hands it over, and what one call
//! produced (alerts, late events, rejected documents).

use serde::Serialize;

use super::Alert;
use crate::event::Key;

/// An event that arrived behind the watermark.
#[derive(Clone, Debug, Serialize)]
pub struct LateEvent {
    pub pattern: String,
    pub event_time: i64,
    pub watermark: i64,
    pub event: serde_json::Value,
    /// The event's key (for `cep why`; the JSON has the event itself).
    #[serde(skip)]
    pub key: Key,
}

/// A document a pattern could not decode (no key, no time, bad time).
#[derive(Clone, Debug, Serialize)]
pub struct Rejected {
    pub pattern: String,
    pub reason: String,
}

/// What one call produced.
#[derive(Debug, Default)]
pub struct Output {
    pub alerts: Vec<Alert>,
    pub late: Vec<LateEvent>,
    pub rejected: Vec<Rejected>,
}

/// One input record as a caller that knows where it came from hands it over
/// ([`super::Engine::push_record`]).
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    /// One JSON object.
    pub json: &'a [u8],
    /// Identity of the record ([`crate::event::stable_hash`] of its bytes).
    pub hash: u64,
    /// The key to use instead of each pattern's key fields (a Kafka message
    /// key).
    pub key: Option<&'a str>,
    /// The event time to use instead of each pattern's time field (a Kafka
    /// record timestamp), epoch milliseconds.
    pub time: Option<i64>,
    /// Tie-break among events of equal time (else arrival order).
    pub order: Option<u64>,
    /// Events older than this are late even if the engine's watermark has
    /// not reached it (the watermark of the record's own partition).
    pub late_before: i64,
}

impl Default for Record<'_> {
    fn default() -> Self {
        Record {
            json: b"",
            hash: 0,
            key: None,
            time: None,
            order: None,
            late_before: i64::MIN,
        }
    }
}
