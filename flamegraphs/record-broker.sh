#!/usr/bin/env bash
# Record a flame graph of the broker process under a named load from
# `sluice bench` (the 2-partition, 1 KiB-record, 1000-record-batch shape).
#
#   flamegraphs/record-broker.sh produce-acks1     # -> flamegraphs/broker-produce-acks1.svg
#   flamegraphs/record-broker.sh produce-acks-all
#   flamegraphs/record-broker.sh consume           # fills the log first, then profiles the reads
#   flamegraphs/record-broker.sh consume-hot       # ~1 GB just written, read from the tail cache
#                                                  # (issue 19: a 1 GiB cache per shard for this run)
#   flamegraphs/record-broker.sh consume-cold      # the log filled with the tail cache off, so every
#                                                  # fetch reads the segment files (O_DIRECT by default)
#   flamegraphs/record-broker.sh produce-small     # 10 x 100-byte records per batch: per-request costs
#   flamegraphs/record-broker.sh produce-idempotent  # acks=all with producer ids (issue 13)
#   flamegraphs/record-broker.sh compaction        # acks=all produce while the cleaner compacts a
#                                                  # 300 MB table (issue 17; needs kcat)
#   flamegraphs/record-broker.sh produce-many      # acks=1 over 10 000 partitions, created by a
#                                                  # warm-up run first (issue 19 item 8; raises
#                                                  # the open-files limit to the hard limit)
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
  consume-hot) bench=(consume) ;;
  consume-cold) bench=(consume) ;;
  produce-small) bench=(produce --acks 1 --record-size 100 --batch-records 10 --duration "$seconds" --warmup 0) ;;
  produce-idempotent) bench=(produce --acks all --idempotent --rounds 1 --duration "$seconds" --warmup 0) ;;
  compaction) bench=(produce --acks all --duration "$seconds" --warmup 0) ;;
  produce-many) bench=(produce --acks 1 --partitions 10000 --topic many --duration "$seconds" --warmup 0) ;;
  *) echo "unknown load $load: produce-acks1, produce-acks-all, consume, consume-hot, consume-cold, produce-small, produce-idempotent, compaction or produce-many" >&2; exit 2 ;;
esac
cargo build --release --quiet
if [ "$load" = produce-many ]; then
  # A consume-queue file per partition, plus connections and segments.
  ulimit -n "$(ulimit -Hn)"
fi
sluice=target/release/sluice
data=$(mktemp -d "${SLUICE_PERF_DIR:-/tmp}/sluice-flame.XXXXXX")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
metrics=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
config=/dev/null
if [ "$load" = compaction ]; then
  config="$data.toml"
  printf '[storage]\ncleaner_backoff_ms = 100\n' >"$config"
fi
if [ "$load" = consume-hot ]; then
  config="$data.toml"
  printf '[storage]\ntail_cache_bytes = 1073741824\n' >"$config"
fi
if [ "$load" = consume-cold ]; then
  config="$data.toml"
  printf '[storage]\ntail_cache_bytes = 0\n' >"$config"
fi
"$sluice" serve --data-dir "$data" --config "$config" --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$metrics" \
  >"$data.log" 2>&1 &
broker=$!
cleanup() { kill "$broker" 2>/dev/null || true; wait "$broker" 2>/dev/null || true; rm -rf "$data" "$data.log" "$data.perf" "$data.folded" "$data.toml" "$data.updates"; }
trap cleanup EXIT
for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
if [ "$load" = compaction ]; then
  # A table of 300 MB of 1 KiB updates over 10 000 keys, held back from the
  # cleaner until it is written whole.
  "$sluice" topics create table --partitions 2 --brokers "127.0.0.1:$port" \
    --config cleanup.policy=compact --config min.cleanable.dirty.ratio=0.01 \
    --config min.compaction.lag.ms=3600000 >/dev/null
  value=$(head -c 1000 /dev/zero | tr '\0' 'v')
  awk -v v="$value" 'BEGIN { for (i = 0; i < 307200; i++) printf "key-%d:%s\n", i % 10000, v }' >"$data.updates"
  kcat -b "127.0.0.1:$port" -P -t table -K: -X linger.ms=20 <"$data.updates"
  "$sluice" topics alter table --brokers "127.0.0.1:$port" --config min.compaction.lag.ms=0 >/dev/null
fi
if [ "$load" = consume ] || [ "$load" = consume-cold ]; then
  "$sluice" bench produce --brokers "127.0.0.1:$port" --acks 1 --duration "$seconds" --warmup 0 >/dev/null
fi
if [ "$load" = produce-many ]; then
  # Creates the 10 000 partitions and gives each its first entries.
  "$sluice" bench "${bench[@]:0:7}" --duration 3 --warmup 0 --brokers "127.0.0.1:$port" >/dev/null
fi
if [ "$load" = consume-hot ]; then
  # 2 s at 500 MB/s: ~1 GB, all of it still in the shards' tail caches.
  "$sluice" bench produce --brokers "127.0.0.1:$port" --acks 1 --rate 500 --duration 2 --warmup 0 >/dev/null
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
# The share in the log cleaner (issue 17).
awk '{ n = $NF; total += n; if ($0 ~ /cleaner|compaction/) hit += n }
     END { if (total) printf "log cleaner: %.2f%% of %.0f samples\n", 100 * hit / total, total }' "$data.folded"
# The share in producer state (idempotent and transactional checks).
awk '{ n = $NF; total += n; if ($0 ~ /producer_state/) hit += n }
     END { if (total) printf "producer state: %.2f%% of %.0f samples\n", 100 * hit / total, total }' "$data.folded"
# The share in consume-queue upkeep and file-system calls (issue 19 item 3).
awk '{ n = $NF; total += n; if ($0 ~ /consume_queue|queue_file|page_fault|ext4_/) hit += n }
     END { if (total) printf "consume queues and file system: %.2f%% of %.0f samples\n", 100 * hit / total, total }' "$data.folded"
# The request clock's own work (issue 20's request_percentage): the time
# reads around each poll of a handler (stacks whose last three frames pass
# through request_clock), and the per-request quota checks.
awk '{ n = $NF; total += n; s = $0; sub(/ [0-9]+$/, "", s); k = split(s, f, ";");
       tail = f[k]; if (k > 1) tail = f[k-1] ";" tail; if (k > 2) tail = f[k-2] ";" tail;
       if (tail ~ /request_clock/ || s ~ /record_request_time|any_applies/) hit += n }
     END { if (total) printf "request clock and quota checks: %.2f%% of %.0f samples\n", 100 * hit / total, total }' "$data.folded"
