//! The syntax tree of a pattern file, exactly as written.
//!
//! The parser produces it, the printer turns it back into canonical source,
//! and the compiler checks and lowers it. Every node that a diagnostic may
//! point at carries a [`Span`]. Spans are metadata: two trees that differ
//! only in where things were written compare equal, which is what makes the
//! round trip `parse(print(ast)) == ast` meaningful.

use serde::{Deserialize, Serialize};

/// A byte range in the source text.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Span {
        Span { start, end }
    }
    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span::new(self.start.min(other.start), self.end.max(other.end))
    }
}

impl PartialEq for Span {
    fn eq(&self, _: &Span) -> bool {
        true
    }
}

/// A name with where it was written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// A field path such as `card.id`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Path {
    pub segments: Vec<String>,
    pub span: Span,
}

impl Path {
    pub fn dotted(&self) -> String {
        self.segments.join(".")
    }
}

/// A whole pattern file.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct File {
    pub patterns: Vec<Pattern>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Pattern {
    pub name: Ident,
    /// Matched and counted, never emitted.
    pub shadow: bool,
    pub version: u32,
    pub description: Option<String>,
    pub stream: Ident,
    /// Empty: one global key.
    pub key: Vec<Path>,
    pub time: TimeSpec,
    pub within: Option<Duration>,
    pub max_gap: Option<Duration>,
    /// How far back `time since previous` looks (default: the longest
    /// history window of the pattern).
    pub history: Option<Duration>,
    pub skip: Skip,
    pub severity: Option<Ident>,
    pub labels: Vec<(Ident, String)>,
    pub sequence: Sequence,
    pub defines: Vec<Define>,
    pub emit: Vec<OutputField>,
    pub on_timeout: Option<Vec<OutputField>>,
    pub span: Span,
}

/// Where an event's time comes from and how to read it.
#[derive(Clone, Debug, PartialEq)]
pub struct TimeSpec {
    pub field: Path,
    pub format: TimeFormat,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TimeFormat {
    /// Numbers are epoch milliseconds, strings RFC 3339.
    Auto,
    Millis,
    Seconds,
    Rfc3339,
    /// A chrono `strftime` format, read as UTC.
    Chrono(String),
}

/// A duration literal, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Duration {
    pub millis: i64,
    pub span: Span,
}

/// After-match skip strategy.
#[derive(Clone, Debug, PartialEq, Default)]
pub enum Skip {
    NoSkip,
    ToNext,
    #[default]
    PastLast,
    ToFirst(Ident),
    ToLast(Ident),
}

/// `a then b | c`: alternatives of sequences.
#[derive(Clone, Debug, PartialEq)]
pub struct Sequence {
    pub branches: Vec<Branch>,
    pub span: Span,
}

/// A sequence of elements joined by connectors.
#[derive(Clone, Debug, PartialEq)]
pub struct Branch {
    pub items: Vec<Item>,
}

/// An element and the connector written before it (`None` for the first).
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub connector: Option<Contiguity>,
    pub element: Element,
}

/// How a step treats the events between it and the previous one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Contiguity {
    /// `next`: the very next event of the key.
    Strict,
    /// `then`: skip events until the next one that matches.
    Relaxed,
    /// `then any`: every later event that matches, each in its own run.
    Any,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Element {
    Step {
        var: Ident,
        quantifier: Option<Quantifier>,
    },
    /// `not x`: no event matching `x` where this element stands.
    Not { var: Ident },
    Group {
        sequence: Sequence,
        quantifier: Option<Quantifier>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Quantifier {
    pub min: u32,
    /// `None`: unbounded.
    pub max: Option<u32>,
    pub greedy: bool,
    /// Contiguity between iterations.
    pub inner: Contiguity,
    pub span: Span,
}

/// `define v as condition`.
#[derive(Clone, Debug, PartialEq)]
pub struct Define {
    pub var: Ident,
    pub condition: Expr,
}

/// `name = expression` in `emit`.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputField {
    pub name: Ident,
    pub value: Expr,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Literal(Literal),
    /// A field of the current event, or `var.field` of a bound variable.
    Path(Path),
    Unary(UnaryOp, Box<Expr>),
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
    /// `x in [..]`, `x not in [..]`.
    In {
        value: Box<Expr>,
        list: Vec<Expr>,
        negated: bool,
    },
    /// `x matches "regex"`.
    Matches {
        value: Box<Expr>,
        regex: String,
        regex_span: Span,
    },
    /// `x is [not] null|missing`.
    Is {
        value: Box<Expr>,
        test: IsTest,
        negated: bool,
    },
    Call {
        func: Ident,
        args: Vec<Expr>,
    },
    /// `avg(amount) over 30d [with at least 5 events]`: an aggregate of
    /// the key's own past events (`call` is a [`ExprKind::Call`]).
    Over {
        call: Box<Expr>,
        window: Duration,
        at_least: Option<u32>,
    },
    /// `country [not] seen in 90d [with at least 5 events]`.
    Seen {
        value: Box<Expr>,
        negated: bool,
        window: Duration,
        at_least: Option<u32>,
    },
    /// `time since previous`: since the key's previous event.
    SincePrevious,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    Null,
    /// Milliseconds; printed back in the largest exact unit.
    Duration(i64),
    /// Epoch milliseconds; printed back as RFC 3339.
    Timestamp(i64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryOp {
    Not,
    Neg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Contains,
    StartsWith,
    EndsWith,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IsTest {
    Null,
    Missing,
}

impl BinaryOp {
    pub fn symbol(self) -> &'static str {
        use BinaryOp::*;
        match self {
            Or => "or",
            And => "and",
            Eq => "==",
            Ne => "!=",
            Lt => "<",
            Le => "<=",
            Gt => ">",
            Ge => ">=",
            Add => "+",
            Sub => "-",
            Mul => "*",
            Div => "/",
            Rem => "%",
            Contains => "contains",
            StartsWith => "starts with",
            EndsWith => "ends with",
        }
    }
    /// Binding strength: larger binds tighter.
    pub fn precedence(self) -> u8 {
        use BinaryOp::*;
        match self {
            Or => 1,
            And => 2,
            Eq | Ne | Lt | Le | Gt | Ge | Contains | StartsWith | EndsWith => 4,
            Add | Sub => 5,
            Mul | Div | Rem => 6,
        }
    }
}
