//! Events that change nothing skipped, or a key's one waiting run passed
//! by in place, change no alert.
//!
//! - An event that no entry of a key's one run takes, that no negation
//!   matches, and that starts nothing only makes the run no longer fresh;
//!   the matcher then updates the run where it is instead of stepping it
//!   (`Step::passes_by`).
//! - A pattern whose steps are all relaxed, without negations, history or
//!   conditions on earlier events, passes over an event none of its
//!   conditions takes before the reorder buffer
//!   (`Automaton::unmatched_inert`).
//!
//! A traced key always takes the full step (its notes need it), and a
//! pattern with a traced key passes over nothing, so each pattern here runs
//! over the same random stream twice: with its key traced and without.
//! Alerts must be identical (ids, fields, and each key's order within a
//! push), and so must the runs left open.

use cep::compiler::compile_source;
use cep::engine::{Engine, EngineConfig};
use proptest::prelude::*;

use crate::card_streams;
use card_streams::Card;

const S: &str = "small as amount < 10";
const M: &str = "mid as amount > 40 and amount < 100";
const L: &str = "large as amount > 500";

/// (what follows `within 20ms`, the match, the variables defined, what the
/// alert carries).
const PATTERNS: &[(&str, &str, &[&str], &str)] = &[
    (
        "",
        "small then large",
        &[S, L],
        "s = small.amount, l = large.amount",
    ),
    ("", "small next large", &[S, L], "l = large.amount"),
    ("", "small then any large", &[S, L], "l = large.amount"),
    (
        "",
        "small then large",
        &[S, "large as amount > small.amount * 100"],
        "l = large.amount",
    ),
    (
        "",
        "small then mid then large",
        &[S, M, L],
        "m = mid.amount",
    ),
    (
        "",
        "small then not mid then large",
        &[S, M, L],
        "l = large.amount",
    ),
    (
        "",
        "small next not mid then large",
        &[S, M, L],
        "l = large.amount",
    ),
    ("", "small then not large", &[S, L], "s = small.amount"),
    ("", "small next not large", &[S, L], "s = small.amount"),
    ("", "small then large{2,}", &[S, L], "n = count(large)"),
    ("", "small then large{1,}?", &[S, L], "n = count(large)"),
    (
        "",
        "small then mid? then large",
        &[S, M, L],
        "l = large.amount",
    ),
    (
        " max gap 4ms",
        "small then large",
        &[S, L],
        "l = large.amount",
    ),
    (
        " skip none",
        "small then large",
        &[S, L],
        "l = large.amount",
    ),
    (
        " skip to next",
        "small{1,} then large",
        &[S, L],
        "n = count(small)",
    ),
    ("", "small{2,} then large", &[S, L], "n = count(small)"),
];

fn source((extra, matching, define, emit): (&str, &str, &[&str], &str)) -> String {
    format!(
        "pattern p from s key k time ts within 20ms{extra}
           match {matching}
           define {}
           emit {emit}
         end",
        define.join(", ")
    )
}

/// Alerts as JSON, and the runs left open before the final flush.
fn run(src: &str, events: &[Card], traced: bool) -> (Vec<String>, usize) {
    let automata = compile_source("p.cep", src).unwrap_or_else(|e| panic!("{src}: {e:?}"));
    let mut engine = Engine::new(automata, EngineConfig::default());
    if traced {
        assert!(engine.trace("p", "k0"));
    }
    card_streams::alerts(&mut engine, events)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn passing_a_run_by_in_place_changes_no_alert(events in card_streams::stream(vec![1, 2, 50, 70, 200, 600, 900])) {
        for &p in PATTERNS {
            let src = source(p);
            prop_assert_eq!(run(&src, &events, false), run(&src, &events, true), "{}", src);
        }
    }
}

#[test]
fn only_relaxed_patterns_on_the_event_alone_pass_over_events() {
    let passes_over: Vec<(String, bool)> = PATTERNS
        .iter()
        .map(|&p| {
            let src = source(p);
            let a = compile_source("p.cep", &src).unwrap().remove(0);
            (
                p.1.to_string() + " / " + p.2[p.2.len() - 1],
                a.unmatched_inert,
            )
        })
        .collect();
    let expected = [
        true,  // small then large
        false, // small next large: strict
        true,  // small then any large
        false, // large as amount > small.amount * 100: reads a bound event
        true,  // small then mid then large
        false, // then not mid: a negation
        false, // next not mid
        false, // then not large
        false, // next not large
        true,  // small then large{2,}
        true,  // small then large{1,}?
        true,  // small then mid? then large
        true,  // max gap
        true,  // skip none
        true,  // skip to next
        true,  // small{2,} then large
    ];
    let got: Vec<bool> = passes_over.iter().map(|(_, b)| *b).collect();
    assert_eq!(got, expected, "{passes_over:#?}");
    let history = "pattern p from s key k time ts
        match big define big as amount > 2 * avg(amount) over 1h emit a = big.amount end";
    let a = compile_source("p.cep", history).unwrap().remove(0);
    assert!(!a.unmatched_inert, "a key's history records every event");
}

#[test]
fn every_pattern_compiles_and_matches() {
    // A stream where each pattern has something to find, so the property
    // above compares more than empty lists.
    let events: Vec<Card> = [1, 50, 70, 600, 900, 2, 600, 50, 900, 1, 600, 1, 50, 70]
        .iter()
        .enumerate()
        .map(|(n, &amount)| (0, n as i64, amount))
        .collect();
    for &p in PATTERNS {
        let src = source(p);
        let (alerts, _) = run(&src, &events, false);
        assert!(!alerts.is_empty(), "{src}: no alert");
    }
}
