//! Tests of the task driver: watermarks across partitions, idleness,
//! refusals, restores and repartitioned input.

use super::*;
use crate::compiler::compile_source;

const PATTERN: &str = r#"pattern small_then_large
  from cards key card.id time ts within 5m
  match small then large
  define small as amount < 10, large as amount > 500
  emit large_amount = large.amount
end
"#;

fn task(lateness_ms: i64, idle_after: u64) -> Task {
    let inputs: Vec<InputConfig> = toml::from_str::<toml::Table>("[[i]]\ntopic = \"cards\"\n")
        .unwrap()["i"]
        .clone()
        .try_into()
        .unwrap();
    let config = TaskConfig {
        engine: EngineConfig {
            lateness_ms,
            external_watermark: true,
            ..EngineConfig::default()
        },
        inputs,
        max_event_bytes: 1000,
        idle_after,
    };
    let mut t = Task::new(compile_source("t.cep", PATTERN).unwrap(), config);
    t.assign(&[("cards".into(), 0), ("cards".into(), 1)], None, 0);
    t
}

fn card(card: &str, ts: i64, amount: f64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"card": {"id": card}, "ts": ts, "amount": amount}))
        .unwrap()
}

fn rec(partition: i32, offset: i64, value: &[u8]) -> Incoming<'_> {
    Incoming {
        topic: "cards",
        partition,
        offset,
        key: None,
        value: Some(value),
        timestamp: None,
        origin: None,
        undecodable: None,
    }
}

fn alerts(t: &mut Task) -> Vec<String> {
    t.take_alerts()
        .map(|a| format!("{}:{}", a.key, a.fields["large_amount"]))
        .collect()
}

