use std::sync::Arc;

use super::*;
use crate::event::Key;

fn plan() -> HistoryPlan {
    let mut p = HistoryPlan::new(500);
    let amount = Field {
        slot: 0,
        path: vec!["amount".into()],
    };
    p.track(
        TrackKind::Values {
            field: Some(amount),
            quantiles: true,
        },
        3200,
    );
    p.track(
        TrackKind::Seen {
            field: Field {
                slot: 1,
                path: vec!["country".into()],
            },
        },
        1000,
    );
    p
}

fn event(time: i64, amount: Value, country: &str) -> Event {
    Event {
        time,
        key: Key::new("k"),
        slots: [amount, Value::Str(Arc::from(country))]
            .into_iter()
            .collect(),
        hash: 0,
        raw: None,
    }
}

fn q(func: Func, track: u16, window: i64) -> Query {
    Query {
        func,
        track,
        window,
        at_least: None,
        source: String::new(),
    }
}

#[test]
fn aggregates_exclude_nothing_recorded_and_forget_old_buckets() {
    let p = plan();
    let mut h = KeyHistory::new(&p);
    for (t, x) in [(0, 10), (100, 20), (200, 30)] {
        h.record(&p, &event(t, Value::Int(x), "FR"));
    }
    let at = |f, t| h.answer(&q(f, 0, 3200), t, None);
    assert_eq!(at(Func::Count, 300), Value::Int(3));
    assert_eq!(at(Func::Sum, 300), Value::Int(60));
    assert_eq!(at(Func::Avg, 300), Value::Float(20.0));
    assert_eq!(at(Func::Min, 300), Value::Int(10));
    assert_eq!(at(Func::Max, 300), Value::Int(30));
    let sd = at(Func::Stddev, 300).as_f64().unwrap();
    assert!((sd - (200.0f64 / 3.0).sqrt()).abs() < 1e-9, "{sd}");
    // Width 100: at 3300 the window reads buckets from 1 on: 0 is gone.
    assert_eq!(at(Func::Count, 3300), Value::Int(2));
    assert_eq!(at(Func::Count, 3500), Value::Int(0));
    assert_eq!(at(Func::Avg, 3500), Value::Null);
    assert_eq!(at(Func::Sum, 3500), Value::Int(0));
}

#[test]
fn at_least_makes_thin_history_null() {
    let p = plan();
    let mut h = KeyHistory::new(&p);
    h.record(&p, &event(0, Value::Int(10), "FR"));
    let mut query = q(Func::Avg, 0, 3200);
    query.at_least = Some((2, 0));
    assert_eq!(h.answer(&query, 10, None), Value::Null);
    h.record(&p, &event(5, Value::Null, "FR"));
    // Two events, one with a number: enough events, the average of one.
    assert_eq!(h.answer(&query, 10, None), Value::Float(10.0));
}

#[test]
fn seen_is_exact_in_time_and_null_for_absent_values() {
    let p = plan();
    let mut h = KeyHistory::new(&p);
    h.record(&p, &event(100, Value::Int(1), "FR"));
    let seen = q(
        Func::Seen {
            slot: 1,
            negated: false,
        },
        0,
        1000,
    );
    let fr = event(1100, Value::Int(1), "FR");
    assert_eq!(h.answer(&seen, 1100, Some(&fr)), Value::Bool(true));
    assert_eq!(h.answer(&seen, 1101, Some(&fr)), Value::Bool(false));
    let de = event(1100, Value::Int(1), "DE");
    assert_eq!(h.answer(&seen, 1100, Some(&de)), Value::Bool(false));
    let mut none = de.clone();
    none.slots = [Value::Int(1), Value::Null].into_iter().collect();
    assert_eq!(h.answer(&seen, 1100, Some(&none)), Value::Null);
}

#[test]
fn seen_forgets_the_least_recent_value_at_the_cap_and_counts_it() {
    let p = plan();
    let mut h = KeyHistory::new(&p);
    let mut evicted = 0;
    for i in 0..SEEN_CAP as i64 + 10 {
        evicted += h.record(&p, &event(i, Value::Int(1), &format!("C{i}")));
    }
    assert_eq!(evicted, 10);
    let seen = q(
        Func::Seen {
            slot: 1,
            negated: true,
        },
        0,
        1000,
    );
    let first = event(400, Value::Int(1), "C0");
    assert_eq!(h.answer(&seen, 400, Some(&first)), Value::Bool(true));
    let recent = event(400, Value::Int(1), "C20");
    assert_eq!(h.answer(&seen, 400, Some(&recent)), Value::Bool(false));
}

#[test]
fn time_since_previous_within_the_horizon() {
    let p = plan();
    let mut h = KeyHistory::new(&p);
    assert_eq!(h.since_previous(0, 500), Value::Null);
    h.record(&p, &event(100, Value::Int(1), "FR"));
    assert_eq!(h.since_previous(350, 500), Value::Int(250));
    assert_eq!(h.since_previous(601, 500), Value::Null);
    assert!(h.expires_at(&p) > 100 + 3200);
}

#[test]
fn percentiles_are_within_one_percent() {
    let p = plan();
    let mut h = KeyHistory::new(&p);
    let mut values: Vec<f64> = Vec::new();
    for i in 0..1000i64 {
        let x = ((i * 7919) % 1000 + 1) as f64 * 1.37;
        values.push(x);
        h.record(&p, &event(i * 3, Value::Float(x), "FR"));
    }
    values.sort_by(f64::total_cmp);
    for pct in [1.0, 25.0, 50.0, 90.0, 99.0, 100.0] {
        let rank = (pct / 100.0 * 1000.0f64).ceil().max(1.0) as usize;
        let exact = values[rank - 1];
        let got = h
            .answer(&q(Func::Percentile(pct), 0, 3200), 3000, None)
            .as_f64()
            .unwrap();
        assert!(
            (got - exact).abs() <= exact * ALPHA_CHECK,
            "p{pct}: {got} vs {exact}"
        );
    }
}

const ALPHA_CHECK: f64 = sketch::ALPHA * 1.0001;

#[test]
fn carried_history_keeps_tracks_found_in_both_plans() {
    let p = plan();
    let mut h = KeyHistory::new(&p);
    h.record(&p, &event(0, Value::Int(10), "FR"));
    let mut other = HistoryPlan::default();
    other.track(
        TrackKind::Seen {
            field: Field {
                slot: 4,
                path: vec!["country".into()],
            },
        },
        1000,
    );
    other.track(
        TrackKind::Values {
            field: None,
            quantiles: false,
        },
        3200,
    );
    let c = h.carried(&p, &other);
    let fr = Event {
        slots: [
            Value::Missing,
            Value::Missing,
            Value::Missing,
            Value::Missing,
            Value::Str(Arc::from("FR")),
        ]
        .into_iter()
        .collect(),
        ..event(10, Value::Int(0), "x")
    };
    let seen = q(
        Func::Seen {
            slot: 4,
            negated: false,
        },
        0,
        1000,
    );
    assert_eq!(c.answer(&seen, 10, Some(&fr)), Value::Bool(true));
    assert_eq!(c.answer(&q(Func::Count, 0, 3200), 10, None), Value::Int(0));
}
