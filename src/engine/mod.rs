//! The engine: a set of compiled patterns and all their run state.
//!
//! The third stage of the pipeline. For each pattern the engine decodes an
//! incoming JSON document into an [`Event`] (key, event time, slots), puts it
//! in the pattern's reorder buffer ([`crate::time`]), and feeds the events the
//! watermark releases, in event-time order, to the pattern's [`Matcher`].
//! Deadlines (windows, absences, timeouts) fire as the watermark passes them.
//!
//! Everything mutable lives in [`PatternState`], which is plain serde data:
//! [`Engine::snapshot`] and [`Engine::restore`] move the whole engine (runs,
//! buffers, watermarks, counters) across a restart, and a restored engine
//! emits exactly what an uninterrupted one would have.
//!
//! The engine does no I/O and knows no clock: the CLI, tests and benchmarks
//! drive it directly, and the service will drive it from Kafka.

pub mod alert;
mod captures;
mod decode;
mod history_slot;
mod huge_pages;
mod key_map;
pub mod matcher;
mod pattern_matcher;
mod record;
mod state;
mod timers;
pub mod trace;

pub use record::{LateEvent, Output, Record, Rejected};
pub use state::{Changes, Snapshot};

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::compiler::Automaton;
use crate::event::{DecodeError, Event};
use crate::extract::{Captures, Extractor, Field, Fields};
use crate::time::{Admit, ReorderBuffer};
use crate::value::Value;

pub use alert::{Alert, AlertKind};
use captures::{capture_slots, CaptureSlots, Columns, SlotCaptures};
pub use decode::{decode, decode_with, FieldRef};
use decode::{
    decode_captured, decode_parts, record_values, LastDecoded, SlotValues, TextCache, TimeText,
};
pub use matcher::{KeyChange, KeyRuns, Limits, MatchStats, Matcher};
use pattern_matcher::PatternMatcher;

/// How the engine treats time and bounds its state.
#[derive(Clone, Copy, Debug)]
pub struct EngineConfig {
    /// How far (ms) behind the newest event an event may arrive and still be
    /// matched in order. Later ones go to the late output.
    pub lateness_ms: i64,
    /// Cap on concurrent runs per key per pattern; the oldest runs are
    /// dropped (and counted) beyond it.
    pub max_runs_per_key: usize,
    /// Carry the matched events, by variable, in each alert.
    pub include_events: bool,
    /// The caller drives the watermark ([`Engine::advance_watermark`]) and
    /// `lateness_ms` is unused: the service merges per-partition watermarks.
    pub external_watermark: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            lateness_ms: 0,
            max_runs_per_key: 10_000,
            include_events: false,
            external_watermark: false,
        }
    }
}

/// The mutable state of one pattern.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PatternState {
    /// Events by value, not boxed: most arrive in order and only move into
    /// and out of the buffer's queue (a 112-byte copy each way); boxing
    /// cost an allocation and a free per event, 6 % of `cep replay`.
    buffer: ReorderBuffer<Event>,
    matcher: PatternMatcher,
    pub late: u64,
    pub rejected: u64,
    pub shadow_alerts: u64,
    /// An older version replaced in drain mode: it finishes the runs it
    /// has and starts none (see [`Engine::swap_patterns_with`]).
    #[serde(default)]
    pub draining: bool,
}

impl PatternState {
    /// Feeds the events the watermark has passed to the matcher, fires the
    /// deadlines up to `until`, and keeps a shadow pattern's alerts (those
    /// Offers the matcher every buffered event the watermark has passed.
    /// Inlined: this is the per-event path, and as a call it measured 20 %
    /// slower in `engine/small_then_large`.
    #[inline(always)]
    fn release_ready(&mut self, a: &Automaton, lim: Limits, out: &mut Output) {
        while let Some(ev) = self.buffer.pop_ready() {
            self.matcher.fetch_ahead(|n| self.buffer.ahead(n));
            self.matcher.on_event(a, ev, lim, &mut out.alerts);
        }
    }

    /// Feeds the events the watermark has passed to the matcher, fires the
    /// deadlines up to `until`, and keeps a shadow pattern's alerts (those
    /// after `mark`) out of the output, counting them.
    #[inline]
    fn release(&mut self, a: &Automaton, until: i64, lim: Limits, out: &mut Output, mark: usize) {
        self.release_ready(a, lim, out);
        self.matcher.advance(a, until, lim, &mut out.alerts);
        if a.shadow {
            self.shadow_alerts += (out.alerts.len() - mark) as u64;
            out.alerts.truncate(mark);
        }
    }
}

