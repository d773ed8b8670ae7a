//! Tests of the card generator.
use super::*;

fn small_gen(seed: u64) -> CardGen {
    CardGen {
        events: 3_000,
        cards: 30,
        seed,
        plant: Fraud::ALL.to_vec(),
        plant_rate: 0.02,
        ..CardGen::default()
    }
}

#[test]
fn splitmix_reference_values() {
    // First outputs for seed 1234567 from the reference implementation.
    let mut r = SplitMix64::new(1234567);
    assert_eq!(r.next_u64(), 6457827717110365317);
    assert_eq!(r.next_u64(), 3203168211198807973);
    assert_eq!(r.next_u64(), 9817491932198370423);
}

#[test]
fn rng_ranges() {
    let mut r = SplitMix64::new(9);
    for _ in 0..10_000 {
        assert!(r.below(7) < 7);
        let x = r.range(-3, 3);
        assert!((-3..=3).contains(&x));
        let u = r.unit();
        assert!((0.0..1.0).contains(&u));
    }
    let hits = (0..10_000).filter(|_| r.chance(0.25)).count();
    assert!((2_200..2_800).contains(&hits), "{hits}");
}

#[test]
fn deterministic_and_seed_dependent() {
    let a = small_gen(5).generate();
    let b = small_gen(5).generate();
    let c = small_gen(6).generate();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn shape_count_and_strictly_increasing_times() {
    let g = small_gen(1);
    let events = g.generate();
    assert_eq!(events.len(), g.events);
    assert_eq!(ts_of(&events[0]), g.start_ms);
    for w in events.windows(2) {
        assert!(ts_of(&w[0]) < ts_of(&w[1]));
    }
    for e in &events {
        let id = e["card"]["id"].as_str().unwrap();
        assert_eq!(id.len(), 7);
        let n: usize = id[1..].parse().unwrap();
        assert!(n < g.cards);
        let amount = e["amount"].as_f64().unwrap();
        assert!(amount > 0.0 && amount <= 3000.0);
        assert!((amount * 100.0 - (amount * 100.0).round()).abs() < 1e-6);
        assert!(g
            .merchants
            .iter()
            .any(|m| m == e["merchant"].as_str().unwrap()));
        assert!(g
            .countries
            .iter()
            .any(|c| c == e["country"].as_str().unwrap()));
    }
}

#[test]
fn amount_bands_follow_the_probabilities() {
    let g = CardGen {
        events: 20_000,
        cards: 100,
        p_small: 0.1,
        p_large: 0.05,
        p_mid: 0.2,
        p_boundary: 0.0,
        ..CardGen::default()
    };
    let events = g.generate();
    let n = events.len() as f64;
    let frac = |f: &dyn Fn(f64) -> bool| {
        events
            .iter()
            .filter(|e| f(e["amount"].as_f64().unwrap()))
            .count() as f64
            / n
    };
    assert!((frac(&|a| a < 10.0) - 0.1).abs() < 0.01);
    assert!((frac(&|a| a > 500.0) - 0.05).abs() < 0.01);
    assert!((frac(&|a| a > 100.0 && a <= 500.0) - 0.2).abs() < 0.015);
}

#[test]
fn boundary_amounts_appear() {
    let g = CardGen {
        events: 5_000,
        p_boundary: 0.05,
        ..CardGen::default()
    };
    let events = g.generate();
    for b in [10.0, 100.0, 500.0] {
        assert!(events.iter().any(|e| e["amount"].as_f64() == Some(b)));
    }
}

#[test]
fn mean_gap_is_respected() {
    let g = CardGen {
        events: 20_000,
        mean_gap_ms: 250.0,
        ..CardGen::default()
    };
    let events = g.generate();
    let span = ts_of(events.last().unwrap()) - ts_of(&events[0]);
    let mean = span as f64 / (events.len() - 1) as f64;
    assert!((mean - 250.0).abs() < 15.0, "{mean}");
}

#[test]
fn cards_keep_a_home_country() {
    let g = CardGen {
        events: 5_000,
        cards: 10,
        p_abroad: 0.0,
        ..CardGen::default()
    };
    for e in g.generate() {
        let n: usize = e["card"]["id"].as_str().unwrap()[1..].parse().unwrap();
        assert_eq!(e["country"].as_str().unwrap(), g.home_country(n));
    }
}

#[test]
fn planted_rising_sequences_exist() {
    let g = CardGen {
        events: 2_000,
        cards: 200,
        p_small: 0.0,
        p_large: 0.0,
        p_mid: 0.0,
        p_boundary: 0.0,
        plant: vec![Fraud::RisingAmounts],
        plant_rate: 0.01,
        ..CardGen::default()
    };
    let events = g.generate();
    // Background amounts are 10..=100; planted rising ones start lower
    // or climb higher, so there are runs of 5 rising amounts per card.
    let mut by_card: std::collections::BTreeMap<&str, Vec<(i64, f64)>> = Default::default();
    for e in &events {
        by_card
            .entry(e["card"]["id"].as_str().unwrap())
            .or_default()
            .push((ts_of(e), e["amount"].as_f64().unwrap()));
    }
    let rising = by_card
        .values()
        .filter(|v| {
            v.windows(5)
                .any(|w| w.windows(2).all(|p| p[1].1 > p[0].1) && w[4].0 - w[0].0 < 60_000)
        })
        .count();
    assert!(rising >= 5, "{rising}");
}

#[test]
fn no_planting_without_shapes() {
    let a = CardGen {
        plant_rate: 0.5,
        ..CardGen::new(500, 10, 3)
    }
    .generate();
    let b = CardGen::new(500, 10, 3).generate();
    assert_eq!(a, b);
}

#[test]
fn shuffle_is_a_bounded_permutation() {
    let events = small_gen(2).generate();
    for max_delay in [2, 1_000, 30_000, 600_000] {
        let shuffled = shuffle_within(events.clone(), max_delay, 11);
        if max_delay >= 1_000 {
            assert_ne!(shuffled, events, "max_delay {max_delay} moved nothing");
        }
        let mut max_seen = i64::MIN;
        for e in &shuffled {
            let t = ts_of(e);
            assert!(
                t > max_seen.saturating_sub(max_delay),
                "late by {max_delay}"
            );
            max_seen = max_seen.max(t);
        }
        let mut back = shuffled.clone();
        back.sort_by_key(ts_of);
        assert_eq!(back, events);
    }
    assert_eq!(shuffle_within(events.clone(), 0, 1), events);
    assert_eq!(shuffle_within(events.clone(), 1, 1), events);
}

#[test]
fn shuffle_is_seeded() {
    let events = small_gen(3).generate();
    let a = shuffle_within(events.clone(), 10_000, 1);
    let b = shuffle_within(events.clone(), 10_000, 1);
    let c = shuffle_within(events, 10_000, 2);
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn json_lines_round_trip() {
    let events = CardGen::new(100, 5, 4).generate();
    let mut buf = Vec::new();
    write_json_lines(&mut buf, &events).unwrap();
    let text = String::from_utf8(buf).unwrap();
    let back: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(back, events);
    assert!(text
        .lines()
        .next()
        .unwrap()
        .contains("\"card\":{\"id\":\"c0000"));
}
