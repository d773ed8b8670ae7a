//! The four card-fraud patterns (`patterns/fraud/*.cep`) against a
//! brute-force reference.
//!
//! The reference is written from the documented semantics only
//! (`within` strict, relaxed `then` = skip-till-next-match, greedy tail,
//! strict contiguity, after-match skip past the last event), as plainly as
//! possible: group the events by card, keep them in event-time order (ties
//! in input order), and find matches with nested loops. The skip rule gives
//! the loops their shape: matches are found in the order the engine would
//! emit them (the one that completes first wins; among those, the run that
//! started first), and once a match ending at position `j` is found, no
//! later match may use an event at or before `j` as its start.
//!
//! Streams come from [`cep::gen::CardGen`]: several seeds, a few thousand
//! events over a few dozen cards (so matches are frequent), amounts exactly
//! on the 10/100/500 boundaries, and one stream with times rounded to 10 s so
//! that events exactly 60 s, 5 min, 10 min or 1 h apart are common. The
//! engine and the reference must produce the same multiset of
//! `(card, kind, bound events)` for every pattern.

use std::collections::BTreeMap;
use std::sync::Arc;

use cep::compiler::compile_source;
use cep::engine::{AlertKind, Engine, EngineConfig, Output};
use cep::gen::{shuffle_within_by, ts_of, CardGen, Fraud};
use serde_json::Value;

const SECOND: i64 = 1_000;
const MINUTE: i64 = 60 * SECOND;
const HOUR: i64 = 60 * MINUTE;

/// One alert, as compared: card, kind, and (variable, event number) pairs
/// in binding order. Event numbers are 1-based input positions.
type Found = (String, &'static str, Vec<(String, u64)>);

/// A transaction as the reference sees it.
#[derive(Clone, Debug)]
struct Tx {
    /// 1-based position in the generated (time-ordered) stream; the engine
    /// gets it as the event hash, so alerts name events by it.
    id: u64,
    ts: i64,
    amount: f64,
    country: Option<String>,
}

/// Each card's transactions in event-time order (ties: input order).
fn by_card(events: &[Value]) -> BTreeMap<String, Vec<Tx>> {
    let mut cards: BTreeMap<String, Vec<Tx>> = BTreeMap::new();
    for (n, e) in events.iter().enumerate() {
        cards
            .entry(e["card"]["id"].as_str().unwrap().to_string())
            .or_default()
            .push(Tx {
                id: n as u64 + 1,
                ts: ts_of(e),
                amount: e["amount"].as_f64().unwrap(),
                country: e["country"].as_str().map(str::to_string),
            });
    }
    for txs in cards.values_mut() {
        txs.sort_by_key(|t| (t.ts, t.id)); // stable on ties
    }
    cards
}

fn bound(var: &str, txs: &[&Tx]) -> Vec<(String, u64)> {
    txs.iter().map(|t| (var.to_string(), t.id)).collect()
}

/// `small then large`, small < 10, large > 500, within 5 min; a small
/// charge never followed by a large one within its window times out.
fn ref_small_then_large(card: &str, e: &[Tx], out: &mut Vec<Found>) {
    let within = 5 * MINUTE;
    let small = |t: &Tx| t.amount < 10.0;
    let large = |t: &Tx| t.amount > 500.0;
    let n = e.len();
    // Matches: the earliest large that has an open small before it (at or
    // after the skip point p), paired with the oldest such small.
    let mut p = 0;
    loop {
        let mut found = None;
        'search: for j in p..n {
            if !large(&e[j]) {
                continue;
            }
            for i in p..j {
                if small(&e[i]) && e[j].ts - e[i].ts < within {
                    found = Some((i, j));
                    break 'search;
                }
            }
        }
        let Some((i, j)) = found else { break };
        let mut b = bound("small", &[&e[i]]);
        b.extend(bound("large", &[&e[j]]));
        out.push((card.to_string(), "match", b));
        p = j + 1;
    }
    // Timeouts: a small whose window holds no large after it. (One that
    // does is either matched or dropped by the skip of a match that ended
    // inside its window.)
    for i in 0..n {
        if small(&e[i]) && !(i + 1..n).any(|k| large(&e[k]) && e[k].ts - e[i].ts < within) {
            out.push((card.to_string(), "timeout", bound("small", &[&e[i]])));
        }
    }
}

