//! Per-key history: what a key's own past says about its current event.
//!
//! Sequences compare events of one match with each other; fraud rules also
//! compare an event with everything its key did before: a charge large *for
//! this card*, a country *this card* has not used in 90 days, a second
//! charge seconds after the previous one. A condition asks with
//! `avg(amount) over 30d`, `country not seen in 90d` or
//! `time since previous`; this module keeps, for each key of a pattern,
//! just enough of the past to answer, in bounded space:
//!
//! - a **ring** of time buckets per (field, window) for aggregates: the
//!   window is cut into [`BUCKETS`] buckets of `window / 32`, each holding
//!   count, sum, sum of squared deviations, min and max (56 bytes), and,
//!   when a percentile is asked for, a [`Sketch`] beside it. At most 33
//!   buckets per ring.
//! - a **capped set** of values with their last sighting per (field,
//!   window) for `seen in`: at most [`SEEN_CAP`] values, each kept as a
//!   64-bit hash and a time (16 bytes; two values share a hash with a
//!   probability below 10^-15 at the cap). At the cap, values whose last
//!   sighting left the window go first, then the least recently seen one
//!   (counted: it would read as "not seen" if it came back).
//! - the time of the key's newest event, for `time since previous`.
//!
//! Answers are "as of" an event time and exclude the event being tested:
//! the matcher asks before it records the event. Everything here is a pure
//! function of the key's events in the order the matcher sees them (event
//! time, then arrival), so sorted and reordered input give the same
//! answers, and the state is plain serde data for checkpoints.
//!
//! The plan ([`HistoryPlan`]) belongs to the compiled pattern and is
//! shared; the per-key state ([`KeyHistory`]) lives beside the key's runs.

mod seen;
mod sketch;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::event::Event;
use crate::value::Value;

pub use sketch::Sketch;

use seen::SeenValues;

/// Buckets per window: `over 30d` reads the current bucket and the 32
/// before it, so it looks back at least 30 days and at most 30 days plus
/// one bucket (30d / 32 = 22.5 h).
pub const BUCKETS: i64 = 32;
/// Distinct values one `seen in` remembers per key.
pub const SEEN_CAP: usize = 256;

/// The width of a window's buckets, ms.
pub fn bucket_width(window: i64) -> i64 {
    (window / BUCKETS).max(1)
}

/// What a pattern keeps of each key's past: compiled, shared by all keys.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistoryPlan {
    pub tracks: Vec<TrackSpec>,
    /// How far back `time since previous` looks (ms); 0 when unused.
    pub since_horizon: i64,
    /// [`HistoryPlan::retention`], kept up to date as tracks are added
    /// (read for every event).
    retention: i64,
}

/// One thing kept per key, over one window.
#[derive(Clone, Debug, PartialEq)]
pub struct TrackSpec {
    pub kind: TrackKind,
    pub window: i64,
    /// Its number among the plan's tracks of the same kind (what queries
    /// and per-key state use).
    pub nth: u16,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TrackKind {
    /// Aggregates of a field's numbers (`None`: events are only counted).
    Values {
        field: Option<Field>,
        /// Keep a [`Sketch`] per bucket (a percentile is asked for).
        quantiles: bool,
    },
    /// The field's values, each with the last time it was seen.
    Seen { field: Field },
}

/// A field of the key's events: its slot and, to match plans of two
/// versions of a pattern, its path.
#[derive(Clone, Debug, PartialEq)]
pub struct Field {
    pub slot: u32,
    pub path: Vec<String>,
}

impl HistoryPlan {
    pub fn is_empty(&self) -> bool {
        self.tracks.is_empty() && self.since_horizon == 0
    }

    /// The longest window of the plan.
    pub fn longest_window(&self) -> i64 {
        self.tracks.iter().map(|t| t.window).max().unwrap_or(0)
    }

    /// A plan for `time since previous` looking back `horizon` (0: unused).
    pub fn new(since_horizon: i64) -> HistoryPlan {
        let mut plan = HistoryPlan {
            since_horizon,
            ..HistoryPlan::default()
        };
        plan.retention = plan.compute_retention();
        plan
    }

    /// How long after a key's newest event its history can still answer
    /// anything: the key's history is dropped after that.
    pub fn retention(&self) -> i64 {
        self.retention
    }

