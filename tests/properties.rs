//! Properties of the engine over generated card streams.
//!
//! - **Order**: the same events, arriving out of order by less than the
//!   allowed lateness, give the same alerts (full JSON, matched events
//!   included) as the time-ordered stream.
//! - **Restart**: a snapshot taken at random points, sent through JSON text
//!   and restored into a fresh engine, changes nothing: same alerts, same
//!   ids, same order, same late events.
//! - **Incremental checkpoints**: whole snapshots and the changes taken
//!   between them ([`Engine::take_changes`]), each through JSON text, then
//!   applied in order and restored into a fresh engine, change nothing
//!   either.
//! - **Identity**: two runs give the same alert ids, and no id repeats.
//!
//! Patterns: the six of `patterns/fraud/` (two of them read per-key
//! history), plus `then any` (with `skip none`), a greedy loop in the
//! middle of a sequence, a greedy strict tail, an absence, and per-key
//! history over windows short enough for their buckets to turn over
//! (aggregates, a percentile, `seen in`, `time since previous`). Streams come from [`cep::gen::CardGen`] with
//! planted fraud so that every pattern has work to do; case counts are kept
//! small so the suite runs in seconds in debug builds.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use cep::compiler::{compile_source, Automaton};
use cep::engine::{Alert, Engine, EngineConfig, Output, Snapshot};
use cep::event::stable_hash;
use cep::gen::{shuffle_within, CardGen, Fraud};
use proptest::prelude::*;
use serde_json::Value;

const EXTRA: &str = r#"
pattern small_then_any_large
  description "every large charge within 5 minutes of a small one"
  from cards key card.id time ts within 5m
  skip none
  match small then any large
  define small as amount < 10, large as amount > 500
  emit small_amount = small.amount, large_amount = large.amount
end

pattern small_mids_large
  description "greedy loop in the middle: small, 2+ mid charges, then large"
  from cards key card.id time ts within 10m
  match small then mid{2,} then large
  define
    small as amount < 10,
    mid as amount > 100 and amount < 1000,
    large as amount > 500
  emit mids = count(mid), total = sum(mid.amount), large_amount = large.amount
  on timeout emit mids = count(mid)
end

pattern big_streak
  description "greedy strict tail: consecutive charges over 100"
  from cards key card.id time ts within 30m
  match big{2,} strict
  define big as amount > 100
  emit n = count(big), total = sum(big.amount)
end

pattern history_windows
  description "per-key history over windows that turn over within the stream"
  from cards key card.id time ts within 10m
  history 2m
  match x then y
  define
    x as amount > 2 * avg(amount) over 3m with at least 2 events
        or country not seen in 90s,
    y as time since previous < 30s and amount >= percentile(amount, 75) over 5m
  emit
    avg = avg(amount) over 3m, sd = stddev(amount) over 3m,
    n = count() over 5m, top = max(amount) over 5m
end

pattern large_then_quiet
  description "absence: a large charge and nothing else on the card for 2 minutes"
  from cards key card.id time ts within 2m
  match large then not other
  define large as amount > 500, other as amount > 0
  emit amount = large.amount, quiet_until = `end`
end
"#;

const FRAUD: [&str; 6] = [
    "small_then_large",
    "burst_over_100",
    "two_countries",
    "rising_amounts",
    "unusually_large",
    "new_country_then_large",
];

fn automata() -> Vec<Automaton> {
    let mut all = Vec::new();
    for name in FRAUD {
        let path = format!("patterns/fraud/{name}.cep");
        let src = std::fs::read_to_string(&path).unwrap();
        all.extend(compile_source(&path, &src).unwrap_or_else(|d| panic!("{}", d.render())));
    }
    all.extend(compile_source("extra", EXTRA).unwrap_or_else(|d| panic!("{}", d.render())));
    all
}

/// A generated stream, each event with its identity hash (of its text).
fn stream(seed: u64, events: usize, cards: usize, gap: f64) -> Vec<(Value, u64)> {
    coarse_stream(seed, events, cards, gap, 1)
}

