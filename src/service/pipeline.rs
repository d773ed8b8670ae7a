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
//! each task cuts a checkpoint (whole, or the keys changed since its last
//! one) with the next offset of each of its partitions; once the ledger
//! says everything before the cut is acknowledged, the checkpoint is added
//! to the state topic and its offsets committed. A task writes one
//! checkpoint at a time, in order: an increment is only meaningful on the
//! chain before it.

mod checkpointing;
mod side_outputs;

use checkpointing::{persist, CheckpointSink, Slot};
use side_outputs::Destination;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::{BorrowedMessage, Headers, Message};

use crate::compiler::Automaton;
use crate::config::{KafkaSection, LatePolicy};
use crate::engine::EngineConfig;
use crate::service::avro::{Decoded, Decoders};
use crate::service::checkpoint::partition_name;
use crate::service::checkpoint::{Cut, Store};
use crate::service::ledger::Ledger;
use crate::service::metrics::{Counter, Metrics};
use crate::service::repartition::{self, Route};
use crate::service::sink::kafka::Producer;
use crate::service::sink::{AlertOut, Delivery, Sink};
use crate::service::source::{self, Rebalance, Revoked, Source};
use crate::service::state::StateTopic;
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
    /// Where checkpoints of earlier versions were kept.
    pub state_dir: std::path::PathBuf,
    /// Where task checkpoints are kept (see [`crate::service::state`]).
    pub state: StateTopic,
    pub checkpoint_interval: Duration,
    pub shutdown_timeout: Duration,
    pub fallback_dead_letter: std::path::PathBuf,
    /// Source topic → where its records are re-produced (see
    /// [`crate::service::repartition`]).
    pub repartition: HashMap<String, Route>,
    /// Decoders of the Avro inputs (see [`crate::service::avro`]).
    pub decoders: Arc<Decoders>,
}

/// A change to the running pattern set.
pub enum Command {
    /// Run exactly these patterns from the next record on; the reply names
    /// the patterns that started afresh.
    Swap {
        automata: Vec<Automaton>,
        /// Changed patterns replaced in drain mode (see
        /// [`crate::engine::Engine::swap_patterns_with`]).
        drain: BTreeSet<String>,
        done: tokio::sync::oneshot::Sender<Vec<String>>,
    },
}

pub struct Pipeline {
    p: Parts,
    /// Per partition number: the task matching that partition of every
    /// input topic (co-partitioned, as Kafka Streams does).
    tasks: BTreeMap<i32, Slot>,
    task_config: TaskConfig,
    last_checkpoint: Instant,
    started: Instant,
    side_slots: Arc<tokio::sync::Semaphore>,
    alert_counters: HashMap<String, (Counter, Counter)>,
    /// Internal topics of repartitioned inputs (their records carry their
    /// origin).
    internal: BTreeSet<String>,
    /// Source topics: `topic/partition` → next offset re-produced.
    source_offsets: BTreeMap<String, i64>,
    /// Source offsets waiting for their records' acknowledgements: (ledger
    /// high mark, offsets).
    source_pending: Option<(u64, BTreeMap<String, i64>)>,
    /// Source partitions revoked and not yet given up: their records are
    /// no longer re-produced.
    revoked_sources: BTreeSet<String>,
}

