//! Runs: the per-key state of one pattern, and how an event moves it.
//!
//! A [`Run`] is a partial match: the wait point ([`Node`]) it is at, which of
//! the node's entries are still alive, and the events bound so far. Every key
//! keeps its runs in the order they started. An event, offered in event-time
//! order, is first used to expire runs whose window has closed, then offered
//! to every run, then may start a new run of its own.
//!
//! Semantics, in one place:
//! - An entry takes the event when the event satisfies its variable's
//!   condition. Entries are tried in priority order; the first that takes it
//!   moves the run (for `then any`, every entry that takes it forks a run and
//!   the waiting run stays).
//! - An event no entry takes removes the entries that wait with strict
//!   contiguity (`next`); relaxed ones keep waiting. A run with nothing left
//!   is gone.
//! - A negation guarding an entry removes it when an event matches the
//!   negated variable (`next not x`: only the first event after arriving).
//! - A run accepts as soon as `Accept` is reachable and no preferred (greedy)
//!   entry is still alive; behind `then not x` it accepts only when its
//!   window closes.
//! - `within` is measured from the first bound event: an event at or after
//!   `first + within` cannot join; `max gap` likewise from the last bound
//!   event. When the watermark passes a run's deadline the run expires: it
//!   accepts if it can, otherwise becomes a `timeout` alert when the pattern
//!   has `on timeout emit`.
//! - After a match, the skip strategy discards runs that started too early
//!   (every strategy is "discard runs that started before position P").
//! - At most `max_runs_per_key` runs per key: beyond it the oldest runs are
//!   dropped and counted in `runs_dropped`.

use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};

use crate::compiler::{
    Automaton, Binding, Bindings, BoundEvent, Entry, Env, Names, NodeId, SkipPlan,
};
use crate::dsl::ast::Contiguity;
use crate::event::{Event, Key};
use crate::history::KeyHistory;

use super::alert::{self, Alert, AlertKind};
use super::history_slot::HistorySlot;
use super::timers::Timers;
use super::trace::{Note, Trace};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Run {
    node: NodeId,
    alive: u64,
    /// No event has been offered since the run arrived at `node`.
    fresh: bool,
    start_pos: u64,
    start_time: i64,
    last_time: i64,
    bindings: Bindings,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyRuns<H: HistorySlot = Option<KeyHistory>> {
    runs: Vec<Run>,
    /// Position of the next event of this key.
    next_pos: u64,
    /// Deadline of this key's pending timer (runs without a window have
    /// one at the end of time, which only the end of input reaches).
    #[serde(default)]
    scheduled: Scheduled,
    /// What the key's past events say, for a pattern that asks
    /// ([`crate::history`]); kept until it can answer nothing.
    #[serde(default, skip_serializing_if = "HistorySlot::is_none")]
    history: H,
}

impl<H: HistorySlot> KeyRuns<H> {
    /// The same runs with the history in another kind of slot.
    fn into_slot<G: HistorySlot>(self) -> KeyRuns<G> {
        KeyRuns {
            history: G::from_option(self.history.get().cloned()),
            runs: self.runs,
            next_pos: self.next_pos,
            scheduled: self.scheduled,
        }
    }
}

/// A key's pending timer deadline, none as `i64::MIN`: 8 bytes instead of
/// an `Option`'s 16. A key's entry is read for every event of the key, and
/// its size decides how many entries stay in cache (see BENCHMARKS.md,
/// "Per-key history"). Saved as an optional number, as before.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Scheduled(i64);

impl Scheduled {
    const NONE: Scheduled = Scheduled(i64::MIN);

    fn at(deadline: i64) -> Scheduled {
        Scheduled(deadline.max(i64::MIN + 1))
    }

    fn get(self) -> Option<i64> {
        (self != Scheduled::NONE).then_some(self.0)
    }
}

impl Default for Scheduled {
    fn default() -> Scheduled {
        Scheduled::NONE
    }
}

impl Serialize for Scheduled {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.get().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Scheduled {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Scheduled, D::Error> {
        Ok(Option::<i64>::deserialize(d)?.map_or(Scheduled::NONE, Scheduled::at))
    }
}

/// Counters of one pattern.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MatchStats {
    pub events: u64,
    pub matches: u64,
    pub timeouts: u64,
    pub runs_started: u64,
    pub runs_expired: u64,
    pub runs_dropped: u64,
    /// Values a `seen in` forgot at its cap ([`crate::history::SEEN_CAP`]).
    #[serde(default)]
    pub history_evictions: u64,
}

/// All run state of one pattern. Plain data: serialisable as a whole, or
/// as the keys changed since the last [`Matcher::take_changes`].
///
/// The timer queue is not saved: it is derived from each key's
/// `scheduled` deadline ([`Matcher::rebuild_timers`]), and ties pop in
/// (deadline, key) order either way, so a restored matcher fires exactly
/// as the saved one would have.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Matcher<H: HistorySlot = Option<KeyHistory>> {
    keys: FxHashMap<Key, KeyRuns<H>>,
    #[serde(skip)]
    timers: Timers,
    pub stats: MatchStats,
    /// Keys whose runs changed (or ended) since the last
    /// [`Matcher::take_changes`], kept only when [`Limits::track_changes`]
    /// is on: what an incremental checkpoint writes.
    #[serde(skip)]
    changed: FxHashSet<Key>,
    /// The key `cep why` asks about, and what happened to it.
    #[serde(skip)]
    trace: Option<Box<Traced>>,
    /// When the watermark next sweeps out histories that can answer
    /// nothing (see [`Matcher::sweep`]); the first advance after a restore
    /// sweeps.
    #[serde(skip)]
    sweep_at: i64,
}

