//! What a pattern did with one key's events, for `cep why`: which run an
//! event started or advanced, which condition turned it down and with what
//! values, which run its window ended, a negation killed, the skip strategy
//! pruned or strict contiguity broke.
//!
//! Runs are named by the position (among the key's events, from 0) of the
//! event that started them. Notes are kept only for the one key asked
//! about ([`crate::engine::Engine::trace`]); other keys pay one comparison
//! of an `Option` per event.

use serde::Serialize;

use crate::event::Key;

/// One thing the pattern did.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "note", rename_all = "snake_case")]
pub enum Note {
    /// An event of the key reached the matcher (in event-time order).
    Event { pos: u64, time: i64 },
    /// The event started run `run`, bound to `var`.
    Started { run: u64, var: String },
    /// No run started at this event: why the first step turned it down.
    NotStarted { why: Vec<String> },
    /// Run `run` took the event as `var`.
    Advanced { run: u64, var: String },
    /// Run `run` waits for `var`, whose condition turned the event down.
    Rejected { run: u64, var: String, why: String },
    /// The event matched `not var`: run `run` stops waiting where it was.
    Negated { run: u64, var: String },
    /// Run `run` waited with strict contiguity (`next`) and the event did
    /// not continue it.
    StrictBroken { run: u64 },
    /// Run `run` has nothing left to wait for.
    Ended { run: u64 },
    /// Run `run` matched: an alert.
    Matched { run: u64 },
    /// The skip strategy dropped run `run` after the match of run `after`.
    Pruned { run: u64, after: u64 },
    /// Run `run` was dropped as it was made: run `by`, older, is in the
    /// same state and will match first (its match would drop `run`).
    Dominated { run: u64, by: u64 },
    /// Run `run`'s window (or max gap) closed `by_ms` before the time that
    /// ended it (`None`: the end of input ended it); `timeout_alert` when
    /// the pattern raises one.
    Expired {
        run: u64,
        by_ms: Option<i64>,
        timeout_alert: bool,
    },
    /// An event of the key came behind the watermark: not matched at all
    /// (noted by the caller, from [`crate::engine::Output::late`]).
    Late { time: i64, watermark: i64 },
}

/// The key traced and what happened to it so far.
#[derive(Clone, Debug)]
pub struct Trace {
    pub key: Key,
    pub notes: Vec<Note>,
}

impl Note {
    /// One line for a terminal.
    pub fn line(&self) -> String {
        match self {
            Note::Event { pos, time } => {
                format!("event #{pos} at {}", crate::engine::alert::rfc3339(*time))
            }
            Note::Started { run, var } => format!("  run {run} started: {var}"),
            Note::NotStarted { why } => format!("  no run started: {}", why.join("; ")),
            Note::Advanced { run, var } => format!("  run {run} advanced: {var}"),
            Note::Rejected { run, var, why } => {
                format!("  run {run} waits for {var}, not this event: {why}")
            }
            Note::Negated { run, var } => {
                format!("  run {run}: the event matches `not {var}`, which closes that way")
            }
            Note::StrictBroken { run } => {
                format!("  run {run}: strict contiguity (`next`) broken")
            }
            Note::Ended { run } => format!("  run {run} ended: nothing left to wait for"),
            Note::Matched { run } => format!("  run {run} MATCHED: alert"),
            Note::Pruned { run, after } => {
                format!("  run {run} dropped by the skip strategy after run {after}'s match")
            }
            Note::Dominated { run, by } => format!(
                "  run {run} dropped: run {by} is in the same state and matches first, \
                 and the skip strategy would drop run {run} at that match"
            ),
            Note::Late { time, watermark } => format!(
                "late event at {}: behind the watermark {} by {}, never matched (allow more lateness)",
                crate::engine::alert::rfc3339(*time),
                crate::engine::alert::rfc3339(*watermark),
                crate::dsl::print::duration(watermark - time)
            ),
            Note::Expired {
                run,
                by_ms,
                timeout_alert,
            } => {
                let when = match by_ms {
                    Some(ms) => format!(
                        "its window closed {} ago",
                        crate::dsl::print::duration(*ms)
                    ),
                    None => "the end of input closes its window".into(),
                };
                let alert = if *timeout_alert {
                    " (timeout alert)"
                } else {
                    ""
                };
                format!("  run {run} expired: {when}{alert}")
            }
        }
    }
}
