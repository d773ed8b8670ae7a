//! Saving and replacing an engine's state: whole [`Snapshot`]s, the
//! [`Changes`] since the last one (for checkpoints that write only the keys
//! that changed), and swapping the pattern set between two events, with
//! replaced versions dropped or drained.

use serde::{Deserialize, Serialize};

use super::matcher::KeyChange;
use super::{Engine, PatternState};
use crate::compiler::Automaton;

impl PatternState {
    /// Everything but the keys' runs: the reorder buffer and counters.
    fn without_keys(&self) -> PatternState {
        PatternState {
            buffer: self.buffer.clone(),
            matcher: self.matcher.without_keys(),
            late: self.late,
            rejected: self.rejected,
            shadow_alerts: self.shadow_alerts,
            draining: self.draining,
        }
    }
}

/// A whole engine's state, tagged with the patterns it belongs to.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Snapshot {
    patterns: Vec<(String, String, PatternState)>,
    /// The sources of draining versions, which the running pattern set no
    /// longer holds: a restore compiles them again.
    #[serde(default)]
    draining: Vec<DrainingSource>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct DrainingSource {
    source_hash: String,
    source: String,
    version: u32,
    shadow: bool,
}

/// What changed in an engine since its last snapshot or changes
/// ([`Engine::take_changes`]): per pattern, the runs of each key that
/// changed (or ended) and everything else whole (reorder buffer,
/// counters). Applied to the earlier [`Snapshot`], it gives the engine's
/// snapshot now: its size follows the keys that changed, not the state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Changes {
    patterns: Vec<PatternChanges>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct PatternChanges {
    name: String,
    source_hash: String,
    rest: PatternState,
    keys: Vec<KeyChange>,
}

impl Changes {
    /// Number of keys changed or ended.
    pub fn keys(&self) -> usize {
        self.patterns.iter().map(|p| p.keys.len()).sum()
    }
}

impl Snapshot {
    /// Brings this snapshot forward by `changes` taken after it. Refused
    /// when the changes name a pattern the snapshot does not hold (the
    /// pattern set changed in between, which takes a whole snapshot).
    pub fn apply(&mut self, changes: Changes) -> Result<(), String> {
        // Draining versions retired since: gone.
        let present: Vec<(String, String)> = changes
            .patterns
            .iter()
            .filter(|c| c.rest.draining)
            .map(|c| (c.name.clone(), c.source_hash.clone()))
            .collect();
        self.patterns
            .retain(|(n, h, st)| !st.draining || present.iter().any(|p| p.0 == *n && p.1 == *h));
        for c in changes.patterns {
            let Some((_, _, st)) = self.patterns.iter_mut().find(|(n, h, s)| {
                *n == c.name && *h == c.source_hash && s.draining == c.rest.draining
            }) else {
                return Err(format!(
                    "changes to pattern `{}` follow a snapshot without it",
                    c.name
                ));
            };
            let rest = c.rest;
            st.buffer = rest.buffer;
            st.late = rest.late;
            st.rejected = rest.rejected;
            st.shadow_alerts = rest.shadow_alerts;
            st.matcher
                .apply_changes(rest.matcher.stats().clone(), c.keys);
        }
        Ok(())
    }
}

impl Engine {
    /// Replaces the pattern set between two events. A pattern whose name
    /// and source are unchanged keeps its state (runs, buffered events,
    /// counters) even if its version or mode changed; a new or changed one
    /// starts afresh, its buffer at the watermark of the pattern it
    /// replaces. Returns the names that started afresh.
    pub fn swap_patterns(&mut self, automata: Vec<Automaton>) -> Vec<String> {
        self.swap_patterns_with(automata, |_| false)
    }

    /// [`Engine::swap_patterns`], where a changed pattern whose name
    /// `drain` accepts is replaced in drain mode: its old version keeps the
    /// runs it has (they complete or expire, their alerts carry the old
    /// version) and starts none, while the new version starts runs at
    /// events after the swap. The old version goes once its last run has
    /// ended ([`Engine::retire_drained`]). Versions already draining go on
    /// draining.
    pub fn swap_patterns_with(
        &mut self,
        automata: Vec<Automaton>,
        drain: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let mut old: Vec<(Automaton, PatternState)> = std::mem::take(&mut self.patterns);
        let mut draining: Vec<(Automaton, PatternState)> = Vec::new();
        let live_match = |o: &Automaton, st: &PatternState, a: &Automaton| {
            o.name == a.name && o.source_hash == a.source_hash && !st.draining
        };
        // Replaced versions with open runs, asked to drain, and those
        // draining already (unless the new set brings their source back).
        let mut i = 0;
        while i < old.len() {
            let (o, st) = &old[i];
            let back = automata.iter().any(|a| live_match(o, st, a));
            let replaced = automata.iter().any(|a| a.name == o.name) && !back;
            // Buffered events cannot start runs in a draining version.
            let open = st.matcher.active_runs() > 0;
            if (st.draining || (replaced && drain(&o.name))) && open && !back {
                let (o, mut st) = old.swap_remove(i);
                st.draining = true;
                draining.push((o, st));
            } else {
                i += 1;
            }
        }
        let all: Vec<Automaton> = automata
            .iter()
            .cloned()
            .chain(draining.iter().map(|(a, _)| a.clone()))
            .collect();
        let mut next = Engine::new(all, self.config);
        next.track_changes = self.track_changes;
        let mut fresh = Vec::new();
        let live = automata.len();
        for (a, st) in next.patterns.iter_mut().take(live) {
            let keep = old.iter().position(|(o, s)| {
                o.name == a.name && o.source_hash == a.source_hash && !s.draining
            });
            match keep {
                Some(i) => *st = old.swap_remove(i).1,
                None => {
                    let prev = old
                        .iter()
                        .chain(draining.iter())
                        .find(|(o, _)| o.name == a.name);
                    if let Some((o, prev)) = prev {
                        st.buffer.advance_to(prev.buffer.watermark());
                        st.matcher.adopt_history(&prev.matcher, o, a);
                    }
                    fresh.push(a.name.clone());
                }
            }
        }
        for ((_, st), (_, mut d)) in next.patterns.iter_mut().skip(live).zip(draining) {
            d.matcher.keep_only_runs();
            *st = d;
        }
        *self = next;
        fresh
    }

