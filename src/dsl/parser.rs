//! Tokens → syntax tree.
//!
//! A recursive-descent parser over the lexer's tokens. Each `pattern … end`
//! block is parsed on its own: an error inside one block is recorded and the
//! parser resumes at the next `pattern`, so a file with several broken
//! patterns reports all of them at once. Semantic checks (unknown variables,
//! windows, regexes) live in the compiler; this stage only knows the shape.

use super::ast::*;
use super::error::Diagnostic;
use super::lexer::{tokenize, Tok, Token};

mod expr;

/// Parses a whole file. On failure returns every error found.
pub fn parse(src: &str) -> Result<File, Vec<Diagnostic>> {
    let (file, errors) = parse_partial(src);
    if errors.is_empty() {
        Ok(file)
    } else {
        Err(errors)
    }
}

/// Parses what can be parsed: the patterns that parsed, and the errors of
/// those that did not (so that the compiler can still check the rest).
pub fn parse_partial(src: &str) -> (File, Vec<Diagnostic>) {
    let tokens = match tokenize(src) {
        Ok(t) => t,
        Err(d) => return (File::default(), vec![d]),
    };
    let mut p = Parser { tokens, pos: 0 };
    let mut file = File::default();
    let mut errors = Vec::new();
    while !p.at_eof() {
        let start = p.pos;
        match p.pattern() {
            Ok(pattern) => file.patterns.push(pattern),
            Err(e) => {
                errors.push(e);
                p.recover(start);
            }
        }
    }
    (file, errors)
}

/// Parses a single expression (used by tests and tools).
pub fn parse_expr(src: &str) -> Result<Expr, Diagnostic> {
    let tokens = tokenize(src)?;
    let mut p = Parser { tokens, pos: 0 };
    let e = p.expr()?;
    if !p.at_eof() {
        return Err(p.unexpected("end of expression"));
    }
    Ok(e)
}

type PResult<T> = Result<T, Diagnostic>;

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

/// Words that end a sequence, a define list or an emit list.
const SECTION_WORDS: [&str; 5] = ["define", "emit", "on", "end", "pattern"];
/// Words that cannot start a field path inside an expression.
const EXPR_WORDS: [&str; 10] = [
    "and", "or", "not", "in", "is", "contains", "starts", "ends", "matches", "as",
];

impl Parser {
    fn peek(&self) -> &Token {
        &self.tokens[self.pos]
    }
    fn peek_at(&self, n: usize) -> &Tok {
        &self.tokens[(self.pos + n).min(self.tokens.len() - 1)].tok
    }
    fn at_eof(&self) -> bool {
        self.peek().tok == Tok::Eof
    }
    fn bump(&mut self) -> Token {
        let t = self.tokens[self.pos].clone();
        if t.tok != Tok::Eof {
            self.pos += 1;
        }
        t
    }
    fn prev_span(&self) -> Span {
        self.tokens[self.pos.saturating_sub(1)].span
    }
    fn is_word(&self, w: &str) -> bool {
        matches!(&self.peek().tok, Tok::Word(x) if x == w)
    }
    fn is_punct(&self, p: &str) -> bool {
        matches!(&self.peek().tok, Tok::Punct(x) if *x == p)
    }
    fn eat_word(&mut self, w: &str) -> bool {
        if self.is_word(w) {
            self.bump();
            true
        } else {
            false
        }
    }
    fn eat_punct(&mut self, p: &str) -> bool {
        if self.is_punct(p) {
            self.bump();
            true
        } else {
            false
        }
    }
    fn unexpected(&self, expected: &str) -> Diagnostic {
        let t = self.peek();
        Diagnostic::new(
            t.span,
            format!("expected {expected}, found {}", t.tok.describe()),
        )
    }
    fn expect_word(&mut self, w: &str, hint: &str) -> PResult<Span> {
        if self.is_word(w) {
            Ok(self.bump().span)
        } else {
            Err(self.unexpected(&format!("`{w}`")).hint(hint))
        }
    }
    fn expect_punct(&mut self, p: &str, hint: &str) -> PResult<Span> {
        if self.is_punct(p) {
            Ok(self.bump().span)
        } else {
            Err(self.unexpected(&format!("`{p}`")).hint(hint))
        }
    }
    fn ident(&mut self, what: &str) -> PResult<Ident> {
        match &self.peek().tok {
            Tok::Word(w) | Tok::Quoted(w) => {
                let name = w.clone();
                let span = self.bump().span;
                Ok(Ident { name, span })
            }
            _ => Err(self.unexpected(what)),
        }
    }
    fn string(&mut self, what: &str) -> PResult<(String, Span)> {
        match &self.peek().tok {
            Tok::Str(s) => {
                let s = s.clone();
                Ok((s, self.bump().span))
            }
            _ => Err(self.unexpected(what)),
        }
    }
    fn duration(&mut self, hint: &str) -> PResult<Duration> {
        match self.peek().tok {
            Tok::Duration(millis) if millis > 0 => Ok(Duration {
                millis,
                span: self.bump().span,
            }),
            Tok::Duration(_) => Err(
                Diagnostic::new(self.peek().span, "a window must be positive")
                    .hint("write a duration such as `5m`"),
            ),
            _ => Err(self.unexpected("a duration").hint(hint)),
        }
    }
    fn path(&mut self) -> PResult<Path> {
        let first = self.ident("a field name")?;
        let mut segments = vec![first.name];
        let mut span = first.span;
        while self.is_punct(".") {
            self.bump();
            let seg = self.ident("a field name after `.`")?;
            span = span.to(seg.span);
            segments.push(seg.name);
        }
        Ok(Path { segments, span })
    }

