//! The `cep` binary, run as a user runs it: exit codes, stdout, stderr.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn cep(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cep"))
        .args(args)
        .output()
        .expect("cep runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn scratch(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cep-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const FRAUD: &str = r#"
pattern small_then_large
  from cards key card.id time ts within 5m
  match small then large
  define small as amount < 10, large as amount > 500
  emit small_amount = small.amount, large_amount = large.amount
  on timeout emit small_amount = small.amount
end
"#;

#[test]
fn check_accepts_good_files_and_rejects_bad_ones() {
    let (code, out, _) = cep(&["check", "patterns"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ok: patterns/fraud/small_then_large.cep"),
        "{out}"
    );

    let (code, _, err) = cep(&["check", "tests/bad/several_errors.cep"]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        std::fs::read_to_string("tests/bad/several_errors.err").unwrap()
    );
}

#[test]
fn replay_prints_alerts_late_events_and_a_summary() {
    let patterns = scratch("fraud.cep", FRAUD);
    let input = scratch(
        "cards.jsonl",
        concat!(
            r#"{"card":{"id":"c1"},"ts":1000,"amount":5}"#,
            "\n",
            r#"{"card":{"id":"c2"},"ts":2000,"amount":3}"#,
            "\n",
            r#"{"card":{"id":"c1"},"ts":61000,"amount":900}"#,
            "\n",
            "not json\n",
            r#"{"card":{"id":"c1"},"ts":500,"amount":1}"#,
            "\n",
            r#"{"ts":70000,"amount":1}"#,
            "\n",
        ),
    );
    let late = input.with_file_name("late.jsonl");
    let dead = input.with_file_name("dead.jsonl");
    let (code, out, err) = cep(&[
        "replay",
        "--patterns",
        patterns.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--lateness",
        "0s",
        "--late",
        late.to_str().unwrap(),
        "--dead-letter",
        dead.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let alerts: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(alerts.len(), 2, "{out}");
    let m = alerts.iter().find(|a| a["kind"] == "match").unwrap();
    assert_eq!(m["key"], "c1");
    assert_eq!(m["fields"]["large_amount"], 900);
    assert_eq!(m["start"], "1970-01-01T00:00:01Z");
    let t = alerts.iter().find(|a| a["kind"] == "timeout").unwrap();
    assert_eq!(t["key"], "c2");
    assert!(err.contains("replayed 5 events"), "{err}");
    assert!(
        err.contains(
            "1 unreadable, 1 undecodable (1 pattern rejections), 1 late (1 pattern-level)"
        ),
        "{err}"
    );
    let late = std::fs::read_to_string(late).unwrap();
    assert!(late.contains("\"event_time\":500"), "{late}");
    // The whole late document is kept, not only its key and time.
    assert!(late.contains("\"amount\":1"), "{late}");
    let dead = std::fs::read_to_string(dead).unwrap();
    assert!(
        dead.contains("invalid JSON") && dead.contains("missing key field `card.id`"),
        "{dead}"
    );
}

#[test]
fn replay_reads_stdin_and_the_same_input_gives_the_same_alert_ids() {
    let patterns = scratch("fraud2.cep", FRAUD);
    let input = concat!(
        r#"{"card":{"id":"c1"},"ts":1000,"amount":5}"#,
        "\n",
        r#"{"card":{"id":"c1"},"ts":2000,"amount":700}"#,
        "\n",
    );
    let run = || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cep"))
            .args([
                "replay",
                "--patterns",
                patterns.to_str().unwrap(),
                "--input",
                "-",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let first = run();
    assert!(first.contains("\"alert_id\""), "{first}");
    assert_eq!(first, run());
}

#[test]
fn test_command_reports_a_diff_and_fails_on_a_difference() {
    let (code, out, _) = cep(&["test", "patterns/fraud"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(" passed, 0 failed"), "{out}");

    let bad = scratch(
        "wrong.test.toml",
        &format!(
            "[[case]]\nname = \"wrong expectation\"\nsource = '''{FRAUD}'''\n\
             events = [{{ card = {{ id = \"c1\" }}, ts = 1, amount = 5 }}, {{ card = {{ id = \"c1\" }}, ts = 2, amount = 600 }}]\n\
             expect = [\"match small=1 large=1\"]\n"
        ),
    );
    let (code, out, _) = cep(&["test", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(out.contains("- match small=1 large=1"), "{out}");
    assert!(out.contains("+ match small=1 large=2"), "{out}");
    assert!(out.contains("0 passed, 1 failed"), "{out}");
}

#[test]
fn explain_prints_graphviz() {
    let (code, out, _) = cep(&["explain", "patterns/fraud/small_then_large.cep"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("digraph \"small_then_large\" {"), "{out}");
    assert!(
        out.contains("then small") && out.contains("doublecircle"),
        "{out}"
    );
    let (code, _, err) = cep(&[
        "explain",
        "patterns/fraud/small_then_large.cep",
        "--pattern",
        "nope",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("no pattern named `nope`"), "{err}");
}

/// `cep replay --patterns PATTERNS --input INPUT [extra]`: its alerts.
fn replay_out(patterns: &std::path::Path, input: &std::path::Path, extra: &[&str]) -> String {
    let mut args = vec![
        "replay",
        "--patterns",
        patterns.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (code, out, err) = cep(&args);
    assert_eq!(code, 0, "{err}");
    out
}

/// Four patterns that all need `card.id` and `ts`.
fn four_patterns() -> PathBuf {
    let mut text = String::from(FRAUD);
    for n in 2..=4 {
        text.push_str(&FRAUD.replace("small_then_large", &format!("small_then_large_{n}")));
    }
    scratch("four.cep", &text)
}

fn lines_of(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn each_rejected_record_is_dead_lettered_once_with_its_bytes_and_every_reason() {
    let patterns = four_patterns();
    let mut input: Vec<Vec<u8>> = Vec::new();
    for n in 0..300 {
        let e = format!(
            r#"{{"card":{{"id":"c{}"}},"ts":{},"amount":{}}}"#,
            n % 7,
            1000 + n * 10,
            50 + n
        );
        input.push(e.into_bytes());
    }
    // Broken records, each at a known line: not JSON, not an object, no key
    // (refused by all four patterns), a time that does not parse, bytes
    // that are not UTF-8.
    let broken: [(usize, Vec<u8>); 6] = [
        (10, br#"{"card":{"id":"c1"},"ts":2000,"amount":"#.to_vec()),
        (50, b"[1, 2, 3]".to_vec()),
        (100, br#"{"ts":4000,"amount":5}"#.to_vec()),
        (101, br#"{"ts":4100,"amount":900}"#.to_vec()),
        (
            200,
            br#"{"card":{"id":"c2"},"ts":"yesterday","amount":1}"#.to_vec(),
        ),
        (250, b"{\"card\":{\"id\":\"c\xff\"},\"ts\":1}".to_vec()),
    ];
    for (at, bytes) in &broken {
        input.insert(*at, bytes.clone());
    }
    let mut text = input.join(&b'\n');
    text.push(b'\n');
    let dir = scratch("dl-placeholder", "")
        .parent()
        .unwrap()
        .to_path_buf();
    let path = dir.join("dl-input.jsonl");
    std::fs::write(&path, &text).unwrap();
    let dead = dir.join("dl-dead.jsonl");
    let (code, _, err) = cep(&[
        "replay",
        "--patterns",
        patterns.to_str().unwrap(),
        "--input",
        path.to_str().unwrap(),
        "--dead-letter",
        dead.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let entries = lines_of(&dead);
    assert_eq!(
        entries.len(),
        broken.len(),
        "one entry per record: {entries:#?}"
    );
    for ((at, bytes), e) in broken.iter().zip(&entries) {
        assert_eq!(e["line"], *at as u64 + 1, "{e}");
        assert_eq!(e["input"], path.to_str().unwrap());
        match std::str::from_utf8(bytes) {
            Ok(t) => assert_eq!(e["raw"], t, "{e}"),
            Err(_) => {
                use base64::Engine as _;
                let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
                assert_eq!(e["raw_base64"], b64, "{e}");
                assert!(e.get("raw").is_none());
            }
        }
    }
    let reasons = |i: usize| -> Vec<String> {
        serde_json::from_value(entries[i]["reasons"].clone()).unwrap()
    };
    assert!(reasons(0)[0].contains("invalid JSON"), "{:?}", reasons(0));
    assert!(
        reasons(1)[0].contains("not a JSON object") || reasons(1)[0].contains("object"),
        "{:?}",
        reasons(1)
    );
    // Every pattern's reason, once each.
    let no_key = reasons(2);
    assert_eq!(no_key.len(), 4, "{no_key:?}");
    for n in [
        "small_then_large:",
        "small_then_large_2:",
        "small_then_large_3:",
        "small_then_large_4:",
    ] {
        assert_eq!(
            no_key
                .iter()
                .filter(|r| r.starts_with(&format!("pattern {n}")))
                .count(),
            1,
            "{no_key:?}"
        );
    }
    assert!(no_key[0].contains("card.id"), "{no_key:?}");
    assert!(
        reasons(4).iter().all(|r| r.contains("yesterday")),
        "{:?}",
        reasons(4)
    );
    assert!(
        err.contains("1 unreadable") || err.contains("unreadable"),
        "{err}"
    );

    // Fix the two keyless records in place and replay the dead-letter file:
    // they match as if they had been right from the start (same alert ids).
    let fixed: String = entries
        .iter()
        .filter(|e| e["line"] == 101 || e["line"] == 102)
        .map(|e| {
            let mut e = e.clone();
            let raw = e["raw"]
                .as_str()
                .unwrap()
                .replacen('{', r#"{"card":{"id":"c9"},"#, 1);
            e["raw"] = raw.into();
            format!("{e}\n")
        })
        .collect();
    let fixed_path = dir.join("dl-fixed.jsonl");
    std::fs::write(&fixed_path, &fixed).unwrap();
    let out = replay_out(&patterns, &fixed_path, &["--format", "dead-letter"]);
    let direct: String = lines_of(&fixed_path)
        .iter()
        .map(|e| format!("{}\n", e["raw"].as_str().unwrap()))
        .collect();
    let direct_path = dir.join("dl-direct.jsonl");
    std::fs::write(&direct_path, direct).unwrap();
    let expected = replay_out(&patterns, &direct_path, &[]);
    assert_eq!(out.lines().count(), 4, "one match per pattern: {out}");
    assert_eq!(out, expected);
    assert!(out.contains(r#""key":"c9""#), "{out}");
}

#[test]
fn csv_rows_are_dead_lettered_with_their_header_and_replay_after_a_fix() {
    let patterns = scratch(
        "csv.cep",
        r#"pattern late_flight
  from flights key tailnum time ts
  match x
  define x as delay > 60
  emit delay = x.delay
end
"#,
    );
    let csv = "tailnum,ts,delay\nN1,1000,90\nN2,2000\n,3000,120\nN3,4000,5\n";
    let input = scratch("dl.csv", csv);
    let dead = input.with_file_name("dl-csv-dead.jsonl");
    let (code, out, err) = cep(&[
        "replay",
        "--patterns",
        patterns.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--dead-letter",
        dead.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    let entries = lines_of(&dead);
    assert_eq!(entries.len(), 2, "{entries:#?}");
    assert_eq!(entries[0]["line"], 3);
    assert_eq!(entries[0]["raw"], "N2,2000");
    assert!(entries[0]["reasons"][0]
        .as_str()
        .unwrap()
        .contains("2 fields, the header 3"));
    assert_eq!(entries[1]["line"], 4);
    assert_eq!(entries[1]["raw"], ",3000,120");
    assert_eq!(
        entries[1]["csv_header"],
        serde_json::json!(["tailnum", "ts", "delay"])
    );
    assert!(entries[1]["reasons"][0]
        .as_str()
        .unwrap()
        .contains("tailnum"));

    let mut e = entries[1].clone();
    e["raw"] = "N9,3000,120".into();
    let fixed = input.with_file_name("dl-csv-fixed.jsonl");
    std::fs::write(&fixed, format!("{e}\n")).unwrap();
    let out = replay_out(&patterns, &fixed, &["--format", "dead-letter"]);
    let direct = scratch("dl-direct.csv", "tailnum,ts,delay\nN9,3000,120\n");
    let expected = replay_out(&patterns, &direct, &[]);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert_eq!(out, expected);
}

#[test]
fn why_tells_event_by_event_what_the_pattern_did_with_one_key() {
    let pattern = scratch(
        "why.cep",
        "pattern small_then_large\n  from cards key card time ts within 5m\n  skip past last\n  match small then large\n  define small as amount < 10, large as amount > 500\nend\n",
    );
    let events = scratch(
        "why.jsonl",
        concat!(
            "{\"card\":\"c1\",\"ts\":1000,\"amount\":432}\n",
            "{\"card\":\"c1\",\"ts\":2000,\"amount\":5}\n",
            "{\"card\":\"c2\",\"ts\":2500,\"amount\":5}\n",
            "{\"card\":\"c1\",\"ts\":3000,\"amount\":432}\n",
            "{\"card\":\"c1\",\"ts\":4000,\"amount\":7}\n",
            "{\"card\":\"c1\",\"ts\":5000,\"amount\":900}\n",
            "{\"card\":\"c1\",\"ts\":6000,\"amount\":3}\n",
            "{\"card\":\"c1\",\"ts\":900000,\"amount\":50}\n",
        ),
    );
    let (p, e) = (pattern.to_str().unwrap(), events.to_str().unwrap());
    let (code, out, err) = cep(&["why", p, "--key", "c1", "--input", e]);
    assert_eq!(code, 0, "{err}");
    for line in [
        "event #0 at 1970-01-01T00:00:01Z",
        "  no run started: small: amount < 10 was 432 < 10",
        "  run 1 started: small",
        "  run 1 waits for large, not this event: amount > 500 was 432 > 500",
        "  run 3 started: small",
        "  run 1 advanced: large",
        "  run 1 MATCHED: alert",
        "  run 3 dropped by the skip strategy after run 1's match",
        "  run 5 expired: its window closed 594s ago",
        "7 event(s) of key `c1` matched in order, 0 late, 1 match(es) of `small_then_large`",
    ] {
        assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
    }
    // c2's events are not told.
    assert_eq!(out.matches("event #").count(), 7, "{out}");

    let (code, out, _) = cep(&["why", p, "--key", "c1", "--input", e, "--json"]);
    assert_eq!(code, 0);
    let notes: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(notes.contains(&serde_json::json!(
        {"note": "rejected", "run": 1, "var": "large", "why": "amount > 500 was 432 > 500"}
    )));
    assert!(notes.contains(&serde_json::json!({"note": "matched", "run": 1})));

    let strict = scratch(
        "why_strict.cep",
        "pattern strict_pair\n  from cards key card time ts within 5m\n  match small next not refund next large\n  define small as amount < 10, refund as amount < 0, large as amount > 500\nend\n",
    );
    let events = scratch(
        "why_strict.jsonl",
        concat!(
            "{\"card\":\"c1\",\"ts\":1000,\"amount\":5}\n",
            "{\"card\":\"c1\",\"ts\":2000,\"amount\":50}\n",
            "{\"card\":\"c1\",\"ts\":3000,\"amount\":5}\n",
            "{\"card\":\"c1\",\"ts\":4000,\"amount\":-5}\n",
        ),
    );
    let (s, e) = (strict.to_str().unwrap(), events.to_str().unwrap());
    let (_, out, _) = cep(&["why", s, "--key", "c1", "--input", e]);
    for line in [
        "  run 0: strict contiguity (`next`) broken",
        "  run 0 ended: nothing left to wait for",
        "  run 2: the event matches `not refund`, which closes that way",
    ] {
        assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
    }
    // An event behind the watermark never reaches the pattern: said so.
    let late = scratch(
        "why_late.jsonl",
        concat!(
            "{\"card\":\"c1\",\"ts\":5000,\"amount\":5}\n",
            "{\"card\":\"c1\",\"ts\":2000,\"amount\":900}\n",
        ),
    );
    let (_, out, _) = cep(&["why", p, "--key", "c1", "--input", late.to_str().unwrap()]);
    assert!(
        out.lines().any(|l| l
            == "late event at 1970-01-01T00:00:02Z: behind the watermark 1970-01-01T00:00:05Z by 3s, never matched (allow more lateness)"),
        "{out}"
    );
    assert!(
        out.contains("1 event(s) of key `c1` matched in order, 1 late"),
        "{out}"
    );
    let (code, _, err) = cep(&["why", s, "--pattern", "nope", "--key", "c1", "--input", e]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no pattern `nope`"), "{err}");
}

/// `why` on a history pattern: each refusal shows what the key's history
/// answered (too little history is null; a known country is not new).
#[test]
fn why_shows_what_the_keys_history_answered() {
    let pattern = scratch(
        "why-history.cep",
        "pattern new_country_then_large\n  from cards key card time ts within 1h\n  match first_use then large\n  define\n    first_use as country not seen in 90d with at least 2 events,\n    large as amount > 500 and amount > 3 * avg(amount) over 30d\nend\n",
    );
    let events = scratch(
        "why-history.jsonl",
        concat!(
            "{\"card\":\"c1\",\"ts\":1000,\"amount\":20,\"country\":\"US\"}\n",
            "{\"card\":\"c1\",\"ts\":2000,\"amount\":30,\"country\":\"US\"}\n",
            "{\"card\":\"c1\",\"ts\":3000,\"amount\":40,\"country\":\"US\"}\n",
            "{\"card\":\"c1\",\"ts\":4000,\"amount\":5,\"country\":\"FR\"}\n",
            "{\"card\":\"c1\",\"ts\":5000,\"amount\":900,\"country\":\"FR\"}\n",
        ),
    );
    let (p, e) = (pattern.to_str().unwrap(), events.to_str().unwrap());
    let (code, out, err) = cep(&["why", p, "--key", "c1", "--input", e]);
    assert_eq!(code, 0, "{err}");
    for line in [
        "  no run started: first_use: country not seen in 90d with at least 2 events was null",
        "  no run started: first_use: country not seen in 90d with at least 2 events was false",
        "  run 3 started: first_use",
        "  run 3 advanced: large",
        "  run 3 MATCHED: alert",
    ] {
        assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
    }
}
