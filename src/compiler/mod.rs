//! Syntax tree → immutable, shareable [`Automaton`].
//!
//! The compiler is the second stage of the pipeline. It checks a pattern's
//! meaning (every variable known and declared once, conditions that refer
//! only to variables already bound, windows where a run could otherwise wait
//! forever, valid regexes, aggregates over looping variables), resolves field
//! paths to slots, and builds the automaton ([`nfa`]). Every problem found is
//! collected, so a file reports all its errors at once.
//!
//! An [`Automaton`] is `Arc`-shared and never changes: every key of every
//! engine that runs the pattern reads the same one, while the per-key run
//! state lives in [`crate::engine`].

mod dominance;
pub mod dot;
pub mod expr;
pub mod nfa;
pub mod schema;

use std::collections::HashMap;
use std::sync::Arc;

use crate::dsl::ast::{self, Element, Pattern, Sequence, Skip};
use crate::dsl::{self, Diagnostic, Diagnostics};
use crate::event::{stable_hash, FieldTable};
use crate::history::HistoryPlan;

pub use expr::{Binding, Bindings, BoundEvent, CExpr, Env, Names, VarId, VarInfo};
pub use nfa::{Entry, Node, NodeId, State};

use expr::{Context, Resolver};

/// A compiled pattern. Cheap to clone; shared by all keys.
#[derive(Clone, Debug)]
pub struct Automaton(Arc<Inner>);

impl std::ops::Deref for Automaton {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Automaton {
    /// The same pattern under another version and mode (the pattern
    /// registry numbers versions and switches shadow mode; the automaton is
    /// otherwise unchanged, so run state carries over on a mode switch).
    pub fn with_meta(&self, version: u32, shadow: bool) -> Automaton {
        let mut inner = (*self.0).clone();
        inner.version = version;
        inner.shadow = shadow;
        Automaton(Arc::new(inner))
    }
}

/// After-match skip, resolved to variables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipPlan {
    NoSkip,
    ToNext,
    PastLast,
    ToFirst(VarId),
    ToLast(VarId),
}

#[derive(Clone, Debug)]
pub struct Inner {
    pub name: String,
    pub version: u32,
    pub shadow: bool,
    pub description: Option<String>,
    pub stream: String,
    pub key_paths: Vec<Vec<String>>,
    pub time: ast::TimeSpec,
    pub within: Option<i64>,
    pub max_gap: Option<i64>,
    pub skip: SkipPlan,
    pub severity: Option<String>,
    /// As every alert carries them: one map every alert shares (building
    /// it from a list sorted the labels again for every alert, and cloning
    /// it took 1,300 instructions an alert, besides freeing the clone).
    pub labels: std::sync::Arc<std::collections::BTreeMap<String, String>>,
    pub vars: Vec<VarInfo>,
    /// The condition of each variable; `None` matches any event.
    pub conditions: Vec<Option<CExpr>>,
    pub states: Vec<State>,
    pub nodes: Vec<Node>,
    /// By node: a run arriving there is dropped when an older run of its
    /// key is in the same state (see `dominance`: it could never be
    /// reported).
    pub dominated: Vec<bool>,
    /// By variable: whether a condition or an output reads the fields of
    /// an event the variable bound; a bound event keeps its fields only
    /// then ([`BoundEvent`]).
    pub reads_fields: Vec<bool>,
    pub start: NodeId,
    pub fields: FieldTable,
    /// What is kept of each key's past ([`crate::history`]); empty for
    /// most patterns.
    pub history: HistoryPlan,
    /// An event no variable's condition takes changes nothing for this
    /// pattern, whatever its key's runs, so the engine passes over it
    /// before the reorder buffer: every step is relaxed, no negation
    /// guards one, the key keeps no history, and each condition reads the
    /// event alone (see `unmatched_is_inert` for why that suffices).
    pub unmatched_inert: bool,
    pub emit: Vec<(String, CExpr)>,
    pub on_timeout: Option<Vec<(String, CExpr)>>,
    /// Canonical source of this pattern.
    pub source: String,
    /// Hash of the canonical source, hex.
    pub source_hash: String,
}

/// Parses and compiles every pattern in `src`. `origin` names the file in
/// diagnostics.
pub fn compile_source(origin: &str, src: &str) -> Result<Vec<Automaton>, Diagnostics> {
    let fail = |errors: Vec<Diagnostic>| Diagnostics {
        origin: origin.to_string(),
        source: src.to_string(),
        errors,
    };
    // Check the patterns that parsed even when others did not: every error
    // of the file is reported at once.
    let (file, mut errors) = dsl::parser::parse_partial(src);
    match compile_file(&file) {
        Ok(automata) if errors.is_empty() => Ok(automata),
        Ok(_) => Err(fail(errors)),
        Err(mut semantic) => {
            errors.append(&mut semantic);
            errors.sort_by_key(|d| d.span.start);
            Err(fail(errors))
        }
    }
}

