#!/usr/bin/env bash
# Installs what the tests and the quick start need besides Rust:
# - nisshi (Apache-2.0, crates.io; the Kafka-compatible broker formerly
#   named tansu), a pinned version built with the storage engines it needs
#   (SQLite for Kafka-like durability, memory for quick throughput runs).
#   It needs rustc >= 1.96: built with the nightly toolchain when the stable
#   one is older. Reused when already installed; the first build takes
#   about 15 minutes on 2 cores.
# - the `openssl` command, which makes the test brokers' TLS certificates,
#   and stunnel, the TLS front that asks for client certificates in the
#   mutual-TLS test (nisshi does not); both from Debian's packages when
#   missing.
set -euo pipefail
VERSION=0.8.1
BIN="${CARGO_HOME:-$HOME/.cargo}/bin/nisshi"

missing=""
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
command -v stunnel4 >/dev/null 2>&1 || command -v stunnel >/dev/null 2>&1 || missing="$missing stunnel4"
if [ -n "$missing" ]; then
  echo "installing:$missing" >&2
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  # shellcheck disable=SC2086
  $sudo apt-get install -y -q $missing >&2 || { $sudo apt-get update -q >&2 && $sudo apt-get install -y -q $missing >&2; }
fi

for candidate in "$BIN" "$(command -v nisshi 2>/dev/null || true)"; do
  if [ -n "$candidate" ] && [ -x "$candidate" ] && "$candidate" --version 2>/dev/null | grep -q "$VERSION"; then
    echo "nisshi $VERSION already installed at $candidate"
    exit 0
  fi
done

# The newest toolchain we have that is recent enough.
toolchain=""
for t in stable nightly; do
  minor=$(rustc "+$t" --version 2>/dev/null | sed -E 's/^rustc 1\.([0-9]+).*/\1/' || true)
  if [ -n "$minor" ] && [ "$minor" -ge 96 ]; then toolchain="+$t"; break; fi
done
if [ -z "$toolchain" ]; then
  echo "nisshi $VERSION needs rustc >= 1.96 (stable or nightly); found: $(rustc --version)" >&2
  exit 1
fi
echo "building nisshi $VERSION with cargo $toolchain (features dynostore, libsql); this takes a while" >&2
cargo "$toolchain" install nisshi --version "$VERSION" --locked \
  --no-default-features --features dynostore,libsql