/// A trace, and how its event numbers relate to the key's positions.
#[derive(Clone, Debug)]
struct Traced {
    trace: Trace,
    /// Events of the key seen.
    seen: u64,
    /// Event number minus position, while the key holds runs.
    offset: u64,
}

/// The runs of one key as a change to a saved matcher: `None` when the key
/// has no runs left.
pub type KeyChange = (Key, Option<KeyRuns>);

/// Settings that shape matching.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_runs_per_key: usize,
    pub include_events: bool,
    /// List the keys that change (see [`Matcher::take_changes`]).
    pub track_changes: bool,
    /// New runs may start (false: a draining version only finishes the
    /// runs it has).
    pub start_runs: bool,
}

impl<H: HistorySlot> Matcher<H> {
    pub fn active_keys(&self) -> usize {
        self.keys.len()
    }

    pub fn active_runs(&self) -> usize {
        self.keys.values().map(|k| k.runs.len()).sum()
    }

    /// The keys changed since the last call, each with its runs now, and
    /// forgets them.
    pub fn take_changes(&mut self) -> Vec<KeyChange> {
        let mut changed: Vec<KeyChange> = self
            .changed
            .drain()
            .map(|k| {
                let runs = self.keys.get(&k).map(|r| r.clone().into_slot());
                (k, runs)
            })
            .collect();
        // A stable order keeps checkpoints of equal state byte-equal.
        changed.sort_unstable_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        changed
    }

    /// Keeps notes of what happens to `key` ([`crate::engine::trace`]).
    pub fn trace(&mut self, key: Key) {
        let trace = Trace {
            key,
            notes: Vec::new(),
        };
        self.trace = Some(Box::new(Traced {
            trace,
            seen: 0,
            offset: 0,
        }));
    }

    /// The notes taken since the last call.
    pub fn take_notes(&mut self) -> Vec<Note> {
        self.trace
            .as_mut()
            .map(|t| std::mem::take(&mut t.trace.notes))
            .unwrap_or_default()
    }

    /// Forgets the changed keys (a whole snapshot was just taken).
    pub fn forget_changes(&mut self) {
        self.changed.clear();
    }

    /// The matcher without its keys: its counters.
    pub fn without_keys(&self) -> Matcher<H> {
        Matcher {
            stats: self.stats.clone(),
            ..Matcher::default()
        }
    }

    /// Applies changes taken by [`Matcher::take_changes`] to a saved
    /// matcher, with the counters as they were then.
    pub fn apply_changes(&mut self, stats: MatchStats, changes: Vec<KeyChange>) {
        self.stats = stats;
        for (k, runs) in changes {
            match runs {
                Some(r) => self.keys.insert(k, r.into_slot()),
                None => self.keys.remove(&k),
            };
        }
    }

