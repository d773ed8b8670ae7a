//! Conditions and outputs: checked, resolved to slots, and evaluated.
//!
//! The compiler turns an [`ast::Expr`] into a [`CExpr`] in which every field
//! path is a slot number and every variable reference a [`VarId`]. What a
//! condition may refer to is decided here, once: the current event's fields,
//! fields of variables bound *before* the step, and aggregates over looping
//! variables. Evaluation is a plain tree walk over slot values; operands that
//! are fields or constants are borrowed, never cloned.

mod bindings;
mod bound_event;
mod lookback;

pub use bindings::Bindings;
pub use bound_event::BoundEvent;
pub use lookback::{longest_window, uses_since_previous};

use std::borrow::Cow;
use std::sync::Arc;

use regex_automata::meta::Regex;

use crate::dsl::ast::{self, BinaryOp, ExprKind, IsTest, Literal, Span, UnaryOp};
use crate::dsl::Diagnostic;
use crate::event::{Event, FieldTable, Key};
use crate::history::{self, HistoryPlan, KeyHistory};
use crate::value::Value;

/// Index of a pattern variable.
pub type VarId = u16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AggFunc {
    Count,
    Sum,
    Avg,
    Min,
    Max,
    First,
    Last,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Builtin {
    Lower,
    Upper,
    Len,
    Abs,
}

/// Values an output may name without a variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchInfo {
    Key,
    Start,
    End,
    Duration,
}

#[derive(Clone, Debug)]
pub enum CExpr {
    Const(Value),
    /// A slot of the event being tested.
    Field(u32),
    /// A slot of the last event bound to a variable.
    VarField(VarId, u32),
    /// Event time of the current event (`None`) or of a variable's last event.
    Time(Option<VarId>),
    Agg(AggFunc, VarId, Option<u32>),
    Not(Box<CExpr>),
    Neg(Box<CExpr>),
    Bin(BinaryOp, Box<CExpr>, Box<CExpr>),
    In(Box<CExpr>, Vec<CExpr>, bool),
    Matches(Box<CExpr>, Regex),
    Is(Box<CExpr>, IsTest, bool),
    Call(Builtin, Box<CExpr>),
    Info(MatchInfo),
    /// `field <op> number`, the commonest condition, pre-resolved (see
    /// [`CExpr::optimize`]).
    FieldCmpNum(BinaryOp, u32, f64),
    /// A question to the key's history ([`crate::history`]).
    History(Box<history::Query>),
    /// `time since previous`, looking back this far (ms).
    SincePrevious(i64),
}

/// A variable bound to an event in a run.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Binding {
    pub var: VarId,
    /// Position of the event among its key's events.
    pub pos: u64,
    pub event: BoundEvent,
}

/// The bindings of an event no run has taken yet.
static NO_BINDINGS: Bindings = Bindings::EMPTY;

/// What an expression is evaluated against.
pub struct Env<'a> {
    pub current: Option<&'a Event>,
    pub bindings: &'a Bindings,
    pub key: Option<&'a Key>,
    pub start: i64,
    pub end: i64,
    /// The key's history, before the current event.
    pub history: Option<&'a KeyHistory>,
    /// Without a current event (in outputs): the time history is read as
    /// of.
    pub history_at: i64,
}

impl<'a> Env<'a> {
    /// An event on its own, before any run took it (start conditions).
    pub fn of_event(ev: &'a Event, history: Option<&'a KeyHistory>) -> Env<'a> {
        Env {
            current: Some(ev),
            bindings: &NO_BINDINGS,
            key: None,
            start: 0,
            end: 0,
            history,
            history_at: ev.time,
        }
    }

    /// The time history is read as of.
    fn as_of(&self) -> i64 {
        self.current.map_or(self.history_at, |e| e.time)
    }
}

const MISSING: Value = Value::Missing;