/// `big{3,}` greedy, relaxed, big > 100, within 10 min: a run from each
/// big charge collects every big charge of its window; at least three make
/// one match; skip past its last event.
fn ref_burst(card: &str, e: &[Tx], out: &mut Vec<Found>) {
    let within = 10 * MINUTE;
    let big = |t: &Tx| t.amount > 100.0;
    let n = e.len();
    let mut p = 0;
    for i in 0..n {
        if i < p || !big(&e[i]) {
            continue;
        }
        let window: Vec<usize> = (i..n)
            .filter(|&k| big(&e[k]) && e[k].ts - e[i].ts < within)
            .collect();
        if window.len() >= 3 {
            let txs: Vec<&Tx> = window.iter().map(|&k| &e[k]).collect();
            out.push((card.to_string(), "match", bound("big", &txs)));
            p = window.last().unwrap() + 1;
        }
    }
}

/// `a then b`, b's country differs from a's, within 1 h.
fn ref_two_countries(card: &str, e: &[Tx], out: &mut Vec<Found>) {
    let within = HOUR;
    let n = e.len();
    let mut p = 0;
    loop {
        let mut found = None;
        'search: for j in p..n {
            for i in p..j {
                let (Some(ci), Some(cj)) = (&e[i].country, &e[j].country) else {
                    continue;
                };
                if ci != cj && e[j].ts - e[i].ts < within {
                    found = Some((i, j));
                    break 'search;
                }
            }
        }
        let Some((i, j)) = found else { break };
        let mut b = bound("a", &[&e[i]]);
        b.extend(bound("b", &[&e[j]]));
        out.push((card.to_string(), "match", b));
        p = j + 1;
    }
}

/// `r{5} strict`, each amount above the previous, within 60 s: five
/// consecutive transactions of the card.
fn ref_rising(card: &str, e: &[Tx], out: &mut Vec<Found>) {
    let within = 60 * SECOND;
    let mut i = 0;
    while i + 5 <= e.len() {
        let w = &e[i..i + 5];
        let rising = w.windows(2).all(|p| p[1].amount > p[0].amount);
        if rising && w[4].ts - w[0].ts < within {
            let txs: Vec<&Tx> = w.iter().collect();
            out.push((card.to_string(), "match", bound("r", &txs)));
            i += 5;
        } else {
            i += 1;
        }
    }
}

type Reference = fn(&str, &[Tx], &mut Vec<Found>);

const PATTERNS: [(&str, Reference); 4] = [
    ("small_then_large", ref_small_then_large),
    ("burst_over_100", ref_burst),
    ("two_countries", ref_two_countries),
    ("rising_amounts", ref_rising),
];

fn reference(pattern: &str, events: &[Value]) -> Vec<Found> {
    let f = PATTERNS.iter().find(|(n, _)| *n == pattern).unwrap().1;
    let mut out = Vec::new();
    for (card, txs) in by_card(events) {
        f(&card, &txs, &mut out);
    }
    out.sort();
    out
}

/// Runs the engine over `order` (indices into `events`) with the given
/// allowed lateness; returns each pattern's alerts.
fn engine(pattern: &str, events: &[Value], order: &[usize], lateness_ms: i64) -> Vec<Found> {
    let path = format!("patterns/fraud/{pattern}.cep");
    let src = std::fs::read_to_string(&path).unwrap();
    let automata = compile_source(&path, &src).unwrap_or_else(|d| panic!("{}", d.render()));
    let mut engine = Engine::new(
        automata,
        EngineConfig {
            lateness_ms,
            max_runs_per_key: 1 << 30,
            include_events: false,
            external_watermark: false,
        },
    );
    let mut out = Output::default();
    for &n in order {
        engine.push(None, &Arc::new(events[n].clone()), n as u64 + 1, &mut out);
    }
    engine.flush(&mut out);
    assert!(out.late.is_empty(), "{pattern}: late events");
    assert!(out.rejected.is_empty(), "{pattern}: rejected events");
    for s in engine.stats() {
        assert_eq!(s.matched.runs_dropped, 0, "{pattern}: runs dropped");
    }
    let mut found: Vec<Found> = out
        .alerts
        .iter()
        .map(|a| {
            let kind = match a.kind {
                AlertKind::Match => "match",
                AlertKind::Timeout => "timeout",
            };
            (a.key.as_str().unwrap().to_string(), kind, a.bound.clone())
        })
        .collect();
    found.sort();
    found
}

