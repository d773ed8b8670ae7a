//! The service shell: `cep serve`.
//!
//! Everything with I/O lives here, around the pure core: [`connect`]ing to
//! the cluster (TLS, SASL, the start-up check), the Kafka [`source`] (a
//! consumer group over the configured input topics), the [`task`]s (one per
//! input partition number: what a record means, its own engine and
//! event-time clock; no Kafka types), [`repartition`]ing of topics keyed
//! otherwise than their patterns, the [`pipeline`] that feeds them and
//! sends what they produce, the [`sink`]s alerts go to (Kafka topics,
//! webhooks, stdout, files), [`checkpoint`]s that tie a task's state to its
//! input offsets, kept in the group's [`state`] topic so that they move
//! with the task, the [`ledger`] that keeps offsets from moving past an
//! output not yet acknowledged, the pattern [`registry`] and its REST
//! [`api`], and the [`http`] endpoints (`/metrics`, `/healthz`, `/readyz`).
//!
//! Delivery is at-least-once with stable ids: an alert may be delivered
//! again after a crash, never lost, and a repeat carries the same
//! `alert_id` (and `Idempotency-Key` for webhooks).
//!
//! Shutdown is a future passed in (`serve` resolves it from SIGINT /
//! SIGTERM); tests pass their own.

pub mod api;
pub mod avro;
pub mod checkpoint;
pub mod client;
pub mod connect;
pub mod durable;
pub mod http;
pub mod ledger;
pub mod metrics;
pub mod openapi;
pub mod pipeline;
pub mod produce;
pub mod registry;
pub mod repartition;
pub mod sink;
pub mod source;
pub mod state;
pub mod task;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use crate::compiler::Automaton;
use crate::config::{Config, LogFormat, SinkConfig};
use ledger::Ledger;
use metrics::Metrics;
use pipeline::{Health, Parts, Pipeline};
use sink::{Sink, SinkEnv};

/// Sets up logging (once per process): `RUST_LOG` filters, default `info`.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}

/// Every topic the service writes to.
fn output_topics(config: &Config) -> std::collections::BTreeSet<String> {
    let mut topics = std::collections::BTreeSet::new();
    if let Some(k) = &config.kafka {
        topics.insert(k.dead_letter_topic.clone());
        if k.late_events == crate::config::LatePolicy::Topic {
            topics.insert(k.late_topic.clone());
        }
    }
    for s in config.sinks.values() {
        let dead = match s {
            SinkConfig::Kafka(k) => {
                topics.insert(k.topic.clone());
                &k.dead_letter
            }
            SinkConfig::Webhook(w) => &w.dead_letter,
            _ => &None,
        };
        if let Some(t) = dead.as_ref().and_then(|d| d.topic.clone()) {
            topics.insert(t);
        }
    }
    topics
}

/// Runs the service with `automata` until `shutdown` resolves.
pub async fn serve(
    config: Config,
    automata: Vec<Automaton>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let probes = Probes::default();
    serve_with(config, automata, shutdown, probes).await
}