impl CExpr {
    /// Evaluates as a condition. Comparisons and logic are answered here
    /// directly, without building intermediate boolean values: this is the
    /// innermost loop of matching.
    #[inline]
    pub fn test(&self, env: &Env) -> bool {
        // The commonest condition, answered inline at the call site.
        if let CExpr::FieldCmpNum(op, slot, n) = self {
            return field_cmp_num(*op, *slot, *n, env);
        }
        self.test_general(env)
    }

    fn test_general(&self, env: &Env) -> bool {
        match self {
            CExpr::Bin(BinaryOp::And, l, r) => l.test(env) && r.test(env),
            CExpr::Bin(BinaryOp::Or, l, r) => l.test(env) || r.test(env),
            CExpr::Bin(op @ (BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge), l, r) => {
                let (a, b) = (l.eval(env), r.eval(env));
                a.compare(&b).is_some_and(|o| match op {
                    BinaryOp::Lt => o.is_lt(),
                    BinaryOp::Le => o.is_le(),
                    BinaryOp::Gt => o.is_gt(),
                    _ => o.is_ge(),
                })
            }
            CExpr::Bin(BinaryOp::Eq, l, r) => l.eval(env).equals(&r.eval(env)),
            CExpr::Not(x) => !x.test(env),
            CExpr::FieldCmpNum(op, slot, n) => field_cmp_num(*op, *slot, *n, env),
            _ => self.eval(env).truthy(),
        }
    }

    /// Rewrites hot shapes into direct forms; meaning is unchanged.
    pub fn optimize(self) -> CExpr {
        use BinaryOp::*;
        match self {
            CExpr::Bin(op @ (Lt | Le | Gt | Ge | Eq), l, r) => match (*l, *r) {
                (CExpr::Field(s), CExpr::Const(c))
                    if c.as_f64().is_some_and(|n| n.abs() < 9.0e15) =>
                {
                    CExpr::FieldCmpNum(op, s, c.as_f64().unwrap())
                }
                (l, r) => CExpr::Bin(op, Box::new(l.optimize()), Box::new(r.optimize())),
            },
            CExpr::Bin(op, l, r) => CExpr::Bin(op, Box::new(l.optimize()), Box::new(r.optimize())),
            CExpr::Not(x) => CExpr::Not(Box::new(x.optimize())),
            other => other,
        }
    }

