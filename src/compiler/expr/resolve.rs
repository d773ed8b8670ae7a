//! Compiling an expression: every field path resolved to a slot, every
//! variable reference to a [`VarId`], and what a condition or an output
//! may refer to checked once, with a diagnostic (and a hint) for each
//! mistake.

use std::sync::Arc;

use regex_automata::meta::Regex;

use crate::dsl::ast::{self, ExprKind, Literal, Span, UnaryOp};
use crate::dsl::Diagnostic;
use crate::event::FieldTable;
use crate::history::HistoryPlan;
use crate::value::Value;

use super::{AggFunc, Builtin, CExpr, MatchInfo, VarId};

/// What a variable is, for resolving references.
#[derive(Clone, Debug)]
pub struct VarInfo {
    pub name: String,
    pub looping: bool,
}

/// Where an expression stands, which decides what it may name.
pub enum Context<'a> {
    /// The condition of `var`; `bound` lists variables bound before it.
    Condition { var: VarId, bound: &'a [VarId] },
    /// An output: every variable, and the match's key, start, end, duration.
    Output,
}

pub struct Resolver<'a> {
    pub vars: &'a [VarInfo],
    pub fields: &'a mut FieldTable,
    pub errors: &'a mut Vec<Diagnostic>,
    /// What the pattern keeps of each key's past, as conditions ask for it.
    pub history: &'a mut HistoryPlan,
}

