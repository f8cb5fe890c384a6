#!/usr/bin/env bash
# Issue 17: what log compaction costs produce. One broker (2 shards); in each
# round, a table topic (2 partitions) is filled with keyed updates (many per
# key) and then `sluice bench produce` runs on another topic of the same
# shards for SECONDS, twice, interleaved:
#   clean  the table has cleanup.policy=compact, so each shard's cleaner
#          compacts it during the measured window;
#   idle   the table has cleanup.policy=delete: the same data, no cleaning.
# Prints one line per run (mode, round, MB/s, p99 ms, bytes the cleaners
# read and wrote during the window) and the median ratio clean / idle.
#
#   benches/compaction-ab.sh SLUICE_BINARY [ROUNDS] [SECONDS] [TABLE_MB]
#
# Needs kcat (to write keyed records). CLEANER_IO_MB (default 64, the
# default of storage.cleaner_io_max_bytes_per_second) sets the cleaner's
# throttle.
set -euo pipefail

binary=${1:?usage: compaction-ab.sh SLUICE_BINARY [ROUNDS] [SECONDS] [TABLE_MB]}
rounds=${2:-3}
seconds=${3:-6}
table_mb=${4:-400}
cleaner_io_mb=${CLEANER_IO_MB:-64}
work=$(mktemp -d "${SLUICE_AB_DIR:-target}/compaction-ab.XXXXXX")
port=${SLUICE_AB_PORT:-22000}
metrics_port=$((port + 1))
broker=""

cleanup() {
    [ -n "$broker" ] && kill "$broker" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/sluice.toml" <<EOF
[storage]
cleaner_backoff_ms = 100
cleaner_io_max_bytes_per_second = $((cleaner_io_mb * 1024 * 1024))
EOF
"$binary" serve --shards 2 --data-dir "$work/data" --config "$work/sluice.toml" \
    --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$metrics_port" \
    2>"$work/broker.log" &
broker=$!
for _ in $(seq 100); do
    grep -q "sluice ready" "$work/broker.log" && break
    sleep 0.1
done
grep -q "sluice ready" "$work/broker.log" || { cat "$work/broker.log" >&2; exit 1; }

# 1 KiB values over 10 000 keys: the table compacts to about 10 MB.
value=$(head -c 1000 /dev/zero | tr '\0' 'v')
records=$((table_mb * 1024))
awk -v n="$records" -v v="$value" 'BEGIN { for (i = 0; i < n; i++) printf "key-%d:%s\n", i % 10000, v }' \
    >"$work/updates.txt"

cleaner_bytes() {
    curl -s "http://127.0.0.1:$metrics_port/metrics" |
        awk '/^sluice_compaction_(read|written)_bytes_total/ { sum += $2 } END { printf "%d", sum }'
}

results=()
run() {
    local mode=$1 round=$2 policy
    [ "$mode" = clean ] && policy=compact || policy=delete
    "$binary" topics create "table-$round-$mode" --partitions 2 --brokers "127.0.0.1:$port" \
        --config "cleanup.policy=$policy" --config min.cleanable.dirty.ratio=0.01 >/dev/null
    # The table is written in full before the cleaners may start: a long
    # min.compaction.lag.ms holds them back until it is lifted below.
    "$binary" topics alter "table-$round-$mode" --brokers "127.0.0.1:$port" \
        --config min.compaction.lag.ms=3600000 >/dev/null
    kcat -b "127.0.0.1:$port" -P -t "table-$round-$mode" -K: -X linger.ms=20 <"$work/updates.txt"
    "$binary" topics alter "table-$round-$mode" --brokers "127.0.0.1:$port" \
        --config min.compaction.lag.ms=0 >/dev/null
    local before after
    before=$(cleaner_bytes)
    local out
    out=$("$binary" bench produce --brokers "127.0.0.1:$port" --topic "load-$round-$mode" \
        --partitions 2 --acks all --duration "$seconds" --json 2>/dev/null)
    after=$(cleaner_bytes)
    local mbps p99
    mbps=$(echo "$out" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["throughput_mb_s"], 1))')
    p99=$(echo "$out" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["p99_ms"], 2))')
    echo "mode=$mode round=$round MB/s=$mbps p99_ms=$p99 cleaner_MB=$(((after - before) / 1048576))"
    results+=("$mode $mbps")
}

for round in $(seq "$rounds"); do
    if ((round % 2)); then
        run clean "$round"
        run idle "$round"
    else
        run idle "$round"
        run clean "$round"
    fi
done

printf '%s\n' "${results[@]}" | python3 -c '
import statistics, sys
runs = {}
for line in sys.stdin:
    mode, mbps = line.split()
    runs.setdefault(mode, []).append(float(mbps))
clean, idle = statistics.median(runs["clean"]), statistics.median(runs["idle"])
print(f"median MB/s: clean {clean:.1f}, idle {idle:.1f}; clean/idle = {clean / idle:.2f}")
'