    /// Skips to the next `pattern` after the failed block's start (which may
    /// be the very token the error is at: `pattern` where `end` was due).
    fn recover(&mut self, block_start: usize) {
        if self.pos == block_start {
            self.bump();
        }
        while !self.at_eof() && !self.is_word("pattern") && !self.is_word("shadow") {
            self.bump();
        }
        // `shadow` only starts a block before `pattern`.
        if self.is_word("pattern")
            && self.pos > 0
            && self.tokens[self.pos - 1].tok == Tok::Word("shadow".into())
        {
            self.pos -= 1;
        }
    }

    fn pattern(&mut self) -> PResult<Pattern> {
        let start = self.peek().span;
        let shadow = self.eat_word("shadow");
        self.expect_word(
            "pattern",
            "a file holds pattern blocks: `pattern NAME ... end`",
        )?;
        let name = self.ident("a pattern name")?;
        let mut h = Header::default();
        loop {
            let t = self.peek().clone();
            let Tok::Word(w) = &t.tok else {
                return Err(self
                    .unexpected("a header clause or `match`")
                    .hint(HEADER_HINT));
            };
            if w == "match" {
                break;
            }
            if h.seen.contains(w) {
                return Err(Diagnostic::new(t.span, format!("`{w}` is given twice"))
                    .hint("each header clause may appear once"));
            }
            h.seen.push(w.clone());
            self.bump();
            match w.as_str() {
                "version" => match self.peek().tok {
                    Tok::Int(v) if v > 0 && v <= u32::MAX as i64 => {
                        self.bump();
                        h.version = Some(v as u32);
                    }
                    _ => {
                        return Err(self
                            .unexpected("a version number")
                            .hint("versions are positive integers: `version 2`"))
                    }
                },
                "description" => h.description = Some(self.string("a description string")?.0),
                "from" => h.stream = Some(self.ident("a stream name")?),
                "key" => {
                    h.key.push(self.path()?);
                    while self.eat_punct(",") {
                        h.key.push(self.path()?);
                    }
                }
                "time" => {
                    let field = self.path()?;
                    let format = if self.eat_word("as") {
                        self.time_format()?
                    } else {
                        TimeFormat::Auto
                    };
                    h.time = Some(TimeSpec { field, format });
                }
                "within" => {
                    h.within = Some(self.duration("the window is a duration: `within 5m`")?)
                }
                "max" => {
                    self.expect_word("gap", "the clause is `max gap 6h`")?;
                    h.max_gap = Some(self.duration("the gap is a duration: `max gap 6h`")?);
                }
                "history" => {
                    h.history = Some(self.duration("the look-back is a duration: `history 90d`")?)
                }
                "skip" => h.skip = Some(self.skip()?),
                "severity" => h.severity = Some(self.ident("a severity such as `high`")?),
                "labels" => loop {
                    let k = self.ident("a label name")?;
                    self.expect_punct("=", "labels are written `team = \"fraud\"`")?;
                    let (v, _) = self.string("a label value string")?;
                    h.labels.push((k, v));
                    if !self.eat_punct(",") {
                        break;
                    }
                },
                _ => {
                    return Err(
                        Diagnostic::new(t.span, format!("unknown header clause `{w}`"))
                            .hint(HEADER_HINT),
                    )
                }
            }
        }
        self.bump(); // match
        let sequence = self.sequence()?;
        let mut defines = Vec::new();
        if self.eat_word("define") {
            loop {
                let var = self.ident("a variable name")?;
                self.expect_word("as", "a definition reads `small as amount < 10`")?;
                let condition = self.expr()?;
                defines.push(Define { var, condition });
                if !self.eat_punct(",") {
                    break;
                }
            }
        }
        let mut emit = Vec::new();
        if self.eat_word("emit") {
            emit = self.outputs()?;
        }
        let mut on_timeout = None;
        if self.eat_word("on") {
            self.expect_word("timeout", "the clause is `on timeout emit ...`")?;
            self.expect_word("emit", "the clause is `on timeout emit ...`")?;
            on_timeout = Some(self.outputs()?);
        }
        if self.at_eof() || self.is_word("pattern") || self.is_word("shadow") {
            return Err(self
                .unexpected(&format!("`end` to close pattern `{}`", name.name))
                .hint("every pattern block ends with `end`"));
        }
        if !self.is_word("end") {
            let expected = if on_timeout.is_some() {
                "`end`"
            } else if !emit.is_empty() {
                "`on timeout emit` or `end`"
            } else if !defines.is_empty() {
                "`,`, `emit`, `on timeout emit` or `end`"
            } else {
                "a connector (`next`, `then`, `then any`), `define`, `emit` or `end`"
            };
            return Err(self.unexpected(expected).hint(
                "a pattern reads: header, `match`, `define`, `emit`, `on timeout emit`, `end`",
            ));
        }
        let end = self.bump().span;
        let stream = h.stream.ok_or_else(|| {
            Diagnostic::new(
                name.span,
                format!("pattern `{}` has no `from` clause", name.name),
            )
            .hint("name the input stream: `from cards`")
        })?;
        let time = h.time.ok_or_else(|| {
            Diagnostic::new(
                name.span,
                format!("pattern `{}` has no `time` clause", name.name),
            )
            .hint("name the event-time field: `time ts`")
        })?;
        Ok(Pattern {
            name,
            shadow,
            version: h.version.unwrap_or(1),
            description: h.description,
            stream,
            key: h.key,
            time,
            within: h.within,
            max_gap: h.max_gap,
            history: h.history,
            skip: h.skip.unwrap_or_default(),
            severity: h.severity,
            labels: h.labels,
            sequence,
            defines,
            emit,
            on_timeout,
            span: start.to(end),
        })
    }