/// [`stream`] with times rounded down to multiples of `quantum` ms: many
/// events share a time (they are then processed in arrival order), and
/// many pairs sit exactly on a window's edge.
fn coarse_stream(
    seed: u64,
    events: usize,
    cards: usize,
    gap: f64,
    quantum: i64,
) -> Vec<(Value, u64)> {
    CardGen {
        events,
        cards,
        seed,
        mean_gap_ms: gap,
        p_small: 0.06,
        p_large: 0.05,
        p_mid: 0.25,
        p_boundary: 0.03,
        p_abroad: 0.05,
        plant: Fraud::ALL.to_vec(),
        plant_rate: 0.03,
        ..CardGen::default()
    }
    .generate()
    .into_iter()
    .map(|mut e| {
        let t = cep::gen::ts_of(&e);
        e["ts"] = Value::from(t - t.rem_euclid(quantum));
        let h = stable_hash(serde_json::to_string(&e).unwrap().as_bytes(), 0);
        (e, h)
    })
    .collect()
}

fn config(lateness_ms: i64) -> EngineConfig {
    EngineConfig {
        lateness_ms,
        max_runs_per_key: 10_000,
        include_events: true,
        external_watermark: false,
    }
}

/// Runs `events` through one engine; `restart_at` lists the positions
/// (number of events pushed) at which the engine is snapshotted, the
/// snapshot written to JSON text and read back into a fresh engine.
fn run(events: &[(Value, u64)], lateness_ms: i64, restart_at: &[usize]) -> (Vec<Alert>, usize) {
    let cfg = config(lateness_ms);
    let mut engine = Engine::new(automata(), cfg);
    let mut out = Output::default();
    for (n, (doc, hash)) in events.iter().enumerate() {
        if restart_at.contains(&n) {
            let text = serde_json::to_string(&engine.snapshot()).unwrap();
            drop(engine);
            let snap: Snapshot = serde_json::from_str(&text).unwrap();
            engine = Engine::new(automata(), cfg);
            let fresh = engine.restore(snap);
            assert!(fresh.is_empty(), "patterns not restored: {fresh:?}");
        }
        engine.push(None, &Arc::new(doc.clone()), *hash, &mut out);
    }
    if restart_at.contains(&events.len()) {
        let text = serde_json::to_string(&engine.snapshot()).unwrap();
        let snap: Snapshot = serde_json::from_str(&text).unwrap();
        engine = Engine::new(automata(), cfg);
        assert!(engine.restore(snap).is_empty());
    }
    engine.flush(&mut out);
    (out.alerts, out.late.len())
}

/// Runs `events` through one engine that lists changed keys. At each cut
/// (position, whole?) it takes a whole snapshot or the changes since the
/// last cut, through JSON text, and applies changes to the last whole one;
/// after the last cut the engine is replaced by one restored from that
/// chain.
fn run_incremental(
    events: &[(Value, u64)],
    lateness_ms: i64,
    cuts: &[(usize, bool)],
) -> (Vec<Alert>, usize) {
    let cfg = config(lateness_ms);
    let mut engine = Engine::new(automata(), cfg);
    engine.track_changes(true);
    let mut out = Output::default();
    let mut chain: Snapshot = engine.snapshot();
    let last = cuts.iter().map(|c| c.0).max().unwrap_or(0);
    for n in 0..=events.len() {
        for &(_, whole) in cuts.iter().filter(|c| c.0 == n) {
            if whole {
                let text = serde_json::to_string(&engine.snapshot()).unwrap();
                engine.forget_changes();
                chain = serde_json::from_str(&text).unwrap();
            } else {
                let text = serde_json::to_string(&engine.take_changes()).unwrap();
                chain.apply(serde_json::from_str(&text).unwrap()).unwrap();
            }
        }
        if n == last {
            engine = Engine::new(automata(), cfg);
            engine.track_changes(true);
            assert!(engine.restore(chain.clone()).is_empty());
        }
        if let Some((doc, hash)) = events.get(n) {
            engine.push(None, &Arc::new(doc.clone()), *hash, &mut out);
        }
    }
    engine.flush(&mut out);
    (out.alerts, out.late.len())
}

