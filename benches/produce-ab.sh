#!/usr/bin/env bash
# Produce throughput of two broker builds, A/B rounds interleaved so drift
# in the shared machine and its disk hits both alike.
#
#   benches/produce-ab.sh BEFORE_BINARY AFTER_BINARY [ROUNDS] [CODECS] [ACKS]
#
# Each run: a fresh data directory under $SLUICE_AB_DIR (default: target/),
# a default-config broker, `sluice bench produce --acks ACKS --compression C
# --duration 8 --json` from the AFTER binary's load generator (so only the
# broker differs), then the broker stopped and the directory removed.
# Prints one line per run: codec, round, build, MB/s, records/s, then ack
# latency p50, p99, p99.9 and max in ms.
# SLUICE_AB_BENCH_ARGS adds load-generator flags, e.g. "--record-size 100
# --batch-records 10" for small requests, where per-request costs show, or
# "--rate 100" for latency at a fixed load. SLUICE_AB_AFTER_CONFIG names a
# config file for the AFTER broker (a setting's effect, same binary twice).
set -euo pipefail

before=${1:?usage: produce-ab.sh BEFORE AFTER [ROUNDS] [CODECS] [ACKS]}
after=${2:?usage: produce-ab.sh BEFORE AFTER [ROUNDS] [CODECS] [ACKS]}
rounds=${3:-3}
codecs=${4:-"none lz4 zstd"}
acks=${5:-1}
work=${SLUICE_AB_DIR:-target}
port=19092

run() {
    local binary=$1 codec=$2 config=$3
    local dir
    dir=$(mktemp -d "$work/produce-ab.XXXXXX")
    "$binary" serve ${config:+--config "$config"} --data-dir "$dir" --listen "127.0.0.1:$port" \
        --metrics-listen 127.0.0.1:0 2>"$dir.log" &
    local broker=$!
    for _ in $(seq 100); do
        grep -qs "sluice ready" "$dir.log" && break
        sleep 0.1
    done
    "$after" bench produce --brokers "127.0.0.1:$port" --acks "$acks" \
        --compression "$codec" --duration 8 --json ${SLUICE_AB_BENCH_ARGS:-} 2>/dev/null
    kill "$broker"
    wait "$broker" || true
    rm -rf "$dir" "$dir.log"
}

for codec in $codecs; do
    for round in $(seq "$rounds"); do
        for build in before after; do
            binary=$before config=
            [ "$build" = after ] && binary=$after config=${SLUICE_AB_AFTER_CONFIG:-}
            json=$(run "$binary" "$codec" "$config")
            python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(sys.argv[2], sys.argv[3], sys.argv[4], "%.0f" % r["throughput_mb_s"], "%.0f" % r["records_per_s"], " ".join("%.2f" % r[k] for k in ("p50_ms", "p99_ms", "p999_ms", "max_ms")))' \
                "$json" "$codec" "$round" "$build"
        done
    done
done
