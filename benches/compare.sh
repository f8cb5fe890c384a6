#!/usr/bin/env bash
# Sluice side by side with its peers and this host's limits, in one run
# (issue 19 item 1):
#
#   benches/compare.sh [--json] [SLUICE_BINARY] [ROUNDS] [SECONDS]
#
# ROUNDS (3) rounds; in each, every system takes one turn: the host baseline,
# Sluice, Apache Iggy and tansu, in that order in odd rounds and reversed in
# even ones (A B C D, D C B A, ...), so that drift in the shared machine and
# its disk falls on all of them alike. One shape throughout: 1 KiB records,
# 1000 per batch, 2 producers or consumers, 2 partitions (Iggy: 2 streams of
# one partition, one producer each). Each measured run lasts about SECONDS (4).
#
# Prints one table (stdout): min / median / max over rounds per system and
# figure, the median over rounds of the figure ÷ the same round's host limit,
# and of Sluice ÷ that system. --json prints a JSON object on stdout instead
# (the table then goes to stderr). Progress goes to stderr.
#
# Binaries: Sluice from the argument or $SLUICE_BIN (target/release/sluice);
# the peers from $IGGY_SERVER, $IGGY_BENCH and $TANSU, or decompressed from
# $SLUICE_COMPARE_PEERS (../shared/peers)/*.zst into target/peers/. A peer
# that is missing or cannot start is skipped with a line saying so.
#
# Throughput is payload: records/s × 1024 bytes, MB = 10^6 bytes (Iggy's bench
# reports per-producer averages over different times; Sluice's own MB/s counts
# batch headers too), so all systems are counted alike.
#
# Environment:
#   SLUICE_COMPARE_DIR      where the data directories go (target/)
#   SLUICE_COMPARE_MAX_MB   stop the run if the work directory passes this (16000;
#                           the acks=1 runs at ~1.4 GB/s keep ~7 GB each
#                           for the 5 s of retention)
#   SLUICE_COMPARE_WARM_MB  MB produced, then consumed, for the consume rows (400)
#   SLUICE_COMPARE_WARM_PASSES  reads of those MB, one after another, whose
#                           median is the round's consume-just-written figure (5)
#   SLUICE_COMPARE_PART_PAIRS  runs per round of each many-partition topic
#                           below, each between two 2-partition runs; a row
#                           divides the mean of its runs by that of the
#                           2-partition ones (2)
#   SLUICE_COMPARE_PART_COUNTS  the many-partition topics' partition counts
#                           ("1000 10000"; issue 19 asks ≥ 0.9 and ≥ 0.8 × 2
#                           partitions). Counts over 1000 need an open-files
#                           hard limit of the count plus 4096: the script
#                           raises it when it can, and skips such a count
#                           otherwise
#   SLUICE_COMPARE_RATE_MB  fixed rate of the latency rows, MB/s (100)
#   SLUICE_COMPARE_LAT_WARMUP  seconds at that rate, not counted, before the
#                           Kafka-protocol latency runs (8): long enough for a
#                           fresh Sluice broker's tail cache to fill
#   SLUICE_COMPARE_DISCARD_WAIT  longest wait, in seconds, for the disk's
#                           discards to end before each system's turn (60;
#                           0 does not wait: quicker, but a turn may then
#                           measure the deletes of the one before)
#   SLUICE_COMPARE_EXTRA_CONFIG  a TOML file appended to Sluice's config
#                           (e.g. a [storage] section), for A/B of a setting
#   IGGY_CONFIG             Iggy's config.toml (the peers' iggy-server-config.toml)
#
# Needs root for `echo 3 > /proc/sys/vm/drop_caches` (the cold rows); without
# it the cold rows are marked as not cold. Kills everything it started on exit.
set -euo pipefail

usage="usage: compare.sh [--json] [SLUICE_BINARY] [ROUNDS] [SECONDS]"
json=0
if [ "${1:-}" = --json ]; then
    json=1
    shift
fi
case "${1:-}" in
-h | --help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
'' | *[!0-9]*) sluice=${1:-${SLUICE_BIN:-target/release/sluice}} && shift $(($# > 0 ? 1 : 0)) ;;
*) sluice=${SLUICE_BIN:-target/release/sluice} ;;
esac
rounds=${1:-3}
seconds=${2:-4}
case "$rounds$seconds" in *[!0-9]*)
    echo "$usage" >&2
    exit 2
    ;;
esac

repo=$(cd "$(dirname "$0")/.." && pwd)
peers_dir=$(realpath -m "${SLUICE_COMPARE_PEERS:-$repo/../shared/peers}")
max_mb=${SLUICE_COMPARE_MAX_MB:-16000}
warm_mb=${SLUICE_COMPARE_WARM_MB:-400}
# The value of environment variable NAME, or DEFAULT; exits unless it is a
# whole number of at least LEAST.
whole_setting() { # NAME DEFAULT LEAST
    local value=${!1:-$2}
    case "$value" in '' | *[!0-9]*) ;; *) [ "$value" -ge "$3" ] && echo "$value" && return 0 ;; esac
    echo "compare.sh: $1 must be a whole number of at least $3" >&2
    exit 2
}
warm_passes=$(whole_setting SLUICE_COMPARE_WARM_PASSES 5 1)
part_pairs=$(whole_setting SLUICE_COMPARE_PART_PAIRS 2 1)
part_counts=()
for count in ${SLUICE_COMPARE_PART_COUNTS-1000 10000}; do
    case "$count" in '' | *[!0-9]*)
        echo "compare.sh: SLUICE_COMPARE_PART_COUNTS must list whole numbers over 2" >&2
        exit 2
        ;;
    esac
    [ "$count" -gt 2 ] || {
        echo "compare.sh: SLUICE_COMPARE_PART_COUNTS must list whole numbers over 2" >&2
        exit 2
    }
    part_counts+=("$count")
done
rate_mb=${SLUICE_COMPARE_RATE_MB:-100}
record_size=1024
warmup_s=1
lat_warmup_s=$(whole_setting SLUICE_COMPARE_LAT_WARMUP 8 0)
discard_wait_s=$(whole_setting SLUICE_COMPARE_DISCARD_WAIT 60 0)
clk_tck=$(getconf CLK_TCK)
[ -x "$sluice" ] || {
    echo "compare.sh: no Sluice binary at $sluice (build it: cargo build --release)" >&2
    exit 2
}
sluice=$(cd "$(dirname "$sluice")" && pwd)/$(basename "$sluice")

work=$(mktemp -d "${SLUICE_COMPARE_DIR:-$repo/target}/compare.XXXXXX")
results=$work/results.tsv # round system figure value
notes=$work/notes.tsv     # system figure note
: >"$results"
: >"$notes"
pids=()

