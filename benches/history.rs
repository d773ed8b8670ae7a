//! What per-key history costs in memory and checkpoint bytes per key.
//!
//! Four shapes, each in a process of its own and held by a live engine
//! while its resident memory (RSS, from /proc/self/statm) and its
//! snapshot's JSON size are measured:
//!
//! - `avg 30d, 1 bucket`: 100k cards, 10 charges each within an hour (one
//!   bucket of `avg(amount) over 30d`: the first bucket lives inline).
//! - `avg 30d, 33 buckets`: 20k cards, 66 charges each spread over 30 days
//!   (every bucket of the window in use: the bound).
//! - `seen 90d, 5 values`: 100k cards, 10 charges with 5 distinct values.
//! - `seen 90d, at the cap`: 2k cards, 300 distinct merchants each (256
//!   kept, the rest forgotten and counted).
//!
//! Bytes per key = growth / keys. Run: `cargo bench --bench history`.

use cep::compiler::compile_source;
use cep::engine::{Engine, EngineConfig, Output};

#[path = "support/rss.rs"]
mod rss;
use rss::rss_bytes;

const DAY: i64 = 86_400_000;
const T0: i64 = 1_700_000_000_000;

const AVG: &str = r#"pattern unusually_large
  from cards key card.id time ts
  match big
  define big as amount > 100 and amount > 5 * avg(amount) over 30d with at least 5 events
end
"#;

const SEEN: &str = r#"pattern new_value
  from cards key card.id time ts
  match first_use
  define first_use as value not seen in 90d with at least 3 events
end
"#;

struct Shape {
    name: &'static str,
    pattern: &'static str,
    keys: usize,
    events_per_key: usize,
    /// Time between a key's events (ms, at least one per key).
    spacing: i64,
    /// Distinct values of `value` per key.
    values: usize,
}

fn measure(s: &Shape) {
    let automata = compile_source("bench", s.pattern).expect("compiles");
    let mut engine = Engine::new(automata, EngineConfig::default());
    let mut out = Output::default();
    let before = rss_bytes();
    let mut n = 0u64;
    for round in 0..s.events_per_key {
        for key in 0..s.keys {
            // In time order: late events would be dropped.
            let step = (s.spacing / s.keys as i64).max(1);
            let ts = T0 + (round * s.keys + key) as i64 * step;
            let amount = 10 + (key * 7 + round * 13) % 90;
            let value = round % s.values;
            let line = format!(
                r#"{{"card":{{"id":"card-{key:07}"}},"ts":{ts},"amount":{amount},"value":"v{value:04}"}}"#
            );
            engine
                .push_json(None, line.as_bytes(), n, &mut out)
                .expect("valid JSON");
            out.alerts.clear();
            n += 1;
        }
    }
    let grown = rss_bytes().saturating_sub(before);
    let snap = serde_json::to_vec(&engine.snapshot()).expect("serialises");
    let stats = engine.stats();
    let keys = stats[0].active_keys;
    println!(
        "{:<24} {:>7} keys {:>5} ev/key  RSS {:>6} B/key  checkpoint {:>6} B/key  forgotten {}",
        s.name,
        keys,
        s.events_per_key,
        grown / keys.max(1) as u64,
        snap.len() / keys.max(1),
        stats[0].matched.history_evictions
    );
}

/// Each shape runs in a process of its own (this program again, with the
/// shape's number), so that memory freed by one does not hide the next's.
fn main() {
    let shapes = [
        Shape {
            name: "avg 30d, 1 bucket",
            pattern: AVG,
            keys: 100_000,
            events_per_key: 10,
            spacing: 60_000,
            values: 1,
        },
        Shape {
            name: "avg 30d, 33 buckets",
            pattern: AVG,
            keys: 20_000,
            events_per_key: 66,
            spacing: 30 * DAY / 66,
            values: 1,
        },
        Shape {
            name: "seen 90d, 5 values",
            pattern: SEEN,
            keys: 100_000,
            events_per_key: 10,
            spacing: 60_000,
            values: 5,
        },
        Shape {
            name: "seen 90d, at the cap",
            pattern: SEEN,
            keys: 2_000,
            events_per_key: 300,
            spacing: 60_000,
            values: 300,
        },
    ];
    match std::env::args()
        .nth(1)
        .and_then(|a| a.parse::<usize>().ok())
    {
        Some(i) if i < shapes.len() => measure(&shapes[i]),
        _ => {
            let me = std::env::current_exe().expect("own path");
            for i in 0..shapes.len() {
                let status = std::process::Command::new(&me)
                    .arg(i.to_string())
                    .status()
                    .expect("runs");
                assert!(status.success());
            }
        }
    }
}
