//! Expressions: conditions in `define`, values in `emit`.
//!
//! Precedence climbing, loosest first: `or`, `and`, `not`, then comparisons
//! and the postfix tests (`in [..]`, `matches`, `is null`), which do not
//! chain, then `+ -`, `* / %`, unary minus. Negative literals are folded so
//! that `-5` prints and parses back the same.

use super::super::ast::*;
use super::super::error::Diagnostic;
use super::super::lexer::Tok;
use super::{PResult, Parser, EXPR_WORDS, SECTION_WORDS};

impl Parser {
    pub fn expr(&mut self) -> PResult<Expr> {
        self.binary(1)
    }

    fn binary_op(&self) -> Option<(BinaryOp, usize)> {
        use BinaryOp::*;
        let op = match &self.peek().tok {
            Tok::Word(w) => match w.as_str() {
                "or" => Or,
                "and" => And,
                "contains" => Contains,
                "starts" if self.peek_at(1) == &Tok::Word("with".into()) => {
                    return Some((StartsWith, 2))
                }
                "ends" if self.peek_at(1) == &Tok::Word("with".into()) => {
                    return Some((EndsWith, 2))
                }
                _ => return None,
            },
            Tok::Punct(p) => match *p {
                "==" => Eq,
                "!=" => Ne,
                "<" => Lt,
                "<=" => Le,
                ">" => Gt,
                ">=" => Ge,
                "+" => Add,
                "-" => Sub,
                "*" => Mul,
                "/" => Div,
                "%" => Rem,
                _ => return None,
            },
            _ => return None,
        };
        Some((op, 1))
    }

    /// Precedence climbing; `not` sits between `and` (2) and comparisons (4).
    fn binary(&mut self, min_prec: u8) -> PResult<Expr> {
        let mut lhs = if min_prec <= 3 && self.is_word("not") {
            let start = self.bump().span;
            let operand = self.binary(3)?;
            let span = start.to(operand.span);
            Expr {
                kind: ExprKind::Unary(UnaryOp::Not, Box::new(operand)),
                span,
            }
        } else {
            self.unary()?
        };
        loop {
            if min_prec <= 4 {
                if let Some(e) = self.postfix(&lhs)? {
                    lhs = e;
                    continue;
                }
            }
            let Some((op, width)) = self.binary_op() else {
                break;
            };
            let prec = op.precedence();
            if prec < min_prec {
                break;
            }
            for _ in 0..width {
                self.bump();
            }
            // Comparisons do not chain: `a < b < c` is an error, not `(a < b) < c`.
            let rhs = self.binary(if prec == 4 { 5 } else { prec + 1 })?;
            let span = lhs.span.to(rhs.span);
            lhs = Expr {
                kind: ExprKind::Binary(op, Box::new(lhs), Box::new(rhs)),
                span,
            };
            if prec == 4 && (self.binary_op().is_some_and(|(o, _)| o.precedence() == 4)) {
                return Err(self
                    .unexpected("`and`, `or` or the end of the condition")
                    .hint("comparisons do not chain: write `a < b and b < c`"));
            }
        }
        Ok(lhs)
    }

