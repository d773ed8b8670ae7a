//! `cep serve` against a real broker (nisshi, memory storage, loopback):
//!
//! - `service/passthrough`: a plain rdkafka consume → produce loop copying
//!   every record of the input topic to an output topic;
//! - `service/cep_every_event`: `cep serve` on the same topic with a pattern
//!   that alerts on every event, so it writes as many records as the
//!   pass-through — the ratio of the two is the overhead figure;
//! - `service/cep_fraud`: the four fraud patterns (few alerts), for scale.
//!
//! Each clock starts when the consumer is assigned its partitions and stops
//! when the last output is acknowledged by the broker. After criterion's
//! groups, a fixed-rate run prints event → alert latency percentiles.
//!
//! Needs nisshi (`scripts/install-broker.sh`). Run: `cargo bench --bench service`;
//! the latency run alone: `cargo bench --bench service -- latency` (settings
//! in `LatencySettings`).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientContext;

use cep::config::Config;
use cep::service::Probes;

const EVENTS: usize = 100_000;
const PARTITIONS: i32 = 3;

#[path = "../tests/support/broker.rs"]
mod broker;
use broker::Broker;

/// The broker for throughput runs: memory storage, fast, and correct for
/// consumers that start at offset 0 (see ../shared/kafka-broker.md).
fn start_broker() -> Broker {
    Broker::start_with("memory://nisshi/")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Card events, every one with an amount, then one far-future event per
/// partition (no amount: matches nothing) that moves every watermark past
/// the data.
fn load(brokers: &str, rt: &tokio::runtime::Runtime) {
    rt.block_on(async {
        for t in ["in", "pt-out", "cep-out"] {
            cep::service::produce::create_topic(brokers, t, PARTITIONS)
                .await
                .unwrap();
        }
        let p: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("linger.ms", "20")
            .set("queue.buffering.max.messages", "500000")
            .create()
            .unwrap();
        let events = cep::gen::CardGen::new(EVENTS, 20_000, 5).generate();
        let mut pending = Vec::new();
        let mut last = 0;
        for e in &events {
            last = cep::gen::ts_of(e);
            let key = e["card"]["id"].as_str().unwrap().to_string();
            let bytes = serde_json::to_vec(e).unwrap();
            pending.push(
                p.send_result(FutureRecord::to("in").key(&key).payload(&bytes))
                    .unwrap(),
            );
        }
        for part in 0..PARTITIONS {
            let end = serde_json::to_vec(&serde_json::json!({
                "card": {"id": "~end"}, "ts": last + 86_400_000
            }))
            .unwrap();
            pending.push(
                p.send_result(
                    FutureRecord::<str, _>::to("in")
                        .partition(part)
                        .payload(&end),
                )
                .unwrap(),
            );
        }
        for f in pending {
            f.await.unwrap().unwrap();
        }
    });
}

struct Assigned(Mutex<Option<Instant>>);
impl ClientContext for Assigned {}
impl ConsumerContext for Assigned {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = r {
            if tpl.count() > 0 {
                *self.0.lock().unwrap() = Some(Instant::now());
            }
        }
    }
}

/// Copies every input record to `out`; time from assignment to the last ack.
fn passthrough(brokers: &str, rt: &tokio::runtime::Runtime, run: usize) -> Duration {
    rt.block_on(async {
        let c: StreamConsumer<Assigned> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("pt-{run}"))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "100")
            .create_with_context(Assigned(Mutex::new(None)))
            .unwrap();
        c.subscribe(&["in"]).unwrap();
        let p: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "500000")
            .create()
            .unwrap();
        let total = EVENTS + PARTITIONS as usize;
        let mut pending = Vec::with_capacity(total);
        while pending.len() < total {
            let m = c.recv().await.unwrap();
            let rec = FutureRecord::to("pt-out")
                .payload(m.payload().unwrap_or_default())
                .key(m.key().unwrap_or_default());
            pending.push(p.send_result(rec).map_err(|(e, _)| e).unwrap());
        }
        for f in pending {
            f.await.unwrap().unwrap();
        }
        let t0 = c.context().0.lock().unwrap().expect("assigned");
        p.flush(Duration::from_secs(10)).unwrap();
        t0.elapsed()
    })
}

