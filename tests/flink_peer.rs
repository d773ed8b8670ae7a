//! Cross-check against Apache Flink CEP.
//!
//! The peer harness in `../shared/peers/flink/` ships a seeded event
//! generator and `oracle.py`, an independent implementation of four
//! reference queries whose output was byte-identical to Flink's
//! `MATCH_RECOGNIZE` and Pattern API in every recorded run. This test
//! generates a stream (out of order by up to 3 s), runs the oracle, runs our
//! engine with the same queries written in our language
//! (`tests/peer/flink_queries.cep`) and a 3 s allowed lateness, and requires
//! identical `key,first_ts,last_ts` match lists.
//!
//! The harness lives outside this repository; where it (or python3) is
//! absent the test says so and checks nothing.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use cep::engine::{Engine, EngineConfig, Output};

const PEER: &str = "../shared/peers/flink";

#[test]
fn same_matches_as_flink_oracle() {
    if !Path::new(PEER).join("oracle.py").exists() {
        eprintln!("skipped: no Flink peer harness at {PEER}");
        return;
    }
    let dir = std::env::temp_dir().join(format!("cep-peer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("events.jsonl");
    let run = |args: &[&str]| {
        let out = Command::new("python3")
            .args(args)
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        &format!("{PEER}/gen_events.py"),
        "--n",
        "100000",
        "--keys",
        "300",
        "--seed",
        "11",
        "--format",
        "jsonl",
        "--ooo-ms",
        "3000",
        "--out",
        data.to_str().unwrap(),
    ]);
    let oracle = dir.join("oracle");
    run(&[
        &format!("{PEER}/oracle.py"),
        "--input",
        data.to_str().unwrap(),
        "--format",
        "jsonl",
        "--query",
        "all",
        "--out",
        oracle.to_str().unwrap(),
    ]);

    let src = std::fs::read_to_string("tests/peer/flink_queries.cep").unwrap();
    let automata = cep::compiler::compile_source("flink_queries.cep", &src).unwrap();
    let config = EngineConfig {
        lateness_ms: 3000,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(automata, config);
    let mut out = Output::default();
    let text = std::fs::read_to_string(&data).unwrap();
    for (n, line) in text.lines().enumerate() {
        // Half through the document path, half straight from the text: both
        // must give Flink's matches.
        if n % 2 == 0 {
            let doc: serde_json::Value = serde_json::from_str(line).unwrap();
            engine.push(None, &Arc::new(doc), n as u64, &mut out);
        } else {
            engine
                .push_json(None, line.as_bytes(), n as u64, &mut out)
                .unwrap();
        }
    }
    engine.flush(&mut out);
    assert_eq!(out.late.len(), 0);

    for query in ["fraud_strict", "fraud_relaxed", "burst3", "burst3_relaxed"] {
        let mut ours: Vec<(String, i64, i64)> = out
            .alerts
            .iter()
            .filter(|a| a.pattern == query)
            .map(|a| (a.key.as_str().unwrap().to_string(), a.start_ms, a.end_ms))
            .collect();
        ours.sort();
        let reference = std::fs::read_to_string(oracle.join(format!("{query}.csv"))).unwrap();
        let mut theirs: Vec<(String, i64, i64)> = reference
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (
                    f[0].to_string(),
                    f[1].parse().unwrap(),
                    f[2].parse().unwrap(),
                )
            })
            .collect();
        theirs.sort();
        assert!(!theirs.is_empty(), "{query}: the oracle found no matches");
        assert_eq!(ours.len(), theirs.len(), "{query}: match count");
        assert_eq!(ours, theirs, "{query}: matches differ");
        eprintln!(
            "{query}: {} matches, identical to the Flink oracle",
            ours.len()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
