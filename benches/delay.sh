#!/usr/bin/env bash
# Issue 18's delayed-delivery figures, on one machine, one broker at a time
# (fresh data directory each, 2 shards):
#
#   benches/delay.sh SLUICE_BINARY [ROUNDS] [SECONDS]
#
# 1. Produce throughput of delayed records against plain records, rounds
#    interleaved: `sluice bench produce --delayed --rounds ROUNDS --duration
#    SECONDS --batch-records 500` (every delayed record waits an hour, past
#    the run; 500 records of 1 KiB per batch leave room under
#    max.message.bytes for the header). Prints delayed_ratio.
# 2. A burst: `sluice bench delivery` (records due at one instant on one
#    partition): delivery rate and how late the first and last were.
# 3. Steady delivery at a fixed rate: 1 KiB records delayed 3 s produced to
#    one partition at RATE_MB (default 51: about 50 000 records/s) for
#    SECONDS, then the broker's `sluice_delay_delivery_lateness_seconds`
#    histogram: the share of records appended within 100 ms of their due
#    time.
# 4. Memory: PENDING (default 1 000 000) records of 100 bytes delayed an hour
#    on one partition; the broker's RSS before, with them pending, and after
#    a restart that recovers them (VmRSS of /proc/PID/status).
set -euo pipefail

binary=${1:?usage: delay.sh SLUICE_BINARY [ROUNDS] [SECONDS]}
rounds=${2:-3}
seconds=${3:-6}
rate_mb=${RATE_MB:-51}
pending=${PENDING:-1000000}
sections=${SECTIONS:-produce,burst,steady,memory}
work=$(mktemp -d "${SLUICE_AB_DIR:-target}/delay-bench.XXXXXX")
port=${SLUICE_AB_PORT:-22092}
metrics=$((port + 1))
pid=""

cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

printf '[metrics]\nrefresh_interval_ms = 200\n' >"$work/sluice.toml"

start() {
    "$binary" serve --shards 2 --data-dir "$work/data" --config "$work/sluice.toml" \
        --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$metrics" \
        >>"$work/broker.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do
        curl -sf "127.0.0.1:$metrics/metrics" >/dev/null 2>&1 && return
        sleep 0.1
    done
    echo "the broker did not start; its log:" >&2
    tail -20 "$work/broker.log" >&2
    exit 1
}

stop() {
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    pid=""
}

fresh() {
    [ -n "$pid" ] && stop
    rm -rf "$work/data"
    start
}

rss_mb() { awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$pid/status"; }

metric() {
    curl -s "127.0.0.1:$metrics/metrics" | awk -v name="$1" '
        index($0, name) == 1 { sum += $NF } END { printf "%.0f", sum }'
}

bench() { "$binary" bench "$@" --brokers "127.0.0.1:$port"; }

on() { [[ ",$sections," == *",$1,"* ]]; }

if on produce; then
echo "== produce: delayed records against plain records"
fresh
bench produce --topic cmp --delayed --rounds "$rounds" --duration "$seconds" \
    --batch-records 500 | tail -1
fi

if on burst; then
echo "== delivery: records due at one instant, one partition"
fresh
bench delivery --topic burst --partitions 1 --producers 1 --batch-records 500 \
    --produce-for 2 --lead 8
fi

if on steady; then
echo "== delivery at a steady rate: ${rate_mb} MB/s of 1 KiB records, delayed 3 s"
fresh
bench produce --topic steady --partitions 1 --producers 1 --acks 1 --warmup 0 \
    --rate "$rate_mb" --duration "$seconds" --batch-records 100 \
    --header sluice.delay.ms=3000 | grep -E "throughput" || true
sleep 4
for _ in $(seq 300); do
    [ "$(metric sluice_delay_pending_records)" = 0 ] && break
    sleep 0.1
done
sleep 1 # one metrics refresh
within=$(metric 'sluice_delay_delivery_lateness_seconds_bucket{shard="0",le="0.1"}')
within=$((within + $(metric 'sluice_delay_delivery_lateness_seconds_bucket{shard="1",le="0.1"}')))
total=$(metric 'sluice_delay_delivery_lateness_seconds_count')
echo "delivered $total records (about $((total / seconds)) a second); within 100 ms of due: $within ($(awk -v a="$within" -v b="$total" 'BEGIN { printf "%.2f", b ? 100 * a / b : 0 }') %)"
fi

if on memory; then
echo "== memory: $pending pending records of 100 bytes on one partition, against plain records"
# load SECONDS HEADER...: produce 100-byte records to one partition (5000 a
# batch stay under max.message.bytes with a header) for SECONDS.
load() {
    local seconds=$1
    shift
    bench produce --topic held --partitions 1 --producers 1 --acks 1 --warmup 0 \
        --record-size 100 --batch-records 5000 --duration "$seconds" "$@" >"$work/loader.log" 2>&1
}
# Delayed first, until PENDING are held: that many seconds for plain.
fresh
started=$(date +%s.%N)
# The binary itself in the background (not through `bench`, whose
# subshell a kill would leave the load generator running behind).
"$binary" bench produce --brokers "127.0.0.1:$port" --topic held --partitions 1 \
    --producers 1 --acks 1 --warmup 0 --record-size 100 --batch-records 5000 \
    --duration 600 --header sluice.delay.ms=3600000 >"$work/loader.log" 2>&1 &
loader=$!
for _ in $(seq 6000); do
    [ "$(metric sluice_delay_pending_records)" -ge "$pending" ] && break
    if ! kill -0 "$loader" 2>/dev/null; then
        echo "the load generator stopped:" >&2
        tail -5 "$work/loader.log" >&2
        exit 1
    fi
    sleep 0.1
done
kill "$loader" 2>/dev/null || true
wait "$loader" 2>/dev/null || true
took=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
count=-1
while [ "$count" != "$(metric sluice_delay_pending_records)" ]; do
    count=$(metric sluice_delay_pending_records)
    sleep 0.5
done
delayed=$(rss_mb)
stop
start
for _ in $(seq 600); do
    [ "$(metric sluice_delay_pending_records)" = "$count" ] && break
    sleep 0.1
done
recovered=$(rss_mb)
fresh
load "$took"
sleep 1
plain=$(rss_mb)
echo "RSS with $count records pending: ${delayed} MB; after a restart that recovered them: ${recovered} MB; with the same ${took} s of plain records instead: ${plain} MB"
fi
