//! The pattern registry: the running set of patterns, their versions and
//! modes, and the files they live in.
//!
//! Every change goes the same way, one at a time (a lock serialises them,
//! so versions are monotonic): compile and validate; write the new file
//! under a temporary name; hand the whole new set to the pipeline, which
//! swaps it in between two records ([`super::pipeline::Command::Swap`]);
//! only then rename the file into place and record the version. A failure
//! at any step leaves the running set and the directory as they were.
//!
//! Files: an API-managed pattern lives alone in `<dir>/<name>.cep`;
//! versions and modes are kept in `<dir>/.cep-registry.json` so that a
//! restart loads exactly what was running. A pattern defined in a file
//! together with others can be read but not changed over the API (split
//! the file first): rewriting someone's multi-pattern file is not ours to
//! do.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::compiler::{compile_source, Automaton};
use crate::dsl::error::DiagnosticJson;
use crate::service::durable::{blocking, write_atomically};
use crate::service::pipeline::Command;

/// One registered pattern.
#[derive(Clone, Debug)]
pub struct Entry {
    pub automaton: Automaton,
    /// The text as written (the file, or the body of the request).
    pub source: String,
    pub file: Option<PathBuf>,
    /// The file holds other patterns too.
    pub shared_file: bool,
    pub loaded_at: String,
}

/// Versions and modes, persisted beside the pattern files.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Meta {
    patterns: BTreeMap<String, PatternMeta>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct PatternMeta {
    version: u32,
    shadow: bool,
}

/// What a reload changed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReloadSummary {
    pub added: Vec<String>,
    pub replaced: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: Vec<String>,
}

/// Why a change was refused.
#[derive(Debug)]
pub enum Refusal {
    /// The name cannot be a file name in the patterns directory.
    BadName(String),
    /// The source does not compile (or names another pattern).
    Invalid(Vec<DiagnosticJson>),
    NotFound(String),
    Conflict(String),
    /// Writing the file or swapping failed; nothing changed.
    Failed(String),
}

pub struct Registry {
    dir: PathBuf,
    inner: Mutex<BTreeMap<String, Entry>>,
    commands: mpsc::Sender<Command>,
    /// What a whole new set must also pass to run on the service's inputs
    /// (set once the inputs are known).
    check: std::sync::OnceLock<SetCheck>,
}

/// A check of a whole pattern set: why it cannot run, if it cannot.
pub type SetCheck = Box<dyn Fn(&[Automaton]) -> Result<(), String> + Send + Sync>;

/// Longest pattern name the API accepts, in bytes (with `.cep` it stays
/// far below every file system's 255-byte limit).
pub const MAX_NAME_BYTES: usize = 128;

