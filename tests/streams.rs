//! A record of a named stream goes only to that stream's patterns, and each
//! pattern reads its own fields of it (the engine decodes, once per record,
//! the fields of the patterns the record goes to).

use cep::compiler::compile_source;
use cep::engine::{Engine, EngineConfig, Output};

const PATTERNS: &str = "pattern big_charge
  from cards key card time ts
  match big
  define big as amount > 100
  emit amount = big.amount
end

pattern many_attempts
  from logins key user time ts
  match fail
  define fail as attempts > 3
  emit attempts = fail.attempts, country = fail.country
end";

fn alerts(out: &mut Output) -> Vec<String> {
    out.alerts
        .drain(..)
        .map(|a| {
            format!(
                "{} {}",
                a.pattern,
                serde_json::to_string(&a.fields).unwrap()
            )
        })
        .collect()
}

#[test]
fn each_stream_decodes_its_own_patterns_fields() {
    let automata = compile_source("streams.cep", PATTERNS).unwrap();
    let mut engine = Engine::new(automata, EngineConfig::default());
    let mut out = Output::default();
    let record = r#"{"card":"c1","user":"u1","ts":1000,"amount":250,"attempts":5,"country":"FR"}"#;

    engine
        .push_json(Some("logins"), record.as_bytes(), 1, &mut out)
        .unwrap();
    assert_eq!(
        alerts(&mut out),
        [r#"many_attempts {"attempts":5,"country":"FR"}"#]
    );

    engine
        .push_json(Some("cards"), record.as_bytes(), 2, &mut out)
        .unwrap();
    assert_eq!(alerts(&mut out), [r#"big_charge {"amount":250}"#]);

    // No stream named: every pattern.
    engine
        .push_json(None, record.as_bytes(), 3, &mut out)
        .unwrap();
    let mut both = alerts(&mut out);
    both.sort();
    assert_eq!(
        both,
        [
            r#"big_charge {"amount":250}"#,
            r#"many_attempts {"attempts":5,"country":"FR"}"#
        ]
    );
}
