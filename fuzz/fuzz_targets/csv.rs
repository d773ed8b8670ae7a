//! The CSV reader: any bytes give records or bad records with a line, never
//! a panic; every record reaches the engine.
#![no_main]

use std::sync::{Arc, OnceLock};

use cep::compiler::{compile_source, Automaton};
use cep::engine::{Engine, EngineConfig, Output};
use cep::input::{read, Format, Payload};
use libfuzzer_sys::fuzz_target;

const PATTERNS: &str = r#"
pattern delayed
  from flights key tailnum time ts within 1d
  match a then b
  define a as dep_delay > 60, b as dep_delay > 60 and origin != a.origin
end
"#;

fn automata() -> &'static Vec<Automaton> {
    static A: OnceLock<Vec<Automaton>> = OnceLock::new();
    A.get_or_init(|| compile_source("fuzz.cep", PATTERNS).expect("the fuzz patterns compile"))
}

fuzz_target!(|data: &[u8]| {
    let reader = Box::new(std::io::Cursor::new(data.to_vec()));
    let Ok(records) = read(reader, Format::Csv, &["NA".to_string()]) else {
        return;
    };
    let mut engine = Engine::new(automata().clone(), EngineConfig::default());
    let mut out = Output::default();
    let mut last_line = 0;
    for r in records {
        match r {
            Ok(r) => {
                assert!(r.line > last_line, "lines go forward");
                last_line = r.line;
                let csv = r.csv.as_ref().expect("CSV records keep their row");
                assert_eq!(csv.row.len(), csv.header.len());
                let Payload::Doc(doc) = r.payload else {
                    panic!("CSV rows are documents")
                };
                engine.push(Some("flights"), &Arc::new(doc), r.hash, &mut out);
            }
            Err(b) => {
                assert!(b.line > last_line, "lines go forward");
                last_line = b.line;
                assert!(!b.reason.is_empty());
            }
        }
    }
    engine.flush(&mut out);
});
