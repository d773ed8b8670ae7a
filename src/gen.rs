//! A seeded card-transaction generator, for tests, benchmarks and demos.
//!
//! [`CardGen`] describes a stream; [`CardGen::iter`] produces it lazily and
//! [`CardGen::generate`] collects it. Every event is a JSON document shaped
//! like a card authorisation:
//!
//! ```json
//! {"card": {"id": "c000042"}, "ts": 1700000000123, "amount": 12.34,
//!  "merchant": "m017", "country": "US"}
//! ```
//!
//! - **Deterministic.** The only source of randomness is [`SplitMix64`]
//!   seeded with [`CardGen::seed`]: the same settings give the same events,
//!   byte for byte, on every platform and in every release. No dependency
//!   beyond `serde_json`.
//! - **Ordered.** Event times (`ts`, epoch milliseconds) strictly increase, so
//!   every event has its own time and event-time order is the stream order.
//!   Gaps are exponential around [`CardGen::mean_gap_ms`] (at least 1 ms).
//! - **Shaped amounts.** Each background event draws its amount from one of
//!   four bands: *small* (under 10) with [`CardGen::p_small`], *large* (over
//!   500) with [`CardGen::p_large`], *mid* (over 100, at most 500) with
//!   [`CardGen::p_mid`], otherwise *normal* (10 to 100 inclusive). With
//!   [`CardGen::p_boundary`] the amount is instead exactly 10, 100 or 500,
//!   which patterns written with strict comparisons must not count. Amounts
//!   are whole cents.
//! - **Countries.** Each card has a home country (from
//!   [`CardGen::countries`]); a transaction happens abroad with
//!   [`CardGen::p_abroad`]. Merchants are drawn uniformly.
//! - **Planted fraud.** With [`CardGen::plant_rate`] per background event, a
//!   short sequence of one of the [`Fraud`] shapes listed in
//!   [`CardGen::plant`] is scheduled for a random card, starting shortly
//!   after. Its events are interleaved with the background in time order,
//!   so patterns have something to find even in sparse streams. Planted
//!   sequences sit well inside the windows of the example fraud patterns
//!   (`patterns/fraud/`), but other traffic of the same card may still
//!   interleave with them, exactly as in real data.
//!
//! [`shuffle_within`] turns an ordered stream into an arrival order that is
//! out of order by a bounded amount: it is what a consumer with an allowed
//! lateness of at least `max_delay_ms` must cope with, and no event of it is
//! late for such a consumer. [`write_json_lines`] writes events one per line.
//!
//! ```
//! use cep::gen::{CardGen, Fraud};
//! let events = CardGen {
//!     events: 1000,
//!     cards: 20,
//!     seed: 7,
//!     plant: vec![Fraud::SmallThenLarge],
//!     plant_rate: 0.01,
//!     ..CardGen::default()
//! }
//! .generate();
//! assert_eq!(events.len(), 1000);
//! let shuffled = cep::gen::shuffle_within(events, 5_000, 1);
//! assert_eq!(shuffled.len(), 1000);
//! ```

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Write};

use serde_json::{json, Value};

/// SplitMix64: a tiny, fast, well-mixed 64-bit generator (Steele, Lea and
/// Flood, 2014). Not cryptographic; fully determined by its seed.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`), by widening multiplication (bias below
    /// 2^-64 per draw, irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        assert!(lo <= hi, "empty range {lo}..={hi}");
        lo + self.below((hi - lo) as u64 + 1) as i64
    }

    /// Uniform in `[0, 1)`, 53 bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Exponentially distributed with the given mean.
    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
}

/// Shapes of planted fraud, one per example pattern in `patterns/fraud/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fraud {
    /// A charge under 10, then one over 500 5 s to 4 min later.
    SmallThenLarge,
    /// 3 to 5 charges over 100 within 8 minutes.
    Burst,
    /// A charge at home, then one abroad 1 to 45 minutes later.
    TwoCountries,
    /// 5 or 6 charges, 2 to 9 s apart, each larger than the one before.
    RisingAmounts,
}

