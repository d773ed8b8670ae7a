//! Reading input files: JSON lines, CSV or dead letters, plain or zipped,
//! or stdin.
//!
//! Every record keeps a stable hash of its bytes (the event's identity in
//! alert ids). JSON lines stay text and CSV rows stay rows until the engine
//! reads the fields it needs ([`crate::extract`]): a CSV row reads as an
//! object keyed by the header row, numbers as numbers, and empty cells or
//! `NA` left out, so `dep_delay is missing` finds a cancelled flight
//! ([`CsvRow::to_doc`] builds that object when a whole document is wanted).
//! A record that cannot be read is returned as a [`BadRecord`] with its
//! line, its bytes and the reason (as is a JSON line the engine finds
//! malformed): the caller sends it to the dead-letter output
//! ([`crate::deadletter`]), it is never skipped silently.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::sync::Arc;

use crate::deadletter::DeadLetter;
use crate::event::stable_hash;

mod ahead;
mod cells;
mod rows;
pub use ahead::{open_ahead, RowsAhead};
pub use cells::{cell_type, cell_value, is_null_cell, CellType, Cells};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    JsonLines,
    Csv,
    /// A dead-letter file ([`crate::deadletter`]): each entry's bytes are
    /// read again as the record they were.
    DeadLetter,
    /// An Avro object container file: records read with the writer schema
    /// in its header ([`crate::avro`]).
    Avro,
}

impl Format {
    /// Guesses from the file name: `.csv` (also `.csv.zip`) is CSV,
    /// `.avro` an Avro container file.
    pub fn from_path(path: &str) -> Format {
        let p = path.trim_end_matches(".zip");
        if p.ends_with(".csv") {
            Format::Csv
        } else if p.ends_with(".avro") {
            Format::Avro
        } else {
            Format::JsonLines
        }
    }
}

/// What a record holds.
#[derive(Debug)]
pub enum Payload {
    /// A JSON line as text: the engine reads only the fields it needs
    /// ([`crate::engine::Engine::push_json`]) and checks it is an object.
    Json(Vec<u8>),
    /// A document already built (an Avro record).
    Doc(serde_json::Value),
    /// A CSV row: the engine reads only the cells it needs
    /// ([`crate::engine::Engine::push_row`]).
    Csv(CsvRow),
}

impl Payload {
    /// The record as a document (parsing JSON text).
    pub fn into_doc(self) -> Result<serde_json::Value, String> {
        match self {
            Payload::Doc(d) => Ok(d),
            Payload::Csv(row) => Ok(row.to_doc()),
            Payload::Json(b) => {
                serde_json::from_slice(&b).map_err(|e| format!("invalid JSON: {e}"))
            }
        }
    }
}

/// One input record.
#[derive(Debug)]
pub struct Record {
    pub payload: Payload,
    pub hash: u64,
    /// 1-based line (CSV: record number + 1 for the header).
    pub line: u64,
    /// Bytes the record took in the input (for progress).
    pub bytes: u64,
}

/// A CSV row as read, with the header that names its cells.
#[derive(Clone, Debug)]
pub struct CsvRow {
    pub header: Arc<[String]>,
    pub row: Cells,
    /// Cell texts that mean "no value" (besides the empty cell).
    pub nulls: Arc<[String]>,
}

impl CsvRow {
    /// The row as a document: an object keyed by the header, numbers as
    /// numbers, empty and null cells left out.
    pub fn to_doc(&self) -> serde_json::Value {
        let mut obj = serde_json::Map::with_capacity(self.header.len());
        for (cell, name) in self.row.iter().zip(self.header.iter()) {
            let text = String::from_utf8_lossy(cell);
            if !is_null_cell(&text, &self.nulls) {
                obj.insert(name.clone(), cell_value(&text));
            }
        }
        serde_json::Value::Object(obj)
    }

    /// The record's identity: the stable hash of its cells, each followed
    /// by a comma (the bytes it always had, so alert ids do not change).
    pub fn hash(&self) -> u64 {
        rows::row_hash(self.row.as_slice().len(), self.row.iter())
    }

    /// The row as one line of CSV (quoted where a cell needs it).
    pub fn to_bytes(&self) -> Vec<u8> {
        rows::row_bytes(self.row.iter())
    }
}

/// A record that could not be read.
#[derive(Debug)]
pub struct BadRecord {
    pub line: u64,
    pub reason: String,
    /// Its bytes, as far as they could be read.
    pub raw: Vec<u8>,
    /// For a CSV row: the file's header.
    pub csv_header: Option<Arc<[String]>>,
}