    fn compute_retention(&self) -> i64 {
        let tracks = self.tracks.iter().map(|t| match t.kind {
            // The oldest bucket read starts at most 33 widths back (a width
            // is at least 1 ms, so short windows read further than `window`).
            TrackKind::Values { .. } => {
                t.window.max(BUCKETS * bucket_width(t.window)) + 2 * bucket_width(t.window)
            }
            TrackKind::Seen { .. } => t.window,
        });
        tracks.max().unwrap_or(0).max(self.since_horizon) + 1
    }

    /// The track keeping `kind` over `window`, added if new; returns its
    /// number among the tracks of its kind.
    pub fn track(&mut self, kind: TrackKind, window: i64) -> u16 {
        let same = |t: &TrackSpec| {
            t.window == window
                && match (&t.kind, &kind) {
                    (TrackKind::Values { field: a, .. }, TrackKind::Values { field: b, .. }) => {
                        a == b
                    }
                    (a, b) => a == b,
                }
        };
        if let Some(i) = self.tracks.iter().position(same) {
            if let (
                TrackKind::Values { quantiles, .. },
                TrackKind::Values {
                    quantiles: true, ..
                },
            ) = (&mut self.tracks[i].kind, &kind)
            {
                *quantiles = true;
            }
            return self.tracks[i].nth;
        }
        let seen = |k: &TrackKind| matches!(k, TrackKind::Seen { .. });
        let nth = self
            .tracks
            .iter()
            .filter(|t| seen(&t.kind) == seen(&kind))
            .count() as u16;
        self.tracks.push(TrackSpec { kind, window, nth });
        self.retention = self.compute_retention();
        nth
    }

    /// Where each of `self`'s tracks is found in `other` (same kind, field
    /// path and window), to carry history across a pattern change.
    fn mapping(&self, other: &HistoryPlan) -> Vec<Option<usize>> {
        let path = |k: &TrackKind| match k {
            TrackKind::Values { field, .. } => (0, field.as_ref().map(|f| f.path.clone())),
            TrackKind::Seen { field } => (1, Some(field.path.clone())),
        };
        self.tracks
            .iter()
            .map(|t| {
                other.tracks.iter().position(|o| {
                    o.window == t.window
                        && path(&o.kind) == path(&t.kind)
                        && !matches!(
                            (&t.kind, &o.kind),
                            (
                                TrackKind::Values {
                                    quantiles: true,
                                    ..
                                },
                                TrackKind::Values {
                                    quantiles: false,
                                    ..
                                }
                            )
                        )
                })
            })
            .collect()
    }
}

/// A question a condition asks of the key's history.
#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    pub func: Func,
    pub track: u16,
    pub window: i64,
    /// Fewer than this many events of the key in the window (counted by
    /// the given track) make the answer null.
    pub at_least: Option<(u32, u16)>,
    /// The expression as written, for `cep why`.
    pub source: String,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Func {
    /// `count()`: the key's events.
    Events,
    /// `count(field)`: the events with a number in the field.
    Count,
    Sum,
    Avg,
    Min,
    Max,
    Stddev,
    /// 0 to 100.
    Percentile(f64),
    /// Whether the current event's value (in `slot`) was seen.
    Seen {
        slot: u32,
        negated: bool,
    },
}

impl Func {
    pub fn name(self) -> &'static str {
        match self {
            Func::Events | Func::Count => "count",
            Func::Sum => "sum",
            Func::Avg => "avg",
            Func::Min => "min",
            Func::Max => "max",
            Func::Stddev => "stddev",
            Func::Percentile(_) => "percentile",
            Func::Seen { negated: false, .. } => "seen in",
            Func::Seen { negated: true, .. } => "not seen in",
        }
    }
}

/// The history of one key of one pattern. Laid out for few cache misses:
/// the buckets of every aggregate track share one vector (by track, then
/// time), held inline in the key's entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyHistory {
    /// Event time of the key's newest event.
    last: i64,
    /// The first bucket lives inline: a key whose recent events all fall
    /// in one bucket (most keys of short bursts) costs no allocation and
    /// no extra cache miss per event (measured: see BENCHMARKS.md).
    #[serde(default, skip_serializing_if = "SmallVec::is_empty")]
    buckets: SmallVec<[Bucket; 1]>,
    /// `seen in` sets and percentile sketches, behind one pointer: most
    /// patterns need neither, and the key's entry stays small, which
    /// decides how many entries stay in cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    extras: Option<Box<Extras>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Extras {
    /// One set per `seen in` track.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    seen: Vec<SeenValues>,
    /// A sketch per bucket of the tracks a percentile reads: (track,
    /// bucket number, sketch), by track then bucket.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    sketches: Vec<(u16, i64, Sketch)>,
}

