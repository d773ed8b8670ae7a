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

use crate::input::{cell_type, CellType};
use crate::value::Value;

mod scan;

use scan::Scan;

/// A set of field paths and how to read them from JSON text.
#[derive(Clone, Debug, Default)]
pub struct Extractor {
    nodes: Vec<TrieNode>,
    captures: usize,
}

#[derive(Clone, Debug, Default)]
struct TrieNode {
    children: Vec<(String, usize)>,
    /// The children's names' heads, in the same order: a member name is
    /// looked up by comparing one word with each (see [`NameHead`]).
    heads: Vec<NameHead>,
    /// The children's names as they are quoted in JSON text, in the same
    /// order, where that fits one word (see [`QuotedName`]).
    quoted: Vec<QuotedName>,
    /// Children whose names are array indices, by index.
    indices: Vec<(usize, usize)>,
    /// The capture slot of the path that ends here.
    capture: Option<usize>,
    /// Every capture slot below this node: cleared when a duplicate
    /// member name replaces the value they were read from.
    nested: Vec<usize>,
}

/// A member name's length and first eight bytes (as a little-endian word,
/// zeros past the end). Equal names have equal heads, and names of up to
/// eight bytes (most names) are equal exactly when their heads are, so that
/// looking a name up among a node's children is one compare per child
/// rather than a `memcmp` call: a third of the instructions of finding the
/// peer file's three captured members, 4 % of `cep replay`'s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct NameHead {
    len: usize,
    word: u64,
}

impl NameHead {
    fn of(name: &[u8]) -> NameHead {
        let word =
            (name.iter().take(8).enumerate()).fold(0u64, |w, (i, &b)| w | u64::from(b) << (8 * i));
        NameHead {
            len: name.len(),
            word,
        }
    }

    /// The head of the `len` bytes at `at` in `text`: one load where eight
    /// bytes are there to read (a name is followed by at least `":` and a
    /// value, so nearly always).
    #[inline]
    fn at(text: &[u8], at: usize, len: usize) -> NameHead {
        match text.get(at..at + 8) {
            Some(w) => {
                let w = u64::from_le_bytes(w.try_into().unwrap_or_default());
                let keep = u64::MAX.checked_shr(64 - 8 * len.min(8) as u32);
                NameHead {
                    len,
                    word: w & keep.unwrap_or(0),
                }
            }
            None => NameHead::of(&text[at..at + len]),
        }
    }
}

/// A short member name as it appears in JSON text after its opening quote:
/// its bytes and the closing quote, as a word and the mask of those bytes.
/// The eight bytes after an opening quote, masked, equal `word` exactly when
/// the member is this name written without escapes, so a registered name
/// is recognised without scanning it as a string (`Scan::known_member`).
/// Names of eight bytes or more, or with a byte a JSON string must escape,
/// have an empty mask and are never recognised this way.
#[derive(Clone, Copy, Debug)]
struct QuotedName {
    mask: u64,
    word: u64,
}

impl QuotedName {
    fn of(name: &[u8]) -> QuotedName {
        let plain = name.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\');
        if name.len() >= 8 || !plain {
            return QuotedName { mask: 0, word: 1 };
        }
        let mut quoted = name.to_vec();
        quoted.push(b'"');
        QuotedName {
            mask: u64::MAX >> (8 * (8 - quoted.len())),
            word: NameHead::of(&quoted).word,
        }
    }

    /// Whether `w`, the eight bytes after an opening quote, starts with
    /// this name and its closing quote.
    #[inline]
    fn starts(self, w: u64) -> bool {
        w & self.mask == self.word
    }
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
}

/// The fields an [`Extractor`] captured from one text, as
/// [`Extractor::extract`] and [`Extractor::extract_row`] return them. It
/// borrows the text and the captures, so neither can change while it is
/// read.
#[derive(Clone, Copy, Debug)]
pub struct Fields<'a> {
    text: Text<'a>,
    caps: &'a Captures,
}

