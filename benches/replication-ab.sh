#!/usr/bin/env bash
# Issue 16's replication figures, on one machine: a three-node cluster with
# replication factor 3 (min.insync.replicas 2) against the same cluster
# with replication factor 1, rounds interleaved so that drift in the shared
# machine hits both alike; then how fast a returning replica catches up,
# against the disk's write+fdatasync baseline in the same run.
#
#   benches/replication-ab.sh SLUICE_BINARY [ROUNDS] [SECONDS]
#
# Each produce run: three fresh nodes on loopback (2 shards each, 64 MiB
# segments), `sluice bench produce --partitions 6 --producers 3 --acks A
# --duration SECONDS --json` (each producer sends to its partitions'
# leader), the nodes stopped and their directories removed. Prints one
# line per run: acks, round, replication factor, MB/s, p99 ms; then the
# median ratio RF=3 / RF=1 per acks level.
#
# Catch-up: with replication factor 3, node 3 is stopped, up to CATCHUP_MB
# (default 2048) are produced with acks=all through the other two once it
# is fenced, node 3 is started again and its
# `sluice_replica_copied_bytes_total` sampled every 50 ms until it stops
# moving. Prints the bytes it copied per second (first to last moving
# sample) next to `sluice bench baseline`'s write+fdatasync figure.
set -euo pipefail

binary=${1:?usage: replication-ab.sh SLUICE_BINARY [ROUNDS] [SECONDS]}
rounds=${2:-3}
seconds=${3:-6}
catchup_mb=${CATCHUP_MB:-2048}
work=$(mktemp -d "${SLUICE_AB_DIR:-target}/replication-ab.XXXXXX")
base_port=${SLUICE_AB_PORT:-21000}
pids=()

