//! Reading ahead: a CSV input's rows read (a zip entry inflated), parsed
//! and hashed on a thread of their own while the caller matches the rows
//! before.
//!
//! `cep replay` of the flight year spent about a fifth of its time reading:
//! inflating `flights.csv.zip`, splitting rows and hashing them, one row
//! after another with matching. On a machine with a second core that work
//! now overlaps matching. The reader thread hands rows over in blocks of
//! 256, a few blocks ahead at most, so memory stays bounded whatever the
//! input's size.
//!
//! A block is one allocation for every row's cells, and its rows keep
//! their cells in it ([`Cells`]), shared by reference count; the block is
//! freed once, on the caller's thread, with its last row. Handing over
//! records made on the reader thread, a `csv::ByteRecord` each, was slower
//! than not reading ahead at all (the year in file order, 1.20 s wall
//! before, 1.20-1.63 s after): the matching thread freed every row's
//! allocations, and glibc's malloc locks the arena a block came from to
//! take it back, against the reader allocating in it.
//!
//! Rows arrive in input order, each exactly once, and bad rows as bad
//! records, as [`super::open`] gives them (both read with
//! [`rows::CsvSource`]). A panic on the reader thread is raised again in
//! the caller when it reaches the missing rows, so a failure never looks
//! like the end of the input.

use std::fs::File;
use std::io::{self, Read};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use csv::ByteRecord;

use super::cells::{Block, Cells};
use super::{open_bytes, rows, BadRecord, CsvRow, Format, Payload, Record, Records};

/// Opens `path` (`-` for stdin; a `.zip` file's first entry) as
/// [`super::open`] does; a CSV file's rows are read ahead on a thread of
/// their own ([`RowsAhead`]), stdin's as they come. The reader thread
/// types the cells of the columns named in `typed` (those the patterns
/// read, [`crate::engine::Engine::csv_columns_read`]; see
/// [`Cells::cell_type`]). Returns the records and, for files, the total
/// byte length (for progress). An input that cannot be opened is an error
/// here, not a record.
pub fn open_ahead(
    path: &str,
    format: Format,
    null_values: &[String],
    typed: &[String],
) -> io::Result<(Records, Option<u64>)> {
    // Not stdin: a pipe may bring rows as they happen, and a block waits
    // for 256 of them.
    if format == Format::Csv && path != "-" {
        let (rows, len) = RowsAhead::open(path, null_values.into(), typed.into())?;
        return Ok((Box::new(rows), len));
    }
    super::open(path, format, null_values)
}

/// Rows a block carries.
const BLOCK_ROWS: usize = 256;

/// Blocks parsed but not yet taken, at most (besides the one being filled).
const BLOCKS_AHEAD: usize = 8;

/// CSV rows parsed on the reader thread, handed over together: one
/// allocation for every row's cells, where a record each was freed across
/// threads (see the module's notes).
#[derive(Default)]
struct RowBlock {
    cells: Block,
    rows: Vec<BlockRow>,
}

enum BlockRow {
    /// A row: its cells end at `cells.ends[..cells]`, after those of the
    /// row before.
    Row {
        cells: usize,
        line: u64,
        hash: u64,
    },
    Bad(BadRecord),
}

impl RowBlock {
    fn with_capacity(text: usize, cells: usize) -> RowBlock {
        RowBlock {
            cells: Block {
                text: Vec::with_capacity(text),
                ends: Vec::with_capacity(cells),
                types: Vec::with_capacity(cells),
            },
            rows: Vec::with_capacity(BLOCK_ROWS),
        }
    }

    fn push(&mut self, row: &ByteRecord, line: u64, typing: &Typing) {
        self.cells
            .push_typed(row.iter(), &typing.columns, &typing.nulls);
        self.rows.push(BlockRow::Row {
            cells: self.cells.ends.len(),
            line,
            hash: rows::row_hash(row.as_slice().len(), row.iter()),
        });
    }
}

/// The rows of a CSV input, parsed and hashed on a thread of their own
/// (with the bytes read and inflated there too). Each row's record holds
/// its cells in the block they came in.
pub struct RowsAhead {
    header: Arc<[String]>,
    nulls: Arc<[String]>,
    blocks: Receiver<RowBlock>,
    /// The block being taken: its cells, where the next row's start, and
    /// its rows not yet taken.
    cells: Arc<Block>,
    cell: usize,
    rows: std::vec::IntoIter<BlockRow>,
    reader: Option<JoinHandle<()>>,
}

