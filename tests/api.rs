//! The pattern REST API of `cep serve`: real HTTP, a real broker, the real
//! binary. Patterns are added, replaced, switched and deleted while events
//! flow; bad requests change nothing; a restart loads what was running.

use crate::support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::*;

const TOKEN: &str = "test-token-123";

const SMALL_THEN_LARGE: &str = r#"pattern small_then_large
  from cards key card.id time ts within 5m
  match small then large
  define small as amount < 10, large as amount > 500
  emit large_amount = large.amount
end
"#;

const BIG: &str = r#"pattern big
  from cards key card.id time ts
  match x
  define x as amount > 900
  emit amount = x.amount
end
"#;

struct Api<'a> {
    serve: &'a Serve,
}

impl Api<'_> {
    fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (u16, serde_json::Value) {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Content-Type", "text/plain")];
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        let (status, text) = http(self.serve.http, method, path, &headers, body).expect("answered");
        let v =
            serde_json::from_str(&text).unwrap_or_else(|_| serde_json::Value::String(text.clone()));
        (status, v)
    }
}

fn event(n: i64, card: &str, amount: f64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "card": {"id": card}, "ts": 1_700_000_000_000i64 + n * 1000, "amount": amount
    }))
    .unwrap()
}

fn send(b: &str, events: &[Vec<u8>]) {
    let out: Vec<Out> = events
        .iter()
        .map(|v| Out {
            partition: None,
            key: None,
            value: v,
        })
        .collect();
    produce(b, "cards", &out);
}