    /// `in [..]`, `not in [..]`, `matches "re"`, `is [not] null|missing`.
    fn postfix(&mut self, lhs: &Expr) -> PResult<Option<Expr>> {
        let negated_in = self.is_word("not") && self.peek_at(1) == &Tok::Word("in".into());
        if self.is_word("in") || negated_in {
            if negated_in {
                self.bump();
            }
            self.bump();
            self.expect_punct("[", "a list is written `[\"JFK\", \"LGA\"]`")?;
            let mut list = Vec::new();
            if !self.is_punct("]") {
                loop {
                    list.push(self.binary(5)?);
                    if !self.eat_punct(",") {
                        break;
                    }
                }
            }
            let end = self.expect_punct("]", "close the list with `]`")?;
            return Ok(Some(Expr {
                span: lhs.span.to(end),
                kind: ExprKind::In {
                    value: Box::new(lhs.clone()),
                    list,
                    negated: negated_in,
                },
            }));
        }
        if self.eat_word("matches") {
            let (regex, regex_span) = self.string("a regex string")?;
            return Ok(Some(Expr {
                span: lhs.span.to(regex_span),
                kind: ExprKind::Matches {
                    value: Box::new(lhs.clone()),
                    regex,
                    regex_span,
                },
            }));
        }
        let negated_seen = self.is_word("not") && self.peek_at(1) == &Tok::Word("seen".into());
        if self.is_word("seen") || negated_seen {
            if negated_seen {
                self.bump();
            }
            self.bump();
            self.expect_word("in", "write `country not seen in 90d`")?;
            let window = self.duration("the look-back is a duration: `seen in 90d`")?;
            let at_least = self.at_least()?;
            return Ok(Some(Expr {
                span: lhs.span.to(self.prev_span()),
                kind: ExprKind::Seen {
                    value: Box::new(lhs.clone()),
                    negated: negated_seen,
                    window,
                    at_least,
                },
            }));
        }
        if self.eat_word("is") {
            let negated = self.eat_word("not");
            let test = if self.eat_word("null") {
                IsTest::Null
            } else if self.eat_word("missing") {
                IsTest::Missing
            } else {
                return Err(self
                    .unexpected("`null` or `missing`")
                    .hint("write `x is null`, `x is missing` or `x is not missing`"));
            };
            return Ok(Some(Expr {
                span: lhs.span.to(self.prev_span()),
                kind: ExprKind::Is {
                    value: Box::new(lhs.clone()),
                    test,
                    negated,
                },
            }));
        }
        Ok(None)
    }

    fn unary(&mut self) -> PResult<Expr> {
        if self.is_punct("-") {
            let start = self.bump().span;
            let operand = self.unary()?;
            let span = start.to(operand.span);
            // Fold negative literals so that `-5` prints and parses back the same.
            let kind = match operand.kind {
                ExprKind::Literal(Literal::Int(i)) => ExprKind::Literal(Literal::Int(-i)),
                ExprKind::Literal(Literal::Float(f)) => ExprKind::Literal(Literal::Float(-f)),
                ExprKind::Literal(Literal::Duration(d)) => ExprKind::Literal(Literal::Duration(-d)),
                other => ExprKind::Unary(
                    UnaryOp::Neg,
                    Box::new(Expr {
                        kind: other,
                        span: operand.span,
                    }),
                ),
            };
            return Ok(Expr { kind, span });
        }
        self.primary()
    }

