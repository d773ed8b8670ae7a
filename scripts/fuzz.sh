#!/usr/bin/env bash
# Runs one fuzz target for a while: scripts/fuzz.sh TARGET SECONDS
# Targets (fuzz/fuzz_targets/): pattern, json_event, csv, testfile,
# dead_letter. Needs the nightly toolchain; installs cargo-fuzz (pinned)
# once. Crashes land in fuzz/artifacts/TARGET/; the corpus grows in
# fuzz/corpus/TARGET/ (seeded from the project's own files on first run).
# Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${1:?usage: scripts/fuzz.sh TARGET SECONDS}
SECONDS_TO_RUN=${2:-600}
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo +nightly install cargo-fuzz --version 0.13.2 --locked
fi
corpus=fuzz/corpus/$TARGET
if [ ! -d "$corpus" ]; then
  mkdir -p "$corpus"
  case "$TARGET" in
    pattern) find patterns tests/bad tests/conformance -name '*.cep' -exec cp {} "$corpus/" \; 2>/dev/null || true ;;
    testfile) find patterns -name '*.test.toml' -exec cp {} "$corpus/" \; ;;
    csv) head -50 data/flights-2013-01.csv > "$corpus/flights.csv" ;;
    json_event) printf '{"card":{"id":"c1"},"ts":1000,"amount":5,"tags":["x"]}' > "$corpus/one.json" ;;
    dead_letter) printf '{"input":"f","line":1,"reasons":["x"],"raw":"{\\"a\\":1}"}\n' > "$corpus/one.jsonl" ;;
  esac
fi
# -rss_limit_mb: the engine's run cap keeps memory bounded; a leak or a
# blow-up shows as a crash. -timeout: one input taking over 10 s is a hang.
exec cargo +nightly fuzz run "$TARGET" "$corpus" -- \
  -max_total_time="$SECONDS_TO_RUN" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
