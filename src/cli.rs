//! The `cep` command line: `check`, `replay`, `test`, `explain`, `serve`,
//! `produce`.
//!
//! A thin layer: each subcommand reads files, drives the pure core and
//! prints. Exit status is non-zero on any error or test failure.

mod replay;
mod why;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::compiler::schema::SchemaCheck;
use crate::compiler::{compile_source, dot, load_patterns, pattern_files};
use crate::config::Config;
use crate::dsl::{Diagnostic, Diagnostics};
use crate::input::Format;
use crate::testfile;

#[derive(Parser)]
#[command(
    name = "cep",
    version,
    about = "Complex event processing: patterns over keyed event streams"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Validate pattern files and print every diagnostic.
    Check {
        /// Pattern files or directories (searched for `*.cep`).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// An Avro schema (`.avsc`) of the events, `FILE` for every pattern
        /// or `STREAM=FILE` for the patterns reading STREAM: every field a
        /// pattern reads must exist in it and be compared with values of
        /// its type. Repeatable.
        #[arg(long = "schema", value_name = "[STREAM=]FILE")]
        schemas: Vec<String>,
    },
    /// Backtest patterns over a file of events; alerts go to stdout as JSON lines.
    Replay {
        /// Settings file (see `config.toml`); flags override it.
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
        /// A pattern file or a directory of them [default: patterns/flights].
        #[arg(long)]
        patterns: Option<PathBuf>,
        /// JSON lines or CSV (header row = field names), optionally zipped; `-` for stdin
        /// [default: data/flights-2013-01.csv].
        #[arg(long)]
        input: Option<String>,
        /// Input format; guessed from the file name by default (`.csv`,
        /// `.avro`: an Avro object container file). `dead-letter` reads a
        /// `--dead-letter` file again (after fixing its records).
        #[arg(long, value_parser = ["jsonl", "csv", "avro", "dead-letter"])]
        format: Option<String>,
        /// Only patterns reading this stream (`from NAME`).
        #[arg(long)]
        stream: Option<String>,
        /// How late an event may arrive and still be matched in order, e.g. `1h`.
        #[arg(long)]
        lateness: Option<String>,
        /// Cap on concurrent runs per key per pattern.
        #[arg(long)]
        max_runs_per_key: Option<usize>,
        /// Include the matched events in each alert.
        #[arg(long)]
        events: bool,
        /// CSV cells read as missing [default: NA].
        #[arg(long)]
        null: Vec<String>,
        /// Write late events here (JSON lines).
        #[arg(long)]
        late: Option<PathBuf>,
        /// Write unreadable records and undecodable events here, one JSON
        /// line per record with its line, bytes and every reason (read it
        /// back with `--format dead-letter`).
        #[arg(long)]
        dead_letter: Option<PathBuf>,
        /// At the end, close only windows that end by the newest event time:
        /// for a sample of a longer stream, where the data cannot prove an
        /// absence whose window reaches past it. By default the end of input
        /// closes every window.
        #[arg(long)]
        keep_open: bool,
    },
    /// Run pattern test files (`*.test.toml`).
    Test {
        /// A test file or a directory searched for them.
        #[arg(default_value = "patterns")]
        path: PathBuf,
    },
    /// Run the service: consume Kafka topics, match in event time, send alerts to sinks.
    Serve {
        /// Settings file: `[kafka]` inputs, `[sinks]`, `[serve]` (see `config.toml`).
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
        /// A pattern file or directory [default: `serve.patterns`].
        #[arg(long)]
        patterns: Option<PathBuf>,
    },
    /// Load events from a file (JSON lines or CSV) into a Kafka topic.
    Produce {
        /// Bootstrap servers [default: `kafka.brokers` of `--config`, else
        /// `CEP_KAFKA_BROKERS`, else 127.0.0.1:9092].
        #[arg(long)]
        brokers: Option<String>,
        /// Connect as `[kafka]` of this settings file says (TLS, SASL,
        /// options); without it, plaintext.
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        topic: String,
        /// JSON lines or CSV (header row = field names), optionally zipped; `-` for stdin.
        #[arg(long)]
        input: String,
        /// Field (dotted path) whose value becomes the message key.
        #[arg(long)]
        key_field: Option<String>,
        /// Create the topic with this many partitions if it does not exist.
        #[arg(long)]
        partitions: Option<i32>,
    },
    /// Manage the patterns of a running `cep serve` over its REST API.
    Patterns {
        /// The service's address.
        #[arg(long, default_value = "http://127.0.0.1:9464")]
        server: String,
        /// Bearer token for changes [default: `CEP_API_TOKEN`].
        #[arg(long)]
        token: Option<String>,
        #[command(subcommand)]
        command: crate::service::client::PatternsCommand,
    },
    /// Why did it (not) match? Event by event for one key: the runs a
    /// pattern started and advanced, each condition that turned an event
    /// down with the values it saw, windows that closed, negations, skips
    /// and broken contiguity.
    Why {
        /// The pattern file.
        file: PathBuf,
        /// Which pattern (needed when the file holds several).
        #[arg(long)]
        pattern: Option<String>,
        /// The key, as alerts show it (a composite key's parts joined by
        /// U+001F).
        #[arg(long)]
        key: String,
        /// JSON lines, CSV or Avro events, optionally zipped; `-` for stdin.
        #[arg(long)]
        input: String,
        /// Input format; guessed from the file name by default.
        #[arg(long, value_parser = ["jsonl", "csv", "avro"])]
        format: Option<String>,
        /// How late an event may arrive and still be matched in order, e.g.
        /// `1h` [default: 0].
        #[arg(long)]
        lateness: Option<String>,
        /// CSV cells read as missing [default: NA].
        #[arg(long)]
        null: Vec<String>,
        /// One JSON object per note instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the compiled automaton as Graphviz DOT.
    Explain {
        file: PathBuf,
        /// Which pattern (default: every pattern in the file).
        #[arg(long)]
        pattern: Option<String>,
    },
}