#[test]
fn a_match_leaves_once_every_partition_has_passed_it() {
    let mut t = task(0, 30_000);
    let (a, b) = (card("c1", 1_000, 5.0), card("c1", 2_000, 900.0));
    assert_eq!(t.push(&rec(0, 0, &a), 10), Fate::default());
    assert_eq!(t.push(&rec(0, 1, &b), 20), Fate::default());
    // Partition 1 has said nothing yet: nothing is released.
    assert!(alerts(&mut t).is_empty());
    t.push(&rec(1, 0, &card("c9", 3_000, 50.0)), 30);
    // Partition 0 is at 2 s: its next record may still be as old.
    assert!(alerts(&mut t).is_empty());
    t.push(&rec(0, 2, &card("c8", 4_000, 50.0)), 40);
    assert_eq!(alerts(&mut t), [r#""c1":900.0"#]);
    assert_eq!(t.checkpoint("g").offsets["cards/0"], 3);
    assert_eq!(t.checkpoint("g").offsets["cards/1"], 1);
}

#[test]
fn an_idle_partition_stops_holding_the_watermark_back() {
    let mut t = task(0, 1_000);
    let (a, b, c) = (
        card("c1", 1_000, 5.0),
        card("c1", 2_000, 900.0),
        card("c2", 3_000, 1.0),
    );
    t.push(&rec(0, 0, &a), 0);
    t.push(&rec(0, 1, &b), 0);
    t.push(&rec(0, 2, &c), 500);
    // Partition 1, silent since its assignment at 0, holds it back
    // while records may wait in it (until the consumer's statistics
    // say)...
    t.tick(5_000);
    assert!(alerts(&mut t).is_empty());
    // ...and, known empty, until it has been silent for the idle
    // timeout (long since).
    t.set_backlog("cards/1", false);
    t.tick(5_001);
    assert_eq!(alerts(&mut t), [r#""c1":900.0"#]);
}

#[test]
fn a_silent_partition_with_waiting_records_never_goes_idle() {
    let mut t = task(0, 1_000);
    t.push(&rec(0, 0, &card("c1", 1_000, 5.0)), 0);
    t.push(&rec(0, 1, &card("c1", 2_000, 900.0)), 0);
    // Partition 0 keeps delivering; partition 1 says nothing for a
    // minute, but the consumer reports records waiting in it (a
    // stalled fetch): it holds the watermark however long it is silent.
    t.set_backlog("cards/1", true);
    t.push(&rec(0, 2, &card("c2", 3_000, 1.0)), 59_500);
    t.tick(60_000);
    assert!(alerts(&mut t).is_empty());
    // Its records arrive, in order: none is late (were it treated as
    // idle, the watermark would have passed 1.5 s long ago).
    let fate = t.push(&rec(1, 0, &card("c3", 1_500, 50.0)), 60_001);
    assert_eq!(fate, Fate::default());
    t.set_backlog("cards/1", false);
    t.push(&rec(1, 1, &card("c3", 2_500, 50.0)), 60_002);
    assert_eq!(alerts(&mut t), [r#""c1":900.0"#]);
}

#[test]
fn unreadable_and_late_records_are_named() {
    let mut t = task(1_000, 30_000);
    let no_key = br#"{"ts": 5000, "amount": 1}"#;
    let fate = t.push(&rec(0, 0, no_key), 0);
    assert_eq!(
        fate.dead,
        ["pattern small_then_large: missing key field `card.id`"]
    );
    assert_eq!(t.push(&rec(0, 1, b"[1]"), 0).dead.len(), 1);
    let empty = Incoming {
        value: None,
        ..rec(0, 2, b"")
    };
    assert_eq!(t.push(&empty, 0).dead, ["empty record (no value)"]);
    let big = vec![b' '; 1001];
    assert!(t.push(&rec(0, 3, &big), 0).dead[0].contains("larger than"));
    t.push(&rec(0, 4, &card("c1", 10_000, 5.0)), 0);
    let fate = t.push(&rec(0, 5, &card("c1", 8_000, 5.0)), 0);
    assert_eq!(fate.late.map(|(time, _)| time), Some(8_000));
    assert!(fate.dead.is_empty());
    let counts = t.take_counts();
    assert_eq!(counts.events_in["cards"], 6);
    assert_eq!(counts.decode_errors["cards"], 4);
    assert_eq!(counts.late["cards"], 1);
}

#[test]
fn patterns_keyed_otherwise_than_their_topic_is_partitioned_are_refused() {
    let inputs = |extra: &str| -> Vec<InputConfig> {
        toml::from_str::<toml::Table>(&format!("[[i]]\ntopic = \"cards\"\n{extra}")).unwrap()["i"]
            .clone()
            .try_into()
            .unwrap()
    };
    let by_card = compile_source("t.cep", PATTERN).unwrap();
    let by_country = compile_source(
        "c.cep",
        &PATTERN
            .replace("small_then_large", "by_country")
            .replace("key card.id", "key merchant.country"),
    )
    .unwrap();
    let three: BTreeMap<String, i32> = [("cards".to_string(), 3)].into();
    let one: BTreeMap<String, i32> = [("cards".to_string(), 1)].into();
    let declared = inputs("partitioned_by = \"card.id\"");
    assert!(check_partitioning(&declared, &by_card, &three).is_ok());
    let e = check_partitioning(&declared, &by_country, &three).unwrap_err();
    assert!(
        e.contains("pattern `by_country` is keyed by merchant.country")
            && e.contains("partitioned by card.id"),
        "{e}"
    );
    let e = check_partitioning(&inputs(""), &by_card, &three).unwrap_err();
    assert!(
        e.contains("kafka.inputs[0].partitioned_by is not set"),
        "{e}"
    );
    // One partition, or keys from the message: nothing can be split.
    assert!(check_partitioning(&inputs(""), &by_country, &one).is_ok());
    assert!(check_partitioning(&inputs("key = \"message\""), &by_country, &three).is_ok());
    let composite = inputs("partitioned_by = [\"merchant.country\"]");
    assert!(check_partitioning(&composite, &by_country, &three).is_ok());
}

#[test]
fn a_restored_task_continues_a_partial_match() {
    let mut t = task(0, 30_000);
    let (a, b, c) = (
        card("c1", 1_000, 5.0),
        card("c1", 2_000, 900.0),
        card("c2", 3_000, 50.0),
    );
    t.push(&rec(0, 0, &a), 0);
    let saved = serde_json::to_vec(&t.checkpoint("g")).unwrap();
    let mut u = task(0, 30_000);
    let restored: Checkpoint = serde_json::from_slice(&saved).unwrap();
    let parts = [("cards".to_string(), 0), ("cards".to_string(), 1)];
    assert!(u.assign(&parts, Some(restored), 100).is_empty());
    u.push(&rec(0, 1, &b), 100);
    u.push(&rec(1, 0, &c), 100);
    u.push(&rec(0, 2, &card("c8", 4_000, 50.0)), 100);
    assert_eq!(alerts(&mut u), [r#""c1":900.0"#]);
}

#[test]
fn a_task_restored_from_a_whole_checkpoint_and_its_increments_continues() {
    // Small charges open runs, large ones close them; partition 1
    // moves the watermark along.
    let events: Vec<(i32, Vec<u8>)> = vec![
        (0, card("c1", 1_000, 5.0)),
        (1, card("c9", 1_100, 50.0)),
        (0, card("c2", 2_000, 6.0)),
        (0, card("c1", 2_500, 900.0)),
        (1, card("c3", 2_600, 7.0)),
        (1, card("c9", 2_700, 50.0)),
        (0, card("c2", 3_000, 800.0)),
        (1, card("c3", 3_500, 700.0)),
        (0, card("c8", 9_000, 50.0)),
        (1, card("c8", 9_000, 50.0)),
    ];
    let mut offsets = [0i64; 2];
    let recs: Vec<(i32, i64, &[u8])> = events
        .iter()
        .map(|(p, v)| {
            offsets[*p as usize] += 1;
            (*p, offsets[*p as usize] - 1, v.as_slice())
        })
        .collect();
    let mut whole = task(0, 30_000);
    for (p, o, v) in &recs {
        whole.push(&rec(*p, *o, v), 0);
    }
    let want = alerts(&mut whole);
    assert_eq!(want.len(), 3, "{want:?}");

    let mut t = task(0, 30_000);
    let mut got = Vec::new();
    let mut chain: Option<Checkpoint> = None;
    for (n, (p, o, v)) in recs.iter().enumerate() {
        match n {
            2 => {
                let Cut::Whole(c) = t.cut("g", true) else {
                    panic!("whole")
                };
                chain = Some(c);
            }
            4 | 6 => {
                let Cut::Changes(mut i) = t.cut("g", false) else {
                    panic!("changes")
                };
                // Only the keys the events since the last cut touched.
                assert!(i.engine.keys() <= 2, "{n}: {}", i.engine.keys());
                i.seq = n as u64;
                let text = serde_json::to_vec(&i).unwrap();
                let c = chain.as_mut().unwrap();
                c.apply(serde_json::from_slice(&text).unwrap()).unwrap();
            }
            _ => {}
        }
        if n == 6 {
            got.extend(alerts(&mut t));
            t = task(0, 30_000);
            let parts = [("cards".to_string(), 0), ("cards".to_string(), 1)];
            assert!(t.assign(&parts, chain.take(), 0).is_empty());
        }
        t.push(&rec(*p, *o, v), 0);
    }
    got.extend(alerts(&mut t));
    assert_eq!(got, want);
}

#[test]
fn a_repartitioned_input_skips_records_read_again_and_clocks_each_source() {
    let mut t = task(0, 30_000);
    let mut inputs = t.config.inputs.clone();
    inputs[0].topic = "internal".into();
    inputs[0].stream = Some("cards".into());
    inputs[0].repartitioned_from = Some(("payments".into(), 2));
    let config = TaskConfig {
        inputs,
        ..t.config.clone()
    };
    t = Task::new(t.automata.clone(), config);
    t.assign(&[("internal".into(), 0)], None, 0);
    let from = |offset: i64, source: (i32, i64), v: &[u8]| -> Incoming<'static> {
        let v: &'static [u8] = v.to_vec().leak();
        Incoming {
            topic: "internal",
            partition: 0,
            offset,
            key: None,
            value: Some(v),
            timestamp: None,
            origin: Some(source),
            undecodable: None,
        }
    };
    // Source partition 1 is read ahead of source partition 0: its
    // events do not make partition 0's late.
    t.push(&from(0, (1, 0), &card("c2", 5_000, 6.0)), 0);
    let fate = t.push(&from(1, (0, 0), &card("c1", 1_000, 5.0)), 0);
    assert_eq!(fate, Fate::default(), "not late: its own source's clock");
    // A crash re-produced source 0's offset 0: read again, skipped.
    t.push(&from(2, (0, 0), &card("c1", 1_000, 5.0)), 0);
    t.push(&from(3, (0, 1), &card("c1", 2_000, 900.0)), 0);
    t.push(&from(4, (1, 1), &card("c2", 9_000, 800.0)), 0);
    t.push(&from(5, (0, 2), &card("c9", 10_000, 50.0)), 0);
    t.push(&from(6, (1, 2), &card("c9", 10_000, 50.0)), 0);
    assert_eq!(t.take_counts().repeats["internal"], 1);
    assert_eq!(alerts(&mut t), [r#""c1":900.0"#, r#""c2":800.0"#]);
    let c = t.checkpoint("g");
    assert_eq!(c.origins["internal/0@0"], 2);
    assert_eq!(c.origins["internal/0@1"], 2);
}