/// A readable account of a disagreement: what only one side found, with
/// the card's events around it.
fn explain(pattern: &str, events: &[Value], ours: &[Found], theirs: &[Found]) -> String {
    let only = |a: &[Found], b: &[Found]| -> Vec<Found> {
        let mut b = b.to_vec();
        let mut rest = Vec::new();
        for x in a {
            match b.iter().position(|y| y == x) {
                Some(i) => {
                    b.remove(i);
                }
                None => rest.push(x.clone()),
            }
        }
        rest
    };
    let engine_only = only(ours, theirs);
    let reference_only = only(theirs, ours);
    let mut s = format!(
        "{pattern}: engine {} alerts, reference {}\n",
        ours.len(),
        theirs.len()
    );
    let cards = by_card(events);
    for (label, list) in [
        ("engine only", &engine_only),
        ("reference only", &reference_only),
    ] {
        for (card, kind, b) in list.iter().take(5) {
            s.push_str(&format!("  {label}: {card} {kind} {b:?}\n"));
            let ids: Vec<u64> = b.iter().map(|x| x.1).collect();
            let (lo, hi) = (*ids.iter().min().unwrap(), *ids.iter().max().unwrap());
            for t in &cards[card] {
                if t.id + 40 >= lo && t.id <= hi + 40 {
                    s.push_str(&format!(
                        "      #{} ts={} amount={} country={:?}\n",
                        t.id, t.ts, t.amount, t.country
                    ));
                }
            }
        }
    }
    s
}

struct Stream {
    name: &'static str,
    events: Vec<Value>,
    /// Event times are distinct, so a shuffled arrival order is equivalent.
    distinct_times: bool,
}

fn streams() -> Vec<Stream> {
    let base = |seed: u64| CardGen {
        events: 4_000,
        cards: 30,
        seed,
        mean_gap_ms: 1_000.0,
        p_small: 0.05,
        p_large: 0.04,
        p_mid: 0.2,
        p_boundary: 0.03,
        p_abroad: 0.04,
        plant: Fraud::ALL.to_vec(),
        plant_rate: 0.02,
        ..CardGen::default()
    };
    let mut out = Vec::new();
    for (name, seed) in [("seed 1", 1), ("seed 2", 2), ("seed 3", 3), ("seed 4", 4)] {
        out.push(Stream {
            name,
            events: base(seed).generate(),
            distinct_times: true,
        });
    }
    out.push(Stream {
        name: "dense: 12 cards, 300 ms gaps",
        events: CardGen {
            events: 3_000,
            cards: 12,
            mean_gap_ms: 300.0,
            ..base(5)
        }
        .generate(),
        distinct_times: true,
    });
    out.push(Stream {
        name: "sparse: 60 cards, 3 s gaps",
        events: CardGen {
            events: 3_000,
            cards: 60,
            mean_gap_ms: 3_000.0,
            ..base(6)
        }
        .generate(),
        distinct_times: true,
    });
    // Times rounded down to 10 s: many ties, and many pairs exactly on a
    // window's edge.
    let mut coarse = CardGen {
        events: 3_000,
        cards: 20,
        mean_gap_ms: 1_500.0,
        ..base(7)
    }
    .generate();
    for e in &mut coarse {
        let t = ts_of(e);
        e["ts"] = Value::from(t - t.rem_euclid(10 * SECOND));
    }
    out.push(Stream {
        name: "coarse: times in 10 s steps",
        events: coarse,
        distinct_times: false,
    });
    out
}

