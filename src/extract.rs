//! Reading only the fields patterns need, straight from JSON text.
//!
//! Building a whole `serde_json::Value` for every event (a map, a string for
//! every key and value) costs far more than matching it. An [`Extractor`]
//! knows every field path the engine's patterns read (keys, event times,
//! condition and output fields), arranged as a trie, and scans the JSON text
//! once: fields on a path are noted as [`Field`]s borrowed from the text,
//! everything else is checked and skipped, and nothing is allocated (a string
//! with escapes is decoded into one buffer the captures reuse). The captured
//! fields then feed the same decoding as a parsed document does (see
//! [`crate::engine::decode_with`]).
//!
//! The scanner is our own rather than a serde walk: serde's generic visitor
//! protocol cost more than the matching (`cep replay` of 1M events spent a
//! third of its time in it), and it cannot hand back where a value sits in
//! the text. It accepts exactly what `serde_json::from_slice` accepts as an
//! object (the fuzz target `json_event` and the differential test below hold
//! it to that), including serde_json's nesting limit and its reading of
//! numbers: an integer that fits `i64` is an integer, anything else a float,
//! `-0` the float −0.0, a float out of range an error.
//!
//! Semantics match [`crate::event::lookup`]: object members by name (the last
//! of duplicate names wins), array elements by decimal index, anything else
//! missing.

use std::fmt;

use crate::value::Value;

/// A set of field paths and how to read them from JSON text.
#[derive(Clone, Debug, Default)]
pub struct Extractor {
    nodes: Vec<TrieNode>,
    captures: usize,
}

#[derive(Clone, Debug, Default)]
struct TrieNode {
    children: Vec<(String, usize)>,
    /// Children whose names are array indices, by index.
    indices: Vec<(usize, usize)>,
    /// The capture slot of the path that ends here.
    capture: Option<usize>,
    /// Every capture slot at or below this node: cleared when a duplicate
    /// member name replaces the value they were read from.
    below: Vec<usize>,
}

/// A field's value as read, borrowed from the text or document it came from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Field<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
    /// An object or array, as its JSON text.
    Text(&'a str),
    /// An object or array of a parsed document.
    Doc(&'a serde_json::Value),
}

impl<'a> Field<'a> {
    /// A document's value as a field (numbers as `serde_json` reads them).
    pub fn of_json(v: &'a serde_json::Value) -> Field<'a> {
        match v {
            serde_json::Value::Null => Field::Null,
            serde_json::Value::Bool(b) => Field::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Field::Int(i),
                None => Field::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => Field::Str(s),
            other => Field::Doc(other),
        }
    }

    /// The engine's value; the same as [`Value::from_json`] of the parsed
    /// field (objects and arrays become their compact JSON text).
    pub fn to_value(self) -> Value {
        match self {
            Field::Null => Value::Null,
            Field::Bool(b) => Value::Bool(b),
            Field::Int(i) => Value::Int(i),
            Field::Float(f) => Value::Float(f),
            Field::Str(s) => Value::Str(s.into()),
            Field::Text(t) => match serde_json::from_str::<serde_json::Value>(t) {
                Ok(v) => Value::from_json(&v),
                Err(_) => Value::Str(t.into()),
            },
            Field::Doc(v) => Value::from_json(v),
        }
    }

    /// Appends the field as key text (what [`Value::text`] gives); false for
    /// null, which cannot be a key.
    pub fn push_key_text(self, out: &mut String) -> bool {
        use std::fmt::Write;
        match self {
            Field::Null => return false,
            Field::Str(s) => out.push_str(s),
            Field::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Field::Float(f) => {
                let _ = write!(out, "{f}");
            }
            Field::Bool(b) => {
                let _ = write!(out, "{b}");
            }
            Field::Text(_) | Field::Doc(_) => {
                if let Some(t) = self.to_value().text() {
                    out.push_str(&t);
                }
            }
        }
        true
    }
}

impl fmt::Display for Field<'_> {
    /// As JSON text.
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Field::Null => f.write_str("null"),
            Field::Bool(b) => write!(f, "{b}"),
            Field::Int(i) => write!(f, "{i}"),
            Field::Float(x) => write!(f, "{}", Value::Float(*x).to_json()),
            Field::Str(s) => write!(f, "{}", serde_json::Value::from(*s)),
            Field::Text(t) => f.write_str(t),
            Field::Doc(v) => write!(f, "{v}"),
        }
    }
}

