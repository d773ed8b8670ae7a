//! What a task checkpoint costs against the size of its state, and what a
//! restore costs: the figures behind "state kept in Kafka".
//!
//! For 1k → 1M keys each holding one open run of `a then b within 1d`:
//! a whole checkpoint (snapshot + serialise) against an increment after 1 %
//! of the keys received an event (changes + serialise), with their bytes.
//! Then the state-topic round trip against a real broker (nisshi, memory
//! storage): a whole checkpoint and 10 increments of 1 % written and
//! acknowledged, then the restore a new owner does (read the chain, parse,
//! apply the increments, restore the engine). Medians of 3 runs for the
//! in-memory figures; one core for the engine.
//!
//! Needs nisshi (`scripts/install-broker.sh`). Run: `cargo bench --bench state`.

use std::time::{Duration, Instant};

use cep::compiler::compile_source;
use cep::config::KafkaSection;
use cep::engine::{Changes, Engine, EngineConfig, Output, Snapshot};
use cep::service::metrics::Metrics;
use cep::service::sink::kafka::Producer;
use cep::service::state::{self, Chain, StateTopic};

#[path = "../tests/support/broker.rs"]
mod broker;

const PATTERN: &str = r#"pattern open_runs
  from cards key card.id time ts within 1d
  match a then b
  define a as amount < 10, b as amount > 500
end
"#;

const T0: i64 = 1_700_000_000_000;

fn push(e: &mut Engine, key: usize, ts: i64, amount: u32, out: &mut Output) {
    let line = format!(r#"{{"card":{{"id":"card-{key:07}"}},"ts":{ts},"amount":{amount}}}"#);
    e.push_json(None, line.as_bytes(), ts as u64, out).unwrap();
}

/// An engine whose `keys` keys each hold one open run, listing changes.
fn engine_with(keys: usize) -> Engine {
    let automata = compile_source("bench.cep", PATTERN).unwrap();
    let mut e = Engine::new(automata, EngineConfig::default());
    e.track_changes(true);
    let mut out = Output::default();
    for k in 0..keys {
        push(&mut e, k, T0 + k as i64, 5, &mut out);
    }
    e.forget_changes();
    e
}

/// One event (neither `a` nor `b`) for 1 % of the keys, the `round`th
/// slice of them: each changes its key's runs (their position).
fn touch_one_percent(e: &mut Engine, keys: usize, round: usize) {
    let mut out = Output::default();
    let n = (keys / 100).max(1);
    let ts = T0 + keys as i64 + (round * n) as i64;
    for i in 0..n {
        push(e, (round * n + i) % keys, ts + i as i64, 50, &mut out);
    }
    assert!(out.alerts.is_empty());
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
    in_memory();
    through_the_state_topic();
}

fn in_memory() {
    println!("| keys with an open run | whole: snapshot + serialise | bytes | 1 % changed: changes + serialise | bytes | restore whole + 1 increment |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for keys in [1_000, 10_000, 100_000, 1_000_000] {
        let mut engine = engine_with(keys);
        let (mut whole, mut changes, mut load) = (Vec::new(), Vec::new(), Vec::new());
        let (mut whole_bytes, mut change_bytes) = (Vec::new(), Vec::new());
        for round in 0..3 {
            let t0 = Instant::now();
            engine.forget_changes();
            whole_bytes = serde_json::to_vec(&engine.snapshot()).unwrap();
            whole.push(t0.elapsed());
            touch_one_percent(&mut engine, keys, round);
            let t0 = Instant::now();
            let c = engine.take_changes();
            change_bytes = serde_json::to_vec(&c).unwrap();
            changes.push(t0.elapsed());
            assert_eq!(c.keys(), (keys / 100).max(1));
        }
        for _ in 0..3 {
            let t0 = Instant::now();
            let mut snap: Snapshot = serde_json::from_slice(&whole_bytes).unwrap();
            let c: Changes = serde_json::from_slice(&change_bytes).unwrap();
            snap.apply(c).unwrap();
            let mut fresh = engine_with(0);
            assert!(fresh.restore(snap).is_empty());
            load.push(t0.elapsed());
        }
        println!(
            "| {keys} | {:.1} ms | {} | {:.2} ms | {} | {:.1} ms |",
            ms(median(whole)),
            whole_bytes.len(),
            ms(median(changes)),
            change_bytes.len(),
            ms(median(load))
        );
    }
}

fn through_the_state_topic() {
    let broker = broker::Broker::start_with("memory://nisshi/");
    let k = KafkaSection::connect_only(&broker.brokers());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // One partition (task) per size: each read starts from an empty log.
    let topic = rt.block_on(state::ensure(&k, 4)).unwrap();
    let producer = Producer::new(&k).unwrap();
    let metrics = Metrics::default();
    let st = StateTopic::new(topic, producer, metrics.sink("state"));
    println!();
    println!("| keys | whole: bytes, written | increment (1 %): bytes, written (median of 10) | restore: read chain | + parse, apply, restore | total |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (task, keys) in [1_000, 10_000, 100_000, 1_000_000].into_iter().enumerate() {
        let task = task as i32;
        let mut engine = engine_with(keys);
        let whole = serde_json::to_vec(&engine.snapshot()).unwrap();
        let t0 = Instant::now();
        let mut chain = rt
            .block_on(st.save(task, 1, true, &whole, Chain::default()))
            .unwrap();
        let whole_write = t0.elapsed();
        let (mut writes, mut inc_bytes) = (Vec::new(), 0);
        for round in 0..10 {
            touch_one_percent(&mut engine, keys, round);
            let bytes = serde_json::to_vec(&engine.take_changes()).unwrap();
            inc_bytes = bytes.len();
            let t0 = Instant::now();
            chain = rt
                .block_on(st.save(task, 2 + round as u64, false, &bytes, chain))
                .unwrap();
            writes.push(t0.elapsed());
        }
        drop(engine);
        let t0 = Instant::now();
        let loaded = state::load(&k, task).unwrap().unwrap();
        let read = t0.elapsed();
        let mut parts = loaded.parts.into_iter();
        let mut snap: Snapshot = serde_json::from_slice(&parts.next().unwrap().1).unwrap();
        for (_, bytes) in parts {
            // The engine part of an increment, as the service writes it
            // inside its task checkpoint.
            snap.apply(serde_json::from_slice(&bytes).unwrap()).unwrap();
        }
        let mut fresh = engine_with(0);
        assert!(fresh.restore(snap).is_empty());
        let total = t0.elapsed();
        assert_eq!(fresh.stats()[0].active_keys, keys);
        println!(
            "| {keys} | {} B, {:.1} ms | {inc_bytes} B, {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
            whole.len(),
            ms(whole_write),
            ms(median(writes)),
            ms(read),
            ms(total - read),
            ms(total)
        );
    }
}