cleanup() {
    for pid in "${pids[@]:-}"; do
        [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

kafka_port() { echo $((base_port + $1 * 10)); }
metrics_port() { echo $((base_port + $1 * 10 + 1)); }
cluster_port() { echo $((base_port + $1 * 10 + 2)); }

peers() {
    local list=""
    for node in 1 2 3; do
        list="$list${list:+,}$node@127.0.0.1:$(cluster_port "$node")"
    done
    echo "$list"
}

# start_node NODE DIR CONFIG: start one node in the background.
start_node() {
    local node=$1 dir=$2 config=$3
    mkdir -p "$dir/node-$node"
    "$binary" serve --node-id "$node" --shards 2 \
        --data-dir "$dir/node-$node" --config "$config" \
        --listen "127.0.0.1:$(kafka_port "$node")" \
        --metrics-listen "127.0.0.1:$(metrics_port "$node")" \
        --cluster-listen "127.0.0.1:$(cluster_port "$node")" \
        --cluster-peers "$(peers)" 2>"$dir/node-$node.log" &
    pids[node]=$!
}

wait_ready() {
    local dir=$1 node=$2
    for _ in $(seq 600); do
        grep -qs "sluice ready" "$dir/node-$node.log" && return 0
        sleep 0.1
    done
    echo "node $node never became ready:" >&2
    tail -20 "$dir/node-$node.log" >&2
    exit 1
}

# start_cluster RF DIR: three nodes with replication factor RF.
start_cluster() {
    local rf=$1 dir=$2
    mkdir -p "$dir"
    local insync=2
    [ "$rf" = 1 ] && insync=1
    cat >"$dir/cluster.toml" <<EOF
[storage]
segment_bytes = 67108864
[cluster]
replication_factor = $rf
min_insync_replicas = $insync
EOF
    for node in 1 2 3; do start_node "$node" "$dir" "$dir/cluster.toml"; done
    for node in 1 2 3; do wait_ready "$dir" "$node"; done
}

stop_node() {
    local node=$1
    kill "${pids[node]}" 2>/dev/null || true
    wait "${pids[node]}" 2>/dev/null || true
    pids[node]=""
}

stop_cluster() {
    for node in 1 2 3; do stop_node "$node"; done
}

# Sum of a metric's series on a node.
metric_sum() {
    local node=$1 name=$2
    curl -s "http://127.0.0.1:$(metrics_port "$node")/metrics" |
        awk -v name="$name" 'index($0, name) == 1 { sum += $NF } END { printf "%.0f\n", sum }'
}

results="$work/results"
: >"$results"
for round in $(seq "$rounds"); do
    for acks in all 1; do
        for rf in 1 3; do
            dir="$work/rf$rf-$acks-$round"
            start_cluster "$rf" "$dir"
            json=$("$binary" bench produce --brokers "127.0.0.1:$(kafka_port 1)" \
                --topic rf-bench --partitions 6 --producers 3 --acks "$acks" \
                --duration "$seconds" --json 2>/dev/null)
            stop_cluster
            rm -rf "$dir"
            line=$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(sys.argv[2], sys.argv[3], sys.argv[4], "%.0f" % r["throughput_mb_s"], "%.2f" % r["p99_ms"])' \
                "$json" "$acks" "$round" "$rf")
            echo "acks=$line" | sed 's/^acks=\([^ ]*\) \([^ ]*\) \([^ ]*\)/acks=\1 round=\2 rf=\3 MB\/s=/; s/ \([0-9.]*\)$/ p99_ms=\1/'
            echo "$line" >>"$results"
        done
    done
done
python3 - "$results" <<'EOF'
import statistics, sys
runs = [line.split() for line in open(sys.argv[1]) if line.strip()]
for acks in ("all", "1"):
    pairs = {}
    for a, rnd, rf, mbs, p99 in runs:
        if a == acks:
            pairs.setdefault(rnd, {})[rf] = (float(mbs), float(p99))
    ratios = [p["3"][0] / p["1"][0] for p in pairs.values() if "1" in p and "3" in p and p["1"][0] > 0]
    p99s = [p["3"][1] / p["1"][1] for p in pairs.values() if "1" in p and "3" in p and p["1"][1] > 0]
    if ratios:
        print(f"acks={acks}: RF=3/RF=1 throughput median {statistics.median(ratios):.2f} "
              f"(rounds {', '.join(f'{r:.2f}' for r in ratios)}), p99 median {statistics.median(p99s):.2f}x")
EOF

# Catch-up of a returning replica.
dir="$work/catchup"
start_cluster 3 "$dir"
stop_node 3
# Written once node 3 is fenced (cluster.session_timeout_ms, 6 s), so that
# acks=all goes on with the other two.
sleep 8
"$binary" bench produce --brokers "127.0.0.1:$(kafka_port 1)" --topic catchup \
    --partitions 6 --producers 3 --acks all --duration 4 --warmup 0 \
    --rate $((catchup_mb / 4)) --json >/dev/null 2>&1
start_node 3 "$dir" "$dir/cluster.toml"
# Sample node 3's copied bytes every 50 ms from its start: the rate is
# what it copied between the first and the last sample that moved.
samples="$work/catchup.samples"
: >"$samples"
last=""
still=0
for _ in $(seq 2400); do
    copied=$(metric_sum 3 sluice_replica_copied_bytes_total 2>/dev/null || echo "")
    if [ -n "$copied" ] && [ "$copied" != "$last" ]; then
        echo "$(date +%s.%N) $copied" >>"$samples"
        last=$copied
        still=0
    elif [ -n "$last" ] && [ "$last" != 0 ]; then
        still=$((still + 1))
        [ "$still" -ge 40 ] && break
    fi
    sleep 0.05
done
stop_cluster
baseline=$("$binary" bench baseline --data-dir "$work" --json 2>/dev/null || echo '{}')
python3 - "$samples" "$baseline" <<'EOF'
import json, sys
samples = [tuple(map(float, line.split())) for line in open(sys.argv[1]) if line.strip()]
samples = [s for s in samples if s[1] > 0]
baseline = json.loads(sys.argv[2] or "{}")
if len(samples) < 2:
    print("catch-up: too few samples to measure")
    sys.exit(0)
(t0, c0), (t1, c1) = samples[0], samples[-1]
rate = (c1 - c0) / (t1 - t0) / 1e6 if t1 > t0 else 0
line = (f"catch-up: node 3 copied {c1 / 1e6:.0f} MB; {(c1 - c0) / 1e6:.0f} MB in {t1 - t0:.1f} s "
        f"between its first and last moving sample: {rate:.0f} MB/s")
disk = baseline.get("disk_sync_mb_s")
if disk:
    line += f"; disk write+fdatasync baseline {disk:.0f} MB/s in the same run: {rate / disk:.2f}x"
print(line)
EOF
