//! A task: the matching of a set of input partitions, with its own engine,
//! event-time clocks and checkpoint.
//!
//! This is the part of the service that decides what a record means, kept
//! apart from Kafka: it sees records as [`Incoming`] (topic, partition,
//! offset, key, value, timestamp; no rdkafka type) and a monotonic `now` in
//! milliseconds, and answers with the record's [`Fate`] (dead letter, late)
//! and alerts to send. The pipeline around it reads the consumer, sends
//! what the task produced to sinks and side topics, and writes checkpoints;
//! the task can be driven and checked alone, with time under the test's
//! control.
//!
//! Per record: the input's key and time sources are applied (message key,
//! record timestamp, or the pattern's fields), the value goes to the engine
//! with its partition's watermark as the lateness bound and its position as
//! the tie-break, the partition's clock moves, and when the stream's
//! watermark passes events the engine releases them (see
//! [`crate::time::partitions`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::compiler::Automaton;
use crate::config::{InputConfig, KeySource, TimeSource};
use crate::engine::{Alert, Engine, EngineConfig, Output, Record};
use crate::event::stable_hash;
use crate::service::checkpoint::{partition_name, Checkpoint, Cut, Increment, FORMAT};
use crate::time::partitions::PartitionClocks;

/// A record as the task sees it.
#[derive(Clone, Copy, Debug)]
pub struct Incoming<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    /// `None` for a record without a value.
    pub value: Option<&'a [u8]>,
    /// The record's timestamp, epoch milliseconds.
    pub timestamp: Option<i64>,
    /// For a record of a repartitioned input: its source partition and
    /// offset (see [`crate::service::repartition`]).
    pub origin: Option<(i32, i64)>,
    /// Why its value could not be decoded (an Avro record): it goes to the
    /// dead-letter topic, its offset counts as read.
    pub undecodable: Option<&'a str>,
}

/// What became of a record besides feeding the engine.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fate {
    /// Why it goes to the dead-letter topic: one reason, or one per pattern
    /// that refused it. Empty: it was read.
    pub dead: Vec<String>,
    /// It was late for at least one pattern: (event time, watermark).
    pub late: Option<(i64, i64)>,
}

/// How the task reads its inputs.
#[derive(Clone, Debug)]
pub struct TaskConfig {
    pub engine: EngineConfig,
    pub inputs: Vec<InputConfig>,
    /// Larger values are dead-lettered unread.
    pub max_event_bytes: usize,
    /// A partition silent this long (ms) is left out of its stream's
    /// watermark.
    pub idle_after: u64,
}

/// A partition as the task tracks it (names built once, not per record).
#[derive(Clone)]
struct Part {
    /// `topic/partition`.
    name: Arc<str>,
    /// Its clock: `name`, or for a record of a repartitioned input
    /// `name@<source partition>`.
    clock: Arc<str>,
    /// Records come from a repartitioned input: their origins are checked.
    repartitioned: bool,
    topic: Arc<str>,
    stream: Arc<str>,
    input: usize,
    /// Tie-break base: topic index and partition in the high bits.
    order_base: u64,
}

/// Counts kept per record and handed to the metrics in batches.
#[derive(Default)]
pub struct Counts {
    /// Per topic.
    pub events_in: HashMap<String, u64>,
    /// Per topic.
    pub decode_errors: HashMap<String, u64>,
    /// Per stream.
    pub late: HashMap<String, u64>,
    /// Per topic: records of a repartitioned input read again (skipped).
    pub repeats: HashMap<String, u64>,
}

pub struct Task {
    config: TaskConfig,
    automata: Vec<Automaton>,
    engine: Engine,
    topic_index: HashMap<String, usize>,
    /// By (input, partition, source partition or -1).
    parts: HashMap<(usize, i32, i32), Part>,
    /// Per stream.
    clocks: BTreeMap<String, PartitionClocks>,
    /// Per stream: the watermark the engine was last driven to.
    engine_wm: HashMap<String, i64>,
    /// `topic/partition` → next offset, for partitions read since the
    /// assignment (or restored).
    positions: BTreeMap<String, i64>,
    assigned: BTreeSet<String>,
    /// Per clock of a repartitioned input (`name@<source partition>`): the
    /// highest source offset matched.
    origins: BTreeMap<String, i64>,
    counts: Counts,
    out: Output,
}

