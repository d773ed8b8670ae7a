//! Copies of records the pipeline sends on: to the dead-letter topic (a
//! record no pattern could read, with every reason), to the late topic,
//! and to repartition topics; and, should Kafka refuse one for good, to the
//! local fallback file, so that nothing goes nowhere.

use std::sync::Arc;

use rdkafka::message::{BorrowedMessage, Headers, Message};

use super::Pipeline;
use crate::deadletter::{DeadLetter, Origin};
use crate::service::durable;
use crate::service::sink::kafka::Outgoing;

/// Where the copy of a record goes.
pub(super) struct Destination {
    pub(super) topic: String,
    /// `None`: the partitioner picks.
    pub(super) partition: Option<i32>,
    pub(super) key: Option<Vec<u8>>,
}

impl Pipeline {
    /// Writes the record once to the dead-letter topic, whatever the
    /// number of patterns that refused it: its bytes as they were, every
    /// reason (`cep-reasons`, a JSON array; `cep-reason`, joined by `; `)
    /// and its origin in headers.
    pub(super) async fn dead_letter(&self, m: &BorrowedMessage<'_>, reasons: Vec<String>) {
        tracing::debug!(
            topic = m.topic(),
            partition = m.partition(),
            offset = m.offset(),
            ?reasons,
            "dead letter"
        );
        let to = self.copy_to(m, self.p.kafka.dead_letter_topic.clone());
        let joined = reasons.join("; ");
        let list = serde_json::to_string(&reasons).expect("strings serialise");
        self.side_output(
            m,
            to,
            &[
                ("cep-reason", joined.as_bytes()),
                ("cep-reasons", list.as_bytes()),
            ],
            reasons,
        )
        .await;
    }

    /// The same key, whatever partition the partitioner picks in `topic`.
    pub(super) fn copy_to(&self, m: &BorrowedMessage<'_>, topic: String) -> Destination {
        Destination {
            topic,
            partition: None,
            key: m.key().map(<[u8]>::to_vec),
        }
    }

    /// Writes a copy of the record (its value and timestamp), with its
    /// origin in headers, to `to`; should Kafka refuse it for good, to the
    /// local fallback file with `reasons`.
    pub(super) async fn side_output(
        &self,
        m: &BorrowedMessage<'_>,
        to: Destination,
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
            topic: to.topic,
            partition: to.partition,
            key: to.key,
            payload: m.payload().map(<[u8]>::to_vec),
            headers,
            timestamp: m.timestamp().to_millis(),
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
                let letter =
                    DeadLetter::new(origin, msg.payload.as_deref().unwrap_or_default(), reasons);
                fallback_write(fallback, &msg.topic, letter).await;
            }
            ledger.settle(ticket);
            drop(permit);
        });
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
