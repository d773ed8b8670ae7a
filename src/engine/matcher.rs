//! Runs: the per-key state of one pattern, and how an event moves it.
//!
//! A [`Run`] is a partial match: the wait point ([`crate::compiler::Node`]) it is at, which of
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

use rustc_hash::FxHashSet;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::compiler::Automaton;
use crate::event::{Event, Key};
use crate::history::KeyHistory;

use super::alert::Alert;
use super::history_slot::HistorySlot;
use super::key_map::{prefetch_span, KeyMap, Slot};
use super::timers::Timers;

mod conditions;
mod run;
mod step;
#[cfg(test)]
mod tests;

use super::trace::{Note, Trace};
use conditions::{can_start, start_refusals, taken_by_any};
pub use run::Run;
use step::{deadline, Step};

/// A key's runs, oldest first. The first is held inline in the key's
/// entry: most waiting keys hold one run, and a list of their own cost
/// each of them a 64-byte allocation (see BENCHMARKS.md, "Memory per key").
pub(super) type RunList = SmallVec<[Run; 1]>;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyRuns<H: HistorySlot = Option<KeyHistory>> {
    runs: RunList,
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
/// `scheduled` deadline ([`Matcher::rebuild_timers`]), and the keys due at
/// one deadline fire in key order either way (not in slot order, which a
/// restored map does not keep), so a restored matcher fires exactly as the
/// saved one would have.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Matcher<H: HistorySlot = Option<KeyHistory>> {
    keys: KeyMap<KeyRuns<H>>,
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
                None => {
                    self.keys.remove(&k);
                }
            }
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
        for (_, k, ks) in from.keys.iter() {
            let Some(h) = ks.history.get() else { continue };
            let carried = h.carried(&old.history, &new.history);
            let (_, entry) = self.keys.get_or_insert_with(k, KeyRuns::default);
            entry.history.set(Some(carried));
        }
    }

    /// The same state in another kind of slot (keys that held only
    /// history go when the new slot holds none).
    pub fn into_slot<G: HistorySlot>(self) -> Matcher<G> {
        let keys: KeyMap<KeyRuns<G>> = self
            .keys
            .into_entries()
            .map(|(k, ks)| (k, ks.into_slot::<G>()))
            .filter(|(_, ks)| !ks.runs.is_empty() || !ks.history.is_none())
            .collect();
        let mut m = Matcher {
            keys,
            timers: Timers::default(),
            stats: self.stats,
            changed: self.changed,
            trace: self.trace,
            sweep_at: self.sweep_at,
        };
        // The timers name slots, which the new map numbers anew.
        m.rebuild_timers();
        m
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
            .filter_map(|(s, _, ks)| Some((ks.scheduled.get()?, s)))
            .collect();
    }

    /// Starts fetching the entry of `key`, whose event comes soon.
    #[inline]
    pub fn prefetch(&self, key: &Key) {
        self.keys.prefetch(key);
    }

    /// Starts fetching where the lookup of `key` begins, for an event
    /// that comes after those [`Matcher::prefetch`] is asked about.
    #[inline]
    pub fn prefetch_index(&self, key: &Key) {
        self.keys.prefetch_index(key);
    }

    /// Starts fetching the newest binding of `key`'s first run, for an
    /// event that comes before those [`Matcher::prefetch`] is asked
    /// about: its entry is in cache (or on its way), the binding is the
    /// next miss (a step or an expiry reads it) once the run holds more
    /// than the one it keeps inline.
    #[inline]
    pub fn prefetch_run(&self, key: &Key) {
        if self.keys.prefetching() {
            if let Some(s) = self.keys.guess_slot(key) {
                self.fetch_run(s);
            }
        }
    }

    /// The entry in slot `s` is in cache: fetches the first run's newest
    /// linked binding or, for runs that left the entry for a list of their
    /// own, that list (reading through it would wait for it).
    #[inline]
    fn fetch_run(&self, s: Slot) {
        let Some((_, ks)) = self.keys.at(s) else {
            return;
        };
        if ks.runs.spilled() {
            let size = ks.runs.len() * std::mem::size_of::<Run>();
            prefetch_span(ks.runs.as_ptr() as usize, size);
        } else if let Some((at, size)) = ks.runs.first().and_then(|r| r.bindings.newest_link()) {
            prefetch_span(at, size);
        }
    }

    /// For a timer due soon whose entry is in cache (or on its way): what
    /// firing it reads next, the run's binding and, should the key go,
    /// its index bucket.
    #[inline]
    fn prefetch_expiry(&self, s: Slot) {
        if let Some((key, _)) = self.keys.at(s).filter(|_| self.keys.prefetching()) {
            self.keys.prefetch_index(key);
            self.fetch_run(s);
        }
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
        let found = self.keys.slot_of(&ev.key);
        if !records && found.is_none() && (!lim.start_runs || !can_start(a, &ev, None)) {
            if traced {
                self.note_not_started(start_refusals(a, &ev, None));
            }
            return;
        }
        let (slot, ks) = self.keys.found_or_insert(found, &ev.key, KeyRuns::default);
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
            step::settle_runs(runs);
        }
        // Recorded after every condition saw the event: history excludes it.
        if let Some(h) = history.get_mut() {
            self.stats.history_evictions += h.record(&a.history, ev);
        }
        // As `reschedule`, on the entry at hand (one lookup per event). A
        // deadline that moved later is queued only when the old one fires
        // (then often behind the queue's back, into its heap): queuing it
        // now kept the heap out of the key curve but made the queue hold a
        // timer per event of a window for keys whose every event moves the
        // deadline (strict patterns on a busy key), where it now holds
        // about one per key; it measured no faster.
        let next = next_deadline(a, ks, lim);
        let push = match next {
            Next::At(d) if ks.scheduled.get().is_none_or(|s| d < s) => {
                ks.scheduled = Scheduled::at(d);
                Some(d)
            }
            _ => None,
        };
        self.settle(&ev.key, slot, next, push, lim);
    }

    /// Whether `ev` can be passed over: no variable of `a` takes it and
    /// that changes nothing ([`crate::compiler::Inner::unmatched_inert`]). Counted as
    /// an event seen. A traced key's events are all offered, for its notes.
    #[inline]
    pub fn passes_over(&mut self, a: &Automaton, ev: &Event) -> bool {
        if !a.unmatched_inert || self.trace.is_some() {
            return false;
        }
        let taken = taken_by_any(a, ev);
        self.stats.events += u64::from(!taken);
        !taken
    }

    /// After an event: lists the key as changed, drops it if it holds
    /// nothing, queues its new timer.
    fn settle(&mut self, key: &Key, slot: Slot, next: Next, push: Option<i64>, lim: Limits) {
        if lim.track_changes && !self.changed.contains(key) {
            self.changed.insert(key.clone());
        }
        if let Next::Gone = next {
            self.keys.remove_slot(slot);
        }
        if let Some(d) = push {
            self.timers.push(d, slot);
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
        while let Some(deadline) = self.timers.next_deadline().filter(|&d| d <= watermark) {
            // As for events (see `PatternState::release_ready`): the key of
            // a timer due soon is fetched now.
            if let Some(later) = self.timers.ahead(TIMERS_AHEAD) {
                self.keys.prefetch_slot(later);
            }
            if let Some(soon) = self.timers.ahead(TIMERS_AHEAD / 2) {
                self.prefetch_expiry(soon);
            }
            // Those that overtook the queue, in the same two stages.
            let [next, then] = self.timers.overtaking_soon();
            next.for_each(|s| self.prefetch_expiry(s));
            then.for_each(|s| self.keys.prefetch_slot(s));
            for slot in self.due_at(deadline) {
                self.fire_slot(a, slot, deadline, watermark, lim, out);
            }
        }
    }

    /// Takes the timers at `deadline` off the queue: the slots of the keys
    /// still waiting for it, in key order. A timer is stale when an
    /// earlier one superseded it, or its key has gone (and the slot may
    /// hold another key since); the entry's own deadline tells.
    fn due_at(&mut self, deadline: i64) -> SmallVec<[Slot; 4]> {
        let mut due: SmallVec<[Slot; 4]> = SmallVec::new();
        while self.timers.next_deadline() == Some(deadline) {
            let Some((_, slot)) = self.timers.pop() else {
                break;
            };
            let waits = self.keys.at(slot);
            if waits.is_some_and(|(_, ks)| ks.scheduled.get() == Some(deadline)) {
                due.push(slot);
            }
        }
        if due.len() > 1 {
            let keys = &self.keys;
            due.sort_unstable_by(|x, y| keys.at(*x).map(|e| e.0).cmp(&keys.at(*y).map(|e| e.0)));
            due.dedup();
        }
        due
    }

    /// Expires the runs of the key in `slot` whose deadline has passed.
    fn fire_slot(
        &mut self,
        a: &Automaton,
        slot: Slot,
        deadline: i64,
        watermark: i64,
        lim: Limits,
        out: &mut Vec<Alert>,
    ) {
        let Some((key, ks)) = self.keys.at_mut(slot) else {
            return;
        };
        if ks.scheduled.get() != Some(deadline) {
            return;
        }
        ks.scheduled = Scheduled::NONE;
        let traced = self.trace.as_ref().is_some_and(|t| t.trace.key == *key);
        let KeyRuns { runs, history, .. } = &mut *ks;
        let mut cx = Step {
            a,
            key,
            lim,
            out,
            stats: &mut self.stats,
            trace: self.trace.as_deref_mut().filter(|_| traced),
            floor_run: 0,
            history: history.get(),
        };
        cx.expire(runs, watermark);
        step::settle_runs(runs);
        self.reschedule(a, slot, lim);
    }

    /// Every change to a key's runs ends here (after an event, after a
    /// fired deadline), which makes it the one place to list changed keys.
    fn reschedule(&mut self, a: &Automaton, slot: Slot, lim: Limits) {
        let Some((key, ks)) = self.keys.at_mut(slot) else {
            return;
        };
        if lim.track_changes && !self.changed.contains(key) {
            self.changed.insert(key.clone());
        }
        let deadline = match next_deadline(a, ks, lim) {
            Next::Gone => {
                self.keys.remove_slot(slot);
                return;
            }
            Next::Idle => return,
            Next::At(d) => d,
        };
        if ks.scheduled.get().is_none_or(|s| deadline < s) {
            ks.scheduled = Scheduled::at(deadline);
            self.timers.push(deadline, slot);
        }
    }
}

/// How far ahead in the timer queue a key's entry is fetched.
const TIMERS_AHEAD: usize = 16;

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
