#!/usr/bin/env bash
# The test command: installs what the tests need (the nisshi broker, once,
# and the openssl and stunnel commands for the TLS tests), then runs every
# test. Works on a fresh machine with only the Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-broker.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
cargo test "$@"
