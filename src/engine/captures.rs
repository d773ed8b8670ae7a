//! Where the patterns' fields land among the captures of the engine's one
//! [`Extractor`], and what the patterns of a stream decode alike: the key
//! from the same fields, the time from the same field in the same format,
//! slot values a record can share (see [`mod@super::decode`]).

use crate::compiler::Automaton;
use crate::event::{SlotMap, INLINE_SLOTS};
use crate::extract::Extractor;

use super::PatternState;

/// The captures patterns keep in event slots: those of every pattern (a
/// record of no named stream goes to all), and those of each stream's
/// patterns, so that a record decodes only what the patterns it goes to
/// read. Each list says whether its patterns share one record's values
/// (see [`crate::event::RecordValues`]): when two or more of them keep
/// more slots than an event holds inline.
pub(super) struct SlotCaptures {
    all: (Vec<usize>, bool),
    by_stream: Vec<(String, (Vec<usize>, bool))>,
}

impl SlotCaptures {
    pub(super) fn new(
        patterns: &[(Automaton, PatternState)],
        fields: &[CaptureSlots],
    ) -> SlotCaptures {
        let of = |pick: &dyn Fn(&Automaton) -> bool| {
            let picked = || patterns.iter().zip(fields).filter(|((a, _), _)| pick(a));
            let mut captures: Vec<usize> = picked()
                .flat_map(|(_, f)| f.slots.iter().copied())
                .collect();
            captures.sort_unstable();
            captures.dedup();
            let wide = picked()
                .filter(|(_, f)| f.slots.len() > INLINE_SLOTS)
                .count();
            (captures, wide >= 2)
        };
        let mut streams: Vec<&str> = patterns.iter().map(|(a, _)| a.stream.as_str()).collect();
        streams.sort_unstable();
        streams.dedup();
        SlotCaptures {
            all: of(&|_| true),
            by_stream: streams
                .into_iter()
                .map(|s| (s.to_string(), of(&|a| a.stream == s)))
                .collect(),
        }
    }

    /// Whether the patterns of some stream share records' values.
    pub(super) fn any_shared(&self) -> bool {
        self.all.1 || self.by_stream.iter().any(|(_, (_, share))| *share)
    }

    /// The captures to decode for a record of `stream`, and whether its
    /// patterns share them.
    pub(super) fn of(&self, stream: Option<&str>) -> (&[usize], bool) {
        let (captures, share) = match stream {
            None => &self.all,
            Some(s) => match self.by_stream.iter().find(|(name, _)| name == s) {
                Some((_, of)) => of,
                None => return (&[], false),
            },
        };
        (captures, *share)
    }
}

/// For each of `n` patterns, the first pattern `same` says it is like, when
/// it is like any other.
fn alike(n: usize, same: impl Fn(usize, usize) -> bool) -> Vec<Option<usize>> {
    (0..n)
        .map(|i| {
            let first = (0..n).find(|&j| same(i, j)).unwrap_or(i);
            (0..n).any(|j| j != i && same(i, j)).then_some(first)
        })
        .collect()
}

/// The capture each column of a CSV header fills, if any.
pub(super) type Columns = Vec<Option<usize>>;

/// Capture numbers of one pattern's key paths, time and slots.
pub(super) struct CaptureSlots {
    pub(super) key: Vec<usize>,
    pub(super) time: usize,
    pub(super) slots: Vec<usize>,
    /// `slots` again, for events whose slots a record shares.
    pub(super) map: SlotMap,
    /// Which patterns decode the key alike (from the same captures), when
    /// another pattern does too: the same number for all of them (the
    /// first one's index when the engine was built; only compared, so a
    /// retired pattern leaves it valid). The same for the time, from the
    /// same capture with the same format (see [`super::decode::LastDecoded`]).
    pub(super) key_as: Option<usize>,
    pub(super) time_as: Option<usize>,
}

/// Registers every pattern's fields with `extractor` and says where each
/// pattern's key, time and slots land among its captures, and which
/// patterns decode a key or a time alike.
pub(super) fn capture_slots(
    patterns: &[(Automaton, PatternState)],
    extractor: &mut Extractor,
) -> Vec<CaptureSlots> {
    let mut fields: Vec<CaptureSlots> = patterns
        .iter()
        .map(|(a, _)| {
            let slots: Vec<usize> = a.fields.paths.iter().map(|p| extractor.add(p)).collect();
            CaptureSlots {
                key: a.key_paths.iter().map(|p| extractor.add(p)).collect(),
                time: extractor.add(&a.time.field.segments),
                map: slots.iter().map(|&c| c as u32).collect(),
                slots,
                key_as: None,
                time_as: None,
            }
        })
        .collect();
    let same_key = |i: usize, j: usize| fields[i].key == fields[j].key;
    let same_time = |i: usize, j: usize| {
        fields[i].time == fields[j].time && patterns[i].0.time.format == patterns[j].0.time.format
    };
    let key_as = alike(fields.len(), same_key);
    let time_as = alike(fields.len(), same_time);
    for (f, (k, t)) in fields.iter_mut().zip(key_as.into_iter().zip(time_as)) {
        (f.key_as, f.time_as) = (k, t);
    }
    fields
}
