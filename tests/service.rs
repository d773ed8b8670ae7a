//! `cep serve` end to end against a real broker (nisshi on loopback): the
//! real binary, real topics, alerts read back from the alert topic and
//! compared with what `cep replay` finds in the same events.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cep::gen::CardGen;
use support::*;

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// A serve config reading `cards`, alerts to the `alerts` topic.
fn config(brokers: &str, patterns: &Path, extra_kafka: &str, lateness: &str) -> String {
    format!(
        r#"
[engine]
lateness = "{lateness}"

[serve]
patterns = "{patterns}"
state_dir = "state"
checkpoint_interval = "300ms"
listen = "127.0.0.1:{{HTTP}}"
default_sinks = ["alerts"]
shutdown_timeout = "10s"

[kafka]
brokers = "{brokers}"
group_id = "cep-test"
{extra_kafka}

[[kafka.inputs]]
topic = "cards"
# The tests produce each card's events to one partition.
partitioned_by = "card.id"

[sinks.alerts]
type = "kafka"
topic = "alerts"
"#,
        patterns = patterns.display()
    )
}

/// Card events as JSON lines, and one far-future event per partition that
/// matches nothing but moves every partition's watermark past every window.
fn card_lines(events: usize, cards: usize, seed: u64) -> (Vec<serde_json::Value>, i64) {
    let g = CardGen {
        mean_gap_ms: 400.0,
        ..CardGen::new(events, cards, seed)
    };
    let evs = g.generate();
    let last = evs.iter().map(cep::gen::ts_of).max().unwrap();
    (evs, last)
}

fn sentinel(partition: i32, last: i64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "card": {"id": format!("~end-{partition}")},
        "ts": last + 86_400_000,
        "merchant": "none",
        "country": "none"
    }))
    .unwrap()
}

fn card_of(e: &serde_json::Value) -> String {
    e["card"]["id"].as_str().unwrap().to_string()
}

/// Writes the lines the broker will carry (in that order) for replay.
fn write_jsonl(path: &Path, lines: &[Vec<u8>]) {
    let mut text = Vec::new();
    for l in lines {
        text.extend_from_slice(l);
        text.push(b'\n');
    }
    std::fs::write(path, text).unwrap();
}

