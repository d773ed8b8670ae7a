//! Per-key history conditions against a brute-force reference.
//!
//! Generated card streams go through the real engine with a set of
//! single-step patterns (`match x`: one alert per event whose condition
//! holds) that ask about the key's own past: `count() / count(f) / sum /
//! avg / min / max / stddev (f) over D` (with and without `with at least N
//! events`), `f seen in D`, `f not seen in D` and `time since previous`.
//! Some patterns hold at every event and emit every aggregate over one
//! window (1 s, 37 s, 10 m, 1 h: bucket widths 31 ms, 1156 ms, 18.75 s,
//! 112.5 s) or the time since the previous event, so that the values
//! themselves are compared at every event; the others are conditions of
//! the kind fraud rules write. The test computes, for every (pattern,
//! event), whether it must alert and what it must emit, by scanning the
//! key's earlier events one by one, and asserts that the engine's alerts
//! are exactly those: same (pattern, key, event time, event), same emitted
//! values (integers exactly and with their type, floats within about 1e-9
//! of their magnitude).
//!
//! The reference, for an event of key k at time t:
//!
//! - **History** is every earlier event of k in processing order (event
//!   time, ties in arrival order), the current event excluded; events of
//!   the same time that arrived before it are in.
//! - **`over D`** reads the history events e with
//!   `e.t.div_euclid(w) >= t.div_euclid(w) - 32`, `w = max(1, D / 32)`
//!   (integer ms): the current bucket and the 32 before it. `count()`
//!   counts them all; the other functions read only those whose field is a
//!   number (null, missing and string values are skipped). `sum` is 0 with
//!   no numbers, an integer when every number was; `avg`, `min`, `max`,
//!   `stddev` (population) are null with no numbers; `min`/`max` are
//!   integers when every number was. `with at least N events` makes the
//!   answer null when the window (same bucket rule) holds fewer than N
//!   events, numeric or not.
//! - **`f seen in D`** is exact: some history event at time `>= t - D` had
//!   an equal value (numbers by value, `1` equals `1.0`; strings by text;
//!   other types distinct); null when the current value is null or
//!   missing. `with at least N events` counts by the bucket rule above.
//! - **`time since previous`** is t minus the time of k's newest history
//!   event; null without one or when it is more than H back (H: the
//!   `history` clause, else the pattern's longest window).
//! - Null compares false; arithmetic with null is null.
//!
//! Floats the reference sums in another order than the engine (`sum` and
//! `avg` over non-integers, `stddev`) are compared within a tolerance; a
//! condition on such a value whose two sides are closer than that
//! tolerance is left out of the comparison (counted, and checked to be
//! rare).
//!
//! Streams: [`cep::gen::CardGen`], dense and sparse, with times rounded
//! down to a quantum in some cases (equal times, events exactly on bucket
//! and window edges), amounts either whole dollars (exact integer sums) or
//! cents mixed with integers, nulls, strings and missing values, some
//! countries null or missing, and a `code` field taking values such as `1`,
//! `1.0`, `"1"`, `true` to exercise `seen in` equality.
//!
//! The reference is only as good as its sensitivity: a second test shows
//! that each small change of its rules (window one bucket longer or
//! shorter, bucket width rounded up, current event included, equal-time
//! events excluded, `seen in` edge exclusive, `time since previous` null at
//! the horizon, `with at least` counting only numbers) changes the expected
//! alerts on these streams, so an engine with any of those mistakes fails
//! the first test. `percentile` is approximate and not compared.
//!
//! Windows under 32 ms (buckets of 1 ms, so the window reads 32 ms back)
//! are left to an ignored test: the engine drops a key's history before
//! such a window stops reading it (see
//! [`tiny_windows_agree_with_the_reference`]).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;

use cep::compiler::compile_source;
use cep::engine::{AlertKind, Engine, EngineConfig, Output};
use cep::gen::{ts_of, CardGen, Fraud, SplitMix64};
use serde_json::{json, Value};

const MS20: i64 = 20;
const S1: i64 = 1_000;
const S20: i64 = 20_000;
const S37: i64 = 37_000;
const S75: i64 = 75_000;
const M2: i64 = 120_000;
const M5: i64 = 300_000;
const M10: i64 = 600_000;
const H1: i64 = 3_600_000;

/// Buckets a window reads before the current one.
const BUCKETS: i64 = 32;

// ---------------------------------------------------------------------------
// Streams

struct Case {
    seed: u64,
    events: usize,
    cards: usize,
    gap_ms: f64,
    /// Times are rounded down to a multiple of this.
    quantum: i64,
    /// Whole-dollar integer amounts only (else cents, with odd values).
    ints: bool,
}

