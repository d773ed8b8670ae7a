//! Fetching ahead is only a hint: events pushed as a batch
//! (`Engine::push_events`, which fetches the key entries of the events a
//! few places on) raise the same alerts and leave the same state as the
//! same events pushed one by one, with enough keys for the key map to
//! prefetch (10,000 and more), runs that leave their entry for a list of
//! their own and come back, and timers firing on the way.

use cep::compiler::{compile_source, Automaton};
use cep::engine::{Engine, EngineConfig, Output};
use cep::event::{Event, Key, Slots};
use cep::gen::SplitMix64;
use cep::value::Value;

const PATTERN: &str = "pattern p from cards key card time ts within 2s
  match small then large
  define small as amount < 10, large as amount > 500
  on timeout emit amount = small.amount
end";

/// Card events on `keys` keys, 1 ms apart: a fifth small, a tenth large.
fn events(automaton: &Automaton, keys: u64, n: usize, seed: u64) -> Vec<Event> {
    let paths = &automaton.fields.paths;
    let amount = paths.iter().position(|p| p == &["amount"]).unwrap();
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|i| {
            let key = rng.below(keys);
            let value = match rng.below(10) {
                0 | 1 => 5.0,
                2 => 600.0,
                _ => 50.0,
            };
            // Some events a little out of order, for a buffer to hold.
            let jitter = rng.below(3) as i64;
            Event {
                time: i as i64 - jitter,
                key: Key::new(&format!("card-{key}")),
                slots: Slots::from_fn(paths.len(), |s| {
                    if s == amount {
                        Value::Float(value)
                    } else {
                        Value::Missing
                    }
                }),
                hash: i as u64,
                raw: None,
            }
        })
        .collect()
}

/// Alerts, late events and the state left, as text.
fn run(lateness_ms: i64, batch: Option<usize>, input: &[Event]) -> (String, String, String) {
    let automata = compile_source("p.cep", PATTERN).unwrap();
    let config = EngineConfig {
        lateness_ms,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(automata, config);
    let mut out = Output::default();
    match batch {
        None => input
            .iter()
            .for_each(|ev| engine.push_event(0, ev.clone(), &mut out)),
        Some(size) => {
            for chunk in input.chunks(size) {
                engine.push_events(0, &mut chunk.to_vec(), &mut out);
            }
        }
    }
    let state = serde_json::to_string(&engine.snapshot()).unwrap();
    engine.flush(&mut out);
    let late: Vec<i64> = out.late.iter().map(|l| l.event_time).collect();
    (
        serde_json::to_string(&out.alerts).unwrap(),
        format!("{late:?}"),
        state,
    )
}

#[test]
fn a_batch_raises_what_single_events_raise() {
    let automata = compile_source("p.cep", PATTERN).unwrap();
    let input = events(&automata[0], 30_000, 120_000, 5);
    for lateness in [0, 20] {
        let one_by_one = run(lateness, None, &input);
        assert!(one_by_one.0.matches("\"pattern\"").count() > 1_000);
        for batch in [1, 7, 4_096] {
            let batched = run(lateness, Some(batch), &input);
            assert!(
                batched == one_by_one,
                "lateness {lateness} ms, batches of {batch}: output differs"
            );
        }
    }
}
