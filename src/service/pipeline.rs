//! The pipeline: records in, alerts out, checkpoints in between.
//!
//! The pipeline reads the consumer and hands each record to the [`Task`]
//! that matches the assigned partitions (what a record means, its
//! watermarks and the engine live there, free of Kafka types); it then
//! sends what the task made of it: malformed records to the dead-letter
//! topic, late ones to the late topic (or only counts them), alerts to
//! their pattern's sinks.
//!
//! Every output is entered in the [`Ledger`] before it leaves. On a timer
//! the pipeline snapshots the engine with the next offset of every
//! partition; once the ledger says everything before the snapshot is
//! acknowledged, the checkpoint is written and its offsets committed.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use rdkafka::consumer::Consumer;
use rdkafka::message::{BorrowedMessage, Headers, Message};

use crate::compiler::Automaton;
use crate::config::{KafkaSection, LatePolicy};
use crate::deadletter::{DeadLetter, Origin};
use crate::engine::EngineConfig;
use crate::service::checkpoint::{Checkpoint, Store};
use crate::service::durable;
use crate::service::ledger::Ledger;
use crate::service::metrics::{Counter, Metrics};
use crate::service::sink::kafka::{Outgoing, Producer};
use crate::service::sink::{AlertOut, Delivery, Sink};
use crate::service::source::{self, Rebalance, Source};
use crate::service::task::{Incoming, Task, TaskConfig};

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

pub struct Pipeline {
    p: Parts,
    /// The matching of every assigned partition.
    task: Task,
    /// Snapshot waiting for its outputs: (ledger high mark, checkpoint).
    pending: Option<(u64, Checkpoint)>,
    /// The checkpoint being written, if any (one at a time, in order).
    writing: Option<JoinHandle<bool>>,
    last_checkpoint: Instant,
    started: Instant,
    side_slots: Arc<tokio::sync::Semaphore>,
    alert_counters: HashMap<String, (Counter, Counter)>,
}

impl Pipeline {
    pub fn new(p: Parts) -> Pipeline {
        let task = Task::new(
            p.automata.clone(),
            TaskConfig {
                engine: p.engine,
                inputs: p.kafka.inputs.clone(),
                max_event_bytes: p.kafka.max_event_bytes,
                idle_after: p.kafka.idle_timeout.millis() as u64,
            },
        );
        Pipeline {
            task,
            pending: None,
            writing: None,
            last_checkpoint: Instant::now(),
            started: Instant::now(),
            side_slots: Arc::new(tokio::sync::Semaphore::new(10_000)),
            alert_counters: HashMap::new(),
            p,
        }
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
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
                let fresh = self.task.swap_patterns(automata.clone());
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
            self.pending = None;
            self.p.health.ready.store(false, Ordering::SeqCst);
            let (partitions, restore) = match r {
                Rebalance::Assigned {
                    partitions,
                    restore,
                } => (partitions, restore),
                Rebalance::Revoked => (Vec::new(), None),
            };
            if restore.is_none() && !partitions.is_empty() {
                // An unreadable checkpoint must not be skipped silently.
                self.p.store.load()?;
            }
            let now = self.now();
            let fresh = self.task.assign(&partitions, restore.map(|c| *c), now);
            if !fresh.is_empty() {
                tracing::warn!(patterns = ?fresh, "patterns changed since the checkpoint start afresh");
            }
            let ready = !self.task.assigned().is_empty();
            self.p.health.ready.store(ready, Ordering::SeqCst);
        }
        Ok(())
    }

    async fn handle(&mut self, m: &BorrowedMessage<'_>) {
        let rec = Incoming {
            topic: m.topic(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key(),
            value: m.payload(),
            timestamp: m.timestamp().to_millis(),
        };
        let now = self.now();
        let fate = self.task.push(&rec, now);
        if !fate.dead.is_empty() {
            self.dead_letter(m, fate.dead).await;
        }
        if let Some((t, w)) = fate.late {
            if self.p.kafka.late_events == LatePolicy::Topic {
                let (t, w) = (t.to_string(), w.to_string());
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
        self.dispatch().await;
    }

    async fn dispatch(&mut self) {
        let alerts: Vec<_> = self.task.take_alerts().collect();
        for a in alerts {
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
        self.task.tick(now);
        self.dispatch().await;
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
            && !self.task.assigned().is_empty()
            && self.last_checkpoint.elapsed() >= self.p.checkpoint_interval
        {
            self.last_checkpoint = Instant::now();
            let c = self.checkpoint();
            self.pending = Some((self.p.ledger.high(), c));
        }
    }

    fn checkpoint(&self) -> Checkpoint {
        self.task.checkpoint(&self.p.kafka.group_id)
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
        let counts = self.task.take_counts();
        let m = &self.p.metrics;
        for (t, n) in counts.events_in {
            m.add("cep_events_in_total", &[("topic", &t)], n as f64);
        }
        for (t, n) in counts.decode_errors {
            m.add("cep_decode_errors_total", &[("topic", &t)], n as f64);
        }
        for (s, n) in counts.late {
            m.add("cep_late_events_total", &[("stream", &s)], n as f64);
        }
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        m.clear("cep_watermark_lag_seconds");
        for clocks in self.task.clocks() {
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
        for s in self.task.engine().stats() {
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
        let c = (!self.task.assigned().is_empty()).then(|| self.checkpoint());
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
