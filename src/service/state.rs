//! Task state kept in Kafka: each task's checkpoint in a compacted topic of
//! the consumer group, so that whichever instance is assigned a task (on
//! another machine, on an empty disk) resumes exactly where its previous
//! owner checkpointed. The files in `serve.state_dir` are only a cache.
//!
//! Layout: the state topic has one partition per task (task `i` writes and
//! reads partition `i` only, so restoring a task reads one place). A
//! checkpoint is its serialised bytes cut into chunks of at most
//! [`CHUNK_BYTES`] (Kafka's record size limit), then a manifest naming the
//! checkpoint's sequence number and chunk count. Compaction keeps the latest
//! record per key.
//!
//! Why two generations: without transactions (the brokers we run on have
//! none), a crash can stop a checkpoint half-written. Chunks are keyed by
//! the parity of the sequence number (`g0/<n>`, `g1/<n>`), so checkpoint
//! `s + 1` never overwrites a chunk of checkpoint `s`; its manifest is
//! written last, after every chunk is acknowledged. A reader takes the
//! latest manifest and the chunks of its generation whose `cep-seq` header
//! matches it; chunks of a half-written later checkpoint are ignored.
//!
//! What this does not do yet: write only the keys changed since the last
//! checkpoint. Each checkpoint is the task's whole state (as the files
//! were), so its cost grows with the state, not with the changes
//! (BENCHMARKS.md: 1.35 s and 325 MB at 1M open keys). The planned shape:
//! - the matcher's one mutation funnel (`Matcher::reschedule`, reached by
//!   every event and every fired timer of a key) sets a per-key dirty flag
//!   and lists the key the first time; a checkpoint takes the listed keys
//!   (their runs, or "gone") and the rest (reorder buffer, counters, clocks,
//!   offsets) is written whole as today;
//! - each key has two record slots, `k/<pattern>/<slot>/<key>`; a change is
//!   written to the slot the key's committed value is *not* in, so a
//!   half-written checkpoint never overwrites a committed value; a reader
//!   takes, per key, the slot with the highest `cep-seq` not above the
//!   manifest's; a key that is gone gets a "gone" value the same way, and
//!   once that checkpoint is committed both slots get real tombstones
//!   (older slot first) so compaction forgets the key;
//! - the files in `state_dir` stop being written (a cache of a whole
//!   snapshot would cost what the deltas save).

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

const MANIFEST: &str = "manifest";
const SEQ_HEADER: &str = "cep-seq";

/// The record naming a complete checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Manifest {
    seq: u64,
    chunks: u32,
    bytes: u64,
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

fn chunk_key(seq: u64, n: u32) -> String {
    format!("g{}/{n}", seq % 2)
}

impl StateTopic {
    pub fn new(topic: String, producer: Producer, counters: SinkCounters) -> StateTopic {
        StateTopic {
            topic,
            producer,
            counters,
        }
    }