fn json(alerts: &[Alert]) -> Vec<Value> {
    alerts
        .iter()
        .map(|a| serde_json::to_value(a).unwrap())
        .collect()
}

fn sorted_by_id(alerts: &[Alert]) -> Vec<Value> {
    let mut v = alerts.to_vec();
    v.sort_by(|a, b| a.alert_id.cmp(&b.alert_id));
    json(&v)
}

/// Alerts per pattern, for messages and for checking that patterns fire.
fn per_pattern(alerts: &[Alert]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for a in alerts {
        *m.entry(a.pattern.clone()).or_default() += 1;
    }
    m
}

/// Which patterns' alerts differ between two runs.
fn differing(a: &[Alert], b: &[Alert]) -> Vec<String> {
    let names: std::collections::BTreeSet<&String> =
        a.iter().chain(b).map(|x| &x.pattern).collect();
    names
        .into_iter()
        .filter(|n| {
            let pick = |v: &[Alert]| -> Vec<Alert> {
                v.iter().filter(|x| &x.pattern == *n).cloned().collect()
            };
            sorted_by_id(&pick(a)) != sorted_by_id(&pick(b))
        })
        .cloned()
        .collect()
}

fn proptest_config() -> ProptestConfig {
    ProptestConfig {
        cases: 40,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(proptest_config())]

    /// Out of order by less than the allowed lateness: same alerts.
    #[test]
    fn shuffled_within_lateness_gives_the_same_alerts(
        seed in any::<u64>(),
        events in 100usize..600,
        cards in 2usize..12,
        gap in 200.0f64..5_000.0,
        max_delay in 0i64..900_000,
        slack in 0i64..120_000,
        shuffle_seed in any::<u64>(),
    ) {
        let sorted = stream(seed, events, cards, gap);
        let (want, late) = run(&sorted, 0, &[]);
        prop_assert_eq!(late, 0);

        let lateness = max_delay + slack;
        let shuffled = cep::gen::shuffle_within_by(
            sorted.clone(),
            |(e, _)| cep::gen::ts_of(e),
            max_delay,
            shuffle_seed,
        );
        let (got, late) = run(&shuffled, lateness, &[]);
        prop_assert_eq!(late, 0, "late events with lateness {} >= delay {}", lateness, max_delay);
        prop_assert!(
            sorted_by_id(&got) == sorted_by_id(&want),
            "alerts differ for patterns {:?} (ordered: {:?}, shuffled: {:?})",
            differing(&want, &got), per_pattern(&want), per_pattern(&got)
        );
        // The ordered stream with the same lateness agrees too.
        let (buffered, _) = run(&sorted, lateness, &[]);
        prop_assert!(
            sorted_by_id(&buffered) == sorted_by_id(&want),
            "lateness {} changed the alerts of {:?}", lateness, differing(&want, &buffered)
        );
    }

    /// With many equal times (processed in arrival order either way),
    /// buffering the ordered stream changes nothing.
    #[test]
    fn buffering_equal_times_gives_the_same_alerts(
        seed in any::<u64>(),
        events in 100usize..600,
        cards in 2usize..8,
        gap in 200.0f64..3_000.0,
        quantum in prop_oneof![Just(1_000i64), Just(10_000), Just(60_000)],
        lateness in 1i64..1_800_000,
    ) {
        let sorted = coarse_stream(seed, events, cards, gap, quantum);
        let (want, late) = run(&sorted, 0, &[]);
        prop_assert_eq!(late, 0);
        let (got, late) = run(&sorted, lateness, &[]);
        prop_assert_eq!(late, 0);
        prop_assert!(
            sorted_by_id(&got) == sorted_by_id(&want),
            "lateness {} changed the alerts of {:?}", lateness, differing(&want, &got)
        );
    }

    /// Snapshot, JSON round trip and restore at random points: nothing
    /// changes, not even the order of alerts.
    #[test]
    fn snapshot_restore_changes_nothing(
        seed in any::<u64>(),
        events in 100usize..600,
        cards in 2usize..12,
        gap in 200.0f64..5_000.0,
        max_delay in 0i64..300_000,
        shuffle_seed in any::<u64>(),
        points in prop::collection::vec(0.0f64..=1.0, 1..4),
    ) {
        let sorted = stream(seed, events, cards, gap);
        // Out of order, so that snapshots also hold buffered events.
        let input = cep::gen::shuffle_within_by(
            sorted,
            |(e, _)| cep::gen::ts_of(e),
            max_delay,
            shuffle_seed,
        );
        let at: Vec<usize> = points
            .iter()
            .map(|p| ((input.len() as f64) * p).round() as usize)
            .collect();
        let (want, want_late) = run(&input, max_delay, &[]);
        let (got, got_late) = run(&input, max_delay, &at);
        prop_assert_eq!(got_late, want_late);
        prop_assert_eq!(got.len(), want.len(), "restored at {:?}", at);
        prop_assert!(
            json(&got) == json(&want),
            "restored at {:?}: alerts or their order differ ({:?})", at, differing(&want, &got)
        );
    }

    /// Whole snapshots and changes in between, applied in order and
    /// restored: nothing changes.
    #[test]
    fn incremental_checkpoints_change_nothing(
        seed in any::<u64>(),
        events in 100usize..600,
        cards in 2usize..12,
        gap in 200.0f64..5_000.0,
        max_delay in 0i64..300_000,
        shuffle_seed in any::<u64>(),
        points in prop::collection::vec((0.0f64..=1.0, prop::bool::weighted(0.2)), 1..8),
    ) {
        let sorted = stream(seed, events, cards, gap);
        let input = cep::gen::shuffle_within_by(
            sorted,
            |(e, _)| cep::gen::ts_of(e),
            max_delay,
            shuffle_seed,
        );
        let cuts: Vec<(usize, bool)> = points
            .iter()
            .map(|(p, whole)| (((input.len() as f64) * p).round() as usize, *whole))
            .collect();
        let (want, want_late) = run(&input, max_delay, &[]);
        let (got, got_late) = run_incremental(&input, max_delay, &cuts);
        prop_assert_eq!(got_late, want_late);
        prop_assert!(
            json(&got) == json(&want),
            "cuts {:?}: alerts or their order differ ({:?})", cuts, differing(&want, &got)
        );
    }

    /// Alert ids are a function of the input: identical across runs, and
    /// distinct within one.
    #[test]
    fn alert_ids_are_stable_and_unique(
        seed in any::<u64>(),
        events in 100usize..600,
        cards in 2usize..12,
        gap in 200.0f64..5_000.0,
    ) {
        let input = stream(seed, events, cards, gap);
        let (a, _) = run(&input, 0, &[]);
        let (b, _) = run(&input, 0, &[]);
        let ids = |v: &[Alert]| v.iter().map(|x| x.alert_id.clone()).collect::<Vec<_>>();
        prop_assert_eq!(ids(&a), ids(&b));
        let mut seen = HashSet::new();
        for x in &a {
            prop_assert!(seen.insert(&x.alert_id), "repeated id {} ({})", x.alert_id, x.pattern);
        }
    }
}

/// The generated streams exercise every pattern (otherwise the properties
/// above would hold vacuously).
#[test]
fn every_pattern_fires_on_generated_streams() {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for seed in 0..4 {
        let (alerts, _) = run(&stream(seed, 600, 6, 1_000.0), 0, &[]);
        for (p, n) in per_pattern(&alerts) {
            *counts.entry(p).or_default() += n;
        }
    }
    eprintln!("alerts per pattern over 4 streams: {counts:?}");
    for a in automata() {
        assert!(
            counts.get(&a.name).copied().unwrap_or(0) >= 3,
            "{} fires too rarely: {counts:?}",
            a.name
        );
    }
}

/// The shuffle really reorders, and stays within the bound.
#[test]
fn shuffled_streams_are_out_of_order() {
    let events: Vec<Value> = stream(3, 500, 5, 500.0)
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    let shuffled = shuffle_within(events.clone(), 60_000, 9);
    let moved = shuffled.iter().zip(&events).filter(|(a, b)| a != b).count();
    assert!(moved > 100, "{moved}");
}