    fn time_format(&mut self) -> PResult<TimeFormat> {
        if let Tok::Str(s) = &self.peek().tok {
            let s = s.clone();
            self.bump();
            return Ok(TimeFormat::Chrono(s));
        }
        let t = self.peek().clone();
        let f = match &t.tok {
            Tok::Word(w) if w == "millis" => TimeFormat::Millis,
            Tok::Word(w) if w == "seconds" => TimeFormat::Seconds,
            Tok::Word(w) if w == "rfc3339" => TimeFormat::Rfc3339,
            _ => {
                return Err(self
                    .unexpected("a time format")
                    .hint("formats are `millis`, `seconds`, `rfc3339` or a chrono format string"))
            }
        };
        self.bump();
        Ok(f)
    }

    fn skip(&mut self) -> PResult<Skip> {
        const HINT: &str =
            "strategies: `none`, `to next`, `past last event`, `to first V`, `to last V`";
        if self.eat_word("none") {
            return Ok(Skip::NoSkip);
        }
        if self.eat_word("past") {
            self.expect_word("last", HINT)?;
            self.eat_word("event");
            return Ok(Skip::PastLast);
        }
        self.expect_word("to", HINT)?;
        if self.eat_word("next") {
            Ok(Skip::ToNext)
        } else if self.eat_word("first") {
            Ok(Skip::ToFirst(self.ident("a variable name")?))
        } else if self.eat_word("last") {
            Ok(Skip::ToLast(self.ident("a variable name")?))
        } else {
            Err(self.unexpected("`next`, `first` or `last`").hint(HINT))
        }
    }

    fn outputs(&mut self) -> PResult<Vec<OutputField>> {
        let mut out = Vec::new();
        loop {
            let name = self.ident("an output field name")?;
            self.expect_punct("=", "outputs are written `name = expression`")?;
            let value = self.expr()?;
            out.push(OutputField { name, value });
            if !self.eat_punct(",") {
                return Ok(out);
            }
        }
    }

    fn sequence(&mut self) -> PResult<Sequence> {
        let start = self.peek().span;
        let mut branches = vec![self.branch()?];
        while self.eat_punct("|") {
            branches.push(self.branch()?);
        }
        Ok(Sequence {
            branches,
            span: start.to(self.prev_span()),
        })
    }

