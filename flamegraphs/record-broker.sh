#!/usr/bin/env bash
# Record a flame graph of the broker process under a named load from
# `sluice bench` (the 2-partition, 1 KiB-record, 1000-record-batch shape).
#
#   flamegraphs/record-broker.sh produce-acks1     # -> flamegraphs/broker-produce-acks1.svg
#   flamegraphs/record-broker.sh produce-acks-all
#   flamegraphs/record-broker.sh consume           # fills the log first, then profiles the reads
#   flamegraphs/record-broker.sh produce-small     # 10 x 100-byte records per batch: per-request costs
#   flamegraphs/record-broker.sh produce-idempotent  # acks=all with producer ids (issue 13)
#
# Only the broker is profiled (perf record -p), not the load generator.
# Needs perf (Debian: linux-perf) and inferno (`cargo install inferno`).
# SLUICE_PERF_DIR chooses the data directory's parent (default /tmp).
set -euo pipefail
load=${1:?usage: record-broker.sh produce-acks1|produce-acks-all|consume [seconds]}
seconds=${2:-8}
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."
command -v perf >/dev/null || { echo "perf is missing: apt-get install linux-perf" >&2; exit 1; }
command -v inferno-flamegraph >/dev/null || { echo "inferno is missing: cargo install inferno" >&2; exit 1; }
case $load in
  produce-acks1) bench=(produce --acks 1 --duration "$seconds" --warmup 0) ;;
  produce-acks-all) bench=(produce --acks all --duration "$seconds" --warmup 0) ;;
  consume) bench=(consume) ;;
  produce-small) bench=(produce --acks 1 --record-size 100 --batch-records 10 --duration "$seconds" --warmup 0) ;;
  produce-idempotent) bench=(produce --acks all --idempotent --rounds 1 --duration "$seconds" --warmup 0) ;;
  *) echo "unknown load $load: produce-acks1, produce-acks-all, consume, produce-small or produce-idempotent" >&2; exit 2 ;;
esac
cargo build --release --quiet
sluice=target/release/sluice
data=$(mktemp -d "${SLUICE_PERF_DIR:-/tmp}/sluice-flame.XXXXXX")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
metrics=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$sluice" serve --data-dir "$data" --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$metrics" \
  >"$data.log" 2>&1 &
broker=$!
cleanup() { kill "$broker" 2>/dev/null || true; wait "$broker" 2>/dev/null || true; rm -rf "$data" "$data.log" "$data.perf" "$data.folded"; }
trap cleanup EXIT
for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
if [ "$load" = consume ]; then
  "$sluice" bench produce --brokers "127.0.0.1:$port" --acks 1 --duration "$seconds" --warmup 0 >/dev/null
fi
perf record -e cpu-clock -F 999 -g -p "$broker" -o "$data.perf" >/dev/null 2>&1 &
perf=$!
sleep 0.5
"$sluice" bench "${bench[@]}" --brokers "127.0.0.1:$port"
kill -INT "$perf"
wait "$perf" || true
perf script -i "$data.perf" 2>/dev/null | inferno-collapse-perf >"$data.folded"
inferno-flamegraph --title "sluice broker: $load (sluice bench ${bench[*]})" <"$data.folded" >"$here/broker-$load.svg"
echo "wrote $here/broker-$load.svg"
# The share of broker samples in the metrics code (src/telemetry, the metrics crates).
awk '{ n = $NF; total += n; if ($0 ~ /telemetry|metrics_exporter_prometheus|metrics_util|metrics::/) hit += n }
     END { if (total) printf "metrics code: %.2f%% of %.0f samples\n", 100 * hit / total, total }' "$data.folded"
# The share in producer state (idempotent and transactional checks).
awk '{ n = $NF; total += n; if ($0 ~ /producer_state/) hit += n }
     END { if (total) printf "producer state: %.2f%% of %.0f samples\n", 100 * hit / total, total }' "$data.folded"