impl Fraud {
    pub const ALL: [Fraud; 4] = [
        Fraud::SmallThenLarge,
        Fraud::Burst,
        Fraud::TwoCountries,
        Fraud::RisingAmounts,
    ];
}

/// Settings of a generated card-transaction stream. Build with struct
/// update syntax over [`CardGen::default`] or start from [`CardGen::new`].
#[derive(Clone, Debug)]
pub struct CardGen {
    /// Number of events (planted ones included).
    pub events: usize,
    /// Number of distinct cards, `c000000` upwards.
    pub cards: usize,
    pub seed: u64,
    /// Mean gap between consecutive events of the whole stream (ms).
    pub mean_gap_ms: f64,
    /// Time of the first event (epoch ms).
    pub start_ms: i64,
    /// Probability of an amount under 10.
    pub p_small: f64,
    /// Probability of an amount over 500.
    pub p_large: f64,
    /// Probability of an amount over 100 and at most 500.
    pub p_mid: f64,
    /// Probability of an amount of exactly 10, 100 or 500.
    pub p_boundary: f64,
    /// Probability that a transaction is not in the card's home country.
    pub p_abroad: f64,
    /// Country codes; a card's home is one of them.
    pub countries: Vec<String>,
    /// Merchant ids.
    pub merchants: Vec<String>,
    /// Fraud shapes to plant (empty: none).
    pub plant: Vec<Fraud>,
    /// Probability, per background event, of starting a planted sequence.
    pub plant_rate: f64,
}

impl Default for CardGen {
    fn default() -> Self {
        CardGen {
            events: 10_000,
            cards: 1_000,
            seed: 1,
            mean_gap_ms: 1_000.0,
            start_ms: 1_700_000_000_000,
            p_small: 0.03,
            p_large: 0.02,
            p_mid: 0.15,
            p_boundary: 0.01,
            p_abroad: 0.03,
            countries: ["US", "CA", "GB", "FR", "DE", "MX", "JP", "BR"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            merchants: (0..50).map(|n| format!("m{n:03}")).collect(),
            plant: Vec::new(),
            plant_rate: 0.0,
        }
    }
}

/// The id of card number `n`: `c000042`.
pub fn card_id(n: usize) -> String {
    format!("c{n:06}")
}

/// The event time (`ts`) of a generated event, `i64::MIN` if it has none.
pub fn ts_of(event: &Value) -> i64 {
    event.get("ts").and_then(Value::as_i64).unwrap_or(i64::MIN)
}

impl CardGen {
    /// `events` events over `cards` cards, other settings default.
    pub fn new(events: usize, cards: usize, seed: u64) -> CardGen {
        CardGen {
            events,
            cards,
            seed,
            ..CardGen::default()
        }
    }

    /// The stream, lazily.
    pub fn iter(&self) -> Transactions {
        assert!(self.cards > 0, "CardGen needs at least one card");
        assert!(!self.countries.is_empty(), "CardGen needs a country");
        assert!(!self.merchants.is_empty(), "CardGen needs a merchant");
        Transactions {
            cfg: self.clone(),
            rng: SplitMix64::new(self.seed),
            emitted: 0,
            clock: self.start_ms - 1,
            next_background: self.start_ms,
            pending: BinaryHeap::new(),
            seq: 0,
        }
    }

    /// The whole stream.
    pub fn generate(&self) -> Vec<Value> {
        self.iter().collect()
    }

    /// Home country of card `n` (a fixed function of the seed and `n`).
    pub fn home_country(&self, card: usize) -> &str {
        let mut r = SplitMix64::new(self.seed ^ (card as u64).wrapping_mul(0xa076_1d64_78bd_642f));
        &self.countries[r.below(self.countries.len() as u64) as usize]
    }
}

/// A transaction not yet turned into JSON.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Txn {
    card: usize,
    cents: i64,
    merchant: usize,
    country: usize,
}

