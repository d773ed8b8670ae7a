//! Several `cep serve` instances in one consumer group on one broker
//! (nisshi, memory storage, loopback), as separate processes:
//!
//! - **Throughput with 1, 2 and 3 instances**: a 6-partition topic holding
//!   [`EVENTS`] card events (the four fraud patterns); the instances start
//!   together in a fresh group and read it to the end. Printed: wall time
//!   from the start to the last event read, events/s over that time, and
//!   the CPU the instances used per event (from `/proc`), from which larger
//!   deployments follow. Everything shares this machine's cores with the
//!   broker: more instances than cores measure contention, not scale.
//! - **Failover**: two instances while a producer sends 600 events/s
//!   (each card a small charge, then a large one a second later: a steady
//!   flow of alerts from every partition); one instance is killed
//!   (SIGKILL), or stopped (SIGTERM). Printed: per partition, the time from
//!   the stop to the first alert on an event sent after it; the slowest
//!   partition is the time until the dead instance's tasks run again on
//!   the other one (the group's session timeout, then the restore).
//!
//! - **Latency with per-task clocks**: 1,000 events/s into 6 partitions,
//!   five busy (200/s each) and one slow (1/s), a pattern alerting on every
//!   event, lateness 0: event → alert read back, p50 / p99. With
//!   `CEP_BENCH_OLD_BIN` set to a `cep` built before tasks (one clock for
//!   the whole stream: an event waited for a later one on every
//!   partition), the same run against it.
//!
//! Needs nisshi (`scripts/install-broker.sh`). Run: `cargo bench --bench scale`
//! (`CEP_SCALE_ONLY=failover|latency` runs one part).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

#[path = "../tests/support/mod.rs"]
mod support;
use support::{client, create_topic, free_port, produce, Broker, Out, Serve};

const EVENTS: usize = 600_000;
const PARTITIONS: i32 = 6;

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn config(brokers: &str, topic: &str, group: &str, who: &str) -> String {
    config_with(brokers, topic, group, who, &repo("patterns/fraud"), true)
}