/// Counters of one pattern, for summaries and metrics.
#[derive(Clone, Debug, Serialize)]
pub struct PatternStats {
    pub pattern: String,
    pub version: u32,
    pub shadow: bool,
    pub matched: MatchStats,
    pub late: u64,
    pub rejected: u64,
    /// Alerts of a shadow pattern (counted, never emitted).
    pub shadow_alerts: u64,
    pub buffered: usize,
    /// An older version finishing its runs (drain mode).
    pub draining: bool,
    pub active_keys: usize,
    pub active_runs: usize,
    pub watermark: i64,
}

pub struct Engine {
    config: EngineConfig,
    patterns: Vec<(Automaton, PatternState)>,
    /// Every pattern's fields, for reading JSON text in one pass.
    extractor: Extractor,
    /// Where each pattern's fields land among the extractor's captures.
    fields: Vec<CaptureSlots>,
    scratch: Captures,
    /// The captured fields' values of the record at hand, by capture.
    values: Vec<Value>,
    /// Each capture's recent texts (see [`decode::TextCache`]).
    texts: Vec<TextCache>,
    /// The last event time read from text (see [`decode::TimeText`]),
    /// for patterns alike; boxed, so that taking it for a record moves a
    /// pointer (moving it whole cost the peer file's one pattern 1 %).
    time_text: Option<Box<TimeText>>,
    /// The captures some pattern keeps in an event slot.
    slot_captures: SlotCaptures,
    /// The columns of the last CSV header seen, as captures.
    csv_columns: Option<(Arc<[String]>, Columns)>,
    /// List changed keys for [`Engine::take_changes`].
    track_changes: bool,
    /// Whether some patterns decode a key, a time or slot values alike,
    /// which they then decode once a record (see [`CaptureSlots`]).
    alike: bool,
}

impl Engine {
    pub fn new(automata: Vec<Automaton>, config: EngineConfig) -> Engine {
        let patterns = automata
            .into_iter()
            .map(|a| {
                let buffer = if config.external_watermark {
                    ReorderBuffer::external()
                } else {
                    ReorderBuffer::new(config.lateness_ms)
                };
                let state = PatternState {
                    buffer,
                    matcher: PatternMatcher::new(&a),
                    late: 0,
                    rejected: 0,
                    shadow_alerts: 0,
                    draining: false,
                };
                (a, state)
            })
            .collect::<Vec<_>>();
        let mut extractor = Extractor::new();
        let fields = capture_slots(&patterns, &mut extractor);
        let slot_captures = SlotCaptures::new(&patterns, &fields);
        let alike = slot_captures.any_shared()
            || fields
                .iter()
                .any(|f| f.key_as.is_some() || f.time_as.is_some());
        Engine {
            alike,
            texts: vec![TextCache::default(); extractor.len()],
            time_text: Some(Box::default()),
            config,
            patterns,
            extractor,
            fields,
            scratch: Captures::new(),
            values: Vec::new(),
            slot_captures,
            csv_columns: None,
            track_changes: false,
        }
    }

    /// Lists the keys each event or deadline changes, so that
    /// [`Engine::take_changes`] can return them (off by default: a replay
    /// has no use for the list).
    pub fn track_changes(&mut self, on: bool) {
        self.track_changes = on;
        if !on {
            self.forget_changes();
        }
    }

    pub fn automata(&self) -> impl Iterator<Item = &Automaton> {
        self.patterns.iter().map(|(a, _)| a)
    }

    fn limits(&self) -> Limits {
        Limits {
            max_runs_per_key: self.config.max_runs_per_key,
            include_events: self.config.include_events,
            track_changes: self.track_changes,
            start_runs: true,
        }
    }

    /// Feeds a document of `stream` (`None`: to every pattern). `hash`
    /// identifies the input record (see [`crate::event::stable_hash`]).
    pub fn push(
        &mut self,
        stream: Option<&str>,
        doc: &Arc<serde_json::Value>,
        hash: u64,
        out: &mut Output,
    ) {
        for i in 0..self.patterns.len() {
            let a = &self.patterns[i].0;
            if stream.is_some_and(|s| s != a.stream) {
                continue;
            }
            let raw = self.config.include_events.then(|| doc.clone());
            let decoded = decode(a, doc, hash, raw);
            self.accept(
                i,
                decoded,
                &Record::default(),
                &mut || doc.as_ref().clone(),
                out,
            );
        }
    }

