//! Compiling questions to a key's history: `avg(amount) over 30d`,
//! `country not seen in 90d`, `with at least 5 events`.
//!
//! Each question names a field of the key's own events (never a variable:
//! history is every event of the key, not the events of one match) and a
//! window; questions on the same field and window share one track of the
//! pattern's [`HistoryPlan`].

use crate::dsl::ast::{self, ExprKind, Literal};
use crate::history::{Field, Func, Query, TrackKind};

use super::{CExpr, Resolver};

const FUNCTIONS: &str = "count, sum, avg, min, max, stddev, percentile";

impl Resolver<'_> {
    /// `call over window [with at least n events]`.
    pub(super) fn over(
        &mut self,
        whole: &ast::Expr,
        call: &ast::Expr,
        window: i64,
        at_least: Option<u32>,
    ) -> CExpr {
        let ExprKind::Call { func, args } = &call.kind else {
            return self.err(
                call.span,
                "`over` follows a function call".into(),
                "write `avg(amount) over 30d`",
            );
        };
        let f = match func.name.as_str() {
            "count" if args.is_empty() => Func::Events,
            "count" => Func::Count,
            "sum" => Func::Sum,
            "avg" => Func::Avg,
            "min" => Func::Min,
            "max" => Func::Max,
            "stddev" => Func::Stddev,
            "percentile" => match self.percent(call, args) {
                Some(p) => Func::Percentile(p),
                None => return CExpr::Const(crate::value::Value::Null),
            },
            other => {
                return self.err(
                    func.span,
                    format!("`{other}` cannot look back over a key's history"),
                    &format!("functions over a window: {FUNCTIONS}"),
                )
            }
        };
        let wanted = match f {
            Func::Events | Func::Count => args.len() <= 1,
            Func::Percentile(_) => true,
            _ => args.len() == 1,
        };
        if !wanted {
            return self.err(
                call.span,
                format!(
                    "`{}` over a window takes one field, found {} arguments",
                    func.name,
                    args.len()
                ),
                "write `count() over 1h`, `count(amount) over 1h` or `sum(amount) over 1d`",
            );
        }
        let field = match args.first() {
            Some(a) => match self.history_field(a) {
                Some(f) => Some(f),
                None => return CExpr::Const(crate::value::Value::Null),
            },
            None => None,
        };
        let quantiles = matches!(f, Func::Percentile(_));
        let track = self
            .history
            .track(TrackKind::Values { field, quantiles }, window);
        CExpr::History(Box::new(Query {
            func: f,
            track,
            window,
            at_least: at_least.map(|n| (n, track)),
            source: crate::dsl::print::expr(whole),
        }))
    }

    /// `value [not] seen in window [with at least n events]`.
    pub(super) fn seen(
        &mut self,
        whole: &ast::Expr,
        value: &ast::Expr,
        negated: bool,
        window: i64,
        at_least: Option<u32>,
    ) -> CExpr {
        let Some(field) = self.history_field(value) else {
            return CExpr::Const(crate::value::Value::Null);
        };
        let slot = field.slot;
        let track = self.history.track(TrackKind::Seen { field }, window);
        let counter = at_least.map(|n| {
            let all = TrackKind::Values {
                field: None,
                quantiles: false,
            };
            (n, self.history.track(all, window))
        });
        CExpr::History(Box::new(Query {
            func: Func::Seen { slot, negated },
            track,
            window,
            at_least: counter,
            source: crate::dsl::print::expr(whole),
        }))
    }

    /// The field a history question reads: a path that is not a variable.
    fn history_field(&mut self, e: &ast::Expr) -> Option<Field> {
        let ExprKind::Path(p) = &e.kind else {
            self.err(
                e.span,
                "history reads a field of the key's events".into(),
                "name a field: `avg(amount) over 30d`, `country not seen in 90d`",
            );
            return None;
        };
        if self.var(&p.segments[0]).is_some() {
            self.err(
                p.span,
                format!("`{}` is a variable; history reads the key's own past events", p.segments[0]),
                "name a field of the events (`amount`), not of a variable; rename the variable if a field has its name",
            );
            return None;
        }
        Some(Field {
            slot: self.fields.slot(&p.segments) as u32,
            path: p.segments.clone(),
        })
    }

    /// The percent of `percentile(field, p)`: a number from 0 to 100.
    fn percent(&mut self, call: &ast::Expr, args: &[ast::Expr]) -> Option<f64> {
        let p = match args.get(1).map(|a| &a.kind) {
            Some(ExprKind::Literal(Literal::Int(i))) => *i as f64,
            Some(ExprKind::Literal(Literal::Float(f))) => *f,
            _ => f64::NAN,
        };
        if args.len() != 2 || !(0.0..=100.0).contains(&p) {
            self.err(
                args.get(1).map_or(call.span, |a| a.span),
                "`percentile` takes a field and a percent from 0 to 100".into(),
                "write `percentile(amount, 95) over 30d`",
            );
            return None;
        }
        Some(p)
    }
}

/// The longest history window an expression names (0: none), to bound
/// how far back `time since previous` looks.
pub fn longest_window(e: &ast::Expr) -> i64 {
    match &e.kind {
        ExprKind::Over { window, .. } => window.millis,
        ExprKind::Seen { value, window, .. } => window.millis.max(longest_window(value)),
        ExprKind::Unary(_, x) => longest_window(x),
        ExprKind::Binary(_, l, r) => longest_window(l).max(longest_window(r)),
        ExprKind::In { value, list, .. } => list
            .iter()
            .map(longest_window)
            .max()
            .unwrap_or(0)
            .max(longest_window(value)),
        ExprKind::Matches { value, .. } | ExprKind::Is { value, .. } => longest_window(value),
        ExprKind::Call { args, .. } => args.iter().map(longest_window).max().unwrap_or(0),
        ExprKind::Literal(_) | ExprKind::Path(_) | ExprKind::SincePrevious => 0,
    }
}

/// Whether an expression asks for `time since previous`.
pub fn uses_since_previous(e: &ast::Expr) -> Option<ast::Span> {
    match &e.kind {
        ExprKind::SincePrevious => Some(e.span),
        ExprKind::Unary(_, x) => uses_since_previous(x),
        ExprKind::Binary(_, l, r) => uses_since_previous(l).or_else(|| uses_since_previous(r)),
        ExprKind::In { value, list, .. } => {
            uses_since_previous(value).or_else(|| list.iter().find_map(uses_since_previous))
        }
        ExprKind::Matches { value, .. }
        | ExprKind::Is { value, .. }
        | ExprKind::Seen { value, .. } => uses_since_previous(value),
        ExprKind::Call { args, .. } => args.iter().find_map(uses_since_previous),
        ExprKind::Over { call, .. } => uses_since_previous(call),
        ExprKind::Literal(_) | ExprKind::Path(_) => None,
    }
}
