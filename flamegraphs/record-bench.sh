#!/usr/bin/env bash
# Record a flame graph of one criterion benchmark of the storage bench.
#
#   flamegraphs/record-bench.sh 'append/store/1MiB/async/direct' append-1mib-async-direct
#
# Writes flamegraphs/<name>.svg. Needs perf (Debian:
# linux-perf) and inferno (`cargo install inferno`). Uses the cpu-clock
# software event, which works on VMs without hardware counters.
set -euo pipefail
filter=${1:?usage: record-bench.sh <criterion filter> <name>}
name=${2:?usage: record-bench.sh <criterion filter> <name>}
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."
command -v perf >/dev/null || { echo "perf is missing: apt-get install linux-perf" >&2; exit 1; }
command -v inferno-flamegraph >/dev/null || { echo "inferno is missing: cargo install inferno" >&2; exit 1; }
bench=$(cargo bench --bench storage --no-run --message-format=json 2>/dev/null \
  | grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4)
data=$(mktemp /tmp/sluice-perf.XXXXXX)
perf record -e cpu-clock -F 1999 -g -o "$data" -- "$bench" --bench "$filter" --measurement-time 8 >/dev/null 2>&1
perf script -i "$data" 2>/dev/null | inferno-collapse-perf > "$data.folded"
inferno-flamegraph --title "sluice: $filter" < "$data.folded" > "$here/$name.svg"
rm -f "$data" "$data.folded"
echo "wrote $here/$name.svg"
