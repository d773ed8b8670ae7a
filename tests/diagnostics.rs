//! Golden tests for error messages.
//!
//! Every `tests/bad/NAME.cep` must fail to compile, and its rendered
//! diagnostics (`Diagnostics::render()`, exactly what `cep check` prints) must
//! equal `tests/bad/NAME.err` byte for byte.
//!
//! To regenerate the `.err` files after a deliberate change to a message:
//!
//! ```text
//! BLESS=1 cargo test --test integration diagnostics
//! ```
//!
//! then read every changed `.err` file (`git diff tests/bad`) before
//! committing: the point of these files is that a person has checked the
//! message, the line:column, the caret and the hint.

use std::path::PathBuf;

use cep::compiler::compile_source;

/// At least this many bad files are expected (guards against a lost directory).
const MIN_CASES: usize = 18;

fn bad_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/bad")
}

fn bless() -> bool {
    std::env::var("BLESS").is_ok_and(|v| v == "1")
}

/// The first differing line, to make a failure readable.
fn first_difference(expected: &str, actual: &str) -> String {
    let (e, a): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    for i in 0..e.len().max(a.len()) {
        let (x, y) = (e.get(i), a.get(i));
        if x != y {
            return format!(
                "first difference at line {}:\n  expected: {}\n  actual:   {}",
                i + 1,
                x.map_or("<end of file>".to_string(), |s| format!("{s:?}")),
                y.map_or("<end of file>".to_string(), |s| format!("{s:?}")),
            );
        }
    }
    "the texts differ only in the final newline".to_string()
}

#[test]
fn bad_patterns_render_the_expected_diagnostics() {
    let dir = bad_dir();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".cep").map(str::to_string)
        })
        .collect();
    names.sort();
    assert!(
        names.len() >= MIN_CASES,
        "only {} bad pattern files in tests/bad (at least {MIN_CASES} expected)",
        names.len()
    );

    let mut failures = Vec::new();
    for name in &names {
        let origin = format!("tests/bad/{name}.cep");
        let src = std::fs::read_to_string(dir.join(format!("{name}.cep"))).unwrap();
        let rendered = match compile_source(&origin, &src) {
            Ok(patterns) => {
                failures.push(format!(
                    "{origin}: compiled without error ({} pattern(s)), but it is in tests/bad",
                    patterns.len()
                ));
                continue;
            }
            Err(d) => {
                if d.errors.is_empty() {
                    failures.push(format!("{origin}: failed with an empty error list"));
                    continue;
                }
                d.render()
            }
        };
        let err_path = dir.join(format!("{name}.err"));
        if bless() {
            std::fs::write(&err_path, &rendered).unwrap();
            continue;
        }
        match std::fs::read_to_string(&err_path) {
            Ok(expected) if expected == rendered => {}
            Ok(expected) => failures.push(format!(
                "{origin}: diagnostics differ from tests/bad/{name}.err ({})\n--- expected ---\n{expected}--- actual ---\n{rendered}",
                first_difference(&expected, &rendered)
            )),
            Err(_) => failures.push(format!(
                "{origin}: tests/bad/{name}.err is missing (run with BLESS=1 to create it, then review it)\n--- actual ---\n{rendered}"
            )),
        }
    }

    // An `.err` without its `.cep` is a leftover from a renamed case.
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let file = e.file_name().into_string().unwrap_or_default();
        if let Some(stem) = file.strip_suffix(".err") {
            if !names.iter().any(|n| n == stem) {
                failures.push(format!("tests/bad/{file} has no tests/bad/{stem}.cep"));
            }
        }
    }

    assert!(
        failures.is_empty(),
        "{} of {} bad pattern file(s) failed:\n\n{}",
        failures.len(),
        names.len(),
        failures.join("\n\n")
    );
}

/// Each file reports every error it has: the count line at the end agrees
/// with the number of `error:` headings.
#[test]
fn error_count_line_matches_the_errors() {
    let dir = bad_dir();
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "cep") {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let origin = format!("tests/bad/{name}");
        let src = std::fs::read_to_string(&path).unwrap();
        let Err(d) = compile_source(&origin, &src) else {
            continue; // reported by the golden test
        };
        let rendered = d.render();
        let headings = rendered
            .lines()
            .filter(|l| l.starts_with("error: "))
            .count();
        assert_eq!(headings, d.errors.len(), "{origin}");
        let n = d.errors.len();
        let count_line = format!(
            "{origin}: {n} error{} in this file",
            if n == 1 { "" } else { "s" }
        );
        assert!(
            rendered.ends_with(&format!("\n{count_line}\n")),
            "{origin}: rendering does not end with {count_line:?}"
        );
    }
}
