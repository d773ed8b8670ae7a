//! The sections of `config.toml` that `cep serve` reads: `[serve]`,
//! `[kafka]` with its `[[kafka.inputs]]`, and `[sinks.NAME]`.
//!
//! Every field is documented here, defaults included; unknown keys are
//! rejected. Secrets need not be written in the file: see
//! [`SaslConfig::password_env`], [`KafkaSection::options`] and
//! [`WebhookSink::secret_env`]. How the service connects (TLS, SASL) is in
//! [`super::security`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::duration::Duration;
use super::security::validate_security;
pub use super::security::{
    KafkaOptions, Protocol, SaslConfig, SaslMechanism, Secret, TlsConfig, DEFAULT_PASSWORD_ENV,
};

/// `[serve]`: how the service runs.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeSection {
    /// Pattern file or directory loaded at start. Default `"patterns"`.
    #[serde(default = "default_patterns")]
    pub patterns: PathBuf,
    /// Directory for the default dead-letter files. Checkpoints live in
    /// the state topic (`kafka.state_topic`); a checkpoint file an earlier
    /// version left here is read once when the state topic has nothing for
    /// its task. Default `"state"`.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// How often a checkpoint is taken. Offsets are committed with a
    /// checkpoint once every alert, late event and dead letter produced
    /// before it has been acknowledged by its destination. Default `"2s"`.
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: Duration,
    /// Address of `/metrics`, `/healthz` and `/readyz`. Default
    /// `"127.0.0.1:9464"` (loopback only).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// How long a graceful shutdown (SIGINT, SIGTERM) may spend flushing
    /// sinks and committing before it gives up; what is not acknowledged by
    /// then is re-read after a restart. Default `"20s"`.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: Duration,
    /// `"text"` or `"json"` log lines on stderr; the level comes from
    /// `RUST_LOG` (default `info`). Default `"text"`.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Bearer token the pattern API's changing requests (PUT, DELETE, mode
    /// switches) must carry. The environment variable `CEP_API_TOKEN` wins
    /// over it. Without a token those requests are refused, unless
    /// `api_unauthenticated` is set.
    pub api_token: Option<Secret>,
    /// Accept changing API requests without a token. Only allowed when
    /// `listen` is a loopback address. Default false.
    #[serde(default)]
    pub api_unauthenticated: bool,
    /// Largest pattern source a request may carry, in bytes. Default 65536.
    #[serde(default = "default_api_body")]
    pub api_max_body: usize,
    /// Sinks (names under `[sinks]`) for alerts of patterns without a
    /// route. Default `["stdout"]`, a built-in sink.
    #[serde(default = "default_sinks")]
    pub default_sinks: Vec<String>,
    /// Sinks per pattern name, e.g. `{ delayed_departures = ["ops"] }`.
    #[serde(default)]
    pub routes: BTreeMap<String, Vec<String>>,
}

