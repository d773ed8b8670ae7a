//! Patterns checked against the Avro schema of their input.
//!
//! Without a schema, a field a pattern names but the events lack reads as
//! `missing`, and a misspelt field (`amout`) or variable (`smal.amount`)
//! silently never matches. With one (`cep check --schema`, and the service
//! against the registry's latest schema of a topic), every field path a
//! pattern reads must exist in the schema, and a field compared with a
//! literal must be compared with a value of its type (an enum with one of
//! its symbols). Each problem is a [`Diagnostic`] at the path or the
//! literal, with a "did you mean" hint from the names at that level (and,
//! for the first segment, the pattern's variables).
//!
//! Paths are followed through records, unions (any branch may have the
//! field; `null` is skipped) and maps (any key). Fields of arrays and of
//! other types cannot be checked and are accepted.

use std::collections::HashMap;

use apache_avro::schema::{Name, Schema};

use crate::dsl::ast::{self, BinaryOp, Element, Expr, ExprKind, Literal, Path, Sequence};
use crate::dsl::Diagnostic;

/// An Avro schema with its named types, ready to check patterns against.
pub struct SchemaCheck {
    root: Schema,
    names: HashMap<Name, Schema>,
}

/// What a path leads to.
enum Found<'a> {
    Field(&'a Schema),
    /// Not checkable below this point (arrays, maps of unknown shape).
    Unknown,
    /// No such field: the segment and the names that exist there.
    Missing(usize, Vec<String>),
}

impl SchemaCheck {
    pub fn new(schema: Schema) -> Result<SchemaCheck, String> {
        let names = apache_avro::schema::ResolvedSchema::try_from(&schema)
            .map_err(|e| format!("invalid Avro schema: {e}"))?
            .get_names()
            .iter()
            .map(|(n, s)| (n.clone(), (*s).clone()))
            .collect();
        Ok(SchemaCheck {
            root: schema,
            names,
        })
    }

    /// Parses an `.avsc` text.
    pub fn parse(text: &str) -> Result<SchemaCheck, String> {
        let schema = Schema::parse_str(text).map_err(|e| format!("invalid Avro schema: {e}"))?;
        SchemaCheck::new(schema)
    }

    /// Every problem of `file`'s patterns against the schema (`stream`:
    /// only patterns reading that stream).
    pub fn check(&self, file: &ast::File, stream: Option<&str>) -> Vec<Diagnostic> {
        let mut errors = Vec::new();
        for p in &file.patterns {
            if stream.is_some_and(|s| s != p.stream.name) {
                continue;
            }
            let mut cx = Checker {
                schema: self,
                vars: Vec::new(),
                errors: &mut errors,
            };
            collect_vars(&p.sequence, &mut cx.vars);
            for k in &p.key {
                cx.field(k, &k.segments);
            }
            cx.field(&p.time.field, &p.time.field.segments);
            for d in &p.defines {
                cx.expr(&d.condition, false);
            }
            for o in p.emit.iter().chain(p.on_timeout.iter().flatten()) {
                cx.expr(&o.value, true);
            }
        }
        errors.sort_by_key(|d| d.span.start);
        errors
    }

    fn resolve<'a>(&'a self, s: &'a Schema) -> &'a Schema {
        match s {
            Schema::Ref { name } => self.names.get(name).unwrap_or(s),
            s => s,
        }
    }

