//! The automaton as Graphviz DOT, for `cep explain`.
//!
//! One graph node per wait point ([`super::Node`]); an edge per step a run
//! may take from there, labelled with the variable, its contiguity and its
//! priority. Accepting wait points are double circles; negations that guard a
//! wait point are listed in it.

use std::fmt::Write;

use crate::dsl::ast::Contiguity;
use crate::dsl::print;

use super::{Automaton, Entry};

pub fn to_dot(a: &Automaton) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "digraph {} {{", quote(&a.name));
    o.push_str("  rankdir=LR;\n  node [shape=circle, fontname=\"Helvetica\"];\n");
    o.push_str("  start [shape=point];\n");
    let _ = writeln!(o, "  start -> n{};", a.start);
    for (id, node) in a.nodes.iter().enumerate() {
        let mut label = format!("{id}");
        for g in &node.guards {
            let _ = write!(
                label,
                "\\n{} {}",
                if g.strict { "next not" } else { "not" },
                a.vars[g.var as usize].name
            );
        }
        if node.accept_at_expiry {
            label.push_str("\\naccept when window closes");
        }
        let shape = if node.accept.is_some() {
            "doublecircle"
        } else {
            "circle"
        };
        let _ = writeln!(o, "  n{id} [shape={shape}, label={}];", quote(&label));
        for (prio, e) in node.entries.iter().enumerate() {
            if let Entry::Consume {
                var,
                contiguity,
                target,
                ..
            } = e
            {
                let mode = match contiguity {
                    Contiguity::Strict => "next",
                    Contiguity::Relaxed => "then",
                    Contiguity::Any => "then any",
                };
                let v = &a.vars[*var as usize];
                let cond = a
                    .conditions
                    .get(*var as usize)
                    .and_then(|c| c.as_ref())
                    .map(|_| "")
                    .unwrap_or(" (any event)");
                let _ = writeln!(
                    o,
                    "  n{id} -> n{target} [label={}];",
                    quote(&format!("{prio}: {mode} {}{cond}", print::name(&v.name)))
                );
            }
        }
    }
    o.push_str("}\n");
    o
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\\\""))
}