const CASES: [Case; 5] = [
    // Dense: the 1 s window holds several events (and the 20 ms one of
    // the ignored test some).
    Case {
        seed: 1,
        events: 3_000,
        cards: 30,
        gap_ms: 40.0,
        quantum: 1,
        ints: false,
    },
    // Times on the 37 s window's bucket grid (37 000 / 32 = 1156).
    Case {
        seed: 2,
        events: 3_000,
        cards: 60,
        gap_ms: 300.0,
        quantum: 1_156,
        ints: true,
    },
    // Whole seconds, a card every 20 s or so: equal times within a key,
    // gaps of exactly 37 s.
    Case {
        seed: 3,
        events: 3_000,
        cards: 40,
        gap_ms: 500.0,
        quantum: 1_000,
        ints: false,
    },
    // Times on the 10 m window's bucket grid (18 750): many equal times.
    Case {
        seed: 4,
        events: 3_000,
        cards: 200,
        gap_ms: 3_000.0,
        quantum: 18_750,
        ints: true,
    },
    // Sparse: over four hours, the hour window cuts.
    Case {
        seed: 5,
        events: 2_000,
        cards: 40,
        gap_ms: 7_500.0,
        quantum: 1,
        ints: false,
    },
];

struct Ev {
    key: String,
    t: i64,
    doc: Value,
    /// The fields history reads, decoded once (see [`F`]).
    vals: [R; 4],
}

/// A field the patterns read from the key's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum F {
    Amount,
    Country,
    Code,
    Merchant,
}

const AMOUNT: Option<F> = Some(F::Amount);

impl Ev {
    fn new(key: String, t: i64, doc: Value) -> Ev {
        let vals = ["amount", "country", "code", "merchant"].map(|f| R::of(doc.get(f)));
        Ev { key, t, doc, vals }
    }

    fn get(&self, f: F) -> &R {
        &self.vals[f as usize]
    }
}

fn stream(c: &Case) -> Vec<Ev> {
    let docs = CardGen {
        events: c.events,
        cards: c.cards,
        seed: c.seed,
        mean_gap_ms: c.gap_ms,
        p_small: 0.1,
        p_large: 0.05,
        p_mid: 0.2,
        p_boundary: 0.03,
        p_abroad: 0.3,
        // Planted sequences: short bursts of one card, so windows fill
        // and coarse times tie within a key.
        plant: Fraud::ALL.to_vec(),
        plant_rate: 0.03,
        ..CardGen::default()
    }
    .generate();
    let codes = [
        json!(1),
        json!(1.0),
        json!(2),
        json!(2.5),
        json!("1"),
        json!("2.5"),
        json!(true),
        json!(false),
        Value::Null,
    ];
    let mut rng = SplitMix64::new(c.seed ^ 0x5eed_0f41_570e);
    docs.into_iter()
        .map(|mut d| {
            let t = ts_of(&d);
            let t = t - t.rem_euclid(c.quantum);
            d["ts"] = t.into();
            let amount = d["amount"].as_f64().expect("an amount");
            let obj = d.as_object_mut().expect("an object");
            if c.ints {
                obj.insert("amount".into(), (amount.round() as i64).into());
            } else {
                let r = rng.unit();
                if r < 0.04 {
                    obj.insert("amount".into(), Value::Null);
                } else if r < 0.07 {
                    obj.remove("amount");
                } else if r < 0.10 {
                    obj.insert("amount".into(), format!("{amount:.2}").into());
                } else if r < 0.25 {
                    obj.insert("amount".into(), (amount.round() as i64).into());
                }
            }
            let r = rng.unit();
            if r < 0.03 {
                obj.insert("country".into(), Value::Null);
            } else if r < 0.06 {
                obj.remove("country");
            }
            let k = rng.below(codes.len() as u64 + 1) as usize;
            if let Some(code) = codes.get(k) {
                obj.insert("code".into(), code.clone());
            }
            let key = d["card"]["id"].as_str().expect("a card id").to_string();
            Ev::new(key, t, d)
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Reference values

/// A value as the reference computes it. `Approx` is a float the reference
/// computes in another order than the engine (compared with a tolerance).
#[derive(Clone, Debug, PartialEq)]
enum R {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Approx(f64),
    Str(String),
}

impl R {
    fn of(v: Option<&Value>) -> R {
        match v {
            None | Some(Value::Null) => R::Null,
            Some(Value::Bool(b)) => R::Bool(*b),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(i) => R::Int(i),
                None => R::Float(n.as_f64().expect("a number")),
            },
            Some(Value::String(s)) => R::Str(s.clone()),
            Some(other) => R::Str(other.to_string()),
        }
    }

    fn num(&self) -> Option<f64> {
        match self {
            R::Int(i) => Some(*i as f64),
            R::Float(x) | R::Approx(x) => Some(*x),
            _ => None,
        }
    }

    fn approx(&self) -> bool {
        matches!(self, R::Approx(_))
    }

    /// Whether two reference values are the same output.
    fn agrees(&self, other: &R) -> bool {
        match (self, other) {
            (R::Float(x) | R::Approx(x), R::Float(y) | R::Approx(y)) => close(*x, *y),
            (a, b) => a == b,
        }
    }

    /// Whether an emitted value is this one.
    fn matches(&self, got: &Value) -> bool {
        match (self, got) {
            (R::Null, Value::Null) => true,
            (R::Int(i), Value::Number(n)) => !n.is_f64() && n.as_i64() == Some(*i),
            (R::Float(x) | R::Approx(x), Value::Number(n)) => {
                n.is_f64() && close(*x, n.as_f64().expect("a number"))
            }
            (R::Bool(b), Value::Bool(g)) => b == g,
            (R::Str(s), Value::String(g)) => s == g,
            _ => false,
        }
    }
}

fn close(x: f64, y: f64) -> bool {
    (x - y).abs() <= 1e-9 * (1.0 + x.abs() + y.abs())
}

/// A condition's outcome; `Unsure` when it compares a value the reference
/// computes in another order and the two sides are within the tolerance.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Tri {
    No,
    Yes,
    Unsure,
}

#[derive(Clone, Copy)]
enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
}

