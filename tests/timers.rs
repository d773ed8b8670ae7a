//! Keys whose windows close at the same instant fire in key order.
//!
//! The matcher's timer queue names a key by its slot in the key map, and
//! slots follow the order keys arrived and left (a gone key's slot is
//! reused), which a restored engine does not keep. Alerts due at one
//! deadline must still come out in one order whatever the slots: the
//! order of their keys.

use cep::compiler::compile_source;
use cep::engine::{Engine, EngineConfig, Output};

const PATTERN: &str = "pattern p from s key k time ts within 10ms
  match small then large
  define small as amount < 10, large as amount > 500
  on timeout emit amount = small.amount
end";

fn push(engine: &mut Engine, out: &mut Output, n: &mut u64, key: &str, ts: i64, amount: u32) {
    let line = format!(r#"{{"k":"{key}","ts":{ts},"amount":{amount}}}"#);
    engine
        .push_json(Some("s"), line.as_bytes(), *n, out)
        .unwrap();
    *n += 1;
}

fn keys_of(out: &mut Output) -> Vec<String> {
    out.alerts
        .drain(..)
        .map(|a| a.key.as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn keys_due_together_fire_in_key_order_before_and_after_a_restore() {
    let automata = || compile_source("p.cep", PATTERN).unwrap();
    let mut engine = Engine::new(automata(), EngineConfig::default());
    let mut out = Output::default();
    let mut n = 0;
    // "m" takes the first slot and leaves it when its run times out, and
    // "z" reuses it: the keys waiting for 40 hold slots in the order z, x, y.
    push(&mut engine, &mut out, &mut n, "m", 0, 1);
    push(&mut engine, &mut out, &mut n, "z", 30, 1);
    push(&mut engine, &mut out, &mut n, "x", 30, 1);
    push(&mut engine, &mut out, &mut n, "y", 30, 1);
    assert_eq!(keys_of(&mut out), ["m"]);

    let saved = serde_json::to_string(&engine.snapshot()).unwrap();
    let mut restored = Engine::new(automata(), EngineConfig::default());
    assert!(restored
        .restore(serde_json::from_str(&saved).unwrap())
        .is_empty());

    for e in [&mut engine, &mut restored] {
        let mut m = n;
        push(e, &mut out, &mut m, "w", 50, 100);
        assert_eq!(keys_of(&mut out), ["x", "y", "z"]);
    }
}