const EVERY_EVENT: &str = r#"
pattern every_event
  from in key card.id time ts
  match x
  define x as amount >= 0
  emit amount = x.amount
end
"#;

fn service_config(brokers: &str, state: &Path, run: &str, http: u16) -> Config {
    Config::parse(&format!(
        r#"
[engine]
lateness = "0s"
[serve]
state_dir = "{state}"
patterns = "{state}/patterns"
api_token = "bench"
listen = "127.0.0.1:{http}"
default_sinks = ["out"]
checkpoint_interval = "1s"
[kafka]
brokers = "{brokers}"
group_id = "cep-{run}"
instance_id = "bench-{run}"
[[kafka.inputs]]
topic = "in"
# Records are keyed by card (see `load`): each partition is a task.
partitioned_by = "card.id"
[sinks.out]
type = "kafka"
topic = "cep-out"
"#,
        state = state.display()
    ))
    .unwrap()
}

/// A running in-process `cep serve`, ready (partitions assigned).
struct Running {
    probes: Probes,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), String>>,
}

fn start_service(
    rt: &tokio::runtime::Runtime,
    config: Config,
    automata: Vec<cep::compiler::Automaton>,
) -> Running {
    let probes = Probes::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let p = probes.clone();
    let server = rt.spawn(async move {
        cep::service::serve_with(
            config,
            automata,
            async {
                let _ = stopped.await;
            },
            p,
        )
        .await
    });
    while !probes.health.ready.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_micros(200));
    }
    Running {
        probes,
        stop,
        server,
    }
}

/// Runs `cep serve` until it has delivered `alerts` alerts; time from
/// assignment to the last ack. With `hot_loads`, a new version of a probe
/// pattern is PUT every 250 ms meanwhile.
fn cep_run(
    brokers: &str,
    rt: &tokio::runtime::Runtime,
    run: &str,
    source: &str,
    alerts: f64,
    hot_loads: bool,
) -> Duration {
    let state = std::env::temp_dir().join(format!("cep-bench-state-{run}"));
    let _ = std::fs::remove_dir_all(&state);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = service_config(brokers, &state, run, port);
    let automata = cep::compiler::compile_source("bench", source).unwrap();
    let Running {
        probes,
        stop,
        server,
    } = start_service(rt, config, automata);
    let t0 = Instant::now();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loader = hot_loads.then(|| {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            while !done.load(Ordering::SeqCst) {
                n += 1;
                let (status, body) =
                    http(port, "PUT", "/patterns/probe", &probe_source(1_000_000 + n));
                assert_eq!(status, 200, "{body}");
                std::thread::sleep(Duration::from_millis(250));
            }
            n
        })
    });
    let delivered = || {
        probes
            .metrics
            .get("cep_sink_successes_total", &[("sink", "out")])
    };
    while delivered() < alerts {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "stuck at {}",
            delivered()
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    let took = t0.elapsed();
    done.store(true, Ordering::SeqCst);
    if let Some(l) = loader {
        assert!(l.join().unwrap() > 0);
    }
    let _ = stop.send(());
    rt.block_on(server).unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&state);
    took
}

/// One HTTP request to the service: (status, body).
fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer bench\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let status = buf.split(' ').nth(1).unwrap().parse().unwrap();
    (
        status,
        buf.split_once("\r\n\r\n")
            .map(|x| x.1.to_string())
            .unwrap_or_default(),
    )
}

fn probe_source(threshold: u64) -> String {
    format!(
        "pattern probe\n  from in key card.id time ts\n  match x\n  define x as amount > {threshold}\n  emit amount = x.amount\nend\n"
    )
}

