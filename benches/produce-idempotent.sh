#!/usr/bin/env bash
# Plain against idempotent producers on a fresh broker (issue 13, design 5.4):
#
#   benches/produce-idempotent.sh SLUICE_BINARY [ROUNDS] [SECONDS]
#
# Starts SLUICE_BINARY serve on a fresh data directory under $SLUICE_AB_DIR
# (default: target/) and runs `sluice bench produce --idempotent --rounds
# ROUNDS (3) --duration SECONDS (4) --warmup 1 --json` against it with the
# standard shape (1 KiB records, 1000 per batch, 2 producers, 2 partitions,
# acks=all), then stops the broker and removes the directory. Prints the
# JSON on stdout and the text summary on stderr.
#
# Every half writes on the order of 1 GB/s, so the broker keeps data for 5 s
# only (retention checked every second), and the run is stopped if the data
# directory passes $SLUICE_AB_MAX_MB (18000): the newest __producer_ids
# record keeps its shard's later segments from being deleted (see
# benches/README.md), so a long run still grows.
set -euo pipefail

binary=${1:?usage: produce-idempotent.sh SLUICE_BINARY [ROUNDS] [SECONDS]}
rounds=${2:-3}
seconds=${3:-4}
work=${SLUICE_AB_DIR:-target}
max_mb=${SLUICE_AB_MAX_MB:-18000}
port=19092

dir=$(mktemp -d "$work/produce-idempotent.XXXXXX")
cat >"$dir.toml" <<'EOF'
[retention]
retention_ms = 5000
check_interval_ms = 1000
EOF
"$binary" serve --config "$dir.toml" --data-dir "$dir" --listen "127.0.0.1:$port" \
    --metrics-listen 127.0.0.1:0 2>"$dir.log" &
broker=$!
cleanup() {
    kill "$broker" 2>/dev/null || true
    wait "$broker" 2>/dev/null || true
    rm -rf "$dir" "$dir.toml" "$dir.log"
}
trap cleanup EXIT
for _ in $(seq 100); do
    grep -qs "sluice ready" "$dir.log" && break
    sleep 0.1
done
(
    while kill -0 "$broker" 2>/dev/null; do
        used=$(du -sm "$dir" 2>/dev/null | cut -f1)
        if [ "${used:-0}" -gt "$max_mb" ]; then
            echo "produce-idempotent.sh: $dir holds ${used} MB, over $max_mb: stopping the broker" >&2
            kill "$broker"
        fi
        sleep 1
    done
) &
"$binary" bench produce --brokers "127.0.0.1:$port" --idempotent --rounds "$rounds" \
    --duration "$seconds" --warmup 1 --topic idem --json
