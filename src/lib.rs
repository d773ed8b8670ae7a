//! `cep`: complex event processing over keyed, event-time-ordered streams.
//!
//! Analysts write patterns ("a card charged under $10, then over $500 within
//! 5 minutes") in a small language; this crate compiles them into automata
//! and finds every match in a stream of JSON events, turning each into an
//! alert.
//!
//! # Layout
//!
//! The pure core has no I/O, no async runtime and no clock:
//!
//! - [`dsl`]: lexer, parser, syntax tree, printer and diagnostics.
//! - [`compiler`]: semantic checks; syntax tree → immutable [`compiler::Automaton`].
//! - [`event`], [`value`]: decoded events and the values conditions use.
//! - [`extract`]: reading just the needed fields from JSON text (our own
//!   validating scanner) and from CSV rows.
//! - [`time`]: watermarks, per-partition clocks and the reorder buffer.
//! - [`engine`]: per-key runs, windows, skip strategies, alerts, snapshots.
//!
//! Around it:
//!
//! - [`input`]: JSON lines, CSV, Avro container and dead-letter readers.
//! - [`avro`]: Avro records as the documents patterns read.
//! - [`deadletter`]: the one shape of a rejected record, for `replay` and
//!   the service.
//! - [`testfile`]: pattern test files (events in → expected alerts out).
//! - [`gen`]: a seeded card-transaction generator for tests and benchmarks.
//! - [`config`]: `config.toml`, documented field by field.
//! - [`cli`]: the `cep` command (`check`, `replay`, `test`, `explain`,
//!   `serve`, `produce`).
//!
//! The service shell (tokio, rdkafka, axum; never used by the core), behind
//! the default feature `service` so that the core builds without them (the
//! fuzz targets do):
//!
//! - [`service`]: `cep serve` — Kafka source, event-time pipeline, sinks,
//!   checkpoints, metrics and health endpoints.

pub mod avro;
#[cfg(feature = "service")]
pub mod cli;
pub mod compiler;
pub mod config;
pub mod deadletter;
pub mod dsl;
pub mod engine;
pub mod event;
pub mod extract;
pub mod gen;
pub mod history;
pub mod input;
#[cfg(feature = "service")]
pub mod service;
pub mod testfile;
pub mod time;
pub mod value;