/// The iterator behind [`CardGen::iter`].
pub struct Transactions {
    cfg: CardGen,
    rng: SplitMix64,
    emitted: usize,
    /// Time of the last emitted event.
    clock: i64,
    /// Planned time of the next background event.
    next_background: i64,
    /// Planted events: (planned time, sequence number, transaction).
    pending: BinaryHeap<Reverse<(i64, u64, Txn)>>,
    seq: u64,
}

impl Transactions {
    fn gap(&mut self) -> i64 {
        (self.rng.exponential(self.cfg.mean_gap_ms).round() as i64).max(1)
    }

    fn home(&self, card: usize) -> usize {
        let home = self.cfg.home_country(card);
        self.cfg.countries.iter().position(|c| c == home).unwrap()
    }

    fn abroad(&mut self, card: usize) -> usize {
        let n = self.cfg.countries.len();
        let home = self.home(card);
        if n == 1 {
            return home;
        }
        (home + 1 + self.rng.below(n as u64 - 1) as usize) % n
    }

    fn merchant(&mut self) -> usize {
        self.rng.below(self.cfg.merchants.len() as u64) as usize
    }

    /// Cents of a background amount.
    fn cents(&mut self) -> i64 {
        let c = &self.cfg;
        let (p_boundary, p_small, p_large, p_mid) = (c.p_boundary, c.p_small, c.p_large, c.p_mid);
        if self.rng.chance(p_boundary) {
            return [1_000, 10_000, 50_000][self.rng.below(3) as usize];
        }
        let u = self.rng.unit();
        if u < p_small {
            self.rng.range(1, 999) // 0.01 ..= 9.99
        } else if u < p_small + p_large {
            self.rng.range(50_001, 300_000) // 500.01 ..= 3000.00
        } else if u < p_small + p_large + p_mid {
            self.rng.range(10_001, 50_000) // 100.01 ..= 500.00
        } else {
            self.rng.range(1_000, 10_000) // 10.00 ..= 100.00
        }
    }

    fn background(&mut self) -> Txn {
        let card = self.rng.below(self.cfg.cards as u64) as usize;
        let cents = self.cents();
        let country = if self.rng.chance(self.cfg.p_abroad) {
            self.abroad(card)
        } else {
            self.home(card)
        };
        let merchant = self.merchant();
        Txn {
            card,
            cents,
            merchant,
            country,
        }
    }

    fn schedule(&mut self, at: i64, txn: Txn) {
        self.seq += 1;
        self.pending.push(Reverse((at, self.seq, txn)));
    }

    /// Schedules one planted sequence starting at `t0`.
    fn plant(&mut self, t0: i64) {
        let kind = self.cfg.plant[self.rng.below(self.cfg.plant.len() as u64) as usize];
        let card = self.rng.below(self.cfg.cards as u64) as usize;
        let home = self.home(card);
        match kind {
            Fraud::SmallThenLarge => {
                let small = self.rng.range(1, 999);
                let large = self.rng.range(50_001, 250_000);
                let dt = self.rng.range(5_000, 240_000);
                self.schedule_for(t0, card, small, home);
                self.schedule_for(t0 + dt, card, large, home);
            }
            Fraud::Burst => {
                let n = self.rng.range(3, 5);
                let mut at = t0;
                for _ in 0..n {
                    let cents = self.rng.range(10_001, 150_000);
                    self.schedule_for(at, card, cents, home);
                    at += self.rng.range(1_000, 120_000);
                }
            }
            Fraud::TwoCountries => {
                let a = self.rng.range(1_000, 30_000);
                let b = self.rng.range(1_000, 30_000);
                let abroad = self.abroad(card);
                let dt = self.rng.range(60_000, 2_700_000);
                self.schedule_for(t0, card, a, home);
                self.schedule_for(t0 + dt, card, b, abroad);
            }
            Fraud::RisingAmounts => {
                let n = self.rng.range(5, 6);
                let mut cents = self.rng.range(100, 5_000);
                let mut at = t0;
                for _ in 0..n {
                    self.schedule_for(at, card, cents, home);
                    cents += self.rng.range(100, 10_000);
                    at += self.rng.range(2_000, 9_000);
                }
            }
        }
    }