/// Where one capture was found in the text (offsets, so that the captures
/// can be reused from one text to the next).
#[derive(Clone, Copy, Debug, Default)]
enum Found {
    #[default]
    Absent,
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// A string without escapes: its bytes in the text.
    Str(u32, u32),
    /// A string with escapes, decoded into [`Captures::unescaped`].
    Unescaped(u32, u32),
    /// An object or array: its bytes in the text.
    Composite(u32, u32),
}

/// Captured fields of the last text an [`Extractor`] read, indexed by the
/// numbers [`Extractor::add`] returned. Reused from one text to the next.
#[derive(Clone, Debug, Default)]
pub struct Captures {
    found: Vec<Found>,
    unescaped: String,
}

impl Captures {
    pub fn new() -> Captures {
        Captures::default()
    }

    /// Every capture absent, for a new text.
    #[inline]
    fn reset(&mut self, captures: usize) {
        self.found.resize(captures, Found::Absent);
        self.found.fill(Found::Absent);
        self.unescaped.clear();
    }

    /// The field in capture slot `slot`, read from `text` (the text the
    /// captures were last filled from, as [`Extractor::extract`] returned
    /// it); `None` where the path is not there.
    pub fn get<'a>(&'a self, text: &'a str, slot: usize) -> Option<Field<'a>> {
        let span = |a: u32, b: u32| &text[a as usize..b as usize];
        Some(match *self.found.get(slot)? {
            Found::Absent => return None,
            Found::Null => Field::Null,
            Found::Bool(b) => Field::Bool(b),
            Found::Int(i) => Field::Int(i),
            Found::Float(f) => Field::Float(f),
            Found::Str(a, b) => Field::Str(span(a, b)),
            Found::Unescaped(a, b) => Field::Str(&self.unescaped[a as usize..b as usize]),
            Found::Composite(a, b) => Field::Text(span(a, b)),
        })
    }
}

/// How deep objects and arrays may nest (serde_json's limit).
const MAX_DEPTH: u32 = 128;

/// 10^0 ..= 10^22: the powers of ten a double holds exactly.
const POWERS_OF_TEN: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

impl Extractor {
    pub fn new() -> Extractor {
        Extractor {
            nodes: vec![TrieNode::default()],
            captures: 0,
        }
    }

    /// How many paths are registered (capture slots `0..len`).
    pub fn len(&self) -> usize {
        self.captures
    }

    pub fn is_empty(&self) -> bool {
        self.captures == 0
    }

    /// Registers a path; returns its capture slot (the same for the same path).
    pub fn add(&mut self, path: &[String]) -> usize {
        if self.nodes.is_empty() {
            self.nodes.push(TrieNode::default());
        }
        let mut node = 0;
        let mut trail = vec![0];
        for seg in path {
            node = match self.nodes[node].children.iter().find(|(s, _)| s == seg) {
                Some((_, child)) => *child,
                None => {
                    self.nodes.push(TrieNode::default());
                    let child = self.nodes.len() - 1;
                    self.nodes[node].children.push((seg.clone(), child));
                    if let Ok(i) = seg.parse::<usize>() {
                        self.nodes[node].indices.push((i, child));
                    }
                    child
                }
            };
            trail.push(node);
        }
        if let Some(c) = self.nodes[node].capture {
            return c;
        }
        let c = self.captures;
        self.captures += 1;
        self.nodes[node].capture = Some(c);
        for n in trail {
            self.nodes[n].below.push(c);
        }
        c
    }

    /// Checks that `json` is one JSON object and captures the registered
    /// paths into `out`. Returns the text, which [`Captures::get`] reads
    /// the captured fields from.
    pub fn extract<'t>(&self, json: &'t [u8], out: &mut Captures) -> Result<&'t str, String> {
        out.reset(self.captures);
        // JSON is UTF-8 text. Checking the whole text first (an ASCII fast
        // path) lets the scanner slice it at any ASCII byte it stops on.
        let text = std::str::from_utf8(json)
            .map_err(|e| format!("invalid JSON: not UTF-8 text (at byte {})", e.valid_up_to()))?;
        if text.len() > u32::MAX as usize {
            return Err("invalid JSON: an event of 4 GiB or more".into());
        }
        let mut scan = Scan {
            ex: self,
            text,
            bytes: json,
            pos: 0,
            depth: 0,
            out,
        };
        scan.skip_ws();
        let is_object = scan.peek() == Some(b'{');
        let root = (is_object && !self.nodes.is_empty()).then_some(0);
        if let Err(bad) = scan.value(root).and_then(|_| scan.end()) {
            return Err(format!("invalid JSON: {}", scan.describe(bad)));
        }
        if !is_object {
            return Err("an event must be a JSON object".into());
        }
        Ok(text)
    }
}