impl Extras {
    /// Adds `x` to the sketch of (track, index), forgetting the track's
    /// sketches of buckets before `oldest`.
    fn sketch(&mut self, track: u16, index: i64, oldest: i64, x: f64) {
        self.sketches
            .retain(|(t, i, _)| *t != track || *i >= oldest);
        let at = self
            .sketches
            .partition_point(|(t, i, _)| (*t, *i) < (track, index));
        if self
            .sketches
            .get(at)
            .is_none_or(|e| (e.0, e.1) != (track, index))
        {
            self.sketches.insert(at, (track, index, Sketch::default()));
        }
        self.sketches[at].2.add(x);
    }

    /// The sketches of `track` from bucket `from` on, merged.
    fn merged(&self, track: u16, from: i64) -> Sketch {
        let mut all = Sketch::default();
        for (_, _, sk) in self.sketches.iter().filter(|e| e.0 == track && e.1 >= from) {
            all.merge(sk);
        }
        all
    }
}

impl KeyHistory {
    pub fn new(plan: &HistoryPlan) -> KeyHistory {
        let seen: Vec<SeenValues> = plan
            .tracks
            .iter()
            .filter(|t| matches!(t.kind, TrackKind::Seen { .. }))
            .map(|_| SeenValues::default())
            .collect();
        let sketches = plan.tracks.iter().any(|t| {
            matches!(
                t.kind,
                TrackKind::Values {
                    quantiles: true,
                    ..
                }
            )
        });
        let extras = (!seen.is_empty() || sketches).then(|| {
            Box::new(Extras {
                seen,
                sketches: Vec::new(),
            })
        });
        KeyHistory {
            last: i64::MIN,
            buckets: SmallVec::new(),
            extras,
        }
    }

    fn extras(&self) -> &Extras {
        static NONE: Extras = Extras {
            seen: Vec::new(),
            sketches: Vec::new(),
        };
        self.extras.as_deref().unwrap_or(&NONE)
    }

    /// Adds `ev`, the key's newest event. Returns how many values a `seen
    /// in` had to forget at its cap.
    pub fn record(&mut self, plan: &HistoryPlan, ev: &Event) -> u64 {
        self.last = ev.time;
        let mut evicted = 0;
        for spec in &plan.tracks {
            match &spec.kind {
                TrackKind::Values { field, quantiles } => {
                    let x = field
                        .as_ref()
                        .map(|f| Number::of(&ev.slots[f.slot as usize]));
                    let ring = Ring {
                        buckets: &mut self.buckets,
                        track: spec.nth,
                    };
                    let index = ring.record(ev.time, bucket_width(spec.window), x);
                    if let (true, Some(Some(x)), Some(extras)) = (*quantiles, x, &mut self.extras) {
                        extras.sketch(spec.nth, index, index - BUCKETS, x.x);
                    }
                }
                TrackKind::Seen { field } => {
                    let v = &ev.slots[field.slot as usize];
                    let Some(extras) = self.extras.as_mut() else {
                        continue;
                    };
                    let seen = &mut extras.seen[spec.nth as usize];
                    evicted += seen.record(ev.time, spec.window, v);
                }
            }
        }
        evicted
    }

    /// When nothing recorded can answer a question any more.
    pub fn expires_at(&self, plan: &HistoryPlan) -> i64 {
        self.last.saturating_add(plan.retention())
    }

    /// `time since previous` as of `at`: null when the key's previous
    /// event is further back than `horizon`.
    pub fn since_previous(&self, at: i64, horizon: i64) -> Value {
        let gap = at.saturating_sub(self.last);
        if self.last == i64::MIN || gap > horizon {
            Value::Null
        } else {
            Value::Int(gap)
        }
    }