    /// Takes over the key histories of `from`, the state of `old`, an
    /// earlier version of `new`'s pattern: what both versions keep (same
    /// field and window) carries over, so a changed threshold does not
    /// make every card look new.
    pub fn adopt_history<G: HistorySlot>(
        &mut self,
        from: &Matcher<G>,
        old: &Automaton,
        new: &Automaton,
    ) {
        if old.history.tracks.is_empty() || new.history.is_empty() {
            return;
        }
        for (k, ks) in &from.keys {
            let Some(h) = ks.history.get() else { continue };
            let carried = h.carried(&old.history, &new.history);
            self.keys
                .entry(k.clone())
                .or_default()
                .history
                .set(Some(carried));
        }
    }

    /// The same state in another kind of slot (keys that held only
    /// history go when the new slot holds none).
    pub fn into_slot<G: HistorySlot>(self) -> Matcher<G> {
        let mut keys: FxHashMap<Key, KeyRuns<G>> = FxHashMap::default();
        for (k, ks) in self.keys {
            let ks = ks.into_slot::<G>();
            if !ks.runs.is_empty() || !ks.history.is_none() {
                keys.insert(k, ks);
            }
        }
        Matcher {
            keys,
            timers: self.timers,
            stats: self.stats,
            changed: self.changed,
            trace: self.trace,
            sweep_at: self.sweep_at,
        }
    }

    /// Drops the keys that hold only history (a version starting to
    /// drain keeps what its open runs need).
    pub fn keep_only_runs(&mut self) {
        self.keys.retain(|_, ks| !ks.runs.is_empty());
    }

    /// Rebuilds the timer queue from the keys' deadlines (after a restore).
    pub fn rebuild_timers(&mut self) {
        self.timers = self
            .keys
            .iter()
            .filter_map(|(k, ks)| Some((ks.scheduled.get()?, k.clone())))
            .collect();
    }

    /// Offers one event, in event-time order for its key.
    #[inline]
    pub fn on_event(&mut self, a: &Automaton, ev: Event, lim: Limits, out: &mut Vec<Alert>) {
        self.stats.events += 1;
        let traced = self.trace.as_ref().is_some_and(|t| t.trace.key == ev.key);
        if traced {
            self.note_event(&ev);
        }
        // Every event of a key goes into its history; without one, an event
        // that starts nothing for a key without runs changes nothing.
        let records = !a.history.is_empty() && lim.start_runs;
        if !records
            && !self.keys.contains_key(&ev.key)
            && (!lim.start_runs || !can_start(a, &ev, None))
        {
            if traced {
                self.note_not_started(start_refusals(a, &ev, None));
            }
            return;
        }
        let ks = self.keys.entry(ev.key.clone()).or_default();
        if records && ks.history.is_none() {
            ks.history.set(Some(KeyHistory::new(&a.history)));
        }
        // Borrowed field by field: the runs change, the history is read.
        let KeyRuns {
            runs,
            next_pos,
            history,
            ..
        } = &mut *ks;
        if traced && records && !can_start(a, &ev, history.get()) {
            let why = start_refusals(a, &ev, history.get());
            if let Some(t) = self.trace.as_mut() {
                t.trace.notes.push(Note::NotStarted { why });
            }
        }
        // A key that holds only history, and an event that starts nothing:
        // there is nothing to offer it to (and no need to share it).
        let idle = runs.is_empty() && !(lim.start_runs && can_start(a, &ev, history.get()));
        let ev: &Event = &ev;
        if idle {
            *next_pos += 1;
        } else {
            let mut cx = Step {
                a,
                key: &ev.key,
                lim,
                out,
                stats: &mut self.stats,
                trace: self.trace.as_deref_mut().filter(|_| traced),
                floor_run: 0,
                history: history.get(),
            };
            // Runs whose window closed before this event end first.
            cx.expire(runs, ev.time);
            let pos = *next_pos;
            *next_pos += 1;
            cx.offer(runs, ev, pos);
            if runs.len() > lim.max_runs_per_key {
                let excess = runs.len() - lim.max_runs_per_key;
                runs.drain(..excess);
                self.stats.runs_dropped += excess as u64;
            }
        }
        // Recorded after every condition saw the event: history excludes it.
        if let Some(h) = history.get_mut() {
            self.stats.history_evictions += h.record(&a.history, ev);
        }
        // As `reschedule`, on the entry at hand (one lookup per event).
        let next = next_deadline(a, ks, lim);
        let push = match next {
            Next::At(d) if ks.scheduled.get().is_none_or(|s| d < s) => {
                ks.scheduled = Scheduled::at(d);
                Some(d)
            }
            _ => None,
        };
        self.settle(&ev.key, next, push, lim);
    }