fn cmp(a: &R, op: Cmp, b: &R) -> Tri {
    let ord = match (a, b) {
        (R::Int(x), R::Int(y)) => x.cmp(y),
        _ => {
            let (Some(x), Some(y)) = (a.num(), b.num()) else {
                return Tri::No;
            };
            if (a.approx() || b.approx()) && close(x, y) {
                return Tri::Unsure;
            }
            x.partial_cmp(&y).expect("finite numbers")
        }
    };
    let holds = match op {
        Cmp::Lt => ord.is_lt(),
        Cmp::Le => ord.is_le(),
        Cmp::Gt => ord.is_gt(),
        Cmp::Ge => ord.is_ge(),
    };
    if holds {
        Tri::Yes
    } else {
        Tri::No
    }
}

fn and(a: Tri, b: Tri) -> Tri {
    match (a, b) {
        (Tri::No, _) | (_, Tri::No) => Tri::No,
        (Tri::Yes, Tri::Yes) => Tri::Yes,
        _ => Tri::Unsure,
    }
}

fn truth(v: &R) -> Tri {
    if *v == R::Bool(true) {
        Tri::Yes
    } else {
        Tri::No
    }
}

fn arith(a: &R, b: &R, int: fn(i64, i64) -> i64, float: fn(f64, f64) -> f64) -> R {
    if let (R::Int(x), R::Int(y)) = (a, b) {
        return R::Int(int(*x, *y));
    }
    match (a.num(), b.num()) {
        (Some(x), Some(y)) if a.approx() || b.approx() => R::Approx(float(x, y)),
        (Some(x), Some(y)) => R::Float(float(x, y)),
        _ => R::Null,
    }
}

fn add(a: &R, b: &R) -> R {
    arith(a, b, i64::wrapping_add, |x, y| x + y)
}

fn mul(a: &R, b: &R) -> R {
    arith(a, b, i64::wrapping_mul, |x, y| x * y)
}

/// `seen in` equality: numbers by value, strings by text, booleans; other
/// pairs (and null) never.
fn same(a: &R, b: &R) -> bool {
    match (a, b) {
        (R::Str(x), R::Str(y)) => x == y,
        (R::Bool(x), R::Bool(y)) => x == y,
        (R::Int(x), R::Int(y)) => x == y,
        _ => match (a.num(), b.num()) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        },
    }
}

// ---------------------------------------------------------------------------
// The reference history

/// The rules the reference follows; `Rules::default()` is the language's.
/// The other settings are deliberate mistakes, to show that the streams
/// tell them apart (see [`reference_is_sensitive_to_each_rule`]).
#[derive(Clone, Copy, Debug, Default)]
struct Rules {
    /// Buckets read before the current one, beyond 32.
    extra_buckets: i64,
    /// Bucket width `ceil(D / 32)` instead of `D / 32`.
    width_ceil: bool,
    /// The current event is in its own history.
    include_current: bool,
    /// Earlier events of the same time are not in the history.
    drop_ties: bool,
    /// `seen in D` wants a time `> t - D`.
    seen_strict: bool,
    /// `time since previous` is null when the gap equals the horizon.
    since_null_at_horizon: bool,
    /// `with at least` counts only events with a number in the field.
    at_least_numeric: bool,
}

#[derive(Clone, Copy)]
enum Agg {
    Count,
    Sum,
    Avg,
    Min,
    Max,
    Stddev,
}

/// The history of one event's key as of that event.
struct Past<'a> {
    evs: &'a [Ev],
    /// Indices of the history events, oldest first.
    prior: &'a [usize],
    cur: &'a Ev,
    rules: Rules,
    /// Windows already read.
    cache: RefCell<Vec<(WindowOf, Rc<Stats>)>>,
}

/// A field (`None`: events only) over a window.
type WindowOf = (Option<F>, i64);

/// What a window holds: all events, and the numbers of a field.
struct Stats {
    events: u64,
    /// The numbers, in order.
    nums: Vec<f64>,
    all_int: bool,
    int_sum: i64,
    sum: f64,
    min: f64,
    max: f64,
    /// Sum of squared deviations from the mean (two passes).
    m2: f64,
}

