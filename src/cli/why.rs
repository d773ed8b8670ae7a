//! `cep why`: replays events through one pattern and prints, event by
//! event for one key, what the pattern did (see [`crate::engine::trace`]).

use std::io::{self, BufWriter, Write};
use std::path::Path;

use super::replay::push;
use crate::compiler::load_patterns;
use crate::engine::{Engine, Output};
use crate::input::{self, Format};

pub struct WhyArgs<'a> {
    pub file: &'a Path,
    pub pattern: Option<&'a str>,
    pub key: &'a str,
    pub input: &'a str,
    pub format: Format,
    pub lateness_ms: i64,
    pub null: &'a [String],
    pub json: bool,
}

/// `cep why`: replays `input` through one pattern, printing the notes the
/// engine keeps for one key (see [`crate::engine::trace`]).
pub fn why(args: &WhyArgs) -> Result<i32, String> {
    use crate::engine::trace::Note;
    let automata = load_patterns(args.file)?;
    let names: Vec<&str> = automata.iter().map(|a| a.name.as_str()).collect();
    let chosen = match args.pattern {
        Some(p) => automata.iter().find(|a| a.name == p),
        None if automata.len() == 1 => automata.first(),
        None => None,
    }
    .cloned()
    .ok_or_else(|| match args.pattern {
        Some(p) => format!(
            "no pattern `{p}` in {} (it has {names:?})",
            args.file.display()
        ),
        None => format!(
            "{} holds {names:?}: name one with --pattern",
            args.file.display()
        ),
    })?;
    let name = chosen.name.clone();
    let config = crate::engine::EngineConfig {
        lateness_ms: args.lateness_ms,
        ..Default::default()
    };
    let mut engine = Engine::new(vec![chosen], config);
    engine.trace(&name, args.key);
    let key = crate::event::Key::new(args.key);
    let (records, _) = input::open(args.input, args.format, args.null)
        .map_err(|e| format!("{}: {e}", args.input))?;
    let stdout = io::stdout();
    let mut w = BufWriter::new(stdout.lock());
    let io_err = |e: io::Error| format!("writing output: {e}");
    let mut out = Output::default();
    let mut counts = NoteCounts::default();
    for rec in records.flatten() {
        let _ = push(&mut engine, None, args.input, rec, &mut out);
        let mut notes: Vec<Note> = std::mem::take(&mut out.late)
            .into_iter()
            .filter(|l| l.key == key)
            .map(|l| Note::Late {
                time: l.event_time,
                watermark: l.watermark,
            })
            .collect();
        out = Output::default();
        notes.extend(engine.take_notes());
        write_notes(&mut w, &notes, args.json, &mut counts).map_err(io_err)?;
    }
    engine.flush(&mut out);
    let notes = engine.take_notes();
    if !notes.is_empty() && !args.json {
        writeln!(w, "end of input: every window closes").map_err(io_err)?;
    }
    write_notes(&mut w, &notes, args.json, &mut counts).map_err(io_err)?;
    if !args.json {
        let NoteCounts {
            events,
            late,
            matches,
        } = counts;
        writeln!(
            w,
            "{events} event(s) of key `{}` matched in order, {late} late, {matches} match(es) of `{name}`",
            args.key
        )
        .map_err(io_err)?;
    }
    w.flush().map_err(io_err)?;
    Ok(0)
}

#[derive(Default)]
struct NoteCounts {
    events: u64,
    late: u64,
    matches: u64,
}

fn write_notes(
    w: &mut impl Write,
    notes: &[crate::engine::trace::Note],
    json: bool,
    counts: &mut NoteCounts,
) -> io::Result<()> {
    use crate::engine::trace::Note;
    for n in notes {
        match n {
            Note::Event { .. } => counts.events += 1,
            Note::Late { .. } => counts.late += 1,
            Note::Matched { .. } => counts.matches += 1,
            _ => {}
        }
        if json {
            let line = serde_json::to_string(n).expect("a note serialises");
            writeln!(w, "{line}")?;
        } else {
            writeln!(w, "{}", n.line())?;
        }
    }
    Ok(())
}
