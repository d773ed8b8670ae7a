//! Writing to Kafka: alerts, late events and dead letters.
//!
//! One idempotent producer (`acks=all`) per service. librdkafka already
//! retries what is transient within `delivery.timeout.ms`; an error that
//! still comes back is classified: a retryable one (broker down, timeout,
//! leader moving, queue full) is tried again after a backoff, for as long as
//! it takes — the output stays unacknowledged meanwhile, so offsets do not
//! move past it — while a fatal one (record too large, topic invalid, not
//! authorised) is handed back for the caller to dead-letter.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

use crate::service::metrics::SinkCounters;

/// A record to write.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub topic: String,
    /// `None`: the partitioner picks (by key).
    pub partition: Option<i32>,
    pub key: Option<Vec<u8>>,
    /// `None`: a tombstone (a null value, which compaction deletes).
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// The record timestamp (epoch ms); `None`: the time of sending.
    pub timestamp: Option<i64>,
}

#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer,
}

/// Whether trying again can help.
pub fn is_fatal(e: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        e.rdkafka_error_code(),
        Some(
            MessageSizeTooLarge
                | InvalidMessageSize
                | InvalidMessage
                | InvalidRecord
                | MessageBatchTooLarge
                | UnsupportedCompressionType
                | InvalidTopic
                | TopicAuthorizationFailed
                | ClusterAuthorizationFailed
                | InvalidRequiredAcks
                | UnsupportedVersion
                | UnsupportedForMessageFormat
                | InvalidConfig
        )
    )
}

impl Producer {
    pub fn new(k: &crate::config::KafkaSection) -> Result<Producer, String> {
        let mut c = crate::service::connect::client_config(k)?;
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("delivery.timeout.ms", "30000");
        // `kafka.options` win over the settings above too.
        for (key, v) in k.options.iter() {
            c.set(key, v);
        }
        let inner = c.create().map_err(|e| e.to_string())?;
        Ok(Producer { inner })
    }

    fn enqueue(&self, msg: &Outgoing) -> Result<DeliveryFuture, KafkaError> {
        let mut headers = OwnedHeaders::new_with_capacity(msg.headers.len());
        for (k, v) in &msg.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&msg.topic).headers(headers);
        if let Some(p) = &msg.payload {
            rec = rec.payload(p.as_slice());
        }
        if let Some(k) = &msg.key {
            rec = rec.key(k.as_slice());
        }
        if let Some(p) = msg.partition {
            rec = rec.partition(p);
        }
        if let Some(t) = msg.timestamp {
            rec = rec.timestamp(t);
        }
        self.inner.send_result(rec).map_err(|(e, _)| e)
    }

    /// Delivers `msg`, retrying what is retryable; `Err` only for a fatal
    /// error, counted in `counters`. The record is queued
    /// in the producer before this returns, so records delivered one after
    /// another keep their order (unless one needs a retry).
    pub fn deliver(
        &self,
        msg: Outgoing,
        counters: SinkCounters,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send + 'static {
        let first = self.enqueue(&msg);
        let this = self.clone();
        async move {
            let mut backoff = Duration::from_millis(100);
            let mut attempt = first;
            loop {
                let error = match attempt {
                    Ok(delivery) => match delivery.await {
                        Ok(Ok(_)) => {
                            counters.successes.inc();
                            return Ok(());
                        }
                        Ok(Err((e, _))) => e,
                        Err(_) => KafkaError::Canceled,
                    },
                    Err(e) => e,
                };
                if is_fatal(&error) {
                    counters.failures.inc();
                    return Err(format!("kafka rejected the record: {error}"));
                }
                counters.retries.inc();
                tracing::warn!(topic = %msg.topic, %error, "retrying a kafka write");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                attempt = this.enqueue(&msg);
            }
        }
    }

    /// Waits (up to `timeout`) for everything queued to be delivered.
    pub fn flush(&self, timeout: Duration) {
        use rdkafka::producer::Producer as _;
        let _ = self.inner.flush(timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_large_is_fatal_and_a_timeout_is_not() {
        assert!(is_fatal(&KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge
        )));
        assert!(!is_fatal(&KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageTimedOut
        )));
        assert!(!is_fatal(&KafkaError::MessageProduction(
            RDKafkaErrorCode::BrokerTransportFailure
        )));
    }
}
