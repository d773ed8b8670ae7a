//! Avro container files through `cep replay`, written with a real Avro
//! encoder (`apache-avro`): the same events as JSON lines give the same
//! alerts, byte for byte; nested records, unions with null, enums,
//! `timestamp-millis` and decimals read as documented; a field the writer's
//! schema lacks is `missing`; a damaged file's records go to the dead-letter
//! output with the reason.

use std::path::{Path, PathBuf};
use std::process::Command;

use apache_avro::types::{Record, Value as Avro};
use apache_avro::{Codec, Schema, Writer};
use serde_json::{json, Value};

const SCHEMA: &str = r#"{
  "type": "record", "name": "Charge", "namespace": "cards",
  "fields": [
    {"name": "card", "type": {"type": "record", "name": "Card",
      "fields": [{"name": "id", "type": "string"}]}},
    {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal",
      "precision": 10, "scale": 2}},
    {"name": "merchant", "type": ["null", "string"], "default": null},
    {"name": "country", "type": {"type": "enum", "name": "Country",
      "symbols": ["US", "FR", "DE"]}}
  ]
}"#;

const PATTERNS: &str = r#"
pattern small_then_large
  from cards key card.id time ts within 5m
  match small then large
  define small as amount < 10, large as amount > 500
  emit small_amount = small.amount, large_amount = large.amount,
       merchant = large.merchant, country = large.country
  on timeout emit small_amount = small.amount
end

pattern unknown_merchant_abroad
  from cards key card.id time ts
  match x
  define x as merchant is null and country != "US" and channel is missing
  emit country = x.country, at = x.ts