    fn connector(&mut self) -> Option<Contiguity> {
        if self.eat_word("next") {
            Some(Contiguity::Strict)
        } else if self.eat_word("then") {
            if self.eat_word("any") {
                Some(Contiguity::Any)
            } else {
                Some(Contiguity::Relaxed)
            }
        } else {
            None
        }
    }

    fn branch(&mut self) -> PResult<Branch> {
        let mut items = vec![Item {
            connector: None,
            element: self.element()?,
        }];
        loop {
            if self.is_punct("|") || self.is_punct(")") || self.at_eof() {
                break;
            }
            if matches!(&self.peek().tok, Tok::Word(w) if SECTION_WORDS.contains(&w.as_str())) {
                break;
            }
            let Some(connector) = self.connector() else {
                return Err(self
                    .unexpected("a connector (`next`, `then`, `then any`)")
                    .hint("steps are joined by `next` (strict), `then` (relaxed) or `then any`"));
            };
            items.push(Item {
                connector: Some(connector),
                element: self.element()?,
            });
        }
        Ok(Branch { items })
    }

    fn element(&mut self) -> PResult<Element> {
        if self.eat_punct("(") {
            let sequence = self.sequence()?;
            self.expect_punct(")", "close the group with `)`")?;
            let quantifier = self.quantifier()?;
            return Ok(Element::Group {
                sequence,
                quantifier,
            });
        }
        if self.is_word("not") {
            let not = self.bump().span;
            let var = self.ident("a variable name after `not`")?;
            if self.is_punct("?") || self.is_punct("*") || self.is_punct("+") || self.is_punct("{")
            {
                return Err(Diagnostic::new(
                    not.to(self.peek().span),
                    "a negated step cannot be quantified",
                )
                .hint("`not x` already means: no event matching `x` at all"));
            }
            return Ok(Element::Not { var });
        }
        match &self.peek().tok {
            Tok::Word(w) if SECTION_WORDS.contains(&w.as_str()) || w == "next" || w == "then" => {
                return Err(self
                    .unexpected("a step variable")
                    .hint("a sequence names variables joined by connectors: `small then large`"))
            }
            _ => {}
        }
        let var = self.ident("a step variable")?;
        let quantifier = self.quantifier()?;
        Ok(Element::Step { var, quantifier })
    }

    fn quantifier(&mut self) -> PResult<Option<Quantifier>> {
        let start = self.peek().span;
        let (min, max) = if self.eat_punct("?") {
            (0, Some(1))
        } else if self.eat_punct("*") {
            (0, None)
        } else if self.eat_punct("+") {
            (1, None)
        } else if self.eat_punct("{") {
            let min = self.count()?;
            let max = if self.eat_punct(",") {
                if self.is_punct("}") {
                    None
                } else {
                    Some(self.count()?)
                }
            } else {
                Some(min)
            };
            self.expect_punct("}", "quantifiers are `{n}`, `{n,}` or `{n,m}`")?;
            if let Some(max) = max {
                if max < min || max == 0 {
                    return Err(Diagnostic::new(
                        start.to(self.prev_span()),
                        format!("quantifier `{{{min},{max}}}` can never match"),
                    )
                    .hint("the upper bound must be at least the lower bound and above zero"));
                }
            }
            (min, max)
        } else {
            return Ok(None);
        };
        let greedy = !self.eat_punct("?");
        let inner = if self.eat_word("strict") {
            Contiguity::Strict
        } else if self.eat_word("any") {
            Contiguity::Any
        } else {
            self.eat_word("relaxed");
            Contiguity::Relaxed
        };
        Ok(Some(Quantifier {
            min,
            max,
            greedy,
            inner,
            span: start.to(self.prev_span()),
        }))
    }

    fn count(&mut self) -> PResult<u32> {
        match self.peek().tok {
            Tok::Int(n) if (0..=10_000).contains(&n) => {
                self.bump();
                Ok(n as u32)
            }
            _ => Err(self
                .unexpected("a repetition count")
                .hint("counts are whole numbers from 0 to 10000")),
        }
    }
}

const HEADER_HINT: &str = "header clauses are `version`, `description`, `from`, `key`, `time`, `within`, `max gap`, `history`, `skip`, `severity`, `labels`; the sequence follows `match`";

#[derive(Default)]
struct Header {
    seen: Vec<String>,
    version: Option<u32>,
    description: Option<String>,
    stream: Option<Ident>,
    key: Vec<Path>,
    time: Option<TimeSpec>,
    within: Option<Duration>,
    max_gap: Option<Duration>,
    history: Option<Duration>,
    skip: Option<Skip>,
    severity: Option<Ident>,
    labels: Vec<(Ident, String)>,
}
