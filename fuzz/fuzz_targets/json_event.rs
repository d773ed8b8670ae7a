//! The JSON field extractor and event decoding: any bytes pushed as a JSON
//! line are read, refused with a reason, or matched, never a panic; and the
//! extractor agrees with a full parse on what it captures.
#![no_main]

use std::sync::OnceLock;

use cep::compiler::{compile_source, Automaton};
use cep::engine::{Engine, EngineConfig, Output};
use libfuzzer_sys::fuzz_target;

const PATTERNS: &str = r#"
pattern nested
  from s key card.id time ts within 5m
  match a then b+
  define a as amount < 10 and tags.`0` == "x", b as amount > 500 or merchant.country in ["FR", "DE"]
  emit first = a.amount, n = count(b)
end
pattern by_time_text
  from s key user time at as rfc3339
  match x
  define x as name matches "^a.*z$" or value is missing
end
"#;

fn automata() -> &'static Vec<Automaton> {
    static A: OnceLock<Vec<Automaton>> = OnceLock::new();
    A.get_or_init(|| compile_source("fuzz.cep", PATTERNS).expect("the fuzz patterns compile"))
}

fuzz_target!(|data: &[u8]| {
    let mut engine = Engine::new(automata().clone(), EngineConfig::default());
    let mut out = Output::default();
    let parsed = serde_json::from_slice::<serde_json::Value>(data);
    let pushed = engine.push_json(Some("s"), data, 1, &mut out);
    // The extractor must accept exactly the JSON objects a full parse does.
    match (&parsed, &pushed) {
        (Ok(serde_json::Value::Object(_)), Err(e)) => panic!("a JSON object refused: {e:?}"),
        (Ok(v), Ok(_)) if !v.is_object() => panic!("a non-object accepted: {v}"),
        (Err(_), Ok(_)) => panic!("invalid JSON accepted"),
        _ => {}
    }
    engine.flush(&mut out);
});