say() { echo "compare.sh: $*" >&2; }

# A process and its descendants (a backgrounded function's subshell leaves
# its load generator behind otherwise), children first.
kill_tree() { # PID
    local child
    for child in $(pgrep -P "$1" 2>/dev/null); do
        kill_tree "$child"
    done
    kill "$1" 2>/dev/null || true
}

cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill_tree "$pid"
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- helpers

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# utime + stime of a process, in clock ticks (fields 14 and 15 of
# /proc/PID/stat; the name in field 2 may hold spaces, so cut after its ")").
cpu_ticks() {
    sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}

record() { # ROUND SYSTEM FIGURE VALUE
    [ -n "$4" ] || return 0
    printf '%s\t%s\t%s\t%s\n' "$@" >>"$results"
    say "  round $1 $2 $3 = $4"
}

# Record the median of VALUES (none: nothing), saying each of them.
record_median() { # ROUND SYSTEM FIGURE VALUE...
    local r=$1 sys=$2 figure=$3
    shift 3
    [ $# -gt 0 ] || return 0
    say "  round $r $sys $figure passes: $*"
    record "$r" "$sys" "$figure" "$(python3 -c 'import statistics, sys
print("%.1f" % statistics.median(float(v) for v in sys.argv[1:]))' "$@")"
}

note() { # SYSTEM FIGURE TEXT (kept once)
    grep -qsF "$(printf '%s\t%s\t' "$1" "$2")" "$notes" || printf '%s\t%s\t%s\n' "$@" >>"$notes"
}

aborted() { [ -e "$work/ABORT" ]; }

check_abort() {
    if aborted; then
        say "stopped: a data directory passed SLUICE_COMPARE_MAX_MB=$max_mb"
        exit 1
    fi
}

drop_caches() {
    sync
    if ! echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; then
        say "cannot drop the page cache (not root?): the cold rows are not cold"
        note all cold_mb_s "page cache NOT dropped (no permission)"
        note all cold_discard_mb_s "page cache NOT dropped (no permission)"
    fi
}

# Wait (at most SLUICE_COMPARE_DISCARD_WAIT, 60 s) until the disk has
# discarded nothing for 2 s. On a
# file system mounted with `discard` the blocks of deleted files are
# discarded at the journal commits after the deletion, and an fdatasync
# meanwhile waits behind them: a turn right after another's `rm -rf` of
# tens of GB measured that (acks=all p99 94 ms against 8-14 ms, 2026-12-03).
# `sync -f` commits the journal first, so the discards have begun before
# the first sample. Discarded sectors: field 14 of the block device's stat.
settle_disk() {
    local stat last now quiet=0 waited=0
    [ "$discard_wait_s" -gt 0 ] || return 0
    stat=/sys/dev/block/$(findmnt -no MAJ:MIN -T "$work" 2>/dev/null | tr -d ' ')/stat
    if [ ! -r "$stat" ]; then
        say "  cannot read the disk's discard counter ($stat): not waiting for discards"
        return 0
    fi
    sync -f "$work"
    last=$(awk '{print $14}' "$stat")
    while [ "$quiet" -lt 2 ] && [ "$waited" -lt "$discard_wait_s" ]; do
        sleep 1
        waited=$((waited + 1))
        now=$(awk '{print $14}' "$stat")
        if [ "$now" = "$last" ]; then quiet=$((quiet + 1)); else quiet=0; fi
        last=$now
    done
    if [ "$quiet" -lt 2 ]; then
        say "  the disk was still discarding after ${waited} s (SLUICE_COMPARE_DISCARD_WAIT): going on; this turn's latency rows may include it"
    elif [ "$waited" -gt 2 ]; then
        say "  waited ${waited} s for the disk's discards to end"
    fi
    return 0
}

# Stop the run if the work directory grows past max_mb: the disk is shared.
# The broker whose pid is in $work/broker.pid is killed, and the main loop
# stops at its next check.
watchdog() {
    while :; do
        local used
        used=$(du -sm "$work" 2>/dev/null | cut -f1)
        if [ "${used:-0}" -gt "$max_mb" ]; then
            aborted || say "$work holds ${used} MB, over SLUICE_COMPARE_MAX_MB=$max_mb: stopping"
            touch "$work/ABORT"
            kill "$(cat "$work/broker.pid" 2>/dev/null)" 2>/dev/null || true
        fi
        sleep 1
    done
}

stop_broker() { # PID
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    rm -f "$work/broker.pid"
}

wait_for_log() { # FILE PATTERN PID: 0 once PATTERN is in FILE
    local _
    for _ in $(seq 200); do
        grep -qs "$2" "$1" && return 0
        kill -0 "$3" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# Extract fields from a `sluice bench --json` object: MB/s of payload,
# payload bytes, and latency percentiles; "-" where the run failed.
sluice_json() { # FILE FIELD...
    python3 - "$@" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
    size = r["settings"].get("record_size", 1024)  # consume does not echo it
    out = []
    for f in sys.argv[2:]:
        if f == "mb_s": out.append("%.1f" % (r["records_per_s"] * size / 1e6))
        elif f == "payload_bytes": out.append("%d" % (r["records"] * size))
        else:
            v = r  # "a.b": field b of object a
            for k in f.split("."): v = v[k]
            out.append("%.3f" % v)
except Exception:
    out = ["-" for _ in sys.argv[2:]]
print(" ".join(out))
PY
}

# The same from iggy-bench's report.json (its `output` subcommand):
# payload MB/s = all producers' messages × size ÷ the longest producer's time.
iggy_json() { # DIR FIELD...
    python3 - "$@" <<'PY'
import glob, json, sys
try:
    r = json.load(open(glob.glob(sys.argv[1] + "/*/report.json")[0]))
    ind = [m["summary"] for m in r["individual_metrics"]]
    g = r["group_metrics"][0]["summary"]
    payload = sum(m["total_messages"] for m in ind) * r["params"]["message_size"]
    secs = max(m["total_time_secs"] for m in ind)
    out = []
    for f in sys.argv[2:]:
        if f == "mb_s": out.append("%.1f" % (payload / secs / 1e6))
        elif f == "payload_bytes": out.append("%d" % payload)
        elif f == "max_ms": out.append("%.3f" % g["max_latency_ms"])
        else: out.append("%.3f" % g["average_" + f.replace("_ms", "_latency_ms")])
except Exception:
    out = ["-" for _ in sys.argv[2:]]
print(" ".join(out))
PY
}

mean_of() { # VALUES...: the mean of those that are numbers, or "" when none is
    python3 -c 'import sys
v = []
for a in sys.argv[1:]:
    try: v.append(float(a))
    except ValueError: pass
print("%.1f" % (sum(v) / len(v)) if v else "")' "$@"
}

div() { # A B [SCALE]: A / B × SCALE, or "" when either is missing
    python3 -c 'import sys
a, b, k = sys.argv[1], sys.argv[2], float(sys.argv[3])
try: print("%.3f" % (float(a) / float(b) * k))
except (ValueError, ZeroDivisionError): print("")' "$1" "$2" "${3:-1}"
}

# Seconds of a sized run expected to last about `seconds`: MB to send, from
# the rate a system showed before (its first round guesses).
sized_mb() { # MB_S_ESTIMATE
    python3 -c 'import sys; print(max(100, int(float(sys.argv[1]) * int(sys.argv[2]))))' "$1" "$seconds"
}

# Produce about warm_mb MB with a timed load generator: at a fixed rate for
# whole seconds, the rate chosen below what acks=1 reached this round.
warm_plan() { # ACKS1_MB_S -> "DURATION RATE"
    python3 -c 'import math, sys
mb, fast = float(sys.argv[1]), float(sys.argv[2] or 200)
d = max(1, math.ceil(mb / (0.7 * fast)))
print(d, "%.1f" % (mb / d))' "$warm_mb" "${1:-}"
}

# ---------------------------------------------------------------- peers

find_peer() { # NAME ENV_VALUE -> path or ""
    local name=$1 given=$2
    if [ -n "$given" ]; then
        [ -x "$given" ] && echo "$given"
        return 0
    fi
    if [ -x "$repo/target/peers/$name" ]; then
        echo "$repo/target/peers/$name"
    elif [ -f "$peers_dir/$name.zst" ] && command -v zstd >/dev/null; then
        mkdir -p "$repo/target/peers"
        zstd -q -d -f "$peers_dir/$name.zst" -o "$repo/target/peers/$name" &&
            chmod +x "$repo/target/peers/$name" && echo "$repo/target/peers/$name"
    fi
}

missing_libs() { # BINARY -> the shared libraries it cannot find
    ldd "$1" 2>/dev/null | awk '/not found/ { print $1 }' | tr '\n' ' '
}

skipped=()
systems=(baseline sluice)
iggy_server=$(find_peer iggy-server "${IGGY_SERVER:-}")
iggy_bench=$(find_peer iggy-bench "${IGGY_BENCH:-}")
iggy_config=${IGGY_CONFIG:-$peers_dir/iggy-server-config.toml}
if [ -z "$iggy_server" ] || [ -z "$iggy_bench" ]; then
    skipped+=("iggy: no binaries (set IGGY_SERVER and IGGY_BENCH, or put iggy-server.zst and iggy-bench.zst in $peers_dir)")
elif [ ! -f "$iggy_config" ]; then
    skipped+=("iggy: no config file (set IGGY_CONFIG; $peers_dir/iggy-server-config.toml is missing)")
elif [ -n "$(missing_libs "$iggy_server")$(missing_libs "$iggy_bench")" ]; then
    skipped+=("iggy: missing shared libraries: $(missing_libs "$iggy_server")$(missing_libs "$iggy_bench")(on Debian: apt-get install libhwloc15)")
else
    systems+=(iggy)
fi
tansu=$(find_peer tansu "${TANSU:-}")
if [ -z "$tansu" ]; then
    skipped+=("tansu: no binary (set TANSU, or put tansu.zst in $peers_dir)")
elif [ -n "$(missing_libs "$tansu")" ]; then
    skipped+=("tansu: missing shared libraries: $(missing_libs "$tansu")")
else
    systems+=(tansu)
fi
# Each partition keeps a consume-queue file open: a count over 1000 needs
# an open-files limit of the count plus room for segments, sockets and the
# other topics (4096; two 10 000-partition topics ran out at 20 000 in
# 2026-12-01's trials). The broker raises its soft limit to the hard one;
# only a privileged shell can raise the hard one.
counts=()
for count in "${part_counts[@]}"; do
    need=$((count + 4096))
    [ "$(ulimit -Hn)" = unlimited ] || [ "$(ulimit -Hn)" -ge "$need" ] || ulimit -n "$need" 2>/dev/null || true
    if [ "$count" -le 1000 ] || [ "$(ulimit -Hn)" = unlimited ] || [ "$(ulimit -Hn)" -ge "$need" ]; then
        counts+=("$count")
    else
        skipped+=("the $count-partition row: the open-files hard limit is $(ulimit -Hn), under $need (raise it, e.g. as root)")
    fi
done
part_counts=("${counts[@]}")
for line in "${skipped[@]}"; do
    say "skipped $line"
done

# ---------------------------------------------------------------- baseline

dd_read_mb_s() { # FILE [DD_FLAG]: MB/s of reading FILE once, 1 MiB at a time
    local t0 t1 bytes
    bytes=$(stat -c %s "$1")
    t0=$(date +%s.%N)
    dd if="$1" of=/dev/null bs=1M status=none "${@:2}"
    t1=$(date +%s.%N)
    python3 -c 'import sys; print("%.1f" % (int(sys.argv[1]) / 1e6 / (float(sys.argv[3]) - float(sys.argv[2]))))' \
        "$bytes" "$t0" "$t1"
}

turn_baseline() { # ROUND
    local r=$1 dir=$work/baseline out
    mkdir -p "$dir"
    out=$work/baseline.json
    # --paced-rate: the same write + fdatasync at the latency rows' rate, as
    # 2 writers (the broker's 2 shards), timed from each batch's due time;
    # the latency rows are divided by it (the back-to-back figures above
    # it count a stall of the disk once, a fixed-rate run for every batch
    # due during it).
    if timeout $((8 * seconds + 60)) "$sluice" bench baseline --data-dir "$dir" \
        --duration "$seconds" --paced-rate "$rate_mb" --paced-writers 2 --json \
        >"$out" 2>"$work/baseline.err"; then
        # One batch's write+fdatasync is the floor of an acks=all ack: its
        # mean from the throughput, and its percentiles where the baseline
        # reports them (disk_sync_p99_ms and so on, newer builds).
        local figure value
        while read -r figure value; do
            record "$r" host "$figure" "$value"
        done < <(python3 -c 'import json, sys
r = json.load(open(sys.argv[1]))
for ours, theirs in [("tcp_mb_s", "tcp_mb_s"), ("write_mb_s", "disk_write_mb_s"),
                     ("sync_mb_s", "disk_sync_mb_s"), ("read_mb_s", "disk_read_mb_s"),
                     ("sync_p50_ms", "disk_sync_p50_ms"), ("sync_p99_ms", "disk_sync_p99_ms"),
                     ("sync_p999_ms", "disk_sync_p999_ms"), ("sync_max_ms", "disk_sync_max_ms")]:
    if theirs in r:
        print(ours, r[theirs])
for p in ["p50_ms", "p99_ms", "p999_ms", "max_ms"]:
    if r.get("disk_paced"):
        print("paced_" + p, r["disk_paced"][p])
print("sync_chunk_ms", "%.3f" % (r["chunk_bytes"] / 1e3 / r["disk_sync_mb_s"]))' "$out")
    else
        say "sluice bench baseline failed: $(tail -3 "$work/baseline.err")"
    fi
    # A cold sequential read of WARM_MB, as a consumer of cold data meets
    # it: written through the page cache, the cache dropped, read back with
    # the kernel's read-ahead; and the same file read with O_DIRECT, 1 MiB
    # at a time (what a reader that bypasses the page cache gets).
    dd if=/dev/zero of="$dir/cold" bs=1M count="$warm_mb" conv=fsync status=none
    drop_caches
    record "$r" host cold_read_mb_s "$(dd_read_mb_s "$dir/cold")"
    record "$r" host direct_read_mb_s "$(dd_read_mb_s "$dir/cold" iflag=direct)"
    rm -rf "$dir"
}

# ---------------------------------------------------------------- Kafka-API brokers

# A timed `sluice bench produce` (or MODE: `e2e`) whose JSON goes to TAG.json.
kafka_produce() { # TAG ADDRESS FLAGS...
    kafka_bench produce "$@"
}

kafka_bench() { # MODE TAG ADDRESS FLAGS...
    local mode=$1 tag=$2 addr=$3
    shift 3
    timeout $((lat_warmup_s + seconds + 120)) "$sluice" bench "$mode" --brokers "$addr" --json "$@" \
        >"$work/$tag.json" 2>"$work/$tag.err" || say "$tag failed: $(tail -2 "$work/$tag.err" | tr '\n' ' ')"
}

kafka_consume() { # TAG ADDRESS TOPIC [ARGS...]
    local tag=$1 addr=$2 topic=$3
    shift 3
    timeout 300 "$sluice" bench consume --brokers "$addr" --topic "$topic" --duration 240 --json "$@" \
        >"$work/$tag.json" 2>"$work/$tag.err" || say "$tag failed: $(tail -2 "$work/$tag.err" | tr '\n' ' ')"
}

# acks=1 produce with the broker's CPU time sampled from the end of the
# warm-up to the end of the run; records MB/s and CPU s per GB.
kafka_acks1() { # ROUND SYSTEM ADDRESS PID
    local r=$1 sys=$2 addr=$3 pid=$4 bench t0 t1 mb bytes
    eval "last_acks1_$sys="
    kafka_produce "$sys-acks1" "$addr" --acks 1 --duration "$seconds" --warmup "$warmup_s" --topic a1 &
    bench=$!
    pids+=("$bench")
    sleep "$warmup_s"
    t0=$(cpu_ticks "$pid" 2>/dev/null || echo "")
    wait "$bench" || true
    t1=$(cpu_ticks "$pid" 2>/dev/null || echo "")
    read -r mb bytes < <(sluice_json "$work/$sys-acks1.json" mb_s payload_bytes)
    [ "$mb" = - ] && return 0
    record "$r" "$sys" acks1_mb_s "$mb"
    if [ -n "$t0" ] && [ -n "$t1" ]; then
        record "$r" "$sys" cpu_s_per_gb "$(div $((t1 - t0)) "$bytes" "$(python3 -c "print(1e9 / $clk_tck)")")"
    fi
    eval "last_acks1_$sys=$mb"
}

kafka_acksall() { # ROUND SYSTEM ADDRESS
    local r=$1 sys=$2 addr=$3 mb
    kafka_produce "$sys-acksall" "$addr" --acks all --duration "$seconds" --warmup "$warmup_s" --topic aall
    read -r mb < <(sluice_json "$work/$sys-acksall.json" mb_s)
    [ "$mb" = - ] || record "$r" "$sys" acksall_mb_s "$mb"
}

# acks=all produce at the fixed rate: latency from each request's send
# (lat_*, as iggy-bench times its requests) and from its scheduled time
# (lat_sched_*: no coordinated omission; also counts the load generator's
# wake-up); then produce to consume at that rate (e2e_*: `sluice bench
# e2e`, acks=all producers and tailing consumers, from each batch's
# scheduled send to its fetch).
# The first run is preceded by LAT_WARMUP s at the same rate, not counted:
# Sluice's runs on a fresh broker, and while its tail cache fills (256 MiB
# per shard, ~5 s at 50 MB/s a shard) acks=all p99 was 7.4–8.9 ms against
# 2.8–3.5 once it had filled (2026-12-04; benches/README.md "acks=all
# latency while the tail cache fills"). Iggy's latency run follows its
# throughput runs on the same server, so it is measured warm as well.
kafka_latency() { # ROUND SYSTEM ADDRESS
    local r=$1 sys=$2 addr=$3 f=$work/$2-lat.json
    kafka_produce "$sys-lat" "$addr" --acks all --rate "$rate_mb" --duration "$seconds" \
        --warmup "$lat_warmup_s" --topic lat
    local sent scheduled
    sent=$(sluice_json "$f" from_send.p50_ms from_send.p99_ms from_send.p999_ms from_send.max_ms)
    scheduled=$(sluice_json "$f" p50_ms p99_ms p999_ms max_ms)
    if [ "${sent%% *}" = - ] && [ "${scheduled%% *}" != - ]; then
        # A build from before `from_send` (2026-12-03) times from the schedule only.
        note "$sys" lat_p99_ms "this sluice build reports no from_send: timed from the schedule"
        sent=$scheduled
    fi
    record_latency "$r" "$sys" lat $sent
    record_latency "$r" "$sys" lat_sched $scheduled
    kafka_bench e2e "$sys-e2e" "$addr" --acks all --rate "$rate_mb" --duration "$seconds" \
        --warmup "$warmup_s" --topic e2e
    record_latency "$r" "$sys" e2e $(sluice_json "$work/$sys-e2e.json" p50_ms p99_ms p999_ms max_ms)
}

record_latency() { # ROUND SYSTEM KIND(lat|lat_sched|e2e) P50 P99 P999 MAX ("-": the run failed)
    [ "${4:--}" = - ] && return 0
    record "$1" "$2" "$3_p50_ms" "$4"
    record "$1" "$2" "$3_p99_ms" "$5"
    record "$1" "$2" "$3_p999_ms" "$6"
    record "$1" "$2" "$3_max_ms" "$7"
}

# Produce about warm_mb MB on topic `warm` and consume it at once.
kafka_warm() { # ROUND SYSTEM ADDRESS
    local r=$1 sys=$2 addr=$3 d rate mb last
    last=last_acks1_$sys
    read -r d rate < <(warm_plan "${!last:-}")
    kafka_produce "$sys-warmfill" "$addr" --acks 1 --duration "$d" --warmup 0 --rate "$rate" --topic warm
    local passes=() pass
    for pass in $(seq "$warm_passes"); do
        kafka_consume "$sys-warm$pass" "$addr" warm
        read -r mb < <(sluice_json "$work/$sys-warm$pass.json" mb_s)
        [ "$mb" = - ] || passes+=("$mb")
    done
    record_median "$r" "$sys" warm_mb_s "${passes[@]}"
}

# ---------------------------------------------------------------- Sluice

sluice_start() { # DIR CONFIG -> sets broker, addr
    local dir=$1 config=$2 log=$1.log
    mkdir -p "$dir"
    # A fresh log per start: a restart must not find the last start's "ready".
    "$sluice" serve --config "$config" --data-dir "$dir" --listen 127.0.0.1:0 \
        --metrics-listen 127.0.0.1:0 2>"$log" &
    broker=$!
    pids+=("$broker")
    echo "$broker" >"$work/broker.pid"
    if ! wait_for_log "$log" "sluice ready" "$broker"; then
        say "Sluice did not start: $(tail -3 "$log")"
        return 1
    fi
    addr=$(grep "sluice ready" "$log" | tail -1 | sed 's/.* kafka=\([^ ]*\).*/\1/')
}

sluice_config() { # FILE RETENTION_MS
    printf '[retention]\nretention_ms = %s\ncheck_interval_ms = 1000\n' "$2" >"$1"
    if [ -n "${SLUICE_COMPARE_EXTRA_CONFIG:-}" ]; then
        cat "$SLUICE_COMPARE_EXTRA_CONFIG" >>"$1"
    fi
}

turn_sluice() { # ROUND
    local r=$1 dir=$work/sluice-$1 mb
    # Produce phases write up to ~1 GB/s: keep 5 s of data, as produce-compare.sh does.
    sluice_config "$work/sluice-short.toml" 5000
    sluice_start "$dir" "$work/sluice-short.toml" || return 0
    kafka_acks1 "$r" sluice "$addr" "$broker"
    check_abort
    kafka_acksall "$r" sluice "$addr"
    stop_broker "$broker"
    rm -rf "$dir" "$dir.log"
    settle_disk
    check_abort
    # Latency on a fresh broker, once the disk has discarded the blocks of
    # the data just removed: after the two runs above, retention (5 s)
    # frees ~25 GB of segments over the next tens of seconds on a `discard`
    # mount, a burst this benchmark's short retention makes (a broker
    # deletes at its write rate), while Iggy's latency run follows 3 GB it
    # keeps. Until 2026-12-03 this row ran on the same broker.
    sluice_start "$dir" "$work/sluice-short.toml" || return 0
    kafka_latency "$r" sluice "$addr"
    check_abort
    # Their ~1.7 GB (with the warm-up) would stay below the 1000-partition
    # runs' data until retention reached it; deleting them keeps the work
    # directory under SLUICE_COMPARE_MAX_MB.
    local topic
    for topic in lat e2e; do
        "$sluice" topics delete --brokers "$addr" "$topic" >/dev/null 2>&1 ||
            say "deleting topic $topic failed (the next runs keep its data)"
    done
    # After the latency run, not before: for seconds after 1000 partitions
    # were written, acks=all at 100 MB/s had p50 875 ms instead of 7 ms
    # (2026-12-01; the fdatasyncs wait for the queue files' writeback),
    # which would measure that aftermath rather than latency.
    # SLUICE_COMPARE_PART_PAIRS runs of each many-partition topic, each
    # between two runs of 2 partitions on the same broker (2, 1000, 2,
    # 10000, 2, 1000, 2, 10000, 2 for two pairs and the default counts);
    # a row's figure for the round is the mean of its topic's runs over the
    # mean of all the 2-partition ones. Interleaving puts the disk's
    # drift between runs (on this VM ±10-15 % from one 4 s run to the next)
    # and the retention deletes that follow each run (~7 GB a run at
    # acks=1, freed during the next one on a `discard` mount) on both sides
    # alike instead of passing for a cost of partitions: a run always made
    # second pays for the one before it. Until 2026-12-04 it was one run of
    # each, 2 partitions first (before that, the acks=1 row's figure, from
    # another broker minutes earlier).
    # The topics are made first, so no run measures a CreateTopics (8–10 s
    # for 10 000 partitions on the 2-core VM) or its fsyncs.
    local few=() pair count counts=()
    local -A many=() # count -> its runs' MB/s, space-separated
    for count in "${part_counts[@]}"; do
        if "$sluice" topics create "p$count" --partitions "$count" --brokers "$addr" \
            >"$work/sluice-create-p$count.err" 2>&1; then
            counts+=("$count")
        else
            say "creating $count partitions failed; no row for them: $(tail -2 "$work/sluice-create-p$count.err" | tr '\n' ' ')"
        fi
    done
    kafka_produce sluice-p2-0 "$addr" --acks 1 --partitions 2 --duration "$seconds" \
        --warmup "$warmup_s" --topic p2
    read -r mb < <(sluice_json "$work/sluice-p2-0.json" mb_s)
    few+=("$mb")
    for pair in $(seq "$part_pairs"); do
        for count in "${counts[@]}"; do
            kafka_produce "sluice-p$count-$pair" "$addr" --acks 1 --partitions "$count" \
                --duration "$seconds" --warmup "$warmup_s" --topic "p$count"
            read -r mb < <(sluice_json "$work/sluice-p$count-$pair.json" mb_s)
            many[$count]+=" $mb"
            kafka_produce "sluice-p2-$pair-$count" "$addr" --acks 1 --partitions 2 \
                --duration "$seconds" --warmup "$warmup_s" --topic p2
            read -r mb < <(sluice_json "$work/sluice-p2-$pair-$count.json" mb_s)
            few+=("$mb")
        done
    done
    say "round $r: MB/s with 2 partitions ${few[*]}"
    for count in "${counts[@]}"; do
        say "round $r: MB/s with $count partitions, between them,${many[$count]}"
        # shellcheck disable=SC2086 # the list splits into its runs
        record "$r" sluice "p${count}_ratio" "$(div "$(mean_of ${many[$count]})" "$(mean_of "${few[@]}")")"
    done
    stop_broker "$broker"
    rm -rf "$dir" "$dir.log"
    check_abort

    # Consume rows: a broker that keeps its data (no deletion mid-read).
    sluice_config "$work/sluice-keep.toml" 3600000
    sluice_start "$dir" "$work/sluice-keep.toml" || return 0
    kafka_warm "$r" sluice "$addr"
    # The same amount again on topic `cold`, read only once, by the discard
    # read below: a virtual disk's host may keep what the guest has read
    # (on the 2-core VM a second read of a file after drop_caches ran at
    # 1.9 GB/s against 0.62 for the first), so no cold read may follow
    # another read of the same data.
    local d rate
    read -r d rate < <(warm_plan "${last_acks1_sluice:-}")
    kafka_produce sluice-coldfill "$addr" --acks 1 --duration "$d" --warmup 0 --rate "$rate" --topic cold
    stop_broker "$broker"
    check_abort
    # Cold: page cache dropped and the broker restarted, so nothing it or the
    # kernel kept in memory (a tail cache, if it has one) serves the read.
    drop_caches
    if sluice_start "$dir" "$work/sluice-keep.toml"; then
        kafka_consume sluice-cold "$addr" warm
        read -r mb < <(sluice_json "$work/sluice-cold.json" mb_s)
        [ "$mb" = - ] || record "$r" sluice cold_mb_s "$mb"
        stop_broker "$broker"
    fi
    # Cold again, with the consumer dropping the records in the kernel: the
    # same read without the client's copy, which on 2 cores takes a core
    # from the broker (benches/README.md). Sluice only: the peers' clients
    # have no such mode, so the row above is the side-by-side one.
    drop_caches
    if sluice_start "$dir" "$work/sluice-keep.toml"; then
        kafka_consume sluice-cold-discard "$addr" cold --discard-records
        read -r mb < <(sluice_json "$work/sluice-cold-discard.json" mb_s)
        [ "$mb" = - ] || record "$r" sluice cold_discard_mb_s "$mb"
        stop_broker "$broker"
    fi
    rm -rf "$dir" "$dir.log"
}

# ---------------------------------------------------------------- tansu

tansu_start() { # -> sets broker, addr
    local port log=$work/tansu.log
    port=$(free_port)
    addr=127.0.0.1:$port
    : >"$log"
    "$tansu" broker --listener-url "tcp://$addr" --advertised-listener-url "tcp://$addr" \
        --storage-engine memory://tansu/ >"$log" 2>&1 &
    broker=$!
    pids+=("$broker")
    if ! wait_for_log "$log" "ready in" "$broker"; then
        say "tansu did not start: $(tail -3 "$log")"
        return 1
    fi
}

turn_tansu() { # ROUND
    local r=$1
    # tansu keeps everything in memory: a fresh broker per phase frees it.
    tansu_start || return 0
    kafka_acks1 "$r" tansu "$addr" "$broker"
    stop_broker "$broker"
    tansu_start || return 0
    kafka_acksall "$r" tansu "$addr"
    kafka_latency "$r" tansu "$addr"
    stop_broker "$broker"
    tansu_start || return 0
    kafka_warm "$r" tansu "$addr"
    stop_broker "$broker"
    note tansu acksall_mb_s "memory storage: not durable"
    note tansu cold_mb_s "memory storage only: no cold data"
}

# ---------------------------------------------------------------- Iggy

iggy_start() { # DIR FSYNC(true|false) -> sets broker, addr
    local dir=$1 fsync=$2 port
    port=$(free_port)
    addr=127.0.0.1:$port
    mkdir -p "$dir"
    (
        cd "$dir" &&
            IGGY_CONFIG_PATH=$iggy_config IGGY_SYSTEM_PATH=$dir/data IGGY_TCP_ADDRESS=$addr \
                IGGY_ROOT_USERNAME=iggy IGGY_ROOT_PASSWORD=iggy \
                IGGY_HTTP_ENABLED=false IGGY_QUIC_ENABLED=false IGGY_WEBSOCKET_ENABLED=false \
                IGGY_SYSTEM_SHARDING_CPU_ALLOCATION=2 IGGY_SYSTEM_PARTITION_ENFORCE_FSYNC=$fsync \
                exec "$iggy_server" >"$dir/server.log" 2>&1
    ) &
    broker=$!
    pids+=("$broker")
    echo "$broker" >"$work/broker.pid"
    if ! wait_for_log "$dir/server.log" "TCP server has started" "$broker"; then
        say "Iggy did not start: $(tail -3 "$dir/server.log" | sed 's/\x1b\[[0-9;]*m//g')"
        return 1
    fi
}

# iggy-bench is sized, not timed: it sends TOTAL_MB in all, then stops.
iggy_run() { # TAG KIND(pp|pc|e2e) TOTAL_MB WARMUP_S [GLOBAL_FLAG...]
    local tag=$1 kind=$2 total=$3 warm=$4 actors
    shift 4
    rm -rf "$work/$tag.out"
    case $kind in
    pc) actors=(pinned-consumer --streams 2 --consumers 2) ;;
    e2e) actors=(end-to-end-producing-consumer --streams 2 --producing-consumers 2) ;;
    *) actors=(pinned-producer --streams 2 --producers 2) ;;
    esac
    timeout $((10 * seconds + 120)) "$iggy_bench" -m "$record_size" -P 1000 -T "${total}MB" \
        -w "${warm}s" "$@" "${actors[@]}" tcp --server-address "$addr" output -o "$work/$tag.out" \
        >"$work/$tag.log" 2>&1 || say "iggy $tag failed: $(tail -2 "$work/$tag.log" | sed 's/\x1b\[[0-9;]*m//g' | tr '\n' ' ')"
}

