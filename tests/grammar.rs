//! The language reference is executable: every ```cep block in
//! `grammar/reference.md` must parse, compile, and survive the printer round
//! trip. The same holds for every example pattern under `patterns/`.
//!
//! For each source `x`:
//! - `parse(x)` succeeds and `compile_file` accepts the tree;
//! - `parse(print(parse(x))) == parse(x)` (spans are ignored by `==`);
//! - printing is idempotent: `print(parse(print(t))) == print(t)`;
//! - the printed form compiles too.

use std::path::{Path, PathBuf};

use cep::compiler::compile_file;
use cep::dsl::{parse, print_file, Diagnostic};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A source to check and where it came from (for failure messages).
struct Example {
    origin: String,
    /// First line of the source within `origin` (1 for a whole file).
    line: usize,
    source: String,
}

/// Every ```cep fenced block of a markdown text, with its first line number.
fn cep_blocks(markdown: &str, file: &str) -> Vec<Example> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, line) in markdown.lines().enumerate() {
        let trimmed = line.trim();
        match &mut current {
            // Pad with empty lines so that diagnostics give the line number
            // in the markdown file itself.
            None if trimmed == "```cep" => current = Some((n + 2, "\n".repeat(n + 1))),
            None => {}
            Some(_) if trimmed == "```" => {
                let (line, source) = current.take().unwrap();
                out.push(Example {
                    origin: file.to_string(),
                    line,
                    source,
                });
            }
            Some((_, source)) => {
                source.push_str(line);
                source.push('\n');
            }
        }
    }
    assert!(
        current.is_none(),
        "{file}: a ```cep block is not closed (opened at line {})",
        current.unwrap().0 - 1
    );
    out
}

fn render(origin: &str, src: &str, errors: &[Diagnostic]) -> String {
    errors
        .iter()
        .map(|d| d.render(origin, src))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Checks one source; returns a description of what went wrong, if anything.
fn check(ex: &Example) -> Result<(), String> {
    let origin = &ex.origin;
    let at = format!("{origin}:{}", ex.line);
    let ast = parse(&ex.source)
        .map_err(|e| format!("{at}: does not parse:\n{}", render(origin, &ex.source, &e)))?;
    if ast.patterns.is_empty() {
        return Err(format!("{at}: holds no pattern"));
    }
    compile_file(&ast).map_err(|e| {
        format!(
            "{at}: does not compile:\n{}",
            render(origin, &ex.source, &e)
        )
    })?;

    let printed = print_file(&ast);
    let reparsed = parse(&printed).map_err(|e| {
        format!(
            "{at}: the printed form does not parse:\n{}\n--- printed ---\n{printed}",
            render("<printed>", &printed, &e)
        )
    })?;
    if reparsed != ast {
        return Err(format!(
            "{at}: parse(print(ast)) != ast\n--- printed ---\n{printed}\n--- ast ---\n{ast:#?}\n--- reparsed ---\n{reparsed:#?}"
        ));
    }
    compile_file(&reparsed).map_err(|e| {
        format!(
            "{at}: the printed form does not compile:\n{}",
            render("<printed>", &printed, &e)
        )
    })?;
    let printed_again = print_file(&reparsed);
    if printed_again != printed {
        return Err(format!(
            "{at}: printing is not idempotent\n--- print(x) ---\n{printed}\n--- print(parse(print(x))) ---\n{printed_again}"
        ));
    }
    Ok(())
}

fn check_all(examples: &[Example]) {
    let failures: Vec<String> = examples.iter().filter_map(|e| check(e).err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} example(s) failed:\n\n{}",
        failures.len(),
        examples.len(),
        failures.join("\n\n")
    );
}

#[test]
fn reference_examples_parse_compile_and_round_trip() {
    let path = root().join("grammar/reference.md");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let examples = cep_blocks(&text, "grammar/reference.md");
    assert!(
        examples.len() >= 30,
        "grammar/reference.md has only {} ```cep examples (at least 30 expected)",
        examples.len()
    );
    check_all(&examples);
}

/// Every section of the reference that explains a construct shows it: each
/// `###` section holds at least one ```cep example.
#[test]
fn every_reference_section_has_an_example() {
    let text = std::fs::read_to_string(root().join("grammar/reference.md")).unwrap();
    let mut missing = Vec::new();
    let mut section: Option<(String, bool)> = None;
    let mut in_fence = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            if !in_fence && line.trim() == "```cep" {
                if let Some((_, seen)) = &mut section {
                    *seen = true;
                }
            }
            in_fence = !in_fence;
            continue;
        }
        if in_fence || !line.starts_with('#') {
            continue;
        }
        if let Some((title, false)) = section.take() {
            missing.push(title);
        }
        if let Some(title) = line.strip_prefix("### ") {
            section = Some((title.to_string(), false));
        }
    }
    if let Some((title, false)) = section {
        missing.push(title);
    }
    assert!(
        missing.is_empty(),
        "sections of grammar/reference.md without a ```cep example: {missing:?}"
    );
}

fn cep_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            cep_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "cep") {
            out.push(path);
        }
    }
}

#[test]
fn example_pattern_files_parse_compile_and_round_trip() {
    let base = root();
    let mut files = Vec::new();
    cep_files(&base.join("patterns"), &mut files);
    files.sort();
    let examples: Vec<Example> = files
        .iter()
        .map(|f| Example {
            origin: f.strip_prefix(&base).unwrap_or(f).display().to_string(),
            line: 1,
            source: std::fs::read_to_string(f)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", f.display())),
        })
        .collect();
    // `patterns/` may hold no files yet; then there is nothing to check.
    check_all(&examples);
}

#[test]
fn block_extraction() {
    let md = "text\n```cep\npattern a\nend\n```\n```toml\nx = 1\n```\n  ```cep\nb\n  ```\n";
    let blocks = cep_blocks(md, "m.md");
    assert_eq!(blocks.len(), 2);
    assert_eq!(blocks[0].line, 3);
    assert_eq!(blocks[0].source, "\n\npattern a\nend\n");
    assert_eq!(blocks[1].line, 10);
    assert_eq!(blocks[1].source.trim_start_matches('\n'), "b\n");
}