/// What an embedding program (a benchmark, a test) can watch while the
/// service runs: the metrics `/metrics` shows and the readiness `/readyz`
/// reports.
#[derive(Clone, Default)]
pub struct Probes {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

/// [`serve`], reporting through `probes`.
///
/// The HTTP endpoints come up first, so that `/healthz` answers and
/// `/readyz` says false while the cluster is reached; a cluster that cannot
/// be used as configured stops the service with the cause (see
/// [`connect::check`]).
pub async fn serve_with(
    config: Config,
    automata: Vec<Automaton>,
    shutdown: impl Future<Output = ()>,
    probes: Probes,
) -> Result<(), String> {
    let kafka = config
        .kafka
        .clone()
        .ok_or("config: `cep serve` needs a [kafka] section (brokers, inputs)")?;
    let serve = config.serve.clone();
    let mut engine = config.engine_config()?;
    engine.external_watermark = true;

    let listener = tokio::net::TcpListener::bind(serve.listen)
        .await
        .map_err(|e| format!("serve.listen {}: {e}", serve.listen))?;
    tracing::info!(address = %listener.local_addr().map_err(|e| e.to_string())?, "http endpoints up");
    let (commands_tx, commands) = tokio::sync::mpsc::channel(4);
    let (registry, automata) = registry::Registry::new(&serve.patterns, automata, commands_tx);
    let access = match (&serve.api_token, serve.api_unauthenticated) {
        (Some(t), _) if !t.expose().is_empty() => api::Access::Token(t.clone()),
        (_, true) => api::Access::Open,
        _ => api::Access::Closed,
    };
    let registry = Arc::new(registry);
    let api_state = api::ApiState {
        registry: registry.clone(),
        metrics: probes.metrics.clone(),
        access,
    };
    let app = http::app(probes.metrics.clone(), probes.health.clone())
        .merge(api::routes(api_state, serve.api_max_body));
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = http_stopped.await;
            })
            .await;
    });

    tokio::pin!(shutdown);
    let result = tokio::select! {
        _ = &mut shutdown => Ok(()),
        r = connect::check(&kafka) => match r {
            Ok(()) => {
                tracing::info!(brokers = %kafka.brokers, protocol = kafka.protocol.as_librdkafka(), "connected to kafka");
                match connect_parts(&config, &registry, kafka, automata, commands, engine, probes).await {
                    Ok((pipeline, consumer)) => pipeline.run(consumer, shutdown).await,
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        },
    };
    let _ = stop_http.send(());
    let _ = server.await;
    result
}

/// Everything that talks to the cluster: output topics, the producer, the
/// sinks, the checkpoint store and the consumer, put together as the
/// pipeline.
async fn connect_parts(
    config: &Config,
    registry: &registry::Registry,
    mut kafka: crate::config::KafkaSection,
    automata: Vec<Automaton>,
    commands: tokio::sync::mpsc::Receiver<pipeline::Command>,
    engine: crate::engine::EngineConfig,
    probes: Probes,
) -> Result<(Pipeline, source::Source), String> {
    let serve = &config.serve;
    // Each partition number is a task of its own: refuse patterns whose
    // keys the inputs' partitioning would spread over tasks, now and in
    // every later change over the API.
    let mut counts = connect::partition_counts(&kafka).await?;
    // Repartitioned inputs: tasks read their internal topics instead.
    let plan = repartition::plan(&kafka, &counts)?;
    let inputs_for_decoding = kafka.inputs.clone();
    for route in plan.routes.values() {
        produce::create_topic_configured(&kafka, &route.internal, route.partitions, &[]).await?;
        let have = connect::partition_counts_of(&kafka, std::slice::from_ref(&route.internal))
            .await?
            .get(&route.internal)
            .copied()
            .unwrap_or(0);
        if have != route.partitions {
            return Err(format!(
                "repartitioning: {} has {have} partitions, the inputs need {}: delete it (it is rebuilt from the source topic) or give the group a new group_id",
                route.internal, route.partitions
            ));
        }
        counts.insert(route.internal.clone(), route.partitions);
    }
    let sources: Vec<String> = plan.routes.keys().cloned().collect();
    kafka.inputs = plan.inputs;
    task::check_partitioning(&kafka.inputs, &automata, &counts)?;
    let tasks = counts.values().copied().max().unwrap_or(1).max(1);
    let state_topic = state::ensure(&kafka, tasks).await?;
    // Avro inputs: patterns must agree with the schema, now and in every
    // later change over the API.
    let schemas = avro::latest_schemas(&inputs_for_decoding).await;
    avro::check_patterns(&schemas, &automata)?;
    let inputs = kafka.inputs.clone();
    registry.set_check(Box::new(move |set: &[Automaton]| {
        task::check_partitioning(&inputs, set, &counts)?;
        avro::check_patterns(&schemas, set)
    }));
    if kafka.create_topics {
        for topic in output_topics(config) {
            produce::create_topic_with(&kafka, &topic, kafka.output_partitions).await?;
        }
    }
    let Probes { metrics, health } = probes;
    let ledger = Ledger::new();
    let producer =
        sink::kafka::Producer::new(&kafka).map_err(|e| format!("kafka producer: {e}"))?;
    let env = SinkEnv {
        ledger: ledger.clone(),
        metrics: metrics.clone(),
        producer: Some(producer.clone()),
        state_dir: serve.state_dir.clone(),
    };

    // Sinks: the configured ones, and `stdout` unless configured otherwise.
    let mut sinks = Vec::new();
    let mut index = HashMap::new();
    let mut add = |name: &str, c: &SinkConfig| -> Result<(), String> {
        index.insert(name.to_string(), sinks.len());
        sinks.push(Sink::start(name, c, &env)?);
        Ok(())
    };
    for (name, c) in &config.sinks {
        add(name, c)?;
    }
    if !config.sinks.contains_key("stdout") {
        add("stdout", &SinkConfig::Stdout(Default::default()))?;
    }
    let route = |names: &[String]| names.iter().map(|n| index[n]).collect::<Vec<_>>();
    let routes = serve
        .routes
        .iter()
        .map(|(p, names)| (p.clone(), route(names)))
        .collect();
    let default_route = route(&serve.default_sinks);

    let consumer = source::consumer(&kafka, &sources, &serve.state_dir, metrics.clone())?;
    let state = state::StateTopic::new(state_topic, producer.clone(), metrics.sink("state"));
    let pipeline = Pipeline::new(Parts {
        automata,
        commands,
        engine,
        fallback_dead_letter: serve.state_dir.join("dead-letter-fallback.jsonl"),
        kafka,
        sinks,
        routes,
        default_route,
        producer,
        ledger,
        metrics,
        health,
        state_dir: serve.state_dir.clone(),
        state,
        checkpoint_interval: serve.checkpoint_interval.0,
        shutdown_timeout: serve.shutdown_timeout.0,
        repartition: plan.routes,
        decoders: Arc::new(avro::Decoders::new(&inputs_for_decoding)?),
    });
    Ok((pipeline, consumer))
}
