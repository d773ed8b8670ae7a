//! Syntax tree → canonical source.
//!
//! The printer is the parser's inverse: for every tree `t` the parser
//! produced, `parse(print(t)) == t`. It is used by `cep fmt`-style tooling,
//! by the REST API to store a normalised copy, and by the round-trip tests.
//! Parentheses are printed only where precedence needs them.

use std::fmt::Write;

use super::ast::*;

/// Prints a whole file.
pub fn print_file(file: &File) -> String {
    let mut out = String::new();
    for (n, p) in file.patterns.iter().enumerate() {
        if n > 0 {
            out.push('\n');
        }
        out.push_str(&print_pattern(p));
    }
    out
}

pub fn print_pattern(p: &Pattern) -> String {
    let mut o = String::new();
    if p.shadow {
        o.push_str("shadow ");
    }
    let _ = writeln!(o, "pattern {}", name(&p.name.name));
    if p.version != 1 {
        let _ = writeln!(o, "  version {}", p.version);
    }
    if let Some(d) = &p.description {
        let _ = writeln!(o, "  description {}", string(d));
    }
    let _ = writeln!(o, "  from {}", name(&p.stream.name));
    if !p.key.is_empty() {
        let keys: Vec<String> = p.key.iter().map(path).collect();
        let _ = writeln!(o, "  key {}", keys.join(", "));
    }
    let _ = write!(o, "  time {}", path(&p.time.field));
    match &p.time.format {
        TimeFormat::Auto => {}
        TimeFormat::Millis => o.push_str(" as millis"),
        TimeFormat::Seconds => o.push_str(" as seconds"),
        TimeFormat::Rfc3339 => o.push_str(" as rfc3339"),
        TimeFormat::Chrono(f) => {
            let _ = write!(o, " as {}", string(f));
        }
    }
    o.push('\n');
    if let Some(w) = p.within {
        let _ = writeln!(o, "  within {}", duration(w.millis));
    }
    if let Some(g) = p.max_gap {
        let _ = writeln!(o, "  max gap {}", duration(g.millis));
    }
    if let Some(h) = p.history {
        let _ = writeln!(o, "  history {}", duration(h.millis));
    }
    match &p.skip {
        Skip::PastLast => {}
        Skip::NoSkip => o.push_str("  skip none\n"),
        Skip::ToNext => o.push_str("  skip to next\n"),
        Skip::ToFirst(v) => {
            let _ = writeln!(o, "  skip to first {}", name(&v.name));
        }
        Skip::ToLast(v) => {
            let _ = writeln!(o, "  skip to last {}", name(&v.name));
        }
    }
    if let Some(s) = &p.severity {
        let _ = writeln!(o, "  severity {}", name(&s.name));
    }
    if !p.labels.is_empty() {
        let labels: Vec<String> = p
            .labels
            .iter()
            .map(|(k, v)| format!("{} = {}", name(&k.name), string(v)))
            .collect();
        let _ = writeln!(o, "  labels {}", labels.join(", "));
    }
    let _ = writeln!(o, "  match {}", sequence(&p.sequence));
    if !p.defines.is_empty() {
        o.push_str("  define\n");
        let defs: Vec<String> = p
            .defines
            .iter()
            .map(|d| format!("    {} as {}", name(&d.var.name), expr(&d.condition)))
            .collect();
        o.push_str(&defs.join(",\n"));
        o.push('\n');
    }
    if !p.emit.is_empty() {
        o.push_str("  emit\n");
        outputs(&mut o, &p.emit);
    }
    if let Some(t) = &p.on_timeout {
        o.push_str("  on timeout emit\n");
        outputs(&mut o, t);
    }
    o.push_str("end\n");
    o
}

fn outputs(o: &mut String, fields: &[OutputField]) {
    let lines: Vec<String> = fields
        .iter()
        .map(|f| format!("    {} = {}", name(&f.name.name), expr(&f.value)))
        .collect();
    o.push_str(&lines.join(",\n"));
    o.push('\n');
}

pub fn sequence(s: &Sequence) -> String {
    let branches: Vec<String> = s
        .branches
        .iter()
        .map(|b| {
            let mut out = String::new();
            for item in &b.items {
                match item.connector {
                    None => {}
                    Some(Contiguity::Strict) => out.push_str(" next "),
                    Some(Contiguity::Relaxed) => out.push_str(" then "),
                    Some(Contiguity::Any) => out.push_str(" then any "),
                }
                out.push_str(&element(&item.element));
            }
            out
        })
        .collect();
    branches.join(" | ")
}

fn element(e: &Element) -> String {
    match e {
        Element::Step { var, quantifier } => {
            format!("{}{}", name(&var.name), quant(quantifier.as_ref()))
        }
        Element::Not { var } => format!("not {}", name(&var.name)),
        Element::Group {
            sequence: s,
            quantifier,
        } => format!("({}){}", sequence(s), quant(quantifier.as_ref())),
    }
}

fn quant(q: Option<&Quantifier>) -> String {
    let Some(q) = q else {
        return String::new();
    };
    let mut out = match (q.min, q.max) {
        (0, Some(1)) => "?".to_string(),
        (0, None) => "*".to_string(),
        (1, None) => "+".to_string(),
        (n, None) => format!("{{{n},}}"),
        (n, Some(m)) if n == m => format!("{{{n}}}"),
        (n, Some(m)) => format!("{{{n},{m}}}"),
    };
    if !q.greedy {
        out.push('?');
    }
    match q.inner {
        Contiguity::Relaxed => {}
        Contiguity::Strict => out.push_str(" strict"),
        Contiguity::Any => out.push_str(" any"),
    }
    out
}

