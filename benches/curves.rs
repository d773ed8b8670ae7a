//! Cost per event as the load grows (issue 12: "flat cost curves").
//!
//! Three curves, each printed as a table of nanoseconds per event (median
//! of three runs) and the ratio to the curve's first point:
//!
//! - **keys** 1k → 10M: `small next large within 1h` over a stream in which
//!   half the events are small, so about half the keys hold an open run at
//!   any time (strict contiguity: the key's next event ends it, so the runs
//!   per key do not grow with the events per key); the engine's key map
//!   grows with the key count.
//! - **window** 1 min → 24 h: `small then large within W` over 2M card
//!   events (2 % small, 1 % large, 10 ms apart) on 100k keys: longer windows
//!   keep more runs open and expire them later.
//! - **burst** 10 → 10,000: a greedy loop `big{1,} within 1h` over bursts of
//!   B big events of one key, each burst closed by a small event (which
//!   ends the loop and emits the match), 1M events in all.
//!
//! Events are built in batches of 65,536 outside the clock (already
//! decoded, as in `engine/*`); the clock covers `Engine::push_events` (the
//! batch entry point, which fetches the key entries of events a few places
//! on, as the reorder buffer's queue lets the engine do at any lateness
//! above 0) and the final flush.
//! A point runs in its own engine; memory is freed between points.
//!
//! Run: `cargo bench --bench curves` (about two minutes; `CURVES=keys` or
//! `window` or `burst` runs one; `CURVE_KEYS=1000,10000000` and
//! `CURVE_WINDOWS=1m,24h` choose the points).

use std::time::{Duration, Instant};

use cep::compiler::{compile_source, Automaton};
use cep::engine::{Engine, EngineConfig, Output};
use cep::event::{Event, Key, Slots};
use cep::gen::SplitMix64;
use cep::value::Value;

/// How the events of one point are made: event `n` of the stream.
trait Stream {
    fn len(&self) -> usize;
    /// (key number, time ms, amount) of event `n`.
    fn event(&mut self, n: usize) -> (u64, i64, f64);
}

fn main() {
    let which = std::env::var("CURVES").unwrap_or_default();
    let wants = |c: &str| which.is_empty() || which.split(',').any(|w| w == c);
    if wants("keys") {
        keys_curve();
    }
    if wants("window") {
        window_curve();
    }
    if wants("burst") {
        burst_curve();
    }
}

fn pattern(window: &str, contiguity: &str) -> String {
    format!(
        "pattern small_then_large
  from cards key card time ts within {window}
  match small {contiguity} large
  define small as amount < 10, large as amount > 500
end"
    )
}

fn keys_curve() {
    let src = pattern("1h", "next");
    let mut curve = Curve::new("keys: `small next large within 1h`, half the events small");
    let points = std::env::var("CURVE_KEYS").map_or_else(
        |_| vec![1_000u64, 10_000, 100_000, 1_000_000, 10_000_000],
        |k| k.split(',').filter_map(|n| n.parse().ok()).collect(),
    );
    for keys in points {
        let events = (2 * keys as usize).max(2_000_000);
        let ns = median_ns(&src, || Cards {
            keys,
            events,
            small_percent: 50,
            gap_ms: 1,
            rng: SplitMix64::new(7),
        });
        curve.point(&format!("{keys} keys ({events} events)"), ns);
    }
}

/// A card stream: 1 % of the amounts large (600), `small_percent` % small
/// (5), the rest 50; keys drawn at random; `gap_ms` apart.
struct Cards {
    keys: u64,
    events: usize,
    small_percent: u64,
    gap_ms: i64,
    rng: SplitMix64,
}

impl Stream for Cards {
    fn len(&self) -> usize {
        self.events
    }
    fn event(&mut self, n: usize) -> (u64, i64, f64) {
        let key = self.rng.below(self.keys);
        let amount = match self.rng.below(100) {
            0 => 600.0,
            p if p <= self.small_percent => 5.0,
            _ => 50.0,
        };
        (key, n as i64 * self.gap_ms, amount)
    }
}

