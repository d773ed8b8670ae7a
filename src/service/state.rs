//! Task state kept in Kafka: each task's checkpoints in a compacted topic of
//! the consumer group, so that whichever instance is assigned a task (on
//! another machine, on an empty disk) resumes exactly where its previous
//! owner checkpointed. `serve.state_dir` is not written any more; a
//! checkpoint file left there by an earlier version is read when the state
//! topic has nothing for its task.
//!
//! # Layout
//! The state topic has one partition per task: task `i` writes and reads
//! partition `i` only, so restoring a task reads one place. A task's state
//! there is a *chain*: a whole checkpoint, then the increments cut after it
//! (the runs of the keys that changed, the offsets, clocks, reorder buffer
//! and counters whole; see [`crate::engine::Changes`]). Each part is
//! serialised and cut into chunks of at most [`CHUNK_BYTES`] (Kafka's
//! record size limit), keyed `w/<seq>/<n>` (whole) or `c/<seq>/<n>`
//! (changes), each chunk carrying its checkpoint number in the `cep-seq`
//! header. After a part's chunks are acknowledged, a `manifest` record
//! names the chain as it now stands; a reader takes the latest manifest,
//! reads the whole checkpoint it names and applies its increments in order.
//!
//! # Cost
//! A checkpoint writes the keys that changed since the one before, not the
//! whole state: 1 % of 1M keys changed is 1 % of the bytes. The chain grows
//! until its increments together outweigh its whole checkpoint (and 1 MiB);
//! the next checkpoint is then whole again ([`Chain::wants_whole`]), which
//! keeps a restore below twice the state (or 1 MiB) and the amortised cost
//! of a checkpoint in proportion to the changes. Once a manifest naming a new whole
//! checkpoint is acknowledged, every record of the chain before it gets a
//! tombstone and compaction forgets them. (Per-key records, compacted in
//! place, would avoid rewriting the whole state now and then, but without
//! transactions a key's new value would overwrite the only committed one
//! before the checkpoint that holds it is complete.)
//!
//! # Crashes
//! Without transactions (the brokers we run on have none), a crash can stop
//! a checkpoint half-written. Every record key holds its checkpoint number,
//! so a new part never overwrites a record the committed manifest names,
//! and the manifest is written last: a reader ignores chunks no manifest
//! names. A new owner numbers its checkpoints after the highest number in
//! the partition, starts with a whole one, and once that is committed
//! deletes every record it found (half-written parts included).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::config::KafkaSection;
use crate::service::connect::client_config;
use crate::service::metrics::SinkCounters;
use crate::service::sink::kafka::{Outgoing, Producer};

/// Largest chunk of a checkpoint, in bytes (below Kafka's default 1 MB
/// record limit, with room for headers).
pub const CHUNK_BYTES: usize = 512 * 1024;

/// Increments below this size in all never make the next checkpoint whole:
/// a small state's chain is cheap to read whatever its length, and its
/// increments (which carry every pattern's reorder buffer and counters)
/// can outweigh its whole checkpoint at once.
pub const SMALL_CHAIN_BYTES: u64 = 1024 * 1024;

/// Most increments a chain holds (the manifest lists them).
pub const MAX_INCREMENTS: usize = 1000;

const MANIFEST: &str = "manifest";
const SEQ_HEADER: &str = "cep-seq";

/// One part of a chain: a whole checkpoint or an increment, in chunks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    seq: u64,
    whole: bool,
    chunks: u32,
    bytes: u64,
}

impl Part {
    fn chunk_key(&self, n: u32) -> String {
        chunk_key(self.whole, self.seq, n)
    }

    fn keys(&self) -> impl Iterator<Item = String> + '_ {
        (0..self.chunks).map(|n| self.chunk_key(n))
    }
}

fn chunk_key(whole: bool, seq: u64, n: u32) -> String {
    let kind = if whole { 'w' } else { 'c' };
    format!("{kind}/{seq}/{n}")
}

