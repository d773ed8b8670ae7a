#!/usr/bin/env bash
# Back-to-back speed comparison of `cep replay` with its peers on the same
# generated input and machine, with a check that every engine finds the same
# matches. Prints one markdown table (meant to be pasted into BENCHMARKS.md
# verbatim) and a verdict line per peer.
#
# Query: the peer harness's "fraud_strict" (amount < 10, then the NEXT event of
# the same key amount > 500, within 5 min), run by
#   * cep replay                      (our `a next b`, lateness 5 s)
#   * Flink 2.3.0 Pattern API         (harness run.sh --api datastream)
#   * Flink 2.3.0 SQL MATCH_RECOGNIZE (harness run.sh --api sql)
#   * Siddhi 5.1.7                    (scripts/peers/siddhi/SiddhiPeer.java: a
#                                      sequence `every s=..., l=... within 5 min`,
#                                      partitioned by key, event time via @app:playback)
# over the harness's seeded generator output (JSON lines, sorted by ts).
#
# Timing: "wall" is the whole command as a user runs it (process start to exit,
# launcher scripts included); "start-up" is the wall time of the same command on
# a 10-event input (JVM, Flink MiniCluster, SQL planning, ...); "net" = wall -
# start-up, i.e. the cost of the events themselves. All three are medians over
# REPEATS rounds; each round runs every engine once (round robin), so a burst of
# load from other processes hits all engines rather than one.
#
# Matches: every engine's matches are normalised to sorted `key,first_ts,last_ts`
# lines and compared with cep's line by line, not just counted. The one accepted
# difference is documented Siddhi behaviour: its `within` is inclusive
# (last - first <= 5 min) where ours and Flink's are strict (< 5 min), so Siddhi
# also reports the generator's edge case `edge-fraud-eqW` (b exactly 5 min after
# a). A peer passes if its extra matches are exactly such boundary pairs and
# nothing else differs; anything else is a MISMATCH and the script exits 1.
#
# Needs: python3 (generator), Java 17 (java + javac), network to PyPI on first
# use, and the peer harness beside this repository (../shared/peers/flink).
# Installs what is missing, idempotently, into ~/.cache:
#   ~/.cache/flinkpeer/venv  python venv with apache-flink==2.3.0 (~70 s; the harness's layout)
#   ~/.cache/siddhipeer      Siddhi 5.1.7 jars from the PySiddhi 5.1.0 wheel + compiled runner
#
# usage: scripts/bench-peers.sh
# environment (defaults):
#   N=1000000 KEYS=100000 SEED=42   generator: background events, keys, seed
#   REPEATS=5                       rounds; medians are reported (cep's run is a
#                                   quarter of a second, so one burst of load from
#                                   a neighbour moves it by a third: three rounds
#                                   gave 17x and 20x Flink on the same binary)
#   ENGINES="cep flink-datastream flink-sql siddhi"
#                                   what to run; cep always runs (it is the reference
#                                   for the ratio and the match check)
#   WORK=/tmp/cep-bench-peers       data, outputs, logs
#   PEER=../shared/peers/flink      the Flink peer harness
#   JAVA_HEAP=3g                    -Xms/-Xmx of the Flink and Siddhi JVMs
#   SKIP_BUILD=1                    use the existing target/release/cep (no cargo build)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

N=${N:-1000000}
KEYS=${KEYS:-100000}
SEED=${SEED:-42}
REPEATS=${REPEATS:-5}
ENGINES=${ENGINES:-cep flink-datastream flink-sql siddhi}
WORK=${WORK:-/tmp/cep-bench-peers}
PEER=${PEER:-$ROOT/../shared/peers/flink}
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}
# run.sh reads FLINKPEER_VENV; export it so the install below and run.sh agree.
export FLINKPEER_VENV=${FLINKPEER_VENV:-$CACHE/flinkpeer/venv}
export JAVA_HEAP=${JAVA_HEAP:-3g}
SIDDHI_HOME=${SIDDHI_HOME:-$CACHE/siddhipeer}
SIDDHI_SRC=$ROOT/scripts/peers/siddhi/SiddhiPeer.java
# PySiddhi 5.1.0 is the only place on PyPI that ships the Siddhi 5.1.7 jars
# (siddhi-core, -query-api, -query-compiler, -annotations and their deps).
SIDDHI_WHEEL=PySiddhi-5.1.0-py2.py3-none-manylinux1_x86_64.whl
SIDDHI_WHEEL_SHA256=f3dd01034458fd6ca9b1ccf198f5093c953340b37bb5ad7284937d49e7ac00c1
WITHIN_MS=300000   # the query's 5 min, for the inclusive-window check