/// Checks that `name` is safe as the file name `<dir>/<name>.cep`: no path
/// separator, no `..`, not hidden (which would also reach the registry's own
/// `.cep-registry.json`), no drive prefix, no control character, not empty
/// and not over-long. Names are refused rather than mapped: a pattern's file
/// keeps its pattern's name, so the directory reads as the API shows it.
pub fn check_name(name: &str) -> Result<(), String> {
    let refuse = |why: &str| Err(format!("pattern name {name:?}: {why}"));
    if name.is_empty() {
        return refuse("must not be empty");
    }
    if name.len() > MAX_NAME_BYTES {
        return refuse(&format!("longer than {MAX_NAME_BYTES} bytes"));
    }
    if name.contains(['/', '\\']) {
        return refuse("must not contain `/` or `\\`");
    }
    if name.contains("..") {
        return refuse("must not contain `..`");
    }
    if name.starts_with('.') {
        return refuse("must not start with `.`");
    }
    if name.contains(':') {
        return refuse("must not contain `:`");
    }
    if name.chars().any(char::is_control) {
        return refuse("must not contain control characters");
    }
    Ok(())
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn meta_path(dir: &Path) -> PathBuf {
    dir.join(".cep-registry.json")
}

impl Registry {
    /// The registry of `automata`, which were loaded from `dir` (files are
    /// matched to patterns by name). Versions and modes saved by earlier
    /// runs are applied.
    pub fn new(
        dir: &Path,
        automata: Vec<Automaton>,
        commands: mpsc::Sender<Command>,
    ) -> (Registry, Vec<Automaton>) {
        let meta: Meta = std::fs::read(meta_path(dir))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let mut files: BTreeMap<String, (PathBuf, String, usize)> = BTreeMap::new();
        for f in crate::compiler::pattern_files(dir) {
            let Ok(text) = std::fs::read_to_string(&f) else {
                continue;
            };
            if let Ok(found) = compile_source(&f.display().to_string(), &text) {
                let n = found.len();
                for a in found {
                    files.insert(a.name.clone(), (f.clone(), text.clone(), n));
                }
            }
        }
        let loaded_at = now_rfc3339();
        let mut entries = BTreeMap::new();
        let mut running = Vec::new();
        for a in automata {
            let a = match meta.patterns.get(&a.name) {
                Some(m) => a.with_meta(m.version, m.shadow),
                None => a,
            };
            // A pattern sharing its file shows its own canonical source.
            let (file, source, shared) = match files.get(&a.name) {
                Some((f, _, n)) if *n > 1 => (Some(f.clone()), a.source.clone(), true),
                Some((f, text, _)) => (Some(f.clone()), text.clone(), false),
                None => (None, a.source.clone(), false),
            };
            running.push(a.clone());
            entries.insert(
                a.name.clone(),
                Entry {
                    automaton: a,
                    source,
                    file,
                    shared_file: shared,
                    loaded_at: loaded_at.clone(),
                },
            );
        }
        let r = Registry {
            dir: dir.to_path_buf(),
            inner: Mutex::new(entries),
            commands,
            check: std::sync::OnceLock::new(),
        };
        (r, running)
    }

    pub async fn list(&self) -> Vec<Entry> {
        self.inner.lock().await.values().cloned().collect()
    }

    pub async fn get(&self, name: &str) -> Option<Entry> {
        self.inner.lock().await.get(name).cloned()
    }

    /// Compiles `source` as the pattern `name`: the automaton or the
    /// diagnostics.
    pub fn compile(name: &str, source: &str) -> Result<Automaton, Vec<DiagnosticJson>> {
        let mut found = compile_source(&format!("{name}.cep"), source).map_err(|d| d.to_json())?;
        let one = |message: String| {
            vec![DiagnosticJson {
                line: 1,
                column: 1,
                end: crate::dsl::error::LineCol { line: 1, column: 1 },
                message,
                hint: Some(format!("send exactly one `pattern {name} ... end`")),
                snippet: String::new(),
            }]
        };
        if found.len() != 1 {
            return Err(one(format!("expected one pattern, found {}", found.len())));
        }
        let a = found.pop().expect("one");
        if a.name != name {
            return Err(one(format!(
                "the pattern is named `{}`, not `{name}` as in the URL",
                a.name
            )));
        }
        Ok(a)
    }

    /// Creates or replaces `name`; returns its (new) version and whether
    /// anything changed. `drain`: a replaced version keeps its open runs
    /// until they end (see [`crate::engine::Engine::swap_patterns_with`]);
    /// otherwise they are dropped.
    pub async fn put(&self, name: &str, source: &str, drain: bool) -> Result<(u32, bool), Refusal> {
        check_name(name).map_err(Refusal::BadName)?;
        let a = Registry::compile(name, source).map_err(Refusal::Invalid)?;
        let mut entries = self.inner.lock().await;
        let (version, shadow) = match entries.get(name) {
            Some(e) if e.shared_file => return Err(shared(name, e)),
            Some(e) if e.automaton.source_hash == a.source_hash => {
                return Ok((e.automaton.version, false))
            }
            Some(e) => (e.automaton.version + 1, e.automaton.shadow),
            None => (1, a.shadow),
        };
        let a = a.with_meta(version, shadow);
        if !self.dir.is_dir() {
            return Err(Refusal::Conflict(format!(
                "serve.patterns is {}, a file: the API keeps one file per pattern in a directory; point serve.patterns at a directory",
                self.dir.display()
            )));
        }
        let file = self.dir.join(format!("{name}.cep"));
        let mut next = entries.clone();
        next.insert(
            name.to_string(),
            Entry {
                automaton: a,
                source: source.to_string(),
                file: Some(file.clone()),
                shared_file: false,
                loaded_at: now_rfc3339(),
            },
        );
        let tmp = file.with_extension("cep.new~");
        let (t, bytes) = (tmp.clone(), source.as_bytes().to_vec());
        blocking(move || write_atomically(&t, &bytes))
            .await
            .map_err(|e| Refusal::Failed(format!("{}: {e}", tmp.display())))?;
        let drained: BTreeSet<String> = drain.then(|| name.to_string()).into_iter().collect();
        if let Err(e) = self.swap(&next, drained).await {
            let t = tmp.clone();
            let _ = blocking(move || std::fs::remove_file(t)).await;
            return Err(e);
        }
        let (t, f) = (tmp.clone(), file.clone());
        blocking(move || std::fs::rename(t, f))
            .await
            .map_err(|e| Refusal::Failed(format!("{}: {e}", file.display())))?;
        *entries = next;
        self.save_meta(&entries).await;
        Ok((version, true))
    }

    pub async fn delete(&self, name: &str) -> Result<(), Refusal> {
        let mut entries = self.inner.lock().await;
        let e = entries
            .get(name)
            .ok_or_else(|| Refusal::NotFound(name.to_string()))?;
        if e.shared_file {
            return Err(shared(name, e));
        }
        let file = e.file.clone();
        let mut next = entries.clone();
        next.remove(name);
        self.swap(&next, BTreeSet::new()).await?;
        if let Some(f) = file {
            let shown = f.display().to_string();
            if let Err(e) = blocking(move || std::fs::remove_file(f)).await {
                tracing::warn!(file = shown, error = %e, "pattern file not removed");
            }
        }
        *entries = next;
        self.save_meta(&entries).await;
        Ok(())
    }

    /// Reads the directory again after edits made to its files directly:
    /// every file must compile and no name may be defined twice, or nothing
    /// changes. Unchanged patterns keep their version and runs; changed
    /// ones get the next version; patterns whose files are gone are
    /// removed.
    pub async fn reload(&self) -> Result<ReloadSummary, Refusal> {
        let mut entries = self.inner.lock().await;
        let mut found: BTreeMap<String, Entry> = BTreeMap::new();
        let mut errors = Vec::new();
        let now = now_rfc3339();
        for f in crate::compiler::pattern_files(&self.dir) {
            let text = std::fs::read_to_string(&f)
                .map_err(|e| Refusal::Failed(format!("{}: {e}", f.display())))?;
            let automata = match compile_source(&f.display().to_string(), &text) {
                Ok(a) => a,
                Err(d) => {
                    errors.extend(d.to_json());
                    continue;
                }
            };
            let shared = automata.len() > 1;
            for a in automata {
                if let Some(other) = found.get(&a.name) {
                    return Err(Refusal::Conflict(format!(
                        "pattern `{}` is defined in both {} and {}",
                        a.name,
                        other
                            .file
                            .as_ref()
                            .map_or(String::new(), |p| p.display().to_string()),
                        f.display()
                    )));
                }
                let entry = match entries.get(&a.name) {
                    Some(e) if e.automaton.source_hash == a.source_hash => Entry {
                        file: Some(f.clone()),
                        shared_file: shared,
                        ..e.clone()
                    },
                    Some(e) => Entry {
                        automaton: a.with_meta(e.automaton.version + 1, e.automaton.shadow),
                        source: if shared {
                            a.source.clone()
                        } else {
                            text.clone()
                        },
                        file: Some(f.clone()),
                        shared_file: shared,
                        loaded_at: now.clone(),
                    },
                    None => Entry {
                        source: if shared {
                            a.source.clone()
                        } else {
                            text.clone()
                        },
                        automaton: a,
                        file: Some(f.clone()),
                        shared_file: shared,
                        loaded_at: now.clone(),
                    },
                };
                found.insert(entry.automaton.name.clone(), entry);
            }
        }
        if !errors.is_empty() {
            return Err(Refusal::Invalid(errors));
        }
        let mut summary = ReloadSummary::default();
        for (name, e) in &found {
            match entries.get(name) {
                None => summary.added.push(name.clone()),
                Some(old) if old.automaton.source_hash != e.automaton.source_hash => {
                    summary.replaced.push(name.clone())
                }
                Some(_) => summary.unchanged.push(name.clone()),
            }
        }
        summary.removed = entries
            .keys()
            .filter(|n| !found.contains_key(*n))
            .cloned()
            .collect();
        // Edited files replace their patterns in drain mode.
        self.swap(&found, found.keys().cloned().collect()).await?;
        *entries = found;
        self.save_meta(&entries).await;
        Ok(summary)
    }

    /// Switches `name` between active and shadow; its runs carry over.
    pub async fn set_mode(&self, name: &str, shadow: bool) -> Result<u32, Refusal> {
        let mut entries = self.inner.lock().await;
        let e = entries
            .get(name)
            .ok_or_else(|| Refusal::NotFound(name.to_string()))?;
        let version = e.automaton.version;
        let mut next = entries.clone();
        let entry = next.get_mut(name).expect("present");
        entry.automaton = entry.automaton.with_meta(version, shadow);
        self.swap(&next, BTreeSet::new()).await?;
        *entries = next;
        self.save_meta(&entries).await;
        Ok(version)
    }

    /// Makes every later change pass `check` too.
    pub fn set_check(&self, check: SetCheck) {
        let _ = self.check.set(check);
    }

    async fn swap(
        &self,
        next: &BTreeMap<String, Entry>,
        drain: BTreeSet<String>,
    ) -> Result<(), Refusal> {
        let automata: Vec<Automaton> = next.values().map(|e| e.automaton.clone()).collect();
        if let Some(check) = self.check.get() {
            check(&automata).map_err(Refusal::Conflict)?;
        }
        let (done, reply) = oneshot::channel();
        self.commands
            .send(Command::Swap {
                automata,
                drain,
                done,
            })
            .await
            .map_err(|_| Refusal::Failed("the pipeline has stopped".into()))?;
        match tokio::time::timeout(Duration::from_secs(10), reply).await {
            Ok(Ok(_fresh)) => Ok(()),
            _ => Err(Refusal::Failed(
                "the pipeline did not take the new set within 10 s".into(),
            )),
        }
    }

    async fn save_meta(&self, entries: &BTreeMap<String, Entry>) {
        let meta = Meta {
            patterns: entries
                .iter()
                .map(|(n, e)| {
                    (
                        n.clone(),
                        PatternMeta {
                            version: e.automaton.version,
                            shadow: e.automaton.shadow,
                        },
                    )
                })
                .collect(),
        };
        let bytes = serde_json::to_vec_pretty(&meta).expect("serialises");
        let path = meta_path(&self.dir);
        if let Err(e) = blocking(move || write_atomically(&path, &bytes)).await {
            tracing::error!(error = %e, "pattern versions not saved");
        }
    }
}

fn shared(name: &str, e: &Entry) -> Refusal {
    Refusal::Conflict(format!(
        "pattern `{name}` is defined in {} together with other patterns; move it to a file of its own to manage it over the API",
        e.file.as_ref().map_or("a shared file".into(), |f| f.display().to_string())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_would_leave_the_directory_are_refused() {
        for bad in [
            "",
            "../x",
            "/etc/passwd",
            "a/b",
            "a\\b",
            "..",
            "x..y",
            ".hidden",
            "c:x",
            "nul\0byte",
            "line\nbreak",
            &"n".repeat(MAX_NAME_BYTES + 1),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in [
            "big",
            "small_then_large",
            "délai élevé",
            "a-b.c",
            &"n".repeat(MAX_NAME_BYTES),
        ] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
    }

    /// `serve.patterns` naming one file: the API says it needs a directory
    /// (instead of failing to write next to the file) and leaves it alone.
    #[tokio::test]
    async fn a_pattern_file_instead_of_a_directory_is_refused_with_the_reason() {
        let file = std::env::temp_dir().join(format!("cep-reg-{}.cep", std::process::id()));
        let src = "pattern a from s key k time t match x define x as v > 1 end\n";
        std::fs::write(&file, src).unwrap();
        let (tx, _rx) = mpsc::channel(1);
        let (r, _) = Registry::new(&file, Vec::new(), tx);
        let new = "pattern b from s key k time t match x define x as v > 2 end\n";
        match r.put("b", new, true).await {
            Err(Refusal::Conflict(m)) => assert!(m.contains("a file"), "{m}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
        assert_eq!(std::fs::read_to_string(&file).unwrap(), src);
    }
}
