//! Sequence → automaton.
//!
//! Two steps. First a Thompson construction turns the `match` sequence into
//! [`State`]s: `Consume` (bind one event to a variable), `Split` (two ways on,
//! the first preferred), `Neg` (no event matching a variable here) and
//! `Accept`. Quantifiers are unrolled (`b{2,4}` is two required copies and two
//! optional ones; `b{2,}` two copies and a loop), so a state never needs a
//! counter and a run's state is just "where it waits".
//!
//! Second, each place a run can wait is summarised as a [`Node`]: the
//! epsilon-closure of a state, listed in priority order. A node's entries are
//! the steps the run may take next (each with its own contiguity), and
//! possibly `Accept`; its guards are the negations crossed to reach them. A
//! run holds a node id and a bit mask of entries still alive, so everything
//! that varies per run is plain data.
//!
//! Priority encodes greedy and reluctant quantifiers: a greedy loop lists its
//! loop step before what follows it, a reluctant one after. The engine offers
//! an event to the entries in order and the first that takes it wins (for
//! `then any`, every entry that takes it forks a new run).

use std::collections::HashMap;

use crate::dsl::ast::{Contiguity, Element, Quantifier, Sequence};

use super::expr::VarId;

pub type StateId = u32;
pub type NodeId = u32;

/// The most entries a node may have (they are tracked in a `u64`).
pub const MAX_ENTRIES: usize = 64;

#[derive(Clone, Debug)]
pub enum State {
    Consume {
        var: VarId,
        contiguity: Contiguity,
        next: StateId,
    },
    Split(StateId, StateId),
    Neg {
        var: VarId,
        strict: bool,
        next: StateId,
    },
    Accept,
}

#[derive(Clone, Debug)]
pub enum Entry {
    Consume {
        var: VarId,
        contiguity: Contiguity,
        state: StateId,
        target: NodeId,
    },
    Accept,
}

/// A negation guarding some entries of a node.
#[derive(Clone, Debug)]
pub struct Guard {
    pub var: VarId,
    /// `next not x`: only the first event after the run arrives here.
    pub strict: bool,
    /// The entries this guard removes when an event matches it.
    pub mask: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Node {
    /// The state whose closure this is.
    pub state: StateId,
    pub entries: Vec<Entry>,
    pub guards: Vec<Guard>,
    /// Entries that wait with strict contiguity: they die on an event they
    /// do not take.
    pub strict_mask: u64,
    /// All consume entries.
    pub consume_mask: u64,
    /// Index of the `Accept` entry, if any.
    pub accept: Option<usize>,
    /// Consume entries preferred over accepting (a greedy tail).
    pub before_accept_mask: u64,
    /// `Accept` sits behind `then not x`: it is reached only when the window
    /// closes (absence).
    pub accept_at_expiry: bool,
    /// `Accept` sits behind `next not x`: it is reached after one more event
    /// (or when the window closes).
    pub accept_after_next: bool,
}

impl Node {
    /// Every entry alive.
    pub fn full_mask(&self) -> u64 {
        match self.entries.len() {
            MAX_ENTRIES => u64::MAX,
            n => (1u64 << n) - 1,
        }
    }
}

pub struct Built {
    pub states: Vec<State>,
    pub nodes: Vec<Node>,
    pub start: NodeId,
}

/// Builds states and nodes. `var_of` maps a step name to its variable.
pub fn build(seq: &Sequence, var_of: &dyn Fn(&str) -> VarId) -> Result<Built, String> {
    let mut b = Builder {
        states: vec![State::Accept],
        var_of,
    };
    let start = b.sequence(seq, Contiguity::Relaxed, 0);
    let mut nodes = Nodes {
        states: &b.states,
        nodes: Vec::new(),
        by_state: HashMap::new(),
        pending: Vec::new(),
    };
    let start_node = nodes.intern(start);
    while let Some((id, state)) = nodes.pending.pop() {
        let node = nodes.closure(state)?;
        nodes.nodes[id as usize] = node;
    }
    let nodes = nodes.nodes;
    Ok(Built {
        states: b.states,
        nodes,
        start: start_node,
    })
}

struct Builder<'a> {
    states: Vec<State>,
    var_of: &'a dyn Fn(&str) -> VarId,
}