impl BadRecord {
    /// The dead letter of this record, read from `input`.
    pub fn dead_letter(&self, input: &str) -> DeadLetter {
        let origin = crate::deadletter::Origin::File {
            input: input.to_string(),
            line: self.line,
        };
        let mut d = DeadLetter::new(origin, &self.raw, vec![self.reason.clone()]);
        d.csv_header = self.csv_header.as_ref().map(|h| h.to_vec());
        d
    }
}

pub type Records = Box<dyn Iterator<Item = Result<Record, BadRecord>>>;

/// Opens `path` (`-` for stdin). Returns the records and, for files, the
/// total byte length (for progress).
pub fn open(
    path: &str,
    format: Format,
    null_values: &[String],
) -> io::Result<(Records, Option<u64>)> {
    let (reader, len) = open_bytes(path)?;
    Ok((read(reader, format, null_values)?, len))
}

/// JSON lines read in place ([`Lines`]) from `path` (`-` for stdin), and
/// for files the total byte length.
pub fn open_lines(path: &str) -> io::Result<(Lines<impl Read>, Option<u64>)> {
    let (reader, len) = open_bytes(path)?;
    Ok((Lines::new(reader), len))
}

/// The bytes of `path` (`-` for stdin; a `.zip` file's first entry), and
/// for files their length.
fn open_bytes(path: &str) -> io::Result<(Box<dyn Read>, Option<u64>)> {
    Ok(if path == "-" {
        (Box::new(io::stdin()), None)
    } else if path.ends_with(".zip") {
        let mut archive = zip::ZipArchive::new(File::open(path)?).map_err(io::Error::other)?;
        let mut entry = archive.by_index(0).map_err(io::Error::other)?;
        let mut buf = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut buf)?;
        let len = buf.len() as u64;
        (Box::new(io::Cursor::new(buf)), Some(len))
    } else {
        let f = File::open(path)?;
        let len = f.metadata()?.len();
        (Box::new(f), Some(len))
    })
}

/// The records of `reader` in `format`.
pub fn read(reader: Box<dyn Read>, format: Format, null_values: &[String]) -> io::Result<Records> {
    let lines = |r| BufReader::with_capacity(1 << 16, r);
    Ok(match format {
        Format::JsonLines => Box::new(json_lines(reader)),
        Format::Csv => Box::new(csv_rows(reader, null_values.into())?),
        Format::DeadLetter => Box::new(dead_letters(lines(reader), null_values.into())),
        Format::Avro => Box::new(avro_records(reader)?),
    })
}

/// The records of an Avro container file, each as its document. A record
/// that cannot be decoded is a bad record; the file cannot be read past it
/// (its block is damaged), which the reason says.
fn avro_records(
    reader: Box<dyn Read>,
) -> io::Result<impl Iterator<Item = Result<Record, BadRecord>>> {
    let file = apache_avro::Reader::new(BufReader::with_capacity(1 << 16, reader))
        .map_err(|e| io::Error::other(format!("not an Avro container file: {e}")))?;
    let schema = file.writer_schema().clone();
    let names = crate::avro::Names::of(&schema).map_err(io::Error::other)?;
    Ok(file.enumerate().map(move |(n, value)| {
        let line = n as u64 + 1;
        match value {
            Ok(v) => {
                let doc = crate::avro::to_json(&v, &schema, &names);
                let text = serde_json::to_vec(&doc).unwrap_or_default();
                Ok(Record {
                    hash: stable_hash(&text, 0),
                    bytes: text.len() as u64,
                    payload: Payload::Doc(doc),
                    line,
                })
            }
            Err(e) => Err(BadRecord {
                line,
                reason: format!(
                    "undecodable Avro record: {e} (the rest of the file cannot be read)"
                ),
                raw: Vec::new(),
                csv_header: None,
            }),
        }
    }))
}

fn json_lines(reader: impl Read) -> impl Iterator<Item = Result<Record, BadRecord>> {
    let mut lines = Lines::new(reader);
    std::iter::from_fn(move || {
        Some(match lines.next_line()? {
            Ok(l) => Ok(Record {
                hash: l.hash,
                payload: Payload::Json(l.text.to_vec()),
                line: l.number,
                bytes: l.bytes,
            }),
            Err(bad) => Err(bad),
        })
    })
}