    /// Feeds one JSON object given as text, reading only the fields the
    /// patterns use (see [`crate::extract`]). Text that is not one JSON
    /// object is an error and changes nothing.
    pub fn push_json(
        &mut self,
        stream: Option<&str>,
        json: &[u8],
        hash: u64,
        out: &mut Output,
    ) -> Result<(), DecodeError> {
        let rec = Record {
            json,
            hash,
            ..Record::default()
        };
        self.push_text(stream, &rec, out).map(|_| ())
    }

    /// Feeds one input record of `stream` (see [`Record`]) and returns the
    /// largest event time any pattern decoded from it, for the caller's
    /// watermark. Text that is not one JSON object is an error and changes
    /// nothing.
    pub fn push_record(
        &mut self,
        stream: &str,
        rec: &Record,
        out: &mut Output,
    ) -> Result<Option<i64>, DecodeError> {
        self.push_text(Some(stream), rec, out)
    }

    fn push_text(
        &mut self,
        stream: Option<&str>,
        rec: &Record,
        out: &mut Output,
    ) -> Result<Option<i64>, DecodeError> {
        let json = rec.json;
        let mut caps = std::mem::take(&mut self.scratch);
        let fields = match self.extractor.extract(json, &mut caps) {
            Ok(fields) => fields,
            Err(e) => {
                self.scratch = caps;
                return Err(DecodeError(e));
            }
        };
        let newest = self.push_captured(stream, rec, fields, out, || {
            serde_json::from_slice(json).unwrap_or(serde_json::Value::Null)
        });
        self.scratch = caps;
        Ok(newest)
    }

    /// The CSV columns the patterns read: the cells worth typing as they
    /// are read (see [`crate::input::open_ahead`]).
    pub fn csv_columns_read(&self) -> Vec<String> {
        self.extractor.column_names()
    }

    /// Feeds one CSV row (see [`crate::input`]): only the cells the
    /// patterns read are looked at, once for all patterns; the row reads as
    /// an object keyed by its header.
    pub fn push_row(
        &mut self,
        stream: Option<&str>,
        row: &crate::input::CsvRow,
        hash: u64,
        out: &mut Output,
    ) {
        let columns = match &self.csv_columns {
            Some((header, columns)) if Arc::ptr_eq(header, &row.header) => columns,
            _ => {
                let columns = self.extractor.columns(&row.header);
                &self.csv_columns.insert((row.header.clone(), columns)).1
            }
        };
        let mut caps = std::mem::take(&mut self.scratch);
        let fields = self
            .extractor
            .extract_row(columns, &row.row, &row.nulls, &mut caps);
        let rec = Record {
            hash,
            ..Record::default()
        };
        self.push_captured(stream, &rec, fields, out, || row.to_doc());
        self.scratch = caps;
    }

    /// Decodes and feeds, for every pattern of `stream`, the fields
    /// captured from one record; `doc` builds the whole document, only if
    /// something needs it (alerts that carry events, a rejection's dead
    /// letter). Returns the largest event time decoded.
    fn push_captured(
        &mut self,
        stream: Option<&str>,
        rec: &Record,
        fields: Fields,
        out: &mut Output,
        doc: impl Fn() -> serde_json::Value,
    ) -> Option<i64> {
        // Compiled twice: an engine whose patterns share nothing decodes as
        // it did before they could. (One loop for both cost the peer file's
        // single pattern 6 % in an A/B of nine runs, though only 3 % more
        // instructions: the key and the event moved through more places.)
        if self.alike {
            self.push_captured_as::<true>(stream, rec, fields, out, doc)
        } else {
            self.push_captured_as::<false>(stream, rec, fields, out, doc)
        }
    }