/// The record naming a task's committed chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Manifest {
    whole: Part,
    increments: Vec<Part>,
}

/// A task's chain as its writer knows it.
#[derive(Clone, Debug, Default)]
pub struct Chain {
    whole: Option<Part>,
    increments: Vec<Part>,
    /// Records to delete once the next whole checkpoint is committed.
    garbage: Vec<String>,
}

impl Chain {
    /// A chain to start over: the next checkpoint is whole, and the records
    /// found in the task's partition go once it is committed.
    pub fn replacing(records: Vec<String>) -> Chain {
        Chain {
            garbage: records,
            ..Chain::default()
        }
    }

    /// Whether the next checkpoint should be whole: there is none yet, or
    /// the increments together are larger than the whole checkpoint (and
    /// than [`SMALL_CHAIN_BYTES`]), or there are [`MAX_INCREMENTS`].
    pub fn wants_whole(&self) -> bool {
        let Some(w) = &self.whole else {
            return true;
        };
        let increments: u64 = self.increments.iter().map(|p| p.bytes).sum();
        increments > w.bytes.max(SMALL_CHAIN_BYTES) || self.increments.len() >= MAX_INCREMENTS
    }

    /// The chain's bytes (what a restore reads).
    pub fn bytes(&self) -> u64 {
        let w = self.whole.as_ref().map_or(0, |p| p.bytes);
        w + self.increments.iter().map(|p| p.bytes).sum::<u64>()
    }

    /// Gives up the chain: its records become garbage and the next
    /// checkpoint is whole.
    fn abandon(mut self, also: Option<&Part>) -> Chain {
        let parts = self
            .whole
            .take()
            .into_iter()
            .chain(self.increments.drain(..));
        for p in parts.chain(also.cloned()) {
            self.garbage.extend(p.keys());
        }
        self
    }
}

/// The state topic of a consumer group.
#[derive(Clone)]
pub struct StateTopic {
    pub topic: String,
    producer: Producer,
    counters: SinkCounters,
}

/// The state topic's name: `kafka.state_topic`, else
/// `cep-state-<group_id>`.
pub fn topic_name(k: &KafkaSection) -> String {
    k.state_topic
        .clone()
        .unwrap_or_else(|| format!("cep-state-{}", k.group_id))
}

impl StateTopic {
    pub fn new(topic: String, producer: Producer, counters: SinkCounters) -> StateTopic {
        StateTopic {
            topic,
            producer,
            counters,
        }
    }

    fn record(&self, task: i32, seq: u64, key: String, payload: Option<Vec<u8>>) -> Outgoing {
        Outgoing {
            topic: self.topic.clone(),
            partition: Some(task),
            key: Some(key.into_bytes()),
            payload,
            headers: vec![(SEQ_HEADER.into(), seq.to_string().into_bytes())],
            timestamp: None,
        }
    }