#[test]
fn fraud_patterns_agree_with_the_reference() {
    let mut failures = Vec::new();
    let mut totals: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut edge_cases = 0usize;
    for stream in streams() {
        let events = &stream.events;
        let in_order: Vec<usize> = (0..events.len()).collect();
        for (pattern, _) in PATTERNS {
            let theirs = reference(pattern, events);
            let ours = engine(pattern, events, &in_order, 0);
            let matches = theirs.iter().filter(|f| f.1 == "match").count();
            let t = totals.entry(pattern).or_default();
            t.0 += matches;
            t.1 += theirs.len() - matches;
            eprintln!(
                "{:<28} {pattern:<17} reference: {matches:>4} matches, {:>4} timeouts; engine: {}",
                stream.name,
                theirs.len() - matches,
                ours.len()
            );
            if ours != theirs {
                failures.push(format!(
                    "[{}] {}",
                    stream.name,
                    explain(pattern, events, &ours, &theirs)
                ));
                continue;
            }
            // The same stream out of order within the allowed lateness.
            if stream.distinct_times {
                let shuffled =
                    shuffle_within_by(in_order.clone(), |&n| ts_of(&events[n]), 2 * MINUTE, 17);
                let late = engine(pattern, events, &shuffled, 2 * MINUTE);
                if late != theirs {
                    failures.push(format!(
                        "[{} shuffled by up to 2 min, lateness 2 min] {}",
                        stream.name,
                        explain(pattern, events, &late, &theirs)
                    ));
                }
            }
        }
        if !stream.distinct_times {
            // How many same-card pairs sit exactly on a window's edge.
            for txs in by_card(events).values() {
                for (i, a) in txs.iter().enumerate() {
                    for b in &txs[i + 1..] {
                        let d = b.ts - a.ts;
                        if [MINUTE, 5 * MINUTE, 10 * MINUTE, HOUR].contains(&d) {
                            edge_cases += 1;
                        }
                    }
                }
            }
        }
    }
    for (pattern, (m, t)) in &totals {
        eprintln!("total {pattern}: {m} matches, {t} timeouts");
        assert!(*m >= 20, "{pattern}: too few matches ({m}) to compare");
    }
    assert!(edge_cases > 50, "coarse stream: {edge_cases} edge pairs");
    assert!(
        failures.is_empty(),
        "{} disagreement(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The reference itself, on hand-made cards: the rules it encodes.
#[test]
fn reference_sanity() {
    let tx = |id: u64, ts: i64, amount: f64, country: &str| Tx {
        id,
        ts,
        amount,
        country: Some(country.to_string()),
    };
    let run = |f: Reference, e: Vec<Tx>| {
        let mut out = Vec::new();
        f("c", &e, &mut out);
        out.into_iter()
            .map(|(_, k, b)| {
                let ids: Vec<String> = b.iter().map(|(v, i)| format!("{v}{i}")).collect();
                format!("{k} {}", ids.join(" "))
            })
            .collect::<Vec<_>>()
    };
    // Two smalls, one large: the oldest small matches; the other is dropped.
    assert_eq!(
        run(
            ref_small_then_large,
            vec![
                tx(1, 0, 1.0, "US"),
                tx(2, 1, 2.0, "US"),
                tx(3, 2, 600.0, "US")
            ]
        ),
        ["match small1 large3"]
    );
    // Exactly 5 minutes: no match, a timeout.
    assert_eq!(
        run(
            ref_small_then_large,
            vec![tx(1, 0, 1.0, "US"), tx(2, 5 * MINUTE, 600.0, "US")]
        ),
        ["timeout small1"]
    );
    // Greedy burst with skip past last.
    assert_eq!(
        run(
            ref_burst,
            vec![
                tx(1, 0, 101.0, "US"),
                tx(2, 5 * MINUTE, 101.0, "US"),
                tx(3, 9 * MINUTE, 101.0, "US"),
                tx(4, 12 * MINUTE, 101.0, "US"),
                tx(5, 14 * MINUTE, 101.0, "US"),
            ]
        ),
        ["match big1 big2 big3"]
    );
    assert_eq!(
        run(
            ref_two_countries,
            vec![
                tx(1, 0, 1.0, "US"),
                tx(2, 1, 1.0, "FR"),
                tx(3, 2, 1.0, "US"),
                tx(4, 3, 1.0, "FR"),
                tx(5, 4, 1.0, "FR"),
            ]
        ),
        ["match a1 b2", "match a3 b4"]
    );
    let rising: Vec<Tx> = (1..=11).map(|i| tx(i, i as i64, i as f64, "US")).collect();
    assert_eq!(
        run(ref_rising, rising),
        ["match r1 r2 r3 r4 r5", "match r6 r7 r8 r9 r10"]
    );
}