impl Extractor {
    /// Which capture each column of a CSV header fills: a row reads as an
    /// object keyed by its header, so only one-segment paths can name a
    /// column (and the last column of a repeated name wins, as a repeated
    /// member name does).
    pub fn columns(&self, header: &[String]) -> Vec<Option<usize>> {
        let Some(root) = self.nodes.first() else {
            return vec![None; header.len()];
        };
        header
            .iter()
            .map(|name| {
                let child = root.children.iter().find(|(n, _)| n == name)?.1;
                self.nodes[child].capture
            })
            .collect()
    }

    /// Captures the cells of a CSV row that `columns` (from
    /// [`Extractor::columns`]) maps, typed as [`crate::input::cell_value`]
    /// types them; empty and null cells are absent. Returns the text the
    /// captures read (the row's bytes; cells that are not UTF-8 are
    /// decoded with replacement characters into the captures' buffer).
    pub fn extract_row<'t>(
        &self,
        columns: &[Option<usize>],
        row: &'t csv::ByteRecord,
        nulls: &[String],
        out: &mut Captures,
    ) -> &'t str {
        out.reset(self.captures);
        let text = std::str::from_utf8(row.as_slice()).unwrap_or("");
        let utf8 = !text.is_empty() || row.as_slice().is_empty();
        for (i, slot) in columns.iter().enumerate() {
            let (Some(slot), Some(range)) = (*slot, row.range(i)) else {
                continue;
            };
            let (cell, found) = if utf8 {
                let cell = &text[range.clone()];
                (
                    cell,
                    cell_found(cell, Found::Str(range.start as u32, range.end as u32)),
                )
            } else {
                let lossy = String::from_utf8_lossy(&row.as_slice()[range]);
                let from = out.unescaped.len();
                out.unescaped.push_str(&lossy);
                let to = out.unescaped.len();
                let cell = &out.unescaped[from..to];
                (
                    cell,
                    cell_found(cell, Found::Unescaped(from as u32, to as u32)),
                )
            };
            if !crate::input::is_null_cell(cell, nulls) {
                out.found[slot] = found;
            }
        }
        text
    }
}

