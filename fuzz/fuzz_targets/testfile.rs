//! The pattern test-file reader: any text is a test file whose cases run
//! (each case carries its own patterns), or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(tf) = cep::testfile::parse(text) else {
        return;
    };
    // Bound the work of one input: the engine runs every case four ways.
    if tf.cases.len() > 16 {
        return;
    }
    let _ = cep::testfile::run_parsed(std::path::Path::new("fuzz.test.toml"), &tf, None);
});