impl Builder<'_> {
    fn push(&mut self, s: State) -> StateId {
        self.states.push(s);
        (self.states.len() - 1) as StateId
    }

    fn split(&mut self, prefer_first: bool, a: StateId, b: StateId) -> StateId {
        if prefer_first {
            self.push(State::Split(a, b))
        } else {
            self.push(State::Split(b, a))
        }
    }

    /// Builds `seq` so that it continues at `next`; `entry` is the
    /// contiguity of its first step.
    fn sequence(&mut self, seq: &Sequence, entry: Contiguity, next: StateId) -> StateId {
        let mut outs: Vec<StateId> = seq
            .branches
            .iter()
            .map(|br| {
                let mut cur = next;
                for item in br.items.iter().rev() {
                    let contiguity = item.connector.unwrap_or(entry);
                    cur = self.element(&item.element, contiguity, cur);
                }
                cur
            })
            .collect();
        let mut cur = outs.pop().expect("a sequence has a branch");
        while let Some(prev) = outs.pop() {
            cur = self.push(State::Split(prev, cur));
        }
        cur
    }

    fn element(&mut self, e: &Element, contiguity: Contiguity, next: StateId) -> StateId {
        match e {
            Element::Step { var, quantifier } => {
                let var = (self.var_of)(&var.name);
                self.repeat(quantifier.as_ref(), contiguity, next, &mut |b, c, n| {
                    b.push(State::Consume {
                        var,
                        contiguity: c,
                        next: n,
                    })
                })
            }
            Element::Not { var } => {
                let var = (self.var_of)(&var.name);
                self.push(State::Neg {
                    var,
                    strict: contiguity == Contiguity::Strict,
                    next,
                })
            }
            Element::Group {
                sequence,
                quantifier,
            } => self.repeat(quantifier.as_ref(), contiguity, next, &mut |b, c, n| {
                b.sequence(sequence, c, n)
            }),
        }
    }

    /// Unrolls a quantifier around `body`. Copy 0 enters with the step's
    /// connector; later copies with the quantifier's inner contiguity.
    fn repeat(
        &mut self,
        q: Option<&Quantifier>,
        contiguity: Contiguity,
        next: StateId,
        body: &mut dyn FnMut(&mut Self, Contiguity, StateId) -> StateId,
    ) -> StateId {
        let Some(q) = q else {
            return body(self, contiguity, next);
        };
        let c = |i: u32| if i == 0 { contiguity } else { q.inner };
        let tail = match q.max {
            Some(max) => {
                let mut cur = next;
                for i in (q.min..max).rev() {
                    let take = body(self, c(i), cur);
                    cur = self.split(q.greedy, take, next);
                }
                cur
            }
            None => {
                let l = self.push(State::Accept); // placeholder, patched below
                let take = body(self, q.inner, l);
                self.states[l as usize] = if q.greedy {
                    State::Split(take, next)
                } else {
                    State::Split(next, take)
                };
                if q.min == 0 {
                    let first = body(self, contiguity, l);
                    self.split(q.greedy, first, next)
                } else {
                    l
                }
            }
        };
        let mut cur = tail;
        for i in (0..q.min).rev() {
            cur = body(self, c(i), cur);
        }
        cur
    }
}

struct Nodes<'a> {
    states: &'a [State],
    nodes: Vec<Node>,
    by_state: HashMap<StateId, NodeId>,
    pending: Vec<(NodeId, StateId)>,
}

impl Nodes<'_> {
    fn intern(&mut self, state: StateId) -> NodeId {
        if let Some(id) = self.by_state.get(&state) {
            return *id;
        }
        let id = self.nodes.len() as NodeId;
        self.nodes.push(Node::default());
        self.by_state.insert(state, id);
        self.pending.push((id, state));
        id
    }

    fn closure(&mut self, state: StateId) -> Result<Node, String> {
        let mut node = Node {
            state,
            ..Node::default()
        };
        let mut seen = vec![false; self.states.len()];
        let mut guards: Vec<(VarId, bool)> = Vec::new();
        let mut found: Vec<(StateId, Vec<(VarId, bool)>)> = Vec::new();
        walk(self.states, state, &mut seen, &mut guards, &mut found);
        if found.len() > MAX_ENTRIES {
            return Err(format!(
                "a run could wait at {} steps at once here (at most {MAX_ENTRIES})",
                found.len()
            ));
        }
        for (i, (s, path_guards)) in found.iter().enumerate() {
            let bit = 1u64 << i;
            for &(var, strict) in path_guards {
                match node
                    .guards
                    .iter_mut()
                    .find(|g| g.var == var && g.strict == strict)
                {
                    Some(g) => g.mask |= bit,
                    None => node.guards.push(Guard {
                        var,
                        strict,
                        mask: bit,
                    }),
                }
            }
            match self.states[*s as usize] {
                State::Consume {
                    var,
                    contiguity,
                    next,
                } => {
                    let target = self.intern(next);
                    node.entries.push(Entry::Consume {
                        var,
                        contiguity,
                        state: *s,
                        target,
                    });
                    node.consume_mask |= bit;
                    if contiguity == Contiguity::Strict {
                        node.strict_mask |= bit;
                    }
                    if node.accept.is_none() {
                        node.before_accept_mask |= bit;
                    }
                }
                State::Accept => {
                    node.accept = Some(i);
                    node.entries.push(Entry::Accept);
                    node.accept_at_expiry = path_guards.iter().any(|g| !g.1);
                    node.accept_after_next = path_guards.iter().any(|g| g.1);
                }
                _ => unreachable!("closures hold only consume and accept states"),
            }
        }
        Ok(node)
    }
}

/// Depth-first in priority order; the first path to a state wins.
fn walk(
    states: &[State],
    s: StateId,
    seen: &mut [bool],
    guards: &mut Vec<(VarId, bool)>,
    found: &mut Vec<(StateId, Vec<(VarId, bool)>)>,
) {
    if seen[s as usize] {
        return;
    }
    seen[s as usize] = true;
    match &states[s as usize] {
        State::Consume { .. } | State::Accept => found.push((s, guards.clone())),
        State::Split(a, b) => {
            walk(states, *a, seen, guards, found);
            walk(states, *b, seen, guards, found);
        }
        State::Neg { var, strict, next } => {
            guards.push((*var, *strict));
            walk(states, *next, seen, guards, found);
            guards.pop();
        }
    }
}
