//! A pattern's matcher, its keys' entries shaped by whether the pattern
//! keeps per-key history (see [`super::history_slot`]).
//!
//! Saved the same either way (a key without history has no `history`
//! field), and always read back as the kind with a history slot; a restore
//! fits it to its pattern ([`PatternMatcher::fit`]).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::alert::Alert;
use super::history_slot::NoHistory;
use super::matcher::{KeyChange, Limits, MatchStats, Matcher};
use super::trace::Note;
use crate::compiler::Automaton;
use crate::event::{Event, Key};
use crate::history::KeyHistory;

/// How many events apart the stages of [`PatternMatcher::fetch_ahead`]
/// are: enough for a fetch to arrive (several hundred nanoseconds at the
/// slowest events), few enough for what it fetched to stay in cache.
const PREFETCH_AHEAD: usize = 8;

#[derive(Clone, Debug)]
pub enum PatternMatcher {
    /// Keys without a history slot: 128-byte entries (with the key).
    Plain(Matcher<NoHistory>),
    /// Keys with their history inline.
    Tracked(Matcher<Option<KeyHistory>>),
}

/// The same call on either kind.
macro_rules! each {
    ($self:expr, $m:ident => $e:expr) => {
        match $self {
            PatternMatcher::Plain($m) => $e,
            PatternMatcher::Tracked($m) => $e,
        }
    };
}

impl PatternMatcher {
    /// An empty matcher shaped for `a`.
    pub fn new(a: &Automaton) -> PatternMatcher {
        match a.history.is_empty() {
            true => PatternMatcher::Plain(Matcher::default()),
            false => PatternMatcher::Tracked(Matcher::default()),
        }
    }

    /// Reshapes a restored matcher for `a` (a saved one reads back with
    /// history slots).
    pub fn fit(&mut self, a: &Automaton) {
        let placeholder = PatternMatcher::Plain(Matcher::default());
        *self = match (std::mem::replace(self, placeholder), a.history.is_empty()) {
            (PatternMatcher::Tracked(m), true) => PatternMatcher::Plain(m.into_slot()),
            (PatternMatcher::Plain(m), false) => PatternMatcher::Tracked(m.into_slot()),
            (same, _) => same,
        };
    }

    #[inline]
    pub fn on_event(&mut self, a: &Automaton, ev: Event, lim: Limits, out: &mut Vec<Alert>) {
        each!(self, m => m.on_event(a, ev, lim, out))
    }

    /// See [`Matcher::passes_over`].
    #[inline(never)]
    pub fn passes_over(&mut self, a: &Automaton, ev: &Event) -> bool {
        each!(self, m => m.passes_over(a, ev))
    }

    #[inline]
    pub fn advance(&mut self, a: &Automaton, watermark: i64, lim: Limits, out: &mut Vec<Alert>) {
        each!(self, m => m.advance(a, watermark, lim, out))
    }

    pub fn stats(&self) -> &MatchStats {
        each!(self, m => &m.stats)
    }

    pub fn active_keys(&self) -> usize {
        each!(self, m => m.active_keys())
    }

    pub fn active_runs(&self) -> usize {
        each!(self, m => m.active_runs())
    }

    pub fn take_changes(&mut self) -> Vec<KeyChange> {
        each!(self, m => m.take_changes())
    }

    pub fn forget_changes(&mut self) {
        each!(self, m => m.forget_changes())
    }

    pub fn apply_changes(&mut self, stats: MatchStats, changes: Vec<KeyChange>) {
        each!(self, m => m.apply_changes(stats, changes))
    }

    pub fn trace(&mut self, key: Key) {
        each!(self, m => m.trace(key))
    }

    pub fn take_notes(&mut self) -> Vec<Note> {
        each!(self, m => m.take_notes())
    }

    pub fn without_keys(&self) -> PatternMatcher {
        match self {
            PatternMatcher::Plain(m) => PatternMatcher::Plain(m.without_keys()),
            PatternMatcher::Tracked(m) => PatternMatcher::Tracked(m.without_keys()),
        }
    }

    pub fn adopt_history(&mut self, from: &PatternMatcher, old: &Automaton, new: &Automaton) {
        each!(self, m => each!(from, f => m.adopt_history(f, old, new)))
    }

    pub fn keep_only_runs(&mut self) {
        each!(self, m => m.keep_only_runs())
    }

    /// Starts fetching what the events a few places behind the one the
    /// matcher is about to take will read (`ahead(n)`: the event `n`
    /// places back), so that it is in cache when each event comes. Each
    /// stage needs what the one before fetched: the index bucket of the
    /// event 3 × [`PREFETCH_AHEAD`] back; the entry of the event twice
    /// as far back as `PREFETCH_AHEAD`, whose bucket came in meanwhile; the
    /// first run's binding of the event `PREFETCH_AHEAD` back, whose entry
    /// came in.
    #[inline(always)]
    pub fn fetch_ahead<'e>(&self, ahead: impl Fn(usize) -> Option<&'e Event>) {
        each!(self, m => {
            if let Some(later) = ahead(3 * PREFETCH_AHEAD) {
                m.prefetch_index(&later.key);
            }
            if let Some(next) = ahead(2 * PREFETCH_AHEAD) {
                m.prefetch(&next.key);
            }
            if let Some(soon) = ahead(PREFETCH_AHEAD) {
                m.prefetch_run(&soon.key);
            }
        })
    }

    pub fn rebuild_timers(&mut self) {
        each!(self, m => m.rebuild_timers())
    }
}

impl Serialize for PatternMatcher {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        each!(self, m => m.serialize(s))
    }
}

impl<'de> Deserialize<'de> for PatternMatcher {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<PatternMatcher, D::Error> {
        Matcher::deserialize(d).map(PatternMatcher::Tracked)
    }
}