    /// Writes checkpoint `seq` of `task`: every chunk, then (once they are
    /// acknowledged) the manifest. Retries what is retryable; `Err` when
    /// Kafka refuses for good.
    pub async fn save(&self, task: i32, seq: u64, bytes: &[u8]) -> Result<(), String> {
        let record = |key: String, payload: Vec<u8>| Outgoing {
            topic: self.topic.clone(),
            partition: Some(task),
            key: Some(key.into_bytes()),
            payload,
            headers: vec![(SEQ_HEADER.into(), seq.to_string().into_bytes())],
        };
        let chunks: Vec<&[u8]> = if bytes.is_empty() {
            vec![&[][..]]
        } else {
            bytes.chunks(CHUNK_BYTES).collect()
        };
        let deliveries: Vec<_> = chunks
            .iter()
            .enumerate()
            .map(|(n, c)| {
                let msg = record(chunk_key(seq, n as u32), c.to_vec());
                self.producer.deliver(msg, self.counters.clone())
            })
            .collect();
        for d in deliveries {
            d.await
                .map_err(|e| format!("state topic {}: {e}", self.topic))?;
        }
        let manifest = Manifest {
            seq,
            chunks: chunks.len() as u32,
            bytes: bytes.len() as u64,
        };
        let value = serde_json::to_vec(&manifest).expect("a manifest serialises");
        self.producer
            .deliver(record(MANIFEST.into(), value), self.counters.clone())
            .await
            .map_err(|e| format!("state topic {}: {e}", self.topic))
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

/// The latest complete checkpoint among `records` (key, `cep-seq`, value),
/// read in offset order: (sequence number, bytes).
fn assemble(records: Vec<(String, u64, Vec<u8>)>) -> Result<Option<(u64, Vec<u8>)>, String> {
    let mut latest: BTreeMap<String, (u64, Vec<u8>)> = BTreeMap::new();
    for (key, seq, value) in records {
        latest.insert(key, (seq, value));
    }
    let Some((_, manifest)) = latest.get(MANIFEST) else {
        return Ok(None);
    };
    let m: Manifest = serde_json::from_slice(manifest)
        .map_err(|e| format!("state topic: a manifest that does not read: {e}"))?;
    let mut bytes = Vec::with_capacity(m.bytes as usize);
    for n in 0..m.chunks {
        match latest.get(&chunk_key(m.seq, n)) {
            Some((seq, chunk)) if *seq == m.seq => bytes.extend_from_slice(chunk),
            _ => {
                return Err(format!(
                    "state topic: chunk {n} of checkpoint {} is missing",
                    m.seq
                ))
            }
        }
    }
    if bytes.len() as u64 != m.bytes {
        return Err(format!(
            "state topic: checkpoint {} has {} bytes, its manifest says {}",
            m.seq,
            bytes.len(),
            m.bytes
        ));
    }
    Ok(Some((m.seq, bytes)))
}

/// Reads `task`'s latest complete checkpoint from the state topic (blocking:
/// reads partition `task` from its start to its end).
pub fn load(k: &KafkaSection, task: i32) -> Result<Option<(u64, Vec<u8>)>, String> {
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
        records.push((key, seq, m.payload().unwrap_or_default().to_vec()));
    }
    assemble(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records_of(seq: u64, bytes: &[u8], chunk: usize) -> Vec<(String, u64, Vec<u8>)> {
        let chunks: Vec<&[u8]> = bytes.chunks(chunk).collect();
        let mut out: Vec<_> = chunks
            .iter()
            .enumerate()
            .map(|(n, c)| (chunk_key(seq, n as u32), seq, c.to_vec()))
            .collect();
        let m = Manifest {
            seq,
            chunks: chunks.len() as u32,
            bytes: bytes.len() as u64,
        };
        out.push((MANIFEST.into(), seq, serde_json::to_vec(&m).unwrap()));
        out
    }

    #[test]
    fn the_latest_complete_checkpoint_is_read_and_a_half_written_one_ignored() {
        let mut log = records_of(1, b"first checkpoint", 5);
        log.extend(records_of(2, b"second one", 4));
        assert_eq!(
            assemble(log.clone()).unwrap(),
            Some((2, b"second one".to_vec()))
        );
        // Checkpoint 3 stops after two chunks, no manifest: its chunks
        // (generation 1) do not touch checkpoint 2's (generation 0).
        let third = records_of(3, b"the third, cut short", 4);
        log.extend(third.into_iter().take(2));
        assert_eq!(assemble(log).unwrap(), Some((2, b"second one".to_vec())));
        assert_eq!(assemble(Vec::new()).unwrap(), None);
    }

    #[test]
    fn a_missing_chunk_is_an_error_not_a_silent_fresh_start() {
        let mut log = records_of(4, b"abcdefgh", 3);
        log.remove(1);
        let e = assemble(log).unwrap_err();
        assert!(e.contains("chunk 1 of checkpoint 4 is missing"), "{e}");
    }
}