/// `tasks`: the configuration of a version with tasks (`partitioned_by`).
fn config_with(
    brokers: &str,
    topic: &str,
    group: &str,
    who: &str,
    patterns: &Path,
    tasks: bool,
) -> String {
    let partitioned = if tasks {
        "partitioned_by = \"card.id\""
    } else {
        ""
    };
    format!(
        r#"
[engine]
lateness = "0s"

[serve]
patterns = "{patterns}"
checkpoint_interval = "1s"
listen = "127.0.0.1:{{HTTP}}"
default_sinks = ["alerts"]

[kafka]
brokers = "{brokers}"
group_id = "{group}"
instance_id = "{group}-{who}"

[[kafka.inputs]]
topic = "{topic}"
stream = "cards"
{partitioned}

[sinks.alerts]
type = "kafka"
topic = "alerts-{group}"
"#,
        patterns = patterns.display()
    )
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cep-scale-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn partition_of(card: &str) -> i32 {
    (card[1..].parse::<u64>().unwrap() % PARTITIONS as u64) as i32
}

fn start(brokers: &str, topic: &str, group: &str, who: &str) -> Serve {
    let dir = scratch(&format!("{group}-{who}"));
    create_topic_once(brokers, &format!("alerts-{group}"));
    Serve::start(&dir, &config(brokers, topic, group, who))
}

fn create_topic_once(brokers: &str, topic: &str) {
    static MADE: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut made = MADE.lock().unwrap();
    if !made.iter().any(|t| t == topic) {
        create_topic(brokers, topic, 1);
        made.push(topic.to_string());
    }
}

fn throughput(broker: &Broker) {
    let brokers = &broker.brokers();
    create_topic(brokers, "cards", PARTITIONS);
    let events = cep::gen::CardGen {
        mean_gap_ms: 50.0,
        ..cep::gen::CardGen::new(EVENTS, 20_000, 42)
    }
    .generate();
    let lines: Vec<(i32, Vec<u8>)> = events
        .iter()
        .map(|e| {
            let card = e["card"]["id"].as_str().unwrap();
            (partition_of(card), serde_json::to_vec(e).unwrap())
        })
        .collect();
    let out: Vec<Out> = lines
        .iter()
        .map(|(p, v)| Out {
            partition: Some(*p),
            key: None,
            value: v,
        })
        .collect();
    let t0 = Instant::now();
    produce(brokers, "cards", &out);
    eprintln!("produced {EVENTS} events in {:?}", t0.elapsed());

    println!("| instances | start → first event read (group join) | first → last event read | events/s | CPU per event, instances | CPU per event, broker | cores busy while reading, instances + broker |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for k in 1..=3 {
        let group = format!("scale{k}");
        let t0 = Instant::now();
        let broker_cpu = broker.cpu();
        let instances: Vec<Serve> = (0..k)
            .map(|i| start(brokers, "cards", &group, &format!("i{i}")))
            .collect();
        let read = || -> f64 {
            instances
                .iter()
                .map(|s| s.metric("cep_events_in_total", ""))
                .sum()
        };
        let mut first = None;
        while read() < EVENTS as f64 {
            assert!(
                t0.elapsed() < Duration::from_secs(600),
                "stuck at {}",
                read()
            );
            if first.is_none() && read() > 0.0 {
                first = Some(t0.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let wall = t0.elapsed();
        let first = first.unwrap_or_default();
        let reading = (wall - first).as_secs_f64();
        let cpu: Duration = instances.iter().map(|s| s.cpu()).sum();
        let broker_cpu = broker.cpu() - broker_cpu;
        let per_event = |d: Duration| d.as_secs_f64() * 1e6 / EVENTS as f64;
        println!(
            "| {k} | {:.2} s | {reading:.2} s | {:.0} k | {:.1} µs | {:.1} µs | {:.2} |",
            first.as_secs_f64(),
            EVENTS as f64 / reading / 1000.0,
            per_event(cpu),
            per_event(broker_cpu),
            (cpu + broker_cpu).as_secs_f64() / reading
        );
        for s in &instances {
            s.signal("-TERM");
        }
        for mut s in instances {
            s.wait(Duration::from_secs(30));
        }
    }
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Sends each card's small charge, then its large one a second later, at
/// 600 events/s over 600 cards (every partition), until `stop`.
fn live_producer(
    brokers: String,
    topic: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let p: BaseProducer = client(&brokers).set("linger.ms", "1").create().unwrap();
        let mut n: u64 = 0;
        while !stop.load(Ordering::SeqCst) {
            // Times only grow within a partition (lateness 0): card n gets
            // its small charge now, card n - 300 (small a second ago) its
            // large one.
            let now = wall_ms();
            for _ in 0..6 {
                let small = format!("c{:06}", n % 600);
                let large = format!("c{:06}", (n + 300) % 600);
                for (card, amount) in [(&small, 5.0), (&large, 900.0)] {
                    let v = serde_json::json!({"card": {"id": card}, "ts": now, "amount": amount,
                        "merchant": "m", "country": "NL"});
                    let v = serde_json::to_vec(&v).unwrap();
                    let rec = BaseRecord::<str, [u8]>::to(&topic)
                        .partition(partition_of(card))
                        .payload(&v);
                    let _ = p.send(rec);
                }
                n += 1;
            }
            p.poll(Duration::ZERO);
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = p.flush(Duration::from_secs(10));
    })
}

/// Reads the alerts topic from its start (no group to join: it is read
/// from the moment this returns), noting when each alert arrived:
/// (arrival wall ms, partition of its card, `end_ms`).
type Arrivals = Arc<Mutex<Vec<(i64, i32, i64)>>>;

fn alert_reader(brokers: &str, topic: &str, stop: Arc<AtomicBool>) -> Arrivals {
    let c: BaseConsumer = client(brokers)
        .set("group.id", format!("reader-{}", free_port()))
        // The broker answers a fetch when data arrives or after this long.
        .set("fetch.wait.max.ms", "5")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let seen: Arrivals = Arc::default();
    let out = seen.clone();
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let Some(Ok(m)) = c.poll(Duration::from_millis(50)) else {
                continue;
            };
            let a: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            if a["kind"] == "match" {
                let p = partition_of(a["key"].as_str().unwrap());
                let end = a["end_ms"].as_i64().unwrap();
                out.lock().unwrap().push((wall_ms(), p, end));
            }
        }
    });
    seen
}

/// Per partition, when the first alert on an event sent at or after
/// `since` (wall ms) arrived; waits until every partition has one.
fn first_alerts_after(seen: &Arrivals, since: i64) -> BTreeMap<i32, i64> {
    let t0 = Instant::now();
    loop {
        let mut first = BTreeMap::new();
        for &(at, p, end) in seen.lock().unwrap().iter() {
            if end >= since {
                first.entry(p).or_insert(at);
            }
        }
        if first.len() as i32 == PARTITIONS || t0.elapsed() > Duration::from_secs(120) {
            return first;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn failover(brokers: &str, signal: &str) {
    let group = format!("failover{}", signal.trim_start_matches('-').to_lowercase());
    let topic = format!("live-{group}");
    create_topic(brokers, &topic, PARTITIONS);
    let stop = Arc::new(AtomicBool::new(false));
    let producer = live_producer(brokers.to_string(), topic.clone(), stop.clone());
    let alerts = format!("alerts-{group}");
    create_topic_once(brokers, &alerts);
    let seen = alert_reader(brokers, &alerts, stop.clone());
    let mut a = start(brokers, &topic, &group, "a");
    let mut b = start(brokers, &topic, &group, "b");
    a.wait_ready(Duration::from_secs(60));
    b.wait_ready(Duration::from_secs(60));
    // Both hold tasks and alerts flow from every partition.
    let t0 = Instant::now();
    while a.metric("cep_tasks", "") + b.metric("cep_tasks", "") < PARTITIONS as f64
        || a.metric("cep_tasks", "") == 0.0
        || b.metric("cep_tasks", "") == 0.0
    {
        assert!(t0.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(3));
    let held = b.metric("cep_tasks", "");
    let killed_at = wall_ms();
    b.signal(signal);
    let first = first_alerts_after(&seen, killed_at);
    stop.store(true, Ordering::SeqCst);
    producer.join().unwrap();
    let mut after: Vec<i64> = first.values().map(|t| t - killed_at).collect();
    after.sort();
    println!(
        "| {signal} | {held} of {PARTITIONS} | {} ms | {} ms | {} |",
        after.first().copied().unwrap_or(-1),
        after.last().copied().unwrap_or(-1),
        first.len()
    );
    a.signal("-TERM");
    a.wait(Duration::from_secs(30));
    let _ = b.wait(Duration::from_secs(30));
}

const EVERY_EVENT: &str = r#"pattern every_event
  from cards key card.id time ts
  match x
  define x as amount >= 0
  emit amount = x.amount
end
"#;

/// Event → alert latencies (ms) of `bin` (None: this build) at 1,000
/// events/s over 6 partitions, one of them slow.
fn latency_run(brokers: &str, label: &str, bin: Option<&Path>) -> Vec<i64> {
    let group = format!("lat{label}");
    let topic = format!("live-{group}");
    create_topic(brokers, &topic, PARTITIONS);
    let alerts = format!("alerts-{group}");
    create_topic_once(brokers, &alerts);
    let dir = scratch(&group);
    let patterns = dir.join("patterns");
    std::fs::create_dir_all(&patterns).unwrap();
    std::fs::write(patterns.join("every.cep"), EVERY_EVENT).unwrap();
    let cfg = config_with(brokers, &topic, &group, "a", &patterns, bin.is_none());
    let mut serve = match bin {
        Some(b) => Serve::start_binary(b, &dir, &cfg, &[]),
        None => Serve::start(&dir, &cfg),
    };
    serve.wait_ready(Duration::from_secs(60));
    let stop = Arc::new(AtomicBool::new(false));
    let seen = alert_reader(brokers, &alerts, stop.clone());
    let p: BaseProducer = client(brokers).set("linger.ms", "0").create().unwrap();
    let t0 = Instant::now();
    let mut n: u64 = 0;
    let mut measured_from = 0;
    while t0.elapsed() < Duration::from_secs(12) {
        // Every millisecond one event: partitions 0-4 in turn, and
        // partition 5 once a second.
        let partition = if n % 1000 == 999 { 5 } else { (n % 5) as i32 };
        let card = format!("c{:06}", partition as u64 + 6 * (n % 50));
        let now = wall_ms();
        if t0.elapsed() < Duration::from_secs(2) {
            measured_from = now + 1;
        }
        let v = serde_json::json!({"card": {"id": card}, "ts": now, "amount": 1.0});
        let v = serde_json::to_vec(&v).unwrap();
        let rec = BaseRecord::<str, [u8]>::to(&topic)
            .partition(partition)
            .payload(&v);
        let _ = p.send(rec);
        p.poll(Duration::ZERO);
        n += 1;
        let next = t0 + Duration::from_millis(n);
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    let _ = p.flush(Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    serve.signal("-TERM");
    serve.wait(Duration::from_secs(30));
    let mut lat: Vec<i64> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, _, end)| *end >= measured_from)
        .map(|(at, _, end)| at - end)
        .collect();
    lat.sort();
    lat
}

fn latency(brokers: &str) {
    println!("| build | alerts measured | p50 | p90 | p99 | max |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let old = std::env::var_os("CEP_BENCH_OLD_BIN").map(PathBuf::from);
    let runs: Vec<(&str, Option<&Path>)> = std::iter::once(("tasks", None))
        .chain(old.as_deref().map(|b| ("before tasks", Some(b))))
        .collect();
    for (n, (label, bin)) in runs.into_iter().enumerate() {
        let lat = latency_run(brokers, &n.to_string(), bin);
        let pct = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
        println!(
            "| {label} | {} | {} ms | {} ms | {} ms | {} ms |",
            lat.len(),
            pct(0.5),
            pct(0.9),
            pct(0.99),
            pct(1.0)
        );
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let broker = Broker::start_with("memory://nisshi/");
    let b = broker.brokers();
    let only = std::env::var("CEP_SCALE_ONLY").unwrap_or_default();
    if only.is_empty() || only == "throughput" {
        throughput(&broker);
        println!();
    }
    if only.is_empty() || only == "failover" {
        println!("| stop | tasks it held | first alert after the stop (fastest partition) | slowest partition (its tasks moved) | partitions with an alert after |");
        println!("| --- | --- | --- | --- | --- |");
        failover(&b, "-KILL");
        failover(&b, "-TERM");
        println!();
    }
    if only.is_empty() || only == "latency" {
        latency(&b);
    }
}
