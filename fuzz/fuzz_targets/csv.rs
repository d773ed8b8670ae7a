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
    // Each row twice: through the field extractor (what `cep replay` does)
    // and as the row's document; both must give the same alerts.
    let mut by_row = Engine::new(automata().clone(), EngineConfig::default());
    let mut by_doc = Engine::new(automata().clone(), EngineConfig::default());
    let (mut rows_out, mut docs_out) = (Output::default(), Output::default());
    let mut last_line = 0;
    for r in records {
        match r {
            Ok(r) => {
                assert!(r.line > last_line, "lines go forward");
                last_line = r.line;
                let Payload::Csv(row) = r.payload else {
                    panic!("CSV records are rows")
                };
                assert_eq!(row.row.len(), row.header.len());
                by_row.push_row(Some("flights"), &row, r.hash, &mut rows_out);
                let doc = Arc::new(row.to_doc());
                by_doc.push(Some("flights"), &doc, r.hash, &mut docs_out);
            }
            Err(b) => {
                assert!(b.line > last_line, "lines go forward");
                last_line = b.line;
                assert!(!b.reason.is_empty());
            }
        }
    }
    by_row.flush(&mut rows_out);
    by_doc.flush(&mut docs_out);
    let ids = |o: &Output| o.alerts.iter().map(|a| a.alert_id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&rows_out), ids(&docs_out), "a row reads as its document");
});
