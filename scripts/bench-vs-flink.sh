#!/usr/bin/env bash
# Back-to-back speed comparison with Apache Flink CEP on the same input and
# machine: the peer harness's "fraud_strict" query (amount < 10, next event
# of the key amount > 500, within 5 min) over its seeded generator's stream,
# run by Flink's Pattern API and SQL MATCH_RECOGNIZE (via the harness's
# run.sh) and by `cep replay`. Prints wall times (whole process), net times
# (minus a 10-event run: start-up) and the ratio. Matches are compared too.
#
# Needs the peer harness beside this repository (../shared/peers/flink) and
# its Flink install (see its README: a venv with `pip install
# apache-flink==2.3.0`, Java 17).
#
# usage: scripts/bench-vs-flink.sh            (N=1000000 REPEATS=3 APIS="datastream sql")
set -euo pipefail
cd "$(dirname "$0")/.."
PEER=${PEER:-$(pwd)/../shared/peers/flink}
WORK=${WORK:-/tmp/cep-vs-flink}
N=${N:-1000000}
REPEATS=${REPEATS:-3}
APIS=${APIS:-datastream sql}

[ -f "$PEER/run.sh" ] || { echo "no peer harness at $PEER" >&2; exit 1; }
mkdir -p "$WORK"
rm -rf "$WORK/harness" && cp -r "$PEER" "$WORK/harness" && chmod -R u+w "$WORK/harness"
python3 "$PEER/gen_events.py" --n "$N" --keys 1000 --seed 42 --format jsonl --out "$WORK/events.jsonl" >/dev/null
python3 "$PEER/gen_events.py" --n 10 --keys 3 --seed 42 --format jsonl --out "$WORK/tiny.jsonl" >/dev/null
cat > "$WORK/fraud_strict.cep" <<'EOF'
pattern fraud_strict
  from events key key time ts within 5m
  match a next b
  define a as amount < 10, b as amount > 500
end
EOF
cargo build --release -q

now_ms() { date +%s%3N; }
ours() { # input -> wall ms; alerts to $WORK/ours.jsonl
  local t0; t0=$(now_ms)
  ./target/release/cep replay --patterns "$WORK/fraud_strict.cep" --input "$1" --lateness 5s \
    > "$WORK/ours.jsonl" 2>/dev/null
  echo $(( $(now_ms) - t0 ))
}
flink() { # api input -> wall ms
  local t0; t0=$(now_ms)
  (cd "$WORK/harness" && ./run.sh --input "$2" --format jsonl --api "$1" --query fraud_strict \
    --parallelism 1 --out "$WORK/flink.csv" >/dev/null 2>&1)
  echo $(( $(now_ms) - t0 ))
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "input: $N events over 1000 keys (peer generator, seed 42); $REPEATS repeats, medians"
o_tiny=$(for _ in $(seq "$REPEATS"); do ours "$WORK/tiny.jsonl"; done | median)
o_full=$(for _ in $(seq "$REPEATS"); do ours "$WORK/events.jsonl"; done | median)
o_matches=$(wc -l < "$WORK/ours.jsonl")
printf '%-22s wall %6d ms  start-up %5d ms  net %6d ms  %9.0f events/s net  %s matches\n' \
  "cep replay" "$o_full" "$o_tiny" $((o_full - o_tiny)) "$(echo "$N / (($o_full - $o_tiny) / 1000)" | bc -l)" "$o_matches"
for api in $APIS; do
  f_tiny=$(for _ in $(seq "$REPEATS"); do flink "$api" "$WORK/tiny.jsonl"; done | median)
  f_full=$(for _ in $(seq "$REPEATS"); do flink "$api" "$WORK/events.jsonl"; done | median)
  f_matches=$(wc -l < "$WORK/flink.csv")
  printf '%-22s wall %6d ms  start-up %5d ms  net %6d ms  %9.0f events/s net  %s matches\n' \
    "flink $api" "$f_full" "$f_tiny" $((f_full - f_tiny)) "$(echo "$N / (($f_full - $f_tiny) / 1000)" | bc -l)" "$f_matches"
  printf '  ratio (flink / cep): wall %.1fx, net %.1fx\n' \
    "$(echo "$f_full / $o_full" | bc -l)" "$(echo "($f_full - $f_tiny) / ($o_full - $o_tiny)" | bc -l)"
done