/// Words the parser would read as syntax rather than a name.
const RESERVED: [&str; 25] = [
    "and",
    "or",
    "not",
    "in",
    "is",
    "contains",
    "starts",
    "ends",
    "matches",
    "as",
    "define",
    "emit",
    "on",
    "end",
    "pattern",
    "true",
    "false",
    "null",
    "next",
    "then",
    "any",
    "strict",
    "relaxed",
    "timestamp",
    "match",
];

/// A name, back-quoted when it is not a plain word or would read as syntax.
pub fn name(n: &str) -> String {
    let plain = n.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain && !RESERVED.contains(&n) {
        n.to_string()
    } else {
        format!("`{n}`")
    }
}

fn path(p: &Path) -> String {
    p.segments
        .iter()
        .map(|s| name(s))
        .collect::<Vec<_>>()
        .join(".")
}

pub fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A duration in the largest unit that divides it exactly.
pub fn duration(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let ms = ms.abs();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms != 0 && ms % size == 0 {
            return format!("{sign}{}{unit}", ms / size);
        }
    }
    format!("{sign}{ms}ms")
}

fn precedence(e: &Expr) -> u8 {
    match &e.kind {
        ExprKind::Binary(op, _, _) => op.precedence(),
        ExprKind::In { .. }
        | ExprKind::Matches { .. }
        | ExprKind::Is { .. }
        | ExprKind::Seen { .. } => 4,
        ExprKind::Unary(UnaryOp::Not, _) => 3,
        // A folded negative literal must be parenthesised like a negation.
        ExprKind::Literal(Literal::Int(i)) if *i < 0 => 7,
        ExprKind::Literal(Literal::Float(f)) if f.is_sign_negative() => 7,
        ExprKind::Literal(Literal::Duration(d)) if *d < 0 => 7,
        ExprKind::Unary(UnaryOp::Neg, _) => 7,
        _ => 8,
    }
}

fn wrap(e: &Expr, parens: bool) -> String {
    if parens {
        format!("({})", expr(e))
    } else {
        expr(e)
    }
}

pub fn expr(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Literal(l) => literal(l),
        ExprKind::Path(p) => path(p),
        ExprKind::Unary(UnaryOp::Not, x) => format!("not {}", wrap(x, precedence(x) < 3)),
        ExprKind::Unary(UnaryOp::Neg, x) => format!("-{}", wrap(x, precedence(x) < 8)),
        ExprKind::Binary(op, l, r) => {
            let p = op.precedence();
            // Comparisons do not chain, so a comparison operand needs parentheses.
            let left = if p == 4 {
                precedence(l) <= 4
            } else {
                precedence(l) < p
            };
            format!(
                "{} {} {}",
                wrap(l, left),
                op.symbol(),
                wrap(r, precedence(r) <= p)
            )
        }
        ExprKind::In {
            value,
            list,
            negated,
        } => {
            let items: Vec<String> = list.iter().map(|x| wrap(x, precedence(x) <= 4)).collect();
            format!(
                "{} {}in [{}]",
                wrap(value, precedence(value) <= 4),
                if *negated { "not " } else { "" },
                items.join(", ")
            )
        }
        ExprKind::Matches { value, regex, .. } => {
            format!(
                "{} matches {}",
                wrap(value, precedence(value) <= 4),
                string(regex)
            )
        }
        ExprKind::Is {
            value,
            test,
            negated,
        } => format!(
            "{} is {}{}",
            wrap(value, precedence(value) <= 4),
            if *negated { "not " } else { "" },
            match test {
                IsTest::Null => "null",
                IsTest::Missing => "missing",
            }
        ),
        ExprKind::Call { func, args } => {
            let args: Vec<String> = args.iter().map(expr).collect();
            format!("{}({})", func.name, args.join(", "))
        }
        ExprKind::Over {
            call,
            window,
            at_least,
        } => format!(
            "{} over {}{}",
            expr(call),
            duration(window.millis),
            at_least_clause(*at_least)
        ),
        ExprKind::Seen {
            value,
            negated,
            window,
            at_least,
        } => format!(
            "{} {}seen in {}{}",
            wrap(value, precedence(value) <= 4),
            if *negated { "not " } else { "" },
            duration(window.millis),
            at_least_clause(*at_least)
        ),
        ExprKind::SincePrevious => "time since previous".into(),
    }
}

fn at_least_clause(n: Option<u32>) -> String {
    n.map_or_else(String::new, |n| format!(" with at least {n} events"))
}

fn literal(l: &Literal) -> String {
    match l {
        Literal::Int(i) => i.to_string(),
        Literal::Float(f) => format!("{f:?}"),
        Literal::Str(s) => string(s),
        Literal::Bool(b) => b.to_string(),
        Literal::Null => "null".to_string(),
        Literal::Duration(d) => duration(*d),
        Literal::Timestamp(t) => {
            let ts = chrono::DateTime::from_timestamp_millis(*t).unwrap_or_default();
            format!(
                "timestamp {}",
                string(&ts.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
            )
        }
    }
}