impl Default for ServeSection {
    fn default() -> Self {
        toml::from_str("").expect("every field has a default")
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[kafka]`: the cluster, the consumer group and the inputs.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSection {
    /// Bootstrap servers, `"host:port,host:port"`. The environment variable
    /// `CEP_KAFKA_BROKERS` overrides it.
    pub brokers: String,
    /// Consumer group of the service. Default `"cep"`.
    #[serde(default = "default_group")]
    pub group_id: String,
    /// Static group membership id (`group.instance.id`): a restarted
    /// instance takes back its own partitions at once instead of waiting for
    /// the group to notice the old one is gone, and so resumes from its
    /// checkpoint. Must be unique among the group's running instances and
    /// stable across restarts. Default `"<hostname>-<group_id>"`; set it
    /// when running several instances of one group on one host.
    pub instance_id: Option<String>,
    /// The topics to read; at least one.
    pub inputs: Vec<InputConfig>,
    /// A partition without a record for this long is idle: the stream's
    /// watermark then ignores it, so one quiet partition cannot stall
    /// alerts. Default `"30s"`.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Duration,
    /// Records larger than this many bytes are dead-lettered unread.
    /// Default 1048576.
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: usize,
    /// Topic for malformed records (not JSON, no key or time, bad time, too
    /// large): the original bytes, with the reason and the source topic,
    /// partition and offset in headers. Default `"cep-dead-letter"`.
    #[serde(default = "default_dead_letter_topic")]
    pub dead_letter_topic: String,
    /// What happens to events older than their partition's watermark:
    /// `"topic"` writes them to `late_topic`, `"drop"` only counts them.
    /// Default `"topic"`.
    #[serde(default)]
    pub late_events: LatePolicy,
    /// Topic for late events. Default `"cep-late"`.
    #[serde(default = "default_late_topic")]
    pub late_topic: String,
    /// Compacted topic holding each task's checkpoint (partition `i` for
    /// task `i`), so that a task resumes where it left off on whichever
    /// instance is assigned it. Created at start (compacted, one partition
    /// per task) when missing. Default `"cep-state-<group_id>"`.
    pub state_topic: Option<String>,
    /// Create the topics the service writes to (alert sinks, dead-letter
    /// and late topics) at start when they do not exist, with
    /// `output_partitions` partitions. Default true.
    #[serde(default = "yes")]
    pub create_topics: bool,
    /// Partitions of topics the service creates. Default 1.
    #[serde(default = "one")]
    pub output_partitions: i32,
    /// How the service talks to the brokers: `"plaintext"`, `"ssl"` (TLS),
    /// `"sasl_plaintext"` or `"sasl_ssl"` (SASL over TLS, what managed Kafka
    /// services ask for). The `sasl_` ones need `[kafka.sasl]`; `[kafka.tls]`
    /// applies to `ssl` and `sasl_ssl`. Used by every Kafka client of the
    /// service (consumer, sinks, dead-letter and late topics, topic
    /// creation) and by `cep produce --config`. Default `"plaintext"`.
    #[serde(default)]
    pub protocol: Protocol,
    /// `[kafka.tls]`: how brokers are verified, and the client certificate
    /// for mutual TLS.
    #[serde(default)]
    pub tls: TlsConfig,
    /// `[kafka.sasl]`: the user the service logs in as.
    pub sasl: Option<SaslConfig>,
    /// How long start-up may take to reach the cluster (metadata from a
    /// broker, after TLS and SASL). A wrong password, an untrusted
    /// certificate or an unreachable broker then stops `cep serve` with a
    /// message naming the cause, rather than retrying for ever. Default
    /// `"15s"`.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// Extra librdkafka settings for the consumer and producers (e.g.
    /// `"client.rack"`); they win over the keys above. An environment
    /// variable `CEP_KAFKA_OPTION_<NAME>` (dots as underscores, upper case,
    /// e.g. `CEP_KAFKA_OPTION_CLIENT_RACK`) sets or overrides one. Values of
    /// keys naming a password, secret or key are never shown.
    #[serde(default)]
    pub options: KafkaOptions,
}

/// One input topic.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// The Kafka topic.
    pub topic: String,
    /// The stream patterns name in `from`. Default: the topic's name.
    pub stream: Option<String>,
    /// Where each event's key comes from: `"fields"` (each pattern's `key`
    /// fields) or `"message"` (the Kafka message key, for every pattern).
    /// Default `"fields"`.
    #[serde(default)]
    pub key: KeySource,
    /// Where each event's time comes from: `"field"` (each pattern's `time`
    /// field) or `"timestamp"` (the Kafka record timestamp). Default
    /// `"field"`.
    #[serde(default)]
    pub time: TimeSource,
    /// How producers key this topic's records, as the field path(s) whose
    /// value is the message key (`"card.id"`, or `["carrier", "origin"]`
    /// for a composite key). Each partition is matched by its own task, so
    /// a pattern's key must not be spread over partitions: with several
    /// partitions and `key = "fields"`, every pattern reading the topic
    /// must be keyed by exactly these fields, or the service refuses to
    /// start (and the API refuses the pattern). Not needed with
    /// `key = "message"` or a topic of one partition.
    pub partitioned_by: Option<FieldPaths>,
    /// For a topic keyed otherwise than its patterns: the field path(s) to
    /// re-key it by. The service re-produces each record, unchanged, into
    /// the internal topic `cep-repartition-<group_id>-<topic>` in the
    /// partition its key picks, and matches from there; every pattern
    /// reading the stream must then be keyed by exactly these fields. Costs
    /// one more write and read of every record. Needs `key = "fields"`;
    /// not with `partitioned_by`.
    pub repartition_by: Option<FieldPaths>,
    /// Set by the service on the input it reads in place of a repartitioned
    /// one: the source topic and its number of partitions.
    #[serde(skip)]
    pub repartitioned_from: Option<(String, i32)>,
    /// How record values are encoded: `"json"` (one JSON object) or
    /// `"avro"`. Avro needs `schema_registry` (the Confluent wire format:
    /// a 0 byte, the writer schema's 4-byte id, the datum; schemas fetched
    /// once per id) or `schema_file` (bare datums, all written with that
    /// schema). Patterns read Avro records as JSON (see README, "Avro").
    /// Default `"json"`.
    #[serde(default)]
    pub format: ValueFormat,
    /// A Confluent-compatible schema registry, for `format = "avro"`.
    pub schema_registry: Option<SchemaRegistry>,
    /// The writer schema (`.avsc`) of every record, for `format = "avro"`
    /// without a registry.
    pub schema_file: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueFormat {
    #[default]
    Json,
    Avro,
}

/// `[[kafka.inputs]] schema_registry = { url = "...", ... }`. A registry
/// that cannot be reached is retried (with backoff, logged) until it
/// answers: records wait, none is dropped. An id the registry does not
/// know sends the record to the dead-letter topic.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaRegistry {
    /// Base URL, e.g. `"http://registry:8081"`.
    pub url: String,
    /// Basic authentication user.
    pub username: Option<String>,
    /// Environment variable holding the basic authentication password.
    pub password_env: Option<String>,
}

/// One dotted field path or a list of them.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum FieldPaths {
    One(String),
    Many(Vec<String>),
}

impl FieldPaths {
    /// The paths, split into segments.
    pub fn paths(&self) -> Vec<Vec<String>> {
        let split = |p: &String| p.split('.').map(str::to_string).collect();
        match self {
            FieldPaths::One(p) => vec![split(p)],
            FieldPaths::Many(ps) => ps.iter().map(split).collect(),
        }
    }
}

impl KafkaSection {
    /// Settings for a client that only connects (`cep produce` without a
    /// config file): plaintext to `brokers`.
    pub fn connect_only(brokers: &str) -> KafkaSection {
        let mut k: KafkaSection = toml::from_str("brokers = \"\"\ninputs = []").expect("valid");
        k.brokers = brokers.to_string();
        k
    }

    /// [`KafkaSection::instance_id`] or its default.
    pub fn instance_id(&self) -> String {
        self.instance_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .or_else(|| std::env::var("HOSTNAME").ok())
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "cep".into());
            format!("{host}-{}", self.group_id)
        })
    }
}

impl InputConfig {
    pub fn stream(&self) -> &str {
        self.stream.as_deref().unwrap_or(&self.topic)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeySource {
    #[default]
    Fields,
    Message,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeSource {
    #[default]
    Field,
    Timestamp,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LatePolicy {
    #[default]
    Topic,
    Drop,
}

/// `[sinks.NAME]`: where alerts go. `type` picks the kind.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SinkConfig {
    Kafka(KafkaSink),
    Webhook(WebhookSink),
    Stdout(StdoutSink),
    File(FileSink),
}

/// Alerts to a Kafka topic: the alert JSON as value, the event key as
/// message key, headers `cep-pattern`, `cep-pattern-version`,
/// `cep-alert-id` and `cep-kind`; idempotent producer, `acks=all`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSink {
    pub topic: String,
    /// Where an alert goes when the broker rejects it for good (too large,
    /// not authorised). Default: the file `<state_dir>/dead-alerts-<sink>.jsonl`.
    pub dead_letter: Option<DeadLetterConfig>,
}

/// Alerts as HTTP POSTs of the alert JSON.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSink {
    /// `http://` or `https://` URL.
    pub url: String,
    /// Per-request timeout. Default `"5s"`.
    #[serde(default = "default_webhook_timeout")]
    pub timeout: Duration,
    /// Attempts after the first before an alert is dead-lettered. Default 8.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// First retry delay; it doubles per attempt, with full jitter. Default
    /// `"200ms"`.
    #[serde(default = "default_initial_backoff")]
    pub initial_backoff: Duration,
    /// Cap on the retry delay. Default `"30s"`.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: Duration,
    /// Requests in flight at once. Default 4.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Alerts waiting to be sent; when it is full the consumer waits
    /// (memory never grows without bound). Default 1000.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// HMAC-SHA256 key: each request then carries
    /// `X-Cep-Signature: sha256=<hex of HMAC(body)>`. Prefer `secret_env`.
    pub secret: Option<Secret>,
    /// Environment variable holding the HMAC key; it wins over `secret`.
    /// Default `CEP_SINK_<NAME>_SECRET` (name upper-cased, `-` as `_`).
    pub secret_env: Option<String>,
    /// Where alerts go that exhaust their retries. Default: the file
    /// `<state_dir>/dead-alerts-<sink>.jsonl`.
    pub dead_letter: Option<DeadLetterConfig>,
}

/// Alerts as JSON lines on standard output.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutSink {}

/// Alerts as JSON lines appended to a file (flushed and synced before an
/// alert counts as delivered).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSink {
    pub path: PathBuf,
}

