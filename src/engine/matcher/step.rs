//! How one key's runs take an event or meet a deadline: offering the event
//! to every run (taking, skipping, forking, dying), placing the runs that
//! moved (accepting, or dropping a dominated one), emitting matches with
//! the skip floor they set, and expiring runs whose window closed.

use crate::compiler::{
    Automaton, Binding, Bindings, BoundEvent, Entry, Env, Node, SkipPlan, VarId,
};
use crate::dsl::ast::Contiguity;
use crate::event::{Event, Key};
use crate::history::KeyHistory;

use super::super::alert::{self, Alert, AlertKind};
use super::super::trace::Note;
use super::{Limits, MatchStats, Run, RunList, Traced};

/// When a run expires: its window's or its max gap's end, the earlier.
pub(super) fn deadline(a: &Automaton, r: &Run) -> i64 {
    let w = a
        .within
        .map_or(i64::MAX, |w| r.start_time().saturating_add(w));
    let g = a
        .max_gap
        .map_or(i64::MAX, |g| r.last_time.saturating_add(g));
    w.min(g)
}

/// Whether a run at `node` with entries `alive` accepts now.
fn ready(node: &Node, alive: u64, fresh: bool) -> bool {
    node.accept.is_some_and(|ai| {
        alive & (1 << ai) != 0
            && !node.accept_at_expiry
            && !(node.accept_after_next && fresh)
            && alive & node.before_accept_mask == 0
    })
}

/// What a run's conditions read when it is offered `ev` (`start`: the
/// run's start, or the event's for a new run).
fn env<'e>(
    key: &'e Key,
    history: Option<&'e KeyHistory>,
    run: &'e Run,
    ev: &'e Event,
    start: i64,
) -> Env<'e> {
    Env {
        current: Some(ev),
        bindings: &run.bindings,
        key: Some(key),
        start,
        end: ev.time,
        history,
        history_at: ev.time,
    }
}