    /// Answers `q` as of `at`; `current` is the event being tested, whose
    /// value `seen in` looks for.
    pub fn answer(&self, q: &Query, at: i64, current: Option<&Event>) -> Value {
        // An aggregate counts `with at least` on its own track: one
        // summary serves both.
        let summary = match q.func {
            Func::Seen { .. } => None,
            _ => Some(self.ring(q.track).summary(at, q.window)),
        };
        if let Some((n, t)) = q.at_least {
            let events = match &summary {
                Some(s) if t == q.track => s.events,
                _ => self.ring(t).summary(at, q.window).events,
            };
            if events < n as u64 {
                return Value::Null;
            }
        }
        match (q.func, summary) {
            (Func::Seen { slot, negated }, _) => {
                let v = current.map_or(&Value::Missing, |e| &e.slots[slot as usize]);
                let seen = self.extras().seen.get(q.track as usize);
                match seen.and_then(|s| s.seen(at, q.window, v)) {
                    Some(hit) => Value::Bool(hit != negated),
                    None => Value::Null,
                }
            }
            (f, Some(mut s)) => {
                if let Func::Percentile(_) = f {
                    let from = at.div_euclid(bucket_width(q.window)) - BUCKETS;
                    s.sketch = Some(self.extras().merged(q.track, from));
                }
                s.answer(f)
            }
            (_, None) => Value::Null,
        }
    }

    /// The buckets of aggregate track `track`.
    fn ring(&self, track: u16) -> &[Bucket] {
        let start = self.buckets.partition_point(|b| b.track < track);
        let len = self.buckets[start..]
            .iter()
            .take_while(|b| b.track == track)
            .count();
        &self.buckets[start..start + len]
    }

    /// The same history under another plan: tracks found in both carry
    /// over, new ones start empty.
    pub fn carried(&self, from: &HistoryPlan, to: &HistoryPlan) -> KeyHistory {
        let mut next = KeyHistory::new(to);
        next.last = self.last;
        for (spec, found) in to.tracks.iter().zip(to.mapping(from)) {
            let Some(old) = found.map(|i| &from.tracks[i]) else {
                continue;
            };
            match spec.kind {
                TrackKind::Values { .. } => {
                    next.buckets
                        .extend(self.ring(old.nth).iter().map(|b| Bucket {
                            track: spec.nth,
                            ..*b
                        }))
                }
                TrackKind::Seen { .. } => {}
            }
            if let (Some(to), Some(from)) = (next.extras.as_mut(), self.extras.as_ref()) {
                match spec.kind {
                    TrackKind::Seen { .. } => {
                        to.seen[spec.nth as usize] = from.seen[old.nth as usize].clone();
                    }
                    TrackKind::Values { .. } => to.sketches.extend(
                        from.sketches
                            .iter()
                            .filter(|e| e.0 == old.nth)
                            .map(|(_, i, sk)| (spec.nth, *i, sk.clone())),
                    ),
                }
            }
        }
        next.buckets.sort_by_key(|b| (b.track, b.index));
        if let Some(e) = next.extras.as_mut() {
            e.sketches.sort_by_key(|e| (e.0, e.1));
        }
        next
    }
}

/// A number read from a field, remembering whether it was an integer.
#[derive(Clone, Copy)]
struct Number {
    x: f64,
    int: bool,
}

impl Number {
    fn of(v: &Value) -> Option<Number> {
        match v {
            Value::Int(i) => Some(Number {
                x: *i as f64,
                int: true,
            }),
            Value::Float(f) if f.is_finite() => Some(Number { x: *f, int: false }),
            _ => None,
        }
    }
}

/// The time buckets of one aggregate track, oldest first, only non-empty
/// ones (at most 33), within the key's vector of buckets, which grows one
/// bucket at a time: most keys use few.
struct Ring<'a> {
    buckets: &'a mut SmallVec<[Bucket; 1]>,
    track: u16,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Bucket {
    /// The aggregate track it belongs to.
    track: u16,
    /// Bucket number: event time / width.
    index: i64,
    /// Events of the key in the bucket.
    events: u32,
    /// Of which had a number in the field.
    n: u32,
    /// Every number was an integer (sum, min and max then read as one).
    ints: bool,
    sum: f64,
    /// Sum of squared deviations from the bucket's mean (Welford).
    m2: f64,
    min: f64,
    max: f64,
}

