//! A key's runs stay in its entry while they fit there.

use super::*;
use crate::compiler::compile_source;
use crate::event::Slots;
use crate::value::Value;

const PATTERN: &str = "pattern p from s key k time ts within 1h
  match small then large
  define small as amount < 10, large as amount > 500
end";

fn charge(a: &Automaton, minute: i64, amount: f64) -> Event {
    let at = a
        .fields
        .paths
        .iter()
        .position(|p| p == &["amount"])
        .unwrap();
    Event {
        time: minute * 60_000,
        key: Key::new("card"),
        slots: Slots::from_fn(a.fields.paths.len(), |s| {
            if s == at {
                Value::Float(amount)
            } else {
                Value::Missing
            }
        }),
        hash: minute as u64,
        raw: None,
    }
}

#[test]
fn runs_come_back_into_the_entry() {
    let a = &compile_source("t.cep", PATTERN).unwrap()[0];
    let lim = Limits {
        max_runs_per_key: 100,
        include_events: false,
        track_changes: false,
        start_runs: true,
    };
    let mut m: Matcher = Matcher::default();
    let mut out = Vec::new();
    let runs = |m: &Matcher| {
        let ks = m.keys.get(&Key::new("card")).unwrap();
        (ks.runs.len(), ks.runs.spilled())
    };
    m.on_event(a, charge(a, 0, 5.0), lim, &mut out);
    // Events its one run lets pass leave it where it is.
    for minute in 1..5 {
        m.on_event(a, charge(a, minute, 50.0), lim, &mut out);
        assert_eq!(runs(&m), (1, false), "minute {minute}");
    }
    // A second small charge: two runs, a list of their own.
    m.on_event(a, charge(a, 30, 5.0), lim, &mut out);
    assert_eq!(runs(&m), (2, true));
    // The first run's hour ends: one run again, back in the entry, both
    // when an event finds it over and when its deadline fires.
    m.on_event(a, charge(a, 61, 50.0), lim, &mut out);
    assert_eq!(runs(&m), (1, false));
    m.on_event(a, charge(a, 62, 5.0), lim, &mut out);
    assert_eq!(runs(&m), (2, true));
    m.advance(a, 90 * 60_000, lim, &mut out);
    assert_eq!(runs(&m), (1, false));
    assert!(out.is_empty());
}

#[test]
fn a_waiting_key_fits_two_cache_lines() {
    // The run with its first binding inline, its start read from that
    // binding (see `run`'s module doc): 72 bytes, and the key's entry 128.
    assert_eq!(std::mem::size_of::<Run>(), 72);
    assert_eq!(
        KeyMap::<KeyRuns<crate::engine::history_slot::NoHistory>>::entry_size(),
        128
    );
}
