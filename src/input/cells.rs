//! A CSV row's cells: their bytes back to back and where each ends, held
//! in a block that many rows may share.
//!
//! Rows read ahead ([`super::open_ahead`]) arrive in blocks of 256 from
//! the reader thread; each row's cells stay in its block, shared by
//! reference count, where building each row a `csv::ByteRecord` of its own
//! on the matching thread cost 1.9 k instructions a row (three zeroed
//! allocations and a copy of every cell), an eighth of that thread's work
//! on the flight year. A row read any other way is a block of its own.
//!
//! The reader thread also types each cell ([`CellType`]: no value, a
//! number, or text) as it parses the row, so the matching thread takes a
//! captured cell's number as it is instead of reading the cell again: on
//! the flight year that reading was 8 % of the matching thread's
//! instructions, and the reader thread had the time to spare. What a
//! cell's type is ([`cell_type`]) is defined here, once, for every reader
//! of CSV cells.

use std::ops::Range;
use std::sync::Arc;

/// The cells of one CSV row (see the module's notes).
#[derive(Clone, Debug)]
pub struct Cells {
    block: Arc<Block>,
    /// Where the row's text starts in the block's.
    start: usize,
    /// Which of the block's cell ends are the row's.
    cells: Range<usize>,
}

/// Rows' cells back to back, and where each cell ends.
#[derive(Debug, Default)]
pub(super) struct Block {
    pub(super) text: Vec<u8>,
    pub(super) ends: Vec<usize>,
    /// Each cell's type, beside `ends`, in a block whose reader typed its
    /// cells (else empty); `None` for a cell of a column nobody reads, or
    /// one that is not UTF-8 (read again, with replacement characters,
    /// where it is used).
    pub(super) types: Vec<Option<CellType>>,
}

impl Block {
    /// Appends a row's cells.
    pub(super) fn push<'c>(&mut self, cells: impl IntoIterator<Item = &'c [u8]>) {
        for cell in cells {
            self.text.extend_from_slice(cell);
            self.ends.push(self.text.len());
        }
    }

    /// Appends a row's cells, those of the columns `typed` marks with
    /// their types (see [`cell_type`]); every row of the block must
    /// be pushed this way.
    pub(super) fn push_typed<'c>(
        &mut self,
        cells: impl IntoIterator<Item = &'c [u8]>,
        typed: &[bool],
        nulls: &[String],
    ) {
        for (i, cell) in cells.into_iter().enumerate() {
            self.text.extend_from_slice(cell);
            self.ends.push(self.text.len());
            let text = match typed.get(i) {
                Some(true) => std::str::from_utf8(cell).ok(),
                _ => None,
            };
            self.types.push(text.map(|text| cell_type(text, nulls)));
        }
    }
}

impl Cells {
    /// The row made of the block's cells `cells`, whose text starts at
    /// `start`.
    pub(super) fn in_block(block: &Arc<Block>, start: usize, cells: Range<usize>) -> Cells {
        Cells {
            block: block.clone(),
            start,
            cells,
        }
    }

    /// A row of its own.
    pub fn new<'c>(cells: impl ExactSizeIterator<Item = &'c [u8]> + Clone) -> Cells {
        let text = cells.clone().map(<[u8]>::len).sum();
        let mut block = Block {
            text: Vec::with_capacity(text),
            ends: Vec::with_capacity(cells.len()),
            types: Vec::new(),
        };
        block.push(cells);
        let n = block.ends.len();
        Cells {
            block: Arc::new(block),
            start: 0,
            cells: 0..n,
        }
    }

    fn ends(&self) -> &[usize] {
        &self.block.ends[self.cells.clone()]
    }

    /// Every cell's bytes, back to back.
    pub fn as_slice(&self) -> &[u8] {
        let end = self.ends().last().copied().unwrap_or(self.start);
        &self.block.text[self.start..end]
    }

    /// How many cells.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// Where cell `i` is in [`Cells::as_slice`].
    pub fn range(&self, i: usize) -> Option<Range<usize>> {
        let ends = self.ends();
        let end = *ends.get(i)?;
        let start = i.checked_sub(1).map_or(self.start, |p| ends[p]);
        Some(start - self.start..end - self.start)
    }

    /// Cell `i`'s bytes.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let range = self.range(i)?;
        Some(&self.as_slice()[range])
    }

    /// Cell `i`'s type, when the reader typed it (see the module's notes):
    /// the same as [`cell_type`] of its text with the input's null
    /// markers. `None` when it did not: a column no pattern reads, a cell
    /// that is not UTF-8, a row not read ahead.
    #[inline]
    pub fn cell_type(&self, i: usize) -> Option<CellType> {
        if i >= self.cells.len() {
            return None;
        }
        self.block
            .types
            .get(self.cells.start + i)
            .copied()
            .flatten()
    }

    /// The cells in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        let (ends, text, start) = (self.ends(), &self.block.text, self.start);
        (0..ends.len()).map(move |i| {
            let from = i.checked_sub(1).map_or(start, |p| ends[p]);
            &text[from..ends[i]]
        })
    }
}