impl Past<'_> {
    fn field(&self, f: F) -> R {
        self.cur.get(f).clone()
    }

    fn width(&self, d: i64) -> i64 {
        let w = if self.rules.width_ceil {
            (d + BUCKETS - 1) / BUCKETS
        } else {
            d / BUCKETS
        };
        w.max(1)
    }

    /// The history events an `over d` reads (the history is in time
    /// order, so they are a suffix of it).
    fn window(&self, d: i64) -> impl Iterator<Item = &Ev> + '_ {
        let w = self.width(d);
        let from = self.cur.t.div_euclid(w) - BUCKETS - self.rules.extra_buckets;
        let first = self
            .prior
            .partition_point(|&i| self.evs[i].t.div_euclid(w) < from);
        self.prior[first..].iter().map(|&i| &self.evs[i])
    }

    fn stats(&self, field: Option<F>, d: i64) -> Rc<Stats> {
        let mut cache = self.cache.borrow_mut();
        if let Some((_, s)) = cache.iter().find(|(k, _)| *k == (field, d)) {
            return s.clone();
        }
        let s = Rc::new(self.read(field, d));
        cache.push(((field, d), s.clone()));
        s
    }

    /// Reads the window: every event, and the numbers in `field`.
    fn read(&self, field: Option<F>, d: i64) -> Stats {
        let mut s = Stats {
            events: 0,
            nums: Vec::new(),
            all_int: true,
            int_sum: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            m2: 0.0,
        };
        for e in self.window(d) {
            s.events += 1;
            let Some(f) = field else { continue };
            match *e.get(f) {
                R::Int(i) => {
                    s.nums.push(i as f64);
                    s.int_sum += i;
                }
                R::Float(x) => {
                    s.nums.push(x);
                    s.all_int = false;
                }
                _ => {}
            }
        }
        s.sum = s.nums.iter().sum();
        let mean = s.sum / s.nums.len() as f64;
        for &x in &s.nums {
            s.min = s.min.min(x);
            s.max = s.max.max(x);
            s.m2 += (x - mean) * (x - mean);
        }
        s
    }

    /// Fewer than `n` events in the window: the answer is null.
    fn too_few(&self, field: Option<F>, d: i64, at_least: Option<u64>) -> bool {
        let Some(n) = at_least else { return false };
        let s = self.stats(field, d);
        let have = if self.rules.at_least_numeric && field.is_some() {
            s.nums.len() as u64
        } else {
            s.events
        };
        have < n
    }

    /// `func(field) over d [with at least n events]`.
    fn agg(&self, func: Agg, field: Option<F>, d: i64, at_least: Option<u64>) -> R {
        if self.too_few(field, d, at_least) {
            return R::Null;
        }
        let s = self.stats(field, d);
        let n = s.nums.len();
        let extreme = |x: f64| {
            if s.all_int {
                R::Int(x as i64)
            } else {
                R::Float(x)
            }
        };
        match func {
            Agg::Count if field.is_none() => R::Int(s.events as i64),
            Agg::Count => R::Int(n as i64),
            Agg::Sum if n == 0 => R::Int(0),
            Agg::Sum if s.all_int => R::Int(s.int_sum),
            Agg::Sum => R::Approx(s.sum),
            _ if n == 0 => R::Null,
            Agg::Avg if s.all_int => R::Float(s.int_sum as f64 / n as f64),
            Agg::Avg => R::Approx(s.sum / n as f64),
            Agg::Min => extreme(s.min),
            Agg::Max => extreme(s.max),
            Agg::Stddev => R::Approx((s.m2 / n as f64).sqrt()),
        }
    }

    /// `field [not] seen in d [with at least n events]`.
    fn seen(&self, field: F, d: i64, negated: bool, at_least: Option<u64>) -> R {
        let v = self.cur.get(field);
        if *v == R::Null || self.too_few(None, d, at_least) {
            return R::Null;
        }
        let cutoff = self.cur.t - d;
        let first = self.prior.partition_point(|&i| {
            let t = self.evs[i].t;
            if self.rules.seen_strict {
                t <= cutoff
            } else {
                t < cutoff
            }
        });
        let hit = self.prior[first..]
            .iter()
            .any(|&i| same(self.evs[i].get(field), v));
        R::Bool(hit != negated)
    }

    /// `time since previous`, looking back `horizon`.
    fn since(&self, horizon: i64) -> R {
        let Some(&prev) = self.prior.last() else {
            return R::Null;
        };
        let gap = self.cur.t - self.evs[prev].t;
        if gap > horizon || (self.rules.since_null_at_horizon && gap == horizon) {
            R::Null
        } else {
            R::Int(gap)
        }
    }
}

// ---------------------------------------------------------------------------
// Patterns, each with its reference