    pub fn eval<'a>(&'a self, env: &'a Env) -> Cow<'a, Value> {
        use Cow::{Borrowed, Owned};
        match self {
            CExpr::Const(v) => Borrowed(v),
            CExpr::Field(s) => Borrowed(env.current.map_or(&MISSING, |e| &e.slots[*s as usize])),
            CExpr::VarField(v, s) => Borrowed(
                env.bindings
                    .newest_first()
                    .find(|b| b.var == *v)
                    .map_or(&MISSING, |b| b.event.slot(*s)),
            ),
            CExpr::Time(None) => Owned(env.current.map_or(Value::Missing, |e| Value::Int(e.time))),
            CExpr::Time(Some(v)) => Owned(
                env.bindings
                    .newest_first()
                    .find(|b| b.var == *v)
                    .map_or(Value::Missing, |b| Value::Int(b.event.time)),
            ),
            CExpr::Agg(f, v, slot) => Owned(aggregate(*f, *v, *slot, env.bindings)),
            CExpr::Not(x) => Owned(match x.eval(env).as_ref() {
                Value::Bool(b) => Value::Bool(!b),
                _ => Value::Bool(true),
            }),
            CExpr::Neg(x) => Owned(match x.eval(env).as_ref() {
                Value::Int(i) => Value::Int(i.wrapping_neg()),
                Value::Float(f) => Value::Float(-f),
                _ => Value::Null,
            }),
            CExpr::Bin(op, l, r) => Owned(binary(*op, l, r, env)),
            CExpr::In(x, list, negated) => {
                let x = x.eval(env);
                // Like `==` and `!=`, a missing or null value is in no list
                // and not outside one either.
                let found = list.iter().any(|i| i.eval(env).equals(&x));
                Owned(Value::Bool(!x.is_absent() && found != *negated))
            }
            CExpr::Matches(x, re) => Owned(Value::Bool(
                x.eval(env).text().is_some_and(|t| re.is_match(t.as_ref())),
            )),
            CExpr::Is(x, test, negated) => {
                let v = x.eval(env);
                let hit = match test {
                    IsTest::Null => matches!(v.as_ref(), Value::Null),
                    IsTest::Missing => matches!(v.as_ref(), Value::Missing),
                };
                Owned(Value::Bool(hit != *negated))
            }
            CExpr::Call(f, x) => Owned(builtin(*f, x.eval(env).as_ref())),
            CExpr::FieldCmpNum(..) => Owned(Value::Bool(self.test(env))),
            CExpr::Info(i) => Owned(match i {
                MatchInfo::Key => env
                    .key
                    .map_or(Value::Null, |k| Value::Str(Arc::from(k.as_str()))),
                MatchInfo::Start => Value::Int(env.start),
                MatchInfo::End => Value::Int(env.end),
                MatchInfo::Duration => Value::Int(env.end - env.start),
            }),
            CExpr::History(q) => Owned(
                env.history
                    .map_or(Value::Null, |h| h.answer(q, env.as_of(), env.current)),
            ),
            CExpr::SincePrevious(horizon) => Owned(
                env.history
                    .map_or(Value::Null, |h| h.since_previous(env.as_of(), *horizon)),
            ),
        }
    }
}

#[inline]
fn field_cmp_num(op: BinaryOp, slot: u32, n: f64, env: &Env) -> bool {
    let Some(ev) = env.current else { return false };
    let x = match ev.slots.get(slot as usize) {
        Some(Value::Int(i)) => *i as f64,
        Some(Value::Float(f)) => *f,
        _ => return false,
    };
    match op {
        BinaryOp::Lt => x < n,
        BinaryOp::Le => x <= n,
        BinaryOp::Gt => x > n,
        BinaryOp::Ge => x >= n,
        _ => x == n,
    }
}

fn binary(op: BinaryOp, l: &CExpr, r: &CExpr, env: &Env) -> Value {
    use BinaryOp::*;
    match op {
        // Short-circuit; a missing operand is simply not true.
        And => Value::Bool(l.test(env) && r.test(env)),
        Or => Value::Bool(l.test(env) || r.test(env)),
        _ => {
            let (a, b) = (l.eval(env), r.eval(env));
            let (a, b) = (a.as_ref(), b.as_ref());
            match op {
                Eq => Value::Bool(a.equals(b)),
                Ne => Value::Bool(!a.is_absent() && !b.is_absent() && !a.equals(b)),
                Lt => Value::Bool(a.compare(b).is_some_and(|o| o.is_lt())),
                Le => Value::Bool(a.compare(b).is_some_and(|o| o.is_le())),
                Gt => Value::Bool(a.compare(b).is_some_and(|o| o.is_gt())),
                Ge => Value::Bool(a.compare(b).is_some_and(|o| o.is_ge())),
                Contains | StartsWith | EndsWith => match (a.text(), b.text()) {
                    (Some(x), Some(y)) => Value::Bool(match op {
                        Contains => x.contains(y.as_ref()),
                        StartsWith => x.starts_with(y.as_ref()),
                        _ => x.ends_with(y.as_ref()),
                    }),
                    _ => Value::Bool(false),
                },
                _ => arithmetic(op, a, b),
            }
        }
    }
}

