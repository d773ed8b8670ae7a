//! Runs every pattern test file: the conformance suite under
//! `tests/conformance/` and the example patterns' tests under `patterns/`.

use std::path::Path;

fn run_all(dir: &str) -> usize {
    let files = cep::testfile::discover(Path::new(dir));
    assert!(!files.is_empty(), "no test files under {dir}");
    let mut failures = Vec::new();
    let mut cases = 0;
    for f in files {
        match cep::testfile::run_file(&f) {
            Ok(results) => {
                for r in results {
                    cases += 1;
                    if !r.failures.is_empty() {
                        failures.push(format!(
                            "{} :: {}\n    {}",
                            f.display(),
                            r.name,
                            r.failures.join("\n    ")
                        ));
                    }
                }
            }
            Err(e) => failures.push(format!("{}: {e}", f.display())),
        }
    }
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
