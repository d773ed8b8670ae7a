//! The integration tests, one binary: each file here is a module. (A
//! binary a file linked tokio, rdkafka and axum into each of ~25
//! executables: 1.5 GB of the test build, and the disk a CI run died of.)

mod card_streams;
mod support;

mod api;
mod avro;
mod avro_service;
mod cli;
mod config;
mod conformance;
mod diagnostics;
mod dominance;
mod drain;
mod flights;
mod flink_peer;
mod grammar;
mod history_reference;
mod pass_by;
mod prefetch;
mod properties;
mod record_sharing;
mod reference;
mod secure;
mod service;
mod streams;
mod timers;
mod webhook;