/// One JSON line, borrowed from the reader's buffer ([`Lines`]).
#[derive(Clone, Copy, Debug)]
pub struct Line<'a> {
    /// The line without its end and surrounding white space.
    pub text: &'a [u8],
    /// [`stable_hash`] of `text`: the record's identity.
    pub hash: u64,
    /// 1-based line number.
    pub number: u64,
    /// Bytes the line took in the input, its end included (for progress).
    pub bytes: u64,
}

/// JSON lines read in place: each line is handed out as a slice of the
/// buffer it was read into, valid until the next call, and nothing is
/// copied or allocated per line.
///
/// - `BufRead::split` grows a vector per line (14 % of `cep replay`'s
///   instructions on short events); a copy of each line into a record of
///   its size was still an allocation, a copy and a free per event.
/// - It reads 128 KiB at a time into its own buffer, and finds the line
///   ends of each read with memchr's iterator.
pub struct Lines<R> {
    reader: R,
    /// Bytes read and not yet handed out are `buf[start..filled]`.
    buf: Vec<u8>,
    start: usize,
    filled: usize,
    /// The whole lines in `buf[start..filled]`, in order, from `next`.
    spans: Vec<Span>,
    next: usize,
    line: u64,
    eof: bool,
}

/// One whole line in `Lines`' buffer, found when it was read.
#[derive(Clone, Copy)]
struct Span {
    /// The line's text, trimmed, is `buf[from..to]`.
    from: usize,
    to: usize,
    /// Where its `\n` is.
    end: usize,
    /// [`stable_hash`] of the text.
    hash: u64,
}

/// What `Lines` reads at a time (and its buffer's size, unless a line is
/// longer).
const READ_SIZE: usize = 1 << 17;

impl<R: Read> Lines<R> {
    pub fn new(reader: R) -> Lines<R> {
        Lines {
            reader,
            buf: vec![0; READ_SIZE],
            start: 0,
            filled: 0,
            spans: Vec::new(),
            next: 0,
            line: 0,
            eof: false,
        }
    }