impl Task {
    pub fn new(automata: Vec<Automaton>, config: TaskConfig) -> Task {
        let topic_index = config
            .inputs
            .iter()
            .enumerate()
            .map(|(n, i)| (i.topic.clone(), n))
            .collect();
        let mut engine = Engine::new(automata.clone(), config.engine);
        engine.track_changes(true);
        Task {
            engine,
            automata,
            config,
            topic_index,
            parts: HashMap::new(),
            clocks: BTreeMap::new(),
            engine_wm: HashMap::new(),
            positions: BTreeMap::new(),
            assigned: BTreeSet::new(),
            origins: BTreeMap::new(),
            counts: Counts::default(),
            out: Output::default(),
        }
    }

    fn new_clocks(&self) -> PartitionClocks {
        PartitionClocks::new(self.config.engine.lateness_ms, self.config.idle_after)
    }

    /// A task that takes `partitions`, fresh or from `restore` (see
    /// [`Task::assign`]).
    pub fn assigned_to(
        automata: Vec<Automaton>,
        config: TaskConfig,
        partitions: &[(String, i32)],
        restore: Option<Checkpoint>,
        now: u64,
    ) -> (Task, Vec<String>) {
        let mut t = Task::new(automata, config);
        let fresh = t.take(partitions, restore, now);
        (t, fresh)
    }

    /// Takes `partitions` (topic, partition), fresh or from `restore`;
    /// whatever the task held before is dropped. Returns the patterns that
    /// changed since the checkpoint and start afresh.
    pub fn assign(
        &mut self,
        partitions: &[(String, i32)],
        restore: Option<Checkpoint>,
        now: u64,
    ) -> Vec<String> {
        *self = Task::new(self.automata.clone(), self.config.clone());
        self.take(partitions, restore, now)
    }

    fn take(
        &mut self,
        partitions: &[(String, i32)],
        restore: Option<Checkpoint>,
        now: u64,
    ) -> Vec<String> {
        for (t, p) in partitions {
            let name = partition_name(t, *p);
            if let Some(&i) = self.topic_index.get(t) {
                let stream = self.config.inputs[i].stream().to_string();
                if let Some((_, sources)) = &self.config.inputs[i].repartitioned_from {
                    // One clock per source partition (see
                    // `crate::service::repartition`).
                    let fresh = self.new_clocks();
                    let clocks = self.clocks.entry(stream).or_insert(fresh);
                    for s in 0..*sources {
                        clocks.assign(&format!("{name}@{s}"), now);
                    }
                    self.assigned.insert(name);
                    continue;
                }
                let fresh = self.new_clocks();
                self.clocks
                    .entry(stream)
                    .or_insert(fresh)
                    .assign(&name, now);
            }
            self.assigned.insert(name);
        }
        let fresh = match restore {
            None => Vec::new(),
            Some(c) => {
                for (stream, mut clocks) in c.clocks {
                    clocks.touch_all(now);
                    self.clocks.insert(stream, clocks);
                }
                self.positions = c.offsets;
                self.origins = c.origins;
                self.engine.restore(c.engine)
            }
        };
        // Until the consumer's statistics say whether records wait in a
        // new partition, it may hold some: it is not idle (an event read
        // later must not find the watermark moved past it).
        for name in &self.assigned {
            for clocks in self.clocks.values_mut() {
                clocks.set_backlog(name, true);
            }
        }
        fresh
    }

    /// The partitions (`topic/partition`) the task holds.
    pub fn assigned(&self) -> &BTreeSet<String> {
        &self.assigned
    }

    /// Runs exactly `automata` from the next record on; returns the
    /// patterns that start afresh.
    pub fn swap_patterns(
        &mut self,
        automata: Vec<Automaton>,
        drain: &BTreeSet<String>,
    ) -> Vec<String> {
        self.automata = automata.clone();
        self.engine
            .swap_patterns_with(automata, |name| drain.contains(name))
    }

    /// Drops the draining versions whose runs have all ended; whether any
    /// went.
    pub fn retire_drained(&mut self) -> bool {
        if !self.engine.draining() {
            return false;
        }
        let gone = self.engine.retire_drained();
        for (pattern, version) in &gone {
            tracing::info!(pattern, version, "drained version retired");
        }
        !gone.is_empty()
    }

    fn part(&mut self, topic: &str, partition: i32, source: Option<i32>) -> Option<&Part> {
        let i = *self.topic_index.get(topic)?;
        let input = &self.config.inputs[i];
        let repartitioned = input.repartitioned_from.is_some();
        let source = source.filter(|_| repartitioned);
        let stream = input.stream();
        let slot = (i, partition, source.unwrap_or(-1));
        Some(self.parts.entry(slot).or_insert_with(|| {
            let name: Arc<str> = partition_name(topic, partition).into();
            Part {
                clock: match source {
                    Some(s) => format!("{name}@{s}").into(),
                    None => name.clone(),
                },
                name,
                repartitioned,
                topic: topic.into(),
                stream: stream.into(),
                input: i,
                order_base: ((i as u64) << 56) | ((partition as u64 & 0xffff) << 40),
            }
        }))
    }