fn arithmetic(op: BinaryOp, a: &Value, b: &Value) -> Value {
    use BinaryOp::*;
    if let (Value::Int(x), Value::Int(y)) = (a, b) {
        return match op {
            Add => Value::Int(x.wrapping_add(*y)),
            Sub => Value::Int(x.wrapping_sub(*y)),
            Mul => Value::Int(x.wrapping_mul(*y)),
            Div if *y != 0 => Value::Float(*x as f64 / *y as f64),
            Rem if *y != 0 => Value::Int(x.wrapping_rem(*y)),
            _ => Value::Null,
        };
    }
    if let (Add, Value::Str(x), Value::Str(y)) = (op, a, b) {
        return Value::Str(Arc::from(format!("{x}{y}")));
    }
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => {
            let r = match op {
                Add => x + y,
                Sub => x - y,
                Mul => x * y,
                Div => x / y,
                _ => x % y,
            };
            if r.is_finite() {
                Value::Float(r)
            } else {
                Value::Null
            }
        }
        _ => Value::Null,
    }
}

/// By variable: whether one of `exprs` reads a field of an event the
/// variable bound (`a.amount`, `avg(a.amount)`; not its time or count).
pub fn reads_bound_fields<'a>(vars: usize, exprs: impl Iterator<Item = &'a CExpr>) -> Vec<bool> {
    fn mark(e: &CExpr, read: &mut [bool]) {
        match e {
            CExpr::VarField(v, _) | CExpr::Agg(_, v, Some(_)) => read[*v as usize] = true,
            CExpr::Const(_)
            | CExpr::Field(_)
            | CExpr::FieldCmpNum(..)
            | CExpr::Time(_)
            | CExpr::Agg(_, _, None)
            | CExpr::History(_)
            | CExpr::SincePrevious(_)
            | CExpr::Info(_) => {}
            CExpr::Not(x)
            | CExpr::Neg(x)
            | CExpr::Matches(x, _)
            | CExpr::Is(x, ..)
            | CExpr::Call(_, x) => mark(x, read),
            CExpr::Bin(_, l, r) => {
                mark(l, read);
                mark(r, read);
            }
            CExpr::In(x, set, _) => {
                mark(x, read);
                set.iter().for_each(|e| mark(e, read));
            }
        }
    }
    let mut read = vec![false; vars];
    exprs.for_each(|e| mark(e, &mut read));
    read
}

fn aggregate(f: AggFunc, var: VarId, slot: Option<u32>, bindings: &Bindings) -> Value {
    // Oldest first, as written: sums of floats depend on the order.
    let of_var: smallvec::SmallVec<[&Binding; 8]> =
        bindings.newest_first().filter(|b| b.var == var).collect();
    let mut values = of_var.into_iter().rev().map(|b| match slot {
        Some(s) => b.event.slot(s).clone(),
        None => Value::Int(b.event.time),
    });
    match f {
        AggFunc::Count => Value::Int(match slot {
            None => values.count(),
            Some(_) => values.filter(|v| !v.is_absent()).count(),
        } as i64),
        AggFunc::First => values.next().unwrap_or(Value::Null),
        AggFunc::Last => values.next_back().unwrap_or(Value::Null),
        AggFunc::Sum | AggFunc::Avg => {
            let (mut int_sum, mut float_sum, mut n, mut all_int) = (0i64, 0f64, 0usize, true);
            for v in values {
                match v {
                    Value::Int(i) => {
                        int_sum = int_sum.wrapping_add(i);
                        float_sum += i as f64;
                    }
                    Value::Float(x) => {
                        all_int = false;
                        float_sum += x;
                    }
                    _ => continue,
                }
                n += 1;
            }
            match (f, n) {
                (AggFunc::Avg, 0) => Value::Null,
                (AggFunc::Avg, _) => Value::Float(float_sum / n as f64),
                (_, _) if all_int => Value::Int(int_sum),
                _ => Value::Float(float_sum),
            }
        }
        AggFunc::Min | AggFunc::Max => values
            .filter(|v| !v.is_absent())
            .reduce(|best, v| {
                let better = match v.compare(&best) {
                    Some(o) if f == AggFunc::Min => o.is_lt(),
                    Some(o) => o.is_gt(),
                    None => false,
                };
                if better {
                    v
                } else {
                    best
                }
            })
            .unwrap_or(Value::Null),
    }
}

