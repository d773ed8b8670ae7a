//! An approximate quantile sketch with a relative error bound (the
//! DDSketch idea: logarithmic bins).
//!
//! A positive number `x` falls in bin `ceil(log_γ x)` with
//! `γ = (1 + α) / (1 - α)`, α = 1 %; the bin's estimate `2γ^k / (γ + 1)` is
//! within 1 % of every number in it. Negative numbers mirror that, zeros
//! are counted apart. Each sketch keeps at most [`MAX_BINS`] bins per sign:
//! beyond, the bins nearest zero merge, so the error bound then holds for
//! the larger magnitudes (the tail fraud rules ask about) and the smallest
//! ones read larger. Bins are sorted vectors: a bucket of a key's history
//! holds few distinct magnitudes.

use serde::{Deserialize, Serialize};

/// Relative accuracy of an estimate.
pub const ALPHA: f64 = 0.01;
/// Bins per sign.
pub const MAX_BINS: usize = 128;

fn gamma() -> f64 {
    (1.0 + ALPHA) / (1.0 - ALPHA)
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sketch {
    zeros: u64,
    /// (bin, count), bins ascending.
    pos: Vec<(i32, u64)>,
    /// Bins of the magnitudes of negative numbers, ascending.
    neg: Vec<(i32, u64)>,
}

impl Sketch {
    pub fn add(&mut self, x: f64) {
        if x == 0.0 || !x.is_finite() {
            self.zeros += u64::from(x == 0.0);
            return;
        }
        let bin = (x.abs().ln() / gamma().ln()).ceil() as i32;
        let store = if x > 0.0 {
            &mut self.pos
        } else {
            &mut self.neg
        };
        insert(store, bin, 1);
        if store.len() > MAX_BINS {
            // The two bins nearest zero become one.
            let (_, c) = store.remove(0);
            store[0].1 += c;
        }
    }

    /// Adds `other`'s counts (uncapped: a merge is read, not kept).
    pub fn merge(&mut self, other: &Sketch) {
        self.zeros += other.zeros;
        for &(b, c) in &other.pos {
            insert(&mut self.pos, b, c);
        }
        for &(b, c) in &other.neg {
            insert(&mut self.neg, b, c);
        }
    }

    pub fn count(&self) -> u64 {
        let sum = |s: &[(i32, u64)]| s.iter().map(|(_, c)| c).sum::<u64>();
        self.zeros + sum(&self.pos) + sum(&self.neg)
    }

    /// The `q`-quantile (0 to 1) by nearest rank: the value at rank
    /// `ceil(q * n)` (at least 1) in ascending order.
    pub fn quantile(&self, q: f64) -> f64 {
        let n = self.count();
        if n == 0 {
            return f64::NAN;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
        let estimate = |bin: i32| 2.0 * gamma().powi(bin) / (gamma() + 1.0);
        let mut seen = 0;
        // Ascending: the largest negative magnitudes first.
        for &(b, c) in self.neg.iter().rev() {
            seen += c;
            if seen >= rank {
                return -estimate(b);
            }
        }
        seen += self.zeros;
        if seen >= rank {
            return 0.0;
        }
        for &(b, c) in &self.pos {
            seen += c;
            if seen >= rank {
                return estimate(b);
            }
        }
        self.pos.last().map_or(0.0, |&(b, _)| estimate(b))
    }
}

fn insert(store: &mut Vec<(i32, u64)>, bin: i32, count: u64) {
    match store.binary_search_by_key(&bin, |(b, _)| *b) {
        Ok(i) => store[i].1 += count,
        Err(i) => store.insert(i, (bin, count)),
    }
}