fn alerts_by_id(got: &[Got]) -> BTreeMap<String, serde_json::Value> {
    got.iter()
        .map(|g| {
            let v = g.json();
            (v["alert_id"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

fn ids(m: &BTreeMap<String, serde_json::Value>) -> BTreeSet<String> {
    m.keys().cloned().collect()
}

#[test]
fn fraud_patterns_end_to_end_equal_replay_and_shut_down_cleanly() {
    let broker = Broker::start();
    let b = broker.brokers();
    create_topic(&b, "cards", 3);
    create_topic(&b, "alerts", 1);
    let dir = scratch("fraud");

    let (events, last) = card_lines(12_000, 200, 7);
    let mut lines: Vec<Vec<u8>> = events
        .iter()
        .map(|e| serde_json::to_vec(e).unwrap())
        .collect();
    let keys: Vec<String> = events.iter().map(card_of).collect();
    let mut out: Vec<Out> = lines
        .iter()
        .zip(&keys)
        .map(|(l, k)| Out {
            partition: None,
            key: Some(k),
            value: l,
        })
        .collect();
    let sentinels: Vec<Vec<u8>> = (0..3).map(|p| sentinel(p, last)).collect();
    for (p, s) in sentinels.iter().enumerate() {
        out.push(Out {
            partition: Some(p as i32),
            key: None,
            value: s,
        });
    }
    produce(&b, "cards", &out);
    lines.extend(sentinels.iter().cloned());
    write_jsonl(&dir.join("events.jsonl"), &lines);
    let want = replay(&repo("patterns/fraud"), &dir.join("events.jsonl"), "0s");
    assert!(want.len() > 50, "the stream has alerts ({})", want.len());

    let mut serve = Serve::start(&dir, &config(&b, &repo("patterns/fraud"), "", "0s"));
    serve.wait_ready(Duration::from_secs(60));
    let got = consume_until(&b, "alerts", Duration::from_secs(120), |g| {
        g.len() >= want.len()
    });
    let got_by_id = alerts_by_id(&got);
    assert_eq!(ids(&got_by_id), ids(&want), "the same alerts as replay");
    assert_eq!(
        got.len(),
        want.len(),
        "each alert once in an uninterrupted run"
    );
    for (id, a) in &want {
        assert_eq!(&got_by_id[id], a, "alert {id} differs");
    }
    // Headers and key name the alert.
    let g = &got[0];
    let v = g.json();
    assert_eq!(g.headers["cep-alert-id"], v["alert_id"].as_str().unwrap());
    assert_eq!(g.headers["cep-pattern"], v["pattern"].as_str().unwrap());
    assert_eq!(g.headers["cep-kind"], v["kind"].as_str().unwrap());
    assert_eq!(g.headers["cep-pattern-version"], v["version"].to_string());
    assert_eq!(g.key.as_deref(), v["key"].as_str());

    // Metrics count what went through.
    let t0 = Instant::now();
    while serve.metric("cep_events_in_total", "topic=\"cards\"") < lines.len() as f64 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{:?}",
            serve.get("/metrics")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(serve.get("/healthz").map(|r| r.0), Some(200));
    let (_, metrics) = serve.get("/metrics").unwrap();
    assert!(metrics.contains("cep_alerts_total{pattern=\"small_then_large\",kind=\"match\"}"));
    assert!(metrics.contains("cep_sink_successes_total{sink=\"alerts\"}"));

    // SIGTERM: exit 0 promptly, with a checkpoint at the end of every partition.
    let t0 = Instant::now();
    serve.signal("-TERM");
    let status = serve.wait(Duration::from_secs(30));
    assert!(status.success(), "exit {status}:\n{}", serve.log());
    assert!(t0.elapsed() < Duration::from_secs(15));
    // Every task checkpointed the end of its partition, then committed it.
    let offsets: i64 = committed(&b, "cep-test", "cards", 3).iter().sum();
    assert_eq!(offsets, lines.len() as i64, "every record checkpointed");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Each partition is a task with its own clock: a match on one partition
/// leaves as soon as that partition's watermark passes it, however long
/// another partition stays silent (here far shorter than its idle timeout).
#[test]
fn a_partition_does_not_wait_for_a_silent_one() {
    let broker = Broker::start();
    let b = broker.brokers();
    create_topic(&b, "cards", 2);
    create_topic(&b, "alerts", 1);
    let dir = scratch("own-clock");
    let ev = |ts: i64, amount: f64| {
        serde_json::to_vec(&serde_json::json!({"card": {"id": "c1"}, "ts": ts, "amount": amount}))
            .unwrap()
    };
    let events = [ev(1_000, 5.0), ev(2_000, 900.0), ev(3_000, 50.0)];
    let out: Vec<Out> = events
        .iter()
        .map(|v| Out {
            partition: Some(0),
            key: None,
            value: v,
        })
        .collect();
    produce(&b, "cards", &out);
    let cfg = config(&b, &repo("patterns/fraud"), "idle_timeout = \"10m\"", "0s");
    let mut serve = Serve::start(&dir, &cfg);
    serve.wait_ready(Duration::from_secs(60));
    let t0 = Instant::now();
    let got = consume_until(&b, "alerts", Duration::from_secs(30), |g| !g.is_empty());
    assert_eq!(got.len(), 1, "{}", serve.log());
    assert_eq!(got[0].json()["key"], "c1");
    assert!(t0.elapsed() < Duration::from_secs(30));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_killed_service_restarts_from_its_checkpoint_and_loses_no_alert() {
    let broker = Broker::start();
    let b = broker.brokers();
    create_topic(&b, "cards", 2);
    create_topic(&b, "alerts", 1);
    let dir = scratch("sigkill");

    let (events, last) = card_lines(15_000, 150, 11);
    let lines: Vec<Vec<u8>> = events
        .iter()
        .map(|e| serde_json::to_vec(e).unwrap())
        .collect();
    let keys: Vec<String> = events.iter().map(card_of).collect();
    let batch = |r: std::ops::Range<usize>| -> Vec<Out> {
        r.map(|i| Out {
            partition: None,
            key: Some(&keys[i]),
            value: &lines[i],
        })
        .collect()
    };
    let n = lines.len();
    let (a, bb) = (n * 2 / 5, n * 7 / 10);
    let sentinels: Vec<Vec<u8>> = (0..2).map(|p| sentinel(p, last)).collect();
    let mut all = lines.clone();
    all.extend(sentinels.iter().cloned());
    write_jsonl(&dir.join("events.jsonl"), &all);
    let want = replay(&repo("patterns/fraud"), &dir.join("events.jsonl"), "0s");

    produce(&b, "cards", &batch(0..a));
    let cfg = config(&b, &repo("patterns/fraud"), "", "0s");
    let mut serve = Serve::start(&dir, &cfg);
    serve.wait_ready(Duration::from_secs(60));
    let t0 = Instant::now();
    while serve.metric("cep_events_in_total", "") < a as f64
        || serve.metric("cep_checkpoints_total", "") < 2.0
    {
        assert!(t0.elapsed() < Duration::from_secs(60), "{}", serve.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    // Kill it hard while the next batch streams in.
    produce(&b, "cards", &batch(a..bb));
    std::thread::sleep(Duration::from_millis(150));
    serve.signal("-KILL");
    serve.wait(Duration::from_secs(10));
    drop(serve);

    let mut rest = batch(bb..n);
    for (p, s) in sentinels.iter().enumerate() {
        rest.push(Out {
            partition: Some(p as i32),
            key: None,
            value: s,
        });
    }
    produce(&b, "cards", &rest);
    let mut serve = Serve::start(&dir, &cfg);
    serve.wait_ready(Duration::from_secs(60));
    let got = consume_until(&b, "alerts", Duration::from_secs(120), |g| {
        let seen: BTreeSet<&str> = g
            .iter()
            .filter_map(|x| x.headers.get("cep-alert-id").map(String::as_str))
            .collect();
        want.keys().all(|k| seen.contains(k.as_str()))
    });
    let got_by_id = alerts_by_id(&got);
    let missing: Vec<_> = ids(&want).difference(&ids(&got_by_id)).cloned().collect();
    let extra: Vec<_> = ids(&got_by_id).difference(&ids(&want)).cloned().collect();
    assert!(
        missing.is_empty(),
        "lost {} alerts: {missing:?}\n{}",
        missing.len(),
        serve.log()
    );
    assert!(
        extra.is_empty(),
        "alerts an uninterrupted run never raises: {extra:?}"
    );
    for (id, a) in &want {
        assert_eq!(&got_by_id[id], a, "alert {id} differs after the restart");
    }
    assert!(
        serve.log().contains("restored_tasks=[0, 1]"),
        "{}",
        serve.log()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn partitions_out_of_order_and_an_idle_partition() {
    let broker = Broker::start();
    let b = broker.brokers();
    create_topic(&b, "cards", 3);
    create_topic(&b, "alerts", 1);
    let dir = scratch("order");

    // Partition 0 is produced entirely before partition 1: the service sees
    // one far ahead of the other and must still match in event time.
    // Partition 2 never gets a record: it goes idle.
    let (events, last) = card_lines(6_000, 100, 3);
    let lines: Vec<Vec<u8>> = events
        .iter()
        .map(|e| serde_json::to_vec(e).unwrap())
        .collect();
    let part = |e: &serde_json::Value| -> i32 {
        let id = card_of(e);
        (id[1..].parse::<u32>().unwrap() % 2) as i32
    };
    let mut out = Vec::new();
    for p in 0..2 {
        for (e, l) in events.iter().zip(&lines) {
            if part(e) == p {
                out.push(Out {
                    partition: Some(p),
                    key: None,
                    value: l,
                });
            }
        }
    }
    let sentinels: Vec<Vec<u8>> = (0..2).map(|p| sentinel(p, last)).collect();
    for (p, s) in sentinels.iter().enumerate() {
        out.push(Out {
            partition: Some(p as i32),
            key: None,
            value: s,
        });
    }
    produce(&b, "cards", &out);
    let mut all = lines.clone();
    all.extend(sentinels.iter().cloned());
    write_jsonl(&dir.join("events.jsonl"), &all);
    let want = replay(&repo("patterns/fraud"), &dir.join("events.jsonl"), "0s");

    let cfg = config(&b, &repo("patterns/fraud"), "idle_timeout = \"2s\"", "0s");
    let mut serve = Serve::start(&dir, &cfg);
    serve.wait_ready(Duration::from_secs(60));
    let got = consume_until(&b, "alerts", Duration::from_secs(90), |g| {
        g.len() >= want.len()
    });
    let got_by_id = alerts_by_id(&got);
    assert_eq!(ids(&got_by_id), ids(&want), "\n{}", serve.log());
    assert_eq!(serve.metric("cep_late_events_total", ""), 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two topics feed one stream, so one task holds a partition of each; the
/// consumer fetches them in turns (small fetches), and every partition looks
/// silent far longer than the idle timeout while the other's batch is
/// matched. Records waiting in a partition (the consumer's lag) keep it
/// from being judged idle: not one in-order event is declared late, and
/// the alerts are a replay's.
#[test]
fn a_stalled_partition_with_waiting_records_gets_no_late_events() {
    let broker = Broker::start();
    let b = broker.brokers();
    for t in ["cards-a", "cards-b"] {
        create_topic(&b, t, 1);
    }
    create_topic(&b, "alerts", 1);
    let dir = scratch("stalled");
    let (events, last) = card_lines(20_000, 100, 11);
    let topic_of = |e: &serde_json::Value| {
        let id = card_of(e);
        if id[1..].parse::<u32>().unwrap() % 2 == 0 {
            "cards-a"
        } else {
            "cards-b"
        }
    };
    let mut all = Vec::new();
    for t in ["cards-a", "cards-b"] {
        let mut lines: Vec<Vec<u8>> = events
            .iter()
            .filter(|e| topic_of(e) == t)
            .map(|e| serde_json::to_vec(e).unwrap())
            .collect();
        lines.push(sentinel(if t == "cards-a" { 0 } else { 1 }, last));
        let records: Vec<(i32, Vec<u8>)> = lines.iter().map(|l| (0, l.clone())).collect();
        send_to(&b, t, &records);
        all.extend(lines);
    }
    write_jsonl(&dir.join("events.jsonl"), &all);
    let patterns = repo("patterns/fraud");
    let want = replay(&patterns, &dir.join("events.jsonl"), "10000h");
    assert!(want.len() > 20, "{} alerts", want.len());

    let cfg = format!(
        r#"
[engine]
lateness = "0s"

[serve]
patterns = "{patterns}"
checkpoint_interval = "300ms"
listen = "127.0.0.1:{{HTTP}}"
default_sinks = ["alerts"]

[kafka]
brokers = "{b}"
group_id = "cep-stalled"
idle_timeout = "1ms"
# Small fetches: the consumer hands over one partition's records at a time.
options = {{ "max.partition.fetch.bytes" = "4096" }}

[[kafka.inputs]]
topic = "cards-a"
stream = "cards"

[[kafka.inputs]]
topic = "cards-b"
stream = "cards"

[sinks.alerts]
type = "kafka"
topic = "alerts"
"#,
        patterns = patterns.display()
    );
    let mut serve = Serve::start(&dir, &cfg);
    serve.wait_ready(Duration::from_secs(60));
    let got = consume_until(&b, "alerts", Duration::from_secs(90), |g| {
        g.len() >= want.len()
    });
    let t0 = Instant::now();
    while serve.metric("cep_events_in_total", "") < all.len() as f64 {
        assert!(t0.elapsed() < Duration::from_secs(30), "{}", serve.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(serve.metric("cep_late_events_total", ""), 0.0);
    assert_eq!(ids(&alerts_by_id(&got)), ids(&want), "\n{}", serve.log());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn malformed_records_go_to_the_dead_letter_topic_and_late_ones_to_the_late_topic() {
    let broker = Broker::start();
    let b = broker.brokers();
    create_topic(&b, "cards", 1);
    for t in ["alerts", "cep-dead-letter", "cep-late"] {
        create_topic(&b, t, 1);
    }
    let dir = scratch("dead");
    let ok = |ts: i64, amount: f64| {
        serde_json::to_vec(&serde_json::json!({"card": {"id": "c1"}, "ts": ts, "amount": amount}))
            .unwrap()
    };
    let big = format!(
        r#"{{"card":{{"id":"c1"}},"ts":1000,"pad":"{}"}}"#,
        "x".repeat(3000)
    );
    let records: Vec<(Vec<u8>, &str)> = vec![
        (ok(1_000_000, 5.0), ""),
        (b"this is not json".to_vec(), "not a JSON object"),
        (
            br#"{"card":{"id":"c1"}}"#.to_vec(),
            "missing time field `ts`",
        ),
        (
            br#"{"card":{"id":"c1"},"ts":"yesterday"}"#.to_vec(),
            "\"yesterday\" is not an RFC 3339 timestamp",
        ),
        (br#"{"ts":1000500}"#.to_vec(), "missing key field `card.id`"),
        (big.into_bytes(), "larger than kafka.max_event_bytes"),
        (ok(1_200_000, 700.0), ""),
        // 190 s behind the newest event, lateness 60 s: late.
        (ok(1_010_000, 3.0), "late"),
        (ok(1_300_000, 1.0), ""),
    ];
    let out: Vec<Out> = records
        .iter()
        .map(|(v, _)| Out {
            partition: None,
            key: Some("c1"),
            value: v,
        })
        .collect();
    produce(&b, "cards", &out);
    let patterns = dir.join("patterns");
    std::fs::create_dir_all(&patterns).unwrap();
    // Two patterns read the stream: a record both refuse is still one dead
    // letter, with both reasons.
    let source = std::fs::read_to_string(repo("patterns/fraud/small_then_large.cep")).unwrap();
    std::fs::write(patterns.join("small_then_large.cep"), &source).unwrap();
    let twin = source.replace("pattern small_then_large", "pattern twin");
    std::fs::write(patterns.join("twin.cep"), twin).unwrap();
    let cfg = config(&b, &patterns, "max_event_bytes = 2000", "1m");
    let mut serve = Serve::start(&dir, &cfg);
    serve.wait_ready(Duration::from_secs(60));

    let dead = consume_until(&b, "cep-dead-letter", Duration::from_secs(60), |g| {
        g.len() >= 5
    });
    assert_eq!(dead.len(), 5, "{}", serve.log());
    let expected: Vec<(usize, &(Vec<u8>, &str))> = records
        .iter()
        .enumerate()
        .filter(|(_, (_, why))| !why.is_empty() && *why != "late")
        .collect();
    let mut dead = dead;
    dead.sort_by_key(|d| d.headers["cep-source-offset"].parse::<i64>().unwrap());
    for (d, (offset, (bytes, why))) in dead.iter().zip(expected) {
        assert_eq!(&d.value, bytes, "the original bytes");
        assert!(
            d.headers["cep-reason"].contains(why),
            "{:?} lacks {why}",
            d.headers
        );
        assert_eq!(d.headers["cep-source-topic"], "cards");
        assert_eq!(d.headers["cep-source-partition"], "0");
        assert_eq!(d.headers["cep-source-offset"], offset.to_string());
        assert_eq!(d.key.as_deref(), Some("c1"));
        let reasons: Vec<String> = serde_json::from_str(&d.headers["cep-reasons"]).unwrap();
        assert_eq!(reasons.join("; "), d.headers["cep-reason"]);
        if why.starts_with("missing") || why.contains("RFC 3339") {
            // Refused by each pattern: one reason per pattern.
            assert_eq!(reasons.len(), 2, "{reasons:?}");
            assert!(
                reasons[0].starts_with("pattern small_then_large: "),
                "{reasons:?}"
            );
            assert!(reasons[1].starts_with("pattern twin: "), "{reasons:?}");
        } else {
            assert_eq!(reasons.len(), 1, "{reasons:?}");
        }
    }
    let late = consume_until(&b, "cep-late", Duration::from_secs(30), |g| !g.is_empty());
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].value, records[7].0);
    assert_eq!(late[0].headers["cep-source-offset"], "7");
    let t0 = Instant::now();
    while serve.metric("cep_decode_errors_total", "topic=\"cards\"") < 5.0 {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        serve.metric("cep_late_events_total", "stream=\"cards\""),
        1.0
    );
    // The service carried on: the small charge at 1_000_000 and the large
    // one at 1_200_000 (within 5 minutes) match.
    let alerts = consume_until(&b, "alerts", Duration::from_secs(30), |g| g.len() >= 2);
    assert_eq!(alerts.len(), 2, "one per pattern");
    assert_eq!(alerts[0].json()["fields"]["large_amount"], 700.0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The four flight patterns over January 2013 as `cep produce` loads it
/// (CSV rows as JSON, keyed by aircraft): the same alerts as `cep replay`
/// over the same JSON, through a Kafka sink and a file sink at once.
#[test]
fn flight_patterns_end_to_end_equal_replay_with_a_file_sink_too() {
    let broker = Broker::start();
    let b = broker.brokers();
    create_topic(&b, "flights", 3);
    create_topic(&b, "alerts", 1);
    let dir = scratch("flights");

    let (records, _) = cep::input::open(
        repo("data/flights-2013-01.csv").to_str().unwrap(),
        cep::input::Format::Csv,
        &["NA".to_string()],
    )
    .unwrap();
    let docs: Vec<serde_json::Value> = records
        .map(|r| r.unwrap().payload.into_doc().unwrap())
        .collect();
    // An on-time flight far in the future closes every window (it is no
    // cancellation, no delay: it matches nothing itself).
    // Each aircraft's flights on one partition (chosen here, so that the
    // replay below can be given the same order). Flights of one hour are
    // ties in event time; the service breaks ties by (partition, offset),
    // and so does a replay of the partitions one after another with a
    // lateness that buffers the whole month.
    let part = |d: &serde_json::Value| -> usize {
        let tail = d["tailnum"].as_str().unwrap_or("");
        (cep::event::stable_hash(tail.as_bytes(), 0) % 3) as usize
    };
    let sentinel = |p: usize| {
        serde_json::to_vec(&serde_json::json!({
            "tailnum": format!("~end-{p}"), "carrier": "~", "origin": "~",
            "dest": "~", "dep_delay": 0, "arr_delay": 0, "dep_time": 0,
            "time_hour": "2013-03-01T00:00:00Z"
        }))
        .unwrap()
    };
    let mut by_partition: Vec<Vec<Vec<u8>>> = vec![Vec::new(); 3];
    for d in &docs {
        by_partition[part(d)].push(serde_json::to_vec(d).unwrap());
    }
    for (p, records) in by_partition.iter_mut().enumerate() {
        records.push(sentinel(p));
    }
    let mut out = Vec::new();
    for (p, records) in by_partition.iter().enumerate() {
        for r in records {
            out.push(Out {
                partition: Some(p as i32),
                key: None,
                value: r,
            });
        }
    }
    produce(&b, "flights", &out);
    write_jsonl(&dir.join("events.jsonl"), &by_partition.concat());
    // The flights are partitioned by aircraft: the patterns keyed by
    // aircraft run, one task per partition; `cancellation_cluster`, keyed
    // by (carrier, origin), would see one key's flights in three tasks and
    // is refused below.
    let patterns = dir.join("patterns");
    std::fs::create_dir_all(&patterns).unwrap();
    for f in cep::compiler::pattern_files(&repo("patterns/flights")) {
        let name = f.file_name().unwrap();
        if name != "cancellation_cluster.cep" {
            std::fs::copy(&f, patterns.join(name)).unwrap();
        }
    }
    let want = replay(&patterns, &dir.join("events.jsonl"), "10000h");
    assert!(want.len() > 100, "{} alerts", want.len());

    let cfg = format!(
        r#"
[engine]
lateness = "1d"
[serve]
patterns = "{patterns}"
listen = "127.0.0.1:{{HTTP}}"
api_unauthenticated = true
default_sinks = ["alerts", "archive"]
checkpoint_interval = "500ms"
[kafka]
brokers = "{b}"
group_id = "flights-test"
[[kafka.inputs]]
topic = "flights"
partitioned_by = "tailnum"
[sinks.alerts]
type = "kafka"
topic = "alerts"
[sinks.archive]
type = "file"
path = "archive/alerts.jsonl"
"#,
        patterns = patterns.display()
    );
    let all = cfg.replace(
        &patterns.display().to_string(),
        &repo("patterns/flights").display().to_string(),
    );
    let mut refused = Serve::start(&dir, &all);
    assert!(!refused.wait(Duration::from_secs(60)).success());
    let log = refused.log();
    assert!(
        log.contains("pattern `cancellation_cluster` is keyed by carrier, origin")
            && log.contains("partitioned by tailnum"),
        "{log}"
    );
    drop(refused);
    let mut serve = Serve::start(&dir, &cfg);
    serve.wait_ready(Duration::from_secs(60));
    let got = consume_until(&b, "alerts", Duration::from_secs(120), |g| {
        g.len() >= want.len()
    });
    let got_by_id = alerts_by_id(&got);
    if ids(&got_by_id) != ids(&want) {
        let dump = |m: &BTreeMap<String, serde_json::Value>| {
            m.values().map(|v| v.to_string() + "\n").collect::<String>()
        };
        std::fs::write(dir.join("got.jsonl"), dump(&got_by_id)).unwrap();
        std::fs::write(dir.join("want.jsonl"), dump(&want)).unwrap();
    }
    assert_eq!(ids(&got_by_id), ids(&want), "\n{}", serve.log());
    for (id, a) in &want {
        assert_eq!(&got_by_id[id], a, "alert {id} differs");
    }
    // Added over the API, the pattern is refused the same way, and the
    // running set stays as it was.
    let source =
        std::fs::read_to_string(repo("patterns/flights/cancellation_cluster.cep")).unwrap();
    let (status, body) = http(
        serve.http,
        "PUT",
        "/patterns/cancellation_cluster",
        &[],
        &source,
    )
    .unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("partitioned by tailnum"), "{body}");
    assert!(!patterns.join("cancellation_cluster.cep").exists());
    // Rows without a tail number cannot be keyed by the tailnum patterns:
    // dead-lettered with the reason, and still seen by the carrier pattern.
    let no_tail = docs.iter().filter(|d| d.get("tailnum").is_none()).count();
    assert!(no_tail > 0);
    let dead = consume_until(&b, "cep-dead-letter", Duration::from_secs(30), |g| {
        g.len() >= no_tail
    });
    assert_eq!(dead.len(), no_tail);
    assert!(dead[0].headers["cep-reason"].contains("missing key field `tailnum`"));

    serve.signal("-TERM");
    assert!(
        serve.wait(Duration::from_secs(30)).success(),
        "{}",
        serve.log()
    );
    let archived: BTreeSet<String> = std::fs::read_to_string(dir.join("archive/alerts.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["alert_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(archived, ids(&want), "the file sink has every alert too");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Keys from the Kafka message key and times from the record timestamp,
/// for events that carry neither; late events dropped and counted.
#[test]
fn message_keys_and_record_timestamps_with_late_events_dropped() {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    let broker = Broker::start();
    let b = broker.brokers();
    create_topic(&b, "payments", 1);
    create_topic(&b, "alerts", 1);
    let dir = scratch("msgkey");
    std::fs::create_dir_all(dir.join("patterns")).unwrap();
    std::fs::write(
        dir.join("patterns/p.cep"),
        r#"
pattern small_then_large
  from cards key card.id time ts within 5m
  match small then large
  define small as amount < 10, large as amount > 500
  emit small_amount = small.amount, large_amount = large.amount
end
"#,
    )
    .unwrap();
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &b)
        .create()
        .unwrap();
    let t0 = 1_700_000_000_000i64;
    // (key, record timestamp, amount)
    let rows = [
        ("alice", t0, 5.0),
        ("bob", t0 + 1_000, 7.0),
        ("alice", t0 + 60_000, 900.0), // alice: small then large within 5m
        ("bob", t0 + 400_000, 800.0),  // bob: too late for the window
        ("carol", t0 + 10_000, 1.0),   // 390 s behind: late (lateness 1m)
        ("dave", t0 + 500_000, 1.0),
    ];
    for (k, ts, amount) in rows {
        let v = serde_json::to_vec(&serde_json::json!({"amount": amount})).unwrap();
        p.send(BaseRecord::to("payments").key(k).payload(&v).timestamp(ts))
            .unwrap();
    }
    p.flush(Duration::from_secs(10)).unwrap();
    let cfg = format!(
        r#"
[engine]
lateness = "1m"
[serve]
patterns = "patterns"
listen = "127.0.0.1:{{HTTP}}"
default_sinks = ["alerts"]
[kafka]
brokers = "{b}"
late_events = "drop"
[[kafka.inputs]]
topic = "payments"
stream = "cards"
key = "message"
time = "timestamp"
[sinks.alerts]
type = "kafka"
topic = "alerts"
"#
    );
    let mut serve = Serve::start(&dir, &cfg);
    serve.wait_ready(Duration::from_secs(60));
    let got = consume_until(&b, "alerts", Duration::from_secs(60), |g| !g.is_empty());
    assert_eq!(got.len(), 1, "{}", serve.log());
    let a = got[0].json();
    assert_eq!(a["key"], "alice");
    assert_eq!(a["start_ms"], t0);
    assert_eq!(a["fields"]["large_amount"], 900.0);
    let t = Instant::now();
    while serve.metric("cep_late_events_total", "stream=\"cards\"") < 1.0 {
        assert!(t.elapsed() < Duration::from_secs(10), "{}", serve.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(serve.metric("cep_decode_errors_total", ""), 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A card charge: `{"card": {"id": "c<card>"}, "ts": ts, "amount": amount}`.
fn charge(card: usize, ts: i64, amount: f64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "card": {"id": format!("c{card}")}, "ts": ts, "amount": amount
    }))
    .unwrap()
}

/// Produces `records` (partition, value) to `cards`.
fn send_cards(b: &str, records: &[(i32, Vec<u8>)]) {
    send_to(b, "cards", records);
}

/// Produces `records` (partition, value) to `topic`.
fn send_to(b: &str, topic: &str, records: &[(i32, Vec<u8>)]) {
    let out: Vec<Out> = records
        .iter()
        .map(|(p, v)| Out {
            partition: Some(*p),
            key: None,
            value: v,
        })
        .collect();
    produce(b, topic, &out);
}

/// The config of instance `who` of the test group, with a state directory
/// of its own.
fn instance(b: &str, patterns: &Path, who: &str) -> String {
    config(b, patterns, &format!("instance_id = \"{who}\""), "0s").replace(
        "state_dir = \"state\"",
        &format!("state_dir = \"state-{who}\""),
    )
}

/// State kept in Kafka: an instance on an empty state directory that takes
/// over the tasks continues the partial matches the first instance started.
#[test]
fn a_task_resumes_on_another_instance_from_the_state_topic() {
    let broker = Broker::start();
    let b = broker.brokers();
    create_topic(&b, "cards", 2);
    create_topic(&b, "alerts", 1);
    let dir = scratch("takeover");
    let ev = charge;
    // Each card: a small charge read by the first instance, the large one
    // (within 5 minutes) only by the second.
    let firsts: Vec<(i32, Vec<u8>)> = (0..10)
        .map(|c| ((c % 2) as i32, ev(c, 1_000 + c as i64 * 10, 5.0)))
        .collect();
    let mut seconds: Vec<(i32, Vec<u8>)> = (0..10)
        .map(|c| ((c % 2) as i32, ev(c, 61_000 + c as i64 * 10, 900.0)))
        .collect();
    for p in 0..2 {
        seconds.push((p, ev(100 + p as usize, 90_000_000, 50.0)));
    }
    let send = |records: &[(i32, Vec<u8>)]| send_cards(&b, records);
    let patterns = repo("patterns/fraud");
    let cfg = |who: &str| instance(&b, &patterns, who);
    let mut first = Serve::start(&dir, &cfg("a"));
    first.wait_ready(Duration::from_secs(60));
    let wait = |s: &Serve, what: &dyn Fn(&Serve) -> bool| {
        let t0 = Instant::now();
        while !what(s) {
            assert!(t0.elapsed() < Duration::from_secs(30), "{}", s.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let checkpoints =
        |s: &Serve, kind: &str| s.metric("cep_checkpoints_total", &format!("kind=\"{kind}\""));
    // Half the small charges before the first whole checkpoints, half after:
    // the state the second instance restores is a whole checkpoint and the
    // increments after it.
    send(&firsts[..5]);
    wait(&first, &|s| {
        s.metric("cep_events_in_total", "") >= 5.0 && checkpoints(s, "whole") >= 2.0
    });
    send(&firsts[5..]);
    wait(&first, &|s| s.metric("cep_events_in_total", "") >= 10.0);
    let changes = checkpoints(&first, "changes");
    wait(&first, &|s| checkpoints(s, "changes") >= changes + 4.0);
    // No final checkpoint: the state topic holds what the increments wrote.
    first.signal("-KILL");
    first.wait(Duration::from_secs(30));
    drop(first);

    send(&seconds);
    let mut all: Vec<Vec<u8>> = Vec::new();
    for p in 0..2 {
        for (q, v) in firsts.iter().chain(&seconds) {
            if *q == p {
                all.push(v.clone());
            }
        }
    }
    write_jsonl(&dir.join("events.jsonl"), &all);
    // Partition after partition: a lateness that buffers everything.
    let want = replay(&patterns, &dir.join("events.jsonl"), "10000h");
    assert!(want.len() >= 10, "{} alerts", want.len());

    assert!(!dir.join("state-b").exists());
    let mut second = Serve::start(&dir, &cfg("b"));
    second.wait_ready(Duration::from_secs(60));
    let got = consume_until(&b, "alerts", Duration::from_secs(60), |g| {
        g.len() >= want.len()
    });
    let got_by_id = alerts_by_id(&got);
    assert_eq!(ids(&got_by_id), ids(&want), "\n{}", second.log());
    assert!(
        second.log().contains("restored_tasks=[0, 1]"),
        "{}",
        second.log()
    );
    assert_eq!(second.metric("cep_tasks", ""), 2.0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Three instances in one group on a 6-partition topic, with partial
/// matches that span every rebalance: a second instance joins, the first is
/// killed (SIGKILL), a third joins on an empty state directory, the second
/// leaves (SIGTERM). The union of their alerts is exactly what one
/// uninterrupted run raises (same ids): none lost, none spurious.
#[test]
fn instances_join_die_and_leave_without_losing_or_inventing_alerts() {
    let broker = Broker::start();
    let b = broker.brokers();
    create_topic(&b, "cards", 6);
    create_topic(&b, "alerts", 1);
    let dir = scratch("scale");
    let patterns = dir.join("patterns");
    std::fs::create_dir_all(&patterns).unwrap();
    std::fs::copy(
        repo("patterns/fraud/small_then_large.cep"),
        patterns.join("small_then_large.cep"),
    )
    .unwrap();
    let ev = charge;
    const CARDS: usize = 60;
    // Phase 1: every card's small charge. Phases 2 and 3: ordinary charges.
    // Phase 4: every card's large charge (within 5 minutes), then an event
    // a day later on each partition to close every window.
    let phase = |n: usize| -> Vec<(i32, Vec<u8>)> {
        let mut out: Vec<(i32, Vec<u8>)> = (0..CARDS)
            .map(|c| {
                let (ts, amount) = match n {
                    1 => (1_000, 5.0),
                    2 => (20_000, 50.0),
                    3 => (40_000, 60.0),
                    _ => (60_000, 900.0),
                };
                ((c % 6) as i32, ev(c, ts + c as i64, amount))
            })
            .collect();
        if n == 4 {
            out.extend((0..6).map(|p| (p, ev(1000 + p as usize, 90_000_000, 50.0))));
        }
        out
    };
    let send = |records: &[(i32, Vec<u8>)]| send_cards(&b, records);
    let cfg = |who: &str| instance(&b, &patterns, who);
    let read = |serves: &[&Serve]| -> f64 {
        serves
            .iter()
            .map(|s| s.metric("cep_events_in_total", ""))
            .sum()
    };
    let wait_read = |serves: &[&Serve], n: usize| {
        let t0 = Instant::now();
        while read(serves) < n as f64 {
            assert!(
                t0.elapsed() < Duration::from_secs(90),
                "read {} of {n}",
                read(serves)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // Let a checkpoint cover it.
        std::thread::sleep(Duration::from_millis(1_000));
    };

    send(&phase(1));
    let mut a = Serve::start(&dir, &cfg("a"));
    a.wait_ready(Duration::from_secs(60));
    wait_read(&[&a], CARDS);

    let mut b2 = Serve::start(&dir, &cfg("b"));
    b2.wait_ready(Duration::from_secs(60));
    send(&phase(2));
    wait_read(&[&a, &b2], 2 * CARDS);
    // The tasks that moved to the newcomer left the first instance with a
    // final checkpoint (cooperative: the rebalance waits for it).
    let log = a.log();
    assert!(
        log.contains("task handed over") && log.contains("final_checkpoint=true"),
        "{log}"
    );
    assert!(!log.contains("final_checkpoint=false"), "{log}");

    a.signal("-KILL");
    let _ = a.wait(Duration::from_secs(10));
    send(&phase(3));
    // The survivor takes the dead one's tasks after the session timeout and
    // reads phase 3 everywhere (and any of phase 2 the dead one had not
    // checkpointed): at least its half of phase 2 and all of phase 3.
    wait_read(&[&b2], CARDS / 2 + CARDS);

    let mut c = Serve::start(&dir, &cfg("c"));
    c.wait_ready(Duration::from_secs(60));
    b2.signal("-TERM");
    assert!(b2.wait(Duration::from_secs(30)).success(), "{}", b2.log());
    send(&phase(4));

    let mut all: Vec<Vec<u8>> = Vec::new();
    for p in 0..6 {
        for n in 1..=4 {
            all.extend(
                phase(n)
                    .into_iter()
                    .filter(|(q, _)| *q == p)
                    .map(|(_, v)| v),
            );
        }
    }
    write_jsonl(&dir.join("events.jsonl"), &all);
    let want = replay(&patterns, &dir.join("events.jsonl"), "10000h");
    assert_eq!(want.len(), CARDS, "one match per card");
    let got = consume_until(&b, "alerts", Duration::from_secs(120), |g| {
        alerts_by_id(g).len() >= want.len()
    });
    let got_by_id = alerts_by_id(&got);
    let missing: Vec<_> = ids(&want).difference(&ids(&got_by_id)).cloned().collect();
    let extra: Vec<_> = ids(&got_by_id).difference(&ids(&want)).cloned().collect();
    assert!(missing.is_empty(), "lost {missing:?}\n{}", c.log());
    assert!(extra.is_empty(), "spurious {extra:?}");
    for (id, alert) in &want {
        assert_eq!(&got_by_id[id], alert, "alert {id} differs");
    }
    assert!(!dir.join("state-c").join("x").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Payments keyed (and partitioned) by merchant, a pattern keyed by card:
/// the input repartitions by `card.id` through an internal topic. The
/// alerts equal a replay's, across a SIGKILL in the middle (the records
/// re-produced after it are read again and skipped).
#[test]
fn a_repartitioned_pattern_gives_the_same_alerts_as_replay() {
    use cep::service::repartition::partition_of;

    let broker = Broker::start();
    let b = broker.brokers();
    create_topic(&b, "payments", 3);
    create_topic(&b, "alerts", 1);
    let dir = scratch("repartition");
    let (events, last) = card_lines(12_000, 200, 5);
    // By merchant: a card's charges spread over every partition.
    let by_merchant = |e: &serde_json::Value| -> i32 {
        let m = e["merchant"].as_str().unwrap();
        (m.bytes().map(u32::from).sum::<u32>() % 3) as i32
    };
    let lines: Vec<(i32, Vec<u8>)> = events
        .iter()
        .map(|e| (by_merchant(e), serde_json::to_vec(e).unwrap()))
        .collect();
    let spread: BTreeSet<i32> = events
        .iter()
        .filter(|e| card_of(e) == card_of(&events[0]))
        .map(by_merchant)
        .collect();
    assert!(spread.len() > 1, "a card's events in several partitions");
    // Far-future events from every source partition to every internal
    // partition: every clock passes the data.
    let mut ends = Vec::new();
    for p in 0..3 {
        for r in 0..3 {
            let key = (0..)
                .map(|j| format!("~end-{p}-{j}"))
                .find(|k| partition_of(k, 3) == r)
                .unwrap();
            let mut v: serde_json::Value = serde_json::from_slice(&sentinel(0, last)).unwrap();
            v["card"]["id"] = key.into();
            ends.push((p, serde_json::to_vec(&v).unwrap()));
        }
    }
    let all: Vec<Vec<u8>> = lines.iter().chain(&ends).map(|(_, v)| v.clone()).collect();
    write_jsonl(&dir.join("events.jsonl"), &all);
    let patterns = dir.join("patterns");
    std::fs::create_dir_all(&patterns).unwrap();
    std::fs::copy(
        repo("patterns/fraud/small_then_large.cep"),
        patterns.join("small_then_large.cep"),
    )
    .unwrap();
    let want = replay(&patterns, &dir.join("events.jsonl"), "10000h");
    assert!(want.len() > 20, "{} alerts", want.len());

    let send = |records: &[(i32, Vec<u8>)]| send_to(&b, "payments", records);
    let cfg = config(&b, &patterns, "", "0s").replace(
        "topic = \"cards\"\n# The tests produce each card's events to one partition.\npartitioned_by = \"card.id\"",
        "topic = \"payments\"\nstream = \"cards\"\nrepartition_by = \"card.id\"",
    );
    assert!(cfg.contains("repartition_by"), "{cfg}");
    let half = lines.len() / 2;
    send(&lines[..half]);
    let mut first = Serve::start(&dir, &cfg);
    first.wait_ready(Duration::from_secs(60));
    let t0 = Instant::now();
    while first.metric(
        "cep_events_in_total",
        "topic=\"cep-repartition-cep-test-payments\"",
    ) < half as f64
        || first.metric("cep_checkpoints_total", "kind=\"changes\"") < 3.0
    {
        assert!(t0.elapsed() < Duration::from_secs(60), "{}", first.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    first.signal("-KILL");
    first.wait(Duration::from_secs(30));
    drop(first);
    send(&lines[half..]);
    send(&ends);
    let mut second = Serve::start(&dir, &cfg);
    second.wait_ready(Duration::from_secs(60));
    let got = consume_until(&b, "alerts", Duration::from_secs(90), |g| {
        ids(&alerts_by_id(g)).len() >= want.len()
    });
    let got_by_id = alerts_by_id(&got);
    let (g, w) = (ids(&got_by_id), ids(&want));
    assert_eq!(
        g,
        w,
        "{} missing, {} spurious, of {}; metrics:\n{}",
        w.difference(&g).count(),
        g.difference(&w).count(),
        w.len(),
        second.get("/metrics").map(|m| m.1).unwrap_or_default()
    );
    for (id, a) in &want {
        assert_eq!(&got_by_id[id]["fields"], &a["fields"], "{id}");
    }
    assert_eq!(second.metric("cep_late_events_total", ""), 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}