    /// [`Engine::push_captured`]; `ALIKE`: some patterns decode a key, a
    /// time or slot values alike (see [`Engine::alike`]).
    #[inline(always)]
    fn push_captured_as<const ALIKE: bool>(
        &mut self,
        stream: Option<&str>,
        rec: &Record,
        fields: Fields,
        out: &mut Output,
        doc: impl Fn() -> serde_json::Value,
    ) -> Option<i64> {
        let mut built: Option<Arc<serde_json::Value>> = None;
        let whole = |built: &mut Option<Arc<serde_json::Value>>| {
            built.get_or_insert_with(|| Arc::new(doc())).clone()
        };
        let (captures, share) = self.slot_captures.of(stream);
        let record = (ALIKE && share).then(|| record_values(&fields, captures, &mut self.texts));
        // Without a shared record, each field's value is still decoded once
        // per record, whatever the number of patterns reading it: a text
        // becomes one shared string (the flight patterns read the same
        // cells; one allocation each per pattern was a fifth of matching
        // the year).
        let mut values = std::mem::take(&mut self.values);
        if record.is_none() {
            // Only the slot captures of the patterns the record goes to are
            // read, and each of them is overwritten here.
            values.resize(self.extractor.len(), Value::Missing);
            for &c in captures {
                // Texts repeat across records whatever the patterns, but
                // looking them up cost the peer file's one pattern 3 %
                // (it reads no text); only patterns alike use the cache.
                values[c] = match ALIKE {
                    true => self.texts[c].value(fields.get(c)),
                    false => fields.get(c).map_or(Value::Missing, Field::to_value),
                };
            }
        }
        let mut time_text = if ALIKE { self.time_text.take() } else { None };
        let mut last = LastDecoded::new(time_text.as_deref_mut());
        let mut newest = None;
        for i in 0..self.patterns.len() {
            let a = &self.patterns[i].0;
            if stream.is_some_and(|s| s != a.stream) {
                continue;
            }
            let at = &self.fields[i];
            let get = |f| match f {
                FieldRef::Key(n) => fields.get(at.key[n]),
                FieldRef::Time => fields.get(at.time),
                FieldRef::Slot(n) => fields.get(at.slots[n]),
            };
            let raw = self.config.include_events.then(|| whole(&mut built));
            let decoded = if ALIKE {
                let slot_values = match &record {
                    Some(r) => SlotValues::Record(r),
                    None => SlotValues::Scratch(&values),
                };
                decode_captured(a, at, get, rec, slot_values, &mut last, raw)
            } else {
                decode_parts(a, get, |n| values[at.slots[n]].clone(), rec, raw)
            };
            if let Ok(ev) = &decoded {
                newest = newest.max(Some(ev.time));
            }
            self.accept(
                i,
                decoded,
                rec,
                &mut || whole(&mut built).as_ref().clone(),
                out,
            );
        }
        self.values = values;
        if ALIKE {
            self.time_text = time_text;
        }
        newest
    }

    /// Raises the watermark of every pattern reading `stream` (engines built
    /// with [`EngineConfig::external_watermark`]): releases the buffered
    /// events it passes, in event-time order, and fires the deadlines it
    /// passes.
    pub fn advance_watermark(&mut self, stream: &str, watermark: i64, out: &mut Output) {
        let lim = self.limits();
        for (a, st) in &mut self.patterns {
            if a.stream != stream {
                continue;
            }
            let mark = out.alerts.len();
            st.buffer.advance_to(watermark);
            let until = st.buffer.watermark();
            let lim = Limits {
                start_runs: !st.draining,
                ..lim
            };
            st.release(a, until, lim, out, mark);
        }
    }

    /// Routes a decoded event: late, to the pattern, or rejected.
    #[inline]
    fn accept(
        &mut self,
        i: usize,
        decoded: Result<Event, DecodeError>,
        rec: &Record,
        doc: &mut dyn FnMut() -> serde_json::Value,
        out: &mut Output,
    ) {
        match decoded {
            Ok(ev) if ev.time < self.patterns[i].1.buffer.watermark().max(rec.late_before) => {
                // Late: hand over the whole document, not just key and time.
                let (a, st) = &mut self.patterns[i];
                st.late += 1;
                out.late.push(LateEvent {
                    pattern: a.name.clone(),
                    event_time: ev.time,
                    watermark: st.buffer.watermark(),
                    event: doc(),
                    key: ev.key.clone(),
                });
            }
            Ok(ev) => self.push_ordered(i, ev, rec.order, out),
            Err(e) => {
                let (a, st) = &mut self.patterns[i];
                st.rejected += 1;
                out.rejected.push(Rejected {
                    pattern: a.name.clone(),
                    reason: e.0,
                });
            }
        }
    }

    /// Feeds an event already decoded for pattern number `index`.
    #[inline]
    pub fn push_event(&mut self, index: usize, ev: Event, out: &mut Output) {
        self.push_ordered(index, ev, None, out)
    }

    /// Feeds events already decoded for pattern number `index`, in order,
    /// leaving `events` empty: what one [`Engine::push_event`] per event
    /// does, except that the key entries of the events a few places on are
    /// fetched ahead. At lateness 0 events never wait in the reorder
    /// buffer, whose queue is where the engine otherwise looks ahead; a
    /// batch gives the same view.
    pub fn push_events(&mut self, index: usize, events: &mut Vec<Event>, out: &mut Output) {
        let mut rest = events.drain(..);
        while let Some(ev) = rest.next() {
            let ahead = rest.as_slice();
            // `ahead` starts one place on from `ev`.
            self.patterns[index]
                .1
                .matcher
                .fetch_ahead(|n| ahead.get(n - 1));
            self.push_ordered(index, ev, None, out);
        }
    }