impl Ring<'_> {
    /// Adds an event (and its number, if any); returns its bucket number.
    fn record(self, time: i64, width: i64, x: Option<Option<Number>>) -> i64 {
        let index = time.div_euclid(width);
        let track = self.track;
        let start = self.buckets.partition_point(|b| b.track < track);
        let mut end = start;
        let mut old = 0;
        for b in self.buckets[start..]
            .iter()
            .take_while(|b| b.track == track)
        {
            old += (b.index < index - BUCKETS) as usize;
            end += 1;
        }
        self.buckets.drain(start..start + old);
        end -= old;
        if end == start || self.buckets[end - 1].index != index {
            if self.buckets.len() == self.buckets.capacity() {
                self.buckets.reserve_exact(1);
            }
            self.buckets.insert(end, Bucket::new(track, index));
            end += 1;
        }
        let b = &mut self.buckets[end - 1];
        b.events += 1;
        if let Some(Some(x)) = x {
            b.add(x);
        }
        index
    }
}

trait Buckets {
    /// Everything in the buckets a window ending at `at` reads.
    fn summary(&self, at: i64, window: i64) -> Summary;
}

impl Buckets for [Bucket] {
    fn summary(&self, at: i64, window: i64) -> Summary {
        let from = at.div_euclid(bucket_width(window)) - BUCKETS;
        let mut s = Summary::default();
        for b in self.iter().filter(|b| b.index >= from) {
            s.merge(b);
        }
        s
    }
}

impl Bucket {
    fn new(track: u16, index: i64) -> Bucket {
        Bucket {
            track,
            index,
            events: 0,
            n: 0,
            ints: true,
            sum: 0.0,
            m2: 0.0,
            min: 0.0,
            max: 0.0,
        }
    }

    fn add(&mut self, v: Number) {
        let x = v.x;
        if self.n == 0 {
            (self.min, self.max) = (x, x);
        } else {
            self.min = self.min.min(x);
            self.max = self.max.max(x);
        }
        let old_mean = if self.n == 0 {
            x
        } else {
            self.sum / self.n as f64
        };
        self.n += 1;
        self.sum += x;
        self.m2 += (x - old_mean) * (x - self.sum / self.n as f64);
        self.ints &= v.int;
    }
}

/// Buckets merged (Chan et al. for the squared deviations).
#[derive(Default)]
struct Summary {
    events: u64,
    n: u64,
    ints: bool,
    sum: f64,
    m2: f64,
    min: f64,
    max: f64,
    sketch: Option<Sketch>,
}

impl Summary {
    fn merge(&mut self, b: &Bucket) {
        self.events += b.events as u64;
        if b.n == 0 {
            return;
        }
        if self.n == 0 {
            (self.ints, self.min, self.max) = (b.ints, b.min, b.max);
            (self.sum, self.m2, self.n) = (b.sum, b.m2, b.n as u64);
        } else {
            let (na, nb) = (self.n as f64, b.n as f64);
            let delta = b.sum / nb - self.sum / na;
            self.m2 += b.m2 + delta * delta * na * nb / (na + nb);
            self.sum += b.sum;
            self.n += b.n as u64;
            self.ints &= b.ints;
            self.min = self.min.min(b.min);
            self.max = self.max.max(b.max);
        }
    }

    fn answer(&self, f: Func) -> Value {
        let number = |x: f64| {
            if self.ints && x.abs() < 9.0e15 {
                Value::Int(x as i64)
            } else {
                Value::Float(x)
            }
        };
        if let Func::Events = f {
            return Value::Int(self.events as i64);
        }
        if self.n == 0 {
            return match f {
                Func::Count => Value::Int(0),
                Func::Sum => Value::Int(0),
                _ => Value::Null,
            };
        }
        let n = self.n as f64;
        match f {
            Func::Count => Value::Int(self.n as i64),
            Func::Sum => number(self.sum),
            Func::Avg => Value::Float(self.sum / n),
            Func::Min => number(self.min),
            Func::Max => number(self.max),
            Func::Stddev => Value::Float((self.m2.max(0.0) / n).sqrt()),
            Func::Percentile(p) => match &self.sketch {
                // The estimate never leaves the exact range.
                Some(sk) => Value::Float(sk.quantile(p / 100.0).clamp(self.min, self.max)),
                None => Value::Null,
            },
            Func::Seen { .. } | Func::Events => Value::Null,
        }
    }
}

#[cfg(test)]
mod tests;
