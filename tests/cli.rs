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
