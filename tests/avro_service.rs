//! `cep serve` on an Avro topic with a schema registry, against a real
//! broker (nisshi on loopback) and a stand-in registry.
//!
//! No schema registry server installs on these machines, so the test
//! serves the registry's REST protocol itself (`GET /schemas/ids/{id}`,
//! `GET /subjects/{subject}/versions/latest`, basic auth) from a small HTTP
//! server in this file: **a stand-in**, which answers 503 for a while (a
//! registry that is down: records must wait, not be dropped). Records are written with a real Avro
//! encoder in the Confluent wire format, with two versions of a schema on
//! one topic (v2 adds `channel` with a default and drops `country`). The
//! alerts must equal `cep replay` over the same records as JSON (a pattern
//! on the new field sees it `missing` on v1 records); a record with an
//! unknown schema id and one that is not Avro go to the dead-letter topic
//! with their bytes and the reason. Patterns are checked against the
//! subject's latest schema: a pattern reading a field it lacks is refused
//! over the API, and the service refuses to start with one.

use crate::support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use apache_avro::types::{Record, Value as Avro};
use apache_avro::Schema;
use serde_json::json;
use support::*;

const V1: &str = r#"{"type": "record", "name": "Charge", "fields": [
  {"name": "card", "type": {"type": "record", "name": "Card", "fields": [{"name": "id", "type": "string"}]}},
  {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
  {"name": "amount", "type": "double"},
  {"name": "country", "type": "string"}]}"#;

const V2: &str = r#"{"type": "record", "name": "Charge", "fields": [
  {"name": "card", "type": {"type": "record", "name": "Card", "fields": [{"name": "id", "type": "string"}]}},
  {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
  {"name": "amount", "type": "double"},
  {"name": "channel", "type": "string", "default": "web"}]}"#;

const PATTERNS: &str = r#"
pattern small_then_large
  from charges key card.id time ts within 5m
  match small then large
  define small as amount < 10, large as amount > 500
  emit small_amount = small.amount, large_amount = large.amount
end

pattern app_charge
  from charges key card.id time ts
  match x
  define x as channel == "app"
  emit amount = x.amount
end

pattern before_channels
  from charges key card.id time ts
  match x
  define x as channel is missing and amount > 60
  emit amount = x.amount
end
"#;

/// The stand-in registry: schemas 1 and 2, the subject `charges-value`
/// (latest: 2), basic auth `cep:s3cret`; after the first request (the
/// service's start-up check), the next `down` requests answer 503 (the
/// registry is down while records arrive). Returns its port and a request
/// count.
fn registry(down: usize) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            let mut auth = false;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                // Header names are case-insensitive, values are not;
                // base64("cep:s3cret").
                if let Some((name, value)) = line.split_once(':') {
                    auth |= name.eq_ignore_ascii_case("authorization")
                        && value.trim() == "Basic Y2VwOnMzY3JldA==";
                }
                if request.is_empty() {
                    request = line;
                }
            }
            let (status, body) = if (1..=down).contains(&n) {
                (
                    "503 Service Unavailable",
                    json!({"error_code": 50301}).to_string(),
                )
            } else if !auth {
                ("401 Unauthorized", json!({"error_code": 401}).to_string())
            } else if request.starts_with("GET /schemas/ids/1 ") {
                ("200 OK", json!({ "schema": V1 }).to_string())
            } else if request.starts_with("GET /subjects/charges-value/versions/latest ") {
                let latest =
                    json!({ "subject": "charges-value", "version": 2, "id": 2, "schema": V2 });
                ("200 OK", latest.to_string())
            } else if request.starts_with("GET /schemas/ids/2 ") {
                ("200 OK", json!({ "schema": V2 }).to_string())
            } else {
                (
                    "404 Not Found",
                    json!({"error_code": 40403, "message": "Schema not found"}).to_string(),
                )
            };
            let mut s = stream;
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\ncontent-type: application/vnd.schemaregistry.v1+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, hits)
}