    /// Adds checkpoint `seq` of `task` (`bytes`: a whole checkpoint or an
    /// increment on `chain`) to the state topic: its chunks, then (once
    /// they are acknowledged) the manifest, then tombstones for what a
    /// whole checkpoint replaces. Returns the chain now committed; on
    /// failure the error and the chain to continue from (whose next
    /// checkpoint is whole).
    pub async fn save(
        &self,
        task: i32,
        seq: u64,
        whole: bool,
        bytes: &[u8],
        chain: Chain,
    ) -> Result<Chain, (String, Chain)> {
        let part = Part {
            seq,
            whole,
            chunks: bytes.len().div_ceil(CHUNK_BYTES).max(1) as u32,
            bytes: bytes.len() as u64,
        };
        let manifest = match (&chain.whole, whole) {
            (_, true) => Manifest {
                whole: part.clone(),
                increments: Vec::new(),
            },
            (Some(w), false) => Manifest {
                whole: w.clone(),
                increments: chain
                    .increments
                    .iter()
                    .cloned()
                    .chain([part.clone()])
                    .collect(),
            },
            (None, false) => {
                let e = "an increment without a whole checkpoint before it".to_string();
                return Err((e, chain.abandon(None)));
            }
        };
        if let Err(e) = self.write_part(task, &part, bytes).await {
            return Err((e, chain.abandon(Some(&part))));
        }
        let value = serde_json::to_vec(&manifest).expect("a manifest serialises");
        let m = self.record(task, seq, MANIFEST.into(), Some(value));
        if let Err(e) = self.producer.deliver(m, self.counters.clone()).await {
            let e = format!("state topic {}: {e}", self.topic);
            return Err((e, chain.abandon(Some(&part))));
        }
        if !whole {
            let mut chain = chain;
            chain.increments.push(part);
            return Ok(chain);
        }
        let garbage = chain.abandon(None).garbage;
        let garbage = match self.delete(task, seq, &garbage).await {
            Ok(()) => Vec::new(),
            Err(e) => {
                // Harmless: the records stay until the next whole one.
                tracing::warn!(task, error = %e, "old checkpoint records not deleted");
                garbage
            }
        };
        Ok(Chain {
            whole: Some(part),
            increments: Vec::new(),
            garbage,
        })
    }

    async fn write_part(&self, task: i32, part: &Part, bytes: &[u8]) -> Result<(), String> {
        let chunks: Vec<&[u8]> = if bytes.is_empty() {
            vec![&[][..]]
        } else {
            bytes.chunks(CHUNK_BYTES).collect()
        };
        let deliveries: Vec<_> = chunks
            .iter()
            .enumerate()
            .map(|(n, c)| {
                let r = self.record(task, part.seq, part.chunk_key(n as u32), Some(c.to_vec()));
                self.producer.deliver(r, self.counters.clone())
            })
            .collect();
        for d in deliveries {
            d.await
                .map_err(|e| format!("state topic {}: {e}", self.topic))?;
        }
        Ok(())
    }

    /// Tombstones for `keys` of `task`'s partition.
    async fn delete(&self, task: i32, seq: u64, keys: &[String]) -> Result<(), String> {
        let deliveries: Vec<_> = keys
            .iter()
            .map(|k| {
                let r = self.record(task, seq, k.clone(), None);
                self.producer.deliver(r, self.counters.clone())
            })
            .collect();
        for d in deliveries {
            d.await
                .map_err(|e| format!("state topic {}: {e}", self.topic))?;
        }
        Ok(())
    }
}

/// Creates the state topic (compacted, `tasks` partitions) unless it
/// exists; refuses one with fewer partitions than tasks.
pub async fn ensure(k: &KafkaSection, tasks: i32) -> Result<String, String> {
    let topic = topic_name(k);
    crate::service::produce::create_topic_configured(
        k,
        &topic,
        tasks,
        &[("cleanup.policy", "compact")],
    )
    .await?;
    let counts =
        crate::service::connect::partition_counts_of(k, std::slice::from_ref(&topic)).await?;
    let have = counts.get(&topic).copied().unwrap_or(0);
    if have < tasks {
        return Err(format!(
            "kafka.state_topic: {topic} has {have} partitions, but the inputs have {tasks} (one per task): give the service a new state topic"
        ));
    }
    Ok(topic)
}

/// What the state topic holds for a task.
#[derive(Debug, PartialEq, Eq)]
pub struct Loaded {
    /// The committed chain: the whole checkpoint's bytes, then each
    /// increment's, in order.
    pub parts: Vec<(u64, Vec<u8>)>,
    /// The highest checkpoint number in the partition (half-written parts
    /// included): a new owner numbers after it.
    pub last_seq: u64,
    /// Every record key present: what a new owner deletes once its first
    /// whole checkpoint is committed.
    pub records: Vec<String>,
}