log() { echo "bench-peers: $*" >&2; }
die() { log "error: $*"; exit 1; }
wants() { [[ " $ENGINES " == *" $1 "* ]]; }

if [ ! -f "$PEER/gen_events.py" ] || [ ! -f "$PEER/run.sh" ]; then die "no peer harness at $PEER (set PEER)"; fi
if ! command -v java >/dev/null || ! command -v javac >/dev/null; then die "needs a JDK 17 (java and javac)"; fi
[[ "$REPEATS" =~ ^[1-9][0-9]*$ ]] || die "REPEATS must be a positive integer"
for e in $ENGINES; do
  case $e in cep | flink-datastream | flink-sql | siddhi) ;; *) die "unknown engine '$e' in ENGINES" ;; esac
done
mkdir -p "$WORK"

# ---- installs (each a no-op when already done) -------------------------------

ensure_flink() {
  local py=$FLINKPEER_VENV/bin/python
  if [ -x "$py" ] && "$py" -c 'import pyflink' 2>/dev/null; then return; fi
  log "installing apache-flink 2.3.0 into $FLINKPEER_VENV (once, ~70 s)"
  python3 -m venv "$FLINKPEER_VENV"
  "$FLINKPEER_VENV/bin/pip" install -q --upgrade pip
  "$FLINKPEER_VENV/bin/pip" install -q apache-flink==2.3.0
}

ensure_siddhi() {
  local lib=$SIDDHI_HOME/lib
  if [ ! -f "$lib/siddhi-core-5.1.7.jar" ]; then
    log "fetching the Siddhi 5.1.7 jars (PySiddhi 5.1.0 wheel) into $SIDDHI_HOME"
    mkdir -p "$SIDDHI_HOME/dl"
    # Download only (no install, no deps: the wheel's Python side is not used),
    # pinned by hash. Any python with pip will do; fall back to a private venv.
    echo "pysiddhi==5.1.0 --hash=sha256:$SIDDHI_WHEEL_SHA256" > "$SIDDHI_HOME/dl/requirements.txt"
    local pip=(python3 -m pip)
    if ! python3 -m pip --version >/dev/null 2>&1; then
      python3 -m venv "$SIDDHI_HOME/venv"
      pip=("$SIDDHI_HOME/venv/bin/pip")
    fi
    "${pip[@]}" download -q --no-deps --only-binary=:all: --require-hashes \
      -r "$SIDDHI_HOME/dl/requirements.txt" -d "$SIDDHI_HOME/dl"
    # The wheel is a zip; the jars sit in __PySiddhiProxy/target/lib/. Extract to a
    # temp dir and rename, so an interrupted run never leaves a half-filled lib/.
    rm -rf "$lib.tmp" && mkdir -p "$lib.tmp"
    python3 - "$SIDDHI_HOME/dl/$SIDDHI_WHEEL" "$lib.tmp" <<'EOF'
import os, sys, zipfile
wheel, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith("__PySiddhiProxy/target/lib/") and name.endswith(".jar"):
            with open(os.path.join(dest, os.path.basename(name)), "wb") as f:
                f.write(z.read(name))
EOF
    [ -f "$lib.tmp/siddhi-core-5.1.7.jar" ] || die "no siddhi-core-5.1.7.jar in $SIDDHI_WHEEL"
    rm -rf "$lib" && mv "$lib.tmp" "$lib"
  fi
  local cls=$SIDDHI_HOME/build/SiddhiPeer.class
  if [ ! -f "$cls" ] || [ "$SIDDHI_SRC" -nt "$cls" ]; then
    log "compiling $SIDDHI_SRC"
    mkdir -p "$SIDDHI_HOME/build"
    javac -nowarn -d "$SIDDHI_HOME/build" -cp "$lib/*" "$SIDDHI_SRC"
  fi
}

if wants flink-datastream || wants flink-sql; then ensure_flink; fi
if wants siddhi; then ensure_siddhi; fi

# Our engine. A private copy of the binary: the working tree may be rebuilt by
# someone else while the benchmark runs, and every round must time the same code.
if [ "${SKIP_BUILD:-0}" != 1 ]; then cargo build --release -q; fi
[ -x target/release/cep ] || die "no target/release/cep (build it, or unset SKIP_BUILD)"
cp target/release/cep "$WORK/cep"
CEP_REV="$(git describe --always --dirty 2>/dev/null || echo unknown)"
if [ "${SKIP_BUILD:-0}" = 1 ]; then
  CEP_REV="target/release/cep of $(date -r target/release/cep -u '+%Y-%m-%d %H:%M UTC') (not rebuilt; tree at $CEP_REV)"
fi