turn_iggy() { # ROUND
    local r=$1 dir=$work/iggy-$1 bench t0 t1 mb bytes p50 p99 p999 max
    # acks=1 counterpart: fsync off.
    iggy_start "$dir" false || return 0
    iggy_run iggy-acks1 pp "$(sized_mb "${iggy_est_acks1:-400}")" "$warmup_s" &
    bench=$!
    pids+=("$bench")
    sleep "$warmup_s.1" # stream creation takes ~0.1 s before the warm-up
    t0=$(cpu_ticks "$broker" 2>/dev/null || echo "")
    wait "$bench" || true
    t1=$(cpu_ticks "$broker" 2>/dev/null || echo "")
    read -r mb bytes < <(iggy_json "$work/iggy-acks1.out" mb_s payload_bytes)
    if [ "$mb" != - ]; then
        record "$r" iggy acks1_mb_s "$mb"
        iggy_est_acks1=$mb
        if [ -n "$t0" ] && [ -n "$t1" ]; then
            record "$r" iggy cpu_s_per_gb "$(div $((t1 - t0)) "$bytes" "$(python3 -c "print(1e9 / $clk_tck)")")"
        fi
    fi
    check_abort
    # Warm: a fresh WARM_MB (the producer bench recreates its streams), read at once.
    iggy_run iggy-warmfill pp "$warm_mb" 0
    local passes=() pass
    for pass in $(seq "$warm_passes"); do
        iggy_run "iggy-warm$pass" pc "$warm_mb" 0
        read -r mb < <(iggy_json "$work/iggy-warm$pass.out" mb_s)
        [ "$mb" = - ] || passes+=("$mb")
    done
    record_median "$r" iggy warm_mb_s "${passes[@]}"
    stop_broker "$broker"
    check_abort
    drop_caches
    if iggy_start "$dir" false; then
        iggy_run iggy-cold pc "$warm_mb" 0
        read -r mb < <(iggy_json "$work/iggy-cold.out" mb_s)
        [ "$mb" = - ] || record "$r" iggy cold_mb_s "$mb"
        stop_broker "$broker"
    fi
    rm -rf "$dir"
    check_abort

    # acks=all counterpart: fsync on.
    iggy_start "$dir" true || return 0
    iggy_run iggy-acksall pp "$(sized_mb "${iggy_est_acksall:-300}")" "$warmup_s"
    read -r mb < <(iggy_json "$work/iggy-acksall.out" mb_s)
    if [ "$mb" != - ]; then
        record "$r" iggy acksall_mb_s "$mb"
        iggy_est_acksall=$mb
    fi
    check_abort
    iggy_run iggy-lat pp $((rate_mb * seconds)) "$warmup_s" -r "${rate_mb}MB"
    record_latency "$r" iggy lat $(iggy_json "$work/iggy-lat.out" p50_ms p99_ms p999_ms max_ms)
    check_abort
    iggy_run iggy-e2e e2e $((rate_mb * seconds)) "$warmup_s" -r "${rate_mb}MB"
    record_latency "$r" iggy e2e $(iggy_json "$work/iggy-e2e.out" p50_ms p99_ms p999_ms max_ms)
    stop_broker "$broker"
    rm -rf "$dir"
    note iggy acks1_mb_s "fsync off"
    note iggy acksall_mb_s "IGGY_SYSTEM_PARTITION_ENFORCE_FSYNC=true"
    note iggy lat_p99_ms "iggy-bench -r ${rate_mb}MB, fsync on; percentiles: mean over its 2 producers"
    note iggy e2e_p99_ms "iggy-bench e2e (each actor sends a batch, then polls it back) -r ${rate_mb}MB, fsync on"
    note iggy cpu_s_per_gb "fsync off"
}