    /// After an event: lists the key as changed, drops it if it holds
    /// nothing, queues its new timer.
    fn settle(&mut self, key: &Key, next: Next, push: Option<i64>, lim: Limits) {
        if lim.track_changes && !self.changed.contains(key) {
            self.changed.insert(key.clone());
        }
        if let Next::Gone = next {
            self.keys.remove(key);
        }
        if let Some(d) = push {
            self.timers.push(d, key.clone());
        }
    }

    /// Notes an event of the traced key.
    fn note_event(&mut self, ev: &Event) {
        let next_pos = self.keys.get(&ev.key).map_or(0, |k| k.next_pos);
        let Some(t) = self.trace.as_mut() else { return };
        let n = t.seen;
        t.seen += 1;
        t.trace.notes.push(Note::Event {
            pos: n,
            time: ev.time,
        });
        t.offset = n - next_pos;
    }

    fn note_not_started(&mut self, why: Vec<String>) {
        if let Some(t) = self.trace.as_mut() {
            t.trace.notes.push(Note::NotStarted { why });
        }
    }

    /// Fires every deadline at or before `watermark`.
    #[inline]
    pub fn advance(&mut self, a: &Automaton, watermark: i64, lim: Limits, out: &mut Vec<Alert>) {
        // Checked inline: most events move the watermark past no deadline.
        if self.timers.next_deadline().is_some_and(|d| d <= watermark) {
            self.fire(a, watermark, lim, out);
        }
        if watermark >= self.sweep_at && !a.history.is_empty() {
            self.sweep(a, watermark, lim);
        }
    }

    /// Drops the histories that can answer nothing any more, and keys left
    /// with nothing. One pass over the keys every quarter of the history's
    /// retention (of event time) instead of a timer per key: cheaper per
    /// event and in memory, and when a history goes changes no answer
    /// (questions only read what is within their window).
    fn sweep(&mut self, a: &Automaton, watermark: i64, lim: Limits) {
        let changed = &mut self.changed;
        self.keys.retain(|k, ks| {
            if ks
                .history
                .get()
                .is_some_and(|h| h.expires_at(&a.history) <= watermark)
            {
                ks.history.set(None);
                if lim.track_changes {
                    changed.insert(k.clone());
                }
            }
            !ks.runs.is_empty() || !ks.history.is_none()
        });
        // At most once a minute of event time, however short the windows.
        let every = (a.history.retention() / 4).max(60_000);
        self.sweep_at = watermark.saturating_add(every);
    }

    fn fire(&mut self, a: &Automaton, watermark: i64, lim: Limits, out: &mut Vec<Alert>) {
        while self.timers.next_deadline().is_some_and(|d| d <= watermark) {
            let Some((deadline, key)) = self.timers.pop() else {
                break;
            };
            let Some(ks) = self.keys.get_mut(&key) else {
                continue;
            };
            if ks.scheduled.get() != Some(deadline) {
                continue; // superseded by an earlier timer
            }
            ks.scheduled = Scheduled::NONE;
            let traced = self.trace.as_ref().is_some_and(|t| t.trace.key == key);
            let KeyRuns { runs, history, .. } = &mut *ks;
            let mut cx = Step {
                a,
                key: &key,
                lim,
                out,
                stats: &mut self.stats,
                trace: self.trace.as_deref_mut().filter(|_| traced),
                floor_run: 0,
                history: history.get(),
            };
            cx.expire(runs, watermark);
            self.reschedule(a, key, lim);
        }
    }

    /// Every change to a key's runs ends here (after an event, after a
    /// fired deadline), which makes it the one place to list changed keys.
    fn reschedule(&mut self, a: &Automaton, key: Key, lim: Limits) {
        if lim.track_changes && !self.changed.contains(&key) {
            self.changed.insert(key.clone());
        }
        let Some(ks) = self.keys.get_mut(&key) else {
            return;
        };
        let deadline = match next_deadline(a, ks, lim) {
            Next::Gone => {
                self.keys.remove(&key);
                return;
            }
            Next::Idle => return,
            Next::At(d) => d,
        };
        if ks.scheduled.get().is_none_or(|s| deadline < s) {
            ks.scheduled = Scheduled::at(deadline);
            self.timers.push(deadline, key);
        }
    }
}