impl Resolver<'_> {
    pub(super) fn var(&self, name: &str) -> Option<VarId> {
        self.vars
            .iter()
            .position(|v| v.name == name)
            .map(|n| n as VarId)
    }

    pub(super) fn err(&mut self, span: Span, msg: String, hint: &str) -> CExpr {
        self.errors.push(Diagnostic::new(span, msg).hint(hint));
        CExpr::Const(Value::Null)
    }

    fn var_names(&self) -> String {
        self.vars
            .iter()
            .map(|v| v.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn compile(&mut self, e: &ast::Expr, cx: &Context) -> CExpr {
        match &e.kind {
            ExprKind::Literal(l) => CExpr::Const(match l {
                Literal::Int(i) | Literal::Duration(i) | Literal::Timestamp(i) => Value::Int(*i),
                Literal::Float(f) => Value::Float(*f),
                Literal::Str(s) => Value::Str(Arc::from(s.as_str())),
                Literal::Bool(b) => Value::Bool(*b),
                Literal::Null => Value::Null,
            }),
            ExprKind::Path(p) => self.path(p, cx),
            ExprKind::Unary(UnaryOp::Not, x) => CExpr::Not(Box::new(self.compile(x, cx))),
            ExprKind::Unary(UnaryOp::Neg, x) => CExpr::Neg(Box::new(self.compile(x, cx))),
            ExprKind::Binary(op, l, r) => CExpr::Bin(
                *op,
                Box::new(self.compile(l, cx)),
                Box::new(self.compile(r, cx)),
            ),
            ExprKind::In {
                value,
                list,
                negated,
            } => CExpr::In(
                Box::new(self.compile(value, cx)),
                list.iter().map(|x| self.compile(x, cx)).collect(),
                *negated,
            ),
            ExprKind::Matches {
                value,
                regex,
                regex_span,
            } => {
                let value = Box::new(self.compile(value, cx));
                match Regex::new(regex) {
                    Ok(re) => CExpr::Matches(value, re),
                    Err(err) => {
                        // Point at the offending part of the regex when the
                        // syntax error says where it is.
                        let span = err
                            .syntax_error()
                            .and_then(|s| regex_error_span(s, regex, *regex_span))
                            .unwrap_or(*regex_span);
                        let msg = err
                            .syntax_error()
                            .map(regex_message)
                            .unwrap_or_else(|| err.to_string());
                        self.err(
                            span,
                            format!("invalid regex: {msg}"),
                            "regexes follow the Rust regex syntax; escape a literal `(` as `\\\\(`",
                        )
                    }
                }
            }
            ExprKind::Is {
                value,
                test,
                negated,
            } => CExpr::Is(Box::new(self.compile(value, cx)), *test, *negated),
            ExprKind::Call { func, args } => self.call(func, args, e.span, cx),
            ExprKind::Over {
                call,
                window,
                at_least,
            } => self.over(e, call, window.millis, *at_least),
            ExprKind::Seen {
                value,
                negated,
                window,
                at_least,
            } => self.seen(e, value, *negated, window.millis, *at_least),
            ExprKind::SincePrevious => CExpr::SincePrevious(self.history.since_horizon),
        }
    }

    fn path(&mut self, p: &ast::Path, cx: &Context) -> CExpr {
        let head = &p.segments[0];
        let var = self.var(head);
        match (cx, var) {
            (Context::Condition { var: me, .. }, Some(v)) if v == *me => {
                if p.segments.len() == 1 {
                    return self.err(
                        p.span,
                        format!("`{head}` is a variable, not a value"),
                        "name one of its fields: `small.amount`",
                    );
                }
                CExpr::Field(self.fields.slot(&p.segments[1..]) as u32)
            }
            (Context::Condition { bound, .. }, Some(v)) => {
                if !bound.contains(&v) {
                    return self.err(
                        p.span,
                        format!("variable `{head}` cannot be bound yet at this step"),
                        "a condition may refer only to variables that come before its step",
                    );
                }
                self.var_field(v, p)
            }
            (Context::Condition { .. }, None) => CExpr::Field(self.fields.slot(&p.segments) as u32),
            (Context::Output, Some(v)) => self.var_field(v, p),
            (Context::Output, None) if p.segments.len() == 1 => match head.as_str() {
                "key" => CExpr::Info(MatchInfo::Key),
                "start" => CExpr::Info(MatchInfo::Start),
                "end" => CExpr::Info(MatchInfo::End),
                "duration" => CExpr::Info(MatchInfo::Duration),
                _ => self.unknown_output_name(p),
            },
            (Context::Output, None) => self.unknown_output_name(p),
        }
    }

    fn unknown_output_name(&mut self, p: &ast::Path) -> CExpr {
        let names = self.var_names();
        self.err(
            p.span,
            format!("unknown variable `{}`", p.segments[0]),
            &format!("outputs name a variable's field (variables: {names}) or `key`, `start`, `end`, `duration`"),
        )
    }

    fn var_field(&mut self, v: VarId, p: &ast::Path) -> CExpr {
        if p.segments.len() == 1 {
            return self.err(
                p.span,
                format!("`{}` is a variable, not a value", p.segments[0]),
                "name one of its fields: `small.amount`",
            );
        }
        CExpr::VarField(v, self.fields.slot(&p.segments[1..]) as u32)
    }

    fn call(&mut self, func: &ast::Ident, args: &[ast::Expr], span: Span, cx: &Context) -> CExpr {
        let agg = match func.name.as_str() {
            "count" => Some(AggFunc::Count),
            "sum" => Some(AggFunc::Sum),
            "avg" => Some(AggFunc::Avg),
            "min" => Some(AggFunc::Min),
            "max" => Some(AggFunc::Max),
            "first" => Some(AggFunc::First),
            "last" => Some(AggFunc::Last),
            _ => None,
        };
        let builtin = match func.name.as_str() {
            "lower" => Some(Builtin::Lower),
            "upper" => Some(Builtin::Upper),
            "len" => Some(Builtin::Len),
            "abs" => Some(Builtin::Abs),
            _ => None,
        };
        if matches!(func.name.as_str(), "stddev" | "percentile") {
            return self.err(
                span,
                format!("`{}` reads the key's history and needs a window", func.name),
                &format!(
                    "write for example `{}(amount) over 30d`",
                    match func.name.as_str() {
                        "stddev" => "stddev",
                        _ => "percentile",
                    }
                )
                .replace("percentile(amount)", "percentile(amount, 95)"),
            );
        }
        if args.len() != 1 && !(func.name == "time" && args.is_empty()) {
            return self.err(
                span,
                format!("`{}` takes one argument, found {}", func.name, args.len()),
                "write for example `count(d)`, `sum(d.amount)` or `lower(name)`",
            );
        }
        if let Some(b) = builtin {
            return CExpr::Call(b, Box::new(self.compile(&args[0], cx)));
        }
        if func.name == "time" {
            return match args.first().map(|a| &a.kind) {
                None => CExpr::Time(None),
                Some(ExprKind::Path(p)) if p.segments.len() == 1 => {
                    match self.var(&p.segments[0]) {
                        Some(v) if matches!(cx, Context::Condition { var, .. } if *var == v) => {
                            CExpr::Time(None)
                        }
                        Some(v) => {
                            if let Context::Condition { bound, .. } = cx {
                                if !bound.contains(&v) {
                                    return self.err(
                                    p.span,
                                    format!("variable `{}` cannot be bound yet at this step", p.segments[0]),
                                    "a condition may refer only to variables that come before its step",
                                );
                                }
                            }
                            CExpr::Time(Some(v))
                        }
                        None => self.err(
                            p.span,
                            format!("unknown variable `{}`", p.segments[0]),
                            &format!(
                                "`time(v)` takes a variable (variables: {})",
                                self.var_names()
                            ),
                        ),
                    }
                }
                Some(_) => self.err(
                    args[0].span,
                    "`time` takes a variable".into(),
                    "write `time(small)`",
                ),
            };
        }
        let Some(agg) = agg else {
            return self.err(
                func.span,
                format!("unknown function `{}`", func.name),
                "functions: count, sum, avg, min, max, first, last, time, lower, upper, len, abs; over a key's history also stddev, percentile",
            );
        };
        let ExprKind::Path(p) = &args[0].kind else {
            return self.err(
                args[0].span,
                format!("`{}` aggregates a variable's field", func.name),
                "write for example `sum(d.amount)` or `count(d)`",
            );
        };
        let Some(v) = self.var(&p.segments[0]) else {
            let names = self.var_names();
            return self.err(
                p.span,
                format!("unknown variable `{}`", p.segments[0]),
                &format!("aggregates take a looping variable (variables: {names}); to read the key's past events write `{}({}) over 30d`", func.name, p.dotted()),
            );
        };
        if !self.vars[v as usize].looping {
            return self.err(
                p.span,
                format!("`{}` aggregates `{}`, which binds only one event", func.name, p.segments[0]),
                "aggregate a looping variable (`d{3,}`, `d+`); refer to a single event as `v.field`",
            );
        }
        if let Context::Condition { var, bound } = cx {
            if v != *var && !bound.contains(&v) {
                return self.err(
                    p.span,
                    format!(
                        "variable `{}` cannot be bound yet at this step",
                        p.segments[0]
                    ),
                    "a condition may refer only to variables that come before its step",
                );
            }
        }
        let slot = if p.segments.len() > 1 {
            Some(self.fields.slot(&p.segments[1..]) as u32)
        } else if agg == AggFunc::Count {
            None
        } else {
            return self.err(
                p.span,
                format!(
                    "`{}` needs a field: `{}({}.amount)`",
                    func.name, func.name, p.segments[0]
                ),
                "only `count` takes a bare variable",
            );
        };
        CExpr::Agg(agg, v, slot)
    }
}

fn regex_message(e: &regex_syntax::Error) -> String {
    // The syntax error's Display is multi-line with its own caret; keep the
    // kind only, our renderer draws the caret.
    let text = e.to_string();
    text.lines()
        .rev()
        .find(|l| l.starts_with("error: "))
        .map(|l| l.trim_start_matches("error: ").to_string())
        .unwrap_or(text)
}

fn regex_error_span(e: &regex_syntax::Error, regex: &str, lit: Span) -> Option<Span> {
    let regex_syntax::Error::Parse(pe) = e else {
        return None;
    };
    let s = pe.span();
    // Offsets inside the regex map onto the source only when the literal has
    // no escapes (then source and value line up one to one).
    if lit.end - lit.start != regex.len() + 2 {
        return None;
    }
    let start = lit.start + 1 + s.start.offset;
    let end = (lit.start + 1 + s.end.offset).max(start + 1);
    Some(Span::new(start, end))
}