# ---------------------------------------------------------------- the run

watchdog &
pids+=("$!")
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
binary_info="$sluice ($(stat -c %y "$sluice" | cut -c1-19))"
say "work directory $work; systems: ${systems[*]}; $rounds rounds of ${seconds} s runs"
for r in $(seq "$rounds"); do
    order=("${systems[@]}")
    if [ $((r % 2)) -eq 0 ]; then
        order=()
        for ((i = ${#systems[@]} - 1; i >= 0; i--)); do order+=("${systems[i]}"); done
    fi
    say "round $r/$rounds: ${order[*]}"
    for sys in "${order[@]}"; do
        say " $sys"
        settle_disk
        "turn_$sys" "$r"
        check_abort
    done
done

# ---------------------------------------------------------------- the table

printf '%s\n' "${skipped[@]}" >"$work/skipped.txt"
context="Sluice binary $binary_info; load average at start $load_start, at end $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$results" "$notes" "$work/skipped.txt" "$json" "$rounds" "$seconds" "$warm_mb" "$rate_mb" \
    "${systems[*]}" "$context" <<'PY'
import json, statistics, sys
results, notes_f, skipped_f, as_json = sys.argv[1:5]
rounds, seconds, warm_mb, rate_mb = (int(x) for x in sys.argv[5:9])
systems = [s for s in ["sluice", "iggy", "tansu"] if s in sys.argv[9].split()]
context = sys.argv[10]
names = {"sluice": "Sluice", "iggy": "Apache Iggy", "tansu": "tansu", "host": "host"}

val = {}  # (round, system, figure) -> value
for line in open(results):
    r, s, f, v = line.rstrip("\n").split("\t")
    val[(int(r), s, f)] = float(v)
notes = {}
for line in open(notes_f):
    s, f, t = line.rstrip("\n").split("\t")
    notes[(s, f)] = t
skipped = [l.strip() for l in open(skipped_f) if l.strip()]

# figure, label, the host limit it is divided by (None: no ratio)
figures = [
    ("acks1_mb_s", "produce acks=1, MB/s", "write_mb_s"),
    ("acksall_mb_s", "produce acks=all, MB/s", "sync_mb_s"),
    ("warm_mb_s", "consume just written (%d MB), MB/s" % warm_mb, "tcp_mb_s"),
    ("cold_mb_s", "consume cold (cache dropped, restarted), MB/s", "cold_read_mb_s"),
    ("cold_discard_mb_s", "consume cold, records dropped unread by the client (--discard-records), MB/s",
     "cold_read_mb_s"),
    ("cpu_s_per_gb", "broker CPU s per GB produced, acks=1 (lower is better)", None),
    # The host's own write+fdatasync of one batch: the same percentile of
    # the paced pass (same rate, from due time) where the baseline ran one,
    # else of the back-to-back pass, else the mean.
    ("lat_p50_ms", "acks=all at %d MB/s, from send: p50 ms" % rate_mb, ("paced_p50_ms", "sync_p50_ms", "sync_chunk_ms")),
    ("lat_p99_ms", "acks=all at %d MB/s, from send: p99 ms" % rate_mb, ("paced_p99_ms", "sync_p99_ms", "sync_chunk_ms")),
    ("lat_p999_ms", "acks=all at %d MB/s, from send: p99.9 ms" % rate_mb, ("paced_p999_ms", "sync_p999_ms", "sync_chunk_ms")),
    ("lat_max_ms", "acks=all at %d MB/s, from send: max ms" % rate_mb, ("paced_max_ms", "sync_max_ms", "sync_chunk_ms")),
    ("lat_sched_p50_ms", "acks=all at %d MB/s, from schedule: p50 ms" % rate_mb, ("paced_p50_ms", "sync_p50_ms", "sync_chunk_ms")),
    ("lat_sched_p99_ms", "acks=all at %d MB/s, from schedule: p99 ms" % rate_mb, ("paced_p99_ms", "sync_p99_ms", "sync_chunk_ms")),
    ("lat_sched_p999_ms", "acks=all at %d MB/s, from schedule: p99.9 ms" % rate_mb, ("paced_p999_ms", "sync_p999_ms", "sync_chunk_ms")),
    ("lat_sched_max_ms", "acks=all at %d MB/s, from schedule: max ms" % rate_mb, ("paced_max_ms", "sync_max_ms", "sync_chunk_ms")),
    ("e2e_p50_ms", "produce to consume at %d MB/s, acks=all: p50 ms" % rate_mb, ("paced_p50_ms", "sync_p50_ms", "sync_chunk_ms")),
    ("e2e_p99_ms", "produce to consume at %d MB/s, acks=all: p99 ms" % rate_mb, ("paced_p99_ms", "sync_p99_ms", "sync_chunk_ms")),
    ("e2e_p999_ms", "produce to consume at %d MB/s, acks=all: p99.9 ms" % rate_mb, ("paced_p999_ms", "sync_p999_ms", "sync_chunk_ms")),
    ("e2e_max_ms", "produce to consume at %d MB/s, acks=all: max ms" % rate_mb, ("paced_max_ms", "sync_max_ms", "sync_chunk_ms")),
]
# One row per many-partition count (SLUICE_COMPARE_PART_COUNTS): issue 19
# asks ≥ 0.9 × 2 partitions of 1000 and ≥ 0.8 × of 10 000, in every round.
for count in sorted({int(f[1:-len("_ratio")]) for (_, _, f) in val if f.startswith("p") and f.endswith("_ratio")}):
    goal = " (goal ≥ 0.9 every round)" if count <= 1000 else " (goal ≥ 0.8 every round)" if count <= 10000 else ""
    figures.append(("p%d_ratio" % count,
                    "%d partitions ÷ 2, acks=1 MB/s, runs interleaved 2,%d,2,…%s" % (count, count, goal), None))
host = [
    ("tcp_mb_s", "host: loopback TCP, MB/s"),
    ("write_mb_s", "host: sequential write (O_DIRECT), MB/s"),
    ("sync_mb_s", "host: write + fdatasync per 1 MB batch, MB/s"),
    ("sync_chunk_ms", "host: one 1 MB write + fdatasync, ms (mean)"),
    ("sync_p50_ms", "host: one 1 MB write + fdatasync, p50 ms"),
    ("sync_p99_ms", "host: one 1 MB write + fdatasync, p99 ms"),
    ("sync_p999_ms", "host: one 1 MB write + fdatasync, p99.9 ms"),
    ("sync_max_ms", "host: one 1 MB write + fdatasync, max ms"),
    ("paced_p50_ms", "host: 1 MB write + fdatasync at %d MB/s, 2 writers, from due time: p50 ms" % rate_mb),
    ("paced_p99_ms", "host: 1 MB write + fdatasync at %d MB/s, 2 writers, from due time: p99 ms" % rate_mb),
    ("paced_p999_ms", "host: 1 MB write + fdatasync at %d MB/s, 2 writers, from due time: p99.9 ms" % rate_mb),
    ("paced_max_ms", "host: 1 MB write + fdatasync at %d MB/s, 2 writers, from due time: max ms" % rate_mb),
    ("read_mb_s", "host: read back after O_DIRECT write (bench baseline), MB/s"),
    ("cold_read_mb_s", "host: cold sequential read (dd after drop_caches), MB/s"),
    ("direct_read_mb_s", "host: sequential read, dd iflag=direct 1 MiB, MB/s"),
]
limit_names = {
    "write_mb_s": "seq write", "sync_mb_s": "write+fdatasync", "tcp_mb_s": "loopback TCP",
    "cold_read_mb_s": "cold read", "sync_chunk_ms": "host 1 MB write+fdatasync (mean)",
    "sync_p50_ms": "host 1 MB write+fdatasync p50", "sync_p99_ms": "host 1 MB write+fdatasync p99",
    "sync_p999_ms": "host 1 MB write+fdatasync p99.9", "sync_max_ms": "host 1 MB write+fdatasync max",
    "paced_p50_ms": "host paced write+fdatasync p50", "paced_p99_ms": "host paced write+fdatasync p99",
    "paced_p999_ms": "host paced write+fdatasync p99.9", "paced_max_ms": "host paced write+fdatasync max",
}

def fmt(x):
    if x is None: return "–"
    a = abs(x)
    return "%.0f" % x if a >= 100 else "%.1f" % x if a >= 10 else "%.2f" % x if a >= 0.1 else "%.3f" % x

def per_round(s, f):
    return {r: val[(r, s, f)] for r in range(1, rounds + 1) if (r, s, f) in val}

def ratios(num, den):
    return [num[r] / den[r] for r in sorted(num) if r in den and den[r]]

def spread(xs):
    if not xs: return None
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs), "n": len(xs)}

def fmt_ratio(xs):
    if not xs: return "–"
    m = statistics.median(xs)
    return fmt(m) if len(xs) == 1 else "%s (%s–%s)" % (fmt(m), fmt(min(xs)), fmt(max(xs)))

rows, summary = [], []
for f, label, limit in figures:
    if isinstance(limit, tuple):  # the first candidate measured in this run
        limit = next((l for l in limit if per_round("host", l)), limit[-1])
    lim = per_round("host", limit) if limit else {}
    for s in systems:
        v = per_round(s, f)
        note = "; ".join(n for n in (notes.get((s, f)), notes.get(("all", f))) if n)
        if not v and not note:
            continue
        st = spread(list(v.values()))
        lr = ratios(v, lim) if limit else []
        sr = ratios(per_round("sluice", f), v) if s != "sluice" else []
        rows.append([label, names[s], fmt(st and st["min"]), fmt(st and st["median"]), fmt(st and st["max"]),
                     ("%s × %s" % (fmt_ratio(lr), limit_names[limit])) if lr else "–",
                     fmt_ratio(sr), note])
        summary.append({"figure": f, "system": s, "values": v, "spread": st,
                        "per_host_limit": {"limit": limit, "median": statistics.median(lr) if lr else None, "rounds": lr},
                        "sluice_over_system": {"median": statistics.median(sr) if sr else None, "rounds": sr},
                        "note": note})
for f, label in host:
    v = per_round("host", f)
    if not v: continue
    st = spread(list(v.values()))
    rows.append([label, "host", fmt(st["min"]), fmt(st["median"]), fmt(st["max"]), "–", "–", ""])
    summary.append({"figure": f, "system": "host", "values": v, "spread": st})

head = ["figure", "system", "min", "median", "max", "÷ same-round host limit (median, range)",
        "Sluice ÷ system (median, range)", "note"]
lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
lines += ["| " + " | ".join(row) + " |" for row in rows]
lines.append("")
lines.append("%d rounds, %d s per run; 1 KiB records, 1000 per batch, 2 producers/consumers, 2 partitions; "
             "MB = 10^6 bytes of payload (records/s × 1024)." % (rounds, seconds))
lines.append(context + ".")
for s in skipped:
    lines.append("skipped " + s)
table = "\n".join(lines)
if as_json == "1":
    print(table, file=sys.stderr)
    print(json.dumps({"rounds": rounds, "seconds": seconds, "warm_mb": warm_mb, "rate_mb_s": rate_mb,
                      "context": context, "systems": systems, "skipped": skipped, "figures": summary}, indent=1))
else:
    print(table)
PY