    #[inline]
    fn push_ordered(&mut self, index: usize, ev: Event, order: Option<u64>, out: &mut Output) {
        let lim = self.limits();
        let (a, st) = &mut self.patterns[index];
        let lim = Limits {
            start_runs: !st.draining,
            ..lim
        };
        let mark = out.alerts.len();
        match st.buffer.admit(ev.time) {
            Admit::Late => {
                st.late += 1;
                out.late.push(LateEvent {
                    pattern: a.name.clone(),
                    event_time: ev.time,
                    watermark: st.buffer.watermark(),
                    event: ev.raw.as_deref().cloned().unwrap_or_else(
                        || serde_json::json!({"key": ev.key.to_json(), "time": ev.time}),
                    ),
                    key: ev.key.clone(),
                });
                return;
            }
            // Before the buffer: most flight rows are nothing to the
            // patterns that look for cancellations or long delays. (The
            // flag tested here first: with the call alone, the peer file's
            // pattern, which never passes over, ran 4 % slower.)
            _ if a.unmatched_inert && st.matcher.passes_over(a, &ev) => {}
            Admit::Now => st.matcher.on_event(a, ev, lim, &mut out.alerts),
            Admit::Buffer => match order {
                Some(o) => st.buffer.insert_ordered(ev.time, o, ev),
                None => st.buffer.insert(ev.time, ev),
            },
        }
        st.release_ready(a, lim, out);
        st.matcher
            .advance(a, st.buffer.watermark(), lim, &mut out.alerts);
        if a.shadow {
            st.shadow_alerts += (out.alerts.len() - mark) as u64;
            out.alerts.truncate(mark);
        }
    }

    /// End of input: releases every buffered event and closes every window
    /// (the stream is over, so every absence is proven and every partial
    /// match has timed out).
    pub fn flush(&mut self, out: &mut Output) {
        self.finish(true, out);
    }

    /// End of a sample of a longer stream: releases every buffered event but
    /// closes only the windows that end by the newest event time seen.
    /// Runs whose window reaches past the data stay open (see
    /// [`PatternStats::active_runs`]): a backtest then raises no absence the
    /// data cannot prove.
    pub fn drain(&mut self, out: &mut Output) {
        self.finish(false, out);
    }

    fn finish(&mut self, close_all: bool, out: &mut Output) {
        let lim = self.limits();
        for (a, st) in &mut self.patterns {
            let mark = out.alerts.len();
            let newest = st.buffer.newest();
            st.buffer.flush();
            let until = if close_all { i64::MAX } else { newest };
            let lim = Limits {
                start_runs: !st.draining,
                ..lim
            };
            st.release(a, until, lim, out, mark);
        }
    }

    pub fn stats(&self) -> Vec<PatternStats> {
        self.patterns
            .iter()
            .map(|(a, st)| PatternStats {
                pattern: a.name.clone(),
                version: a.version,
                shadow: a.shadow,
                matched: st.matcher.stats().clone(),
                late: st.late,
                rejected: st.rejected,
                shadow_alerts: st.shadow_alerts,
                buffered: st.buffer.len(),
                draining: st.draining,
                active_keys: st.matcher.active_keys(),
                active_runs: st.matcher.active_runs(),
                watermark: st.buffer.watermark(),
            })
            .collect()
    }

    /// Keeps notes of what `pattern` does with the events of `key` (see
    /// [`trace`]); false when no pattern has that name.
    pub fn trace(&mut self, pattern: &str, key: &str) -> bool {
        let Some((_, st)) = self.patterns.iter_mut().find(|(a, _)| a.name == pattern) else {
            return false;
        };
        st.matcher.trace(crate::event::Key::new(key));
        true
    }

    /// The notes taken since the last call ([`Engine::trace`]).
    pub fn take_notes(&mut self) -> Vec<trace::Note> {
        self.patterns
            .iter_mut()
            .flat_map(|(_, st)| st.matcher.take_notes())
            .collect()
    }

    /// Whether an older version of some pattern is draining.
    pub fn draining(&self) -> bool {
        self.patterns.iter().any(|(_, st)| st.draining)
    }
}