/// An empty cell, or one of the null markers (`NA`), holds no value.
pub fn is_null_cell(text: &str, nulls: &[String]) -> bool {
    text.is_empty() || nulls.iter().any(|n| n == text)
}

/// What a CSV cell holds: no value (empty, or a null marker), an integer,
/// a decimal (with a point or an exponent), or else text. The one reading
/// of a cell's type: [`cell_value`], the field extractor and the reader
/// thread ([`super::open_ahead`]) all read cells through it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CellType {
    Absent,
    Int(i64),
    Float(f64),
    Text,
}

/// The type of the cell `text` (see [`CellType`]); `nulls` are the cell
/// texts that mean "no value" besides the empty cell.
#[inline]
pub fn cell_type(text: &str, nulls: &[String]) -> CellType {
    if is_null_cell(text, nulls) {
        return CellType::Absent;
    }
    // `str::parse::<i64>` reads digits alone, a sign first or not: read
    // here in one pass when too few to overflow (most number cells), and
    // not tried at all on other text (the parse took twice the
    // instructions, and was tried on every text cell).
    let b = text.as_bytes();
    let digits = b
        .strip_prefix(b"-")
        .or_else(|| b.strip_prefix(b"+"))
        .unwrap_or(b);
    if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) {
        if digits.len() <= 18 {
            let n = digits.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0'));
            return CellType::Int(if b[0] == b'-' { -n } else { n });
        }
        // 19 digits may still fit; more than an `i64` holds is text (with
        // no point or exponent, not a decimal either).
        return text.parse().map_or(CellType::Text, CellType::Int);
    }
    if text.contains(['.', 'e', 'E'])
        && !text.contains(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
    {
        if let Some(f) = text.parse::<f64>().ok().filter(|f| f.is_finite()) {
            return CellType::Float(f);
        }
    }
    CellType::Text
}

/// A CSV cell: integers and decimals as numbers, anything else (the empty
/// cell too) as text.
pub fn cell_value(text: &str) -> serde_json::Value {
    match cell_type(text, &[]) {
        CellType::Int(i) => i.into(),
        CellType::Float(f) => {
            serde_json::Number::from_f64(f).map_or_else(|| text.into(), serde_json::Value::Number)
        }
        CellType::Absent | CellType::Text => serde_json::Value::String(text.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A cell's type read the plain way: `str::parse` first as an integer,
    /// then, for a decimal-looking text, as a finite float.
    fn plain_cell_type(text: &str, nulls: &[String]) -> CellType {
        if text.is_empty() || nulls.iter().any(|n| n == text) {
            CellType::Absent
        } else if let Ok(i) = text.parse::<i64>() {
            CellType::Int(i)
        } else {
            let decimal = text.contains(['.', 'e', 'E'])
                && !text.contains(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E');
            match text.parse::<f64>() {
                Ok(f) if decimal && f.is_finite() => CellType::Float(f),
                _ => CellType::Text,
            }
        }
    }

    proptest! {
        #[test]
        fn a_cell_types_as_str_parse_reads_it(
            text in prop_oneof![
                "[-+]?[0-9]{0,21}",
                "[-+]?[0-9]{0,4}[.eE]?[-+]?[0-9]{0,4}",
                "[-+0-9a-zA-Z. ]{0,8}",
                Just("NA".to_string()),
                Just("-9223372036854775808".to_string()),
                Just("9223372036854775807".to_string()),
                Just("9223372036854775808".to_string()),
            ],
        ) {
            let nulls = ["NA".to_string()];
            prop_assert_eq!(cell_type(&text, &nulls), plain_cell_type(&text, &nulls));
        }
    }

    #[test]
    fn a_row_in_a_shared_block_reads_as_a_row_of_its_own() {
        let rows: [&[&[u8]]; 3] = [&[b"a", b"", b"ccc"], &[b"", b"dd"], &[b"e"]];
        let mut block = Block::default();
        let mut spans = Vec::new();
        for row in rows {
            let (start, first) = (block.text.len(), block.ends.len());
            block.push(row.iter().copied());
            spans.push((start, first..block.ends.len()));
        }
        let block = Arc::new(block);
        for (row, (start, cells)) in rows.iter().zip(spans) {
            let shared = Cells::in_block(&block, start, cells);
            let own = Cells::new(row.iter().copied());
            for c in [&shared, &own] {
                assert_eq!(c.len(), row.len());
                assert_eq!(c.iter().collect::<Vec<_>>(), row.to_vec());
                assert_eq!(c.as_slice(), row.concat());
                assert_eq!(c.get(row.len()), None);
                assert_eq!(c.range(row.len()), None);
            }
        }
        let empty = Cells::new([].into_iter());
        assert!(empty.is_empty() && empty.as_slice().is_empty());
    }
}