/// The committed chain among `records` (key, `cep-seq`, value or
/// tombstone), read in offset order.
fn assemble(records: Vec<(String, u64, Option<Vec<u8>>)>) -> Result<Option<Loaded>, String> {
    let last_seq = records.iter().map(|r| r.1).max().unwrap_or(0);
    let mut latest: BTreeMap<String, (u64, Vec<u8>)> = BTreeMap::new();
    for (key, seq, value) in records {
        match value {
            Some(v) => latest.insert(key, (seq, v)),
            None => latest.remove(&key),
        };
    }
    let Some((_, manifest)) = latest.get(MANIFEST) else {
        return Ok(None);
    };
    let m: Manifest = serde_json::from_slice(manifest)
        .map_err(|e| format!("state topic: a manifest that does not read: {e}"))?;
    let mut parts = Vec::with_capacity(1 + m.increments.len());
    for part in std::iter::once(&m.whole).chain(&m.increments) {
        parts.push((part.seq, read_part(&latest, part)?));
    }
    Ok(Some(Loaded {
        parts,
        last_seq,
        records: latest.into_keys().filter(|k| k != MANIFEST).collect(),
    }))
}

fn read_part(latest: &BTreeMap<String, (u64, Vec<u8>)>, part: &Part) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::with_capacity(part.bytes as usize);
    for n in 0..part.chunks {
        match latest.get(&part.chunk_key(n)) {
            Some((seq, chunk)) if *seq == part.seq => bytes.extend_from_slice(chunk),
            _ => {
                return Err(format!(
                    "state topic: chunk {n} of checkpoint {} is missing",
                    part.seq
                ))
            }
        }
    }
    if bytes.len() as u64 != part.bytes {
        return Err(format!(
            "state topic: checkpoint {} has {} bytes, its manifest says {}",
            part.seq,
            bytes.len(),
            part.bytes
        ));
    }
    Ok(bytes)
}

