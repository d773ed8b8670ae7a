//! Shared by the engine's property tests (`dominance`, `pass_by`): short
//! random card streams over two keys, and one pass of a stream through an
//! engine with its alerts as JSON.

use cep::engine::{Engine, Output};
use proptest::prelude::*;

/// (key number, time ms, amount) of each event.
pub type Card = (u8, i64, u32);

/// Up to 40 events on keys `k0` and `k1`, 0–3 ms apart, amounts drawn
/// from `amounts`.
pub fn stream(amounts: Vec<u32>) -> impl Strategy<Value = Vec<Card>> {
    prop::collection::vec((0u8..2, 0i64..4, prop::sample::select(amounts)), 0..40).prop_map(
        |steps| {
            let mut ts = 0;
            steps
                .into_iter()
                .map(|(key, gap, amount)| {
                    ts += gap;
                    (key, ts, amount)
                })
                .collect()
        },
    )
}

/// Pushes `events` (stream `s`, fields `k`, `ts`, `amount`) and flushes:
/// the alerts as JSON, and the runs open before the flush. The alerts of
/// each push are in order by key, and for each key in the order they came:
/// which key's alert comes first within one push is not fixed (a run
/// whose window an unmatched event would close is expired with the timers
/// instead when its pattern passes over such events, and a pattern whose
/// condition reads the run cannot).
pub fn alerts(engine: &mut Engine, events: &[Card]) -> (Vec<String>, usize) {
    let mut out = Output::default();
    let mut alerts = Vec::new();
    let mut take = |out: &mut Output| {
        out.alerts
            .sort_by(|a, b| a.key.as_str().cmp(&b.key.as_str()));
        alerts.extend(
            out.alerts
                .drain(..)
                .map(|a| serde_json::to_string(&a).unwrap()),
        );
    };
    for (n, &(key, ts, amount)) in events.iter().enumerate() {
        let line = format!(r#"{{"k":"k{key}","ts":{ts},"amount":{amount}}}"#);
        engine
            .push_json(Some("s"), line.as_bytes(), n as u64, &mut out)
            .unwrap();
        take(&mut out);
    }
    let open = engine.stats().iter().map(|s| s.active_runs).sum();
    engine.flush(&mut out);
    take(&mut out);
    (alerts, open)
}