/// Compiles a parsed file; all semantic errors are returned together.
pub fn compile_file(file: &ast::File) -> Result<Vec<Automaton>, Vec<Diagnostic>> {
    let mut errors = Vec::new();
    let mut out = Vec::new();
    let mut names: HashMap<&str, ()> = HashMap::new();
    for p in &file.patterns {
        if names.insert(&p.name.name, ()).is_some() {
            errors.push(
                Diagnostic::new(
                    p.name.span,
                    format!("pattern `{}` is defined twice", p.name.name),
                )
                .hint("pattern names are unique within a file"),
            );
        }
        match compile_pattern(p) {
            Ok(a) => out.push(a),
            Err(mut e) => errors.append(&mut e),
        }
    }
    errors.sort_by_key(|d| d.span.start);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Compiles one pattern.
pub fn compile_pattern(p: &Pattern) -> Result<Automaton, Vec<Diagnostic>> {
    let mut errors = Vec::new();

    // Variables, in order of first appearance, with the variables bound
    // before each.
    let mut vars: Vec<VarInfo> = Vec::new();
    let mut var_spans = Vec::new();
    let mut bound_before: Vec<Vec<VarId>> = Vec::new();
    collect_vars(
        &p.sequence,
        false,
        &[],
        &mut vars,
        &mut var_spans,
        &mut bound_before,
        &mut errors,
    );
    let var_id = |name: &str| vars.iter().position(|v| v.name == name).map(|n| n as VarId);
    let var_list = vars
        .iter()
        .map(|v| v.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");

    structural_checks(p, &mut errors);

    let skip = match &p.skip {
        Skip::NoSkip => SkipPlan::NoSkip,
        Skip::ToNext => SkipPlan::ToNext,
        Skip::PastLast => SkipPlan::PastLast,
        Skip::ToFirst(v) | Skip::ToLast(v) => match var_id(&v.name) {
            Some(id) if matches!(p.skip, Skip::ToFirst(_)) => SkipPlan::ToFirst(id),
            Some(id) => SkipPlan::ToLast(id),
            None => {
                errors.push(
                    Diagnostic::new(v.span, format!("unknown variable `{}`", v.name))
                        .hint(format!("skip to a variable of `match`: {var_list}")),
                );
                SkipPlan::PastLast
            }
        },
    };

    let mut fields = FieldTable::default();
    let mut history = history_plan(p, &mut errors);
    let mut conditions: Vec<Option<CExpr>> = vec![None; vars.len()];
    let mut defined = vec![false; vars.len()];
    for d in &p.defines {
        let Some(v) = var_id(&d.var.name) else {
            errors.push(
                Diagnostic::new(d.var.span, format!("unknown variable `{}`", d.var.name))
                    .hint(format!("define only variables used in `match`: {var_list}")),
            );
            continue;
        };
        if defined[v as usize] {
            errors.push(
                Diagnostic::new(
                    d.var.span,
                    format!("variable `{}` is defined twice", d.var.name),
                )
                .hint("combine the conditions with `and`"),
            );
            continue;
        }
        defined[v as usize] = true;
        let mut r = Resolver {
            vars: &vars,
            fields: &mut fields,
            errors: &mut errors,
            history: &mut history,
        };
        let cx = Context::Condition {
            var: v,
            bound: &bound_before[v as usize],
        };
        conditions[v as usize] = Some(r.compile(&d.condition, &cx).optimize());
    }
    for (i, v) in vars.iter().enumerate() {
        if var_kind(&p.sequence, &v.name) == Some(true) && !defined[i] {
            errors.push(
                Diagnostic::new(
                    var_spans[i],
                    format!("negated variable `{}` has no definition", v.name),
                )
                .hint(format!(
                    "say which events must not occur: `define {} as ...`",
                    v.name
                )),
            );
        }
    }

    let mut outputs = |list: &[ast::OutputField], errors: &mut Vec<Diagnostic>| {
        let mut seen: Vec<&str> = Vec::new();
        let mut out = Vec::new();
        for f in list {
            if seen.contains(&f.name.name.as_str()) {
                errors.push(
                    Diagnostic::new(
                        f.name.span,
                        format!("output `{}` is given twice", f.name.name),
                    )
                    .hint("output names are unique"),
                );
            }
            seen.push(&f.name.name);
            let mut r = Resolver {
                vars: &vars,
                fields: &mut fields,
                errors,
                history: &mut history,
            };
            out.push((f.name.name.clone(), r.compile(&f.value, &Context::Output)));
        }
        out
    };
    let emit = outputs(&p.emit, &mut errors);
    let on_timeout = p.on_timeout.as_ref().map(|t| outputs(t, &mut errors));

    let built = if errors.is_empty() {
        match nfa::build(&p.sequence, &|n| var_id(n).unwrap_or(0)) {
            Ok(b) => Some(b),
            Err(msg) => {
                errors.push(Diagnostic::new(p.sequence.span, msg).hint("simplify the sequence"));
                None
            }
        }
    } else {
        None
    };
    if let Some(b) = &built {
        if b.nodes[b.start as usize].accept.is_some() {
            errors.push(
                Diagnostic::new(p.sequence.span, "this sequence can match without any event")
                    .hint("make at least one step required (drop a `?` or `*`)"),
            );
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let built = built.unwrap();
    let source = dsl::print::print_pattern(p);
    let source_hash = format!("{:016x}", stable_hash(source.as_bytes(), 0));
    Ok(Automaton(Arc::new(Inner {
        name: p.name.name.clone(),
        version: p.version,
        shadow: p.shadow,
        description: p.description.clone(),
        stream: p.stream.name.clone(),
        key_paths: p.key.iter().map(|k| k.segments.clone()).collect(),
        time: p.time.clone(),
        within: p.within.map(|w| w.millis),
        max_gap: p.max_gap.map(|g| g.millis),
        skip,
        severity: p.severity.as_ref().map(|s| s.name.clone()),
        labels: std::sync::Arc::new(
            p.labels
                .iter()
                .map(|(k, v)| (k.name.clone(), v.clone()))
                .collect(),
        ),
        dominated: dominance::dominated_nodes(skip, &conditions, &built.nodes),
        reads_fields: expr::reads_bound_fields(
            vars.len(),
            conditions
                .iter()
                .flatten()
                .chain(emit.iter().map(|(_, e)| e))
                .chain(on_timeout.iter().flatten().map(|(_, e)| e)),
        ),
        unmatched_inert: unmatched_is_inert(&conditions, &built.nodes, &history),
        vars,
        conditions,
        states: built.states,
        nodes: built.nodes,
        start: built.start,
        fields,
        history,
        emit,
        on_timeout,
        source,
        source_hash,
    })))
}

/// Whether an event that no variable's condition takes leaves every run
/// of its key as it was: no step waits with strict contiguity (which such
/// an event ends), no negation guards a step (`next not x` is satisfied by
/// it), the key keeps no history (which records it), and every condition
/// reads only the event itself (one that reads earlier bound events, or
/// `time since previous`, could take the event in one run and not in
/// another). Such an event could still expire a key's runs whose window
/// has closed, but the watermark that releases it has passed their
/// deadline too, and the timers fire them in the same push (alerts come
/// in another order within it, never later).
fn unmatched_is_inert(conditions: &[Option<CExpr>], nodes: &[Node], history: &HistoryPlan) -> bool {
    history.is_empty()
        && nodes
            .iter()
            .all(|n| n.strict_mask == 0 && n.guards.is_empty())
        && conditions
            .iter()
            .all(|c| c.as_ref().is_some_and(CExpr::reads_only_the_event))
}

/// The history plan before any condition is compiled: how far back `time
/// since previous` looks (the `history` clause, else the longest window).
fn history_plan(p: &Pattern, errors: &mut Vec<Diagnostic>) -> HistoryPlan {
    let exprs = || {
        p.defines
            .iter()
            .map(|d| &d.condition)
            .chain(p.emit.iter().map(|f| &f.value))
            .chain(p.on_timeout.iter().flatten().map(|f| &f.value))
    };
    let longest = exprs().map(expr::longest_window).max().unwrap_or(0);
    let since = exprs().find_map(expr::uses_since_previous);
    let horizon = p.history.map_or(longest, |h| h.millis);
    if let Some(span) = since.filter(|_| horizon == 0) {
        errors.push(
            Diagnostic::new(
                span,
                "`time since previous` needs to know how far back to look",
            )
            .hint(
                "add `history 1d` to the header: each key's previous event is remembered that long",
            ),
        );
    }
    HistoryPlan::new(if since.is_some() { horizon } else { 0 })
}

/// `Some(true)` if `name` is a negated variable, `Some(false)` if a step.
fn var_kind(seq: &Sequence, name: &str) -> Option<bool> {
    for b in &seq.branches {
        for item in &b.items {
            let found = match &item.element {
                Element::Step { var, .. } if var.name == name => Some(false),
                Element::Not { var } if var.name == name => Some(true),
                Element::Group { sequence, .. } => var_kind(sequence, name),
                _ => None,
            };
            if found.is_some() {
                return found;
            }
        }
    }
    None
}

fn is_looping(q: Option<&ast::Quantifier>) -> bool {
    q.is_some_and(|q| q.max != Some(1))
}

fn collect_vars(
    seq: &Sequence,
    looping: bool,
    before: &[VarId],
    vars: &mut Vec<VarInfo>,
    spans: &mut Vec<ast::Span>,
    bound: &mut Vec<Vec<VarId>>,
    errors: &mut Vec<Diagnostic>,
) {
    for branch in &seq.branches {
        let mut here: Vec<VarId> = before.to_vec();
        for item in &branch.items {
            let start = vars.len();
            match &item.element {
                Element::Step { var, quantifier } => add_var(
                    var,
                    looping || is_looping(quantifier.as_ref()),
                    &here,
                    vars,
                    spans,
                    bound,
                    errors,
                ),
                Element::Not { var } => add_var(var, looping, &here, vars, spans, bound, errors),
                Element::Group {
                    sequence,
                    quantifier,
                } => collect_vars(
                    sequence,
                    looping || is_looping(quantifier.as_ref()),
                    &here,
                    vars,
                    spans,
                    bound,
                    errors,
                ),
            }
            here.extend((start..vars.len()).map(|v| v as VarId));
        }
    }
}

fn add_var(
    var: &ast::Ident,
    looping: bool,
    before: &[VarId],
    vars: &mut Vec<VarInfo>,
    spans: &mut Vec<ast::Span>,
    bound: &mut Vec<Vec<VarId>>,
    errors: &mut Vec<Diagnostic>,
) {
    if vars.iter().any(|v| v.name == var.name) {
        errors.push(
            Diagnostic::new(var.span, format!("duplicate variable `{}`", var.name))
                .hint("each step needs its own name; repeat a step with a quantifier: `d{3}`"),
        );
        return;
    }
    vars.push(VarInfo {
        name: var.name.clone(),
        looping,
    });
    spans.push(var.span);
    bound.push(before.to_vec());
}

/// Checks on the shape of the sequence that need the header.
fn structural_checks(p: &Pattern, errors: &mut Vec<Diagnostic>) {
    fn walk(seq: &Sequence, p: &Pattern, top: bool, errors: &mut Vec<Diagnostic>) {
        for branch in &seq.branches {
            let n = branch.items.len();
            for (i, item) in branch.items.iter().enumerate() {
                match &item.element {
                    Element::Not { var } => {
                        if i == 0 {
                            errors.push(
                                Diagnostic::new(
                                    var.span,
                                    "a sequence cannot start with a negation",
                                )
                                .hint("a negation sits after a step: `a then not x then b`"),
                            );
                        } else if item.connector == Some(ast::Contiguity::Any) {
                            errors.push(
                                Diagnostic::new(var.span, "`then any not` has no meaning")
                                    .hint("write `then not x` (no x in between) or `next not x`"),
                            );
                        } else if top && i == n - 1 && p.within.is_none() {
                            errors.push(
                                Diagnostic::new(var.span, format!("negation `not {}` at the end needs a window", var.name))
                                    .hint("an absence is decided when the window closes: add `within 1h` to the header"),
                            );
                        }
                    }
                    Element::Step { quantifier, .. } => unbounded(quantifier.as_ref(), p, errors),
                    Element::Group {
                        sequence,
                        quantifier,
                    } => {
                        unbounded(quantifier.as_ref(), p, errors);
                        walk(sequence, p, false, errors);
                    }
                }
            }
        }
    }
    fn unbounded(q: Option<&ast::Quantifier>, p: &Pattern, errors: &mut Vec<Diagnostic>) {
        if let Some(q) = q {
            if q.max.is_none() && p.within.is_none() {
                errors.push(
                    Diagnostic::new(q.span, "unbounded quantifier needs a window")
                        .hint("runs could grow forever: add `within 24h` to the header or bound it: `{3,10}`"),
                );
            }
        }
    }
    walk(&p.sequence, p, true, errors);
}

/// Every `*.cep` file under `path` (or `path` itself), sorted.
pub fn pattern_files(path: &std::path::Path) -> Vec<std::path::PathBuf> {
    crate::input::files_ending(path, ".cep")
}

/// Compiles every pattern file under `path`.
pub fn load_patterns(path: &std::path::Path) -> Result<Vec<Automaton>, String> {
    let files = pattern_files(path);
    if files.is_empty() {
        return Err(format!("no pattern files (*.cep) at {}", path.display()));
    }
    let mut all = Vec::new();
    let mut errors = String::new();
    for f in files {
        let src = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        match compile_source(&f.display().to_string(), &src) {
            Ok(mut a) => all.append(&mut a),
            Err(d) => errors.push_str(&d.render()),
        }
    }
    if errors.is_empty() {
        Ok(all)
    } else {
        Err(format!("patterns do not compile:\n{errors}"))
    }
}