# ---- input -------------------------------------------------------------------

# The generator is a pure function of its arguments, so a file is reused unless
# the generator is newer than it. It writes FILE.meta.json after FILE, so a
# meta file proves FILE is complete (not cut short by an interrupted run).
DATA=$WORK/events-n$N-k$KEYS-s$SEED.jsonl
TINY=$WORK/tiny-s$SEED.jsonl
generate() { # file n keys
  if [ -f "$1.meta.json" ] && [ "$1.meta.json" -nt "$PEER/gen_events.py" ]; then return; fi
  log "generating $1"
  rm -f "$1.meta.json"
  python3 "$PEER/gen_events.py" --n "$2" --keys "$3" --seed "$SEED" --format jsonl --out "$1" 2>/dev/null ||
    die "gen_events.py failed"
}
generate "$DATA" "$N" "$KEYS"
generate "$TINY" 10 3
EVENTS=$(wc -l < "$DATA")   # N background events + the generator's edge-case events

cat > "$WORK/fraud_strict.cep" <<'EOF'
pattern fraud_strict
  from events key key time ts within 5m
  match a next b
  define a as amount < 10, b as amount > 500
end
EOF

# ---- runners -----------------------------------------------------------------
# run ENGINE INPUT OUT: runs one engine on INPUT, leaves its matches, sorted
# `key,first_ts,last_ts` (the harness's format), in OUT and echoes the wall ms.
# Only the engine's own command is inside the clock; normalising is not.

now_ms() { date +%s%3N; }
sort_matches() { LC_ALL=C sort -t, -k1,1 -k2,2n -k3,3n; }

run() {
  local engine=$1 input=$2 out=$3 t0 t1 errlog=$WORK/$1.log
  case $engine in
    cep)
      t0=$(now_ms)
      "$WORK/cep" replay --patterns "$WORK/fraud_strict.cep" --input "$input" --lateness 5s \
        > "$WORK/cep.alerts.jsonl" 2> "$errlog" || die "cep failed, see $errlog"
      t1=$(now_ms)
      python3 -c '
import json, sys
for line in sys.stdin:
    a = json.loads(line)
    print("%s,%d,%d" % (a["key"], a["start_ms"], a["end_ms"]))' < "$WORK/cep.alerts.jsonl" | sort_matches > "$out"
      ;;
    flink-datastream | flink-sql)
      # Parallelism 1 (the harness's default): the single input file is read by one
      # source subtask anyway, and only 2 cores are available for everything.
      t0=$(now_ms)
      "$PEER/run.sh" --input "$input" --format jsonl --api "${engine#flink-}" --query fraud_strict \
        --parallelism 1 --out "$out" > "$WORK/$engine.result" 2> "$errlog" ||
        die "$engine failed, see $errlog"
      t1=$(now_ms)
      ;;
    siddhi)
      t0=$(now_ms)
      java -Xms"$JAVA_HEAP" -Xmx"$JAVA_HEAP" -cp "$SIDDHI_HOME/build:$SIDDHI_HOME/lib/*" \
        SiddhiPeer --input "$input" --out "$out" > "$WORK/$engine.result" 2> "$errlog" ||
        die "siddhi failed, see $errlog"
      t1=$(now_ms)
      ;;
  esac
  echo $((t1 - t0))
}

# ---- measure -----------------------------------------------------------------

RUN_ENGINES=cep
for e in flink-datastream flink-sql siddhi; do if wants "$e"; then RUN_ENGINES+=" $e"; fi; done

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo n/a)
for round in $(seq "$REPEATS"); do
  for e in $RUN_ENGINES; do
    log "round $round/$REPEATS: $e"
    run "$e" "$TINY" "$WORK/$e.tiny.csv" >> "$WORK/$e.tiny.ms.$$"
    run "$e" "$DATA" "$WORK/$e.matches.csv" >> "$WORK/$e.full.ms.$$"
  done
done

median() { sort -n "$1" | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
secs() { awk -v ms="$1" 'BEGIN {printf(ms < 1000 ? "%.3f s" : "%.2f s", ms / 1000)}'; }
rate() { # events ms -> "1.86 M" / "172 k"
  awk -v n="$1" -v ms="$2" 'BEGIN {
    if (ms <= 0) { print "-"; exit }
    r = n / (ms / 1000)
    if (r >= 1e6) printf("%.2f M", r / 1e6); else printf("%.0f k", r / 1e3) }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a <= 0 || b <= 0) print "-"; else printf("%.1f×", a / b)}'; }