    /// Whether a record of a repartitioned input was matched before (it
    /// was re-produced after a crash or a rebalance); notes it otherwise.
    fn repeated(&mut self, part: &Part, origin: Option<(i32, i64)>) -> bool {
        let Some((_, offset)) = origin.filter(|_| part.repartitioned) else {
            return false;
        };
        match self.origins.get_mut(&*part.clock) {
            Some(seen) if offset <= *seen => true,
            Some(seen) => {
                *seen = offset;
                false
            }
            None => {
                self.origins.insert(part.clock.to_string(), offset);
                false
            }
        }
    }

    /// Reads one record: feeds the engine, moves the clocks and releases
    /// what the watermark passed. Alerts wait in [`Task::take_alerts`].
    pub fn push(&mut self, rec: &Incoming<'_>, now: u64) -> Fate {
        // Three reference counts, no string copies: the part's names are
        // shared.
        let source = rec.origin.map(|o| o.0);
        let Some(part) = self.part(rec.topic, rec.partition, source).cloned() else {
            return Fate::default();
        };
        let (name, topic, stream) = (&*part.name, &*part.topic, &*part.stream);
        match self.positions.get_mut(name) {
            Some(p) => *p = rec.offset + 1,
            None => {
                self.positions.insert(name.to_string(), rec.offset + 1);
            }
        }
        if self.repeated(&part, rec.origin) {
            bump(&mut self.counts.repeats, topic);
            return Fate::default();
        }
        bump(&mut self.counts.events_in, topic);
        let mut out = std::mem::take(&mut self.out);
        let problem = match self.check(rec, part.input) {
            Err(p) => Some(p),
            Ok((key, time)) => self.feed(rec, &part, key, time, now, &mut out),
        };
        let fate = Fate {
            dead: match problem {
                Some(p) => vec![p],
                None => out
                    .rejected
                    .iter()
                    .map(|r| format!("pattern {}: {}", r.pattern, r.reason))
                    .collect(),
            },
            late: out.late.first().map(|l| (l.event_time, l.watermark)),
        };
        if !fate.dead.is_empty() {
            bump(&mut self.counts.decode_errors, topic);
        }
        if fate.late.is_some() {
            bump(&mut self.counts.late, stream);
        }
        out.rejected.clear();
        out.late.clear();
        self.advance(stream, now, &mut out);
        self.out = out;
        fate
    }

