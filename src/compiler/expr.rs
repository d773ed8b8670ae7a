//! Conditions and outputs: checked, resolved to slots, and evaluated.
//!
//! The compiler turns an [`crate::dsl::ast::Expr`] into a [`CExpr`] in
//! which every field path is a slot number and every variable reference a
//! [`VarId`] ([`Resolver`], in `resolve`). What a condition may refer to is
//! decided there, once: the current event's fields, fields of variables
//! bound *before* the step, and aggregates over looping variables.
//! Evaluation, here, is a plain tree walk over slot values; operands that
//! are fields or constants are borrowed, never cloned.

mod bindings;
mod bound_event;
mod lookback;
mod resolve;

pub use bindings::Bindings;
pub use bound_event::BoundEvent;
pub use lookback::{longest_window, uses_since_previous};
pub use resolve::{Context, Resolver, VarInfo};

use std::borrow::Cow;
use std::sync::Arc;

use regex_automata::meta::Regex;

use crate::dsl::ast::{BinaryOp, IsTest};
use crate::event::{Event, Key};
use crate::history::{self, KeyHistory};
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
    /// `field is missing or field is null` (negated: `field is not missing
    /// and field is not null`), how patterns test for a value that is not
    /// there, pre-resolved (see [`CExpr::optimize`]): one read of the
    /// field, where the two tests and their `or` took three calls through
    /// the interpreter (the flight patterns test every event for a
    /// cancellation this way).
    FieldAbsent(u32, bool),
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
            CExpr::FieldAbsent(slot, negated) => field_absent(*slot, env) != *negated,
            // `is missing`, `is null` and their negations, without a
            // boolean value made and read back (the flight patterns test
            // every event for a cancellation this way).
            CExpr::Is(x, test, negated) => is(&x.eval(env), *test) != *negated,
            _ => self.eval(env).truthy(),
        }
    }

    /// Whether the value depends on the event being tested alone: not on
    /// bound events, the run, the key or its history.
    pub fn reads_only_the_event(&self) -> bool {
        match self {
            CExpr::Const(_)
            | CExpr::Field(_)
            | CExpr::FieldCmpNum(..)
            | CExpr::FieldAbsent(..)
            | CExpr::Time(None) => true,
            CExpr::VarField(..)
            | CExpr::Time(Some(_))
            | CExpr::Agg(..)
            | CExpr::Info(_)
            | CExpr::History(_)
            | CExpr::SincePrevious(_) => false,
            CExpr::Not(x)
            | CExpr::Neg(x)
            | CExpr::Matches(x, _)
            | CExpr::Is(x, ..)
            | CExpr::Call(_, x) => x.reads_only_the_event(),
            CExpr::Bin(_, l, r) => l.reads_only_the_event() && r.reads_only_the_event(),
            CExpr::In(x, set, _) => {
                x.reads_only_the_event() && set.iter().all(CExpr::reads_only_the_event)
            }
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
            CExpr::Bin(op @ (Or | And), l, r) => match (*l, *r) {
                (CExpr::Is(x, t, nx), CExpr::Is(y, u, ny))
                    if t != u && nx == ny && nx == (op == And) =>
                {
                    match (*x, *y) {
                        (CExpr::Field(a), CExpr::Field(b)) if a == b => CExpr::FieldAbsent(a, nx),
                        (x, y) => CExpr::Bin(
                            op,
                            Box::new(CExpr::Is(Box::new(x.optimize()), t, nx)),
                            Box::new(CExpr::Is(Box::new(y.optimize()), u, ny)),
                        ),
                    }
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
            CExpr::Is(x, test, negated) => Owned(Value::Bool(is(&x.eval(env), *test) != *negated)),
            CExpr::Call(f, x) => Owned(builtin(*f, x.eval(env).as_ref())),
            CExpr::FieldCmpNum(..) | CExpr::FieldAbsent(..) => Owned(Value::Bool(self.test(env))),
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

/// Whether `v` passes `test` (before any `not`).
#[inline]
fn is(v: &Value, test: IsTest) -> bool {
    match test {
        IsTest::Null => matches!(v, Value::Null),
        IsTest::Missing => matches!(v, Value::Missing),
    }
}

/// Whether the current event's field in `slot` is missing or null.
#[inline]
fn field_absent(slot: u32, env: &Env) -> bool {
    env.current.is_none_or(|ev| {
        matches!(
            ev.slots.get(slot as usize),
            None | Some(Value::Missing | Value::Null)
        )
    })
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
            | CExpr::FieldAbsent(..)
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
            CExpr::FieldAbsent(slot, _) => format!(
                "{} was {}",
                self.source(names),
                shown(&CExpr::Field(*slot).eval(env))
            ),
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
            CExpr::FieldAbsent(s, false) => format!("{0} is missing or {0} is null", field(s)),
            CExpr::FieldAbsent(s, true) => {
                format!("{0} is not missing and {0} is not null", field(s))
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Key, Slots};
    use BinaryOp::{And, Or};

    fn is(slot: u32, test: IsTest, negated: bool) -> Box<CExpr> {
        Box::new(CExpr::Is(Box::new(CExpr::Field(slot)), test, negated))
    }

    fn event(values: &[Value]) -> Event {
        Event {
            time: 0,
            key: Key::new("k"),
            slots: Slots::from_fn(values.len(), |i| values[i].clone()),
            hash: 0,
            raw: None,
        }
    }

    #[test]
    fn a_missing_or_null_test_is_one_test_that_answers_as_the_two() {
        use IsTest::{Missing, Null};
        let values = [
            Value::Missing,
            Value::Null,
            Value::Int(0),
            Value::Str("x".into()),
            Value::Bool(false),
        ];
        for (op, negated) in [(Or, false), (And, true)] {
            for (t, u) in [(Missing, Null), (Null, Missing)] {
                let plain = CExpr::Bin(op, is(1, t, negated), is(1, u, negated));
                let fused = plain.clone().optimize();
                assert!(
                    matches!(fused, CExpr::FieldAbsent(1, n) if n == negated),
                    "{fused:?}"
                );
                for v in &values {
                    let ev = event(&[Value::Int(1), v.clone()]);
                    let env = Env::of_event(&ev, None);
                    assert_eq!(fused.test(&env), plain.test(&env), "{op:?} {t:?} {v:?}");
                    assert_eq!(fused.eval(&env), plain.eval(&env), "{op:?} {t:?} {v:?}");
                }
            }
        }
        // Not the pair: a test twice, mixed negations, `and` without
        // negations, two fields.
        for plain in [
            CExpr::Bin(Or, is(1, Missing, false), is(1, Missing, false)),
            CExpr::Bin(Or, is(1, Missing, false), is(1, Null, true)),
            CExpr::Bin(And, is(1, Missing, false), is(1, Null, false)),
            CExpr::Bin(Or, is(0, Missing, false), is(1, Null, false)),
        ] {
            let kept = plain.clone().optimize();
            assert!(matches!(kept, CExpr::Bin(..)), "{kept:?}");
        }
    }
}