    /// Follows `segments` from the root record.
    fn find(&self, segments: &[String]) -> Found<'_> {
        let mut at = vec![&self.root];
        for (i, seg) in segments.iter().enumerate() {
            let mut next = Vec::new();
            let mut names = Vec::new();
            let mut unknown = false;
            for s in at {
                self.step(s, seg, &mut next, &mut names, &mut unknown);
            }
            if next.is_empty() {
                return if unknown {
                    Found::Unknown
                } else {
                    Found::Missing(i, names)
                };
            }
            at = next;
        }
        Found::Field(at[0])
    }

    /// The schemas field `seg` of `s` may have (several through unions).
    fn step<'a>(
        &'a self,
        s: &'a Schema,
        seg: &str,
        next: &mut Vec<&'a Schema>,
        names: &mut Vec<String>,
        unknown: &mut bool,
    ) {
        match self.resolve(s) {
            Schema::Record(r) => match r.lookup.get(seg) {
                Some(i) => next.push(&r.fields[*i].schema),
                None => names.extend(r.fields.iter().map(|f| f.name.clone())),
            },
            Schema::Union(u) => {
                for v in u.variants() {
                    self.step(v, seg, next, names, unknown);
                }
            }
            Schema::Map(m) => next.push(&m.types),
            Schema::Null => {}
            _ => *unknown = true,
        }
    }

    /// The kind of values a schema holds, for comparisons.
    fn kind(&self, s: &Schema) -> Kind {
        match self.resolve(s) {
            Schema::Union(u) => {
                let kinds: Vec<Kind> = u
                    .variants()
                    .iter()
                    .filter(|v| !matches!(v, Schema::Null))
                    .map(|v| self.kind(v))
                    .collect();
                match kinds.as_slice() {
                    [one] => one.clone(),
                    _ => Kind::Other,
                }
            }
            Schema::Int
            | Schema::Long
            | Schema::Float
            | Schema::Double
            | Schema::Decimal(_)
            | Schema::BigDecimal
            | Schema::Date
            | Schema::TimeMillis
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => Kind::Number,
            Schema::String | Schema::Uuid | Schema::Bytes | Schema::Fixed(_) => Kind::Text,
            Schema::Boolean => Kind::Bool,
            Schema::Enum(e) => Kind::Enum(e.symbols.clone()),
            _ => Kind::Other,
        }
    }
}

#[derive(Clone)]
enum Kind {
    Number,
    Text,
    Bool,
    Enum(Vec<String>),
    Other,
}

impl Kind {
    fn name(&self) -> &'static str {
        match self {
            Kind::Number => "a number",
            Kind::Text => "a string",
            Kind::Bool => "a boolean",
            Kind::Enum(_) => "an enum",
            Kind::Other => "a value",
        }
    }
}

struct Checker<'a> {
    schema: &'a SchemaCheck,
    vars: Vec<String>,
    errors: &'a mut Vec<Diagnostic>,
}