/// Time from a PUT of a new pattern version returning 200 to that version
/// raising its first alert: an event produced right after the PUT (and a
/// later one, so the watermark passes it) must be matched by it.
fn hot_load_to_first_match(c: &mut Criterion) {
    let broker = start_broker();
    let brokers = broker.brokers();
    let rt = rt();
    for t in ["in", "cep-out"] {
        rt.block_on(cep::service::produce::create_topic(&brokers, t, 1))
            .unwrap();
    }
    let state = std::env::temp_dir().join("cep-bench-hot");
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(state.join("patterns")).unwrap();
    let http_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = service_config(&brokers, &state, "hot", http_port);
    let Running {
        probes,
        stop,
        server,
    } = start_service(&rt, config, Vec::new());
    // Events keep flowing (1,000 a second, none matching) while patterns
    // are hot-loaded, as in production; they also move the watermark past
    // each probe event.
    // The probe event goes through the same producer, in order with the
    // rest (lateness is 0).
    let flowing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let probe_wanted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let filler = {
        let (flowing, brokers, probe_wanted) =
            (flowing.clone(), brokers.clone(), probe_wanted.clone());
        std::thread::spawn(move || {
            let p: rdkafka::producer::BaseProducer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("linger.ms", "1")
                .create()
                .unwrap();
            while flowing.load(Ordering::SeqCst) {
                let amount = if probe_wanted.swap(false, Ordering::SeqCst) {
                    1e12
                } else {
                    0.0
                };
                let e = serde_json::to_vec(&serde_json::json!({"card": {"id": "f"}, "ts": wall_micros() / 1000, "amount": amount})).unwrap();
                let _ = p.send(rdkafka::producer::BaseRecord::<str, _>::to("in").payload(&e));
                p.poll(Duration::ZERO);
                std::thread::sleep(Duration::from_millis(1));
            }
            p.flush(Duration::from_secs(10)).unwrap();
        })
    };
    let mut n: u64 = 0;
    let mut put_times = Vec::new();
    let mut g = c.benchmark_group("service");
    g.sample_size(20).warm_up_time(Duration::from_millis(1));
    g.bench_function("hot_load_put_to_first_match", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                n += 1;
                let alerts = || {
                    probes.metrics.get(
                        "cep_alerts_total",
                        &[("pattern", "probe"), ("kind", "match")],
                    )
                };
                let before = alerts();
                let t = Instant::now();
                let (status, body) = http(
                    http_port,
                    "PUT",
                    "/patterns/probe",
                    &probe_source(1_000_000 + n),
                );
                assert_eq!(status, 200, "{body}");
                put_times.push(t.elapsed());
                let t0 = Instant::now();
                probe_wanted.store(true, Ordering::SeqCst);
                while alerts() <= before {
                    assert!(
                        t0.elapsed() < Duration::from_secs(30),
                        "no alert from the new version"
                    );
                    std::thread::sleep(Duration::from_micros(200));
                }
                total += t0.elapsed();
            }
            total
        })
    });
    g.finish();
    flowing.store(false, Ordering::SeqCst);
    filler.join().unwrap();
    put_times.sort();
    eprintln!(
        "service/hot_load: PUT round trip (compile, swap between two records, file written): p50 {:.1} ms, max {:.1} ms over {} PUTs",
        put_times[put_times.len() / 2].as_secs_f64() * 1e3,
        put_times.last().unwrap().as_secs_f64() * 1e3,
        put_times.len()
    );
    let _ = stop.send(());
    let _ = rt.block_on(server);
    let _ = std::fs::remove_dir_all(&state);
}

fn fraud_source() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("patterns/fraud");
    let mut s = String::new();
    for f in cep::compiler::pattern_files(&dir) {
        s.push_str(
            &std::fs::read_to_string(f)
                .unwrap()
                .replace("from cards", "from in"),
        );
        s.push('\n');
    }
    s
}

/// Alerts the fraud patterns raise on the bench stream (from `replay`).
fn fraud_alerts() -> f64 {
    let automata = cep::compiler::compile_source("bench", &fraud_source()).unwrap();
    let mut engine = cep::engine::Engine::new(automata, Default::default());
    let mut out = cep::engine::Output::default();
    for (n, e) in cep::gen::CardGen::new(EVENTS, 20_000, 5)
        .generate()
        .iter()
        .enumerate()
    {
        engine.push(None, &Arc::new(e.clone()), n as u64, &mut out);
    }
    engine.flush(&mut out);
    out.alerts.len() as f64
}

