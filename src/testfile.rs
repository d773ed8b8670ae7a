//! Pattern test files: events in, expected alerts out.
//!
//! A test file is TOML and sits beside the patterns it tests
//! (`fraud.cep` ↔ `fraud.test.toml`). Each `[[case]]` lists input events and
//! the alerts they must produce. An expected alert is written compactly as
//! `"match small=1 large=3"`: its kind, and which input events (1-based) each
//! variable bound, optionally prefixed by the pattern name (`"burst: match
//! d=1,2,3"`). A table form adds checks on key, times and output fields.
//!
//! Every case runs under several engine configurations, and all must agree:
//! plain; with a snapshot taken and restored (through JSON) after every
//! event; and, for in-order input, with a large allowed lateness so that
//! every event passes through the reorder buffer. This is the regex-style
//! "one suite, every engine" discipline applied to patterns.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::compiler::{compile_source, Automaton};
use crate::engine::{Alert, AlertKind, Engine, EngineConfig, Output, Record, Snapshot};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// Pattern file, relative to the test file (default: same stem, `.cep`).
    pub patterns: Option<String>,
    /// Default allowed lateness for every case, e.g. `"5m"`.
    pub lateness: Option<String>,
    #[serde(default, rename = "case")]
    pub cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    /// Inline pattern source, instead of the file's patterns.
    pub source: Option<String>,
    /// Only alerts of this pattern are compared.
    pub pattern: Option<String>,
    pub lateness: Option<String>,
    pub events: Events,
    #[serde(default)]
    pub expect: Vec<Expected>,
    /// Number of late events expected (default 0).
    #[serde(default)]
    pub late: u64,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Events {
    /// JSON lines.
    Lines(String),
    Tables(Vec<toml::Table>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Expected {
    Short(String),
    Full(ExpectedAlert),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedAlert {
    /// `"match a=1 b=3"`.
    pub bound: String,
    pub key: Option<toml::Value>,
    pub start: Option<String>,
    pub end: Option<String>,
    #[serde(default)]
    pub fields: toml::Table,
}

/// The outcome of one case.
#[derive(Debug)]
pub struct CaseResult {
    pub file: PathBuf,
    pub name: String,
    /// Empty when the case passed; otherwise a readable diff per problem.
    pub failures: Vec<String>,
}

/// Parses a duration such as `"90s"` (the pattern language's syntax).
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let e = crate::dsl::parse_expr(s).map_err(|d| format!("bad duration {s:?}: {d}"))?;
    match e.kind {
        crate::dsl::ast::ExprKind::Literal(crate::dsl::ast::Literal::Duration(ms)) => Ok(ms),
        crate::dsl::ast::ExprKind::Literal(crate::dsl::ast::Literal::Int(0)) => Ok(0),
        _ => Err(format!("bad duration {s:?}: write e.g. \"5m\"")),
    }
}

/// Finds every `*.test.toml` under `path` (or `path` itself), sorted.
pub fn discover(path: &Path) -> Vec<PathBuf> {
    crate::input::files_ending(path, ".test.toml")
}

/// Runs every test file under `path`: the number of cases run, and one
/// readable message per failing case or unreadable file.
pub fn run_all(path: &Path) -> (usize, Vec<String>) {
    let mut cases = 0;
    let mut failures = Vec::new();
    for f in discover(path) {
        match run_file(&f) {
            Ok(results) => {
                for r in results {
                    cases += 1;
                    if !r.failures.is_empty() {
                        failures.push(format!(
                            "{} :: {}\n    {}",
                            f.display(),
                            r.name,
                            r.failures.join("\n    ").replace('\n', "\n    ")
                        ));
                    }
                }
            }
            Err(e) => failures.push(format!("{}: {e}", f.display())),
        }
    }
    (cases, failures)
}

/// Runs every case of one test file.
pub fn run_file(path: &Path) -> Result<Vec<CaseResult>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let tf = parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let default_patterns = || {
        let name = path.file_name().unwrap().to_string_lossy();
        path.with_file_name(name.trim_end_matches(".test.toml").to_string() + ".cep")
    };
    let pattern_path = match &tf.patterns {
        Some(p) => path.parent().unwrap_or(Path::new(".")).join(p),
        None => default_patterns(),
    };
    let file_automata = if pattern_path.exists() {
        let src = std::fs::read_to_string(&pattern_path)
            .map_err(|e| format!("{}: {e}", pattern_path.display()))?;
        Some(compile_source(&pattern_path.display().to_string(), &src).map_err(|d| d.render())?)
    } else {
        None
    };
    run_parsed(path, &tf, file_automata.as_deref())
}

/// Reads a test file's text.
pub fn parse(text: &str) -> Result<TestFile, String> {
    toml::from_str(text).map_err(|e| e.to_string())
}

/// Runs every case of a parsed test file (`path` names it in results);
/// `file_automata` are the patterns of the file it tests, if any.
pub fn run_parsed(
    path: &Path,
    tf: &TestFile,
    file_automata: Option<&[Automaton]>,
) -> Result<Vec<CaseResult>, String> {
    let default_lateness = tf
        .lateness
        .as_deref()
        .map(parse_duration)
        .transpose()?
        .unwrap_or(0);
    let mut results = Vec::new();
    for case in &tf.cases {
        let failures = match run_case(case, file_automata, default_lateness) {
            Ok(f) => f,
            Err(e) => vec![e],
        };
        results.push(CaseResult {
            file: path.to_path_buf(),
            name: case.name.clone(),
            failures,
        });
    }
    Ok(results)
}

fn run_case(
    case: &Case,
    file: Option<&[Automaton]>,
    default_lateness: i64,
) -> Result<Vec<String>, String> {
    let automata: Vec<Automaton> = match (&case.source, file) {
        (Some(src), _) => {
            compile_source(&format!("case {:?}", case.name), src).map_err(|d| d.render())?
        }
        (None, Some(f)) => f.to_vec(),
        (None, None) => return Err("no patterns: give `source` or a pattern file".into()),
    };
    if let Some(p) = &case.pattern {
        if !automata.iter().any(|a| &a.name == p) {
            return Err(format!("no pattern named `{p}`"));
        }
    }
    let lateness = case
        .lateness
        .as_deref()
        .map(parse_duration)
        .transpose()?
        .unwrap_or(default_lateness);
    let events = case_events(&case.events)?;
    let prefix = case.pattern.is_none() && automata.len() > 1;

    let plain = EngineConfig {
        lateness_ms: lateness,
        ..EngineConfig::default()
    };
    let (alerts, late) = run_engine(&automata, &events, plain, false);
    let mut failures = Vec::new();
    let relevant = |alerts: Vec<Alert>| -> Vec<Alert> {
        alerts
            .into_iter()
            .filter(|a| case.pattern.as_ref().is_none_or(|p| &a.pattern == p))
            .collect()
    };
    let alerts = relevant(alerts);
    if late != case.late {
        failures.push(format!("expected {} late event(s), got {late}", case.late));
    }
    compare(case, &alerts, prefix, &mut failures);

    // The same case under the other configurations must give the same alerts.
    let want = canonical(&alerts);
    let (restored, _) = run_engine(&automata, &events, plain, true);
    if canonical(&relevant(restored)) != want {
        failures.push("snapshot/restore after every event changed the alerts".into());
    }
    let (driven, driven_late) = run_driven(&automata, &events, lateness);
    if canonical(&relevant(driven)) != want || driven_late != late {
        failures.push(
            "driven as the service drives it (external watermark, JSON text) changed the alerts"
                .into(),
        );
    }
    if late == 0 && lateness == 0 {
        let buffered = EngineConfig {
            lateness_ms: 86_400_000,
            ..plain
        };
        let (b, _) = run_engine(&automata, &events, buffered, false);
        if canonical(&relevant(b)) != want {
            failures.push("a large allowed lateness (buffered input) changed the alerts".into());
        }
    }
    Ok(failures)
}

fn canonical(alerts: &[Alert]) -> Vec<String> {
    let mut v: Vec<String> = alerts
        .iter()
        .map(|a| serde_json::to_string(a).unwrap())
        .collect();
    v.sort();
    v
}

/// Input events of a case, as JSON documents.
pub fn case_events(events: &Events) -> Result<Vec<serde_json::Value>, String> {
    match events {
        Events::Lines(s) => s
            .lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(n, l)| serde_json::from_str(l).map_err(|e| format!("event {}: {e}", n + 1)))
            .collect(),
        Events::Tables(t) => t
            .iter()
            .map(|t| serde_json::to_value(t).map_err(|e| e.to_string()))
            .collect(),
    }
}