    fn schedule_for(&mut self, at: i64, card: usize, cents: i64, country: usize) {
        let merchant = self.merchant();
        self.schedule(
            at,
            Txn {
                card,
                cents,
                merchant,
                country,
            },
        );
    }

    fn to_json(&self, ts: i64, t: &Txn) -> Value {
        json!({
            "card": {"id": card_id(t.card)},
            "ts": ts,
            "amount": t.cents as f64 / 100.0,
            "merchant": self.cfg.merchants[t.merchant],
            "country": self.cfg.countries[t.country],
        })
    }
}

impl Iterator for Transactions {
    type Item = Value;

    fn next(&mut self) -> Option<Value> {
        if self.emitted >= self.cfg.events {
            return None;
        }
        self.emitted += 1;
        let planted_first = self
            .pending
            .peek()
            .is_some_and(|Reverse((at, _, _))| *at <= self.next_background);
        let (planned, txn) = if planted_first {
            let Reverse((at, _, txn)) = self.pending.pop().unwrap();
            (at, txn)
        } else {
            let at = self.next_background;
            let txn = self.background();
            if !self.cfg.plant.is_empty() && self.rng.chance(self.cfg.plant_rate) {
                let t0 = at + self.gap();
                self.plant(t0);
            }
            let gap = self.gap();
            self.next_background = at + gap;
            (at, txn)
        };
        // Strictly increasing times: a collision moves the event 1 ms on.
        let ts = planned.max(self.clock + 1);
        self.clock = ts;
        if self.next_background <= ts {
            self.next_background = ts + 1;
        }
        Some(self.to_json(ts, &txn))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.cfg.events - self.emitted;
        (n, Some(n))
    }
}

impl ExactSizeIterator for Transactions {}

/// Writes events as JSON lines.
pub fn write_json_lines<'a, W: Write>(
    out: W,
    events: impl IntoIterator<Item = &'a Value>,
) -> io::Result<()> {
    let mut out = io::BufWriter::new(out);
    for e in events {
        serde_json::to_writer(&mut out, e)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// A bounded out-of-order arrival order of `events` (by their `ts`, see
/// [`shuffle_within_by`]).
pub fn shuffle_within(events: Vec<Value>, max_delay_ms: i64, seed: u64) -> Vec<Value> {
    shuffle_within_by(events, ts_of, max_delay_ms, seed)
}

/// Reorders `items` as if each were delayed in transit by a random amount
/// in `[0, max_delay_ms)` after its event time `time(item)`: items are
/// sorted by `time + delay` (ties keep their input order).
///
/// For in-order input this guarantees, for every item, that its time is
/// greater than the largest time of the items before it minus
/// `max_delay_ms`: none is late for a consumer whose allowed lateness is at
/// least `max_delay_ms`, and such a consumer restores the input order
/// exactly when event times are distinct (items with equal times may be
/// swapped). `max_delay_ms <= 1` leaves the order unchanged.
pub fn shuffle_within_by<T>(
    items: Vec<T>,
    time: impl Fn(&T) -> i64,
    max_delay_ms: i64,
    seed: u64,
) -> Vec<T> {
    if max_delay_ms <= 1 {
        return items;
    }
    let mut rng = SplitMix64::new(seed ^ 0x5348_5546_464c_4521);
    let mut keyed: Vec<(i64, usize, T)> = items
        .into_iter()
        .enumerate()
        .map(|(n, it)| {
            let delay = rng.below(max_delay_ms as u64) as i64;
            (time(&it).saturating_add(delay), n, it)
        })
        .collect();
    keyed.sort_by_key(|(arrival, n, _)| (*arrival, *n));
    keyed.into_iter().map(|(_, _, it)| it).collect()
}

#[cfg(test)]
mod tests;
