#!/usr/bin/env bash
# Plain against idempotent or transactional producers on a fresh broker
# (issue 13, design 5.4):
#
#   benches/produce-compare.sh SLUICE_BINARY --idempotent|--transactional [ROUNDS] [SECONDS] [FLAG...]
#
# Starts SLUICE_BINARY serve on a fresh data directory under $SLUICE_AB_DIR
# (default: target/) on port $SLUICE_AB_PORT (19092) and runs `sluice bench
# produce --idempotent|--transactional --rounds ROUNDS (3) --duration SECONDS
# (4) --warmup 1 --json FLAG...` against it with the standard shape (1 KiB
# records, 1000 per batch, 2 producers, 2 partitions, acks=all; FLAG... may
# add e.g. `--txn-batches 1`), then stops the broker and removes the
# directory. Prints the JSON on stdout and the text summary on stderr.
#
# Every half writes up to about 1 GB/s, so the broker keeps data for 5 s only
# (retention checked every second), and the run is stopped if the data
# directory passes $SLUICE_AB_MAX_MB (18000): the disk is shared.
set -euo pipefail

usage="usage: produce-compare.sh SLUICE_BINARY --idempotent|--transactional [ROUNDS] [SECONDS] [FLAG...]"
binary=${1:?$usage}
mode=${2:?$usage}
case "$mode" in
--idempotent) topic=idem ;;
--transactional) topic=txn ;;
*)
    echo "$usage" >&2
    exit 2
    ;;
esac
rounds=${3:-3}
seconds=${4:-4}
shift $(($# < 4 ? $# : 4))
work=${SLUICE_AB_DIR:-target}
max_mb=${SLUICE_AB_MAX_MB:-18000}
port=${SLUICE_AB_PORT:-19092}

dir=$(mktemp -d "$work/produce-compare.XXXXXX")
cat >"$dir.toml" <<'TOML'
[retention]
retention_ms = 5000
check_interval_ms = 1000
TOML
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
if ! grep -qs "sluice ready" "$dir.log"; then
    echo "produce-compare.sh: the broker did not start (port $port taken? set SLUICE_AB_PORT):" >&2
    cat "$dir.log" >&2
    exit 1
fi
(
    while kill -0 "$broker" 2>/dev/null; do
        used=$(du -sm "$dir" 2>/dev/null | cut -f1)
        if [ "${used:-0}" -gt "$max_mb" ]; then
            echo "produce-compare.sh: $dir holds ${used} MB, over $max_mb: stopping the broker" >&2
            kill "$broker"
        fi
        sleep 1
    done
) &
"$binary" bench produce --brokers "127.0.0.1:$port" "$mode" --rounds "$rounds" \
    --duration "$seconds" --warmup 1 --topic "$topic" --json "$@"