/// A CSV cell: an integer, a decimal (with a point or an exponent), or
/// else text (`as_text`), exactly as [`crate::input::cell_value`] reads it.
fn cell_found(cell: &str, as_text: Found) -> Found {
    if let Ok(i) = cell.parse::<i64>() {
        return Found::Int(i);
    }
    if cell.contains(['.', 'e', 'E'])
        && !cell.contains(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
    {
        if let Some(f) = cell.parse::<f64>().ok().filter(|f| f.is_finite()) {
            return Found::Float(f);
        }
    }
    as_text
}

/// Where the first byte that ends plain string content (`"`, `\\` or a
/// control character) is, eight bytes at a time: the usual zero-byte test
/// on the word XORed with each sought byte, and a borrow test for bytes
/// under 0x20. A test can also flag a byte after a real hit (borrows carry
/// upwards), never before one, so the lowest flag is the first stop. This
/// halved the cost of strings, most of the text of a typical event.
#[inline]
fn string_stop(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x;
    let mut chunks = bytes.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let x = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        let flags = (zero_byte(x ^ (ONES * u64::from(b'"')))
            | zero_byte(x ^ (ONES * u64::from(b'\\')))
            | (x.wrapping_sub(ONES * 0x20) & !x))
            & HIGH;
        if flags != 0 {
            return Some(at + (flags.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let tail = chunks.remainder();
    tail.iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|i| at + i)
}

/// One pass over one text.
struct Scan<'t, 'x> {
    ex: &'x Extractor,
    text: &'t str,
    bytes: &'t [u8],
    pos: usize,
    depth: u32,
    out: &'x mut Captures,
}

/// What is wrong with a text; the scanner stops where it found it. (Small
/// and `Copy`, so that every step's result fits in registers.)
#[derive(Clone, Copy, Debug)]
struct Bad(&'static str);

/// A scanned string: where its contents are. (Offsets as `usize`: two
/// `u32`s were packed into one register through the stack, and the load
/// stalled waiting for the two stores, 27 % of the scanner's cycles.)
#[derive(Clone, Copy)]
enum Scanned {
    Text(usize, usize),
    Unescaped(usize, usize),
}

impl Scan<'_, '_> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    #[inline]
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.pos += 1;
        }
    }

    /// A problem at the current position, worded as serde_json words it.
    #[cold]
    fn describe(&self, Bad(what): Bad) -> String {
        let before = &self.bytes[..self.pos.min(self.bytes.len())];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
        format!("{what} at line {line} column {column}")
    }

    fn end(&mut self) -> Result<(), Bad> {
        self.skip_ws();
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(Bad("trailing characters")),
        }
    }

    fn expect(&mut self, byte: u8, what: &'static str) -> Result<(), Bad> {
        self.skip_ws();
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(Bad(what))
        }
    }

    /// Scans one value; `node` is the trie node it sits at (`None`: no
    /// registered path goes through it, so it is only checked).
    fn value(&mut self, node: Option<usize>) -> Result<(), Bad> {
        self.skip_ws();
        let capture = node.and_then(|n| self.ex.nodes[n].capture);
        let start = self.pos as u32;
        let found = match self.peek() {
            Some(b'{') => {
                self.nested(|s| s.object(node))?;
                Found::Composite(start, self.pos as u32)
            }
            Some(b'[') => {
                self.nested(|s| s.array(node))?;
                Found::Composite(start, self.pos as u32)
            }
            Some(b'"') => match self.string()? {
                Scanned::Text(a, b) => Found::Str(a as u32, b as u32),
                Scanned::Unescaped(a, b) => Found::Unescaped(a as u32, b as u32),
            },
            Some(b't') => self.literal("true", Found::Bool(true))?,
            Some(b'f') => self.literal("false", Found::Bool(false))?,
            Some(b'n') => self.literal("null", Found::Null)?,
            Some(b'-' | b'0'..=b'9') => self.number()?,
            Some(_) => return Err(Bad("expected value")),
            None => return Err(Bad("EOF while parsing a value")),
        };
        if let Some(c) = capture {
            self.out.found[c] = found;
        }
        Ok(())
    }

    fn nested(&mut self, scan: impl FnOnce(&mut Self) -> Result<(), Bad>) -> Result<(), Bad> {
        self.depth += 1;
        if self.depth >= MAX_DEPTH {
            return Err(Bad("recursion limit exceeded"));
        }
        scan(self)?;
        self.depth -= 1;
        Ok(())
    }

    fn object(&mut self, node: Option<usize>) -> Result<(), Bad> {
        self.pos += 1; // '{'
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(Bad(match self.peek() {
                    None => "EOF while parsing an object",
                    Some(_) => "key must be a string",
                }));
            }
            let name = self.string()?;
            let child = node.and_then(|n| self.child(n, name));
            if let Some(c) = child {
                // A repeated name replaces the earlier value, with whatever
                // was captured inside it.
                for &slot in &self.ex.nodes[c].below {
                    self.out.found[slot] = Found::Absent;
                }
            }
            self.expect(b':', "expected `:`")?;
            self.value(child)?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(_) => return Err(Bad("expected `,` or `}`")),
                None => return Err(Bad("EOF while parsing an object")),
            }
        }
    }

    /// The child of `node` a member name leads to.
    fn child(&self, node: usize, name: Scanned) -> Option<usize> {
        let name = match name {
            Scanned::Text(a, b) => &self.text[a..b],
            Scanned::Unescaped(a, b) => &self.out.unescaped[a..b],
        };
        let children = &self.ex.nodes[node].children;
        children.iter().find(|(n, _)| n == name).map(|&(_, c)| c)
    }

    fn array(&mut self, node: Option<usize>) -> Result<(), Bad> {
        self.pos += 1; // '['
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        let indices = node.map_or(&[][..], |n| &self.ex.nodes[n].indices[..]);
        let mut i = 0usize;
        loop {
            let child = indices.iter().find(|&&(at, _)| at == i).map(|&(_, c)| c);
            self.value(child)?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(_) => return Err(Bad("expected `,` or `]`")),
                None => return Err(Bad("EOF while parsing a list")),
            }
            i += 1;
        }
    }

    fn literal(&mut self, word: &'static str, found: Found) -> Result<Found, Bad> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(found)
        } else {
            Err(Bad("expected value"))
        }
    }

    /// Skips decimal digits; returns how many, and their value while it
    /// fits in a `u64` (`None` beyond).
    #[inline]
    fn digits(&mut self) -> (usize, Option<u64>) {
        let rest = &self.bytes[self.pos..];
        let n = rest
            .iter()
            .position(|b| !b.is_ascii_digit())
            .unwrap_or(rest.len());
        // 19 digits always fit; more are left to the full parse.
        let value = (n <= 19).then(|| {
            rest[..n]
                .iter()
                .fold(0u64, |v, &d| v * 10 + u64::from(d - b'0'))
        });
        self.pos += n;
        (n, value)
    }

    #[inline(always)]
    fn number(&mut self) -> Result<Found, Bad> {
        let start = self.pos;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        let (_, int_value) = match self.peek() {
            Some(b'0') => {
                self.pos += 1;
                (1, Some(0))
            }
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(Bad("invalid number")),
        };
        let mut fraction = None;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            let (n, value) = self.digits();
            if n == 0 {
                return Err(Bad("invalid number"));
            }
            fraction = Some((n, value));
        }
        let mut exponent = false;
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits().0 == 0 {
                return Err(Bad("invalid number"));
            }
            exponent = true;
        }
        match (int_value, fraction, exponent) {
            // An integer: as serde_json reads it, `-0` being the float −0.0.
            (Some(0), None, false) if negative => return Ok(Found::Float(-0.0)),
            (Some(v), None, false) if v <= i64::MAX as u64 => {
                let v = v as i64;
                return Ok(Found::Int(if negative { -v } else { v }));
            }
            (Some(v), None, false) if negative && v == 1 << 63 => return Ok(Found::Int(i64::MIN)),
            // A short decimal (`12.75`): both the digits and the power of
            // ten are exact doubles, so one division is correctly rounded
            // (Clinger's fast path), which is what a full parse gives.
            (Some(i), Some((n, Some(f))), false) if n <= 22 => {
                let digits = 10u64
                    .checked_pow(n as u32)
                    .and_then(|p| i.checked_mul(p)?.checked_add(f));
                if let Some(m) = digits.filter(|&m| m < 1 << 53) {
                    let x = m as f64 / POWERS_OF_TEN[n];
                    return Ok(Found::Float(if negative { -x } else { x }));
                }
            }
            _ => {}
        }
        match self.text[start..self.pos].parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Found::Float(f)),
            _ => Err(Bad("number out of range")),
        }
    }

    /// Scans a string (at its opening quote): checks it and says where its
    /// contents are. Escapes are decoded into the captures' buffer.
    ///
    /// Inlined: returned through memory, its result was read back before
    /// the store had landed (a store-forwarding stall on every string, a
    /// quarter of the scanner's cycles).
    #[inline(always)]
    fn string(&mut self) -> Result<Scanned, Bad> {
        self.pos += 1; // '"'
        let start = self.pos;
        let rest = &self.bytes[start..];
        self.pos += string_stop(rest).unwrap_or(rest.len());
        match self.peek() {
            Some(b'"') => {
                self.pos += 1;
                Ok(Scanned::Text(start, self.pos - 1))
            }
            Some(b'\\') => self.escaped_string(start),
            Some(_) => Err(Bad(
                "control character (\\u0000-\\u001F) found while parsing a string",
            )),
            None => Err(Bad("EOF while parsing a string")),
        }
    }

    /// The rest of a string that has escapes, from its first backslash.
    #[cold]
    #[inline(never)]
    fn escaped_string(&mut self, start: usize) -> Result<Scanned, Bad> {
        let from = self.out.unescaped.len();
        self.out.unescaped.push_str(&self.text[start..self.pos]);
        loop {
            let run = self.pos;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            self.out.unescaped.push_str(&self.text[run..self.pos]);
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    let to = self.out.unescaped.len();
                    return Ok(Scanned::Unescaped(from, to));
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let c = self.escape()?;
                    self.out.unescaped.push(c);
                }
                Some(_) => {
                    return Err(Bad(
                        "control character (\\u0000-\\u001F) found while parsing a string",
                    ))
                }
                None => return Err(Bad("EOF while parsing a string")),
            }
        }
    }

    /// One escape, after its backslash.
    fn escape(&mut self) -> Result<char, Bad> {
        let c = self.peek().ok_or(Bad("EOF while parsing a string"))?;
        self.pos += 1;
        Ok(match c {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => return self.unicode_escape(),
            _ => return Err(Bad("invalid escape")),
        })
    }

    /// `\uXXXX`, a surrogate pair taking two of them.
    fn unicode_escape(&mut self) -> Result<char, Bad> {
        let first = self.hex4()?;
        let code = match first {
            0xD800..=0xDBFF => {
                if !self.bytes[self.pos..].starts_with(b"\\u") {
                    return Err(Bad("lone leading surrogate in hex escape"));
                }
                self.pos += 2;
                let second = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err(Bad("lone leading surrogate in hex escape"));
                }
                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(Bad("lone trailing surrogate in hex escape")),
            c => c,
        };
        char::from_u32(code).ok_or(Bad("invalid unicode code point"))
    }

    fn hex4(&mut self) -> Result<u32, Bad> {
        let digits = self.bytes.get(self.pos..self.pos + 4);
        let value = digits
            .filter(|d| d.iter().all(u8::is_ascii_hexdigit))
            .and_then(|d| u32::from_str_radix(std::str::from_utf8(d).ok()?, 16).ok());
        match value {
            Some(v) => {
                self.pos += 4;
                Ok(v)
            }
            None => Err(Bad("invalid escape")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::lookup;
    use proptest::prelude::*;

    #[test]
    fn bytes_that_are_not_utf8_are_refused_even_in_a_field_no_pattern_reads() {
        // The fuzzer's find (json_event): `"x\xf2"` inside a skipped array.
        let mut ex = Extractor::new();
        ex.add(&["card".to_string(), "id".to_string()]);
        let mut out = Captures::new();
        let bad = b"{\"carDag`s\":[\"x\xf2\"]}";
        assert!(serde_json::from_slice::<serde_json::Value>(bad).is_err());
        let e = ex.extract(bad, &mut out).unwrap_err();
        assert!(e.contains("not UTF-8 text (at byte 15)"), "{e}");
        ex.extract("{\"x\":\"caf\u{e9}\"}".as_bytes(), &mut out)
            .unwrap();
    }

    fn paths() -> Vec<Vec<String>> {
        [
            "card.id",
            "ts",
            "amount",
            "card",
            "tags.1",
            "deep.a.b",
            "missing.x",
            "s",
        ]
        .iter()
        .map(|p| p.split('.').map(str::to_string).collect())
        .collect()
    }

    /// Every path captured from `text` is what a full parse and `lookup`
    /// find, as the engine's value.
    fn assert_same_as_lookup(ex: &Extractor, slots: &[usize], text: &str) {
        let mut out = Captures::new();
        let got = ex.extract(text.as_bytes(), &mut out).unwrap();
        let doc: serde_json::Value = serde_json::from_str(text).unwrap();
        for (p, s) in paths().iter().zip(slots) {
            let want = lookup(&doc, p).map(|v| Field::of_json(v).to_value());
            let have = out.get(got, *s).map(Field::to_value);
            assert_eq!(format!("{have:?}"), format!("{want:?}"), "{text} {p:?}");
        }
    }

    fn extractor() -> (Extractor, Vec<usize>) {
        let mut ex = Extractor::new();
        let slots = paths().iter().map(|p| ex.add(p)).collect();
        (ex, slots)
    }

    #[test]
    fn captures_what_lookup_finds() {
        let docs = [
            r#"{"card":{"id":"c1","x":[1,2]},"ts":5,"amount":1.5,"tags":["a","b"],"deep":{"a":{"b":null}}}"#,
            r#"{"card":"flat","ts":"2013-01-01T00:00:00Z","amount":-3,"tags":[],"deep":{"a":7}}"#,
            r#"{"amount":1,"amount":2,"other":{"ts":9}}"#,
            r#"{"card":{"id":"a"},"card":{"x":1}}"#,
            r#"{"card":{"id":"a"},"card":5, "s": "tab\there \"q\" \u00e9 \ud83d\ude00"}"#,
            r#" { "amount" : -0 , "ts": 18446744073709551615, "s": true, "tags": [0, {"a":1}] } "#,
            r#"{"amount": 1e2, "ts": -9223372036854775808, "card": [ ], "deep": {"a": {"b": [1, "x"]}}}"#,
            r#"{}"#,
        ];
        let (ex, slots) = extractor();
        for d in docs {
            assert_same_as_lookup(&ex, &slots, d);
        }
    }

    #[test]
    fn rejects_what_is_not_one_object() {
        let mut ex = Extractor::new();
        ex.add(&["a".to_string()]);
        let mut out = Captures::new();
        for bad in [
            "[1]",
            "3",
            "{\"a\":1} x",
            "{\"a\":",
            "not json",
            "{\"a\":1e999}",
        ] {
            assert!(ex.extract(bad.as_bytes(), &mut out).is_err(), "{bad}");
        }
        let e = ex.extract(b"[1]", &mut out).unwrap_err();
        assert_eq!(e, "an event must be a JSON object");
        let e = ex.extract(b"{\"a\": tru}", &mut out).unwrap_err();
        assert_eq!(e, "invalid JSON: expected value at line 1 column 7");
    }

    #[test]
    fn accepts_and_refuses_what_serde_json_does_on_edge_cases() {
        let (ex, _) = extractor();
        let mut out = Captures::new();
        for text in [
            r#"{"s":"\ud83d"}"#,
            r#"{"s":"\ud83dx"}"#,
            r#"{"s":"\udc00"}"#,
            r#"{"s":"\ud83d\u0041"}"#,
            r#"{"s":"\ud83d\ude00"}"#,
            r#"{"x":"\ud83d"}"#,
            r#"{"s":"\u00"}"#,
            r#"{"s":"\x"}"#,
            "{\"s\":\"a\tb\"}",
            "{\"s\":\"a\u{7f}b\"}",
            r#"{"amount":1.}"#,
            r#"{"amount":.5}"#,
            r#"{"amount":-}"#,
            r#"{"amount":01}"#,
            r#"{"amount":1e}"#,
            r#"{"amount":1e+5}"#,
            r#"{"amount":1E-400}"#,
            r#"{"amount":123456789012345678901234567890}"#,
            r#"{"amount":0.1234567890123456789012345}"#,
            r#"{"amount":-9223372036854775809}"#,
            r#"{"a":1,}"#,
            r#"{,}"#,
            r#"{"a" 1}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":nulll}"#,
            "{\"a\":1}\n",
            "\u{feff}{}",
        ] {
            let serde = serde_json::from_str::<serde_json::Value>(text);
            let ours = ex.extract(text.as_bytes(), &mut out);
            assert_eq!(ours.is_ok(), serde.is_ok(), "{text}: {ours:?} vs {serde:?}");
            if serde.is_ok() {
                assert_same_as_lookup(&ex, &extractor().1, text);
            }
        }
    }

    #[test]
    fn nesting_is_limited_as_serde_json_limits_it() {
        let mut ex = Extractor::new();
        ex.add(&["a".to_string()]);
        let mut out = Captures::new();
        for depth in [126, 127, 128, 129] {
            let text = format!("{{\"a\":{}{}}}", "[".repeat(depth), "]".repeat(depth));
            let serde = serde_json::from_str::<serde_json::Value>(&text).is_ok();
            assert_eq!(
                ex.extract(text.as_bytes(), &mut out).is_ok(),
                serde,
                "{depth}"
            );
        }
    }

    /// Pieces of JSON, valid and not, that random texts are made of.
    fn piece() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            " ",
            "\n",
            "\"card\"",
            "\"id\"",
            "\"ts\"",
            "\"amount\"",
            "\"tags\"",
            "\"deep\"",
            "\"a\"",
            "\"b\"",
            "\"s\"",
            "\"x\\\"y\"",
            "\"\\u00e9\"",
            "\"\\ud83d\\ude00\"",
            "\"\\ud83d\"",
            "\"\\udc00x\"",
            "\"\\q\"",
            "\"\t\"",
            "0",
            "-0",
            "12",
            "-7",
            "1.5",
            "1e3",
            "2E-2",
            "1.",
            ".5",
            "01",
            "-",
            "1e400",
            "9223372036854775808",
            "-9223372036854775809",
            "true",
            "false",
            "null",
            "nul",
            "\"",
            "\\",
        ])
    }

    /// A well-formed object of the pieces above, to be mutated.
    fn object() -> impl Strategy<Value = String> {
        let leaf = prop::sample::select(vec![
            "0",
            "-0",
            "12",
            "-3.25",
            "1e2",
            "18446744073709551615",
            "true",
            "null",
            "\"c1\"",
            "\"a\\\"b\"",
            "\"\\u00e9\"",
        ])
        .prop_map(str::to_string);
        let names = prop::sample::select(vec![
            "card", "id", "ts", "amount", "tags", "deep", "a", "b", "s", "1",
        ]);
        leaf.prop_recursive(4, 32, 4, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec((names.clone(), inner), 0..5).prop_map(|v| {
                    let members: Vec<String> =
                        v.iter().map(|(n, x)| format!("\"{n}\": {x}")).collect();
                    format!("{{{}}}", members.join(", "))
                }),
            ]
        })
        .prop_map(|v| {
            if v.starts_with('{') {
                v
            } else {
                format!("{{\"amount\": {v}}}")
            }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// A CSV row's cells, captured, are what the row's document holds.
        #[test]
        fn csv_cells_read_as_the_rows_document(
            cells in prop::collection::vec(prop::sample::select(vec![
                "", "NA", "12", "-0", "+5", "1.5", "-2.50", "1e3", "1e400", "inf", "NaN", "e",
                "abc", "1.2.3", " 7", "0x10", "\u{e9}t\u{e9}", "9223372036854775808",
            ]), 4),
            bad_utf8 in any::<bool>(),
        ) {
            let header: std::sync::Arc<[String]> =
                ["card", "amount", "ts", "amount"].iter().map(|s| s.to_string()).collect();
            let mut row = csv::ByteRecord::new();
            for (i, c) in cells.iter().enumerate() {
                if bad_utf8 && i == 2 {
                    row.push_field(b"x\xff");
                } else {
                    row.push_field(c.as_bytes());
                }
            }
            let csv = crate::input::CsvRow { header: header.clone(), row, nulls: ["NA".to_string()].into() };
            let mut ex = Extractor::new();
            let paths = [vec!["card".to_string()], vec!["amount".to_string()], vec!["ts".to_string()], vec!["x".to_string()]];
            let slots: Vec<usize> = paths.iter().map(|p| ex.add(p)).collect();
            let mut out = Captures::new();
            let columns = ex.columns(&header);
            let text = ex.extract_row(&columns, &csv.row, &csv.nulls, &mut out);
            let doc = csv.to_doc();
            for (p, s) in paths.iter().zip(&slots) {
                let want = lookup(&doc, p).map(|v| Field::of_json(v).to_value());
                let have = out.get(text, *s).map(Field::to_value);
                prop_assert_eq!(format!("{have:?}"), format!("{want:?}"), "{:?} {:?}", cells, p);
            }
        }

        #[test]
        fn string_stops_where_a_byte_by_byte_search_does(
            bytes in prop::collection::vec(prop_oneof![
                Just(b'"'), Just(b'\\'), 0u8..0x20, 0x20u8..0x80, 0x80u8..=0xff, Just(b'a'),
            ], 0..40),
        ) {
            let naive = bytes.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20);
            prop_assert_eq!(string_stop(&bytes), naive);
        }

        /// The scanner accepts exactly the objects serde_json parses, and on
        /// those captures what a full parse finds.
        #[test]
        fn agrees_with_serde_json(
            base in object(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), piece(), 0usize..3), 0..3),
        ) {
            let mut text = base;
            for (at, piece, how) in edits {
                let mut i = at.index(text.len() + 1);
                while !text.is_char_boundary(i) { i -= 1; }
                match how {
                    0 => text.insert_str(i, piece),
                    1 => { text.replace_range(i..(i + 1).min(text.len()), ""); while !text.is_char_boundary(i.min(text.len())) { i -= 1; } }
                    _ => text.replace_range(i..(i + piece.len()).min(text.len()).max(i), piece),
                }
            }
            let (ex, slots) = extractor();
            let mut out = Captures::new();
            let ours = ex.extract(text.as_bytes(), &mut out);
            match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(v) if v.is_object() => {
                    prop_assert!(ours.is_ok(), "refused {text:?}: {ours:?}");
                    assert_same_as_lookup(&ex, &slots, &text);
                }
                Ok(_) => prop_assert_eq!(ours, Err("an event must be a JSON object".to_string())),
                Err(e) => prop_assert!(ours.is_err(), "accepted {text:?}, serde_json: {e}"),
            }
        }
    }
}
