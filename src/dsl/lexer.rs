//! Source text → tokens with spans.
//!
//! The first stage of the pipeline. nom does the character-level work; every
//! token remembers its byte span so that the parser, the semantic checks and
//! the compiler can all point back at the source. Comments (`#` to the end of
//! the line) and whitespace vanish here. Keywords are not tokens of their own:
//! the parser treats words contextually, so a field may be called `time` or
//! `key`.

use nom::{
    branch::alt,
    bytes::complete::{tag, take_while, take_while1},
    character::complete::{char, digit1, one_of},
    combinator::{opt, recognize},
    sequence::{pair, tuple},
    IResult,
};

use super::ast::Span;
use super::error::Diagnostic;

#[derive(Clone, Debug, PartialEq)]
pub enum Tok {
    Word(String),
    /// A back-quoted name: never a keyword.
    Quoted(String),
    Int(i64),
    Float(f64),
    Duration(i64),
    Str(String),
    Punct(&'static str),
    Eof,
}

#[derive(Clone, Debug)]
pub struct Token {
    pub tok: Tok,
    pub span: Span,
}

impl Tok {
    pub fn describe(&self) -> String {
        match self {
            Tok::Word(w) => format!("`{w}`"),
            Tok::Quoted(w) => format!("`{w}`"),
            Tok::Int(i) => format!("number `{i}`"),
            Tok::Float(f) => format!("number `{f}`"),
            Tok::Duration(_) => "a duration".to_string(),
            Tok::Str(_) => "a string".to_string(),
            Tok::Punct(p) => format!("`{p}`"),
            Tok::Eof => "end of file".to_string(),
        }
    }
}

const PUNCTS: [&str; 22] = [
    "==", "!=", "<=", ">=", "(", ")", "[", "]", "{", "}", ",", ".", "=", "<", ">", "+", "-", "*",
    "/", "%", "|", "?",
];

fn is_word_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}
fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn word(i: &str) -> IResult<&str, &str> {
    recognize(pair(take_while1(is_word_start), take_while(is_word_char)))(i)
}

fn number(i: &str) -> IResult<&str, &str> {
    recognize(tuple((
        digit1,
        opt(pair(char('.'), digit1)),
        opt(tuple((one_of("eE"), opt(one_of("+-")), digit1))),
    )))(i)
}

fn unit(i: &str) -> IResult<&str, &str> {
    alt((tag("ms"), tag("s"), tag("m"), tag("h"), tag("d")))(i)
}

fn unit_millis(u: &str) -> i64 {
    match u {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => 86_400_000,
    }
}

/// Splits `src` into tokens, ending with [`Tok::Eof`]. Stops at the first
/// character that cannot start a token.
pub fn tokenize(src: &str) -> Result<Vec<Token>, Diagnostic> {
    let mut out = Vec::new();
    let mut rest = src;
    let pos = |rest: &str| src.len() - rest.len();
    loop {
        rest = rest.trim_start();
        if rest.starts_with('#') {
            rest = rest.find('\n').map_or("", |n| &rest[n..]);
            continue;
        }
        let start = pos(rest);
        if rest.is_empty() {
            out.push(Token {
                tok: Tok::Eof,
                span: Span::new(start, start),
            });
            return Ok(out);
        }
        let (next, tok) = lex_one(rest).map_err(|e| e.at(start))?;
        rest = next;
        out.push(Token {
            tok,
            span: Span::new(start, pos(rest)),
        });
    }
}

struct LexError {
    len: usize,
    message: String,
    hint: String,
}

impl LexError {
    fn at(self, start: usize) -> Diagnostic {
        Diagnostic::new(Span::new(start, start + self.len.max(1)), self.message).hint(self.hint)
    }
}

fn lex_one(i: &str) -> Result<(&str, Tok), LexError> {
    if let Ok((rest, w)) = word(i) {
        return Ok((rest, Tok::Word(w.to_string())));
    }
    if let Ok((rest, n)) = number(i) {
        // A unit directly after the digits makes a duration: `90s`, `5m`.
        if let Ok((after, u)) = unit(rest) {
            if !after.starts_with(is_word_char) {
                let len = n.len() + u.len();
                let Ok(value) = n.parse::<i64>() else {
                    // Suggest the same length in a smaller unit: `1.5m` → `90s`.
                    let ms = n.parse::<f64>().unwrap_or(0.0) * unit_millis(u) as f64;
                    let hint = if ms.fract() == 0.0 && ms.abs() < 9.0e15 {
                        format!(
                            "write `{}` rather than `{n}{u}`",
                            super::print::duration(ms as i64)
                        )
                    } else {
                        "durations are whole numbers of a unit: `250ms`, `90s`, `5m`".into()
                    };
                    return Err(LexError {
                        len,
                        message: "a duration must be a whole number of units".into(),
                        hint,
                    });
                };
                let ms = value.checked_mul(unit_millis(u)).ok_or_else(|| LexError {
                    len,
                    message: "duration is too large".into(),
                    hint: "durations are at most about 292 million years".into(),
                })?;
                return Ok((after, Tok::Duration(ms)));
            }
        }
        if rest.starts_with(is_word_start) {
            let bad = word(rest).map(|(_, w)| w.len()).unwrap_or(1);
            return Err(LexError {
                len: n.len() + bad,
                message: "unknown duration unit".into(),
                hint: "durations are written `250ms`, `90s`, `5m`, `2h` or `1d`".into(),
            });
        }
        let tok = if n.contains(['.', 'e', 'E']) {
            match n.parse::<f64>() {
                Ok(f) if f.is_finite() => Tok::Float(f),
                _ => {
                    return Err(LexError {
                        len: n.len(),
                        message: "number is too large".into(),
                        hint: "floating-point numbers are 64-bit (at most about 1.8e308)".into(),
                    })
                }
            }
        } else {
            Tok::Int(n.parse().map_err(|_| LexError {
                len: n.len(),
                message: "integer literal is too large".into(),
                hint: "integers are 64-bit signed".into(),
            })?)
        };
        return Ok((rest, tok));
    }
    let c = i.chars().next().unwrap();
    if c == '"' {
        return string(i);
    }
    if c == '`' {
        return match i[1..].find('`') {
            Some(end) if end > 0 => Ok((&i[end + 2..], Tok::Quoted(i[1..end + 1].to_string()))),
            _ => Err(LexError {
                len: 1,
                message: "unterminated quoted name".into(),
                hint: "close the name with a back quote: `my-field`".into(),
            }),
        };
    }
    for p in PUNCTS {
        if let Some(rest) = i.strip_prefix(p) {
            return Ok((rest, Tok::Punct(p)));
        }
    }
    Err(LexError {
        len: c.len_utf8(),
        message: format!("unexpected character `{c}`"),
        hint: "comments start with `#`; strings are written in double quotes".into(),
    })
}

fn string(i: &str) -> Result<(&str, Tok), LexError> {
    let mut out = String::new();
    let mut chars = i.char_indices().skip(1);
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Ok((&i[at + 1..], Tok::Str(out))),
            '\\' => match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, 't')) => out.push('\t'),
                Some((_, '"')) => out.push('"'),
                Some((_, '\\')) => out.push('\\'),
                // Unknown escapes stay as written, so regexes read naturally: "\d+".
                Some((_, other)) => {
                    out.push('\\');
                    out.push(other);
                }
                None => break,
            },
            '\n' => break,
            c => out.push(c),
        }
    }
    Err(LexError {
        len: i.find('\n').unwrap_or(i.len()),
        message: "unterminated string".into(),
        hint: "close the string with `\"` on the same line".into(),
    })
}
