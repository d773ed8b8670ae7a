//! Runs every pattern test file: the conformance suite under
//! `tests/conformance/` and the example patterns' tests under `patterns/`.

use std::path::Path;

fn run_all(dir: &str) -> usize {
    let (cases, failures) = cep::testfile::run_all(Path::new(dir));
    assert!(cases > 0, "no test cases under {dir}");
    assert!(
        failures.is_empty(),
        "{} failing case(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
    cases
}

#[test]
fn conformance_suite() {
    let cases = run_all("tests/conformance");
    eprintln!("{cases} conformance cases passed");
}
