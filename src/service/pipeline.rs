//! The pipeline: records in, alerts out, checkpoints in between.
//!
//! One task owns the engine and reads the consumer. For each record it
//! works out the stream, key and time sources of its topic, hands the bytes
//! to [`Engine::push_record`] with the partition's own watermark as the
//! lateness bound and the record's position as the tie-break, updates the
//! partition's clock and, when the stream's watermark moved, drives the
//! engine to it. Malformed records go to the dead-letter topic, late ones to
//! the late topic (or are counted), alerts to their pattern's sinks.
//!
//! Every output is entered in the [`Ledger`] before it leaves. On a timer
//! the pipeline snapshots the engine with the next offset of every
//! partition; once the ledger says everything before the snapshot is
//! acknowledged, the checkpoint is written and its offsets committed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use rdkafka::consumer::Consumer;
use rdkafka::message::{BorrowedMessage, Headers, Message};

use crate::compiler::Automaton;
use crate::config::{InputConfig, KafkaSection, KeySource, LatePolicy, TimeSource};
use crate::deadletter::{DeadLetter, Origin};
use crate::engine::{Engine, EngineConfig, Output, Record};
use crate::event::stable_hash;
use crate::service::checkpoint::{partition_name, Checkpoint, Store, FORMAT};
use crate::service::durable;
use crate::service::ledger::Ledger;
use crate::service::metrics::{Counter, Metrics};
use crate::service::sink::kafka::{Outgoing, Producer};
use crate::service::sink::{AlertOut, Delivery, Sink};
use crate::service::source::{self, Rebalance, Source};
use crate::time::partitions::PartitionClocks;

/// Shared with the HTTP endpoints.
#[derive(Default)]
pub struct Health {
    pub ready: AtomicBool,
}

/// What the pipeline is built from.
pub struct Parts {
    pub automata: Vec<Automaton>,
    /// Pattern-set changes from the REST API, applied between records.
    pub commands: tokio::sync::mpsc::Receiver<Command>,
    pub engine: EngineConfig,
    pub kafka: KafkaSection,
    pub sinks: Vec<Sink>,
    /// Pattern name → indices into `sinks`.
    pub routes: HashMap<String, Vec<usize>>,
    pub default_route: Vec<usize>,
    pub producer: Producer,
    pub ledger: Ledger,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub store: Store,
    pub checkpoint_interval: Duration,
    pub shutdown_timeout: Duration,
    pub fallback_dead_letter: std::path::PathBuf,
}

/// A change to the running pattern set.
pub enum Command {
    /// Run exactly these patterns from the next record on; the reply names
    /// the patterns that started afresh.
    Swap {
        automata: Vec<Automaton>,
        done: tokio::sync::oneshot::Sender<Vec<String>>,
    },
}

/// A partition as the pipeline tracks it (names built once, not per
/// record).
struct Part {
    /// `topic/partition`.
    name: Arc<str>,
    topic: Arc<str>,
    stream: Arc<str>,
    input: usize,
    /// Tie-break base: topic index and partition in the high bits.
    order_base: u64,
}

/// Counts kept locally and added to the metrics once per tick.
#[derive(Default)]
struct Counts {
    events_in: HashMap<String, u64>,
    decode_errors: HashMap<String, u64>,
    late: HashMap<String, u64>,
}

pub struct Pipeline {
    p: Parts,
    engine: Engine,
    inputs: Vec<InputConfig>,
    topic_index: HashMap<String, usize>,
    parts: HashMap<(usize, i32), Part>,
    clocks: BTreeMap<String, PartitionClocks>,
    engine_wm: HashMap<String, i64>,
    /// `topic/partition` → next offset, for partitions read since the
    /// assignment (or restored).
    positions: BTreeMap<String, i64>,
    assigned: BTreeSet<String>,
    counts: Counts,
    /// Snapshot waiting for its outputs: (ledger high mark, checkpoint).
    pending: Option<(u64, Checkpoint)>,
    /// The checkpoint being written, if any (one at a time, in order).
    writing: Option<JoinHandle<bool>>,
    last_checkpoint: Instant,
    started: Instant,
    side_slots: Arc<tokio::sync::Semaphore>,
    alert_counters: HashMap<String, (Counter, Counter)>,
    out: Output,
}