type Opened = io::Result<(Option<u64>, Arc<[String]>)>;

impl RowsAhead {
    fn open(
        path: &str,
        nulls: Arc<[String]>,
        typed: Arc<[String]>,
    ) -> io::Result<(RowsAhead, Option<u64>)> {
        let (opened_tx, opened) = sync_channel(1);
        let (block_tx, blocks) = sync_channel(BLOCKS_AHEAD);
        let path = path.to_string();
        let nulls_read = nulls.clone();
        let reader = std::thread::Builder::new()
            .name("cep-read".into())
            .spawn(move || {
                open_on_thread(&path, opened_tx, |reader, len, opened| {
                    parse_all(reader, len, (&typed, nulls_read), opened, block_tx)
                })
            })?;
        let (len, header) = match opened.recv() {
            Ok(result) => result?,
            Err(_) => {
                rethrow(reader);
                return Err(io::Error::other("the input's reader stopped"));
            }
        };
        let rows = RowsAhead {
            header,
            nulls,
            blocks,
            cells: Arc::default(),
            cell: 0,
            rows: Vec::new().into_iter(),
            reader: Some(reader),
        };
        Ok((rows, len))
    }

    /// The row whose cells end at `ends[cell..cells]`, as a record.
    fn record(&mut self, cells: usize, line: u64, hash: u64) -> Record {
        let start = self.cell.checked_sub(1).map_or(0, |c| self.cells.ends[c]);
        let row = Cells::in_block(&self.cells, start, self.cell..cells);
        self.cell = cells;
        let csv = CsvRow {
            header: self.header.clone(),
            row,
            nulls: self.nulls.clone(),
        };
        Record {
            hash,
            bytes: rows::row_size(&csv.row),
            payload: Payload::Csv(csv),
            line,
        }
    }
}

/// Which cells the reader thread types, and how.
struct Typing {
    /// By column: whether its cells are typed.
    columns: Vec<bool>,
    nulls: Arc<[String]>,
}

/// The reader thread's part: parses the header (and says how that went),
/// then every row into blocks, each sent when full, the cells of the
/// columns named in `typed` typed with the null markers `nulls`.
fn parse_all(
    reader: &mut dyn Read,
    len: Option<u64>,
    (typed, nulls): (&[String], Arc<[String]>),
    opened: SyncSender<Opened>,
    blocks: SyncSender<RowBlock>,
) {
    let mut source = match rows::CsvSource::new(reader) {
        Ok(s) => s,
        Err(e) => return drop(opened.send(Err(e))),
    };
    if opened.send(Ok((len, source.header.clone()))).is_err() {
        return;
    }
    let typing = Typing {
        columns: source.header.iter().map(|h| typed.contains(h)).collect(),
        nulls,
    };
    let mut row = ByteRecord::new();
    let mut block = RowBlock::default();
    while let Some(read) = source.next_into(&mut row) {
        match read {
            Ok(line) => block.push(&row, line, &typing),
            Err(bad) => block.rows.push(BlockRow::Bad(bad)),
        }
        if block.rows.len() == BLOCK_ROWS {
            let next = RowBlock::with_capacity(block.cells.text.len(), block.cells.ends.len());
            // A closed channel: the caller stopped reading.
            if blocks.send(std::mem::replace(&mut block, next)).is_err() {
                return;
            }
        }
    }
    if !block.rows.is_empty() {
        let _ = blocks.send(block);
    }
}

impl Iterator for RowsAhead {
    type Item = Result<Record, BadRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.rows.next() {
                Some(BlockRow::Row { cells, line, hash }) => {
                    return Some(Ok(self.record(cells, line, hash)))
                }
                Some(BlockRow::Bad(bad)) => return Some(Err(bad)),
                None => {}
            }
            match self.blocks.recv() {
                Ok(block) => {
                    self.cells = Arc::new(block.cells);
                    self.cell = 0;
                    self.rows = block.rows.into_iter();
                }
                // Every block was sent: the thread has ended, or panicked.
                Err(_) => {
                    if let Some(reader) = self.reader.take() {
                        rethrow(reader);
                    }
                    return None;
                }
            }
        }
    }
}

