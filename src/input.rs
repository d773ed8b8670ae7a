//! Reading input files: JSON lines or CSV, plain or zipped, or stdin.
//!
//! Every record becomes a JSON document plus a stable hash of its bytes (the
//! event's identity in alert ids). CSV rows become objects keyed by the
//! header row; numbers become numbers, and empty cells or `NA` are left out,
//! so `dep_delay is missing` finds a cancelled flight. JSON lines stay text
//! until the engine reads the fields it needs. A record that cannot be read
//! is returned as a [`BadRecord`] with its line and reason (as is a JSON line
//! the engine finds malformed): the caller sends it to the dead-letter
//! output, it is never skipped silently.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};

use crate::event::stable_hash;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    JsonLines,
    Csv,
}

impl Format {
    /// Guesses from the file name: `.csv` (also `.csv.zip`) is CSV.
    pub fn from_path(path: &str) -> Format {
        let p = path.trim_end_matches(".zip");
        if p.ends_with(".csv") {
            Format::Csv
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
    /// A document already built (a CSV row).
    Doc(serde_json::Value),
}

impl Payload {
    /// The record as a document (parsing JSON text).
    pub fn into_doc(self) -> Result<serde_json::Value, String> {
        match self {
            Payload::Doc(d) => Ok(d),
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

/// A record that could not be read.
#[derive(Debug, serde::Serialize)]
pub struct BadRecord {
    pub line: u64,
    pub reason: String,
    pub raw: String,
}

pub type Records = Box<dyn Iterator<Item = Result<Record, BadRecord>>>;

/// Opens `path` (`-` for stdin). Returns the records and, for files, the
/// total byte length (for progress).
pub fn open(
    path: &str,
    format: Format,
    null_values: &[String],
) -> io::Result<(Records, Option<u64>)> {
    let (reader, len): (Box<dyn Read>, Option<u64>) = if path == "-" {
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
    };
    let records: Records = match format {
        Format::JsonLines => Box::new(json_lines(BufReader::with_capacity(1 << 16, reader))),
        Format::Csv => Box::new(csv_rows(reader, null_values.to_vec())?),
    };
    Ok((records, len))
}

fn json_lines(reader: impl BufRead) -> impl Iterator<Item = Result<Record, BadRecord>> {
    reader.split(b'\n').enumerate().filter_map(|(n, line)| {
        let line_no = n as u64 + 1;
        let bytes = match line {
            Ok(b) => b,
            Err(e) => {
                return Some(Err(BadRecord {
                    line: line_no,
                    reason: format!("read error: {e}"),
                    raw: String::new(),
                }))
            }
        };
        let size = bytes.len() as u64 + 1;
        let mut text = bytes;
        let trimmed = text.trim_ascii();
        if trimmed.is_empty() {
            return None;
        }
        if trimmed.len() != text.len() {
            text = trimmed.to_vec();
        }
        Some(Ok(Record {
            hash: stable_hash(&text, 0),
            payload: Payload::Json(text),
            line: line_no,
            bytes: size,
        }))
    })
}

fn csv_rows(
    reader: impl Read + 'static,
    null_values: Vec<String>,
) -> io::Result<impl Iterator<Item = Result<Record, BadRecord>>> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(reader);
    let headers: Vec<String> = rdr
        .headers()
        .map_err(io::Error::other)?
        .iter()
        .map(str::to_string)
        .collect();
    Ok(rdr.into_byte_records().enumerate().map(move |(n, row)| {
        let line = n as u64 + 2;
        let row = row.map_err(|e| BadRecord {
            line,
            reason: format!("invalid CSV: {e}"),
            raw: String::new(),
        })?;
        let mut obj = serde_json::Map::with_capacity(headers.len());
        let mut hash_input = Vec::with_capacity(row.as_slice().len() + row.len());
        for (i, cell) in row.iter().enumerate() {
            hash_input.extend_from_slice(cell);
            hash_input.push(b',');
            let Some(name) = headers.get(i) else { continue };
            let text = String::from_utf8_lossy(cell);
            if text.is_empty() || null_values.iter().any(|n| *n == text) {
                continue;
            }
            obj.insert(name.clone(), cell_value(&text));
        }
        Ok(Record {
            payload: Payload::Doc(serde_json::Value::Object(obj)),
            bytes: hash_input.len() as u64,
            hash: stable_hash(&hash_input, 0),
            line,
        })
    }))
}

/// A CSV cell: integers and decimals as numbers, anything else as text.
fn cell_value(text: &str) -> serde_json::Value {
    if let Ok(i) = text.parse::<i64>() {
        return i.into();
    }
    if text.contains(['.', 'e', 'E'])
        && !text.contains(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
    {
        if let Some(n) = text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
        {
            return serde_json::Value::Number(n);
        }
    }
    serde_json::Value::String(text.to_string())
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