/// Runs the CLI; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    let result = match cli.command {
        Command::Check { paths, schemas } => check(&paths, &schemas),
        Command::Serve { config, patterns } => serve(&config, patterns),
        Command::Produce {
            brokers,
            config,
            topic,
            input,
            key_field,
            partitions,
        } => (|| {
            let kafka = match config {
                Some(path) => {
                    let mut k = Config::load(&path)?
                        .kafka
                        .ok_or_else(|| format!("{}: no [kafka] section", path.display()))?;
                    if let Some(b) = brokers {
                        k.brokers = b;
                    }
                    k
                }
                None => crate::config::KafkaSection::connect_only(
                    &brokers
                        .or_else(|| std::env::var("CEP_KAFKA_BROKERS").ok())
                        .unwrap_or_else(|| "127.0.0.1:9092".into()),
                ),
            };
            let args = crate::service::produce::ProduceArgs {
                kafka,
                topic,
                input,
                key_field,
                partitions,
                null_values: vec!["NA".into()],
            };
            runtime()
                .and_then(|rt| rt.block_on(crate::service::produce::produce(&args)))
                .map(|n| {
                    eprintln!("produced {n} records to {}", args.topic);
                    0
                })
        })(),
        Command::Replay {
            config,
            patterns,
            input,
            format,
            stream,
            lateness,
            max_runs_per_key,
            events,
            null,
            late,
            dead_letter,
            keep_open,
        } => (|| {
            // The file is optional only when it is the default one.
            let file = if config.exists() || config != Path::new("config.toml") {
                Config::load(&config)?
            } else {
                Config::default()
            };
            let mut engine = file.engine_config()?;
            if let Some(l) = lateness {
                engine.lateness_ms = testfile::parse_duration(&l)?;
            }
            if let Some(m) = max_runs_per_key {
                engine.max_runs_per_key = m;
            }
            engine.include_events |= events;
            let patterns = patterns
                .or(file.replay.patterns.clone())
                .unwrap_or_else(|| PathBuf::from("patterns/flights"));
            let input = input
                .or(file.replay.input.clone())
                .unwrap_or_else(|| "data/flights-2013-01.csv".into());
            let null = if null.is_empty() {
                file.replay
                    .null_values
                    .clone()
                    .unwrap_or_else(|| vec!["NA".into()])
            } else {
                null
            };
            let format = match format.as_deref() {
                Some("csv") => Format::Csv,
                Some("avro") => Format::Avro,
                Some("dead-letter") => Format::DeadLetter,
                Some(_) => Format::JsonLines,
                None => Format::from_path(&input),
            };
            replay::replay(&replay::ReplayArgs {
                patterns: &patterns,
                input: &input,
                format,
                stream: stream.as_deref(),
                config: engine,
                null: &null,
                late: late.as_deref(),
                dead_letter: dead_letter.as_deref(),
                keep_open,
            })
        })(),
        Command::Test { path } => test(&path),
        Command::Explain { file, pattern } => explain(&file, pattern.as_deref()),
        Command::Why {
            file,
            pattern,
            key,
            input,
            format,
            lateness,
            null,
            json,
        } => (|| {
            let lateness_ms = match lateness {
                Some(l) => testfile::parse_duration(&l)?,
                None => 0,
            };
            let format = match format.as_deref() {
                Some("csv") => Format::Csv,
                Some("avro") => Format::Avro,
                Some(_) => Format::JsonLines,
                None => Format::from_path(&input),
            };
            let null = if null.is_empty() {
                vec!["NA".into()]
            } else {
                null
            };
            why::why(&why::WhyArgs {
                file: &file,
                pattern: pattern.as_deref(),
                key: &key,
                input: &input,
                format,
                lateness_ms,
                null: &null,
                json,
            })
        })(),
        Command::Patterns {
            server,
            token,
            command,
        } => {
            let token = token.or_else(|| std::env::var("CEP_API_TOKEN").ok());
            crate::service::client::run(&server, token.as_deref(), command)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

fn serve(config: &Path, patterns: Option<PathBuf>) -> Result<i32, String> {
    let config = Config::load(config)?;
    crate::service::init_logging(config.serve.log_format);
    let mut config = config;
    let path = patterns.unwrap_or_else(|| config.serve.patterns.clone());
    config.serve.patterns = path.clone();
    // An empty directory is a valid start: patterns can arrive over the API.
    let automata = if pattern_files(&path).is_empty() {
        std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        tracing::warn!(path = %path.display(), "no pattern files: starting with none");
        Vec::new()
    } else {
        load_patterns(&path)?
    };
    tracing::info!(patterns = automata.len(), path = %path.display(), "patterns loaded");
    let rt = runtime()?;
    rt.block_on(crate::service::serve(
        config,
        automata,
        crate::service::shutdown_signal(),
    ))?;
    tracing::info!("stopped cleanly");
    Ok(0)
}

fn check(paths: &[PathBuf], schemas: &[String]) -> Result<i32, String> {
    let schemas = schemas
        .iter()
        .map(|arg| {
            let (stream, file) = match arg.split_once('=') {
                Some((s, f)) => (Some(s.to_string()), f),
                None => (None, arg.as_str()),
            };
            let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
            let check = SchemaCheck::parse(&text).map_err(|e| format!("{file}: {e}"))?;
            Ok((stream, check))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let mut failed = false;
    for path in paths {
        let files = pattern_files(path);
        if files.is_empty() {
            return Err(format!("no pattern files (*.cep) at {}", path.display()));
        }
        for f in files {
            let src = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
            let origin = f.display().to_string();
            let schema_errors = schema_errors(&src, &schemas);
            // Both kinds of error at once, in source order.
            let compiled = match compile_source(&origin, &src) {
                Ok(a) if schema_errors.is_empty() => Ok(a),
                Ok(_) => Err(Diagnostics {
                    origin: origin.clone(),
                    source: src.clone(),
                    errors: schema_errors,
                }),
                Err(mut d) => {
                    d.errors.extend(schema_errors);
                    d.errors.sort_by_key(|e| e.span.start);
                    Err(d)
                }
            };
            match compiled {
                Ok(a) => println!(
                    "ok: {} ({} pattern{})",
                    f.display(),
                    a.len(),
                    if a.len() == 1 { "" } else { "s" }
                ),
                Err(d) => {
                    failed = true;
                    eprint!("{}", d.render());
                }
            }
        }
    }
    Ok(i32::from(failed))
}

/// What the schemas find wrong in a pattern file that compiles.
fn schema_errors(src: &str, schemas: &[(Option<String>, SchemaCheck)]) -> Vec<Diagnostic> {
    let (file, parse_errors) = crate::dsl::parser::parse_partial(src);
    if !parse_errors.is_empty() {
        return Vec::new();
    }
    schemas
        .iter()
        .flat_map(|(stream, check)| check.check(&file, stream.as_deref()))
        .collect()
}

fn test(path: &Path) -> Result<i32, String> {
    let files = testfile::discover(path);
    if files.is_empty() {
        return Err(format!("no test files (*.test.toml) at {}", path.display()));
    }
    let (mut passed, mut failed) = (0, 0);
    for f in files {
        let results = match testfile::run_file(&f) {
            Ok(r) => r,
            Err(e) => {
                failed += 1;
                println!("FAIL {}\n    {}", f.display(), e.replace('\n', "\n    "));
                continue;
            }
        };
        for r in results {
            if r.failures.is_empty() {
                passed += 1;
                println!("ok   {} :: {}", f.display(), r.name);
            } else {
                failed += 1;
                println!("FAIL {} :: {}", f.display(), r.name);
                for fail in r.failures {
                    println!("    {}", fail.replace('\n', "\n    "));
                }
            }
        }
    }
    println!("\ncep test: {passed} passed, {failed} failed");
    Ok(i32::from(failed > 0))
}

fn explain(file: &Path, pattern: Option<&str>) -> Result<i32, String> {
    let automata = load_patterns(file)?;
    let mut shown = 0;
    for a in &automata {
        if pattern.is_none_or(|p| p == a.name) {
            print!("{}", dot::to_dot(a));
            shown += 1;
        }
    }
    if shown == 0 {
        return Err(format!(
            "no pattern named `{}` in {}",
            pattern.unwrap_or(""),
            file.display()
        ));
    }
    Ok(0)
}
