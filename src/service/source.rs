//! The Kafka source: a consumer in a consumer group, and what happens when
//! the group moves partitions.
//!
//! Offsets are never committed automatically: the pipeline commits the
//! offsets of a task's checkpoint once its outputs are acknowledged. On an
//! assignment the consumer context groups the partitions by number into
//! tasks and looks at each task's last checkpoint: if it belongs to exactly
//! the task's assigned partitions, they start at the checkpoint's offsets
//! and the pipeline restores the task from it; otherwise they start at
//! their committed offsets (the earliest for a new group) with a fresh
//! task. On a cooperative revocation the revoked partitions stay assigned
//! until the pipeline has written their tasks' final checkpoints
//! ([`Revoked::Some`], [`hand_over`]): librdkafka holds the rebalance until
//! the unassign call, so the next owner restores from the final
//! checkpoint. On an eager revocation (several input topics) or a failed
//! rebalance every task is dropped at once: nothing of a revoked partition
//! lingers, and outputs still in flight keep their ids when they are
//! produced again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use crate::config::KafkaSection;
use crate::service::checkpoint::{partition_name, Checkpoint, Increment, Store};
use crate::service::metrics::Metrics;
use crate::service::state::{self, Chain};

/// A change of assignment, for the pipeline to act on before its next
/// record.
#[derive(Debug)]
pub enum Rebalance {
    Assigned {
        partitions: Vec<(String, i32)>,
        /// Per task (partition number): where it resumes.
        restore: BTreeMap<i32, Resume>,
        /// Checkpoints that could not be read.
        errors: Vec<String>,
    },
    Revoked(Revoked),
}

/// Where a newly assigned task resumes.
#[derive(Debug, Default)]
pub struct Resume {
    /// The checkpoint its partitions were positioned at, if any.
    pub checkpoint: Option<Checkpoint>,
    /// Its state in the state topic, for its first checkpoint to replace.
    pub chain: Chain,
    /// The highest checkpoint number in the state topic for the task.
    pub last_seq: u64,
}

/// What a revocation takes away.
#[derive(Debug)]
pub enum Revoked {
    /// Every partition (the eager protocol, a failed rebalance, or the
    /// consumer closing): already given up.
    All,
    /// These partitions (the cooperative protocol), still held: the
    /// pipeline writes their tasks' final checkpoints, then gives them up
    /// ([`hand_over`]). The group waits for it, so the next owner restores
    /// from the final checkpoint.
    Some(Vec<(String, i32)>),
}

pub struct Context {
    /// Partitions with records waiting (from the statistics).
    backlog: Mutex<BTreeMap<String, bool>>,
    state_dir: std::path::PathBuf,
    kafka: KafkaSection,
    metrics: Arc<Metrics>,
    events: Mutex<Vec<Rebalance>>,
    /// The pipeline has stopped: revocations are no longer handed over.
    closing: std::sync::atomic::AtomicBool,
}

pub type Source = StreamConsumer<Context>;