impl Pipeline {
    pub fn new(p: Parts) -> Pipeline {
        let task_config = TaskConfig {
            engine: p.engine,
            inputs: p.kafka.inputs.clone(),
            max_event_bytes: p.kafka.max_event_bytes,
            idle_after: p.kafka.idle_timeout.millis() as u64,
        };
        let legacy = Store::legacy(&p.state_dir, &p.kafka.group_id);
        if legacy.exists() {
            tracing::warn!(file = %legacy.display(), "a checkpoint of a version before tasks is ignored: tasks start from the committed offsets");
        }
        Pipeline {
            tasks: BTreeMap::new(),
            task_config,
            last_checkpoint: Instant::now(),
            started: Instant::now(),
            side_slots: Arc::new(tokio::sync::Semaphore::new(10_000)),
            alert_counters: HashMap::new(),
            internal: p.repartition.values().map(|r| r.internal.clone()).collect(),
            source_offsets: BTreeMap::new(),
            source_pending: None,
            revoked_sources: BTreeSet::new(),
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
            Command::Swap {
                automata,
                drain,
                done,
            } => {
                let mut fresh = BTreeSet::new();
                for slot in self.tasks.values_mut() {
                    fresh.extend(slot.task.swap_patterns(automata.clone(), &drain));
                    slot.whole_next = true;
                }
                let fresh: Vec<String> = fresh.into_iter().collect();
                self.p.automata = automata;
                tracing::info!(fresh = ?fresh, patterns = self.p.automata.len(), "pattern set swapped");
                let _ = done.send(fresh);
            }
        }
    }

    fn apply_rebalances(&mut self, consumer: &Arc<Source>) -> Result<(), String> {
        for r in consumer.context().take_rebalances() {
            // Tasks revoked cleanly (cooperative) go after a final
            // checkpoint; revoked otherwise, they go keeping nothing (their
            // outputs in flight keep their ids if produced again). Each task
            // of a new assignment starts from its checkpoint or its
            // committed offsets; the others keep running.
            let (partitions, mut restore, errors) = match r {
                Rebalance::Revoked(revoked) => {
                    match revoked {
                        Revoked::All => {
                            self.tasks.clear();
                            self.source_offsets.clear();
                            self.source_pending = None;
                        }
                        Revoked::Some(parts) => self.hand_over(consumer, parts),
                    }
                    // Tasks that stay report theirs again at their next
                    // checkpoint.
                    self.p.metrics.clear("cep_checkpoint_bytes");
                    continue;
                }
                Rebalance::Assigned {
                    partitions,
                    restore,
                    errors,
                } => (partitions, restore, errors),
            };
            if let Some(e) = errors.first() {
                return Err(format!("cannot resume a task: {e}"));
            }
            let mut by_task: BTreeMap<i32, Vec<(String, i32)>> = BTreeMap::new();
            for (t, p) in partitions {
                // A source topic's partitions are only re-produced.
                self.revoked_sources.remove(&partition_name(&t, p));
                if !self.p.repartition.contains_key(&t) {
                    by_task.entry(p).or_default().push((t, p));
                }
            }
            let now = self.now();
            for (id, parts) in by_task {
                let resume = restore.remove(&id).unwrap_or_default();
                let (task, fresh) = Task::assigned_to(
                    self.p.automata.clone(),
                    self.task_config.clone(),
                    &parts,
                    resume.checkpoint,
                    now,
                );
                if !fresh.is_empty() {
                    tracing::warn!(task = id, patterns = ?fresh, "patterns changed since the checkpoint start afresh");
                }
                // The first checkpoint of a new owner is whole (see
                // `crate::service::state`, "Crashes").
                let slot = Slot {
                    task,
                    seq: resume.last_seq,
                    chain: resume.chain,
                    whole_next: true,
                    pending: None,
                    writing: None,
                };
                self.tasks.insert(id, slot);
            }
        }
        let ready = !self.tasks.is_empty();
        self.p.health.ready.store(ready, Ordering::SeqCst);
        Ok(())
    }

