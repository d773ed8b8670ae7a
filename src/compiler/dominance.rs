//! Which partial matches are certain to be outlived by an older one.
//!
//! Every event that can start a pattern starts a run (see the reference,
//! "After a match: skip strategies"), so a greedy loop over a burst of n
//! events of one key holds n runs, each offered every event: the burst
//! costs n²/2 steps although, under `skip past last event`, only the oldest
//! run can ever be reported. This module finds when a younger run is
//! provably dead weight, so the matcher can drop it as it is made.
//!
//! A younger run is *dominated* by an older one of the same key when all of
//! these hold:
//!
//! 1. the skip strategy is `skip past last event`;
//! 2. no condition reads the run (a variable's fields or time, an
//!    aggregate over the run, its start or duration): both runs then take
//!    and refuse exactly the same events from here on;
//! 3. both are in the same state (node, live entries, freshness) and both
//!    took the current event;
//! 4. the node is *sure to match*: it can accept, nothing can take that
//!    away (no negation or strict step guards the accept), and every node a
//!    run can move on to is sure to match too.
//!
//! Then the older run emits a match no later than the younger one could
//! (it is processed first on every event and its window closes first, and
//! at the window's close a run that can accept does), and that match ends
//! at or after the event both took, so its skip floor discards the younger
//! run anyway. Dropping it early changes no alert.

use super::expr::{CExpr, MatchInfo};
use super::nfa::{Entry, Node};
use super::SkipPlan;

/// For each node: whether a run there is dominated by an older run in the
/// same state (all false when the pattern does not allow it).
pub fn dominated_nodes(skip: SkipPlan, conditions: &[Option<CExpr>], nodes: &[Node]) -> Vec<bool> {
    let allowed = skip == SkipPlan::PastLast && !conditions.iter().flatten().any(reads_the_run);
    if !allowed {
        return vec![false; nodes.len()];
    }
    let mut sure: Vec<bool> = nodes.iter().map(accept_cannot_be_lost).collect();
    // Not sure if a run can move on to a node that is not: iterate to the
    // greatest fixed point.
    loop {
        let mut changed = false;
        for (n, node) in nodes.iter().enumerate() {
            let leaves_sure = node.entries.iter().all(|e| match e {
                Entry::Consume { target, .. } => sure[*target as usize],
                Entry::Accept => true,
            });
            if sure[n] && !leaves_sure {
                sure[n] = false;
                changed = true;
            }
        }
        if !changed {
            return sure;
        }
    }
}

/// The node accepts, and neither a negation nor a strict step can remove
/// its accept entry.
fn accept_cannot_be_lost(node: &Node) -> bool {
    let Some(ai) = node.accept else {
        return false;
    };
    let bit = 1u64 << ai;
    node.strict_mask & bit == 0 && node.guards.iter().all(|g| g.mask & bit == 0)
}

/// Whether evaluating `e` depends on the run (anything but the current
/// event, the key and its history).
fn reads_the_run(e: &CExpr) -> bool {
    match e {
        CExpr::Const(_)
        | CExpr::Field(_)
        | CExpr::FieldCmpNum(..)
        | CExpr::FieldAbsent(..)
        | CExpr::Time(None)
        | CExpr::History(_)
        | CExpr::SincePrevious(_)
        | CExpr::Info(MatchInfo::Key) => false,
        CExpr::VarField(..) | CExpr::Time(Some(_)) | CExpr::Agg(..) | CExpr::Info(_) => true,
        CExpr::Not(x)
        | CExpr::Neg(x)
        | CExpr::Matches(x, _)
        | CExpr::Is(x, ..)
        | CExpr::Call(_, x) => reads_the_run(x),
        CExpr::Bin(_, l, r) => reads_the_run(l) || reads_the_run(r),
        CExpr::In(x, set, _) => reads_the_run(x) || set.iter().any(reads_the_run),
    }
}
