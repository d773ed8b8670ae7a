//! Sinks: where alerts go.
//!
//! Each sink is a task behind a bounded queue: when a destination is slow
//! or down its queue fills and the pipeline waits on it, so memory stays
//! bounded and the consumer is pushed back instead of buffering without
//! end. A sink settles an alert's [`Ticket`] in the [`Ledger`] only when
//! the alert is delivered for good — or, after a fatal error or exhausted
//! retries, written to the sink's dead-letter destination. Nothing is
//! dropped on the floor.

pub mod kafka;
pub mod webhook;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{DeadLetterConfig, SinkConfig};
use crate::engine::Alert;
use crate::service::durable::{self, append_lines};
use crate::service::ledger::{Ledger, Ticket};
use crate::service::metrics::{Metrics, SinkCounters};
use kafka::{Outgoing, Producer};

/// An alert as the sinks see it: serialised once, shared by every sink.
#[derive(Debug)]
pub struct AlertOut {
    pub id: String,
    pub pattern: String,
    pub version: u32,
    pub kind: &'static str,
    /// The event key, as text: the Kafka message key.
    pub key: String,
    /// The alert JSON.
    pub body: Vec<u8>,
}

impl AlertOut {
    pub fn new(a: &Alert) -> AlertOut {
        AlertOut {
            id: a.alert_id.clone(),
            pattern: a.pattern.clone(),
            version: a.version,
            kind: match a.kind {
                crate::engine::AlertKind::Match => "match",
                crate::engine::AlertKind::Timeout => "timeout",
            },
            key: match &a.key {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            },
            body: serde_json::to_vec(a).expect("an alert serialises"),
        }
    }
}

/// One alert for one sink.
#[derive(Debug)]
pub struct Delivery {
    pub ticket: Ticket,
    pub alert: Arc<AlertOut>,
}

/// A running sink.
pub struct Sink {
    pub name: String,
    tx: mpsc::Sender<Delivery>,
    task: JoinHandle<()>,
}

/// What every sink needs.
#[derive(Clone)]
pub struct SinkEnv {
    pub ledger: Ledger,
    pub metrics: Arc<Metrics>,
    /// The service's producer (None without a `[kafka]` section).
    pub producer: Option<Producer>,
    pub state_dir: PathBuf,
}

impl Sink {
    /// Starts the sink `name` configured by `config`.
    pub fn start(name: &str, config: &SinkConfig, env: &SinkEnv) -> Result<Sink, String> {
        let dead = |d: &Option<DeadLetterConfig>| -> Result<DeadLetter, String> {
            DeadLetter::new(name, d.as_ref(), env)
        };
        let (queue, task): (usize, _) = match config {
            SinkConfig::Stdout(_) => (1024, Kind::Stdout),
            SinkConfig::File(f) => (1024, Kind::File(f.path.clone())),
            SinkConfig::Kafka(k) => {
                let producer = env
                    .producer
                    .clone()
                    .ok_or_else(|| format!("sinks.{name}: a kafka sink needs a [kafka] section"))?;
                (
                    4096,
                    Kind::Kafka(producer, k.topic.clone(), dead(&k.dead_letter)?),
                )
            }
            SinkConfig::Webhook(w) => (
                w.queue,
                Kind::Webhook(webhook::Webhook::new(name, w)?, dead(&w.dead_letter)?),
            ),
        };
        let (tx, rx) = mpsc::channel(queue.max(1));
        let env = env.clone();
        let sink_name = name.to_string();
        let task = tokio::spawn(async move { run(sink_name, task, rx, env).await });
        Ok(Sink {
            name: name.to_string(),
            tx,
            task,
        })
    }

    /// Queues an alert; waits while the queue is full.
    pub async fn send(&self, d: Delivery) -> Result<(), String> {
        self.tx
            .send(d)
            .await
            .map_err(|_| format!("sink `{}` has stopped", self.name))
    }

    /// Stops taking alerts and waits for the queued ones to be delivered.
    pub async fn close(self) {
        drop(self.tx);
        let _ = self.task.await;
    }
}

enum Kind {
    Stdout,
    File(PathBuf),
    Kafka(Producer, String, DeadLetter),
    Webhook(webhook::Webhook, DeadLetter),
}

