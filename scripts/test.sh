#!/usr/bin/env bash
# The test command: installs what the tests need (the tansu broker, once),
# then runs every test. Works on a fresh machine with only the Rust
# toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-tansu.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
cargo test "$@"
