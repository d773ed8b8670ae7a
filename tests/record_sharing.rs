//! Patterns reading one stream share what they decode from a record: each
//! key and event time is decoded once for the patterns that read it from
//! the same fields, and the field values once for all of them (the events
//! of patterns that keep more than two fields point into one shared list
//! of the record's values). None of this may change what a pattern
//! matches: every flight pattern, run together with the others, must raise
//! exactly the alerts it raises alone, from CSV rows and from JSON text,
//! and across a checkpoint taken while shared events wait in the reorder
//! buffers and in runs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use cep::compiler::Automaton;
use cep::engine::{Engine, EngineConfig, Output};
use cep::input::{self, CsvRow, Format, Payload};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn flight_patterns() -> Vec<Automaton> {
    cep::compiler::load_patterns(&root().join("patterns/flights")).expect("flight patterns compile")
}

/// January 2013's rows with their hashes, in file order.
fn january() -> Vec<(CsvRow, u64)> {
    let path = root().join("data/flights-2013-01.csv");
    let (records, _) = input::open(path.to_str().unwrap(), Format::Csv, &["NA".to_string()])
        .expect("open the sample");
    records
        .map(|r| {
            let r = r.expect("every row of the sample reads");
            match r.payload {
                Payload::Csv(row) => (row, r.hash),
                _ => panic!("a CSV row"),
            }
        })
        .collect()
}

#[derive(Clone, Copy)]
enum Feed {
    Rows,
    Json,
}

/// Each pattern's alerts, as JSON in the order raised, from `automata` run
/// together on `rows`; with a checkpoint (serialized and restored into a
/// new engine) after `checkpoint_at` rows.
fn alerts(
    automata: Vec<Automaton>,
    rows: &[(CsvRow, u64)],
    feed: Feed,
    include_events: bool,
    checkpoint_at: Option<usize>,
) -> BTreeMap<String, Vec<String>> {
    let config = EngineConfig {
        // Two days: events wait in the buffers, runs hold bound events.
        lateness_ms: 2 * 86_400_000,
        include_events,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(automata.clone(), config);
    let mut out = Output::default();
    let mut by_pattern: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut collect = |out: &mut Output| {
        for a in out.alerts.drain(..) {
            let json = serde_json::to_string(&a).unwrap();
            by_pattern
                .entry(a.pattern.to_string())
                .or_default()
                .push(json);
        }
        out.rejected.clear();
    };
    for (n, (row, hash)) in rows.iter().enumerate() {
        if Some(n) == checkpoint_at {
            let saved = serde_json::to_vec(&engine.snapshot()).unwrap();
            engine = Engine::new(automata.clone(), config);
            let fresh = engine.restore(serde_json::from_slice(&saved).unwrap());
            assert!(fresh.is_empty(), "every pattern restored: {fresh:?}");
        }
        match feed {
            Feed::Rows => engine.push_row(None, row, *hash, &mut out),
            Feed::Json => {
                let json = serde_json::to_vec(&row.to_doc()).unwrap();
                engine.push_json(None, &json, *hash, &mut out).unwrap();
            }
        }
        collect(&mut out);
    }
    engine.flush(&mut out);
    collect(&mut out);
    assert!(out.late.is_empty());
    by_pattern
}

/// Each flight pattern run alone (nothing to share with).
fn alone(
    rows: &[(CsvRow, u64)],
    feed: Feed,
    include_events: bool,
) -> BTreeMap<String, Vec<String>> {
    let mut all = BTreeMap::new();
    for a in flight_patterns() {
        all.extend(alerts(vec![a], rows, feed, include_events, None));
    }
    all
}

fn assert_same(together: &BTreeMap<String, Vec<String>>, alone: &BTreeMap<String, Vec<String>>) {
    assert_eq!(
        together.len(),
        5,
        "every flight pattern raises alerts in January"
    );
    for (pattern, alerts) in alone {
        assert_eq!(together.get(pattern), Some(alerts), "pattern {pattern}");
    }
    assert_eq!(together.len(), alone.len());
}

#[test]
fn patterns_together_raise_what_each_raises_alone_from_csv_rows() {
    let rows = january();
    let alone = alone(&rows, Feed::Rows, false);
    let together = alerts(flight_patterns(), &rows, Feed::Rows, false, None);
    assert_same(&together, &alone);
    // A checkpoint in the middle of the month writes shared events out
    // and reads them back as each pattern's own.
    let restored = alerts(
        flight_patterns(),
        &rows,
        Feed::Rows,
        false,
        Some(rows.len() / 2),
    );
    assert_same(&restored, &alone);
}

#[test]
fn patterns_together_raise_what_each_raises_alone_from_json_text() {
    // Alerts carry their events here.
    let rows = january();
    let alone = alone(&rows, Feed::Json, true);
    let together = alerts(
        flight_patterns(),
        &rows,
        Feed::Json,
        true,
        Some(rows.len() / 3),
    );
    assert_same(&together, &alone);
}