/// One key's runs meeting one event or one deadline.
pub(super) struct Step<'a> {
    pub(super) a: &'a Automaton,
    pub(super) key: &'a Key,
    pub(super) lim: Limits,
    pub(super) out: &'a mut Vec<Alert>,
    pub(super) stats: &'a mut MatchStats,
    /// The trace, when this key is the one traced.
    pub(super) trace: Option<&'a mut Traced>,
    /// The run whose match set the current skip floor (for the trace).
    pub(super) floor_run: u64,
    /// The key's history before the current event.
    pub(super) history: Option<&'a KeyHistory>,
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
    pub(super) fn offer(&mut self, runs: &mut RunList, ev: &Event, pos: u64) {
        if let [run] = runs.as_mut_slice() {
            if self.trace.is_none() && self.passes_by(run, ev) {
                // What `step` would leave of it, without moving it.
                run.fresh = false;
                return;
            }
        }
        let old = std::mem::take(runs);
        // Sized for the runs the key has: a key's first run is held inline,
        // so nothing is allocated for a key whose one run stays one. Room
        // for a new run as well (what this was sized for before) cost such
        // a key an allocation and a free for every event, and kept its
        // runs out of the entry, a cache miss more per event (window curve
        // in BENCHMARKS.md); the list grows when a run is really added.
        let mut next = RunList::with_capacity(old.len());
        let mut floor = 0u64;
        for run in old {
            if run.start_pos() < floor {
                let (r, after) = (run.start_pos(), self.floor_run);
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
                last_time: ev.time,
                bindings: Bindings::new(),
            };
            self.step(seed, ev, pos, &mut next, &mut floor);
        }
        *runs = next;
    }

    /// Whether `ev` passes a key's one run by and starts nothing: no
    /// entry takes it, no negation matches it, no strict entry waits (it
    /// would die), and the run, no longer fresh, still waits. Then all a
    /// step changes is the run's freshness: the common case of a run
    /// waiting through a long window, which every event of its key meets.
    /// Decided on the run in place; a step moves it three times and makes
    /// and tests a new run as well (the window curve in BENCHMARKS.md).
    /// Not for a key with more runs: an older one could make it dead
    /// weight ([`Step::dominating`]), which a step decides.
    fn passes_by(&self, run: &Run, ev: &Event) -> bool {
        let a = self.a;
        let node = &a.nodes[run.node as usize];
        if run.alive & node.strict_mask != 0 || ready(node, run.alive, false) {
            return false;
        }
        let env = env(self.key, self.history, run, ev, run.start_time());
        let holds = |var: VarId| {
            a.conditions[var as usize]
                .as_ref()
                .is_none_or(|c| c.test(&env))
        };
        let negated = node
            .guards
            .iter()
            .any(|g| run.alive & g.mask != 0 && (!g.strict || run.fresh) && holds(g.var));
        let taken = node.entries.iter().enumerate().any(|(i, e)| {
            matches!(e, Entry::Consume { var, .. } if run.alive & (1 << i) != 0 && holds(*var))
        });
        let starts = self.lim.start_runs && super::can_start(a, ev, self.history);
        !(negated || taken || starts)
    }

    fn step(&mut self, mut run: Run, ev: &Event, pos: u64, next: &mut RunList, floor: &mut u64) {
        let a = self.a;
        let node = &a.nodes[run.node as usize];
        let seed = run.bindings.is_empty();
        // A seed starts at this event; a run, at its first binding.
        let (start_pos, start_time) = match seed {
            true => (pos, ev.time),
            false => (run.start_pos(), run.start_time()),
        };
        let mut alive = run.alive;
        {
            let env = env(self.key, self.history, &run, ev, start_time);
            for g in &node.guards {
                if alive & g.mask != 0
                    && (!g.strict || run.fresh)
                    && a.conditions[g.var as usize]
                        .as_ref()
                        .is_none_or(|c| c.test(&env))
                {
                    alive &= !g.mask;
                    if self.trace.is_some() && !seed {
                        let (r, var) = (start_pos, self.var_name(g.var));
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
                        let (r, var) = (start_pos, self.var_name(*var));
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
                    event: BoundEvent::of(ev, a.reads_fields[*var as usize]),
                });
                let taken = Run {
                    node: *target,
                    alive: a.nodes[*target as usize].full_mask(),
                    fresh: true,
                    last_time: ev.time,
                    bindings,
                };
                if seed {
                    self.stats.runs_started += 1;
                }
                if self.trace.is_some() {
                    let (r, v) = (start_pos, self.var_name(*var));
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
            let r = start_pos;
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
    fn place(&mut self, run: Run, next: &mut RunList, floor: &mut u64) {
        if run.start_pos() < *floor {
            return;
        }
        match self.settle(run) {
            Settle::Wait(run) => {
                if let Some(older) = self.dominating(&run, next) {
                    let (r, by) = (run.start_pos(), older);
                    self.note(|o| Note::Dominated {
                        run: r + o,
                        by: by + o,
                    });
                    return;
                }
                next.push(run);
            }
            Settle::Accept(run) => {
                let f = self.emit_match(&run, None);
                let r = run.start_pos();
                self.note(|o| Note::Matched { run: r + o });
                if f > *floor {
                    *floor = f;
                    self.floor_run = r;
                    if self.trace.is_some() {
                        for p in next.iter().filter(|p| p.start_pos() < f) {
                            let dropped = p.start_pos();
                            if let Some(t) = self.trace.as_deref_mut() {
                                let o = t.offset;
                                t.trace.notes.push(Note::Pruned {
                                    run: dropped + o,
                                    after: r + o,
                                });
                            }
                        }
                    }
                    next.retain(|r| r.start_pos() >= f);
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
                    && o.start_pos() < run.start_pos()
                    && o.bindings.last().is_some_and(|b| b.pos == took)
            })
            .map(|o| o.start_pos())
    }

    fn settle(&self, run: Run) -> Settle {
        match ready(&self.a.nodes[run.node as usize], run.alive, run.fresh) {
            true => Settle::Accept(run),
            false => Settle::Wait(run),
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
            (run.start_time(), end),
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
        let last = run.bindings.last().map_or(run.start_pos(), |b| b.pos);
        match a.skip {
            SkipPlan::NoSkip => 0,
            SkipPlan::ToNext => run.start_pos() + 1,
            SkipPlan::PastLast => last + 1,
            SkipPlan::ToFirst(v) => first_pos(v).unwrap_or(run.start_pos() + 1),
            SkipPlan::ToLast(v) => last_pos(v).unwrap_or(run.start_pos() + 1),
        }
    }

    /// Ends the runs whose deadline is at or before `now`.
    pub(super) fn expire(&mut self, runs: &mut RunList, now: i64) {
        if !runs.iter().any(|r| deadline(self.a, r) <= now) {
            return;
        }
        let old = std::mem::take(runs);
        let mut floor = 0u64;
        let mut keep = RunList::with_capacity(old.len());
        for run in old {
            if run.start_pos() < floor {
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
                let (r, by) = (run.start_pos(), (now < i64::MAX).then_some(now - d));
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
                    keep.retain(|r: &mut Run| r.start_pos() >= f);
                }
            } else if self.a.on_timeout.is_some() {
                self.stats.timeouts += 1;
                self.out.push(alert::build(
                    self.a,
                    AlertKind::Timeout,
                    self.key,
                    &run.bindings,
                    (run.start_time(), run.last_time),
                    self.lim.include_events,
                    // History as of the window's close.
                    (self.history, d),
                ));
            }
        }
        *runs = keep;
    }
}

/// Moves a key's runs back into its entry once they fit there again: a
/// list left on the heap costs the key a cache miss on every later event
/// (the key curve's keys mostly held one run, many from a list grown for
/// two at one event), and its memory.
#[inline]
pub(super) fn settle_runs(runs: &mut RunList) {
    if runs.spilled() && runs.len() <= runs.inline_size() {
        runs.shrink_to_fit();
    }
}