/// The text a [`Fields`]' spans are in. Each span of a string or a nested
/// value is UTF-8 either way.
#[derive(Clone, Copy, Debug)]
enum Text<'a> {
    /// JSON, checked string by string: the scanner checks every string's
    /// non-ASCII bytes and accepts only ASCII outside strings (a check of
    /// the whole text first was 3.5 % of `cep replay`'s instructions), so a
    /// captured piece is checked again as it is read (a key: a few bytes).
    Json(&'a [u8]),
    /// A CSV row checked whole, its captured cells cut at character
    /// boundaries: read without a check per cell (15 string cells a flight
    /// row: checking each as it was read made the flight year 5 % slower).
    Row(&'a str),
}

impl<'a> Fields<'a> {
    /// The field in capture slot `slot`; `None` where the path is not there.
    #[inline]
    pub fn get(&self, slot: usize) -> Option<Field<'a>> {
        let caps = self.caps;
        // The extractor checked every span it records is UTF-8 (see
        // `text`), so this check of a captured piece (a key, a name) cannot
        // fail. (Skipping it with `from_utf8_unchecked` saved 2.5 % of
        // `cep replay`'s instructions on the peer file but no time
        // measurable in an A/B of 11 runs, so it stays checked.)
        let span = |a: u32, b: u32| {
            let (a, b) = (a as usize, b as usize);
            match self.text {
                Text::Json(bytes) => std::str::from_utf8(&bytes[a..b]).ok(),
                Text::Row(row) => row.get(a..b),
            }
        };
        Some(match *caps.found.get(slot)? {
            Found::Absent => return None,
            Found::Null => Field::Null,
            Found::Bool(b) => Field::Bool(b),
            Found::Int(i) => Field::Int(i),
            Found::Float(f) => Field::Float(f),
            Found::Str(a, b) => Field::Str(span(a, b)?),
            Found::Unescaped(a, b) => Field::Str(&caps.unescaped[a as usize..b as usize]),
            Found::Composite(a, b) => Field::Text(span(a, b)?),
        })
    }
}

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
                    self.nodes[node].heads.push(NameHead::of(seg.as_bytes()));
                    self.nodes[node].quoted.push(QuotedName::of(seg.as_bytes()));
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
        for &n in &trail[..trail.len() - 1] {
            self.nodes[n].nested.push(c);
        }
        c
    }

    /// Checks that `json` is one JSON object and captures the registered
    /// paths into `out`. Returns the captured fields, read through
    /// [`Fields::get`].
    pub fn extract<'a>(&self, json: &'a [u8], out: &'a mut Captures) -> Result<Fields<'a>, String> {
        out.reset(self.captures);
        if json.len() > u32::MAX as usize {
            return Err("invalid JSON: an event of 4 GiB or more".into());
        }
        // The scanner checks strings as UTF-8, so a text it accepts is
        // UTF-8 (see `Scan`).
        let mut scan = Scan::new(self, json, out);
        scan.skip_ws();
        let is_object = scan.peek() == Some(b'{');
        let root = (is_object && !self.nodes.is_empty()).then_some(0);
        if let Err(bad) = scan.value(root).and_then(|_| scan.end()) {
            // Text that is not UTF-8 is reported as such wherever the
            // scanner stopped.
            if let Err(e) = std::str::from_utf8(json) {
                let at = e.valid_up_to();
                return Err(format!("invalid JSON: not UTF-8 text (at byte {at})"));
            }
            return Err(format!("invalid JSON: {}", scan.describe(bad)));
        }
        if !is_object {
            return Err("an event must be a JSON object".into());
        }
        Ok(Fields {
            text: Text::Json(json),
            caps: out,
        })
    }
}

impl Extractor {
    /// The names of the CSV columns some capture reads (see
    /// [`Extractor::columns`]).
    pub fn column_names(&self) -> Vec<String> {
        let Some(root) = self.nodes.first() else {
            return Vec::new();
        };
        root.children
            .iter()
            .filter(|(_, child)| self.nodes[*child].capture.is_some())
            .map(|(name, _)| name.clone())
            .collect()
    }

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
    /// [`Extractor::columns`]) maps, typed by [`crate::input::cell_type`]
    /// with the null markers `nulls` (a cell its reader typed already, with
    /// the same markers, is taken as typed); empty and null cells are
    /// absent. A cell that is not
    /// UTF-8 is decoded with replacement characters (as
    /// [`crate::input::CsvRow::to_doc`] does) into the captures' buffer.
    pub fn extract_row<'a>(
        &self,
        columns: &[Option<usize>],
        row: &'a crate::input::Cells,
        nulls: &[String],
        out: &'a mut Captures,
    ) -> Fields<'a> {
        out.reset(self.captures);
        // The row checked once; a cell is UTF-8 if it starts and ends at
        // character boundaries of a row that is (cells that are not UTF-8
        // can join into a row that is, with a character across a cell
        // boundary: slicing there panicked).
        // (A row that is not UTF-8 reads as "", so every cell of it takes
        // the replacement path.)
        let text = std::str::from_utf8(row.as_slice()).unwrap_or("");
        for (i, slot) in columns.iter().enumerate() {
            let Some(slot) = *slot else { continue };
            let typed = row.cell_type(i);
            // A cell the reader typed (see `crate::input::Cells`) as a
            // number or no value is taken as it is: its text is not read.
            let found = match typed {
                Some(CellType::Text) | None => match row.range(i) {
                    Some(range) => cell_text(row, text, range, typed, nulls, out),
                    None => continue,
                },
                // A number or no value: there is no text to point at.
                Some(t) => cell_found(t, Found::Absent),
            };
            if let Some(found) = found {
                out.found[slot] = found;
            }
        }
        Fields {
            text: Text::Row(text),
            caps: out,
        }
    }
}

/// The capture of a text cell of `row` (`text`, when the row is UTF-8),
/// or one its reader did not type (`typed` is `None`).
fn cell_text(
    row: &crate::input::Cells,
    text: &str,
    range: std::ops::Range<usize>,
    typed: Option<CellType>,
    nulls: &[String],
    out: &mut Captures,
) -> Option<Found> {
    let span = Found::Str(range.start as u32, range.end as u32);
    match (typed, text.get(range.clone())) {
        (Some(t), Some(_)) => cell_found(t, span),
        (None, Some(cell)) => cell_found(cell_type(cell, nulls), span),
        (_, None) => {
            let lossy = String::from_utf8_lossy(&row.as_slice()[range]);
            let from = out.unescaped.len();
            out.unescaped.push_str(&lossy);
            let to = out.unescaped.len();
            let cell = &out.unescaped[from..to];
            let span = Found::Unescaped(from as u32, to as u32);
            cell_found(cell_type(cell, nulls), span)
        }
    }
}

/// A CSV cell of type `t` as a capture (text as `as_text`); `None` for
/// no value.
#[inline]
fn cell_found(t: CellType, as_text: Found) -> Option<Found> {
    match t {
        CellType::Absent => None,
        CellType::Int(i) => Some(Found::Int(i)),
        CellType::Float(f) => Some(Found::Float(f)),
        CellType::Text => Some(as_text),
    }
}

#[cfg(test)]
mod tests;