type Outcome = (Tri, Vec<(&'static str, R)>);

struct Pat {
    name: String,
    src: String,
    eval: Box<dyn Fn(&Past) -> Outcome>,
}

/// A single-step pattern over cards: `header` goes after `from`, `body`
/// after `match x`.
fn pat(name: &str, header: &str, body: &str, eval: impl Fn(&Past) -> Outcome + 'static) -> Pat {
    Pat {
        name: name.to_string(),
        src: format!(
            "pattern {name}\n  from cards key card.id time ts\n{header}  match x\n{body}\nend\n"
        ),
        eval: Box::new(eval),
    }
}

/// Every aggregate over `d` (written `text`) at every event.
fn all_aggregates(text: &str, d: i64) -> Pat {
    use Agg::*;
    let body = format!(
        "  define x as count() over {text} >= 0\n  emit n = count() over {text}, \
         nf = count(amount) over {text}, total = sum(amount) over {text}, \
         mean = avg(amount) over {text}, lo = min(amount) over {text}, \
         hi = max(amount) over {text}, sd = stddev(amount) over {text}"
    );
    pat(&format!("all_{text}"), "", &body, move |p| {
        let fields = vec![
            ("n", p.agg(Count, None, d, None)),
            ("nf", p.agg(Count, AMOUNT, d, None)),
            ("total", p.agg(Sum, AMOUNT, d, None)),
            ("mean", p.agg(Avg, AMOUNT, d, None)),
            ("lo", p.agg(Min, AMOUNT, d, None)),
            ("hi", p.agg(Max, AMOUNT, d, None)),
            ("sd", p.agg(Stddev, AMOUNT, d, None)),
        ];
        (cmp(&fields[0].1, Cmp::Ge, &R::Int(0)), fields)
    })
}

/// Patterns whose condition holds at every event (their outputs are the
/// point), named `all_*` and `gap_*`.
fn every_event(p: &Pat) -> bool {
    p.name.starts_with("all_") || p.name.starts_with("gap_")
}

fn patterns() -> Vec<Pat> {
    use Agg::*;
    // Windows whose bucket widths are 31 ms, 1156 ms (not dividing 37 s),
    // 18.75 s and 112.5 s. (Windows under 32 ms: see
    // `tiny_windows_agree_with_the_reference`.)
    let mut all: Vec<Pat> = [("1s", S1), ("37s", S37), ("10m", M10), ("1h", H1)]
        .into_iter()
        .map(|(text, d)| all_aggregates(text, d))
        .collect();
    all.push(pat(
        "big_for_card",
        "",
        "  define x as amount > 3 * avg(amount) over 10m with at least 3 events\n  \
         emit mean = avg(amount) over 10m, n = count() over 10m",
        |p| {
            let avg = p.agg(Avg, AMOUNT, M10, Some(3));
            let cond = cmp(&p.field(F::Amount), Cmp::Gt, &mul(&R::Int(3), &avg));
            let fields = vec![
                ("mean", p.agg(Avg, AMOUNT, M10, None)),
                ("n", p.agg(Count, None, M10, None)),
            ];
            (cond, fields)
        },
    ));
    all.push(pat(
        "above_max",
        "",
        "  define x as amount > max(amount) over 37s\n  emit hi = max(amount) over 37s",
        |p| {
            let hi = p.agg(Max, AMOUNT, S37, None);
            (cmp(&p.field(F::Amount), Cmp::Gt, &hi), vec![("hi", hi)])
        },
    ));
    all.push(pat(
        "new_low",
        "",
        "  define x as amount < min(amount) over 10m with at least 2 events\n  \
         emit lo = min(amount) over 10m with at least 2 events",
        |p| {
            let lo = p.agg(Min, AMOUNT, M10, Some(2));
            (cmp(&p.field(F::Amount), Cmp::Lt, &lo), vec![("lo", lo)])
        },
    ));
    all.push(pat(
        "burst_sum",
        "",
        "  define x as sum(amount) over 1s + amount >= 150\n  \
         emit total = sum(amount) over 1s, nf = count(amount) over 1s",
        |p| {
            let total = p.agg(Sum, AMOUNT, S1, None);
            let cond = cmp(&add(&total, &p.field(F::Amount)), Cmp::Ge, &R::Int(150));
            (
                cond,
                vec![("total", total), ("nf", p.agg(Count, AMOUNT, S1, None))],
            )
        },
    ));
    all.push(pat(
        "busy",
        "",
        "  define x as sum(amount) over 37s with at least 4 events > 300\n  \
         emit total = sum(amount) over 37s with at least 4 events, n = count() over 37s",
        |p| {
            let total = p.agg(Sum, AMOUNT, S37, Some(4));
            let cond = cmp(&total, Cmp::Gt, &R::Int(300));
            (
                cond,
                vec![("total", total), ("n", p.agg(Count, None, S37, None))],
            )
        },
    ));
    all.push(pat(
        "outlier",
        "",
        "  define x as amount > avg(amount) over 1h + 2 * stddev(amount) over 1h with at least 5 events\n  \
         emit sd = stddev(amount) over 1h with at least 5 events, mean = avg(amount) over 1h",
        |p| {
            let sd = p.agg(Stddev, AMOUNT, H1, Some(5));
            let mean = p.agg(Avg, AMOUNT, H1, None);
            let bar = add(&mean, &mul(&R::Int(2), &sd));
            (cmp(&p.field(F::Amount), Cmp::Gt, &bar), vec![("sd", sd), ("mean", mean)])
        },
    ));
    all.push(pat(
        "unpriced",
        "",
        "  define x as count(amount) over 37s + 1 <= count() over 37s\n  \
         emit n = count() over 37s, nf = count(amount) over 37s",
        |p| {
            let (n, nf) = (
                p.agg(Count, None, S37, None),
                p.agg(Count, AMOUNT, S37, None),
            );
            let cond = cmp(&add(&nf, &R::Int(1)), Cmp::Le, &n);
            (cond, vec![("n", n), ("nf", nf)])
        },
    ));
    all.push(pat(
        "new_country",
        "",
        "  define x as country not seen in 5m with at least 2 events\n  emit n = count() over 5m",
        |p| {
            let cond = truth(&p.seen(F::Country, M5, true, Some(2)));
            (cond, vec![("n", p.agg(Count, None, M5, None))])
        },
    ));
    all.push(pat(
        "known_country",
        "",
        "  define x as country seen in 37s",
        |p| (truth(&p.seen(F::Country, S37, false, None)), vec![]),
    ));
    all.push(pat(
        "code_seen",
        "",
        "  define x as code seen in 10m",
        |p| (truth(&p.seen(F::Code, M10, false, None)), vec![]),
    ));
    all.push(pat(
        "code_not_seen",
        "",
        "  define x as code not seen in 1s",
        |p| (truth(&p.seen(F::Code, S1, true, None)), vec![]),
    ));
    all.push(pat(
        "new_merchant",
        "",
        "  define x as merchant not seen in 1h with at least 3 events",
        |p| (truth(&p.seen(F::Merchant, H1, true, Some(3))), vec![]),
    ));
    all.push(pat(
        "quick_succession",
        "  history 2m\n",
        "  define x as time since previous < 20s\n  emit gap = time since previous",
        |p| {
            let gap = p.since(M2);
            (cmp(&gap, Cmp::Lt, &R::Int(S20)), vec![("gap", gap)])
        },
    ));
    // The gap at every event; 75 s is 4 steps of case 4's 18.75 s time
    // grid, so gaps of exactly the horizon occur.
    all.push(pat(
        "gap_75s",
        "  history 75s\n",
        "  define x as count() over 1s >= 0\n  emit gap = time since previous",
        |p| {
            let cond = cmp(&p.agg(Count, None, S1, None), Cmp::Ge, &R::Int(0));
            (cond, vec![("gap", p.since(S75))])
        },
    ));
    // No `history` clause: the horizon is the longest window, 37 s.
    all.push(pat(
        "since_default",
        "",
        "  define x as time since previous >= 0 and count() over 37s >= 0\n  \
         emit gap = time since previous",
        |p| {
            let gap = p.since(S37);
            let cond = and(
                cmp(&gap, Cmp::Ge, &R::Int(0)),
                cmp(&p.agg(Count, None, S37, None), Cmp::Ge, &R::Int(0)),
            );
            (cond, vec![("gap", gap)])
        },
    ));
    all
}

// ---------------------------------------------------------------------------
// Expected and actual alerts

enum Expect {
    Alert(Vec<(&'static str, R)>),
    /// Too close to call: not compared.
    Unsure,
}

/// (pattern index, event index) → what must happen; absent: no alert.
type Expected = BTreeMap<(usize, usize), Expect>;
/// (pattern index, event index) → emitted fields.
type Got = BTreeMap<(usize, usize), serde_json::Map<String, Value>>;

fn reference(pats: &[Pat], evs: &[Ev], rules: Rules) -> Expected {
    let mut by_key: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut out = Expected::new();
    for (i, ev) in evs.iter().enumerate() {
        let list = by_key.entry(ev.key.as_str()).or_default();
        list.push(i);
        let mut end = if rules.include_current {
            list.len()
        } else {
            list.len() - 1
        };
        if rules.drop_ties {
            while end > 0 && evs[list[end - 1]].t == ev.t && list[end - 1] != i {
                end -= 1;
            }
        }
        let past = Past {
            evs,
            prior: &list[..end],
            cur: ev,
            rules,
            cache: RefCell::new(Vec::new()),
        };
        for (pi, p) in pats.iter().enumerate() {
            match (p.eval)(&past) {
                (Tri::No, _) => {}
                (Tri::Yes, fields) => {
                    out.insert((pi, i), Expect::Alert(fields));
                }
                (Tri::Unsure, _) => {
                    out.insert((pi, i), Expect::Unsure);
                }
            }
        }
    }
    out
}

/// The engine's alerts, checked for shape (one match alert per event, with
/// the event's key and time, binding `x` to it).
fn run_engine(pats: &[Pat], evs: &[Ev]) -> Got {
    let src: String = pats.iter().map(|p| p.src.as_str()).collect();
    let automata =
        compile_source("history_reference", &src).unwrap_or_else(|d| panic!("{}", d.render()));
    let mut engine = Engine::new(
        automata,
        EngineConfig {
            lateness_ms: 0,
            max_runs_per_key: 10_000,
            include_events: false,
            external_watermark: false,
        },
    );
    let mut out = Output::default();
    for (i, ev) in evs.iter().enumerate() {
        let text = serde_json::to_vec(&ev.doc).expect("JSON");
        engine
            .push_json(None, &text, i as u64, &mut out)
            .expect("one JSON object");
    }
    engine.flush(&mut out);
    assert!(out.late.is_empty(), "late events: {}", out.late.len());
    assert!(
        out.rejected.is_empty(),
        "rejected: {:?}",
        out.rejected.first()
    );
    let index: HashMap<&str, usize> = pats
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.as_str(), i))
        .collect();
    let mut got = Got::new();
    for a in out.alerts {
        let pi = index[a.pattern.as_str()];
        assert_eq!(a.kind, AlertKind::Match, "{a:?}");
        assert_eq!(a.bound.len(), 1, "{a:?}");
        assert_eq!(a.bound[0].0, "x", "{a:?}");
        let i = a.bound[0].1 as usize;
        let ev = &evs[i];
        assert_eq!(a.key, Value::from(ev.key.as_str()), "{a:?}");
        assert_eq!((a.start_ms, a.end_ms), (ev.t, ev.t), "{a:?}");
        let again = got.insert((pi, i), a.fields);
        assert!(again.is_none(), "two alerts of {} for event {i}", a.pattern);
    }
    got
}

/// Disagreements: how many per pattern, and the first few as text.
#[derive(Default)]
struct Report {
    count: usize,
    by_pattern: BTreeMap<String, usize>,
    first: Vec<String>,
}

impl Report {
    fn add(&mut self, pattern: &str, text: impl FnOnce() -> String) {
        self.count += 1;
        *self.by_pattern.entry(pattern.to_string()).or_default() += 1;
        if self.first.len() < 8 {
            self.first.push(text());
        }
    }
}

fn diff(pats: &[Pat], evs: &[Ev], expected: &Expected, got: &Got) -> Report {
    let mut out = Report::default();
    let describe = |pi: usize, i: usize| {
        // How long before it the key's last few events came.
        let back: Vec<i64> = evs[..i]
            .iter()
            .rev()
            .filter(|e| e.key == evs[i].key)
            .take(3)
            .map(|e| evs[i].t - e.t)
            .collect();
        format!(
            "{} at event {i} (key {}, t {}, earlier events {back:?} ms before, {})",
            pats[pi].name, evs[i].key, evs[i].t, evs[i].doc
        )
    };
    for (&(pi, i), want) in expected {
        let Expect::Alert(fields) = want else {
            continue;
        };
        let name = &pats[pi].name;
        let Some(have) = got.get(&(pi, i)) else {
            out.add(name, || {
                format!(
                    "{}: expected an alert {fields:?}, got none",
                    describe(pi, i)
                )
            });
            continue;
        };
        for (field, v) in fields {
            let g = have.get(*field).unwrap_or(&Value::Null);
            if !v.matches(g) {
                out.add(name, || {
                    format!("{}: `{field}` expected {v:?}, got {g}", describe(pi, i))
                });
            }
        }
        if have.len() != fields.len() {
            out.add(name, || {
                format!("{}: emitted {have:?}, expected {fields:?}", describe(pi, i))
            });
        }
    }
    for (&(pi, i), have) in got {
        if !expected.contains_key(&(pi, i)) {
            out.add(&pats[pi].name, || {
                format!("{}: unexpected alert {have:?}", describe(pi, i))
            });
        }
    }
    out
}

/// The patterns whose expected alerts or values differ between two
/// reference runs (entries too close to call on either side left out).
fn differing(a: &Expected, b: &Expected) -> BTreeSet<usize> {
    let mut out = BTreeSet::new();
    let mut check = |x: &Expected, y: &Expected| {
        for (&(pi, i), e) in x {
            let Expect::Alert(fx) = e else { continue };
            match y.get(&(pi, i)) {
                Some(Expect::Unsure) => {}
                Some(Expect::Alert(fy)) => {
                    let same = fx.len() == fy.len()
                        && fx.iter().zip(fy).all(|((_, u), (_, v))| u.agrees(v));
                    if !same {
                        out.insert(pi);
                    }
                }
                None => {
                    out.insert(pi);
                }
            }
        }
    };
    check(a, b);
    check(b, a);
    out
}

// ---------------------------------------------------------------------------
// Tests

/// Runs every case through the engine and the reference and checks that
/// they agree, that every pattern has work to do (alerts, and unless it
/// fires at every event, not at every event), that conditions too close to
/// call are rare, and that every emitted field is sometimes not null.
fn check_against_reference(pats: &[Pat]) {
    let mut alerts = vec![0usize; pats.len()];
    let mut unsure = vec![0usize; pats.len()];
    let mut non_null: BTreeMap<(usize, &str), usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for case in &CASES {
        let evs = stream(case);
        let expected = reference(pats, &evs, Rules::default());
        let got = run_engine(pats, &evs);
        for (&(pi, _), e) in &expected {
            match e {
                Expect::Alert(fields) => {
                    alerts[pi] += 1;
                    for (name, v) in fields {
                        *non_null.entry((pi, *name)).or_default() += (*v != R::Null) as usize;
                    }
                }
                Expect::Unsure => unsure[pi] += 1,
            }
        }
        let d = diff(pats, &evs, &expected, &got);
        if d.count > 0 {
            failures.push(format!(
                "seed {}: {} disagreements {:?}, first:\n  {}",
                case.seed,
                d.count,
                d.by_pattern,
                d.first.join("\n  ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "engine and reference disagree:\n{}",
        failures.join("\n")
    );
    let events: usize = CASES.iter().map(|c| c.events).sum();
    for (pi, p) in pats.iter().enumerate() {
        assert!(alerts[pi] > 20, "{}: only {} alerts", p.name, alerts[pi]);
        assert!(
            every_event(p) == (alerts[pi] + unsure[pi] == events),
            "{}: {} alerts from {events} events",
            p.name,
            alerts[pi]
        );
        assert!(
            unsure[pi] * 200 <= alerts[pi],
            "{}: {} too close to call for {} alerts",
            p.name,
            unsure[pi],
            alerts[pi]
        );
    }
    for (&(pi, name), &n) in &non_null {
        assert!(n > 0, "{}: `{name}` is always null", pats[pi].name);
    }
}

#[test]
fn engine_agrees_with_the_reference() {
    check_against_reference(&patterns());
}

#[test]
fn reference_is_sensitive_to_each_rule() {
    let pats = patterns();
    let streams: Vec<Vec<Ev>> = CASES.iter().map(stream).collect();
    let exact: Vec<Expected> = streams
        .iter()
        .map(|evs| reference(&pats, evs, Rules::default()))
        .collect();
    let all: Vec<&str> = pats.iter().map(|p| p.name.as_str()).collect();
    let seen = ["new_country", "known_country", "code_seen", "code_not_seen"];
    let at_least = ["big_for_card", "new_low", "busy", "outlier"];
    let windows = ["all_1s", "all_37s", "all_10m", "all_1h"];
    // Each mistake, and the patterns whose alerts or values it must change
    // on some stream.
    let mistakes: [(Rules, &[&str]); 8] = [
        (
            Rules {
                extra_buckets: 1,
                ..Rules::default()
            },
            &windows,
        ),
        (
            Rules {
                extra_buckets: -1,
                ..Rules::default()
            },
            &windows,
        ),
        (
            Rules {
                width_ceil: true,
                ..Rules::default()
            },
            &["all_1s", "all_37s"],
        ),
        (
            Rules {
                include_current: true,
                ..Rules::default()
            },
            &all,
        ),
        (
            Rules {
                drop_ties: true,
                ..Rules::default()
            },
            &all,
        ),
        (
            Rules {
                seen_strict: true,
                ..Rules::default()
            },
            &seen,
        ),
        (
            Rules {
                since_null_at_horizon: true,
                ..Rules::default()
            },
            &["gap_75s", "since_default"],
        ),
        (
            Rules {
                at_least_numeric: true,
                ..Rules::default()
            },
            &at_least,
        ),
    ];
    for (rules, must) in mistakes {
        let mut changed = BTreeSet::new();
        for (evs, exact) in streams.iter().zip(&exact) {
            let d = differing(exact, &reference(&pats, evs, rules));
            changed.extend(d.into_iter().map(|pi| pats[pi].name.as_str()));
            if must.iter().all(|p| changed.contains(p)) {
                break;
            }
        }
        let missed: Vec<&&str> = must.iter().filter(|p| !changed.contains(*p)).collect();
        assert!(missed.is_empty(), "{rules:?} changes nothing in {missed:?}");
    }
}

/// Windows under 32 ms have buckets of 1 ms, so by the bucket rule they
/// read 32 ms back, longer than the window itself.
///
/// Ignored: the engine forgets a key's history `D + 2 * (D / 32) + 1` ms
/// after its newest event (`HistoryPlan::retention`), 23 ms for `over
/// 20ms`, while the window reads events up to 32 ms old: an event 24 to 32
/// ms old is counted or not depending on whether another key's event moved
/// the watermark past that retention in between. The first part is the
/// smallest case (key `a` at 0 and 29 ms, key `b` at 25 ms between them:
/// `count() over 20ms` at `a`'s second event is 1 without `b`, 0 with it);
/// the second compares whole streams.
#[test]
fn tiny_windows_agree_with_the_reference() {
    let src = "pattern tiny\n  from cards key card.id time ts\n  match x\n  \
               define x as count() over 20ms >= 0\n  emit n = count() over 20ms\nend\n";
    for others in [false, true] {
        let automata = compile_source("tiny", src).unwrap_or_else(|d| panic!("{}", d.render()));
        let mut engine = Engine::new(automata, EngineConfig::default());
        let mut out = Output::default();
        let mut evs = vec![("a", 0)];
        if others {
            evs.push(("b", 25));
        }
        evs.push(("a", 29));
        for (i, (key, t)) in evs.iter().enumerate() {
            let doc = json!({"card": {"id": key}, "ts": 1_700_000_000_000i64 + t});
            let text = doc.to_string();
            engine
                .push_json(None, text.as_bytes(), i as u64, &mut out)
                .expect("JSON");
        }
        engine.flush(&mut out);
        let last = out.alerts.last().expect("an alert per event");
        assert_eq!(last.end_ms, 1_700_000_000_029);
        assert_eq!(
            last.fields["n"],
            json!(1),
            "with another key's event between: {others}"
        );
    }
    check_against_reference(&[all_aggregates("20ms", MS20), all_aggregates("5ms", 5)]);
}
