//! Repartitioning: matching a topic whose producers key it otherwise than
//! the patterns do.
//!
//! Each partition number is a task that matches on its own (see
//! [`crate::service::task`]), so all of a key's events must be in one
//! partition. When a topic is keyed by something else (payments keyed by
//! merchant, patterns keyed by card), an input may say
//! `repartition_by = "card.id"`: the service then reads the topic only to
//! re-produce each record, unchanged, into an internal topic
//! `cep-repartition-<group>-<topic>` (as many partitions as the widest
//! input), in the partition its key picks, and the tasks match from there,
//! as Kafka Streams does with its repartition topics.
//!
//! Guarantees, without transactions:
//! - **Nothing lost.** The source topic's offsets are committed only once
//!   every record re-produced before them is acknowledged (the ledger, as
//!   for alerts).
//! - **Nothing twice.** After a crash or a rebalance the records since the
//!   last commit are re-produced. Each carries its origin (source
//!   partition and offset, headers `cep-source-partition`,
//!   `cep-source-offset`); one producer writes a source partition's records
//!   into a partition of the internal topic in order, so a task keeps, per
//!   internal partition and source partition, the highest origin offset it
//!   has matched and skips anything at or below it (counted in
//!   `cep_repartition_repeats_total`). That mark is part of the task's
//!   checkpoint.
//! - **Event time per origin.** Records of several source partitions
//!   interleave in an internal partition; each source partition has its
//!   own clock inside the task (`<internal>/<i>@<source partition>`, made
//!   at assignment for every source partition), so a source partition read
//!   behind the others does not make its events late: the task's watermark
//!   waits for it, until it has been silent for `kafka.idle_timeout`. (The
//!   consumer's backlog, which keeps a partition from being judged idle,
//!   is known per internal partition only, not per source.)
//!
//! Records whose key cannot be read (not JSON, key field missing) go to the
//! dead-letter topic from here, once.

use std::collections::{BTreeMap, HashMap};

use crate::config::{InputConfig, KafkaSection, KeySource};
use crate::event::{lookup, stable_hash, KEY_SEPARATOR};
use crate::value::Value;

/// Header naming the source partition of a re-produced record.
pub const SOURCE_PARTITION: &str = "cep-source-partition";
/// Header naming the source offset of a re-produced record.
pub const SOURCE_OFFSET: &str = "cep-source-offset";

/// One repartitioned input: where its records go and by what key.
#[derive(Clone, Debug)]
pub struct Route {
    /// The internal topic.
    pub internal: String,
    /// Field paths of the key.
    pub paths: Vec<Vec<String>>,
    /// Partitions of the internal topic.
    pub partitions: i32,
}

/// The inputs as the tasks read them, and the topics only repartitioned.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Task inputs: each repartitioned input replaced by its internal topic
    /// (partitioned by the repartition key).
    pub inputs: Vec<InputConfig>,
    /// Source topic → its route.
    pub routes: HashMap<String, Route>,
}

/// The internal topic of `topic` in `group`.
pub fn internal_topic(group: &str, topic: &str) -> String {
    format!("cep-repartition-{group}-{topic}")
}

/// Plans the inputs: `counts` holds every input topic's partition count.
pub fn plan(k: &KafkaSection, counts: &BTreeMap<String, i32>) -> Result<Plan, String> {
    let width = counts.values().copied().max().unwrap_or(1).max(1);
    let mut plan = Plan::default();
    for (n, input) in k.inputs.iter().enumerate() {
        let Some(by) = &input.repartition_by else {
            plan.inputs.push(input.clone());
            continue;
        };
        if input.key == KeySource::Message {
            return Err(format!(
                "kafka.inputs[{n}]: repartition_by needs key = \"fields\" (with key = \"message\" the message key already decides)"
            ));
        }
        if input.partitioned_by.is_some() {
            return Err(format!(
                "kafka.inputs[{n}]: set partitioned_by or repartition_by, not both"
            ));
        }
        let internal = internal_topic(&k.group_id, &input.topic);
        let mut read = input.clone();
        read.topic = internal.clone();
        read.stream = Some(input.stream().to_string());
        read.partitioned_by = Some(by.clone());
        read.repartition_by = None;
        let sources = counts.get(&input.topic).copied().unwrap_or(1);
        read.repartitioned_from = Some((input.topic.clone(), sources));
        plan.inputs.push(read);
        let route = Route {
            internal,
            paths: by.paths(),
            partitions: width,
        };
        plan.routes.insert(input.topic.clone(), route);
    }
    Ok(plan)
}

/// The key text of a JSON record by `paths` (as the engine forms it), or
/// why there is none.
pub fn key_of(value: &[u8], paths: &[Vec<String>]) -> Result<String, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(value).map_err(|e| format!("not JSON: {e}"))?;
    if !doc.is_object() {
        return Err("not a JSON object".into());
    }
    let mut text = String::new();
    for (n, p) in paths.iter().enumerate() {
        let v = lookup(&doc, p)
            .map(Value::from_json)
            .filter(|v| !v.is_absent())
            .ok_or_else(|| format!("missing key field `{}`", p.join(".")))?;
        if n > 0 {
            text.push(KEY_SEPARATOR);
        }
        text.push_str(&v.text().unwrap_or_default());
    }
    Ok(text)
}

/// The internal partition of `key`: a stable hash, the same on every
/// instance and version.
pub fn partition_of(key: &str, partitions: i32) -> i32 {
    (stable_hash(key.as_bytes(), 0) % partitions.max(1) as u64) as i32
}

/// The origin of a re-produced record, from its headers (name, value).
pub fn origin<'a>(headers: impl Iterator<Item = (&'a str, &'a [u8])>) -> Option<(i32, i64)> {
    let (mut partition, mut offset) = (None, None);
    for (k, v) in headers {
        let v = std::str::from_utf8(v).ok();
        match k {
            SOURCE_PARTITION => partition = v.and_then(|v| v.parse().ok()),
            SOURCE_OFFSET => offset = v.and_then(|v| v.parse().ok()),
            _ => {}
        }
    }
    Some((partition?, offset?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_as_the_engine_reads_them_and_pick_a_stable_partition() {
        let paths = vec![vec!["card".to_string(), "id".to_string()]];
        let k = key_of(br#"{"card":{"id":"c7"},"amount":5}"#, &paths).unwrap();
        assert_eq!(k, "c7");
        let n = key_of(br#"{"card":{"id":42}}"#, &paths).unwrap();
        assert_eq!(n, "42");
        assert!(key_of(br#"{"card":{}}"#, &paths)
            .unwrap_err()
            .contains("missing key field `card.id`"));
        assert!(key_of(b"nope", &paths).unwrap_err().contains("not JSON"));
        let two = vec![vec!["a".to_string()], vec!["b".to_string()]];
        assert_eq!(key_of(br#"{"a":"x","b":1}"#, &two).unwrap(), "x\u{1f}1");
        let p = partition_of("c7", 6);
        assert!((0..6).contains(&p));
        assert_eq!(partition_of("c7", 6), p);
        assert_eq!(partition_of("anything", 1), 0);
    }

    #[test]
    fn origins_come_from_the_headers() {
        let h: Vec<(&str, &[u8])> = vec![(SOURCE_PARTITION, b"2"), (SOURCE_OFFSET, b"41")];
        assert_eq!(origin(h.iter().copied()), Some((2, 41)));
        assert_eq!(origin(h[..1].iter().copied()), None);
    }
}
