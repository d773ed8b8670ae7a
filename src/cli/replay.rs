//! `cep replay`: a file of records through the patterns, alerts on stdout,
//! late events and dead letters to their files, and a summary on stderr.

use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::compiler::load_patterns;
use crate::deadletter::{DeadLetter, Origin};
use crate::engine::{Engine, EngineConfig, Output};
use crate::input::{self, Format, Payload};

pub(super) struct ReplayArgs<'a> {
    pub(super) patterns: &'a Path,
    pub(super) input: &'a str,
    pub(super) format: Format,
    pub(super) stream: Option<&'a str>,
    pub(super) config: EngineConfig,
    pub(super) null: &'a [String],
    pub(super) late: Option<&'a Path>,
    pub(super) dead_letter: Option<&'a Path>,
    pub(super) keep_open: bool,
}

pub(super) fn replay(args: &ReplayArgs) -> Result<i32, String> {
    let automata = load_patterns(args.patterns)?;
    let mut engine = Engine::new(automata, args.config);
    let create = |p: &Path| {
        std::fs::File::create(p)
            .map(BufWriter::new)
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    let mut sides = SideOutputs {
        late: args.late.map(create).transpose()?,
        dead: args.dead_letter.map(create).transpose()?,
        counts: ReplayCounts::default(),
    };
    let stdout = io::stdout();
    let mut alerts_out = BufWriter::with_capacity(1 << 16, stdout.lock());

    let started = Instant::now();
    let mut out = Output::default();
    let io_err = |e: io::Error| format!("writing output: {e}");
    feed(args, &mut engine, &mut sides, &mut alerts_out, &mut out)?;
    if args.keep_open {
        engine.drain(&mut out);
    } else {
        engine.flush(&mut out);
    }
    sides.late(&mut out).map_err(io_err)?;
    write_alerts(&mut out, &mut alerts_out).map_err(io_err)?;
    alerts_out.flush().map_err(io_err)?;
    sides.flush().map_err(io_err)?;
    let ReplayCounts {
        events,
        bad,
        late,
        rejected,
        late_records,
        rejected_records,
        first_problems,
    } = sides.counts;
    let secs = started.elapsed().as_secs_f64();

    let mut err = io::stderr().lock();
    let _ = writeln!(
        err,
        "replayed {events} events in {secs:.2}s ({:.0} events/s); {bad} unreadable, \
         {rejected_records} undecodable ({rejected} pattern rejections), \
         {late_records} late ({late} pattern-level)",
        events as f64 / secs.max(1e-9)
    );
    for s in engine.stats() {
        let _ = writeln!(
            err,
            "  {:<28} v{} {:>7} matches {:>6} timeouts{}{}{}{}",
            s.pattern,
            s.version,
            s.matched.matches,
            s.matched.timeouts,
            if s.active_runs > 0 {
                format!("  ({} runs still open)", s.active_runs)
            } else {
                String::new()
            },
            if s.shadow {
                "  (shadow: not emitted)"
            } else {
                ""
            },
            if s.matched.runs_dropped > 0 {
                format!(
                    "  ({} runs dropped at the per-key cap)",
                    s.matched.runs_dropped
                )
            } else {
                String::new()
            },
            if s.matched.history_evictions > 0 {
                format!(
                    "  ({} values forgotten at the `seen in` cap)",
                    s.matched.history_evictions
                )
            } else {
                String::new()
            }
        );
    }
    for p in &first_problems {
        let _ = writeln!(err, "  problem: {p}");
    }
    if late > 0 && args.late.is_none() {
        let _ = writeln!(
            err,
            "  {late} late events were not matched; keep them with --late FILE or raise --lateness"
        );
    }
    if (bad > 0 || rejected > 0) && args.dead_letter.is_none() {
        let _ = writeln!(
            err,
            "  keep unreadable and undecodable records with --dead-letter FILE"
        );
    }
    Ok(0)
}

/// What became of a record in `replay`. (The dead letters are boxed: most
/// records are read, and the enum is moved for each.)
pub(super) enum Fate {
    Read,
    /// It could not be read (not JSON, not an object, a bad CSV row).
    Unreadable(Box<DeadLetter>),
    /// Read, but at least one pattern could not decode it (the reasons are
    /// in the dead letter and in the engine's output).
    Refused(Box<DeadLetter>),
}

/// Reads every record of the input into the engine, writing alerts and
/// side outputs as they come. JSON lines are read in place
/// ([`input::Lines`]): no copy or allocation per line.
fn feed(
    args: &ReplayArgs,
    engine: &mut Engine,
    sides: &mut SideOutputs,
    alerts: &mut impl Write,
    out: &mut Output,
) -> Result<(), String> {
    let opened = |e: io::Error| format!("{}: {e}", args.input);
    let mut after = |fate, out: &mut Output| -> Result<(), String> {
        let io_err = |e: io::Error| format!("writing output: {e}");
        sides.record(out, fate).map_err(io_err)?;
        // Most records make no alert and are not late: an empty drain was
        // 2 % of the instructions per event.
        if !out.late.is_empty() {
            sides.late(out).map_err(io_err)?;
        }
        if !out.alerts.is_empty() {
            write_alerts(out, alerts).map_err(io_err)?;
        }
        Ok(())
    };
    if args.format == Format::JsonLines {
        let (mut lines, len) = input::open_lines(args.input).map_err(opened)?;
        let bar = progress_bar(len);
        let mut n = 0u64;
        while let Some(line) = lines.next_line() {
            let fate = match line {
                Ok(l) => {
                    if n.is_multiple_of(4096) {
                        bar.inc(l.bytes * 4096);
                    }
                    n += 1;
                    push_line(engine, args.stream, args.input, l, out)
                }
                Err(b) => Fate::Unreadable(Box::new(b.dead_letter(args.input))),
            };
            after(fate, out)?;
        }
        bar.finish_and_clear();
        return Ok(());
    }
    // Read on a thread of their own: parsing (and unzipping) overlaps
    // matching.
    let typed = engine.csv_columns_read();
    let (records, len) =
        input::open_ahead(args.input, args.format, args.null, &typed).map_err(opened)?;
    let bar = progress_bar(len);
    for (n, rec) in records.enumerate() {
        let fate = match rec {
            Ok(r) => {
                if n % 4096 == 0 {
                    bar.inc(r.bytes * 4096);
                }
                push(engine, args.stream, args.input, r, out)
            }
            Err(b) => Fate::Unreadable(Box::new(b.dead_letter(args.input))),
        };
        after(fate, out)?;
    }
    bar.finish_and_clear();
    Ok(())
}

/// A progress bar over `len` bytes (hidden when the length is unknown).
fn progress_bar(len: Option<u64>) -> indicatif::ProgressBar {
    match len {
        Some(len) => indicatif::ProgressBar::new(len).with_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {per_sec} eta {eta}",
            )
            .unwrap(),
        ),
        None => indicatif::ProgressBar::hidden(),
    }
}

