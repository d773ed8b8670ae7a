//! Replacing a pattern in drain mode: the old version finishes the runs it
//! has (its alerts carry its version) and starts none; the new version
//! starts runs at events after the swap; the old one goes with its last
//! run, and a snapshot taken mid-drain restores it.

use std::sync::Arc;

use cep::compiler::{compile_source, Automaton};
use cep::engine::{Engine, EngineConfig, Output, Snapshot};

fn pattern(threshold: u32, version: u32) -> Vec<Automaton> {
    let src = format!(
        "pattern small_then_large\n  from cards key card time ts within 5m\n  match small then large\n  define small as amount < 10, large as amount > {threshold}\nend\n"
    );
    compile_source("p.cep", &src)
        .unwrap()
        .into_iter()
        .map(|a| a.with_meta(version, false))
        .collect()
}

fn push(e: &mut Engine, card: &str, ts: i64, amount: f64, out: &mut Output) {
    let doc = serde_json::json!({"card": card, "ts": ts, "amount": amount});
    e.push(None, &Arc::new(doc), ts as u64, out);
}

fn alerts(out: &mut Output) -> Vec<(String, u32)> {
    out.alerts
        .drain(..)
        .map(|a| (a.key.as_str().unwrap().to_string(), a.version))
        .collect()
}

fn run(restart_mid_drain: bool) -> Vec<(String, u32)> {
    let mut e = Engine::new(pattern(500, 1), EngineConfig::default());
    let mut out = Output::default();
    push(&mut e, "c1", 1_000, 5.0, &mut out);
    push(&mut e, "c3", 1_500, 5.0, &mut out);
    // v2: a large charge is now over 400; c1's and c3's runs stay with v1.
    let fresh = e.swap_patterns_with(pattern(400, 2), |name| name == "small_then_large");
    assert_eq!(fresh, ["small_then_large"]);
    assert!(e.draining());
    push(&mut e, "c2", 2_000, 5.0, &mut out);
    if restart_mid_drain {
        let text = serde_json::to_string(&e.snapshot()).unwrap();
        let snap: Snapshot = serde_json::from_str(&text).unwrap();
        e = Engine::new(pattern(400, 2), EngineConfig::default());
        assert!(e.restore(snap).is_empty());
        assert!(e.draining(), "the drain survives a restart");
    }
    // c1 completes under v1 (450 is large for v2 too: no second alert);
    // c2 under v2; c3's v1 run expires.
    push(&mut e, "c1", 3_000, 450.0, &mut out);
    push(&mut e, "c1", 3_500, 600.0, &mut out);
    push(&mut e, "c2", 4_000, 450.0, &mut out);
    let stats = e.stats();
    assert_eq!(stats.iter().filter(|s| s.draining).count(), 1);
    push(&mut e, "c9", 400_000, 50.0, &mut out);
    assert_eq!(e.retire_drained(), [("small_then_large".to_string(), 1)]);
    assert!(!e.draining());
    e.flush(&mut out);
    alerts(&mut out)
}

#[test]
fn the_old_version_finishes_its_runs_and_the_new_one_starts_after_the_swap() {
    let got = run(false);
    assert_eq!(got, [("c1".to_string(), 1), ("c2".to_string(), 2)]);
}

#[test]
fn a_restart_in_the_middle_of_a_drain_keeps_it() {
    assert_eq!(run(true), run(false));
}

#[test]
fn without_drain_the_replaced_pattern_drops_its_runs() {
    let mut e = Engine::new(pattern(500, 1), EngineConfig::default());
    let mut out = Output::default();
    push(&mut e, "c1", 1_000, 5.0, &mut out);
    e.swap_patterns(pattern(400, 2));
    assert!(!e.draining());
    push(&mut e, "c1", 3_000, 600.0, &mut out);
    e.flush(&mut out);
    assert!(alerts(&mut out).is_empty());
}

fn history_pattern(factor: u32, window: &str) -> Vec<Automaton> {
    let src = format!(
        "pattern unusual\n  from cards key card time ts\n  match big\n  define big as amount > {factor} * avg(amount) over {window} with at least 3 events\nend\n"
    );
    compile_source("h.cep", &src).unwrap()
}

fn charge(e: &mut Engine, ts: i64, amount: f64, out: &mut Output) {
    let doc = serde_json::json!({"card": "c1", "ts": ts, "amount": amount});
    e.push(None, &Arc::new(doc), ts as u64, out);
}

/// A changed pattern keeps what its old version knew of each key's past
/// (same fields and windows), in drain and restart mode alike: a card is
/// not new again because a threshold moved. A window the old version did
/// not keep starts empty.
#[test]
fn a_replaced_pattern_keeps_the_history_both_versions_read() {
    for drain in [true, false] {
        for (window, alerts) in [("1d", 1), ("2d", 0)] {
            let mut e = Engine::new(history_pattern(5, "1d"), EngineConfig::default());
            let mut out = Output::default();
            for ts in [1_000, 2_000, 3_000] {
                charge(&mut e, ts, 20.0, &mut out);
            }
            e.swap_patterns_with(history_pattern(4, window), |_| drain);
            // 90 is over 4 times the card's usual 20, if the usual is known.
            charge(&mut e, 5_000, 90.0, &mut out);
            assert_eq!(
                out.alerts.len(),
                alerts,
                "drain {drain}, new window {window}"
            );
        }
    }
}