impl Context {
    /// Per partition (`topic/partition`): whether records are waiting in
    /// it, as of the consumer's last statistics.
    pub fn backlog(&self) -> Vec<(String, bool)> {
        let b = self.backlog.lock().expect("backlog lock");
        b.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// From now on revoked partitions are given up at once (the pipeline
    /// has written its final checkpoints and is closing the consumer).
    pub fn closing(&self) {
        self.closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Rebalances since the last call, oldest first.
    pub fn take_rebalances(&self) -> Vec<Rebalance> {
        std::mem::take(&mut *self.events.lock().expect("rebalance lock"))
    }

    /// Where a task resumes: the state topic's checkpoint (its whole
    /// checkpoint with the increments after it applied), or, when the topic
    /// has none for the task (a group from before the state topic), the
    /// local file.
    fn last_checkpoint(&self, task: i32) -> Result<Resume, String> {
        let Some(loaded) = state::load(&self.kafka, task)? else {
            let checkpoint = Store::new(&self.state_dir, &self.kafka.group_id, task).load()?;
            let last_seq = checkpoint.as_ref().map_or(0, |c| c.seq);
            return Ok(Resume {
                checkpoint,
                chain: Chain::default(),
                last_seq,
            });
        };
        let bad = |e: String| format!("state topic, task {task}: {e}");
        let mut parts = loaded.parts.into_iter();
        let (seq, whole) = parts.next().expect("a chain starts whole");
        let mut c: Checkpoint =
            serde_json::from_slice(&whole).map_err(|e| bad(format!("not a checkpoint: {e}")))?;
        c.seq = seq;
        for (seq, bytes) in parts {
            let mut i: Increment = serde_json::from_slice(&bytes)
                .map_err(|e| bad(format!("not an increment: {e}")))?;
            i.seq = seq;
            c.apply(i).map_err(bad)?;
        }
        Ok(Resume {
            checkpoint: Some(c),
            chain: Chain::replacing(loaded.records),
            last_seq: loaded.last_seq,
        })
    }

    /// Positions newly assigned partitions at their tasks' checkpoints and
    /// takes them (incrementally under the cooperative protocol).
    fn assign(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &mut TopicPartitionList,
        cooperative: bool,
    ) {
        let partitions: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        let mut tasks: BTreeMap<i32, BTreeSet<String>> = BTreeMap::new();
        // Source topics of repartitioned inputs start at their committed
        // offsets: they belong to no task.
        let task_topic = |t: &str| self.kafka.inputs.iter().any(|i| i.topic == t);
        for (t, p) in partitions.iter().filter(|(t, _)| task_topic(t)) {
            tasks.entry(*p).or_default().insert(partition_name(t, *p));
        }
        let mut restore = BTreeMap::new();
        let mut errors = Vec::new();
        for (task, names) in tasks {
            match self.last_checkpoint(task) {
                Ok(mut r) => {
                    if r.checkpoint.as_ref().is_some_and(|c| c.partitions != names) {
                        tracing::warn!(
                            task,
                            "the task's checkpoint covers other partitions than assigned: starting it from committed offsets"
                        );
                        r.checkpoint = None;
                    }
                    restore.insert(task, r);
                }
                // Not fatal here (a callback cannot fail), but the pipeline
                // stops on it: starting afresh would lose partial matches.
                Err(e) => {
                    tracing::error!(task, error = %e, "cannot read the checkpoint");
                    errors.push(e);
                }
            }
        }
        for (t, p) in &partitions {
            let at = restore
                .get(p)
                .and_then(|r| r.checkpoint.as_ref())
                .and_then(|c| c.offsets.get(&partition_name(t, *p)));
            if let Some(&off) = at {
                let _ = tpl.set_partition_offset(t, *p, Offset::Offset(off));
            }
        }
        let taken = if cooperative {
            consumer.incremental_assign(tpl)
        } else {
            consumer.assign(tpl)
        };
        if let Err(e) = taken {
            tracing::error!(error = %e, "assign failed");
        }
        self.metrics.inc("cep_rebalances_total", &[]);
        tracing::info!(
            ?partitions,
            restored_tasks = ?restore
                .iter()
                .filter(|(_, r)| r.checkpoint.is_some())
                .map(|(t, _)| t)
                .collect::<Vec<_>>(),
            "partitions assigned"
        );
        self.events
            .lock()
            .expect("rebalance lock")
            .push(Rebalance::Assigned {
                partitions,
                restore,
                errors,
            });
    }
}

impl ClientContext for Context {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = false;

    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", fac, "{msg}"),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{msg}"),
            _ => tracing::debug!(target: "librdkafka", fac, "{msg}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", %error, reason);
    }

    fn stats(&self, s: Statistics) {
        self.metrics.clear("cep_consumer_lag");
        let mut backlog = self.backlog.lock().expect("backlog lock");
        for (topic, t) in &s.topics {
            for (p, part) in &t.partitions {
                // Records waiting beyond what was handed to the pipeline
                // (before the first, beyond the committed offset).
                let waiting = if part.app_offset >= 0 {
                    part.hi_offset > part.app_offset
                } else if part.consumer_lag >= 0 {
                    part.consumer_lag > 0
                } else {
                    // Nothing read, nothing committed: from the earliest.
                    part.hi_offset > part.lo_offset
                };
                // A partition not fetched yet (no high offset) stays as
                // it was: unknown, hence waiting.
                if *p >= 0 && part.hi_offset >= 0 {
                    backlog.insert(partition_name(topic, *p), waiting);
                }
                if *p >= 0 && part.consumer_lag >= 0 {
                    let p = p.to_string();
                    self.metrics.set(
                        "cep_consumer_lag",
                        &[("topic", topic), ("partition", &p)],
                        part.consumer_lag as f64,
                    );
                }
            }
        }
    }
}