    /// Removes the draining versions whose last run has ended; returns
    /// them (name, version).
    pub fn retire_drained(&mut self) -> Vec<(String, u32)> {
        let mut gone = Vec::new();
        let mut i = 0;
        while i < self.patterns.len() {
            let (a, st) = &self.patterns[i];
            if st.draining && st.matcher.active_keys() == 0 {
                gone.push((a.name.clone(), a.version));
                self.patterns.remove(i);
                self.fields.remove(i);
            } else {
                i += 1;
            }
        }
        gone
    }

    /// The changes since the last call, [`Engine::forget_changes`] or
    /// restore (with [`Engine::track_changes`] on), and forgets them.
    pub fn take_changes(&mut self) -> Changes {
        let patterns = self
            .patterns
            .iter_mut()
            .map(|(a, st)| PatternChanges {
                name: a.name.clone(),
                source_hash: a.source_hash.clone(),
                keys: st.matcher.take_changes(),
                rest: st.without_keys(),
            })
            .collect();
        Changes { patterns }
    }

    /// Forgets the changed keys: a whole snapshot was taken.
    pub fn forget_changes(&mut self) {
        for (_, st) in &mut self.patterns {
            st.matcher.forget_changes();
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            patterns: self
                .patterns
                .iter()
                .map(|(a, st)| (a.name.clone(), a.source_hash.clone(), st.clone()))
                .collect(),
            draining: self
                .patterns
                .iter()
                .filter(|(_, st)| st.draining)
                .map(|(a, _)| DrainingSource {
                    source_hash: a.source_hash.clone(),
                    source: a.source.clone(),
                    version: a.version,
                    shadow: a.shadow,
                })
                .collect(),
        }
    }

    /// Restores state saved by [`Engine::snapshot`]. Patterns whose source
    /// changed since the snapshot start afresh; the names of those are
    /// returned.
    pub fn restore(&mut self, snap: Snapshot) -> Vec<String> {
        let mut fresh = Vec::new();
        for (a, st) in &mut self.patterns {
            match snap
                .patterns
                .iter()
                .find(|(n, h, s)| *n == a.name && *h == a.source_hash && !s.draining)
            {
                Some((_, _, saved)) => {
                    *st = saved.clone();
                    st.matcher.fit(a);
                    st.matcher.rebuild_timers();
                }
                None => fresh.push(a.name.clone()),
            }
        }
        self.restore_draining(&snap);
        self.forget_changes();
        fresh
    }

    /// Brings back the versions that were draining when `snap` was taken,
    /// compiled again from their saved sources.
    fn restore_draining(&mut self, snap: &Snapshot) {
        let drained: Vec<(Automaton, PatternState)> = snap
            .patterns
            .iter()
            .filter(|(_, _, s)| s.draining)
            .filter_map(|(name, hash, s)| {
                let src = snap.draining.iter().find(|d| d.source_hash == *hash)?;
                let compiled = crate::compiler::compile_source(name, &src.source).ok()?;
                let a = compiled.into_iter().find(|a| a.name == *name)?;
                let mut st = s.clone();
                st.matcher.fit(&a);
                st.matcher.rebuild_timers();
                Some((a.with_meta(src.version, src.shadow), st))
            })
            .collect();
        if drained.is_empty() {
            return;
        }
        let live = std::mem::take(&mut self.patterns);
        let all = live
            .iter()
            .chain(&drained)
            .map(|(a, _)| a.clone())
            .collect();
        let mut next = Engine::new(all, self.config);
        next.track_changes = self.track_changes;
        for ((_, st), (_, s)) in next
            .patterns
            .iter_mut()
            .zip(live.into_iter().chain(drained))
        {
            *st = s;
        }
        *self = next;
    }
}