/// Reads `task`'s committed chain from the state topic (blocking: reads
/// partition `task` from its start to its end).
pub fn load(k: &KafkaSection, task: i32) -> Result<Option<Loaded>, String> {
    let topic = topic_name(k);
    let consumer: BaseConsumer = client_config(k)?
        .set("group.id", format!("{}-state-reader", k.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(|e| format!("state topic {topic}: {e}"))?;
    let timeout = k.connect_timeout.0;
    let (low, high) = consumer
        .fetch_watermarks(&topic, task, timeout)
        .map_err(|e| format!("state topic {topic}, partition {task}: {e}"))?;
    if high <= low {
        return Ok(None);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, task, Offset::Offset(low))
        .map_err(|e| e.to_string())?;
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let mut records = Vec::new();
    let started = Instant::now();
    let mut next = low;
    while next < high {
        if started.elapsed() > timeout * 4 {
            return Err(format!(
                "state topic {topic}, partition {task}: read {next} of {high} records in {:?}",
                started.elapsed()
            ));
        }
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.map_err(|e| format!("state topic {topic}: {e}"))?;
        next = m.offset() + 1;
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        let seq = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == SEQ_HEADER))
            .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
            .unwrap_or(0);
        records.push((key, seq, m.payload().map(<[u8]>::to_vec)));
    }
    assemble(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Log = Vec<(String, u64, Option<Vec<u8>>)>;

    /// The records [`StateTopic::save`] writes for one part, and the chain
    /// after it.
    fn save(
        log: &mut Log,
        chain: &Chain,
        seq: u64,
        whole: bool,
        bytes: &[u8],
        chunk: usize,
    ) -> Chain {
        let chunks: Vec<&[u8]> = bytes.chunks(chunk).collect();
        let part = Part {
            seq,
            whole,
            chunks: chunks.len() as u32,
            bytes: bytes.len() as u64,
        };
        for (n, c) in chunks.iter().enumerate() {
            log.push((part.chunk_key(n as u32), seq, Some(c.to_vec())));
        }
        let mut next = chain.clone();
        if whole {
            next = chain.clone().abandon(None);
            for k in std::mem::take(&mut next.garbage) {
                log.push((k, seq, None));
            }
            next.whole = Some(part);
        } else {
            next.increments.push(part);
        }
        let m = Manifest {
            whole: next.whole.clone().unwrap(),
            increments: next.increments.clone(),
        };
        log.push((MANIFEST.into(), seq, Some(serde_json::to_vec(&m).unwrap())));
        next
    }

    fn parts(l: &Loaded) -> Vec<(u64, &[u8])> {
        l.parts.iter().map(|(s, b)| (*s, b.as_slice())).collect()
    }

    #[test]
    fn the_committed_chain_is_read_and_a_half_written_part_ignored() {
        let mut log = Log::new();
        let c = save(&mut log, &Chain::default(), 1, true, b"first checkpoint", 5);
        let c = save(&mut log, &c, 2, false, b"change a", 3);
        let c = save(&mut log, &c, 3, false, b"change b", 4);
        let got = assemble(log.clone()).unwrap().unwrap();
        assert_eq!(
            parts(&got),
            [
                (1, &b"first checkpoint"[..]),
                (2, b"change a"),
                (3, b"change b")
            ]
        );
        assert_eq!(got.last_seq, 3);
        // Checkpoint 4 stops after two chunks, before its manifest.
        let mut cut = Log::new();
        save(&mut cut, &c, 4, true, b"a whole one, cut short", 4);
        log.extend(cut.into_iter().take(2));
        let got = assemble(log.clone()).unwrap().unwrap();
        assert_eq!(parts(&got).len(), 3);
        assert_eq!(got.last_seq, 4);
        assert!(got.records.contains(&"w/4/1".to_string()));
        // A new owner starts over after 4; its first whole checkpoint
        // deletes every record it found, the half-written ones too.
        let owner = Chain::replacing(got.records);
        let c = save(&mut log, &owner, 5, true, b"new owner", 100);
        let got = assemble(log.clone()).unwrap().unwrap();
        assert_eq!(parts(&got), [(5, &b"new owner"[..])]);
        assert_eq!(got.records, ["w/5/0"]);
        assert!(!c.wants_whole());
        assert_eq!(assemble(Vec::new()).unwrap(), None);
    }

    #[test]
    fn the_chain_turns_whole_once_its_increments_outweigh_the_whole_checkpoint() {
        let mut log = Log::new();
        const W: usize = SMALL_CHAIN_BYTES as usize + 1000;
        let mut c = save(&mut log, &Chain::default(), 1, true, &vec![b'w'; W], W);
        for seq in 2..=5 {
            assert!(!c.wants_whole(), "{seq}");
            c = save(&mut log, &c, seq, false, &vec![b'c'; W / 3], W);
        }
        assert!(c.wants_whole());
        assert_eq!(c.bytes(), (W + 4 * (W / 3)) as u64);
        let c = save(&mut log, &c, 6, true, &[b'w'; 120], W);
        assert_eq!(c.bytes(), 120);
        let got = assemble(log.clone()).unwrap().unwrap();
        assert_eq!(got.records, ["w/6/0"]);
        // A small state: its chain grows to SMALL_CHAIN_BYTES, or to
        // MAX_INCREMENTS increments.
        let mut c = c;
        for seq in 7..(7 + MAX_INCREMENTS as u64) {
            assert!(!c.wants_whole(), "{seq}");
            c = save(&mut log, &c, seq, false, &[b'c'; 200], W);
        }
        assert!(c.wants_whole());
    }

    #[test]
    fn a_missing_chunk_is_an_error_not_a_silent_fresh_start() {
        let mut log = Log::new();
        let c = save(&mut log, &Chain::default(), 4, true, b"abcdefgh", 3);
        save(&mut log, &c, 5, false, b"xyz", 1);
        log.remove(5);
        let e = assemble(log).unwrap_err();
        assert!(e.contains("chunk 1 of checkpoint 5 is missing"), "{e}");
    }
}