/// What a key waits for after a change.
enum Next {
    /// Nothing: the key goes.
    Gone,
    /// No run, only history (dropped by [`Matcher::sweep`]).
    Idle,
    /// Its earliest run's deadline.
    At(i64),
}

fn next_deadline<H: HistorySlot>(a: &Automaton, ks: &mut KeyRuns<H>, lim: Limits) -> Next {
    if !lim.start_runs && ks.runs.is_empty() {
        // A draining version keeps history only for its open runs.
        ks.history.set(None);
    }
    match ks.runs.iter().map(|r| deadline(a, r)).min() {
        Some(d) => Next::At(d),
        None if !ks.history.is_none() => Next::Idle,
        None => Next::Gone,
    }
}

/// Why no entry of the start node takes `ev`: each condition with the
/// values it saw.
fn start_refusals(a: &Automaton, ev: &Event, history: Option<&KeyHistory>) -> Vec<String> {
    let env = Env::of_event(ev, history);
    let names = Names {
        fields: &a.fields.paths,
        vars: &a.vars,
    };
    a.nodes[a.start as usize]
        .entries
        .iter()
        .filter_map(|e| match e {
            Entry::Consume { var, .. } => {
                let c = a.conditions[*var as usize].as_ref()?;
                let name = &a.vars[*var as usize].name;
                Some(format!("{name}: {}", c.explain(&names, &env)))
            }
            Entry::Accept => None,
        })
        .collect()
}

/// Whether `ev` could start a run: some entry of the start node takes it.
#[inline]
fn can_start(a: &Automaton, ev: &Event, history: Option<&KeyHistory>) -> bool {
    let env = Env::of_event(ev, history);
    a.nodes[a.start as usize].entries.iter().any(|e| match e {
        Entry::Consume { var, .. } => a.conditions[*var as usize]
            .as_ref()
            .is_none_or(|c| c.test(&env)),
        Entry::Accept => false,
    })
}

fn deadline(a: &Automaton, r: &Run) -> i64 {
    let w = a
        .within
        .map_or(i64::MAX, |w| r.start_time.saturating_add(w));
    let g = a
        .max_gap
        .map_or(i64::MAX, |g| r.last_time.saturating_add(g));
    w.min(g)
}

struct Step<'a> {
    a: &'a Automaton,
    key: &'a Key,
    lim: Limits,
    out: &'a mut Vec<Alert>,
    stats: &'a mut MatchStats,
    /// The trace, when this key is the one traced.
    trace: Option<&'a mut Traced>,
    /// The run whose match set the current skip floor (for the trace).
    floor_run: u64,
    /// The key's history before the current event.
    history: Option<&'a KeyHistory>,
}

enum Settle {
    Wait(Run),
    Accept(Run),
}