impl ConsumerContext for Context {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let listed: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        let revoked = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                return self.assign(consumer, tpl, cooperative)
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS
                if cooperative && !self.closing.load(std::sync::atomic::Ordering::SeqCst) =>
            {
                // Only these go; every other task keeps running. librdkafka
                // waits for the unassign call, made once their final
                // checkpoints are written.
                Revoked::Some(listed)
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS if cooperative => {
                // Closing: the final checkpoints are written already.
                let _ = consumer.incremental_unassign(tpl);
                Revoked::Some(Vec::new())
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let _ = consumer.unassign();
                Revoked::All
            }
            other => {
                tracing::error!(error = ?other, "rebalance failed");
                let _ = consumer.unassign();
                Revoked::All
            }
        };
        tracing::info!(?revoked, "partitions revoked");
        self.events
            .lock()
            .expect("rebalance lock")
            .push(Rebalance::Revoked(revoked));
    }
}

/// Cooperative incremental rebalancing (`cooperative-sticky`: a rebalance
/// moves only the partitions that change owner, the other tasks keep
/// running) when there is one input topic. With several, partition `i` of
/// every topic must stay together in task `i`, which only the `range`
/// assignor guarantees (eager: every rebalance restarts every task from its
/// checkpoint).
fn assignment_strategy(k: &KafkaSection) -> &'static str {
    if k.inputs.len() == 1 {
        "cooperative-sticky"
    } else {
        "range"
    }
}

/// Creates the consumer and subscribes to every input topic (`k.inputs`,
/// the tasks' inputs) and to the `sources` of repartitioned ones; task
/// checkpoints of earlier versions are read from `state_dir`.
pub fn consumer(
    k: &KafkaSection,
    sources: &[String],
    state_dir: &std::path::Path,
    metrics: Arc<Metrics>,
) -> Result<Source, String> {
    let mut c = crate::service::connect::client_config(k)?;
    c.set("group.id", &k.group_id)
        .set("group.instance.id", k.instance_id())
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", assignment_strategy(k))
        // Each second: the backlog that keeps a stalled partition from
        // being judged idle must be fresh.
        .set("statistics.interval.ms", "1000")
        .set("session.timeout.ms", "10000")
        .set("fetch.wait.max.ms", "10");
    for (key, v) in k.options.iter() {
        c.set(key, v);
    }
    let ctx = Context {
        backlog: Mutex::new(BTreeMap::new()),
        state_dir: state_dir.to_path_buf(),
        kafka: k.clone(),
        metrics,
        events: Mutex::new(Vec::new()),
        closing: std::sync::atomic::AtomicBool::new(false),
    };
    let consumer: Source = c
        .create_with_context(ctx)
        .map_err(|e| format!("kafka consumer: {e}"))?;
    let topics: Vec<&str> = k
        .inputs
        .iter()
        .map(|i| i.topic.as_str())
        .chain(sources.iter().map(String::as_str))
        .collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| format!("kafka subscribe {topics:?}: {e}"))?;
    Ok(consumer)
}

/// Gives up revoked `partitions` (after their final checkpoints), which
/// lets the rebalance go on.
pub fn hand_over(consumer: &Source, partitions: &[(String, i32)]) {
    let mut tpl = TopicPartitionList::new();
    for (t, p) in partitions {
        tpl.add_partition(t, *p);
    }
    if let Err(e) = consumer.incremental_unassign(&tpl) {
        tracing::error!(error = %e, "unassign failed");
    }
}

/// Commits `offsets` (`topic/partition` → next offset).
pub fn commit(
    consumer: &Source,
    offsets: &BTreeMap<String, i64>,
    sync: bool,
) -> Result<(), String> {
    let mut tpl = TopicPartitionList::new();
    for (name, off) in offsets {
        let (topic, p) = name.rsplit_once('/').expect("topic/partition");
        let p: i32 = p.parse().expect("partition number");
        tpl.add_partition_offset(topic, p, Offset::Offset(*off))
            .map_err(|e| e.to_string())?;
    }
    if tpl.count() == 0 {
        return Ok(());
    }
    let mode = if sync {
        rdkafka::consumer::CommitMode::Sync
    } else {
        rdkafka::consumer::CommitMode::Async
    };
    consumer.commit(&tpl, mode).map_err(|e| e.to_string())
}