/// Pushes one JSON line into the engine; its bytes are copied only into a
/// dead letter.
pub(super) fn push_line(
    engine: &mut Engine,
    stream: Option<&str>,
    input: &str,
    l: input::Line,
    out: &mut Output,
) -> Fate {
    let letter = |reasons| Box::new(DeadLetter::new(origin(input, l.number), l.text, reasons));
    if let Err(e) = engine.push_json(stream, l.text, l.hash, out) {
        return Fate::Unreadable(letter(vec![e.0]));
    }
    match refusals(out) {
        None => Fate::Read,
        Some(reasons) => Fate::Refused(letter(reasons)),
    }
}

/// Where a record of `input` came from, for its dead letter.
fn origin(input: &str, line: u64) -> Origin {
    Origin::File {
        input: input.to_string(),
        line,
    }
}

/// Why patterns refused the record just pushed, if any did.
fn refusals(out: &Output) -> Option<Vec<String>> {
    (!out.rejected.is_empty()).then(|| {
        out.rejected
            .iter()
            .map(|x| format!("pattern {}: {}", x.pattern, x.reason))
            .collect()
    })
}

/// Pushes one record into the engine.
pub(super) fn push(
    engine: &mut Engine,
    stream: Option<&str>,
    input: &str,
    r: input::Record,
    out: &mut Output,
) -> Fate {
    let from = || origin(input, r.line);
    let letter = match r.payload {
        Payload::Json(text) => {
            let l = input::Line {
                text: &text,
                hash: r.hash,
                number: r.line,
                bytes: r.bytes,
            };
            return push_line(engine, stream, input, l, out);
        }
        Payload::Csv(row) => {
            engine.push_row(stream, &row, r.hash, out);
            Letter::Row(row)
        }
        Payload::Doc(doc) => {
            let doc = Arc::new(doc);
            engine.push(stream, &doc, r.hash, out);
            Letter::Doc(doc)
        }
    };
    let Some(reasons) = refusals(out) else {
        return Fate::Read;
    };
    Fate::Refused(Box::new(match letter {
        Letter::Doc(doc) => {
            let text = serde_json::to_vec(&*doc).unwrap_or_default();
            DeadLetter::new(from(), &text, reasons)
        }
        Letter::Row(row) => {
            let mut d = DeadLetter::new(from(), &row.to_bytes(), reasons);
            d.csv_header = Some(row.header.to_vec());
            d
        }
    }))
}