fn bench_service(c: &mut Criterion) {
    let broker = start_broker();
    let brokers = broker.brokers();
    let rt = rt();
    load(&brokers, &rt);
    let fraud = fraud_alerts();
    let mut g = c.benchmark_group("service");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(20))
        .throughput(Throughput::Elements(EVENTS as u64));
    let mut run = 0;
    g.bench_function("passthrough", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    run += 1;
                    passthrough(&brokers, &rt, run)
                })
                .sum()
        })
    });
    g.bench_function("cep_every_event", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    run += 1;
                    cep_run(
                        &brokers,
                        &rt,
                        &format!("e{run}"),
                        EVERY_EVENT,
                        EVENTS as f64,
                        false,
                    )
                })
                .sum()
        })
    });
    let fraud_src = fraud_source();
    g.bench_function("cep_fraud", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    run += 1;
                    cep_run(&brokers, &rt, &format!("f{run}"), &fraud_src, fraud, false)
                })
                .sum()
        })
    });
    // The same, with a pattern hot-loaded every 250 ms while events flow.
    g.bench_function("cep_fraud_with_hot_loads", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    run += 1;
                    cep_run(&brokers, &rt, &format!("h{run}"), &fraud_src, fraud, true)
                })
                .sum()
        })
    });
    g.finish();
    drop(broker);
    latency();
}

/// Settings of the latency run, from the environment.
#[derive(Clone, Debug)]
struct LatencySettings {
    /// `CEP_BENCH_LATENCY_STORAGE`, default `memory://nisshi/`.
    storage: String,
    /// `CEP_BENCH_LATENCY_RATE`: events a second, default 10,000.
    rate: u64,
    /// `CEP_BENCH_LATENCY_SECONDS`: measured seconds, default 10.
    seconds: u64,
    /// `CEP_BENCH_LATENCY_PARTITIONS`: of the input and output topics,
    /// default 3.
    partitions: i32,
    /// `CEP_BENCH_LATENCY_LATENESS_MS`: cep's `engine.lateness`, netted out
    /// of its figures, default 100.
    lateness_ms: u64,
    /// `CEP_BENCH_LATENCY_ROUNDS`: relay then cep, this many times,
    /// default 1.
    rounds: usize,
    /// `CEP_BENCH_LATENCY_RELAYS`: which to run, default
    /// `passthrough,cep`.
    relays: String,
    /// `CEP_BENCH_LATENCY_LINGER_MS`: `linger.ms` of the event producer,
    /// default 5.
    linger_ms: u64,
    /// `CEP_BENCH_LATENCY_FRAUD`: whether cep also runs the six fraud
    /// patterns, default false. Their state grows by about 10 MB a second
    /// at 10,000 events/s (no window closes within the run), and writing
    /// it as checkpoints every second is then what sets the latency.
    fraud: bool,
    /// `CEP_BENCH_LATENCY_CARDS`: cards the events are spread over,
    /// default 1,000,000.
    cards: usize,
}

impl LatencySettings {
    fn from_env() -> LatencySettings {
        fn var<T: std::str::FromStr>(name: &str, default: T) -> T {
            match std::env::var(name) {
                Ok(v) => v
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}: cannot parse {v:?}")),
                Err(_) => default,
            }
        }
        LatencySettings {
            storage: var("CEP_BENCH_LATENCY_STORAGE", "memory://nisshi/".to_string()),
            rate: var("CEP_BENCH_LATENCY_RATE", 10_000),
            seconds: var("CEP_BENCH_LATENCY_SECONDS", 10),
            partitions: var("CEP_BENCH_LATENCY_PARTITIONS", 3),
            lateness_ms: var("CEP_BENCH_LATENCY_LATENESS_MS", 100),
            rounds: var("CEP_BENCH_LATENCY_ROUNDS", 1),
            cards: var("CEP_BENCH_LATENCY_CARDS", 1_000_000),
            fraud: var("CEP_BENCH_LATENCY_FRAUD", false),
            linger_ms: var("CEP_BENCH_LATENCY_LINGER_MS", 5),
            relays: var("CEP_BENCH_LATENCY_RELAYS", "passthrough,cep".to_string()),
        }
    }
}