impl Step<'_> {
    /// Notes what happened, when tracing (`note` builds it only then).
    #[inline]
    fn note(&mut self, note: impl FnOnce(u64) -> Note) {
        if let Some(t) = self.trace.as_deref_mut() {
            let n = note(t.offset);
            t.trace.notes.push(n);
        }
    }

    fn var_name(&self, var: crate::compiler::VarId) -> String {
        self.a.vars[var as usize].name.clone()
    }

    /// Offers `ev` (position `pos`) to every run of the key, then to a new run.
    fn offer(&mut self, runs: &mut Vec<Run>, ev: &Event, pos: u64) {
        let old = std::mem::take(runs);
        // Sized for the runs and one new one; nothing is allocated for a
        // key without runs unless one starts (a key kept for its history).
        let mut next: Vec<Run> = Vec::with_capacity(old.len() + !old.is_empty() as usize);
        let mut floor = 0u64;
        for run in old {
            if run.start_pos < floor {
                let (r, after) = (run.start_pos, self.floor_run);
                self.note(|o| Note::Pruned {
                    run: r + o,
                    after: after + o,
                });
                continue;
            }
            self.step(run, ev, pos, &mut next, &mut floor);
        }
        if pos >= floor && self.lim.start_runs {
            let seed = Run {
                node: self.a.start,
                alive: u64::MAX,
                fresh: true,
                start_pos: pos,
                start_time: ev.time,
                last_time: ev.time,
                bindings: Bindings::new(),
            };
            self.step(seed, ev, pos, &mut next, &mut floor);
        }
        *runs = next;
    }

    fn step(&mut self, mut run: Run, ev: &Event, pos: u64, next: &mut Vec<Run>, floor: &mut u64) {
        let a = self.a;
        let node = &a.nodes[run.node as usize];
        let seed = run.bindings.is_empty();
        let mut alive = run.alive;
        {
            let env = Env {
                current: Some(ev),
                bindings: &run.bindings,
                key: Some(self.key),
                start: run.start_time,
                end: ev.time,
                history: self.history,
                history_at: ev.time,
            };
            for g in &node.guards {
                if alive & g.mask != 0
                    && (!g.strict || run.fresh)
                    && a.conditions[g.var as usize]
                        .as_ref()
                        .is_none_or(|c| c.test(&env))
                {
                    alive &= !g.mask;
                    if self.trace.is_some() && !seed {
                        let (r, var) = (run.start_pos, self.var_name(g.var));
                        self.note(|o| Note::Negated { run: r + o, var });
                    }
                }
            }
            let mut moved = false;
            for (i, e) in node.entries.iter().enumerate() {
                let Entry::Consume {
                    var,
                    contiguity,
                    target,
                    ..
                } = e
                else {
                    continue;
                };
                if alive & (1 << i) == 0 {
                    continue;
                }
                if !a.conditions[*var as usize]
                    .as_ref()
                    .is_none_or(|c| c.test(&env))
                {
                    if self.trace.is_some() && !seed {
                        let names = crate::compiler::Names {
                            fields: &a.fields.paths,
                            vars: &a.vars,
                        };
                        let why = a.conditions[*var as usize]
                            .as_ref()
                            .map(|c| c.explain(&names, &env))
                            .unwrap_or_default();
                        let (r, var) = (run.start_pos, self.var_name(*var));
                        self.note(|o| Note::Rejected {
                            run: r + o,
                            var,
                            why,
                        });
                    }
                    continue;
                }
                let bindings = run.bindings.with(Binding {
                    var: *var,
                    pos,
                    event: BoundEvent::of(ev),
                });
                let taken = Run {
                    node: *target,
                    alive: a.nodes[*target as usize].full_mask(),
                    fresh: true,
                    start_pos: run.start_pos,
                    start_time: run.start_time,
                    last_time: ev.time,
                    bindings,
                };
                if seed {
                    self.stats.runs_started += 1;
                }
                if self.trace.is_some() {
                    let (r, v) = (run.start_pos, self.var_name(*var));
                    self.note(|o| match seed {
                        true => Note::Started { run: r + o, var: v },
                        false => Note::Advanced { run: r + o, var: v },
                    });
                }
                self.place(taken, next, floor);
                if *contiguity != Contiguity::Any {
                    moved = true;
                    break;
                }
            }
            if moved || seed {
                return;
            }
        }
        let before = run.alive;
        run.alive = alive & !node.strict_mask;
        run.fresh = false;
        if self.trace.is_some() {
            let r = run.start_pos;
            if before & node.strict_mask & alive != 0 {
                self.note(|o| Note::StrictBroken { run: r + o });
            }
            if run.alive == 0 {
                self.note(|o| Note::Ended { run: r + o });
            }
        }
        if run.alive == 0 {
            return;
        }
        self.place(run, next, floor);
    }

    /// Keeps a run waiting, or accepts it.
    fn place(&mut self, run: Run, next: &mut Vec<Run>, floor: &mut u64) {
        if run.start_pos < *floor {
            return;
        }
        match self.settle(run) {
            Settle::Wait(run) => {
                if let Some(older) = self.dominating(&run, next) {
                    let (r, by) = (run.start_pos, older);
                    self.note(|o| Note::Dominated {
                        run: r + o,
                        by: by + o,
                    });
                    return;
                }
                if next.capacity() == 0 {
                    next.reserve_exact(1);
                }
                next.push(run);
            }
            Settle::Accept(run) => {
                let f = self.emit_match(&run, None);
                let r = run.start_pos;
                self.note(|o| Note::Matched { run: r + o });
                if f > *floor {
                    *floor = f;
                    self.floor_run = r;
                    if self.trace.is_some() {
                        for p in next.iter().filter(|p| p.start_pos < f) {
                            let dropped = p.start_pos;
                            if let Some(t) = self.trace.as_deref_mut() {
                                let o = t.offset;
                                t.trace.notes.push(Note::Pruned {
                                    run: dropped + o,
                                    after: r + o,
                                });
                            }
                        }
                    }
                    next.retain(|r| r.start_pos >= f);
                }
            }
        }
    }

    /// The start of an older run, already placed, that makes `run` dead
    /// weight (see [`crate::compiler`]'s `dominance`): same state, both took
    /// the current event, at a node sure to match.
    fn dominating(&self, run: &Run, placed: &[Run]) -> Option<u64> {
        if !self.a.dominated[run.node as usize] {
            return None;
        }
        let took = run.bindings.last()?.pos;
        placed
            .iter()
            .find(|o| {
                o.node == run.node
                    && o.alive == run.alive
                    && o.fresh == run.fresh
                    && o.start_pos < run.start_pos
                    && o.bindings.last().is_some_and(|b| b.pos == took)
            })
            .map(|o| o.start_pos)
    }

    fn settle(&self, run: Run) -> Settle {
        let node = &self.a.nodes[run.node as usize];
        let Some(ai) = node.accept else {
            return Settle::Wait(run);
        };
        let ready = run.alive & (1 << ai) != 0
            && !node.accept_at_expiry
            && !(node.accept_after_next && run.fresh)
            && run.alive & node.before_accept_mask == 0;
        if ready {
            Settle::Accept(run)
        } else {
            Settle::Wait(run)
        }
    }

    /// Emits a match and returns the skip floor it sets.
    fn emit_match(&mut self, run: &Run, end: Option<i64>) -> u64 {
        let a = self.a;
        self.stats.matches += 1;
        let end = end.unwrap_or(run.last_time);
        self.out.push(alert::build(
            a,
            AlertKind::Match,
            self.key,
            &run.bindings,
            (run.start_time, end),
            self.lim.include_events,
            (self.history, end),
        ));
        let first_pos = |v| {
            let of_v = run.bindings.newest_first().filter(|b| b.var == v);
            of_v.last().map(|b| b.pos)
        };
        let last_pos = |v| {
            run.bindings
                .newest_first()
                .find(|b| b.var == v)
                .map(|b| b.pos)
        };
        let last = run.bindings.last().map_or(run.start_pos, |b| b.pos);
        match a.skip {
            SkipPlan::NoSkip => 0,
            SkipPlan::ToNext => run.start_pos + 1,
            SkipPlan::PastLast => last + 1,
            SkipPlan::ToFirst(v) => first_pos(v).unwrap_or(run.start_pos + 1),
            SkipPlan::ToLast(v) => last_pos(v).unwrap_or(run.start_pos + 1),
        }
    }

    /// Ends the runs whose deadline is at or before `now`.
    fn expire(&mut self, runs: &mut Vec<Run>, now: i64) {
        if !runs.iter().any(|r| deadline(self.a, r) <= now) {
            return;
        }
        let old = std::mem::take(runs);
        let mut floor = 0u64;
        let mut keep = Vec::with_capacity(old.len());
        for run in old {
            if run.start_pos < floor {
                continue;
            }
            let d = deadline(self.a, &run);
            if d > now {
                keep.push(run);
                continue;
            }
            self.stats.runs_expired += 1;
            let node = &self.a.nodes[run.node as usize];
            if self.trace.is_some() {
                // The end of input expires everything at the end of time.
                let (r, by) = (run.start_pos, (now < i64::MAX).then_some(now - d));
                let accepts = node.accept.is_some_and(|ai| run.alive & (1 << ai) != 0);
                let timeout_alert = !accepts && self.a.on_timeout.is_some();
                self.note(|o| Note::Expired {
                    run: r + o,
                    by_ms: by,
                    timeout_alert,
                });
                if accepts {
                    self.note(|o| Note::Matched { run: r + o });
                }
            }
            if node.accept.is_some_and(|ai| run.alive & (1 << ai) != 0) {
                // A greedy tail or an absence: the window closing completes it.
                let end = node.accept_at_expiry.then_some(d);
                let f = self.emit_match(&run, end);
                if f > floor {
                    floor = f;
                    keep.retain(|r: &Run| r.start_pos >= f);
                }
            } else if self.a.on_timeout.is_some() {
                self.stats.timeouts += 1;
                self.out.push(alert::build(
                    self.a,
                    AlertKind::Timeout,
                    self.key,
                    &run.bindings,
                    (run.start_time, run.last_time),
                    self.lim.include_events,
                    // History as of the window's close.
                    (self.history, d),
                ));
            }
        }
        *runs = keep;
    }
}
