//! `cep produce`: loads a file of events (JSON lines or CSV) into a topic,
//! for quick starts, tests and benchmarks.
//!
//! JSON lines are sent byte for byte (so alert ids match a `cep replay` of
//! the same file); CSV rows are sent as the JSON objects `replay` would
//! build. The message key is a field of each event when asked for, so that
//! one key's events share a partition.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::config::KafkaSection;
use crate::event::lookup;
use crate::input::{self, Format, Payload};
use crate::service::connect::{check, client_config};

/// What to produce.
pub struct ProduceArgs {
    /// The cluster and how to connect (`[kafka]` of a config file, or only
    /// brokers).
    pub kafka: KafkaSection,
    pub topic: String,
    pub input: String,
    /// Dotted path of the field to use as message key.
    pub key_field: Option<String>,
    /// Create the topic with this many partitions if it does not exist.
    pub partitions: Option<i32>,
    pub null_values: Vec<String>,
}

/// Creates `topic` with `partitions` unless it exists (plaintext).
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> Result<(), String> {
    create_topic_with(&KafkaSection::connect_only(brokers), topic, partitions).await
}

/// Creates `topic` with `partitions` on `k`'s cluster unless it exists.
pub async fn create_topic_with(
    k: &KafkaSection,
    topic: &str,
    partitions: i32,
) -> Result<(), String> {
    create_topic_configured(k, topic, partitions, &[]).await
}

/// [`create_topic_with`], with topic settings (e.g. `cleanup.policy`).
pub async fn create_topic_configured(
    k: &KafkaSection,
    topic: &str,
    partitions: i32,
    settings: &[(&str, &str)],
) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = client_config(k)?
        .create()
        .map_err(|e| format!("kafka admin: {e}"))?;
    let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (key, value) in settings {
        new = new.set(key, value);
    }
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics([&new], &opts)
        .await
        .map_err(|e| format!("create topic {topic}: {e}"))?;
    for r in results {
        match r {
            Ok(_) => {}
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => return Err(format!("create topic {t}: {e}")),
        }
    }
    Ok(())
}

/// Sends every record of the input; returns how many were sent.
pub async fn produce(args: &ProduceArgs) -> Result<u64, String> {
    check(&args.kafka).await?;
    if let Some(n) = args.partitions {
        create_topic_with(&args.kafka, &args.topic, n).await?;
    }
    let producer: FutureProducer = client_config(&args.kafka)?
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "200000")
        .create()
        .map_err(|e| format!("kafka producer: {e}"))?;
    let (records, _) = input::open(
        &args.input,
        Format::from_path(&args.input),
        &args.null_values,
    )
    .map_err(|e| format!("{}: {e}", args.input))?;
    let key_path: Option<Vec<String>> = args
        .key_field
        .as_ref()
        .map(|k| k.split('.').map(str::to_string).collect());
    let mut sent = 0u64;
    let mut pending = Vec::new();
    for r in records {
        let r = r.map_err(|b| format!("{}: line {}: {}", args.input, b.line, b.reason))?;
        let (bytes, doc) = match r.payload {
            Payload::Json(b) => {
                let doc = key_path
                    .as_ref()
                    .and_then(|_| serde_json::from_slice::<serde_json::Value>(&b).ok());
                (b, doc)
            }
            Payload::Doc(d) => (serde_json::to_vec(&d).expect("serialises"), Some(d)),
            Payload::Csv(row) => {
                let d = row.to_doc();
                (serde_json::to_vec(&d).expect("serialises"), Some(d))
            }
        };
        let key = match (&key_path, &doc) {
            (Some(p), Some(d)) => lookup(d, p).map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            }),
            _ => None,
        };
        let mut rec: FutureRecord<'_, str, [u8]> = FutureRecord::to(&args.topic).payload(&bytes);
        if let Some(k) = &key {
            rec = rec.key(k);
        }
        let fut = producer
            .send_result(rec)
            .map_err(|(e, _)| format!("produce: {e}"))?;
        pending.push(fut);
        if pending.len() >= 10_000 {
            for f in pending.drain(..) {
                f.await
                    .map_err(|_| "produce: cancelled".to_string())?
                    .map_err(|(e, _)| format!("produce: {e}"))?;
                sent += 1;
            }
        }
    }
    for f in pending.drain(..) {
        f.await
            .map_err(|_| "produce: cancelled".to_string())?
            .map_err(|(e, _)| format!("produce: {e}"))?;
        sent += 1;
    }
    producer
        .flush(Duration::from_secs(30))
        .map_err(|e| format!("produce: {e}"))?;
    Ok(sent)
}
