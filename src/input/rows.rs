//! CSV rows as the `csv` crate reads them, checked and identified: one
//! reader for [`super::open`], which hands each row over in a record of
//! its own, and for [`super::open_ahead`], which reads rows on a thread
//! into blocks ([`super::ahead`]).

use std::io::{self, Read};
use std::sync::Arc;

use csv::ByteRecord;

use super::BadRecord;

/// The rows of a CSV input after its header.
pub(super) struct CsvSource<R> {
    rdr: csv::Reader<R>,
    pub(super) header: Arc<[String]>,
    /// Rows read so far.
    rows: u64,
}

impl<R: Read> CsvSource<R> {
    /// Reads the header row.
    pub(super) fn new(reader: R) -> io::Result<CsvSource<R>> {
        // Flexible: a row of the wrong width is reported here, with its
        // bytes, rather than as the reader's error without them.
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .from_reader(reader);
        let header: Arc<[String]> = rdr
            .headers()
            .map_err(io::Error::other)?
            .iter()
            .map(str::to_string)
            .collect();
        Ok(CsvSource {
            rdr,
            header,
            rows: 0,
        })
    }

    /// Reads the next row into `row` (reusing its allocations) and returns
    /// its line (the row's number + 1 for the header); `None` at the end. A
    /// row that cannot be parsed, or that has another width than the
    /// header, is a bad record.
    pub(super) fn next_into(&mut self, row: &mut ByteRecord) -> Option<Result<u64, BadRecord>> {
        let read = self.rdr.read_byte_record(row);
        self.rows += 1;
        let line = self.rows + 1;
        let bad = |reason, raw| BadRecord {
            line,
            reason,
            raw,
            csv_header: Some(self.header.clone()),
        };
        match read {
            Ok(false) => None,
            Err(e) => Some(Err(bad(format!("invalid CSV: {e}"), Vec::new()))),
            Ok(true) if row.len() != self.header.len() => Some(Err(bad(
                format!(
                    "invalid CSV: the row has {} fields, the header {}",
                    row.len(),
                    self.header.len()
                ),
                row_bytes(row.iter()),
            ))),
            Ok(true) => Some(Ok(line)),
        }
    }
}

/// A row's identity: the stable hash of its cells (`text` bytes in all),
/// each followed by a comma (the bytes it always had, so alert ids do not
/// change).
pub(super) fn row_hash<'c>(text: usize, cells: impl ExactSizeIterator<Item = &'c [u8]>) -> u64 {
    let mut h = crate::event::StableHasher::new(text + cells.len(), 0);
    for cell in cells {
        h.write_cell(cell);
    }
    h.finish()
}

/// The bytes a row took in the input, about (for progress).
pub(super) fn row_size(row: &super::Cells) -> u64 {
    (row.as_slice().len() + row.len()) as u64
}

/// The row as one line of CSV (quoted where a cell needs it).
pub(super) fn row_bytes<'c>(cells: impl IntoIterator<Item = &'c [u8]>) -> Vec<u8> {
    // A buffer of csv's default 8 KiB, made and zeroed for each row, was
    // 17 k instructions a dead letter: 2 % of replaying the flight year,
    // whose 2,512 rows without a tail number are refused.
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .buffer_capacity(256)
        .from_writer(Vec::new());
    // Writing to memory cannot fail.
    let _ = w.write_record(cells);
    let mut bytes = w.into_inner().unwrap_or_default();
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    bytes
}
