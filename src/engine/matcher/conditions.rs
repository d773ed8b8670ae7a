//! Which of a pattern's conditions take an event, asked before the event
//! meets any run: whether it could start one, why it could not (for a
//! traced key's notes), and whether any variable takes it at all.

use crate::compiler::{Automaton, Entry, Env, Names};
use crate::event::Event;
use crate::history::KeyHistory;

/// Why no entry of the start node takes `ev`: each condition with the
/// values it saw.
pub(super) fn start_refusals(
    a: &Automaton,
    ev: &Event,
    history: Option<&KeyHistory>,
) -> Vec<String> {
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
pub(super) fn can_start(a: &Automaton, ev: &Event, history: Option<&KeyHistory>) -> bool {
    let env = Env::of_event(ev, history);
    a.nodes[a.start as usize].entries.iter().any(|e| match e {
        Entry::Consume { var, .. } => a.conditions[*var as usize]
            .as_ref()
            .is_none_or(|c| c.test(&env)),
        Entry::Accept => false,
    })
}

/// Whether any variable's condition takes `ev`, whatever the run (for
/// patterns whose conditions read the event alone).
#[inline]
pub(super) fn taken_by_any(a: &Automaton, ev: &Event) -> bool {
    let env = Env::of_event(ev, None);
    a.conditions.iter().flatten().any(|c| c.test(&env))
}