    /// Revoked partitions (cooperative): their tasks stop now; in the
    /// background, once every output so far is acknowledged (within the
    /// shutdown timeout), each writes a final checkpoint and commits, the
    /// source offsets of repartitioned inputs are committed, and the
    /// partitions are given up, which lets the rebalance (and their next
    /// owner) go on.
    fn hand_over(&mut self, consumer: &Arc<Source>, parts: Vec<(String, i32)>) {
        if parts.is_empty() {
            return;
        }
        let mut leaving = Vec::new();
        let mut sources = BTreeMap::new();
        for (t, p) in &parts {
            let name = partition_name(t, *p);
            if self.p.repartition.contains_key(t) {
                if let Some(o) = self.source_offsets.remove(&name) {
                    sources.insert(name.clone(), o);
                }
                // Committed below, once; never again after the next owner
                // has moved on.
                if let Some((_, pending)) = &mut self.source_pending {
                    pending.remove(&name);
                }
                self.revoked_sources.insert(name);
            } else if let Some(slot) = self.tasks.remove(p) {
                leaving.push((*p, slot));
            }
        }
        let group = self.p.kafka.group_id.clone();
        let (ledger, sink, consumer) = (self.p.ledger.clone(), self.sink(), consumer.clone());
        let deadline = self.p.shutdown_timeout;
        tokio::spawn(async move {
            let high = ledger.high();
            if tokio::time::timeout(deadline, ledger.wait_through(high))
                .await
                .is_ok()
            {
                for (id, mut slot) in leaving {
                    slot.finish_write().await;
                    let whole = slot.pending.take().is_some();
                    let cut = slot.cut(&group, whole);
                    let chain = std::mem::take(&mut slot.chain);
                    slot.writing = Some(persist(sink.clone(), id, &consumer, cut, chain, true));
                    let ok = slot.finish_write().await;
                    tracing::info!(task = id, final_checkpoint = ok, "task handed over");
                }
                let c = consumer.clone();
                let _ =
                    tokio::task::spawn_blocking(move || source::commit(&c, &sources, true)).await;
            } else {
                tracing::warn!("outputs not acknowledged in time: tasks handed over without a final checkpoint");
            }
            source::hand_over(&consumer, &parts);
        });
    }