    fn primary(&mut self) -> PResult<Expr> {
        let t = self.peek().clone();
        let lit = |l| {
            Ok(Expr {
                kind: ExprKind::Literal(l),
                span: t.span,
            })
        };
        match &t.tok {
            Tok::Int(i) => {
                self.bump();
                lit(Literal::Int(*i))
            }
            Tok::Float(f) => {
                self.bump();
                lit(Literal::Float(*f))
            }
            Tok::Duration(d) => {
                self.bump();
                lit(Literal::Duration(*d))
            }
            Tok::Str(s) => {
                self.bump();
                lit(Literal::Str(s.clone()))
            }
            Tok::Punct("(") => {
                self.bump();
                let mut e = self.expr()?;
                let end = self.expect_punct(")", "close the parenthesis")?;
                e.span = t.span.to(end);
                Ok(e)
            }
            Tok::Word(w) if w == "true" || w == "false" => {
                self.bump();
                lit(Literal::Bool(w == "true"))
            }
            Tok::Word(w) if w == "null" => {
                self.bump();
                lit(Literal::Null)
            }
            Tok::Word(w) if w == "timestamp" && matches!(self.peek_at(1), Tok::Str(_)) => {
                self.bump();
                let (s, span) = self.string("a timestamp string")?;
                let ts = chrono::DateTime::parse_from_rfc3339(&s).map_err(|e| {
                    Diagnostic::new(span, format!("invalid timestamp: {e}"))
                        .hint("timestamps are RFC 3339: \"2013-01-01T10:00:00Z\"")
                })?;
                Ok(Expr {
                    kind: ExprKind::Literal(Literal::Timestamp(ts.timestamp_millis())),
                    span: t.span.to(span),
                })
            }
            Tok::Word(w)
                if w == "time"
                    && self.peek_at(1) == &Tok::Word("since".into())
                    && self.peek_at(2) == &Tok::Word("previous".into()) =>
            {
                self.bump();
                self.bump();
                let end = self.bump().span;
                Ok(Expr {
                    kind: ExprKind::SincePrevious,
                    span: t.span.to(end),
                })
            }
            // `end` names the match's end time in outputs (`emit e = end`);
            // it closes the block only where a block may close.
            Tok::Word(w)
                if w == "end"
                    && !matches!(self.peek_at(1), Tok::Eof)
                    && !matches!(self.peek_at(1), Tok::Word(n) if n == "pattern" || n == "shadow") =>
            {
                let path = self.path()?;
                Ok(Expr {
                    span: path.span,
                    kind: ExprKind::Path(path),
                })
            }
            Tok::Word(w) if EXPR_WORDS.contains(&w.as_str()) || SECTION_WORDS.contains(&w.as_str()) => {
                Err(self.unexpected("a value").hint(format!(
                    "`{w}` is a keyword here; write a field of that name in back quotes: `` `{w}` ``"
                )))
            }
            Tok::Word(_) if self.peek_at(1) == &Tok::Punct("(") => {
                let func = self.ident("a function name")?;
                self.bump();
                let mut args = Vec::new();
                if !self.is_punct(")") {
                    loop {
                        args.push(self.expr()?);
                        if !self.eat_punct(",") {
                            break;
                        }
                    }
                }
                let end = self.expect_punct(")", "close the argument list with `)`")?;
                let call = Expr {
                    span: func.span.to(end),
                    kind: ExprKind::Call { func, args },
                };
                self.over(call)
            }
            Tok::Word(_) | Tok::Quoted(_) => {
                let path = self.path()?;
                Ok(Expr {
                    span: path.span,
                    kind: ExprKind::Path(path),
                })
            }
            _ => Err(self.unexpected("a value").hint(
                "values are numbers, strings, durations (`5m`), `true`, `false`, `null` or field names",
            )),
        }
    }

    /// `call over 30d [with at least N events]`, or the call itself.
    fn over(&mut self, call: Expr) -> PResult<Expr> {
        if !self.eat_word("over") {
            return Ok(call);
        }
        let window = self.duration("the look-back is a duration: `avg(amount) over 30d`")?;
        let at_least = self.at_least()?;
        Ok(Expr {
            span: call.span.to(self.prev_span()),
            kind: ExprKind::Over {
                call: Box::new(call),
                window,
                at_least,
            },
        })
    }

    /// `with at least N events`, after a history window.
    fn at_least(&mut self) -> PResult<Option<u32>> {
        if !(self.is_word("with") && self.peek_at(1) == &Tok::Word("at".into())) {
            return Ok(None);
        }
        self.bump();
        self.bump();
        let hint = "write `with at least 5 events`";
        self.expect_word("least", hint)?;
        let n = match self.peek().tok {
            Tok::Int(n) if n > 0 && n <= u32::MAX as i64 => {
                self.bump();
                n as u32
            }
            Tok::Int(_) => {
                return Err(Diagnostic::new(
                    self.peek().span,
                    "`with at least` counts from 1 to 4294967295 events",
                )
                .hint("drop the clause to accept any history, or write `with at least 5 events`"))
            }
            _ => {
                return Err(self
                    .unexpected("a number of events")
                    .hint("at least one event: `with at least 5 events`"))
            }
        };
        if !self.eat_word("events") && !self.eat_word("event") {
            return Err(self.unexpected("`events`").hint(hint));
        }
        Ok(Some(n))
    }
}