    /// The key and time a record carries by its input's configuration, or
    /// why it cannot be read.
    fn check<'a>(
        &self,
        rec: &Incoming<'a>,
        input: usize,
    ) -> Result<(Option<&'a str>, Option<i64>), String> {
        let cfg = &self.config.inputs[input];
        if let Some(why) = rec.undecodable {
            return Err(why.to_string());
        }
        let Some(value) = rec.value else {
            return Err("empty record (no value)".into());
        };
        if value.len() > self.config.max_event_bytes {
            return Err(format!(
                "record of {} bytes is larger than kafka.max_event_bytes ({})",
                value.len(),
                self.config.max_event_bytes
            ));
        }
        let key = match cfg.key {
            KeySource::Message => Some(
                rec.key
                    .and_then(|k| std::str::from_utf8(k).ok())
                    .ok_or("no message key (or not UTF-8)")?,
            ),
            KeySource::Fields => None,
        };
        let time = match cfg.time {
            TimeSource::Timestamp => Some(rec.timestamp.ok_or("no record timestamp")?),
            TimeSource::Field => None,
        };
        Ok((key, time))
    }

    /// Hands a readable record to the engine and moves its partition's
    /// clock; `Some(reason)` when it is not a JSON object.
    fn feed(
        &mut self,
        rec: &Incoming<'_>,
        part: &Part,
        key: Option<&str>,
        time: Option<i64>,
        now: u64,
        out: &mut Output,
    ) -> Option<String> {
        let (clock, stream) = (&*part.clock, &*part.stream);
        let value = rec.value.unwrap_or_default();
        let clocks = self.clocks.get(stream);
        let record = Record {
            json: value,
            hash: stable_hash(value, 0),
            key,
            time,
            order: Some(part.order_base | (rec.offset as u64 & ((1 << 40) - 1))),
            late_before: clocks.map_or(i64::MIN, |c| c.late_before(clock)),
        };
        match self.engine.push_record(stream, &record, out) {
            Ok(t) => {
                if !self.clocks.contains_key(stream) {
                    let fresh = self.new_clocks();
                    self.clocks.insert(stream.to_string(), fresh);
                }
                let clocks = self.clocks.get_mut(stream).expect("just made");
                clocks.observe(clock, t, now);
                None
            }
            Err(e) => Some(format!("not a JSON object: {e}")),
        }
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

    /// Whether records are known to be waiting in partition `name`
    /// (`topic/partition`): such a partition is never idle.
    pub fn set_backlog(&mut self, name: &str, waiting: bool) {
        for clocks in self.clocks.values_mut() {
            clocks.set_backlog(name, waiting);
        }
    }

    /// Moves every stream's watermark as time passes (idle partitions drop
    /// out of it).
    pub fn tick(&mut self, now: u64) {
        let mut out = std::mem::take(&mut self.out);
        let streams: Vec<String> = self.clocks.keys().cloned().collect();
        for s in streams {
            self.advance(&s, now, &mut out);
        }
        self.out = out;
    }

    /// Alerts produced since the last call, in order.
    pub fn take_alerts(&mut self) -> std::vec::Drain<'_, Alert> {
        self.out.alerts.drain(..)
    }

    /// Counts since the last call.
    pub fn take_counts(&mut self) -> Counts {
        std::mem::take(&mut self.counts)
    }

    /// The state with the next offset of every partition read: what a
    /// restart resumes from.
    pub fn checkpoint(&self, group: &str) -> Checkpoint {
        Checkpoint {
            format: FORMAT,
            seq: 0,
            group: group.to_string(),
            partitions: self.assigned.clone(),
            offsets: self.positions.clone(),
            origins: self.origins.clone(),
            clocks: self.clocks.clone(),
            engine: self.engine.snapshot(),
        }
    }

    /// Cuts a checkpoint: the whole state, or (`whole` false) the changes
    /// since the last cut, which the caller applies to the checkpoint
    /// before it. Either way the changes start to count afresh.
    pub fn cut(&mut self, group: &str, whole: bool) -> Cut {
        if whole {
            self.engine.forget_changes();
            return Cut::Whole(self.checkpoint(group));
        }
        Cut::Changes(Increment {
            format: FORMAT,
            seq: 0,
            partitions: self.assigned.clone(),
            offsets: self.positions.clone(),
            origins: self.origins.clone(),
            clocks: self.clocks.clone(),
            engine: self.engine.take_changes(),
        })
    }

    /// Per stream, the clocks (for the watermark-lag metric).
    pub fn clocks(&self) -> impl Iterator<Item = &PartitionClocks> {
        self.clocks.values()
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

/// Refuses a pattern set in which a pattern's key could be spread over
/// several partitions, hence several tasks (each partition number is
/// matched on its own). `partitions`: each input topic's partition count.
pub fn check_partitioning(
    inputs: &[InputConfig],
    automata: &[Automaton],
    partitions: &BTreeMap<String, i32>,
) -> Result<(), String> {
    let show = |paths: &[Vec<String>]| {
        paths
            .iter()
            .map(|p| p.join("."))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (n, input) in inputs.iter().enumerate() {
        let count = partitions.get(&input.topic).copied().unwrap_or(1);
        if input.key == KeySource::Message || count <= 1 {
            continue;
        }
        let declared = input.partitioned_by.as_ref().map(|p| p.paths());
        for a in automata.iter().filter(|a| a.stream == input.stream()) {
            if declared.as_ref() == Some(&a.key_paths) {
                continue;
            }
            let (topic, keys) = (&input.topic, show(&a.key_paths));
            if let (Some((source, _)), Some(d)) = (&input.repartitioned_from, &declared) {
                return Err(format!(
                    "pattern `{}` is keyed by {keys}, but topic `{source}` is repartitioned by {} (kafka.inputs[{n}].repartition_by): key the pattern by {} too, or repartition by {keys}",
                    a.name,
                    show(d),
                    show(d)
                ));
            }
            return Err(match &declared {
                None => format!(
                    "pattern `{}` is keyed by {keys}, but topic `{topic}` has {count} partitions and kafka.inputs[{n}].partitioned_by is not set: each partition is matched on its own, so all of a key's events must be in one partition. If producers key `{topic}` by {keys}, set kafka.inputs[{n}].partitioned_by; otherwise read it with key = \"message\", or from a topic of one partition",
                    a.name
                ),
                Some(d) => format!(
                    "pattern `{}` is keyed by {keys}, but topic `{topic}` ({count} partitions) is partitioned by {} (kafka.inputs[{n}].partitioned_by): one key's events would be matched in different partitions. Key the pattern by {} too, or read a topic partitioned by {keys}",
                    a.name,
                    show(d),
                    show(d)
                ),
            });
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests;
