//! Diagnostics: what went wrong, where, and what to do about it.
//!
//! Every parse and semantic error is a [`Diagnostic`] with a byte span. It is
//! rendered against the source like a compiler error: `file:line:column`, the
//! offending line, a caret under the span and a hint. The same data is
//! exposed as plain fields so that other front ends (the REST API) can show
//! it their own way.

use std::fmt;

use super::ast::Span;

/// One error in a pattern file.
#[derive(Clone, Debug)]
pub struct Diagnostic {
    pub span: Span,
    pub message: String,
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn new(span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            span,
            message: message.into(),
            hint: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Diagnostic {
        self.hint = Some(hint.into());
        self
    }

    /// 1-based line and column (in characters) of the span's start.
    pub fn line_col(&self, src: &str) -> (usize, usize) {
        line_col(src, self.span.start)
    }

    /// Renders against `src`; `origin` names the file.
    pub fn render(&self, origin: &str, src: &str) -> String {
        let (line, col) = self.line_col(src);
        let start = self.span.start.min(src.len());
        let line_start = src[..start].rfind('\n').map_or(0, |n| n + 1);
        let line_end = src[start..].find('\n').map_or(src.len(), |n| start + n);
        let text = &src[line_start..line_end];
        let end = self.span.end.clamp(start, line_end);
        let width = src[start..end].chars().count().max(1);
        let gutter = line.to_string().len();
        let pad = " ".repeat(gutter);
        let mut out = format!(
            "error: {}\n{pad}--> {origin}:{line}:{col}\n{pad} |\n{line} | {text}\n{pad} | {}{}\n",
            self.message,
            " ".repeat(col - 1),
            "^".repeat(width)
        );
        if let Some(hint) = &self.hint {
            out.push_str(&format!("{pad} = hint: {hint}\n"));
        }
        out
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, col)
}

/// All errors of one file, in source order.
#[derive(Clone, Debug)]
pub struct Diagnostics {
    pub origin: String,
    pub source: String,
    pub errors: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (n, d) in self.errors.iter().enumerate() {
            if n > 0 {
                out.push('\n');
            }
            out.push_str(&d.render(&self.origin, &self.source));
        }
        let count = self.errors.len();
        out.push_str(&format!(
            "\n{}: {count} error{} in this file\n",
            self.origin,
            if count == 1 { "" } else { "s" }
        ));
        out
    }
}

/// One diagnostic as the REST API returns it: the same facts the CLI
/// prints, as fields.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DiagnosticJson {
    pub line: usize,
    pub column: usize,
    /// Line and column just past the span.
    pub end: LineCol,
    pub message: String,
    pub hint: Option<String>,
    /// The rendered text: source line and caret.
    pub snippet: String,
}

#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct LineCol {
    pub line: usize,
    pub column: usize,
}

impl Diagnostics {
    pub fn to_json(&self) -> Vec<DiagnosticJson> {
        self.errors
            .iter()
            .map(|d| {
                let (line, column) = d.line_col(&self.source);
                let (el, ec) = line_col(&self.source, d.span.end.max(d.span.start));
                DiagnosticJson {
                    line,
                    column,
                    end: LineCol {
                        line: el,
                        column: ec,
                    },
                    message: d.message.clone(),
                    hint: d.hint.clone(),
                    snippet: d.render(&self.origin, &self.source),
                }
            })
            .collect()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

impl std::error::Error for Diagnostics {}
