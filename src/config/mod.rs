//! `config.toml`: settings shared by every way of running the engine.
//!
//! The structs are the documentation: every field says what it does and what
//! its default is, and unknown keys are rejected so that a typo is an error,
//! not a silently ignored setting. Durations are written like in patterns
//! (`"90s"`, `"6h"`). Command-line flags override the file.

mod duration;
pub mod security;
pub mod service;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use duration::Duration;
pub use service::{
    DeadLetterConfig, InputConfig, KafkaOptions, KafkaSection, KeySource, LatePolicy, LogFormat,
    Protocol, SaslConfig, SaslMechanism, SchemaRegistry, Secret, ServeSection, SinkConfig,
    TimeSource, TlsConfig, ValueFormat,
};

use crate::engine::EngineConfig;
use crate::testfile::parse_duration;

/// The whole file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How events are matched.
    #[serde(default)]
    pub engine: EngineSection,
    /// Defaults for `cep replay`.
    #[serde(default)]
    pub replay: ReplaySection,
    /// How `cep serve` runs.
    #[serde(default)]
    pub serve: ServeSection,
    /// The Kafka cluster `cep serve` reads from (required by `serve`).
    pub kafka: Option<KafkaSection>,
    /// Named alert destinations, e.g. `[sinks.ops]`. `stdout` is built in.
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkConfig>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSection {
    /// How far behind the newest event an event may arrive and still be
    /// matched in event-time order, e.g. `"5s"`. Older events are late: they
    /// are counted and written to the late-event output, never matched.
    /// Default `"0s"`: input is taken to be in order.
    #[serde(default = "zero")]
    pub lateness: String,
    /// Cap on concurrent partial matches (runs) per key per pattern. When a
    /// new run would exceed it, the oldest runs of that key are dropped and
    /// counted in `runs_dropped`. Default 10000.
    #[serde(default = "default_max_runs")]
    pub max_runs_per_key: usize,
    /// Put the matched events, by variable, into every alert. Default false.
    #[serde(default)]
    pub include_events: bool,
}

impl Default for EngineSection {
    fn default() -> Self {
        EngineSection {
            lateness: zero(),
            max_runs_per_key: default_max_runs(),
            include_events: false,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaySection {
    /// Pattern file or directory. Default `patterns/flights`.
    pub patterns: Option<PathBuf>,
    /// Input file (JSON lines or CSV, optionally zipped). Default
    /// `data/flights-2013-01.csv`.
    pub input: Option<String>,
    /// CSV cells read as missing fields. Default `["NA"]`.
    pub null_values: Option<Vec<String>>,
}

fn zero() -> String {
    "0s".into()
}
fn default_max_runs() -> usize {
    10_000
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let config: Config =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        Config::check(config).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses and validates config text (see [`Config::load`]).
    pub fn parse(text: &str) -> Result<Config, String> {
        Config::check(toml::from_str(text).map_err(|e| e.to_string())?)
    }

    fn check(mut config: Config) -> Result<Config, String> {
        config
            .engine_config()
            .map_err(|e| format!("engine.lateness: {e}"))?;
        service::validate(&config.serve, config.kafka.as_ref(), &config.sinks)?;
        if let Ok(t) = std::env::var("CEP_API_TOKEN") {
            config.serve.api_token = Some(service::Secret::new(t));
        }
        if let Some(k) = &mut config.kafka {
            if let Ok(b) = std::env::var("CEP_KAFKA_BROKERS") {
                k.brokers = b;
            }
            for (name, value) in std::env::vars() {
                if let Some(opt) = name.strip_prefix("CEP_KAFKA_OPTION_") {
                    k.options
                        .insert(opt.to_ascii_lowercase().replace('_', "."), value);
                }
            }
        }
        Ok(config)
    }

    pub fn engine_config(&self) -> Result<EngineConfig, String> {
        Ok(EngineConfig {
            lateness_ms: parse_duration(&self.engine.lateness)?,
            max_runs_per_key: self.engine.max_runs_per_key,
            include_events: self.engine.include_events,
            external_watermark: false,
        })
    }
}