/// Runs events through a fresh engine; the event hash is its 1-based index,
/// so alerts say which input events they bound.
fn run_engine(
    automata: &[Automaton],
    events: &[serde_json::Value],
    config: EngineConfig,
    restore_each: bool,
) -> (Vec<Alert>, u64) {
    let mut engine = Engine::new(automata.to_vec(), config);
    let mut out = Output::default();
    for (n, doc) in events.iter().enumerate() {
        engine.push(None, &Arc::new(doc.clone()), n as u64 + 1, &mut out);
        if restore_each {
            let json = serde_json::to_string(&engine.snapshot()).expect("snapshot serialises");
            let snap: Snapshot = serde_json::from_str(&json).expect("snapshot deserialises");
            engine = Engine::new(automata.to_vec(), config);
            let fresh = engine.restore(snap);
            assert!(fresh.is_empty(), "same patterns restore");
        }
    }
    engine.flush(&mut out);
    (out.alerts, out.late.len() as u64)
}

/// Runs events as `cep serve` does for one partition: JSON text through
/// [`Engine::push_record`], lateness judged against the partition's own
/// watermark, and the engine's watermark driven from outside, one
/// millisecond behind it.
fn run_driven(
    automata: &[Automaton],
    events: &[serde_json::Value],
    lateness: i64,
) -> (Vec<Alert>, u64) {
    let config = EngineConfig {
        external_watermark: true,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(automata.to_vec(), config);
    let mut streams: Vec<&str> = automata.iter().map(|a| a.stream.as_str()).collect();
    streams.sort();
    streams.dedup();
    let mut out = Output::default();
    let mut newest = i64::MIN;
    for (n, doc) in events.iter().enumerate() {
        let json = serde_json::to_vec(doc).expect("a document serialises");
        let rec = Record {
            json: &json,
            hash: n as u64 + 1,
            order: Some(n as u64),
            late_before: newest.saturating_sub(lateness),
            ..Record::default()
        };
        for s in &streams {
            if let Ok(Some(t)) = engine.push_record(s, &rec, &mut out) {
                newest = newest.max(t);
            }
        }
        for s in &streams {
            let wm = newest.saturating_sub(lateness).saturating_sub(1);
            engine.advance_watermark(s, wm, &mut out);
        }
    }
    engine.flush(&mut out);
    (out.alerts, out.late.len() as u64)
}

/// `[pattern: ]kind var=i,j ...` of an alert.
pub fn shorthand(a: &Alert, with_pattern: bool) -> String {
    let mut by_var: Vec<(String, Vec<u64>)> = Vec::new();
    for (var, idx) in &a.bound {
        match by_var.iter_mut().find(|(v, _)| v == var) {
            Some((_, list)) => list.push(*idx),
            None => by_var.push((var.clone(), vec![*idx])),
        }
    }
    let kind = match a.kind {
        AlertKind::Match => "match",
        AlertKind::Timeout => "timeout",
    };
    let mut s = if with_pattern {
        format!("{}: {kind}", a.pattern)
    } else {
        kind.to_string()
    };
    for (var, idx) in by_var {
        let list: Vec<String> = idx.iter().map(|i| i.to_string()).collect();
        s.push_str(&format!(" {var}={}", list.join(",")));
    }
    s
}

fn normalize(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn compare(case: &Case, alerts: &[Alert], prefix: bool, failures: &mut Vec<String>) {
    let mut actual: Vec<(String, &Alert)> =
        alerts.iter().map(|a| (shorthand(a, prefix), a)).collect();
    actual.sort_by(|x, y| x.0.cmp(&y.0));
    let mut expected: Vec<(String, Option<&ExpectedAlert>)> = case
        .expect
        .iter()
        .map(|e| match e {
            Expected::Short(s) => (normalize(s), None),
            Expected::Full(f) => (normalize(&f.bound), Some(f)),
        })
        .collect();
    expected.sort_by(|x, y| x.0.cmp(&y.0));

    let mut missing = Vec::new();
    let mut remaining: Vec<Option<(String, &Alert)>> = actual.into_iter().map(Some).collect();
    for (want, detail) in &expected {
        let found = remaining
            .iter_mut()
            .find(|a| a.as_ref().is_some_and(|(s, _)| s == want))
            .and_then(Option::take);
        match found {
            None => missing.push(want.clone()),
            Some((_, alert)) => {
                if let Some(d) = detail {
                    check_detail(want, d, alert, failures);
                }
            }
        }
    }
    let unexpected: Vec<String> = remaining.into_iter().flatten().map(|(s, _)| s).collect();
    if !missing.is_empty() || !unexpected.is_empty() {
        let mut diff =
            String::from("alerts differ (- expected, not produced; + produced, not expected):");
        for m in &missing {
            diff.push_str(&format!("\n    - {m}"));
        }
        for u in &unexpected {
            diff.push_str(&format!("\n    + {u}"));
        }
        failures.push(diff);
    }
}

fn check_detail(want: &str, d: &ExpectedAlert, a: &Alert, failures: &mut Vec<String>) {
    let toml_json = |v: &toml::Value| serde_json::to_value(v).unwrap_or_default();
    if let Some(k) = &d.key {
        if toml_json(k) != a.key {
            failures.push(format!(
                "{want}: key is {}, expected {}",
                a.key,
                toml_json(k)
            ));
        }
    }
    if let Some(s) = &d.start {
        if *s != a.start {
            failures.push(format!("{want}: start is {}, expected {s}", a.start));
        }
    }
    if let Some(e) = &d.end {
        if *e != a.end {
            failures.push(format!("{want}: end is {}, expected {e}", a.end));
        }
    }
    let fields: BTreeMap<&String, &toml::Value> = d.fields.iter().collect();
    for (name, v) in fields {
        let want_v = toml_json(v);
        match a.fields.get(name.as_str()) {
            Some(got) if json_eq(got, &want_v) => {}
            Some(got) => failures.push(format!(
                "{want}: field `{name}` is {got}, expected {want_v}"
            )),
            None => failures.push(format!("{want}: no field `{name}` in the alert")),
        }
    }
}

fn json_eq(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(1.0),
        _ => a == b,
    }
}