/// A dead-letter destination: exactly one of `topic` or `file`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    pub topic: Option<String>,
    pub file: Option<PathBuf>,
}

fn default_api_body() -> usize {
    64 * 1024
}
fn yes() -> bool {
    true
}
fn one() -> i32 {
    1
}
fn default_patterns() -> PathBuf {
    "patterns".into()
}
fn default_state_dir() -> PathBuf {
    "state".into()
}
fn default_checkpoint_interval() -> Duration {
    Duration::from_millis(2_000)
}
fn default_listen() -> SocketAddr {
    ([127, 0, 0, 1], 9464).into()
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_millis(20_000)
}
fn default_sinks() -> Vec<String> {
    vec!["stdout".into()]
}
fn default_group() -> String {
    "cep".into()
}
fn default_connect_timeout() -> Duration {
    Duration::from_millis(15_000)
}
fn default_idle_timeout() -> Duration {
    Duration::from_millis(30_000)
}
fn default_max_event_bytes() -> usize {
    1 << 20
}
fn default_dead_letter_topic() -> String {
    "cep-dead-letter".into()
}
fn default_late_topic() -> String {
    "cep-late".into()
}
fn default_webhook_timeout() -> Duration {
    Duration::from_millis(5_000)
}
fn default_max_retries() -> u32 {
    8
}
fn default_initial_backoff() -> Duration {
    Duration::from_millis(200)
}
fn default_max_backoff() -> Duration {
    Duration::from_millis(30_000)
}
fn default_concurrency() -> usize {
    4
}
fn default_queue() -> usize {
    1000
}

