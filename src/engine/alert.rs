//! Alerts: what a match or an expired partial match turns into.
//!
//! An alert is plain JSON. Its `alert_id` is a hash of the pattern, version,
//! key, kind and the identity (time and content hash) of every bound event,
//! so the same input gives the same id in every run, after a restore, and
//! after a re-delivery: downstream systems can deduplicate on it.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat};
use serde::{Deserialize, Serialize};

use crate::compiler::expr::MatchInfo;
use crate::compiler::{Automaton, Bindings, CExpr, Env};
use crate::event::{stable_hash, Key};
use crate::history::KeyHistory;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertKind {
    Match,
    Timeout,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub alert_id: String,
    pub pattern: String,
    pub version: u32,
    pub kind: AlertKind,
    pub key: serde_json::Value,
    /// Event time of the first bound event, RFC 3339.
    pub start: String,
    /// Event time of the last bound event (for an absence, when its window
    /// closed), RFC 3339.
    pub end: String,
    pub start_ms: i64,
    pub end_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub severity: Option<String>,
    /// The pattern's labels, shared by its alerts.
    #[serde(skip_serializing_if = "no_labels", default)]
    pub labels: Arc<BTreeMap<String, String>>,
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// The matched events by variable, when the engine is asked to keep them.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub events: Option<BTreeMap<String, Vec<serde_json::Value>>>,
    /// Variable and content hash of each bound event, in binding order (for
    /// tests and tools; not part of the JSON).
    #[serde(skip)]
    pub bound: Vec<(String, u64)>,
    #[serde(skip)]
    pub shadow: bool,
}

fn no_labels(labels: &Arc<BTreeMap<String, String>>) -> bool {
    labels.is_empty()
}

pub fn rfc3339(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| ms.to_string())
}

/// The two hashes as 32 lowercase hex digits, as `{:016x}{:016x}` writes
/// them (`format!` took 1,400 instructions an alert).
fn hex_id(words: [u64; 2]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(32);
    for w in words {
        for shift in (0..16).rev() {
            text.push(char::from(HEX[(w >> (shift * 4)) as usize & 0xf]));
        }
    }
    text
}

/// Builds the alert for a run's bindings; outputs read the key's history
/// as of the given time.
pub fn build(
    a: &Automaton,
    kind: AlertKind,
    key: &Key,
    bindings: &Bindings,
    (start, end): (i64, i64),
    include_events: bool,
    history: (Option<&KeyHistory>, i64),
) -> Alert {
    let env = Env {
        current: None,
        bindings,
        key: Some(key),
        start,
        end,
        history: history.0,
        history_at: history.1,
    };
    let outputs: &[(String, CExpr)] = match kind {
        AlertKind::Match => &a.emit,
        AlertKind::Timeout => a.on_timeout.as_deref().unwrap_or(&[]),
    };
    let fields = outputs
        .iter()
        .map(|(name, e)| {
            let v = match e {
                // A composite key reads as in the alert's own `key`.
                CExpr::Info(MatchInfo::Key) => key.to_json(),
                e => e.eval(&env).to_json(),
            };
            (name.clone(), v)
        })
        .collect();

    let bindings = bindings.oldest_first();
    let mut id = Vec::with_capacity(64);
    id.extend_from_slice(a.name.as_bytes());
    id.push(0);
    id.extend_from_slice(&a.version.to_le_bytes());
    id.extend_from_slice(key.as_str().as_bytes());
    id.push(kind as u8);
    for b in &bindings {
        id.extend_from_slice(&b.var.to_le_bytes());
        id.extend_from_slice(&b.event.time.to_le_bytes());
        id.extend_from_slice(&b.event.hash.to_le_bytes());
    }
    id.extend_from_slice(&end.to_le_bytes());
    let alert_id = hex_id([stable_hash(&id, 0), stable_hash(&id, 0x9e37_79b9_7f4a_7c15)]);

    let events = include_events.then(|| {
        let mut by_var: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
        for b in &bindings {
            let doc = b.event.raw().cloned().unwrap_or(serde_json::Value::Null);
            by_var
                .entry(a.vars[b.var as usize].name.clone())
                .or_default()
                .push(doc);
        }
        by_var
    });

    Alert {
        alert_id,
        pattern: a.name.clone(),
        version: a.version,
        kind,
        key: key.to_json(),
        start: rfc3339(start),
        end: rfc3339(end),
        start_ms: start,
        end_ms: end,
        severity: a.severity.clone(),
        labels: a.labels.clone(),
        fields,
        events,
        bound: bindings
            .iter()
            .map(|b| (a.vars[b.var as usize].name.clone(), b.event.hash))
            .collect(),
        shadow: a.shadow,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn alert_ids_are_written_as_format_writes_them(a in any::<u64>(), b in any::<u64>()) {
            prop_assert_eq!(super::hex_id([a, b]), format!("{a:016x}{b:016x}"));
        }
    }
}