impl Pipeline {
    pub fn new(p: Parts) -> Pipeline {
        let inputs = p.kafka.inputs.clone();
        let topic_index = inputs
            .iter()
            .enumerate()
            .map(|(n, i)| (i.topic.clone(), n))
            .collect();
        let engine = Engine::new(p.automata.clone(), p.engine);
        Pipeline {
            engine,
            inputs,
            topic_index,
            parts: HashMap::new(),
            clocks: BTreeMap::new(),
            engine_wm: HashMap::new(),
            positions: BTreeMap::new(),
            assigned: BTreeSet::new(),
            counts: Counts::default(),
            pending: None,
            writing: None,
            last_checkpoint: Instant::now(),
            started: Instant::now(),
            side_slots: Arc::new(tokio::sync::Semaphore::new(10_000)),
            alert_counters: HashMap::new(),
            out: Output::default(),
            p,
        }
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn new_clocks(&self) -> PartitionClocks {
        PartitionClocks::new(
            self.p.engine.lateness_ms,
            self.p.kafka.idle_timeout.millis() as u64,
        )
    }

    /// Runs until `shutdown` resolves, then checkpoints what it can within
    /// the shutdown timeout. `Err` when the shutdown could not flush.
    pub async fn run(
        mut self,
        consumer: Source,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), String> {
        tokio::pin!(shutdown);
        let consumer = Arc::new(consumer);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Some(c) = self.p.commands.recv() => self.apply(c),
                m = consumer.recv() => {
                    self.apply_rebalances(&consumer)?;
                    match m {
                        Ok(m) => self.handle(&m).await,
                        Err(e) => tracing::warn!(error = %e, "consumer error"),
                    }
                }
                _ = tick.tick() => {
                    self.apply_rebalances(&consumer)?;
                    self.on_tick(&consumer).await;
                }
            }
        }
        self.shutdown(consumer).await
    }

    fn apply(&mut self, c: Command) {
        match c {
            Command::Swap { automata, done } => {
                let fresh = self.engine.swap_patterns(automata.clone());
                self.p.automata = automata;
                tracing::info!(fresh = ?fresh, patterns = self.p.automata.len(), "pattern set swapped");
                let _ = done.send(fresh);
            }
        }
    }

    fn apply_rebalances(&mut self, consumer: &Source) -> Result<(), String> {
        for r in consumer.context().take_rebalances() {
            // Whatever happens, the old state goes: revoked partitions keep
            // nothing, and a new assignment starts from its checkpoint or
            // its committed offsets.
            self.engine = Engine::new(self.p.automata.clone(), self.p.engine);
            self.clocks.clear();
            self.engine_wm.clear();
            self.positions.clear();
            self.assigned.clear();
            self.parts.clear();
            self.pending = None;
            self.p.health.ready.store(false, Ordering::SeqCst);
            if let Rebalance::Assigned {
                partitions,
                restore,
            } = r
            {
                if restore.is_none() {
                    // An unreadable checkpoint must not be skipped silently.
                    self.p.store.load()?;
                }
                let now = self.now();
                for (t, p) in &partitions {
                    let name = partition_name(t, *p);
                    if let Some(&i) = self.topic_index.get(t) {
                        let stream = self.inputs[i].stream().to_string();
                        let fresh = self.new_clocks();
                        self.clocks
                            .entry(stream)
                            .or_insert(fresh)
                            .assign(&name, now);
                    }
                    self.assigned.insert(name);
                }
                if let Some(c) = restore {
                    let fresh = self.engine.restore(c.engine);
                    if !fresh.is_empty() {
                        tracing::warn!(patterns = ?fresh, "patterns changed since the checkpoint start afresh");
                    }
                    for (stream, mut clocks) in c.clocks {
                        clocks.touch_all(now);
                        self.clocks.insert(stream, clocks);
                    }
                    self.positions = c.offsets;
                }
                self.p
                    .health
                    .ready
                    .store(!self.assigned.is_empty(), Ordering::SeqCst);
            }
        }
        Ok(())
    }

    fn part(&mut self, topic: &str, partition: i32) -> Option<&Part> {
        let i = *self.topic_index.get(topic)?;
        let stream = self.inputs[i].stream();
        Some(self.parts.entry((i, partition)).or_insert_with(|| Part {
            name: partition_name(topic, partition).into(),
            topic: topic.into(),
            stream: stream.into(),
            input: i,
            order_base: ((i as u64) << 56) | ((partition as u64 & 0xffff) << 40),
        }))
    }

    async fn handle(&mut self, m: &BorrowedMessage<'_>) {
        let Some(part) = self.part(m.topic(), m.partition()) else {
            return;
        };
        let (name, input, order_base) = (part.name.clone(), part.input, part.order_base);
        let (topic, stream) = (part.topic.clone(), part.stream.clone());
        let offset = m.offset();
        match self.positions.get_mut(&*name) {
            Some(p) => *p = offset + 1,
            None => {
                self.positions.insert(name.to_string(), offset + 1);
            }
        }
        bump(&mut self.counts.events_in, &topic);
        let cfg = &self.inputs[input];
        let payload = m.payload().unwrap_or_default();

        let reject = |why: String| Some(why);
        let problem = if m.payload().is_none() {
            reject("empty record (no value)".into())
        } else if payload.len() > self.p.kafka.max_event_bytes {
            reject(format!(
                "record of {} bytes is larger than kafka.max_event_bytes ({})",
                payload.len(),
                self.p.kafka.max_event_bytes
            ))
        } else {
            None
        };
        let key = match (cfg.key, m.key()) {
            (KeySource::Message, Some(k)) => std::str::from_utf8(k).ok(),
            _ => None,
        };
        let problem = problem.or_else(|| match (cfg.key, key) {
            (KeySource::Message, None) => Some("no message key (or not UTF-8)".to_string()),
            _ => None,
        });
        let time = match cfg.time {
            TimeSource::Timestamp => m.timestamp().to_millis(),
            TimeSource::Field => None,
        };
        let problem = problem.or_else(|| match (cfg.time, time) {
            (TimeSource::Timestamp, None) => Some("no record timestamp".to_string()),
            _ => None,
        });
        let now = self.now();
        let mut out = std::mem::take(&mut self.out);
        let problem = match problem {
            Some(p) => Some(p),
            None => {
                let clocks = self.clocks.get(&*stream);
                let rec = Record {
                    json: payload,
                    hash: stable_hash(payload, 0),
                    key,
                    time,
                    order: Some(order_base | (offset as u64 & ((1 << 40) - 1))),
                    late_before: clocks.map_or(i64::MIN, |c| c.late_before(&name)),
                };
                match self.engine.push_record(&stream, &rec, &mut out) {
                    Ok(t) => {
                        if !self.clocks.contains_key(&*stream) {
                            let fresh = self.new_clocks();
                            self.clocks.insert(stream.to_string(), fresh);
                        }
                        let clocks = self.clocks.get_mut(&*stream).expect("just made");
                        clocks.observe(&name, t, now);
                        None
                    }
                    Err(e) => Some(format!("not a JSON object: {e}")),
                }
            }
        };
        let reasons = match problem {
            Some(p) => vec![p],
            None => out
                .rejected
                .iter()
                .map(|r| format!("pattern {}: {}", r.pattern, r.reason))
                .collect(),
        };
        if !reasons.is_empty() {
            bump(&mut self.counts.decode_errors, &topic);
            self.dead_letter(m, reasons).await;
        }
        if !out.late.is_empty() {
            bump(&mut self.counts.late, &stream);
            if self.p.kafka.late_events == LatePolicy::Topic {
                let first = &out.late[0];
                let (t, w) = (first.event_time.to_string(), first.watermark.to_string());
                let why = format!("late: event time {t} is before the watermark {w}");
                self.side_output(
                    m,
                    self.p.kafka.late_topic.clone(),
                    &[
                        ("cep-event-time", t.as_bytes()),
                        ("cep-watermark", w.as_bytes()),
                    ],
                    vec![why],
                )
                .await;
            }
        }
        out.rejected.clear();
        out.late.clear();
        self.advance(&stream, now, &mut out);
        self.dispatch(&mut out).await;
        self.out = out;
    }

    /// Drives the engine to the stream's watermark if it moved.
    fn advance(&mut self, stream: &str, now: u64, out: &mut Output) {
        let Some(wm) = self
            .clocks
            .get(stream)
            .and_then(|c| c.engine_watermark(now))
        else {
            return;
        };
        let last = match self.engine_wm.get_mut(stream) {
            Some(l) => l,
            None => self.engine_wm.entry(stream.to_string()).or_insert(i64::MIN),
        };
        if wm > *last {
            *last = wm;
            self.engine.advance_watermark(stream, wm, out);
        }
    }

    async fn dispatch(&mut self, out: &mut Output) {
        for a in out.alerts.drain(..) {
            let kind = match a.kind {
                crate::engine::AlertKind::Match => "match",
                crate::engine::AlertKind::Timeout => "timeout",
            };
            if !self.alert_counters.contains_key(&a.pattern) {
                let m = &self.p.metrics;
                let c = |k| m.counter("cep_alerts_total", &[("pattern", &a.pattern), ("kind", k)]);
                let pair = (c("match"), c("timeout"));
                self.alert_counters.insert(a.pattern.clone(), pair);
            }
            let pair = &self.alert_counters[&a.pattern];
            let counter = if kind == "match" { &pair.0 } else { &pair.1 };
            counter.inc();
            let route = self
                .p
                .routes
                .get(&a.pattern)
                .unwrap_or(&self.p.default_route);
            let alert = Arc::new(AlertOut::new(&a));
            let ticket = self.p.ledger.enter(route.len() as u32);
            for &s in route {
                let d = Delivery {
                    ticket,
                    alert: alert.clone(),
                };
                if let Err(e) = self.p.sinks[s].send(d).await {
                    tracing::error!(error = %e, "alert not queued");
                }
            }
        }
    }

    /// Writes the record once to the dead-letter topic, whatever the
    /// number of patterns that refused it: its bytes as they were, every
    /// reason (`cep-reasons`, a JSON array; `cep-reason`, joined by `; `)
    /// and its origin in headers.
    async fn dead_letter(&self, m: &BorrowedMessage<'_>, reasons: Vec<String>) {
        tracing::debug!(
            topic = m.topic(),
            partition = m.partition(),
            offset = m.offset(),
            ?reasons,
            "dead letter"
        );
        let topic = self.p.kafka.dead_letter_topic.clone();
        let joined = reasons.join("; ");
        let list = serde_json::to_string(&reasons).expect("strings serialise");
        self.side_output(
            m,
            topic,
            &[
                ("cep-reason", joined.as_bytes()),
                ("cep-reasons", list.as_bytes()),
            ],
            reasons,
        )
        .await;
    }

    /// Writes a copy of the record, with its origin in headers, to `topic`;
    /// should Kafka refuse it for good, to the local fallback file with
    /// `reasons`.
    async fn side_output(
        &self,
        m: &BorrowedMessage<'_>,
        topic: String,
        extra: &[(&str, &[u8])],
        reasons: Vec<String>,
    ) {
        let mut headers: Vec<(String, Vec<u8>)> = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect();
        headers.push(("cep-source-topic".into(), m.topic().as_bytes().to_vec()));
        headers.push((
            "cep-source-partition".into(),
            m.partition().to_string().into_bytes(),
        ));
        headers.push((
            "cep-source-offset".into(),
            m.offset().to_string().into_bytes(),
        ));
        if let Some(h) = m.headers() {
            for i in 0..h.count() {
                let h = h.get(i);
                headers.push((
                    format!("cep-original-{}", h.key),
                    h.value.unwrap_or_default().to_vec(),
                ));
            }
        }
        let msg = Outgoing {
            topic,
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().unwrap_or_default().to_vec(),
            headers,
        };
        let origin = Origin::Kafka {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
        };
        let permit = self
            .side_slots
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore open");
        let ticket = self.p.ledger.enter(1);
        let (producer, ledger, fallback) = (
            self.p.producer.clone(),
            self.p.ledger.clone(),
            self.p.fallback_dead_letter.clone(),
        );
        let counters = self.p.metrics.sink(&msg.topic);
        let delivery = producer.deliver(msg.clone(), counters);
        tokio::spawn(async move {
            if let Err(refusal) = delivery.await {
                let mut reasons = reasons;
                reasons.push(format!("kafka refused it for {}: {refusal}", msg.topic));
                let letter = DeadLetter::new(origin, &msg.payload, reasons);
                fallback_write(fallback, &msg.topic, letter).await;
            }
            ledger.settle(ticket);
            drop(permit);
        });
    }

    async fn on_tick(&mut self, consumer: &Arc<Source>) {
        let now = self.now();
        let mut out = std::mem::take(&mut self.out);
        let streams: Vec<String> = self.clocks.keys().cloned().collect();
        for s in streams {
            self.advance(&s, now, &mut out);
        }
        self.dispatch(&mut out).await;
        self.out = out;
        self.publish_metrics();

        if self.writing.as_ref().is_some_and(|w| w.is_finished()) {
            self.writing = None;
        }
        if let Some((seq, _)) = &self.pending {
            if self.writing.is_none() && self.p.ledger.settled_through(*seq) {
                let (_, c) = self.pending.take().expect("pending");
                self.writing = Some(self.persist(consumer, c, false));
            }
        }
        if self.pending.is_none()
            && !self.assigned.is_empty()
            && self.last_checkpoint.elapsed() >= self.p.checkpoint_interval
        {
            self.last_checkpoint = Instant::now();
            let c = self.checkpoint();
            self.pending = Some((self.p.ledger.high(), c));
        }
    }

    fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            format: FORMAT,
            group: self.p.kafka.group_id.clone(),
            partitions: self.assigned.clone(),
            offsets: self.positions.clone(),
            clocks: self.clocks.clone(),
            engine: self.engine.snapshot(),
        }
    }

    /// Writes the checkpoint, then commits its offsets, on a blocking
    /// thread: serialising and fsync must not stall the records.
    fn persist(&self, consumer: &Arc<Source>, c: Checkpoint, sync: bool) -> JoinHandle<bool> {
        let (store, metrics, consumer) = (
            self.p.store.clone(),
            self.p.metrics.clone(),
            consumer.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let bytes = serde_json::to_vec(&c).expect("a checkpoint serialises");
            if let Err(e) = store.save(&bytes) {
                tracing::error!(error = %e, path = %store.path().display(), "checkpoint not written");
                return false;
            }
            if let Err(e) = source::commit(&consumer, &c.offsets, sync) {
                tracing::warn!(error = %e, "offset commit failed");
                return false;
            }
            metrics.inc("cep_checkpoints_total", &[]);
            true
        })
    }

    fn publish_metrics(&mut self) {
        let m = &self.p.metrics;
        for (t, n) in self.counts.events_in.drain() {
            m.add("cep_events_in_total", &[("topic", &t)], n as f64);
        }
        for (t, n) in self.counts.decode_errors.drain() {
            m.add("cep_decode_errors_total", &[("topic", &t)], n as f64);
        }
        for (s, n) in self.counts.late.drain() {
            m.add("cep_late_events_total", &[("stream", &s)], n as f64);
        }
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        m.clear("cep_watermark_lag_seconds");
        for clocks in self.clocks.values() {
            for (name, wm) in clocks.partition_watermarks() {
                if let Some(w) = wm {
                    let (topic, p) = name.rsplit_once('/').unwrap_or((name, ""));
                    m.set(
                        "cep_watermark_lag_seconds",
                        &[("topic", topic), ("partition", p)],
                        (wall - w) as f64 / 1000.0,
                    );
                }
            }
        }
        for s in self.engine.stats() {
            let l = [("pattern", s.pattern.as_str())];
            m.set("cep_active_runs", &l, s.active_runs as f64);
            m.set("cep_pattern_events", &l, s.matched.events as f64);
            m.set("cep_active_keys", &l, s.active_keys as f64);
            m.set("cep_runs_dropped_total", &l, s.matched.runs_dropped as f64);
            m.set("cep_shadow_alerts_total", &l, s.shadow_alerts as f64);
        }
        m.set(
            "cep_outputs_outstanding",
            &[],
            self.p.ledger.outstanding() as f64,
        );
    }

    /// Stops consuming, checkpoints the current state once its outputs are
    /// acknowledged, commits and closes the sinks, all within the shutdown
    /// timeout.
    async fn shutdown(mut self, consumer: Arc<Source>) -> Result<(), String> {
        self.p.health.ready.store(false, Ordering::SeqCst);
        let deadline = self.p.shutdown_timeout;
        let c = (!self.assigned.is_empty()).then(|| self.checkpoint());
        let high = self.p.ledger.high();
        let flushed = tokio::time::timeout(deadline, self.p.ledger.wait_through(high))
            .await
            .is_ok();
        let mut result = Ok(());
        if flushed {
            if let Some(c) = c {
                if let Some(w) = self.writing.take() {
                    let _ = w.await;
                }
                if !self.persist(&consumer, c, true).await.unwrap_or(false) {
                    result = Err("the final checkpoint failed".to_string());
                }
            }
        } else {
            result = Err(format!(
                "{} output(s) not acknowledged within {:?}: they are re-read after a restart",
                self.p.ledger.outstanding(),
                deadline
            ));
        }
        let sinks = std::mem::take(&mut self.p.sinks);
        let close = async {
            for s in sinks {
                s.close().await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), close).await;
        self.p.producer.flush(Duration::from_secs(2));
        self.publish_metrics();
        result
    }
}

/// Adds one to `counts[name]` without allocating a key each time.
fn bump(counts: &mut HashMap<String, u64>, name: &str) {
    match counts.get_mut(name) {
        Some(n) => *n += 1,
        None => {
            counts.insert(name.to_string(), 1);
        }
    }
}

/// Last resort for a record Kafka refused for good: a local file, so that
/// nothing goes nowhere. Each line is a dead letter
/// ([`crate::deadletter`], readable by `cep replay --format dead-letter`)
/// with the topic it was meant for as `destination`.
async fn fallback_write(path: std::path::PathBuf, destination: &str, letter: DeadLetter) {
    let mut line = serde_json::to_value(&letter).expect("a dead letter serialises");
    line["destination"] = destination.into();
    let line = Arc::new(line.to_string());
    let what = format!("a fallback write to {}", path.display());
    durable::until_ok(
        &what,
        || {},
        || {
            let (path, line) = (path.clone(), line.clone());
            async move {
                durable::blocking(move || {
                    durable::append_lines(&path, std::iter::once(line.as_bytes()))
                })
                .await
                .map_err(|e| e.to_string())
            }
        },
    )
    .await;
}