/// The reader thread: opens the input and hands it to `use_it` with its
/// length, or says why it could not.
fn open_on_thread(
    path: &str,
    opened: SyncSender<Opened>,
    use_it: impl FnOnce(&mut dyn Read, Option<u64>, SyncSender<Opened>),
) {
    if path.ends_with(".zip") {
        // Inflated as it is read: the entry borrows its archive, which
        // lives here.
        let archive =
            File::open(path).and_then(|f| zip::ZipArchive::new(f).map_err(io::Error::other));
        let mut archive = match archive {
            Ok(a) => a,
            Err(e) => return drop(opened.send(Err(e))),
        };
        match archive.by_index(0) {
            Ok(mut entry) => {
                let len = entry.size();
                use_it(&mut entry, Some(len), opened)
            }
            Err(e) => drop(opened.send(Err(io::Error::other(e)))),
        };
    } else {
        match open_bytes(path) {
            Ok((mut reader, len)) => use_it(&mut reader, len, opened),
            Err(e) => drop(opened.send(Err(e))),
        }
    }
}

/// Raises the reader thread's panic again here, if it panicked.
fn rethrow(reader: JoinHandle<()>) {
    if let Err(panic) = reader.join() {
        std::panic::resume_unwind(panic);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::input::{open, BadRecord, Payload, Record};

    type Item = Result<Record, BadRecord>;

    /// What a test compares of a record: its line, hash and cells (or the
    /// reason it could not be read).
    fn seen(records: impl Iterator<Item = Item>) -> Vec<(u64, u64, Vec<Vec<u8>>)> {
        records
            .map(|r| match r {
                Ok(Record {
                    payload: Payload::Csv(row),
                    hash,
                    line,
                    ..
                }) => (line, hash, row.row.iter().map(<[u8]>::to_vec).collect()),
                Ok(other) => panic!("not a CSV row: {:?}", other.payload),
                Err(bad) => (bad.line, 0, vec![bad.reason.into_bytes(), bad.raw]),
            })
            .collect()
    }

    /// A CSV text of `rows` rows, one of them a row of the wrong width.
    fn csv_text(rows: usize) -> String {
        let mut text = String::from("id,name,amount\n");
        for n in 0..rows {
            if n == rows / 2 {
                text.push_str("bad,row\n");
            } else {
                text.push_str(&format!("{n},\"name, {n}\",{}\n", n * 3));
            }
        }
        text
    }

    fn temp_path(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("cep-ahead-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn reads_what_open_reads_in_the_same_order_across_blocks() {
        let path = temp_path("rows.csv");
        std::fs::write(&path, csv_text(BLOCK_ROWS * 3 + 7)).unwrap();
        let path = path.to_str().unwrap();
        let nulls = ["NA".to_string()];
        let (direct, len) = open(path, Format::Csv, &nulls).unwrap();
        let (ahead, ahead_len) = open_ahead(path, Format::Csv, &nulls, &[]).unwrap();
        assert_eq!(ahead_len, len);
        let (want, got) = (seen(direct), seen(ahead));
        assert_eq!(got.len(), BLOCK_ROWS * 3 + 7);
        assert_eq!(got, want);
        assert!(
            got[BLOCK_ROWS * 3 / 2 + 3].2[0].starts_with(b"invalid CSV"),
            "the bad row is kept"
        );
    }

    /// Rows of every kind of cell: numbers, decimals, text, null markers,
    /// empty cells, a cell that is not UTF-8 and one that parses as
    /// neither.
    const KINDS: &[u8] = b"n,amount,note,code\n\
        1,10,a,x\n\
        2,NA,,-7\n\
        3,2.5,\"x, y\",1e3\n\
        4,-0,NA,+12\n\
        5,1.5e,\xff\xfe,12345678901234567890\n";

    #[test]
    fn the_columns_asked_for_are_typed_as_cell_type_types_them() {
        let path = temp_path("kinds.csv");
        std::fs::write(&path, KINDS).unwrap();
        let nulls = ["NA".to_string()];
        let typed = ["amount".to_string(), "note".to_string(), "code".to_string()];
        let (rows, _) = open_ahead(path.to_str().unwrap(), Format::Csv, &nulls, &typed).unwrap();
        let mut n = 0;
        for r in rows {
            let Payload::Csv(row) = r.unwrap().payload else {
                panic!("not a CSV row")
            };
            assert_eq!(row.row.cell_type(0), None, "`n` is not asked for");
            for (i, cell) in row.row.iter().enumerate().skip(1) {
                let want = std::str::from_utf8(cell)
                    .ok()
                    .map(|t| crate::input::cell_type(t, &nulls));
                assert_eq!(row.row.cell_type(i), want, "row {n} cell {i}");
            }
            assert_eq!(row.row.cell_type(row.row.len()), None);
            n += 1;
        }
        assert_eq!(n, 5);
    }

    #[test]
    fn typed_rows_capture_what_rows_read_plainly_capture() {
        let path = temp_path("kinds-captured.csv");
        std::fs::write(&path, KINDS).unwrap();
        let path = path.to_str().unwrap();
        let nulls = ["NA".to_string()];
        let names = ["n", "amount", "note", "code"].map(String::from);
        let mut ex = crate::extract::Extractor::new();
        let slots: Vec<usize> = names
            .iter()
            .map(|n| ex.add(std::slice::from_ref(n)))
            .collect();
        let typed = ex.column_names();
        let (plain, _) = open(path, Format::Csv, &nulls).unwrap();
        let (ahead, _) = open_ahead(path, Format::Csv, &nulls, &typed).unwrap();
        let captured = |r: Item| {
            let Payload::Csv(row) = r.unwrap().payload else {
                panic!("not a CSV row")
            };
            let columns = ex.columns(&row.header);
            let mut caps = crate::extract::Captures::new();
            let fields = ex.extract_row(&columns, &row.row, &row.nulls, &mut caps);
            slots
                .iter()
                .map(|&s| format!("{:?}", fields.get(s)))
                .collect::<Vec<_>>()
        };
        let want: Vec<_> = plain.map(captured).collect();
        let got: Vec<_> = ahead.map(captured).collect();
        assert_eq!(got, want);
        assert_eq!(want[1][1], "None", "a null marker is absent");
        assert_eq!(want[2][3], "Some(Float(1000.0))");
        assert_eq!(want[4][2], "Some(Str(\"\u{fffd}\u{fffd}\"))");
    }

    #[test]
    fn inflates_a_zip_entry_as_it_reads() {
        let text = csv_text(BLOCK_ROWS + 1);
        let plain = temp_path("zipped.csv");
        std::fs::write(&plain, &text).unwrap();
        let zipped = temp_path("zipped.csv.zip");
        let mut w = zip::ZipWriter::new(std::fs::File::create(&zipped).unwrap());
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        w.start_file("zipped.csv", options).unwrap();
        w.write_all(text.as_bytes()).unwrap();
        w.finish().unwrap();
        let (want, _) = open(plain.to_str().unwrap(), Format::Csv, &[]).unwrap();
        let (got, len) = open_ahead(zipped.to_str().unwrap(), Format::Csv, &[], &[]).unwrap();
        assert_eq!(
            len,
            Some(text.len() as u64),
            "the entry's length, not the file's"
        );
        assert_eq!(seen(got), seen(want));
    }

    #[test]
    fn an_input_that_cannot_be_opened_is_an_error() {
        let missing = temp_path("missing.csv");
        let e = open_ahead(missing.to_str().unwrap(), Format::Csv, &[], &[])
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let not_zip = temp_path("not.csv.zip");
        std::fs::write(&not_zip, "id\n1\n").unwrap();
        assert!(open_ahead(not_zip.to_str().unwrap(), Format::Csv, &[], &[]).is_err());
    }

    #[test]
    fn a_caller_that_stops_taking_rows_lets_the_parser_end() {
        let path = temp_path("many-rows.csv");
        std::fs::write(&path, csv_text(BLOCK_ROWS * (BLOCKS_AHEAD + 4))).unwrap();
        let (mut rows, _) = RowsAhead::open(path.to_str().unwrap(), [].into(), [].into()).unwrap();
        assert!(rows.next().is_some_and(|r| r.is_ok()));
        let reader = rows.reader.take().unwrap();
        drop(rows);
        reader.join().unwrap();
    }
}