    async fn handle(&mut self, m: &BorrowedMessage<'_>) {
        if let Some(route) = self.p.repartition.get(m.topic()) {
            let route = route.clone();
            return self.repartition(m, &route).await;
        }
        let origin = if self.internal.contains(m.topic()) {
            m.headers().and_then(|h| {
                repartition::origin(h.iter().map(|h| (h.key, h.value.unwrap_or_default())))
            })
        } else {
            None
        };
        let decoded = self.p.decoders.decode(m.topic(), m.payload()).await;
        let (value, undecodable) = match &decoded {
            Decoded::Plain => (m.payload(), None),
            Decoded::Json(json) => (Some(&json[..]), None),
            Decoded::Bad(why) => (m.payload(), Some(why.as_str())),
        };
        let rec = Incoming {
            topic: m.topic(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key(),
            value,
            timestamp: m.timestamp().to_millis(),
            origin,
            undecodable,
        };
        let now = self.now();
        let Some(slot) = self.tasks.get_mut(&rec.partition) else {
            return;
        };
        let fate = slot.task.push(&rec, now);
        if !fate.dead.is_empty() {
            self.dead_letter(m, fate.dead).await;
        }
        if let Some((t, w)) = fate.late {
            if self.p.kafka.late_events == LatePolicy::Topic {
                let (t, w) = (t.to_string(), w.to_string());
                let why = format!("late: event time {t} is before the watermark {w}");
                let to = self.copy_to(m, self.p.kafka.late_topic.clone());
                self.side_output(
                    m,
                    to,
                    &[
                        ("cep-event-time", t.as_bytes()),
                        ("cep-watermark", w.as_bytes()),
                    ],
                    vec![why],
                )
                .await;
            }
        }
        self.dispatch(Some(rec.partition)).await;
    }

    /// Re-produces a record of a source topic into its internal topic, in
    /// the partition of its key (or dead-letters it when it has none).
    async fn repartition(&mut self, m: &BorrowedMessage<'_>, route: &Route) {
        let name = partition_name(m.topic(), m.partition());
        if self.revoked_sources.contains(&name) {
            return;
        }
        self.source_offsets.insert(name, m.offset() + 1);
        let value = m.payload().unwrap_or_default();
        match repartition::key_of(value, &route.paths) {
            Err(why) => self.dead_letter(m, vec![why]).await,
            Ok(key) => {
                let to = Destination {
                    topic: route.internal.clone(),
                    partition: Some(repartition::partition_of(&key, route.partitions)),
                    key: Some(key.into_bytes()),
                };
                let why = format!("repartitioning to {}", route.internal);
                self.side_output(m, to, &[], vec![why]).await;
            }
        }
    }

    /// Sends the alerts of one task (or of every task) to their sinks.
    async fn dispatch(&mut self, task: Option<i32>) {
        let mut alerts = Vec::new();
        match task {
            Some(id) => {
                if let Some(slot) = self.tasks.get_mut(&id) {
                    alerts.extend(slot.task.take_alerts());
                }
            }
            None => {
                for slot in self.tasks.values_mut() {
                    alerts.extend(slot.task.take_alerts());
                }
            }
        }
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

    async fn on_tick(&mut self, consumer: &Arc<Source>) {
        let now = self.now();
        for (name, waiting) in consumer.context().backlog() {
            let task = name
                .rsplit_once('/')
                .and_then(|(_, p)| p.parse::<i32>().ok());
            if let Some(slot) = task.and_then(|t| self.tasks.get_mut(&t)) {
                slot.task.set_backlog(&name, waiting);
            }
        }
        for slot in self.tasks.values_mut() {
            slot.task.tick(now);
            // A drained version leaving changes the pattern set.
            if slot.task.retire_drained() {
                slot.whole_next = true;
            }
        }
        self.dispatch(None).await;
        self.publish_metrics();

        // Each task: write the snapshot whose outputs are all acknowledged,
        // then take the next one when the interval has passed.
        let due = self.last_checkpoint.elapsed() >= self.p.checkpoint_interval;
        if due {
            self.last_checkpoint = Instant::now();
        }
        let (ledger, group) = (self.p.ledger.clone(), self.p.kafka.group_id.clone());
        let sink = self.sink();
        for (id, slot) in self.tasks.iter_mut() {
            if slot.writing.as_ref().is_some_and(|w| w.is_finished()) {
                slot.finish_write().await;
            }
            if let Some((mark, _)) = &slot.pending {
                if slot.writing.is_none() && ledger.settled_through(*mark) {
                    let (_, c) = slot.pending.take().expect("pending");
                    let chain = std::mem::take(&mut slot.chain);
                    slot.writing = Some(persist(sink.clone(), *id, consumer, c, chain, false));
                }
            }
            if slot.pending.is_none() && slot.writing.is_none() && due {
                slot.pending = Some((ledger.high(), slot.cut(&group, false)));
            }
        }
        self.commit_sources(consumer, due);
    }

    /// Commits the source topics' offsets once every record re-produced
    /// before them is acknowledged.
    fn commit_sources(&mut self, consumer: &Arc<Source>, due: bool) {
        if let Some((mark, _)) = &self.source_pending {
            if self.p.ledger.settled_through(*mark) {
                let (_, offsets) = self.source_pending.take().expect("pending");
                let consumer = consumer.clone();
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = source::commit(&consumer, &offsets, false) {
                        tracing::warn!(error = %e, "source offset commit failed");
                    }
                });
            }
        }
        if self.source_pending.is_none() && due && !self.source_offsets.is_empty() {
            self.source_pending = Some((self.p.ledger.high(), self.source_offsets.clone()));
        }
    }

    fn sink(&self) -> CheckpointSink {
        CheckpointSink {
            state: self.p.state.clone(),
            metrics: self.p.metrics.clone(),
        }
    }