/// Events sent before the measured window (connections, metadata, first
/// batches) and, after it, for at least the lateness and this long again
/// (so every measured event is released by later ones, never by the end
/// of the stream).
const WARM_UP: Duration = Duration::from_secs(1);
const TAIL: Duration = Duration::from_millis(500);

/// Event → alert latency at a fixed input rate, for cep and, as the
/// baseline, for a pass-through relay on the same kind of broker (a fresh
/// one for each run): card events at `rate` per second into a topic of
/// `partitions` partitions keyed by card, each carrying its wall-clock send
/// time (and its event time `ts` = that time in ms); a reader of the output
/// topic notes when it sees each one.
///
/// cep runs one pattern alerting on every event (and, with
/// `CEP_BENCH_LATENCY_FRAUD=true`, the fraud patterns), checkpointing every
/// second, with `engine.lateness` = `lateness_ms`: an event is released to the
/// matcher once an event of its partition at least lateness + 1 ms younger
/// has been read (the engine runs 1 ms behind the watermark, see
/// `cep::time::partitions`), so its latency holds the lateness plus up to
/// about 1 ms (the event time has millisecond resolution) by design. cep's
/// figures are printed net of the lateness, "beyond the configured
/// lateness".
fn latency() {
    let s = LatencySettings::from_env();
    eprintln!("service/latency: {s:?}, warm-up {WARM_UP:?} not measured");
    let mut p99 = Vec::new();
    for round in 0..s.rounds {
        for relay in [Relay::Passthrough, Relay::Cep] {
            if !s.relays.contains(&format!("{relay:?}").to_lowercase()) {
                continue;
            }
            let r = latency_run(&s, relay, round);
            let pct = |v: &[i64], p: f64| {
                if v.is_empty() {
                    return f64::NAN;
                }
                v[((v.len() as f64 * p) as usize).min(v.len() - 1)] as f64 / 1000.0
            };
            let net = match relay {
                Relay::Cep => format!("net of the lateness ({} ms)", s.lateness_ms),
                Relay::Passthrough => "no lateness".into(),
            };
            eprintln!(
                "service/latency/{relay:?} (round {round}): {}/{} measured records ({} other records{}) at {:.0} events/s achieved (asked {}; producer at most {:.1} ms behind schedule, {} events sent in {:.2} s); event -> output read back, {net}: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms; event -> output produced (record timestamp, ms resolution): p50 {:.1} ms, p99 {:.1} ms",
                r.total.len(),
                r.expected,
                r.others,
                match relay {
                    Relay::Cep => " (fraud alerts)",
                    Relay::Passthrough => "",
                },
                r.achieved,
                s.rate,
                r.behind.as_secs_f64() * 1e3,
                r.sent,
                r.send_time.as_secs_f64(),
                pct(&r.total, 0.5),
                pct(&r.total, 0.9),
                pct(&r.total, 0.99),
                pct(&r.total, 1.0),
                pct(&r.emitted, 0.5),
                pct(&r.emitted, 0.99),
            );
            p99.push((relay, pct(&r.total, 0.99)));
        }
    }
    let mean = |which: fn(&Relay) -> bool| {
        let v: Vec<f64> = p99.iter().filter(|x| which(&x.0)).map(|x| x.1).collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let (relay, cep) = (
        mean(|r| matches!(r, Relay::Passthrough)),
        mean(|r| matches!(r, Relay::Cep)),
    );
    eprintln!(
        "service/latency: p99 cep {cep:.1} ms (net of lateness) - relay {relay:.1} ms = {:.1} ms (target: at most 20 ms): {}",
        cep - relay,
        if cep - relay <= 20.0 { "met" } else { "NOT met" }
    );
}

#[derive(Clone, Copy, Debug)]
enum Relay {
    Passthrough,
    Cep,
}

fn wall_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// What one latency run measured.
struct LatencyResult {
    /// Microseconds, sorted: event sent → output read back (net of the
    /// lateness for cep).
    total: Vec<i64>,
    /// Microseconds, sorted: event sent → output record's timestamp.
    emitted: Vec<i64>,
    /// Records of the measured window expected.
    expected: usize,
    /// Other records read (fraud alerts).
    others: usize,
    sent: u64,
    send_time: Duration,
    /// Events a second the producer achieved.
    achieved: f64,
    /// How far the producer fell behind its schedule, at most.
    behind: Duration,
}

const LATENCY_EVERY_EVENT: &str = r#"
pattern every_event
  from in key card.id time ts
  match x
  define x as amount >= 0
  emit sent = x.sent, n = x.n
end
"#;

fn latency_run(s: &LatencySettings, relay: Relay, round: usize) -> LatencyResult {
    let broker = Broker::start_with(&s.storage);
    let brokers = broker.brokers();
    let rt = rt();
    for t in ["in", "out"] {
        rt.block_on(cep::service::produce::create_topic(
            &brokers,
            t,
            s.partitions,
        ))
        .unwrap();
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut stop_service = None;
    let mut probes = None;
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let state = std::env::temp_dir().join(format!("cep-bench-latency-{round}"));
    let server = match relay {
        Relay::Cep => {
            let _ = std::fs::remove_dir_all(&state);
            let http = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut config = service_config(&brokers, &state, &format!("latency-{round}"), http);
            config.engine.lateness = format!("{}ms", s.lateness_ms);
            if let Ok(ms) = std::env::var("CEP_BENCH_LATENCY_CHECKPOINT_MS") {
                config.serve.checkpoint_interval =
                    cep::config::Duration::from_millis(ms.parse().unwrap());
            }
            if let Some(cep::config::SinkConfig::Kafka(k)) = config.sinks.get_mut("out") {
                k.topic = "out".into();
            }
            let mut source = LATENCY_EVERY_EVENT.to_string();
            if s.fraud {
                source.push_str(&fraud_source());
            }
            let automata = cep::compiler::compile_source("bench", &source).unwrap();
            let running = start_service(&rt, config, automata);
            stop_service = Some(running.stop);
            probes = Some(running.probes);
            running.server
        }
        Relay::Passthrough => {
            // The service's client settings (src/service/source.rs and
            // sink/kafka.rs), so the difference is cep's own.
            let b = brokers.clone();
            let up = ready.clone();
            let h = rt.spawn(async move {
                let c: StreamConsumer<Assigned> = ClientConfig::new()
                    .set("bootstrap.servers", &b)
                    .set("group.id", "pt-latency")
                    .set("auto.offset.reset", "earliest")
                    .set("fetch.wait.max.ms", "10")
                    .create_with_context(Assigned(Mutex::new(None)))
                    .unwrap();
                c.subscribe(&["in"]).unwrap();
                let p: FutureProducer = ClientConfig::new()
                    .set("bootstrap.servers", &b)
                    .set("enable.idempotence", "true")
                    .set("acks", "all")
                    .set("linger.ms", "5")
                    .create()
                    .unwrap();
                tokio::pin!(stopped);
                loop {
                    if c.context().0.lock().unwrap().is_some() {
                        up.store(true, Ordering::SeqCst);
                    }
                    tokio::select! {
                        _ = &mut stopped => break,
                        m = c.recv() => {
                            let m = m.unwrap();
                            let mut rec = FutureRecord::<[u8], _>::to("out").payload(m.payload().unwrap_or_default());
                            if let Some(k) = m.key() {
                                rec = rec.key(k);
                            }
                            let _ = p.send_result(rec);
                        }
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
                p.flush(Duration::from_secs(5)).unwrap();
                Ok(())
            });
            while !ready.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            h
        }
    };
    let rate = s.rate;
    let first = rate * WARM_UP.as_millis() as u64 / 1000;
    let measured_end = first + rate * s.seconds;
    let total_events = measured_end + rate * (s.lateness_ms + TAIL.as_millis() as u64) / 1000;
    let expected = (measured_end - first) as usize;
    // A reader of the output topic, started before the first event.
    let reader_brokers = brokers.clone();
    let lateness_us = match relay {
        Relay::Cep => s.lateness_ms as i64 * 1000,
        Relay::Passthrough => 0,
    };
    let reader_timeout = Duration::from_secs(s.seconds + 60);
    let reader = std::thread::spawn(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &reader_brokers)
            .set("group.id", "latency-reader")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "5")
            .create()
            .unwrap();
        c.subscribe(&["out"]).unwrap();
        let mut lat = Vec::with_capacity(expected);
        let mut others = 0;
        let t0 = Instant::now();
        while lat.len() < expected && t0.elapsed() < reader_timeout {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                let now = wall_micros();
                let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
                let fields = if v.get("fields").is_some() {
                    &v["fields"]
                } else {
                    &v
                };
                let (Some(sent), Some(n)) = (fields["sent"].as_i64(), fields["n"].as_u64()) else {
                    others += 1;
                    continue;
                };
                if (first..measured_end).contains(&n) {
                    let emitted = m.timestamp().to_millis().unwrap_or(0) * 1000;
                    lat.push((now - sent - lateness_us, emitted - sent - lateness_us, sent));
                }
            }
        }
        (lat, others)
    });
    std::thread::sleep(Duration::from_secs(3));
    let events = cep::gen::CardGen::new(total_events as usize, s.cards, 5).generate();
    let producer: rdkafka::producer::BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", s.linger_ms.to_string())
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    let start = Instant::now();
    let mut behind = Duration::ZERO;
    for (n, e) in events.into_iter().enumerate() {
        let due = start + Duration::from_micros(n as u64 * 1_000_000 / rate);
        match due.checked_duration_since(Instant::now()) {
            Some(wait) => std::thread::sleep(wait),
            None => behind = behind.max(due.elapsed()),
        }
        producer.poll(Duration::ZERO);
        let sent = wall_micros();
        let key = e["card"]["id"].as_str().unwrap().to_string();
        let mut e = e;
        e["ts"] = (sent / 1000).into();
        e["sent"] = sent.into();
        e["n"] = n.into();
        let bytes = serde_json::to_vec(&e).unwrap();
        while let Err((err, _)) = producer.send(
            rdkafka::producer::BaseRecord::to("in")
                .key(&key)
                .payload(&bytes),
        ) {
            // The local queue is full: the broker does not keep up.
            eprintln!("service/latency: producer: {err}");
            producer.poll(Duration::from_millis(10));
        }
    }
    let send_time = start.elapsed();
    producer.flush(Duration::from_secs(30)).unwrap();
    let (lat, others) = reader.join().unwrap();
    if let Some(p) = &probes {
        // What the checkpoints cost the run.
        let text = p.metrics.render();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("cep_checkpoint") || l.starts_with("cep_state_bytes"))
            .collect();
        eprintln!("service/latency/Cep (round {round}): {}", lines.join(", "));
    }
    let _ = stop.send(());
    if let Some(s) = stop_service {
        let _ = s.send(());
    }
    let _ = rt.block_on(server);
    let _ = std::fs::remove_dir_all(&state);
    if let Ok(dir) = std::env::var("CEP_BENCH_LATENCY_DUMP") {
        // One line per measured record: send time (µs), read back, produced.
        let path = Path::new(&dir).join(format!("latency-{relay:?}-{round}.tsv"));
        let mut text = String::new();
        for l in &lat {
            text.push_str(&format!("{}\t{}\t{}\n", l.2, l.0, l.1));
        }
        std::fs::write(path, text).unwrap();
    }
    let mut total: Vec<i64> = lat.iter().map(|l| l.0).collect();
    let mut emitted: Vec<i64> = lat.iter().map(|l| l.1).collect();
    total.sort();
    emitted.sort();
    LatencyResult {
        total,
        emitted,
        expected,
        others,
        sent: total_events,
        send_time,
        achieved: total_events as f64 / send_time.as_secs_f64(),
        behind,
    }
}

criterion_group!(benches, bench_service, hot_load_to_first_match);

/// `cargo bench --bench service -- latency` runs the latency measurement
/// alone; anything else runs criterion's groups (and the latency after
/// them).
fn main() {
    if std::env::args().skip(1).any(|a| a == "latency") {
        latency();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