fn wait_for(what: &str, serve: &Serve, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{what}\n{}",
            serve.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn config(b: &str) -> String {
    format!(
        r#"
[serve]
patterns = "patterns"
listen = "127.0.0.1:{{HTTP}}"
default_sinks = ["alerts"]
api_token = "{TOKEN}"
[kafka]
brokers = "{b}"
[[kafka.inputs]]
topic = "cards"
[sinks.alerts]
type = "kafka"
topic = "alerts"
"#
    )
}

fn alerts_of(b: &str, n: usize) -> Vec<serde_json::Value> {
    consume_until(b, "alerts", Duration::from_secs(60), |g| g.len() >= n)
        .iter()
        .map(Got::json)
        .collect()
}

#[test]
fn patterns_change_over_http_while_events_flow() {
    let broker = Broker::start();
    let b = broker.brokers();
    create_topic(&b, "cards", 1);
    create_topic(&b, "alerts", 1);
    let dir = scratch("api");
    std::fs::create_dir_all(dir.join("patterns")).unwrap();
    std::fs::write(dir.join("patterns/small_then_large.cep"), SMALL_THEN_LARGE).unwrap();
    let mut serve = Serve::start(&dir, &config(&b));
    serve.wait_ready(Duration::from_secs(60));
    let api = Api { serve: &serve };

    let (s, v) = api.call("GET", "/patterns", None, "");
    assert_eq!(s, 200);
    assert_eq!(v["patterns"][0]["name"], "small_then_large");
    assert_eq!(v["patterns"][0]["version"], 1);
    assert_eq!(v["patterns"][0]["mode"], "active");

    // No token, a wrong token: 401, nothing changes.
    assert_eq!(api.call("PUT", "/patterns/big", None, BIG).0, 401);
    assert_eq!(api.call("PUT", "/patterns/big", Some("nope"), BIG).0, 401);
    assert_eq!(
        api.call("DELETE", "/patterns/small_then_large", None, "").0,
        401
    );

    // An invalid pattern: 400 with line and column; nothing changes.
    let bad = "pattern big\n  from cards key card.id time ts\n  match x\n  define x as amount >> 900\nend\n";
    let (s, v) = api.call("PUT", "/patterns/big", Some(TOKEN), bad);
    assert_eq!(s, 400, "{v}");
    let d = &v["diagnostics"][0];
    assert_eq!(d["line"], 4, "{v}");
    assert!(d["column"].as_u64().unwrap() > 1);
    assert!(d["snippet"].as_str().unwrap().contains('^'));
    let (s, v) = api.call("POST", "/patterns/validate", None, bad);
    assert_eq!((s, &v["valid"]), (200, &serde_json::json!(false)));
    assert_eq!(api.call("GET", "/patterns/big", None, "").0, 404);
    assert!(!dir.join("patterns/big.cep").exists());

    // Events flow; then `big` is added: it matches from the next record on.
    let first: Vec<Vec<u8>> = vec![
        event(0, "a", 5.0),
        event(1, "b", 950.0),
        event(2, "a", 600.0),
    ];
    send(&b, &first);
    wait_for("first batch read", &serve, || {
        serve.metric("cep_events_in_total", "") >= 3.0
    });
    let (s, v) = api.call("PUT", "/patterns/big", Some(TOKEN), BIG);
    assert_eq!((s, &v["version"]), (200, &serde_json::json!(1)), "{v}");
    assert!(dir.join("patterns/big.cep").exists());
    let second: Vec<Vec<u8>> = vec![event(3, "c", 999.0), event(4, "d", 1.0)];
    send(&b, &second);
    let got = alerts_of(&b, 2);
    assert_eq!(got.len(), 2, "{got:?}");
    let by = |p: &str| {
        got.iter()
            .filter(|a| a["pattern"] == p)
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        by("small_then_large").len(),
        1,
        "the untouched pattern kept its run"
    );
    assert_eq!(
        by("big").len(),
        1,
        "big saw only records after it was added"
    );
    assert_eq!(by("big")[0]["fields"]["amount"], 999.0);

    // Replace: a new version, whose alerts carry it.
    let v2 = SMALL_THEN_LARGE.replace("within 5m", "within 10m");
    let (s, v) = api.call("PUT", "/patterns/small_then_large", Some(TOKEN), &v2);
    assert_eq!((s, &v["version"]), (200, &serde_json::json!(2)), "{v}");
    let (s, v) = api.call("PUT", "/patterns/small_then_large", Some(TOKEN), &v2);
    assert_eq!(
        (s, &v["changed"]),
        (200, &serde_json::json!(false)),
        "same source: no new version"
    );
    send(
        &b,
        &[
            event(5, "e", 2.0),
            event(6, "e", 700.0),
            event(7, "z", 50.0),
        ],
    );
    let got = alerts_of(&b, 3);
    let last = got
        .iter()
        .find(|a| a["fields"]["large_amount"] == 700.0)
        .expect("match");
    assert_eq!(last["version"], 2);

    // Shadow mode: matched and counted, never emitted; then delete.
    let (s, _) = api.call(
        "PUT",
        "/patterns/big/mode",
        Some(TOKEN),
        r#"{"mode":"shadow"}"#,
    );
    assert_eq!(s, 200);
    assert_eq!(
        api.call("GET", "/patterns/big", None, "").1["mode"],
        "shadow"
    );
    let (s, dot) = api.call("GET", "/patterns/big/graph", None, "");
    assert_eq!(s, 200);
    assert!(dot.as_str().unwrap().starts_with("digraph"));
    assert_eq!(api.call("DELETE", "/patterns/big", Some(TOKEN), "").0, 204);
    assert_eq!(api.call("GET", "/patterns/big", None, "").0, 404);
    assert!(!dir.join("patterns/big.cep").exists());

    // A restart loads exactly what was running.
    serve.signal("-TERM");
    assert!(
        serve.wait(Duration::from_secs(30)).success(),
        "{}",
        serve.log()
    );
    let mut serve = Serve::start(&dir, &config(&b));
    serve.wait_ready(Duration::from_secs(60));
    let api = Api { serve: &serve };
    let (_, v) = api.call("GET", "/patterns", None, "");
    let list = v["patterns"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{v}");
    assert_eq!(list[0]["name"], "small_then_large");
    assert_eq!(list[0]["version"], 2);
    let (_, one) = api.call("GET", "/patterns/small_then_large", None, "");
    assert!(one["source"].as_str().unwrap().contains("within 10m"));
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}

/// `%`-encodes every byte outside `[A-Za-z0-9_-]`, as a client puts a
/// name in a URL path.
fn encode(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn pattern_names_cannot_reach_outside_the_patterns_directory() {
    let broker = Broker::start();
    let b = broker.brokers();
    create_topic(&b, "cards", 1);
    let dir = scratch("api-names");
    std::fs::create_dir_all(dir.join("patterns")).unwrap();
    let mut serve = Serve::start(&dir, &config(&b));
    serve.wait_ready(Duration::from_secs(60));
    let api = Api { serve: &serve };
    let outside = dir.join("evil_escape");
    let escape = format!("../../../../../../../..{}", outside.display());
    let absolute = outside.display().to_string();
    let long = "p".repeat(129);
    let cases: [(&str, &str); 9] = [
        (&escape, "`/` or `\\`"),
        (&absolute, "`/` or `\\`"),
        ("..", "`..`"),
        ("a..b", "`..`"),
        (".cep-registry", "start with `.`"),
        ("a\\b", "`/` or `\\`"),
        ("c:evil", "`:`"),
        ("tab\there", "control characters"),
        (&long, "longer than 128 bytes"),
    ];
    for (name, why) in cases {
        // A valid pattern of that (back-quoted) name: only the name is wrong.
        let body = BIG.replace("pattern big", &format!("pattern `{name}`"));
        let (s, v) = api.call(
            "PUT",
            &format!("/patterns/{}", encode(name)),
            Some(TOKEN),
            &body,
        );
        assert_eq!(s, 400, "{name:?}: {v}");
        let error = v["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("pattern name") && error.contains(why),
            "{name:?}: {error}"
        );
    }
    assert!(!outside.with_extension("cep").exists());
    assert!(!Path::new("/evil_escape.cep").exists());
    let written: Vec<_> = std::fs::read_dir(dir.join("patterns"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(written.is_empty(), "{written:?}");
    // The longest allowed name and ordinary punctuation still work.
    let ok = "p".repeat(128);
    let body = BIG.replace("pattern big", &format!("pattern `{ok}`"));
    let (s, v) = api.call("PUT", &format!("/patterns/{ok}"), Some(TOKEN), &body);
    assert_eq!(s, 200, "{v}");
    assert!(dir.join(format!("patterns/{ok}.cep")).exists());
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}

#[test]
fn changes_are_refused_without_a_configured_token() {
    let broker = Broker::start();
    let b = broker.brokers();
    create_topic(&b, "cards", 1);
    let dir = scratch("api-closed");
    std::fs::create_dir_all(dir.join("patterns")).unwrap();
    let cfg = config(&b).replace(&format!("api_token = \"{TOKEN}\"\n"), "");
    let mut serve = Serve::start(&dir, &cfg);
    serve.wait_ready(Duration::from_secs(60));
    let api = Api { serve: &serve };
    let (s, v) = api.call("PUT", "/patterns/big", Some("anything"), BIG);
    assert_eq!(s, 403, "{v}");
    assert!(v["error"].as_str().unwrap().contains("api_token"));
    // Reading and validating still work.
    assert_eq!(api.call("GET", "/patterns", None, "").0, 200);
    assert_eq!(
        api.call("POST", "/patterns/validate", None, BIG).1["valid"],
        true
    );
    // Oversized bodies are refused.
    let huge = "x".repeat(100_000);
    assert_eq!(api.call("POST", "/patterns/validate", None, &huge).0, 413);
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}

#[test]
fn files_edited_in_the_directory_are_reloaded_all_or_nothing() {
    let broker = Broker::start();
    let b = broker.brokers();
    create_topic(&b, "cards", 1);
    create_topic(&b, "alerts", 1);
    let dir = scratch("api-reload");
    let patterns = dir.join("patterns");
    std::fs::create_dir_all(&patterns).unwrap();
    std::fs::write(patterns.join("small_then_large.cep"), SMALL_THEN_LARGE).unwrap();
    let mut serve = Serve::start(&dir, &config(&b));
    serve.wait_ready(Duration::from_secs(60));
    let api = Api { serve: &serve };

    // A new file and an edited one: both taken, the edit as version 2.
    std::fs::write(patterns.join("big.cep"), BIG).unwrap();
    std::fs::write(
        patterns.join("small_then_large.cep"),
        SMALL_THEN_LARGE.replace("within 5m", "within 7m"),
    )
    .unwrap();
    assert_eq!(api.call("POST", "/patterns/reload", None, "").0, 401);
    let (s, v) = api.call("POST", "/patterns/reload", Some(TOKEN), "");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["added"], serde_json::json!(["big"]));
    assert_eq!(v["replaced"], serde_json::json!(["small_then_large"]));
    assert_eq!(
        api.call("GET", "/patterns/small_then_large", None, "").1["version"],
        2
    );

    // A broken file: rejected with its line and column, nothing changes.
    std::fs::write(
        patterns.join("broken.cep"),
        "pattern broken\n  from cards\n  match x y\nend\n",
    )
    .unwrap();
    std::fs::remove_file(patterns.join("big.cep")).unwrap();
    let (s, v) = api.call("POST", "/patterns/reload", Some(TOKEN), "");
    assert_eq!(s, 400, "{v}");
    let d = &v["diagnostics"][0];
    assert!(d["snippet"].as_str().unwrap().contains("broken.cep"), "{v}");
    assert!(d["line"].as_u64().unwrap() >= 1);
    let (_, list) = api.call("GET", "/patterns", None, "");
    assert_eq!(
        list["patterns"].as_array().unwrap().len(),
        2,
        "big is still running: {list}"
    );

    // Events still flow through what runs.
    send(&b, &[event(0, "q", 950.0), event(1, "q", 1.0)]);
    let got = alerts_of(&b, 1);
    assert_eq!(got[0]["pattern"], "big");

    // Fixed: the deletion of big.cep takes effect.
    std::fs::remove_file(patterns.join("broken.cep")).unwrap();
    let (s, v) = api.call("POST", "/patterns/reload", Some(TOKEN), "");
    assert_eq!(
        (s, &v["removed"]),
        (200, &serde_json::json!(["big"])),
        "{v}"
    );
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}

fn cep_patterns(serve: &Serve, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cep"))
        .arg("patterns")
        .args(["--server", &format!("http://127.0.0.1:{}", serve.http)])
        .args(args)
        .env("CEP_API_TOKEN", TOKEN)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_cli_client_drives_the_api() {
    let broker = Broker::start();
    let b = broker.brokers();
    create_topic(&b, "cards", 1);
    let dir = scratch("api-cli");
    std::fs::create_dir_all(dir.join("patterns")).unwrap();
    let mut serve = Serve::start(&dir, &config(&b));
    serve.wait_ready(Duration::from_secs(60));
    std::fs::write(dir.join("big.cep"), BIG).unwrap();
    std::fs::write(
        dir.join("bad.cep"),
        "pattern big\n  from cards\n  match\nend\n",
    )
    .unwrap();
    let big = dir.join("big.cep");
    let bad = dir.join("bad.cep");

    let (code, out, err) = cep_patterns(&serve, &["put", "big", big.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("\"version\": 1"), "{out}");
    let (code, out, _) = cep_patterns(&serve, &["list"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"name\": \"big\""), "{out}");
    let (code, _, err) = cep_patterns(&serve, &["validate", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("-->") && err.contains('^'),
        "diagnostics as the CLI prints them: {err}"
    );
    let (code, _, err) = cep_patterns(&serve, &["put", "big", bad.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    let (code, out, _) = cep_patterns(&serve, &["graph", "big"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("digraph"));
    let (code, out, err) = cep_patterns(&serve, &["mode", "big", "shadow"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, _) = cep_patterns(&serve, &["delete", "big"]);
    assert_eq!(code, 0);
    let (code, _, err) = cep_patterns(&serve, &["get", "big"]);
    assert_eq!(code, 1);
    assert!(err.contains("no pattern named `big`"), "{err}");
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}

/// `/openapi.json` describes exactly the routes served: every documented
/// method of every documented path is routed, every other method of those
/// paths is not.
#[test]
fn openapi_describes_exactly_the_routes_served() {
    let broker = Broker::start();
    let b = broker.brokers();
    create_topic(&b, "cards", 1);
    let dir = scratch("api-openapi");
    std::fs::create_dir_all(dir.join("patterns")).unwrap();
    std::fs::write(dir.join("patterns/big.cep"), BIG).unwrap();
    let mut serve = Serve::start(&dir, &config(&b));
    serve.wait_ready(Duration::from_secs(60));
    let api = Api { serve: &serve };
    let (s, doc) = api.call("GET", "/openapi.json", None, "");
    assert_eq!(s, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 10);
    for (path, item) in paths {
        // A name that exists, so that a routed request is never "no route".
        let concrete = path.replace("{name}", "big");
        for method in ["GET", "PUT", "POST", "DELETE"] {
            let documented = item.get(method.to_lowercase()).is_some();
            // Wrong token: routed changing requests stop at 401 and change
            // nothing; reads answer.
            let (status, body) = api.call(method, &concrete, Some("wrong-token"), "");
            let unrouted = status == 405 || (status == 404 && body.as_str() == Some(""));
            assert_eq!(
                documented, !unrouted,
                "{method} {path}: documented {documented}, answered {status} {body}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}

/// Concurrent PUTs of one pattern: each gets its own version, versions are
/// consecutive, and the final state is the one with the highest version.
#[test]
fn concurrent_puts_give_monotonic_versions_and_a_consistent_end() {
    let broker = Broker::start();
    let b = broker.brokers();
    create_topic(&b, "cards", 1);
    let dir = scratch("api-concurrent");
    std::fs::create_dir_all(dir.join("patterns")).unwrap();
    let mut serve = Serve::start(&dir, &config(&b));
    serve.wait_ready(Duration::from_secs(60));
    let port = serve.http;
    let threads: Vec<_> = (0..8)
        .map(|n| {
            std::thread::spawn(move || {
                let src = BIG.replace("amount > 900", &format!("amount > {}", 900 + n));
                let auth = format!("Bearer {TOKEN}");
                let (s, body) = http(
                    port,
                    "PUT",
                    "/patterns/big",
                    &[("Authorization", &auth)],
                    &src,
                )
                .unwrap();
                assert_eq!(s, 200, "{body}");
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                (v["version"].as_u64().unwrap(), src)
            })
        })
        .collect();
    let mut results: Vec<(u64, String)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    results.sort();
    let versions: Vec<u64> = results.iter().map(|r| r.0).collect();
    assert_eq!(versions, (1..=8).collect::<Vec<u64>>());
    let api = Api { serve: &serve };
    let (_, one) = api.call("GET", "/patterns/big", None, "");
    assert_eq!(one["version"], 8);
    assert_eq!(one["source"].as_str().unwrap(), results[7].1);
    assert_eq!(
        std::fs::read_to_string(dir.join("patterns/big.cep")).unwrap(),
        results[7].1,
        "the file holds the last version"
    );
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}

/// Replacing a pattern (drain mode, the default) while a partial match is
/// open: the old version finishes it, with its version in the alert, the
/// new version starts runs only at later events, a restart in the middle
/// of the drain keeps it, no alert comes twice, and the old version goes
/// once its run has ended.
#[test]
fn a_replaced_pattern_drains_its_open_runs_across_a_restart() {
    let broker = Broker::start();
    let b = broker.brokers();
    create_topic(&b, "cards", 1);
    create_topic(&b, "alerts", 1);
    let dir = scratch("drain");
    std::fs::create_dir_all(dir.join("patterns")).unwrap();
    std::fs::write(dir.join("patterns/small_then_large.cep"), SMALL_THEN_LARGE).unwrap();
    let mut serve = Serve::start(&dir, &config(&b));
    serve.wait_ready(Duration::from_secs(60));

    // Card a opens a run under version 1.
    send(&b, &[event(1, "a", 5.0), event(2, "z", 50.0)]);
    wait_for("a's run", &serve, || {
        serve.metric("cep_active_runs", "pattern=\"small_then_large\"") >= 1.0
    });
    let v2 = SMALL_THEN_LARGE.replace("amount > 500", "amount > 400");
    let api = Api { serve: &serve };
    let (s, v) = api.call("PUT", "/patterns/small_then_large", Some(TOKEN), &v2);
    assert_eq!((s, &v["version"]), (200, &serde_json::json!(2)), "{v}");
    let draining = |serve: &Serve| {
        let (_, v) = Api { serve }.call("GET", "/patterns/small_then_large", None, "");
        v["draining"].clone()
    };
    wait_for("version 1 draining", &serve, || {
        draining(&serve) == serde_json::json!([{"version": 1, "active_runs": 1.0}])
    });

    // Restart in the middle of the drain.
    serve.signal("-TERM");
    assert!(
        serve.wait(Duration::from_secs(30)).success(),
        "{}",
        serve.log()
    );
    let mut serve = Serve::start(&dir, &config(&b));
    serve.wait_ready(Duration::from_secs(60));
    wait_for("still draining after the restart", &serve, || {
        draining(&serve) == serde_json::json!([{"version": 1, "active_runs": 1.0}])
    });

    // b opens a run under version 2 only; a's large charge completes its
    // version-1 run (and starts nothing in version 2); b's 450 is large
    // for version 2 only.
    send(
        &b,
        &[
            event(3, "b", 5.0),
            event(4, "a", 600.0),
            event(5, "b", 450.0),
            event(1_000, "z", 50.0),
        ],
    );
    let got = alerts_of(&b, 2);
    let mut seen: Vec<(String, u64)> = got
        .iter()
        .map(|a| {
            let key = a["key"].as_str().unwrap().to_string();
            (key, a["version"].as_u64().unwrap())
        })
        .collect();
    seen.sort();
    assert_eq!(seen, [("a".to_string(), 1), ("b".to_string(), 2)]);
    wait_for("version 1 retired", &serve, || {
        draining(&serve) == serde_json::json!([]) && serve.log().contains("drained version retired")
    });
    // Nothing more arrives: no alert twice.
    std::thread::sleep(Duration::from_secs(2));
    let again = consume_until(&b, "alerts", Duration::from_secs(3), |_| false);
    assert_eq!(again.len(), 2, "{again:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