# shellcheck disable=SC2016  # the backquotes are markdown, not command substitution
declare -A LABEL=(
  [cep]='`cep replay`'
  [flink-datastream]='Flink Pattern API'
  [flink-sql]='Flink SQL `MATCH_RECOGNIZE`'
  [siddhi]='Siddhi 5.1.7'
)
declare -A WALL START NET MATCHES
for e in $RUN_ENGINES; do
  WALL[$e]=$(median "$WORK/$e.full.ms.$$")
  START[$e]=$(median "$WORK/$e.tiny.ms.$$")
  NET[$e]=$(awk -v w="${WALL[$e]}" -v s="${START[$e]}" 'BEGIN {print w - s}')
  MATCHES[$e]=$(wc -l < "$WORK/$e.matches.csv")
  rm -f "$WORK/$e.full.ms.$$" "$WORK/$e.tiny.ms.$$"
done

# ---- match check -------------------------------------------------------------
# verdict ENGINE: compares ENGINE's matches with cep's; sets VERDICT, returns 1 on
# a mismatch. The only tolerated difference: extra matches of the peer whose
# last_ts - first_ts is exactly the window (inclusive `within`).
count() { if [ -z "$1" ]; then echo 0; else wc -l <<< "$1"; fi; }
verdict() {
  local e=$1 ours=$WORK/cep.matches.csv theirs=$WORK/$1.matches.csv missing extra boundary
  if cmp -s "$ours" "$theirs"; then
    VERDICT="${MATCHES[$e]} matches, identical to cep's (key, first ts, last ts)"
    return 0
  fi
  missing=$(comm -23 <(LC_ALL=C sort "$ours") <(LC_ALL=C sort "$theirs"))
  extra=$(comm -13 <(LC_ALL=C sort "$ours") <(LC_ALL=C sort "$theirs"))
  boundary=$(awk -F, -v w="$WITHIN_MS" '$3 - $2 == w' <<< "$extra")
  if [ "$e" = siddhi ] && [ -z "$missing" ] && [ -n "$extra" ] && [ "$extra" = "$boundary" ]; then
    VERDICT="${MATCHES[$e]} vs ${MATCHES[cep]} matches: agree except $(count "$extra") extra at exactly 5 min"
    VERDICT+=" ($(cut -d, -f1 <<< "$extra" | paste -sd, -)), the documented difference: Siddhi's \`within\`"
    VERDICT+=" is inclusive (last - first <= 5 min), ours and Flink's strict (< 5 min); all other matches identical"
    return 0
  fi
  VERDICT="MISMATCH: ${MATCHES[$e]} vs ${MATCHES[cep]} matches; $(count "$missing") of cep's missing,"
  VERDICT+=" $(count "$extra") extra (diff $WORK/cep.matches.csv $theirs)"
  return 1
}

# ---- report ------------------------------------------------------------------

rc=0
echo
echo "$EVENTS events ($N generated + $((EVENTS - N)) edge-case events) over $KEYS keys"
echo "(peer generator \`gen_events.py --keys $KEYS --seed $SEED\`, JSON lines, in ts order),"
echo "query \`fraud_strict\` (amount < 10, next event of the key > 500, within 5 min);"
echo "cep: \`replay --lateness 5s\`; Flink 2.3.0: the harness's \`run.sh\`, parallelism 1, 5 s"
echo "watermark delay; Siddhi 5.1.7: sequence \`every s=events[amount < 10], l=events[amount > 500]"
echo "within 5 min\` in \`partition with (key of events)\`, \`@app:playback\` (event time = ts)."
echo "Java $(java -version 2>&1 | awk -F'"' 'NR == 1 {print $2}'), JAVA_HEAP=$JAVA_HEAP; $(date -u +%Y-%m-%d), cep $CEP_REV."
echo "Medians of $REPEATS round(s); wall = whole command, start-up = same command on 10 events,"
echo "net = wall - start-up."
echo "1-min/5-min/15-min load average before the first round: $LOAD_BEFORE."
echo
echo "| engine | wall | start-up | net | events/s (net) | ratio to cep (net) | matches |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for e in $RUN_ENGINES; do
  printf '| %s | %s | %s | %s | %s | %s | %s |\n' "${LABEL[$e]}" "$(secs "${WALL[$e]}")" \
    "$(secs "${START[$e]}")" "$(secs "${NET[$e]}")" "$(rate "$EVENTS" "${NET[$e]}")" \
    "$(ratio "${NET[$e]}" "${NET[cep]}")" "${MATCHES[$e]}"
done
echo
for e in $RUN_ENGINES; do
  [ "$e" = cep ] && continue
  if verdict "$e"; then echo "- ${LABEL[$e]}: ok, $VERDICT."; else echo "- ${LABEL[$e]}: $VERDICT."; rc=1; fi
done
exit "$rc"
