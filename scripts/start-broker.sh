#!/usr/bin/env bash
# Starts a local nisshi broker on loopback with SQLite storage, the way the
# tests do. Usage: scripts/start-broker.sh [PORT] [DATA_DIR]
# Stop it with Ctrl-C (it runs in the foreground).
set -euo pipefail
PORT="${1:-9092}"
DATA="${2:-target/broker}"
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/install-broker.sh" >&2
NISSHI="$(command -v nisshi || echo "${CARGO_HOME:-$HOME/.cargo}/bin/nisshi")"
mkdir -p "$DATA"
cd "$DATA"
echo "broker on 127.0.0.1:$PORT, data in $DATA" >&2
exec "$NISSHI" broker \
  --listener-url "tcp://127.0.0.1:$PORT" \
  --advertised-listener-url "tcp://127.0.0.1:$PORT" \
  --storage-engine "sqlite://nisshi.db?maintenance_interval=5s"