impl Checker<'_> {
    /// The field of the events a path names: `segments` of `path`.
    fn field(&mut self, path: &Path, segments: &[String]) -> Option<Kind> {
        match self.schema.find(segments) {
            Found::Field(s) => Some(self.schema.kind(s)),
            Found::Unknown => None,
            Found::Missing(i, names) => {
                let shown = segments[..=i].join(".");
                let mut hint = match suggest(&segments[i], &names) {
                    Some(n) => format!("did you mean `{n}`?"),
                    None if names.is_empty() => String::new(),
                    None => format!("fields here: {}", names.join(", ")),
                };
                // The first segment of a whole path may be a misspelt variable.
                if i == 0 && segments.len() == path.segments.len() && segments.len() > 1 {
                    if let Some(v) = suggest(&segments[0], &self.vars) {
                        hint = format!("did you mean the variable `{v}`?");
                    }
                }
                let d = Diagnostic::new(path.span, format!("the schema has no field `{shown}`"));
                self.errors
                    .push(if hint.is_empty() { d } else { d.hint(hint) });
                None
            }
        }
    }

    /// The field a path in an expression reads, if any: a variable's field
    /// (`small.amount`) or the current event's (`amount`).
    fn path(&mut self, p: &Path, output: bool) -> Option<Kind> {
        let head = &p.segments[0];
        if self.vars.contains(head) {
            return (p.segments.len() > 1)
                .then(|| self.field(p, &p.segments[1..]))
                .flatten();
        }
        if output {
            // `key`, `start`, `end`, `duration`; other names are the
            // compiler's to report.
            return None;
        }
        self.field(p, &p.segments)
    }

    fn expr(&mut self, e: &Expr, output: bool) -> Option<Kind> {
        match &e.kind {
            ExprKind::Path(p) => self.path(p, output),
            ExprKind::Literal(_) | ExprKind::SincePrevious => None,
            ExprKind::Unary(_, x) => {
                self.expr(x, output);
                None
            }
            ExprKind::Binary(op, l, r) => {
                let (lk, rk) = (self.expr(l, output), self.expr(r, output));
                if is_comparison(*op) {
                    self.compare(lk.as_ref(), r);
                    self.compare(rk.as_ref(), l);
                }
                None
            }
            ExprKind::In { value, list, .. } => {
                let k = self.expr(value, output);
                for item in list {
                    self.expr(item, output);
                    self.compare(k.as_ref(), item);
                }
                None
            }
            ExprKind::Matches { value, .. } | ExprKind::Is { value, .. } => {
                self.expr(value, output);
                None
            }
            ExprKind::Seen { value, .. } => {
                if let ExprKind::Path(p) = &value.kind {
                    self.field(p, &p.segments);
                }
                None
            }
            ExprKind::Call { args, .. } => {
                for a in args {
                    self.expr(a, output);
                }
                None
            }
            ExprKind::Over { call, .. } => {
                // History reads fields of the key's events, never variables.
                if let ExprKind::Call { args, .. } = &call.kind {
                    if let Some(ExprKind::Path(p)) = args.first().map(|a| &a.kind) {
                        self.field(p, &p.segments);
                    }
                }
                None
            }
        }
    }

    /// A field of kind `k` compared with `other`: a literal of another
    /// kind (or an unknown enum symbol) never matches.
    fn compare(&mut self, k: Option<&Kind>, other: &Expr) {
        let (Some(k), ExprKind::Literal(lit)) = (k, &other.kind) else {
            return;
        };
        let lit_kind = match lit {
            Literal::Int(_) | Literal::Float(_) | Literal::Duration(_) | Literal::Timestamp(_) => {
                Kind::Number
            }
            Literal::Str(_) => Kind::Text,
            Literal::Bool(_) => Kind::Bool,
            Literal::Null => return,
        };
        let ok = matches!(
            (k, &lit_kind),
            (Kind::Number, Kind::Number)
                | (Kind::Text, Kind::Text)
                | (Kind::Bool, Kind::Bool)
                | (Kind::Other, _)
                | (Kind::Enum(_), Kind::Text)
        );
        if !ok {
            self.errors.push(
                Diagnostic::new(
                    other.span,
                    format!(
                        "compared with {}, but the schema says the field is {}",
                        lit_kind.name(),
                        k.name()
                    ),
                )
                .hint(format!("write {} here", k.name())),
            );
            return;
        }
        if let (Kind::Enum(symbols), Literal::Str(s)) = (k, lit) {
            if !symbols.contains(s) {
                let hint = match suggest(s, symbols) {
                    Some(n) => format!("did you mean \"{n}\"? symbols: {}", symbols.join(", ")),
                    None => format!("symbols: {}", symbols.join(", ")),
                };
                self.errors.push(
                    Diagnostic::new(other.span, format!("\"{s}\" is not a symbol of the enum"))
                        .hint(hint),
                );
            }
        }
    }
}

fn is_comparison(op: BinaryOp) -> bool {
    use BinaryOp::*;
    matches!(op, Eq | Ne | Lt | Le | Gt | Ge)
}

/// The closest of `names` to `word`, if close enough to be a typo.
fn suggest(word: &str, names: &[String]) -> Option<String> {
    names
        .iter()
        .map(|n| (strsim::jaro_winkler(word, n), n))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, n)| n.clone())
}

fn collect_vars(seq: &Sequence, out: &mut Vec<String>) {
    for b in &seq.branches {
        for item in &b.items {
            match &item.element {
                Element::Step { var, .. } | Element::Not { var } => out.push(var.name.clone()),
                Element::Group { sequence, .. } => collect_vars(sequence, out),
            }
        }
    }
}
