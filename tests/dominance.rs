//! Dropping dominated runs changes no alert.
//!
//! The matcher drops a younger run that an older one of the same key is
//! sure to outlive (see `src/compiler/dominance.rs`); that is only allowed
//! when no condition reads the run. Each pattern here is run twice over the
//! same random stream: as written, and with `and count(v) >= 0` added to a
//! condition, which is always true but reads the run, so the matcher keeps
//! every run. Alerts must be identical (ids, fields, and each key's order
//! within a push: see `card_streams::alerts`).

use cep::compiler::compile_source;
use cep::engine::{Engine, EngineConfig};
use proptest::prelude::*;

use crate::card_streams;
use card_streams::Card;

/// (pattern with `{COND}` where the always-true, run-reading test goes).
const PATTERNS: &[&str] = &[
    "pattern p from s key k time ts within 20ms
       match big{1,} define big as amount > 100 {COND big}
       emit n = count(big), first = first(big.amount), last = last(big.amount) end",
    "pattern p from s key k time ts within 20ms
       match big{2,} define big as amount > 100 {COND big} emit n = count(big) end",
    "pattern p from s key k time ts within 20ms
       match big{1,} strict define big as amount > 100 {COND big} emit n = count(big) end",
    "pattern p from s key k time ts within 20ms
       match small then big{1,} define small as amount < 10, big as amount > 100 {COND big}
       emit n = count(big) end",
    "pattern p from s key k time ts within 20ms
       match big{1,} then small define small as amount < 10, big as amount > 100 {COND big}
       emit n = count(big) end",
    "pattern p from s key k time ts within 20ms
       match big{1,}? define big as amount > 100 {COND big} emit n = count(big) end",
    "pattern p from s key k time ts within 20ms
       match big{1,} then not small define small as amount < 10, big as amount > 100 {COND big}
       emit n = count(big) end",
    "pattern p from s key k time ts within 20ms
       match big{1,} next not small define small as amount < 10, big as amount > 100 {COND big}
       emit n = count(big) end",
    "pattern p from s key k time ts within 20ms
       match big+ then mid* define big as amount > 100 {COND big}, mid as amount > 40
       emit n = count(big), m = count(mid) end",
    "pattern p from s key k time ts within 20ms skip to next
       match big{1,} define big as amount > 100 {COND big} emit n = count(big) end",
    "pattern p from s key k time ts within 20ms skip none
       match big{1,} define big as amount > 100 {COND big} emit n = count(big) end",
    "pattern p from s key k time ts within 20ms max gap 4ms
       match big{1,} define big as amount > 100 {COND big} emit n = count(big) end",
];

fn run(src: &str, events: &[Card]) -> Vec<String> {
    let automata = compile_source("p.cep", src).unwrap_or_else(|e| panic!("{src}: {e:?}"));
    let mut engine = Engine::new(automata, EngineConfig::default());
    card_streams::alerts(&mut engine, events).0
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn dropping_dominated_runs_changes_no_alert(events in card_streams::stream(vec![1, 50, 200, 200, 600])) {
        for p in PATTERNS {
            let plain = p.replace("{COND big}", "");
            let every_run = p.replace("{COND big}", "and count(big) >= 0");
            prop_assert_eq!(run(&plain, &events), run(&every_run, &events), "{}", plain);
        }
    }
}

#[test]
fn a_long_burst_keeps_one_run() {
    // 5,000 big charges of one card, then a small one: one match of all of
    // them. (Without dropping dominated runs this took 12.5M run steps; its
    // speed is measured in `cargo bench --bench curves`, not here.)
    let mut events: Vec<Card> = (0..5_000).map(|n| (0, n / 10, 200)).collect();
    events.push((0, 600, 1));
    let src = PATTERNS[0]
        .replace("within 20ms", "within 1h")
        .replace("{COND big}", "");
    let alerts = run(&src, &events);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert!(alerts[0].contains(r#""n":5000"#), "{}", alerts[0]);
}