end
"#;

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("cep-avro-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// (card, ts, cents, merchant, country)
fn charges() -> Vec<(String, i64, i64, Option<String>, &'static str)> {
    let countries = ["US", "US", "FR", "US", "DE"];
    (0..400)
        .map(|i: i64| {
            let cents = match i % 23 {
                0 => 499,     // small
                13 => 75_000, // large, the same card 260 s later
                _ => 2_000 + (i * 37) % 30_000,
            };
            let merchant = (i % 11 != 0).then(|| format!("m{:02}", i % 17));
            (
                format!("c{}", i % 13),
                1_700_000_000_000 + i * 20_000,
                cents,
                merchant,
                countries[(i % 5) as usize],
            )
        })
        .collect()
}

fn write_avro(path: &Path, codec: Codec) {
    let schema = Schema::parse_str(SCHEMA).unwrap();
    let mut w = Writer::with_codec(&schema, Vec::new(), codec);
    let Schema::Record(rs) = &schema else {
        panic!()
    };
    let card_schema = &rs.fields[0].schema;
    for (card, ts, cents, merchant, country) in charges() {
        let mut card_rec = Record::new(card_schema).unwrap();
        card_rec.put("id", card);
        let mut r = Record::new(&schema).unwrap();
        r.put("card", card_rec);
        r.put("ts", Avro::TimestampMillis(ts));
        let unscaled = num_to_be_bytes(cents);
        r.put("amount", Avro::Decimal(unscaled.into()));
        r.put(
            "merchant",
            match merchant {
                Some(m) => Avro::Union(1, Box::new(Avro::String(m))),
                None => Avro::Union(0, Box::new(Avro::Null)),
            },
        );
        let symbol = ["US", "FR", "DE"]
            .iter()
            .position(|c| *c == country)
            .unwrap();
        r.put("country", Avro::Enum(symbol as u32, country.to_string()));
        w.append(r).unwrap();
    }
    std::fs::write(path, w.into_inner().unwrap()).unwrap();
}

/// Minimal big-endian two's complement bytes of `n`.
fn num_to_be_bytes(n: i64) -> Vec<u8> {
    let bytes = n.to_be_bytes();
    let mut start = 0;
    while start < 7
        && ((bytes[start] == 0 && bytes[start + 1] & 0x80 == 0)
            || (bytes[start] == 0xff && bytes[start + 1] & 0x80 != 0))
    {
        start += 1;
    }
    bytes[start..].to_vec()
}

/// The same events as JSON lines, each line exactly the document the Avro
/// record reads as (so alert ids, which hash the record, agree too).
fn write_json(path: &Path) {
    let mut text = String::new();
    for (card, ts, cents, merchant, country) in charges() {
        let doc = json!({
            "card": {"id": card},
            "ts": ts,
            "amount": cents as f64 / 100.0,
            "merchant": merchant,
            "country": country,
        });
        text.push_str(&serde_json::to_string(&doc).unwrap());
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

fn replay(patterns: &Path, input: &Path, extra: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cep"))
        .args(["replay", "--patterns"])
        .arg(patterns)
        .arg("--input")
        .arg(input)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_avro_file_gives_the_alerts_of_the_same_events_as_json() {
    let d = dir();
    let patterns = d.join("p.cep");
    std::fs::write(&patterns, PATTERNS).unwrap();
    let (avro, deflated, jsonl) = (d.join("c.avro"), d.join("d.avro"), d.join("c.jsonl"));
    write_avro(&avro, Codec::Null);
    write_avro(&deflated, Codec::Deflate(Default::default()));
    write_json(&jsonl);
    let (want, _) = replay(&patterns, &jsonl, &[]);
    let (got, _) = replay(&patterns, &avro, &[]);
    assert_eq!(got, want);
    let (got, _) = replay(&patterns, &deflated, &[]);
    assert_eq!(got, want);

    let alerts: Vec<Value> = want
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let large = alerts
        .iter()
        .find(|a| a["pattern"] == "small_then_large" && a["kind"] == "match")
        .expect("a small then large match");
    // Decimal 750.00, enum symbol, union branch.
    assert_eq!(large["fields"]["large_amount"], json!(750.0));
    assert!(large["fields"]["country"].is_string());
    let abroad: Vec<&Value> = alerts
        .iter()
        .filter(|a| a["pattern"] == "unknown_merchant_abroad")
        .collect();
    // i % 11 == 0 has no merchant, i % 5 in {2, 4} is abroad.
    let expected = charges()
        .iter()
        .filter(|c| c.3.is_none() && c.4 != "US")
        .count();
    assert!(expected > 0);
    assert_eq!(abroad.len(), expected, "null union and missing field");
    // timestamp-millis reads as epoch milliseconds.
    assert!(abroad[0]["fields"]["at"].as_i64().unwrap() >= 1_700_000_000_000);
}

#[test]
fn a_damaged_avro_file_is_dead_lettered_with_the_reason() {
    let d = dir();
    let patterns = d.join("p2.cep");
    std::fs::write(&patterns, PATTERNS).unwrap();
    let good = d.join("good.avro");
    write_avro(&good, Codec::Null);
    let mut bytes = std::fs::read(&good).unwrap();
    // Cut the last block short: its records cannot be decoded.
    bytes.truncate(bytes.len() - 40);
    let bad = d.join("bad.avro");
    std::fs::write(&bad, bytes).unwrap();
    let dead = d.join("dead.jsonl");
    let (_, err) = replay(&patterns, &bad, &["--dead-letter", dead.to_str().unwrap()]);
    assert!(err.contains("1 unreadable"), "{err}");
    let text = std::fs::read_to_string(&dead).unwrap();
    let entry: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert!(
        entry.to_string().contains("undecodable Avro record"),
        "{entry}"
    );
}

fn check(pattern: &str, schema_arg: &str) -> (i32, String) {
    let d = dir();
    let p = d.join(format!("check-{}.cep", pattern.len()));
    std::fs::write(&p, pattern).unwrap();
    let avsc = d.join("charge.avsc");
    std::fs::write(&avsc, SCHEMA).unwrap();
    let schema = schema_arg.replace("FILE", avsc.to_str().unwrap());
    let out = Command::new(env!("CARGO_BIN_EXE_cep"))
        .arg("check")
        .arg(&p)
        .args(["--schema", &schema])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// With the schema at hand, what used to read silently as a missing field
/// is an error with a hint: a misspelt field, a misspelt variable in a
/// condition, a literal of the wrong type, an enum symbol that does not
/// exist, a field of a variable that the schema lacks.
#[test]
fn check_with_a_schema_finds_what_would_never_match() {
    let good = PATTERNS
        .split("pattern unknown_merchant_abroad")
        .next()
        .unwrap();
    let (code, out) = check(good, "FILE");
    assert_eq!(code, 0, "{out}");
    // `channel is missing` is always true for these records: flagged.
    let (code, out) = check(PATTERNS, "FILE");
    assert_eq!(code, 1);
    assert!(out.contains("the schema has no field `channel`"), "{out}");
    // Only the patterns of another stream: nothing to check.
    let (code, _) = check(
        "pattern p from flights key tailnum time time_hour match x define x as dep_delay > 60 end\n",
        "cards=FILE",
    );
    assert_eq!(code, 0);

    let bad = r#"
pattern small_then_large
  from cards key card.id time ts within 5m
  match small then large
  define
    small as amout < 10,
    large as amount > smal.amount and country == "GB" and merchant == 5
  emit where = large.cuntry
end
"#;
    let (code, out) = check(bad, "cards=FILE");
    assert_eq!(code, 1, "{out}");
    for expected in [
        "the schema has no field `amout`",
        "did you mean `amount`?",
        "the schema has no field `smal`",
        "did you mean the variable `small`?",
        "\"GB\" is not a symbol of the enum",
        "symbols: US, FR, DE",
        "compared with a number, but the schema says the field is a string",
        "the schema has no field `cuntry`",
        "did you mean `country`?",
        "5 errors in this file",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in\n{out}");
    }
    // The caret points at the misspelt field.
    assert!(out.contains(":6:14"), "{out}");
}

#[test]
fn an_avro_record_a_pattern_refuses_is_dead_lettered_as_json() {
    // Keyed by `merchant`, which is null in every eleventh record: those
    // records cannot be decoded for the pattern. (This used to stop the
    // replay: a refused record was assumed to be JSON text or a CSV row.)
    let d = dir();
    let patterns = d.join("by_merchant.cep");
    std::fs::write(
        &patterns,
        "pattern by_merchant\n  from cards key merchant time ts\n  match x\n  define x as amount > 500\nend\n",
    )
    .unwrap();
    let input = d.join("refused.avro");
    write_avro(&input, Codec::Null);
    let dead = d.join("refused-dead.jsonl");
    let (_, err) = replay(
        &patterns,
        &input,
        &["--dead-letter", dead.to_str().unwrap()],
    );
    let refused = charges().iter().filter(|c| c.3.is_none()).count();
    assert!(err.contains(&format!("{refused} undecodable")), "{err}");
    let text = std::fs::read_to_string(&dead).unwrap();
    assert_eq!(text.lines().count(), refused);
    let entry: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert!(
        entry.to_string().contains("missing key field `merchant`"),
        "{entry}"
    );
    assert!(
        entry.to_string().contains("card"),
        "the record's JSON is kept: {entry}"
    );
}