fn builtin(f: Builtin, v: &Value) -> Value {
    match (f, v) {
        (Builtin::Lower, Value::Str(s)) => Value::Str(Arc::from(s.to_lowercase())),
        (Builtin::Upper, Value::Str(s)) => Value::Str(Arc::from(s.to_uppercase())),
        (Builtin::Len, Value::Str(s)) => Value::Int(s.chars().count() as i64),
        (Builtin::Abs, Value::Int(i)) => Value::Int(i.wrapping_abs()),
        (Builtin::Abs, Value::Float(x)) => Value::Float(x.abs()),
        _ => Value::Null,
    }
}

// ---- compiling ----

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
    fn var(&self, name: &str) -> Option<VarId> {
        self.vars
            .iter()
            .position(|v| v.name == name)
            .map(|n| n as VarId)
    }

    fn err(&mut self, span: Span, msg: String, hint: &str) -> CExpr {
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

/// Names for [`CExpr::explain`]: the pattern's field paths and variables.
pub struct Names<'a> {
    pub fields: &'a [Vec<String>],
    pub vars: &'a [VarInfo],
}

impl CExpr {
    /// The expression with the values it saw: `amount > 500 was 432 > 500`;
    /// `and` / `or` explain each side. For `cep why`, never on the hot path.
    pub fn explain(&self, names: &Names, env: &Env) -> String {
        match self {
            CExpr::Bin(op @ (BinaryOp::And | BinaryOp::Or), l, r) => format!(
                "({}) {} ({})",
                l.explain(names, env),
                op.symbol(),
                r.explain(names, env)
            ),
            CExpr::Bin(op, l, r) => format!(
                "{} {} {} was {} {} {}",
                l.source(names),
                op.symbol(),
                r.source(names),
                shown(&l.eval(env)),
                op.symbol(),
                shown(&r.eval(env))
            ),
            CExpr::FieldCmpNum(op, slot, n) => {
                let field = CExpr::Field(*slot);
                format!(
                    "{} {} {n} was {} {} {n}",
                    field.source(names),
                    op.symbol(),
                    shown(&field.eval(env)),
                    op.symbol()
                )
            }
            other => format!("{} was {}", other.source(names), shown(&other.eval(env))),
        }
    }

    /// A short rendering of the expression's source.
    fn source(&self, names: &Names) -> String {
        let field = |s: &u32| {
            names
                .fields
                .get(*s as usize)
                .map_or_else(|| format!("slot {s}"), |p| p.join("."))
        };
        let var = |v: &VarId| {
            names
                .vars
                .get(*v as usize)
                .map_or_else(|| format!("var {v}"), |i| i.name.clone())
        };
        match self {
            CExpr::Const(v) => shown(v),
            CExpr::Field(s) => field(s),
            CExpr::VarField(v, s) => format!("{}.{}", var(v), field(s)),
            CExpr::Time(None) => "time".into(),
            CExpr::Time(Some(v)) => format!("{}.time", var(v)),
            CExpr::Neg(x) => format!("-{}", x.source(names)),
            CExpr::Not(x) => format!("not {}", x.source(names)),
            CExpr::Bin(op, l, r) => {
                format!("{} {} {}", l.source(names), op.symbol(), r.source(names))
            }
            CExpr::FieldCmpNum(op, s, n) => format!("{} {} {n}", field(s), op.symbol()),
            CExpr::History(q) => q.source.clone(),
            CExpr::SincePrevious(_) => "time since previous".into(),
            _ => "(expression)".into(),
        }
    }
}

fn shown(v: &Value) -> String {
    match v {
        Value::Missing => "missing".into(),
        other => other.to_json().to_string(),
    }
}