async fn run(name: String, kind: Kind, mut rx: mpsc::Receiver<Delivery>, env: SinkEnv) {
    let counters = env.metrics.sink(&name);
    match kind {
        Kind::Stdout => {
            while let Some(d) = rx.recv().await {
                let mut out = std::io::stdout().lock();
                let ok = out
                    .write_all(&d.alert.body)
                    .and_then(|_| out.write_all(b"\n"))
                    .and_then(|_| out.flush());
                if let Err(e) = ok {
                    tracing::error!(sink = %name, error = %e, "stdout is gone");
                }
                counters.successes.inc();
                env.ledger.settle(d.ticket);
            }
        }
        Kind::File(path) => {
            while let Some(first) = rx.recv().await {
                // Take whatever else is queued and sync once for all of it.
                let mut batch = vec![first];
                while let Ok(d) = rx.try_recv() {
                    batch.push(d);
                }
                let alerts: Arc<Vec<Arc<AlertOut>>> =
                    Arc::new(batch.iter().map(|d| d.alert.clone()).collect());
                let what = format!("a write to {}", path.display());
                durable::until_ok(
                    &what,
                    || counters.retries.inc(),
                    || {
                        let (path, alerts) = (path.clone(), alerts.clone());
                        async move {
                            durable::blocking(move || {
                                append_lines(&path, alerts.iter().map(|a| a.body.as_slice()))
                            })
                            .await
                            .map_err(|e| e.to_string())
                        }
                    },
                )
                .await;
                for d in batch {
                    counters.successes.inc();
                    env.ledger.settle(d.ticket);
                }
            }
        }
        Kind::Kafka(producer, topic, dead) => {
            // Deliveries are queued in the producer in order (librdkafka
            // batches them) and awaited here together, up to a bound.
            const IN_FLIGHT: usize = 4096;
            let mut in_flight = FuturesUnordered::new();
            let mut open = true;
            while open || !in_flight.is_empty() {
                tokio::select! {
                    d = rx.recv(), if open && in_flight.len() < IN_FLIGHT => match d {
                        Some(d) => {
                            let delivery = producer.deliver(alert_record(&topic, &d.alert), counters.clone());
                            in_flight.push(async move { (delivery.await, d) });
                        }
                        None => open = false,
                    },
                    Some((result, d)) = in_flight.next(), if !in_flight.is_empty() => {
                        if let Err(reason) = result {
                            dead.write(&d.alert, &reason).await;
                        }
                        env.ledger.settle(d.ticket);
                    }
                }
            }
        }
        Kind::Webhook(hook, dead) => hook.run(rx, dead, env).await,
    }
}

/// The Kafka record of an alert: key = event key, headers name it.
pub fn alert_record(topic: &str, a: &AlertOut) -> Outgoing {
    Outgoing {
        topic: topic.to_string(),
        partition: None,
        key: Some(a.key.as_bytes().to_vec()),
        payload: Some(a.body.clone()),
        timestamp: None,
        headers: vec![
            ("cep-pattern".into(), a.pattern.as_bytes().to_vec()),
            (
                "cep-pattern-version".into(),
                a.version.to_string().into_bytes(),
            ),
            ("cep-alert-id".into(), a.id.as_bytes().to_vec()),
            ("cep-kind".into(), a.kind.as_bytes().to_vec()),
        ],
    }
}

/// Where a sink puts alerts it cannot deliver.
pub enum DeadLetter {
    File(PathBuf),
    Topic(Producer, String, SinkCounters),
}

impl DeadLetter {
    fn new(
        sink: &str,
        config: Option<&DeadLetterConfig>,
        env: &SinkEnv,
    ) -> Result<DeadLetter, String> {
        match config {
            Some(DeadLetterConfig { topic: Some(t), .. }) => Ok(DeadLetter::Topic(
                env.producer.clone().ok_or_else(|| {
                    format!("sinks.{sink}.dead_letter.topic: needs a [kafka] section")
                })?,
                t.clone(),
                env.metrics.sink(&format!("{sink}-dead-letter")),
            )),
            Some(DeadLetterConfig { file: Some(f), .. }) => Ok(DeadLetter::File(f.clone())),
            _ => Ok(DeadLetter::File(
                env.state_dir.join(format!("dead-alerts-{sink}.jsonl")),
            )),
        }
    }

    /// Writes the alert with the reason; retries until it is written.
    pub async fn write(&self, a: &AlertOut, reason: &str) {
        tracing::error!(alert_id = %a.id, pattern = %a.pattern, reason, "alert dead-lettered");
        durable::until_ok(
            "a dead-letter write",
            || {},
            || async {
                match self {
                    DeadLetter::File(path) => {
                        let alert: serde_json::Value =
                            serde_json::from_slice(&a.body).unwrap_or(serde_json::Value::Null);
                        let line =
                            serde_json::json!({"reason": reason, "alert": alert}).to_string();
                        let path = path.clone();
                        durable::blocking(move || {
                            append_lines(&path, std::iter::once(line.as_bytes()))
                        })
                        .await
                        .map_err(|e| e.to_string())
                    }
                    DeadLetter::Topic(p, topic, counters) => {
                        let mut msg = alert_record(topic, a);
                        msg.headers
                            .push(("cep-reason".into(), reason.as_bytes().to_vec()));
                        p.deliver(msg, counters.clone()).await
                    }
                }
            },
        )
        .await;
    }
}
