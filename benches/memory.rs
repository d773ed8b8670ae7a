//! Resident memory per key holding one open run (issue 12: at most 200
//! bytes per key, 10M keys in under 4 GiB).
//!
//! `a then b within 1d`; every key receives one `a` (a small charge), so
//! every key holds exactly one open run waiting for its `b`, and its timer.
//! Each key count runs in a process of its own (this program again), and
//! the growth of resident memory (RSS, `/proc/self/statm`) while the engine
//! holds the keys, divided by the keys, is reported. Events are built
//! already decoded (as in `engine/*`), in batches, so the input itself is
//! not resident.
//!
//! Run: `cargo bench --bench memory` (`KEYS=1000000` for one point).

use cep::compiler::compile_source;
use cep::engine::{Engine, EngineConfig, Output};
use cep::event::{Event, Key, Slots};
use cep::value::Value;

#[path = "support/rss.rs"]
mod rss;
use rss::rss_bytes;

const PATTERN: &str = "pattern small_then_large
  from cards key card time ts within 1d
  match a then b
  define a as amount < 10, b as amount > 500
end";

fn measure(keys: usize) {
    let automata = compile_source("memory.cep", PATTERN).expect("compiles");
    let amount = automata[0]
        .fields
        .paths
        .iter()
        .position(|p| p == &["amount".to_string()])
        .expect("reads amount");
    let slots = automata[0].fields.paths.len();
    let mut engine = Engine::new(automata, EngineConfig::default());
    let mut out = Output::default();
    let before = rss_bytes();
    let mut name = String::new();
    for k in 0..keys {
        use std::fmt::Write;
        name.clear();
        let _ = write!(name, "card-{k:08}");
        let ev = Event {
            time: 1_700_000_000_000 + k as i64,
            key: Key::new(&name),
            slots: Slots::from_fn(slots, |s| {
                if s == amount {
                    Value::Float(5.0)
                } else {
                    Value::Missing
                }
            }),
            hash: k as u64,
            raw: None,
        };
        engine.push_event(0, ev, &mut out);
    }
    let grown = rss_bytes().saturating_sub(before);
    let stats = engine.stats();
    assert_eq!(stats[0].active_runs, keys, "every key holds one open run");
    println!(
        "| {keys} | {} | {:.2} GiB | {} |",
        grown / keys as u64,
        grown as f64 / (1u64 << 30) as f64,
        stats[0].active_keys
    );
    std::hint::black_box(&engine);
}

fn main() {
    if let Ok(keys) = std::env::var("KEYS") {
        measure(keys.parse().expect("KEYS is a number"));
        return;
    }
    println!("`a then b within 1d`, every key holding one open run\n");
    println!("| keys | RSS per key (bytes) | RSS grown | keys in the engine |");
    println!("| --- | --- | --- | --- |");
    let me = std::env::current_exe().expect("own path");
    for keys in [100_000usize, 1_000_000, 10_000_000] {
        let status = std::process::Command::new(&me)
            .env("KEYS", keys.to_string())
            .status()
            .expect("runs itself");
        assert!(status.success(), "{keys} keys failed");
    }
}