/// Checks what serde cannot: every error names its key.
/// An input's value format and where its schemas come from.
fn validate_format(n: usize, i: &InputConfig) -> Result<(), String> {
    let at = format!("kafka.inputs[{n}]");
    let (registry, file) = (i.schema_registry.is_some(), i.schema_file.is_some());
    match i.format {
        ValueFormat::Json if registry || file => Err(format!(
            "{at}: schema_registry and schema_file are for format = \"avro\""
        )),
        ValueFormat::Avro if registry == file => Err(format!(
            "{at}: format = \"avro\" needs exactly one of schema_registry and schema_file"
        )),
        ValueFormat::Avro if i.repartition_by.is_some() => Err(format!(
            "{at}: repartition_by reads JSON records; an Avro topic must be keyed by its producers"
        )),
        _ => Ok(()),
    }
}

pub fn validate(
    serve: &ServeSection,
    kafka: Option<&KafkaSection>,
    sinks: &BTreeMap<String, SinkConfig>,
) -> Result<(), String> {
    if serve.api_unauthenticated && !serve.listen.ip().is_loopback() {
        return Err(format!(
            "serve.api_unauthenticated: only allowed on a loopback address, not {}",
            serve.listen
        ));
    }
    let known = |name: &str| name == "stdout" || sinks.contains_key(name);
    for s in &serve.default_sinks {
        if !known(s) {
            return Err(format!("serve.default_sinks: unknown sink `{s}`"));
        }
    }
    for (pattern, list) in &serve.routes {
        for s in list {
            if !known(s) {
                return Err(format!("serve.routes.{pattern}: unknown sink `{s}`"));
            }
        }
    }
    if let Some(k) = kafka {
        if k.inputs.is_empty() {
            return Err("kafka.inputs: give at least one input topic".into());
        }
        for (n, i) in k.inputs.iter().enumerate() {
            if i.topic.trim().is_empty() {
                return Err(format!("kafka.inputs[{n}].topic: must not be empty"));
            }
            validate_format(n, i)?;
        }
        if k.brokers.trim().is_empty() {
            return Err("kafka.brokers: must not be empty".into());
        }
        validate_security(k)?;
    }
    for (name, s) in sinks {
        let dead = match s {
            SinkConfig::Kafka(k) => {
                if kafka.is_none() {
                    return Err(format!(
                        "sinks.{name}: a kafka sink needs a [kafka] section"
                    ));
                }
                if k.topic.trim().is_empty() {
                    return Err(format!("sinks.{name}.topic: must not be empty"));
                }
                &k.dead_letter
            }
            SinkConfig::Webhook(w) => {
                if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                    return Err(format!(
                        "sinks.{name}.url: expected an http:// or https:// URL, got {:?}",
                        w.url
                    ));
                }
                if w.concurrency == 0 || w.queue == 0 {
                    return Err(format!(
                        "sinks.{name}: concurrency and queue must be at least 1"
                    ));
                }
                &w.dead_letter
            }
            SinkConfig::Stdout(_) | SinkConfig::File(_) => &None,
        };
        if let Some(d) = dead {
            if d.topic.is_some() == d.file.is_some() {
                return Err(format!(
                    "sinks.{name}.dead_letter: give exactly one of `topic` or `file`"
                ));
            }
            if d.topic.is_some() && kafka.is_none() {
                return Err(format!(
                    "sinks.{name}.dead_letter.topic: needs a [kafka] section"
                ));
            }
        }
    }
    Ok(())
}