/// What a refused record's dead letter holds: its document as JSON (an
/// Avro record), or its CSV row (with the header, so that it can
/// be read again).
enum Letter {
    Doc(Arc<serde_json::Value>),
    Row(crate::input::CsvRow),
}

fn write_alerts(out: &mut Output, w: &mut impl Write) -> io::Result<()> {
    for a in out.alerts.drain(..) {
        serde_json::to_writer(&mut *w, &a)?;
        w.write_all(b"\n")?;
    }
    Ok(())
}

/// What `replay` counts besides alerts. `late` and `rejected` count
/// (record, pattern) pairs; the `_records` counts, records that at least one
/// pattern found late or undecodable.
#[derive(Default)]
struct ReplayCounts {
    events: u64,
    bad: u64,
    late: u64,
    rejected: u64,
    late_records: u64,
    rejected_records: u64,
    first_problems: Vec<String>,
}

/// The late-event and dead-letter files of a replay.
struct SideOutputs {
    late: Option<BufWriter<std::fs::File>>,
    dead: Option<BufWriter<std::fs::File>>,
    counts: ReplayCounts,
}

impl SideOutputs {
    /// Counts what became of one record and writes its dead letter, if it
    /// has one: one per record, whatever the number of patterns that
    /// refused it.
    fn record(&mut self, out: &mut Output, fate: Fate) -> io::Result<()> {
        let c = &mut self.counts;
        let letter = match fate {
            Fate::Read => {
                c.events += 1;
                None
            }
            Fate::Refused(d) => {
                c.events += 1;
                Some(d)
            }
            Fate::Unreadable(d) => {
                c.bad += 1;
                Some(d)
            }
        };
        c.late_records += u64::from(!out.late.is_empty());
        c.rejected_records += u64::from(!out.rejected.is_empty());
        c.rejected += out.rejected.len() as u64;
        out.rejected.clear();
        let Some(d) = letter else {
            return Ok(());
        };
        if c.first_problems.len() < 5 {
            if let crate::deadletter::Origin::File { line, .. } = d.origin {
                c.first_problems
                    .push(format!("line {line}: {}", d.reasons.join("; ")));
            }
        }
        if let Some(w) = self.dead.as_mut() {
            w.write_all(d.to_line().as_bytes())?;
            w.write_all(b"\n")?;
        }
        Ok(())
    }

    /// Writes the late events in `out`.
    fn late(&mut self, out: &mut Output) -> io::Result<()> {
        self.counts.late += out.late.len() as u64;
        for l in out.late.drain(..) {
            if let Some(w) = self.late.as_mut() {
                serde_json::to_writer(&mut *w, &l)?;
                w.write_all(b"\n")?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        for w in [&mut self.late, &mut self.dead].into_iter().flatten() {
            w.flush()?;
        }
        Ok(())
    }
}