    fn publish_metrics(&mut self) {
        let m = &self.p.metrics;
        for slot in self.tasks.values_mut() {
            let counts = slot.task.take_counts();
            for (t, n) in counts.events_in {
                m.add("cep_events_in_total", &[("topic", &t)], n as f64);
            }
            for (t, n) in counts.repeats {
                m.add("cep_repartition_repeats_total", &[("topic", &t)], n as f64);
            }
            for (t, n) in counts.decode_errors {
                m.add("cep_decode_errors_total", &[("topic", &t)], n as f64);
            }
            for (s, n) in counts.late {
                m.add("cep_late_events_total", &[("stream", &s)], n as f64);
            }
        }
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        m.clear("cep_watermark_lag_seconds");
        for clocks in self.tasks.values().flat_map(|s| s.task.clocks()) {
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
        // Per pattern, summed over the tasks.
        let mut sums: BTreeMap<String, [u64; 6]> = BTreeMap::new();
        let mut draining: BTreeMap<(String, u32), u64> = BTreeMap::new();
        for slot in self.tasks.values() {
            for s in slot.task.engine().stats() {
                if s.draining {
                    *draining.entry((s.pattern.clone(), s.version)).or_default() +=
                        s.active_runs as u64;
                    continue;
                }
                let sum = sums.entry(s.pattern.clone()).or_default();
                sum[0] += s.active_runs as u64;
                sum[1] += s.matched.events;
                sum[2] += s.active_keys as u64;
                sum[3] += s.matched.runs_dropped;
                sum[4] += s.shadow_alerts;
                sum[5] += s.matched.history_evictions;
            }
        }
        for (pattern, sum) in sums {
            let l = [("pattern", pattern.as_str())];
            let names = [
                "cep_active_runs",
                "cep_pattern_events",
                "cep_active_keys",
                "cep_runs_dropped_total",
                "cep_shadow_alerts_total",
                "cep_history_evictions_total",
            ];
            for (name, v) in names.iter().zip(sum) {
                m.set(name, &l, v as f64);
            }
        }
        m.clear("cep_draining_runs");
        for ((pattern, version), runs) in draining {
            let v = version.to_string();
            let l = [("pattern", pattern.as_str()), ("version", v.as_str())];
            m.set("cep_draining_runs", &l, runs as f64);
        }
        m.set(
            "cep_outputs_outstanding",
            &[],
            self.p.ledger.outstanding() as f64,
        );
        m.set("cep_tasks", &[], self.tasks.len() as f64);
    }

    /// Stops consuming, checkpoints the current state once its outputs are
    /// acknowledged, commits and closes the sinks, all within the shutdown
    /// timeout.
    async fn shutdown(mut self, consumer: Arc<Source>) -> Result<(), String> {
        self.p.health.ready.store(false, Ordering::SeqCst);
        consumer.context().closing();
        let deadline = self.p.shutdown_timeout;
        let group = self.p.kafka.group_id.clone();
        let mut finals: Vec<Cut> = Vec::new();
        for s in self.tasks.values_mut() {
            s.finish_write().await;
            // A pending increment is dropped, so the final one must be whole.
            let whole = s.pending.take().is_some();
            finals.push(s.cut(&group, whole));
        }
        let high = self.p.ledger.high();
        let flushed = tokio::time::timeout(deadline, self.p.ledger.wait_through(high))
            .await
            .is_ok();
        let mut result = Ok(());
        if flushed && !self.source_offsets.is_empty() {
            let (consumer, offsets) = (consumer.clone(), self.source_offsets.clone());
            let commit =
                tokio::task::spawn_blocking(move || source::commit(&consumer, &offsets, true));
            if let Ok(Err(e)) | Err(e) = commit.await.map_err(|e| e.to_string()) {
                tracing::warn!(error = %e, "source offset commit failed");
            }
        }
        if flushed {
            let sink = self.sink();
            for ((id, slot), c) in self.tasks.iter_mut().zip(finals) {
                let chain = std::mem::take(&mut slot.chain);
                slot.writing = Some(persist(sink.clone(), *id, &consumer, c, chain, true));
                if !slot.finish_write().await {
                    result = Err("a final checkpoint failed".to_string());
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