    /// The next non-blank line (blank ones are counted in the line numbers
    /// and skipped); `None` at the end of the input. A read error ends the
    /// input, reported once with the bytes of the line it cut.
    pub fn next_line(&mut self) -> Option<Result<Line<'_>, BadRecord>> {
        loop {
            let span = if let Some(&span) = self.spans.get(self.next) {
                self.next += 1;
                span
            } else if self.eof {
                // The last line, without an end.
                if self.start == self.filled {
                    return None;
                }
                let (from, to) = trimmed(&self.buf, self.start, self.filled);
                let hash = stable_hash(&self.buf[from..to], 0);
                let end = self.filled - 1;
                Span {
                    from,
                    to,
                    end,
                    hash,
                }
            } else {
                if let Err(e) = self.fill() {
                    self.eof = true;
                    self.line += 1;
                    let raw = self.buf[self.start..self.filled].to_vec();
                    self.start = self.filled;
                    return Some(Err(BadRecord {
                        line: self.line,
                        reason: format!("read error: {e}"),
                        raw,
                        csv_header: None,
                    }));
                }
                continue;
            };
            let size = (span.end + 1).min(self.filled) - self.start;
            self.start += size;
            self.line += 1;
            if span.from < span.to {
                return Some(Ok(Line {
                    text: &self.buf[span.from..span.to],
                    hash: span.hash,
                    number: self.line,
                    bytes: size as u64,
                }));
            }
        }
    }

    /// Reads more, after the start of a line that crosses the end of the
    /// buffer (moved to the front; the buffer doubles for a line longer
    /// than it), and finds the line ends in what was read.
    fn fill(&mut self) -> io::Result<()> {
        self.buf.copy_within(self.start..self.filled, 0);
        self.filled -= self.start;
        self.start = 0;
        if self.filled == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = loop {
            match self.reader.read(&mut self.buf[self.filled..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        let searched = self.filled;
        self.filled += n;
        self.eof = n == 0;
        self.next = 0;
        let ends = memchr::memchr_iter(b'\n', &self.buf[searched..self.filled]);
        line_spans(
            &self.buf,
            self.start,
            ends.map(|i| searched + i),
            &mut self.spans,
        );
        Ok(())
    }
}

/// The lines of `buf` that end at `ends`, the first starting at `from`,
/// into `spans`: each trimmed, and hashed four lines side by side
/// ([`crate::event::stable_hash4`]: one line's hash is a chain of
/// multiplies the processor waits on, 6 % of `cep replay`'s time).
fn line_spans(
    buf: &[u8],
    mut from: usize,
    ends: impl Iterator<Item = usize>,
    spans: &mut Vec<Span>,
) {
    spans.clear();
    for end in ends {
        let (a, b) = trimmed(buf, from, end);
        spans.push(Span {
            from: a,
            to: b,
            end,
            hash: 0,
        });
        from = end + 1;
    }
    let mut fours = spans.chunks_exact_mut(4);
    for four in &mut fours {
        let texts = [0, 1, 2, 3].map(|i| &buf[four[i].from..four[i].to]);
        for (span, hash) in four.iter_mut().zip(crate::event::stable_hash4(texts)) {
            span.hash = hash;
        }
    }
    for span in fours.into_remainder() {
        span.hash = stable_hash(&buf[span.from..span.to], 0);
    }
}

/// `buf[from..to]` without white space at either end, as a range of `buf`.
fn trimmed(buf: &[u8], from: usize, to: usize) -> (usize, usize) {
    let line = &buf[from..to];
    let start = from + (line.len() - line.trim_ascii_start().len());
    (start, start + line.trim_ascii().len())
}

fn csv_rows(
    reader: impl Read + 'static,
    nulls: Arc<[String]>,
) -> io::Result<impl Iterator<Item = Result<Record, BadRecord>>> {
    let mut source = rows::CsvSource::new(reader)?;
    // One record read into again and again: each row's cells are copied
    // out of it.
    let mut row = csv::ByteRecord::new();
    Ok(std::iter::from_fn(move || {
        let line = source.next_into(&mut row)?;
        Some(line.map(|line| {
            let csv = CsvRow {
                header: source.header.clone(),
                row: Cells::new(row.iter()),
                nulls: nulls.clone(),
            };
            csv_record(csv, line)
        }))
    }))
}

/// A CSV row as a record.
fn csv_record(csv: CsvRow, line: u64) -> Record {
    Record {
        hash: csv.hash(),
        bytes: rows::row_size(&csv.row),
        payload: Payload::Csv(csv),
        line,
    }
}

/// Entries of a dead-letter file, each read again as the record it holds
/// (a JSON line, or a CSV row with its header), with the same identity as
/// the original. An entry that is itself unreadable is a [`BadRecord`].
fn dead_letters(
    reader: impl BufRead,
    nulls: Arc<[String]>,
) -> impl Iterator<Item = Result<Record, BadRecord>> {
    json_lines(reader).map(move |r| {
        let r = r?;
        let Payload::Json(text) = &r.payload else {
            unreachable!("JSON lines are text")
        };
        let bad = |reason: String| BadRecord {
            line: r.line,
            reason,
            raw: text.clone(),
            csv_header: None,
        };
        let entry = DeadLetter::from_line(text).map_err(bad)?;
        let bytes = entry.bytes().map_err(bad)?;
        let Some(header) = entry.csv_header else {
            let mut text = bytes;
            let trimmed = text.trim_ascii();
            if trimmed.len() != text.len() {
                text = trimmed.to_vec();
            }
            return Ok(Record {
                hash: stable_hash(&text, 0),
                payload: Payload::Json(text),
                line: r.line,
                bytes: r.bytes,
            });
        };
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(&bytes[..]);
        let mut row = csv::ByteRecord::new();
        match rdr.read_byte_record(&mut row) {
            Ok(true) if row.len() == header.len() => {}
            Ok(_) => {
                return Err(bad(format!(
                    "the row does not have the {} fields of its header",
                    header.len()
                )))
            }
            Err(e) => return Err(bad(format!("invalid CSV: {e}"))),
        }
        let csv = CsvRow {
            header: header.into(),
            row: Cells::new(row.iter()),
            nulls: nulls.clone(),
        };
        let mut rec = csv_record(csv, r.line);
        rec.bytes = r.bytes;
        Ok(rec)
    })
}

/// Every file under `path` whose name ends with `suffix` (or `path` itself
/// when it is a file), sorted.
pub fn files_ending(path: &std::path::Path, suffix: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if path.is_file() {
        out.push(path.to_path_buf());
    } else if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_ending(&p, suffix));
            } else if p.to_string_lossy().ends_with(suffix) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A reader that hands out at most `chunk` bytes a call, so that lines
    /// cross the ends of reads.
    struct Chunked<'a> {
        bytes: &'a [u8],
        chunk: usize,
    }

    impl Read for Chunked<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.chunk.min(out.len()).min(self.bytes.len());
            out[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Ok(n)
        }
    }

    /// (line number, text, bytes taken) of every line, read by `Lines`.
    fn read_all(bytes: &[u8], chunk: usize) -> Vec<(u64, Vec<u8>, u64, u64)> {
        let mut lines = Lines::new(Chunked { bytes, chunk });
        let mut got = Vec::new();
        while let Some(l) = lines.next_line() {
            let l = l.unwrap();
            got.push((l.number, l.text.to_vec(), l.bytes, l.hash));
        }
        got
    }

    /// The same, by splitting the whole text.
    fn split_all(bytes: &[u8]) -> Vec<(u64, Vec<u8>, u64, u64)> {
        let mut want = Vec::new();
        let pieces: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
        for (i, piece) in pieces.iter().enumerate() {
            let last = i + 1 == pieces.len();
            let text = piece.trim_ascii();
            if !text.is_empty() {
                let taken = piece.len() as u64 + u64::from(!last);
                want.push((i as u64 + 1, text.to_vec(), taken, stable_hash(text, 0)));
            }
        }
        want
    }

    proptest! {
        #[test]
        fn lines_are_those_of_the_whole_text_whatever_the_reads(
            lines in prop::collection::vec(prop_oneof![
                Just(String::new()),
                Just(" \r".to_string()),
                "[a-z{}\":, ]{1,40}\r?",
            ], 0..30),
            end in any::<bool>(),
            chunk in prop_oneof![1usize..50, 50usize..2000],
        ) {
            let mut text = lines.join("\n");
            if end {
                text.push('\n');
            }
            prop_assert_eq!(read_all(text.as_bytes(), chunk), split_all(text.as_bytes()));
        }
    }

    proptest! {
        /// A dead letter's row, written through a small buffer, is what
        /// csv's writer gives with its own, however long its cells, and
        /// reads back as the same cells.
        #[test]
        fn rows_are_written_whole_whatever_their_length(
            cells in prop::collection::vec(prop_oneof![
                prop::collection::vec(any::<u8>(), 0..20),
                prop::collection::vec(prop_oneof![Just(b'x'), Just(b','), Just(b'"'), Just(b'\n')], 200..1200),
            ], 1..6),
        ) {
            let ours = rows::row_bytes(cells.iter().map(Vec::as_slice));
            let mut w = csv::WriterBuilder::new()
                .terminator(csv::Terminator::Any(b'\n'))
                .from_writer(Vec::new());
            w.write_record(&cells).unwrap();
            let mut theirs = w.into_inner().unwrap();
            theirs.pop();
            prop_assert_eq!(&ours, &theirs);
            let mut back = csv::ReaderBuilder::new().has_headers(false).from_reader(&ours[..]);
            let read: Vec<Vec<u8>> = back.byte_records().next().unwrap().unwrap().iter().map(<[u8]>::to_vec).collect();
            prop_assert_eq!(read, cells);
        }
    }

    #[test]
    fn a_row_of_one_empty_cell_is_written_so_that_it_reads_back() {
        assert_eq!(rows::row_bytes([&b""[..]]), b"\"\"");
    }

    #[test]
    fn a_line_longer_than_the_buffer_is_read_whole() {
        let long = "x".repeat(3 * READ_SIZE + 17);
        let text = format!("a\n{long}\nb");
        assert_eq!(read_all(text.as_bytes(), 5000), split_all(text.as_bytes()));
        assert_eq!(read_all(text.as_bytes(), 5000)[1].1.len(), long.len());
    }

    #[test]
    fn a_read_error_ends_the_input_once_with_the_bytes_of_the_cut_line() {
        struct Failing(bool);
        impl Read for Failing {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                if std::mem::replace(&mut self.0, true) {
                    return Err(io::Error::other("disk gone"));
                }
                out[..8].copy_from_slice(b"{}\n{\"a\":");
                Ok(8)
            }
        }
        let mut lines = Lines::new(Failing(false));
        assert_eq!(lines.next_line().unwrap().unwrap().text, b"{}");
        let bad = lines.next_line().unwrap().unwrap_err();
        assert_eq!((bad.line, &bad.raw[..]), (2, &b"{\"a\":"[..]));
        assert!(bad.reason.contains("disk gone"), "{}", bad.reason);
        assert!(lines.next_line().is_none());
    }
}
