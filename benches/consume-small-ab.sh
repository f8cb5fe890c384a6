#!/usr/bin/env bash
# Catch-up consume of small batches from many partitions, the load where
# per-partition read costs show: 64 partitions of 10 x 100-byte batches,
# fetched 4 KiB per partition and 64 KiB per response. One run of one build:
#
#   benches/consume-small-ab.sh BROKER_BINARY LABEL [LOADGEN_BINARY]
#
# prints "LABEL records/s MB/s". Alternate two builds for an A/B.
set -euo pipefail
bin=${1:?usage: consume-small-ab.sh BROKER_BINARY LABEL [LOADGEN_BINARY]}
label=${2:?usage: consume-small-ab.sh BROKER_BINARY LABEL [LOADGEN_BINARY]}
loadgen=${3:-$bin}
port=19492
dir=$(mktemp -d "${TMPDIR:-/tmp}/consume-ab.XXXXXX")
$bin serve --data-dir $dir --listen 127.0.0.1:$port --metrics-listen 127.0.0.1:0 2>$dir.log &
b=$!
for _ in $(seq 100); do grep -qs "sluice ready" $dir.log && break; sleep 0.1; done
"$loadgen" bench produce --brokers 127.0.0.1:$port --partitions 64 --record-size 100 --batch-records 10 --duration 5 --acks 1 >/dev/null 2>&1
"$loadgen" bench consume --brokers 127.0.0.1:$port --partition-max-bytes 4096 --fetch-max-bytes 65536 --duration 15 --json 2>/dev/null | python3 -c 'import json,sys; r=json.load(sys.stdin); print(sys.argv[1], "%.0f"%r.get("records_per_s",0), "%.1f"%r.get("throughput_mb_s",0))' $label
kill $b; wait $b 2>/dev/null || true; rm -rf $dir $dir.log