/// One charge in the Confluent wire format, and the document it reads as.
fn charge(
    id: u32,
    card: &str,
    ts: i64,
    amount: f64,
    country_or_channel: &str,
) -> (Vec<u8>, serde_json::Value) {
    let schema = Schema::parse_str(if id == 1 { V1 } else { V2 }).unwrap();
    let Schema::Record(rs) = &schema else {
        panic!()
    };
    let mut c = Record::new(&rs.fields[0].schema).unwrap();
    c.put("id", card);
    let mut r = Record::new(&schema).unwrap();
    r.put("card", c);
    r.put("ts", Avro::TimestampMillis(ts));
    r.put("amount", Avro::Double(amount));
    let (field, doc) = if id == 1 {
        (
            "country",
            json!({"card": {"id": card}, "ts": ts, "amount": amount, "country": country_or_channel}),
        )
    } else {
        (
            "channel",
            json!({"card": {"id": card}, "ts": ts, "amount": amount, "channel": country_or_channel}),
        )
    };
    r.put(field, country_or_channel);
    let mut bytes = vec![0u8];
    bytes.extend_from_slice(&id.to_be_bytes());
    bytes.extend(apache_avro::to_avro_datum(&schema, r).unwrap());
    (bytes, doc)
}

fn config(brokers: &str, patterns: &Path, registry: u16) -> String {
    format!(
        r#"
[engine]
lateness = "0s"

[serve]
patterns = "{patterns}"
state_dir = "state"
checkpoint_interval = "300ms"
listen = "127.0.0.1:{{HTTP}}"
api_unauthenticated = true
default_sinks = ["alerts"]
shutdown_timeout = "10s"

[kafka]
brokers = "{brokers}"
group_id = "cep-avro"

[[kafka.inputs]]
topic = "charges"
format = "avro"
schema_registry = {{ url = "http://127.0.0.1:{registry}", username = "cep", password_env = "CEP_TEST_REGISTRY_PASSWORD" }}

[sinks.alerts]
type = "kafka"
topic = "alerts"
"#,
        patterns = patterns.display()
    )
}