fn window_curve() {
    let mut curve = Curve::new("window: `small then large within W`, 2M card events on 100k keys");
    let windows = std::env::var("CURVE_WINDOWS").unwrap_or_else(|_| "1m,10m,1h,6h,24h".into());
    for w in windows.split(',') {
        let ns = median_ns(&pattern(w, "then"), || Cards {
            keys: 100_000,
            events: 2_000_000,
            small_percent: 2,
            gap_ms: 10,
            rng: SplitMix64::new(11),
        });
        curve.point(&format!("within {w}"), ns);
    }
}

fn burst_curve() {
    struct Bursts {
        size: usize,
        events: usize,
    }
    impl Stream for Bursts {
        fn len(&self) -> usize {
            self.events
        }
        fn event(&mut self, n: usize) -> (u64, i64, f64) {
            // A burst is `size` big events and one small that closes it;
            // each burst on its own key.
            let burst = (n / (self.size + 1)) as u64;
            let closes = n % (self.size + 1) == self.size;
            (burst, n as i64, if closes { 1.0 } else { 200.0 })
        }
    }
    let src = "pattern burst
  from cards key card time ts within 1h
  match big{1,}
  define big as amount > 100
  emit n = count(big)
end";
    let mut curve = Curve::new("burst: greedy `big{1,} within 1h`, 1M events in bursts of B");
    for size in [10usize, 100, 1_000, 10_000] {
        let ns = median_ns(src, || Bursts {
            size,
            events: 1_000_000,
        });
        curve.point(&format!("bursts of {size}"), ns);
    }
}

/// The reorder buffer's lateness (`CURVE_LATENESS_MS`, default 0).
fn lateness_ms() -> i64 {
    std::env::var("CURVE_LATENESS_MS").map_or(0, |v| v.parse().expect("a number of ms"))
}

/// Median over three runs of the nanoseconds per event.
fn median_ns<S: Stream>(src: &str, stream: impl Fn() -> S) -> f64 {
    let automata = compile_source("curve.cep", src).expect("the curve's pattern compiles");
    let mut runs: Vec<f64> = (0..3).map(|_| run(&automata, stream())).collect();
    runs.sort_by(f64::total_cmp);
    runs[1]
}

/// One pass: events built a batch at a time off the clock, pushed on it.
fn run<S: Stream>(automata: &[Automaton], mut stream: S) -> f64 {
    const BATCH: usize = 1 << 16;
    let amount_slot = automata[0]
        .fields
        .paths
        .iter()
        .position(|p| p == &["amount".to_string()])
        .expect("the pattern reads amount");
    let slots = automata[0].fields.paths.len();
    let config = EngineConfig {
        lateness_ms: lateness_ms(),
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(automata.to_vec(), config);
    let mut out = Output::default();
    let mut names: Vec<String> = Vec::new();
    let mut batch: Vec<Event> = Vec::with_capacity(BATCH);
    let mut clock = Duration::ZERO;
    let mut alerts = 0usize;
    let len = stream.len();
    let mut n = 0;
    while n < len {
        batch.clear();
        for i in n..(n + BATCH).min(len) {
            let (key, time, amount) = stream.event(i);
            names.clear();
            names.push(format!("c{key}"));
            batch.push(Event {
                time,
                key: Key::new(&names[0]),
                slots: Slots::from_fn(slots, |s| {
                    if s == amount_slot {
                        Value::Float(amount)
                    } else {
                        Value::Missing
                    }
                }),
                hash: i as u64,
                raw: None,
            });
        }
        n += batch.len();
        let started = Instant::now();
        engine.push_events(0, &mut batch, &mut out);
        clock += started.elapsed();
        alerts += out.alerts.len();
        out.alerts.clear();
    }
    let started = Instant::now();
    engine.flush(&mut out);
    clock += started.elapsed();
    alerts += out.alerts.len();
    std::hint::black_box(alerts);
    clock.as_nanos() as f64 / len as f64
}

/// A table printed as its points are measured.
struct Curve {
    first: Option<f64>,
}

impl Curve {
    fn new(title: &str) -> Curve {
        println!("\n{title}\n");
        println!("| point | ns per event | events/s | × first point |");
        println!("| --- | --- | --- | --- |");
        Curve { first: None }
    }

    fn point(&mut self, name: &str, ns: f64) {
        let first = *self.first.get_or_insert(ns);
        println!(
            "| {name} | {ns:.0} | {:.2} M | {:.2} |",
            1e3 / ns,
            ns / first
        );
    }
}
