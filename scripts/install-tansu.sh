#!/usr/bin/env bash
# Installs the Kafka-compatible broker the tests and the quick start use:
# tansu (Apache-2.0, crates.io), a pinned version built with the storage
# engines it needs (SQLite for Kafka-like durability, memory for quick
# throughput runs). Reused when already installed. The first build takes
# 15-40 minutes on 2 cores.
set -euo pipefail
VERSION=0.6.0
BIN="${CARGO_HOME:-$HOME/.cargo}/bin/tansu"

if [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep -q "$VERSION"; then
  echo "tansu $VERSION already installed at $BIN"
  exit 0
fi
if command -v tansu >/dev/null 2>&1 && tansu --version 2>/dev/null | grep -q "$VERSION"; then
  echo "tansu $VERSION already on PATH at $(command -v tansu)"
  exit 0
fi
echo "building tansu $VERSION (features dynostore, libsql); this takes a while" >&2
cargo install tansu --version "$VERSION" --locked --features dynostore,libsql