#[test]
fn an_avro_topic_with_two_schema_versions_equals_replay_of_the_same_records() {
    let broker = Broker::start();
    let b = broker.brokers();
    for t in ["charges", "alerts", "cep-dead-letter"] {
        create_topic(&b, t, 1);
    }
    let dir = scratch("avro");
    let patterns = dir.join("patterns");
    std::fs::create_dir_all(&patterns).unwrap();
    std::fs::write(patterns.join("charges.cep"), PATTERNS).unwrap();
    let (port, hits) = registry(3);

    let t0 = 1_700_000_000_000i64;
    let mut records: Vec<(Vec<u8>, Option<serde_json::Value>)> = Vec::new();
    for i in 0..300i64 {
        let card = format!("c{}", i % 7);
        let amount = match i % 19 {
            0 => 4.5,
            7 => 720.0,
            _ => 20.0 + (i % 50) as f64,
        };
        // The first half written with v1, the rest with v2.
        let (bytes, doc) = if i < 150 {
            charge(
                1,
                &card,
                t0 + i * 10_000,
                amount,
                ["US", "FR"][(i % 2) as usize],
            )
        } else {
            charge(
                2,
                &card,
                t0 + i * 10_000,
                amount,
                ["web", "app"][(i % 3 == 0) as usize],
            )
        };
        records.push((bytes, Some(doc)));
    }
    // A record of a schema id the registry does not know, and one that is
    // not in the wire format.
    let unknown = {
        let mut r = charge(2, "c1", t0 + 3_000_000, 1.0, "web").0;
        r[1..5].copy_from_slice(&99u32.to_be_bytes());
        r
    };
    records.insert(200, (unknown, None));
    records.insert(250, (b"{\"json\": true}".to_vec(), None));
    // A far-future record: every window closes.
    records.push((charge(2, "~end", t0 + 86_400_000, 1.0, "web").0, None));

    let out: Vec<Out> = records
        .iter()
        .map(|(v, _)| Out {
            partition: Some(0),
            key: None,
            value: v,
        })
        .collect();
    produce(&b, "charges", &out);
    let mut lines = String::new();
    for (_, doc) in &records {
        if let Some(d) = doc {
            lines.push_str(&serde_json::to_string(d).unwrap());
            lines.push('\n');
        }
    }
    let end = charge(2, "~end", t0 + 86_400_000, 1.0, "web").1;
    lines.push_str(&serde_json::to_string(&end).unwrap());
    lines.push('\n');
    std::fs::write(dir.join("events.jsonl"), lines).unwrap();
    let want = replay(&patterns, &dir.join("events.jsonl"), "0s");
    for p in ["small_then_large", "app_charge", "before_channels"] {
        assert!(
            want.values().any(|a| a["pattern"] == p),
            "replay finds {p} alerts"
        );
    }

    let mut serve = Serve::start_with_env(
        &dir,
        &config(&b, &patterns, port),
        &[("CEP_TEST_REGISTRY_PASSWORD", "s3cret")],
    );
    serve.wait_ready(Duration::from_secs(60));
    let got = consume_until(&b, "alerts", Duration::from_secs(90), |g| {
        g.len() >= want.len()
    });
    let got: std::collections::BTreeMap<String, serde_json::Value> = got
        .iter()
        .map(|g| {
            let v = g.json();
            (v["alert_id"].as_str().unwrap().to_string(), v)
        })
        .collect();
    assert_eq!(got.len(), want.len(), "{}", serve.log());
    for (id, a) in &want {
        assert_eq!(got.get(id), Some(a), "alert {id}");
    }
    // v1 records see `channel` missing: before_channels alerts only on
    // them, app_charge only on v2 records.
    assert!(got
        .values()
        .filter(|a| a["pattern"] == "before_channels")
        .all(|a| a["start_ms"].as_i64().unwrap() < t0 + 150 * 10_000));

    let dead = consume_until(&b, "cep-dead-letter", Duration::from_secs(30), |g| {
        g.len() >= 2
    });
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].value, records[200].0, "the original bytes");
    assert!(
        dead[0].headers["cep-reason"].contains("schema id 99 is not in the registry"),
        "{:?}",
        dead[0].headers
    );
    assert!(
        dead[1].headers["cep-reason"].contains("not the Confluent Avro wire format"),
        "{:?}",
        dead[1].headers
    );
    // The latest schema at start, then 3 refusals while down, then each
    // id fetched once.
    let asked = hits.load(Ordering::SeqCst);
    assert!(
        (1 + 3 + 3..=1 + 3 + 3 + 2).contains(&asked),
        "registry requests: {asked}"
    );
    assert!(serve.log().contains("schema registry unavailable"));

    // A pattern on a field the latest schema lacks: refused over the API
    // with the place and a hint, the running set untouched.
    let bad = "pattern misspelt\n  from charges key card.id time ts\n  match x\n  define x as amout > 5\nend\n";
    let (status, body) = http(serve.http, "PUT", "/patterns/misspelt", &[], bad).unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("the schema has no field `amout`"), "{body}");
    assert!(body.contains("did you mean `amount`?"), "{body}");
    let (_, list) = serve.get("/patterns").unwrap();
    assert!(!list.contains("misspelt"), "{list}");
    serve.signal("-TERM");
    assert!(serve.wait(Duration::from_secs(30)).success());

    // The same pattern in the directory: the service does not start.
    let patterns_dir = dir.join("patterns-bad");
    std::fs::create_dir_all(&patterns_dir).unwrap();
    std::fs::write(patterns_dir.join("misspelt.cep"), bad).unwrap();
    let mut refused = Serve::start_with_env(
        &dir,
        &config(&b, &patterns_dir, port),
        &[("CEP_TEST_REGISTRY_PASSWORD", "s3cret")],
    );
    let status = refused.wait(Duration::from_secs(60));
    assert!(!status.success());
    let log = refused.log();
    assert!(log.contains("the schema has no field `amout`"), "{log}");
}
