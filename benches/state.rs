//! What a task checkpoint costs against the size of its state, and what a
//! restore costs: the figures behind "state kept in Kafka".
//!
//! For 1k → 1M keys each holding one open run of `a then b within 1d`:
//! snapshot + serialise (what every checkpoint does today: the whole
//! state), the bytes written, and deserialise + restore (what a new owner
//! does). Then the state-topic round trip (chunks + manifest written and
//! acknowledged, then read back) against a real broker (nisshi, memory
//! storage) for up to 100k keys. Medians of 3 runs; one core.
//!
//! Needs nisshi (`scripts/install-broker.sh`). Run: `cargo bench --bench state`.

use std::time::{Duration, Instant};

use cep::compiler::compile_source;
use cep::config::KafkaSection;
use cep::engine::{Engine, EngineConfig, Output, Snapshot};
use cep::service::metrics::Metrics;
use cep::service::sink::kafka::Producer;
use cep::service::state::{self, StateTopic};

#[path = "../tests/support/broker.rs"]
mod broker;

const PATTERN: &str = r#"pattern open_runs
  from cards key card.id time ts within 1d
  match a then b
  define a as amount < 10, b as amount > 500
end
"#;

/// An engine whose `keys` keys each hold one open run.
fn engine_with(keys: usize) -> Engine {
    let automata = compile_source("bench.cep", PATTERN).unwrap();
    let mut e = Engine::new(automata, EngineConfig::default());
    let mut out = Output::default();
    for k in 0..keys {
        let line = format!(
            r#"{{"card":{{"id":"card-{k:07}"}},"ts":{},"amount":5}}"#,
            1_700_000_000_000i64 + k as i64
        );
        e.push_json(None, line.as_bytes(), k as u64, &mut out)
            .unwrap();
    }
    // Release the buffered events into runs.
    e.drain(&mut out);
    e
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!("| keys with an open run | checkpoint (snapshot + serialise) | bytes | bytes/key | restore (parse + restore) |");
    println!("| --- | --- | --- | --- | --- |");
    let mut snapshots = Vec::new();
    for keys in [1_000, 10_000, 100_000, 1_000_000] {
        let engine = engine_with(keys);
        let mut save = Vec::new();
        let mut bytes = Vec::new();
        for _ in 0..3 {
            let t0 = Instant::now();
            bytes = serde_json::to_vec(&engine.snapshot()).unwrap();
            save.push(t0.elapsed());
        }
        let mut load = Vec::new();
        for _ in 0..3 {
            let t0 = Instant::now();
            let snap: Snapshot = serde_json::from_slice(&bytes).unwrap();
            let mut fresh = engine_with(0);
            assert!(fresh.restore(snap).is_empty());
            load.push(t0.elapsed());
        }
        println!(
            "| {keys} | {:.1} ms | {} | {} | {:.1} ms |",
            ms(median(save)),
            bytes.len(),
            bytes.len() / keys,
            ms(median(load))
        );
        if keys <= 100_000 {
            snapshots.push((keys, bytes));
        }
    }

    let broker = broker::Broker::start_with("memory://nisshi/");
    let k = KafkaSection::connect_only(&broker.brokers());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // One partition (task) per size: each read starts from an empty log.
    let topic = rt.block_on(state::ensure(&k, 3)).unwrap();
    let producer = Producer::new(&k).unwrap();
    let metrics = Metrics::default();
    let st = StateTopic::new(topic, producer, metrics.sink("state"));
    println!();
    println!(
        "| keys | bytes | write to the state topic (acknowledged) | read back (restore's fetch) |"
    );
    println!("| --- | --- | --- | --- |");
    let mut seq = 0;
    for (task, (keys, bytes)) in snapshots.into_iter().enumerate() {
        let task = task as i32;
        let (mut write, mut read) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            seq += 1;
            let t0 = Instant::now();
            rt.block_on(st.save(task, seq, &bytes)).unwrap();
            write.push(t0.elapsed());
            let t0 = Instant::now();
            let (got, back) = state::load(&k, task).unwrap().unwrap();
            read.push(t0.elapsed());
            assert_eq!((got, back.len()), (seq, bytes.len()));
        }
        println!(
            "| {keys} | {} | {:.1} ms | {:.1} ms |",
            bytes.len(),
            ms(median(write)),
            ms(median(read))
        );
    }
}
