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
# Catch-up: with replication factor 3, node 3 is stopped, CATCHUP_MB
# (default 2048) are produced with acks=all through the other two, node 3
# is started again and timed until its copies' `sluice_replica_lag_bytes`
# are all 0. Prints the bytes it copied per second next to `sluice bench
# baseline`'s write+fdatasync figure.
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
"$binary" bench produce --brokers "127.0.0.1:$(kafka_port 1)" --topic catchup \
    --partitions 6 --producers 3 --acks all --duration 1 --json >/dev/null 2>&1
stop_node 3
per_second=$((catchup_mb / 4))
"$binary" bench produce --brokers "127.0.0.1:$(kafka_port 1)" --topic catchup \
    --partitions 6 --producers 3 --acks all --duration 4 --warmup 0 \
    --rate "$per_second" --json >/dev/null 2>&1 || true
start_node 3 "$dir" "$dir/cluster.toml"
started=$(date +%s.%N)
wait_ready "$dir" 3
copied_before=$(metric_sum 3 sluice_replica_copied_bytes_total)
behind=0
for _ in $(seq 1200); do
    lag=$(metric_sum 3 sluice_replica_lag_bytes)
    [ "$behind" = 0 ] && behind=$lag
    [ "$lag" = 0 ] && break
    sleep 0.1
done
finished=$(date +%s.%N)
copied=$(metric_sum 3 sluice_replica_copied_bytes_total)
stop_cluster
baseline=$("$binary" bench baseline --data-dir "$work" --json 2>/dev/null || echo '{}')
python3 - "$started" "$finished" "$copied" "$baseline" <<'EOF'
import json, sys
started, finished, copied = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
baseline = json.loads(sys.argv[4] or "{}")
seconds = finished - started
rate = copied / seconds / 1e6 if seconds > 0 else 0
disk = baseline.get("disk_sync_mb_s")
line = f"catch-up: node 3 copied {copied / 1e6:.0f} MB in {seconds:.1f} s from its start: {rate:.0f} MB/s"
if disk:
    line += f"; disk write+fdatasync baseline {disk:.0f} MB/s in the same run: {rate / disk:.2f}x"
print(line)
EOF
