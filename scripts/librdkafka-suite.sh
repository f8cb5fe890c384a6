#!/usr/bin/env bash
# Runs librdkafka's own test suite (its tests/ directory) against the real
# sluice binary, single-broker tests only, and prints pass/fail per test
# (issue 14). Not run by CI: building librdkafka and its tests takes minutes
# and the run takes about an hour on 2 cores.
#
# Usage: scripts/librdkafka-suite.sh [--build-only] [TEST_NUMBER...]
#   With test numbers (e.g. 0001 0081), runs only those; otherwise every
#   selected test (see "Which tests" below).
#
# What it does:
#   1. Source: a checkout of librdkafka's tag $LIBRDKAFKA_VERSION (default
#      v2.15.0) in target/librdkafka-suite/librdkafka-<version>/, cloned from
#      $LIBRDKAFKA_GIT (default GitHub; any git URL or local clone works)
#      unless $LIBRDKAFKA_SRC names an existing checkout to use instead.
#   2. Build: ./configure (no GSSAPI, no curl, builtin LZ4; zlib, zstd and
#      OpenSSL when their dev packages are installed), librdkafka and
#      tests/test-runner, with nice -n 19. A marker in the checkout records
#      the finished build; later runs reuse it.
#   3. Broker: $SLUICE_BIN, else target/release/sluice if present, else
#      target/debug/sluice (built with `cargo build --bin sluice` if
#      missing), started in a temporary directory on an ephemeral port with
#      kafka.default_partitions = 4 (the suite assumes auto-created topics
#      get 4 partitions, as its trivup clusters configure), 64 MiB segments
#      and disk thresholds near full (see start_broker). It is restarted if
#      a test leaves it dead, and that is reported.
#   4. Tests: each test number runs as its own `test-runner` process with
#      TESTS=<number>, -p1 (sequential) and -L (no broker-less tests), in
#      full mode (TEST_QUICK=1 adds -Q, which skips most sub-tests), with
#      TEST_KAFKA_VERSION=${TEST_KAFKA_VERSION:-4.0.0} and
#      test.timeout.multiplier=${TEST_TIMEOUT_MULTIPLIER:-2} (a debug broker
#      on a shared 2-core machine is slow). Its JSON report gives each
#      sub-test's state; its log is kept in target/librdkafka-suite/logs/.
#
# Which tests: every test of test.c's list that needs a broker (not flagged
# TEST_F_LOCAL or manual) and runs in the default scenario, minus
#   - mock-cluster tests not flagged local (0139, 0150): they never talk to
#     the broker under test; the mock tests are all skipped;
#   - tests that need more than one broker: 0101 (fetch from a follower),
#     and 0098 and 0103 (transactions), 0107 (topic re-creation) and 0111,
#     which create their topics with replication factor 3 (a single Kafka
#     broker refuses that too);
#   - tests of authorization (0115, 0119), which set ACLs with Kafka's
#     kafka-acls.sh: Sluice has no authorizer (0109 runs: only its last
#     sub-tests need ACLs, so it fails there);
#   - tests only for the ak23 scenario (none today).
# The noautocreate-scenario tests (0045's topic removal and partition change;
# 0107 and 0111 need three brokers) run after the others against a fresh
# broker with kafka.auto_create_topics = false.
# The tests that run Kafka's bin/kafka-topics.sh (0045, 0052, 0077) get
# scripts/kafka-topics-shim.py in its place (KAFKA_PATH), which needs the venv
# of scripts/install-test-clients.sh. Tests that need SSL, SASL, Java or a
# newer broker version (the share-consumer tests want 4.2) skip themselves
# and are listed as SKIPPED.
#
# Output: one line per test (PASSED/FAILED/SKIPPED, seconds), the first
# failure lines of each failed test, and a summary; the same lines go to
# target/librdkafka-suite/run-<time>/result.txt (with each test's log in
# logs/ beside it) and, for a run of every selected test, to
# target/librdkafka-suite/result.txt, which scripts/compat-table.sh reads.
#
# Needs: git, gcc, g++, make, perl, pkg-config, python3, zlib1g-dev;
# libzstd-dev and libssl-dev for the zstd and SSL parts, rapidjson-dev for
# the tests that check statistics JSON (0053, 0110; without it they skip)
# (Debian names). After installing one of these later, delete
# target/librdkafka-suite/librdkafka-<version>/.sluice-suite-built to rebuild.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$root/target/librdkafka-suite"
version="${LIBRDKAFKA_VERSION:-v2.15.0}"
git_url="${LIBRDKAFKA_GIT:-https://github.com/confluentinc/librdkafka.git}"
src="${LIBRDKAFKA_SRC:-$work/librdkafka-$version}"
# Kafka 4.0: Sluice's oldest versions are Kafka 4's (KIP-896 removed the
# older ones), so the suite must not test the pre-0.11 message formats.
kafka_version="${TEST_KAFKA_VERSION:-4.0.0}"
timeout_multiplier="${TEST_TIMEOUT_MULTIPLIER:-2}"
# A hung test-runner is killed after this long (its own per-test timeouts
# are shorter; this is the backstop).
test_run_timeout_s="${TEST_RUN_TIMEOUT_S:-900}"
# Never run: mock-cluster-only tests not flagged local (0139, 0150), and the
# tests that need more than one broker: 0101 (fetch from a follower) and
# 0098, 0103, 0107 and 0111 (they create topics with replication factor 3);
# and the tests of authorization, which set ACLs with Kafka's kafka-acls.sh
# (0115, 0119).
excluded="0139 0150 0098 0101 0103 0107 0111 0115 0119"
# Quick mode (-Q) only when TEST_QUICK=1: it skips every SUB_TEST() that is
# not marked quick, which is most of the suite's substance.
quick=""
[ "${TEST_QUICK:-0}" = 1 ] && quick="-Q"
# Each run keeps its logs and result in its own directory; a run of the
# whole selection also writes the result to $work/result.txt.
run_dir="$work/run-$(date -u +%Y%m%d-%H%M%S)"
logs="$run_dir/logs"
result="$run_dir/result.txt"

say() { echo "librdkafka-suite: $*" >&2; }
fail() {
  say "$*"
  exit 1
}

build_only=false
requested=()
for argument in "$@"; do
  case "$argument" in
  --build-only) build_only=true ;;
  [0-9][0-9][0-9][0-9]) requested+=("$argument") ;;
  -h | --help)
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit 0
    ;;
  *) fail "unknown argument $argument (see --help)" ;;
  esac
done

fetch_source() {
  [ -f "$src/tests/test.c" ] && return
  [ -n "${LIBRDKAFKA_SRC:-}" ] && fail "LIBRDKAFKA_SRC=$src has no tests/test.c"
  mkdir -p "$work"
  say "cloning librdkafka $version from $git_url into $src"
  git clone --quiet --depth 1 --branch "$version" "$git_url" "$src" ||
    fail "git clone failed (set LIBRDKAFKA_GIT to a reachable mirror or LIBRDKAFKA_SRC to a checkout)"
}

build() {
  local marker="$src/.sluice-suite-built"
  if [ -f "$marker" ] && [ -x "$src/tests/test-runner" ]; then
    say "reusing the build in $src"
    return
  fi
  local jobs
  jobs="$(nproc)"
  say "building librdkafka $version and its tests in $src (nice -n 19, -j$jobs)"
  (
    cd "$src"
    ./configure --disable-gssapi --disable-curl --disable-lz4-ext >"$work/configure.log" 2>&1 ||
      fail "configure failed; see $work/configure.log"
    nice -n 19 make -j"$jobs" libs >"$work/build.log" 2>&1 ||
      fail "make libs failed; see $work/build.log"
    nice -n 19 make -j"$jobs" -C tests build >>"$work/build.log" 2>&1 ||
      fail "make -C tests build failed; see $work/build.log"
  )
  touch "$marker"
}

sluice_binary() {
  if [ -n "${SLUICE_BIN:-}" ]; then
    echo "$SLUICE_BIN"
  elif [ -x "$root/target/release/sluice" ]; then
    echo "$root/target/release/sluice"
  else
    if [ ! -x "$root/target/debug/sluice" ]; then
      say "building target/debug/sluice"
      (cd "$root" && nice -n 19 cargo build --bin sluice) >&2
    fi
    echo "$root/target/debug/sluice"
  fi
}

broker_pid=""
broker_address=""
broker_dir=""

# start_broker BINARY SCENARIO: a fresh broker configured as the suite's
# scenarios/SCENARIO.json asks (4 partitions; topic auto-creation off for
# noautocreate).
start_broker() {
  local binary="$1" scenario="$2" auto_create=true
  [ "$scenario" = noautocreate ] && auto_create=false
  rm -rf "$broker_dir/data"
  mkdir -p "$broker_dir/data"
  # 64 MiB segments (each shard preallocates one) and disk thresholds near
  # full: the suite writes a few GiB in all, and the run should not depend
  # on what else shares the disk.
  cat >"$broker_dir/sluice.toml" <<TOML
[kafka]
default_partitions = 4
auto_create_topics = $auto_create

[storage]
segment_bytes = 67108864

[retention]
disk_clean_ratio = 0.96
disk_force_clean_ratio = 0.97
disk_reject_ratio = 0.99
TOML
  : >"$broker_dir/broker.log"
  RUST_LOG="${SLUICE_LOG:-warn,sluice=info}" "$binary" serve --config "$broker_dir/sluice.toml" \
    --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
    --data-dir "$broker_dir/data" 2>"$broker_dir/broker.log" >/dev/null &
  broker_pid=$!
  local waited=0
  while ! grep -q "sluice ready" "$broker_dir/broker.log"; do
    kill -0 "$broker_pid" 2>/dev/null || fail "sluice exited at start: $(tail -5 "$broker_dir/broker.log")"
    sleep 0.2
    waited=$((waited + 1))
    [ "$waited" -lt 300 ] || fail "sluice not ready within 60 s"
  done
  broker_address="$(grep -m1 "sluice ready" "$broker_dir/broker.log" | tr ' ' '\n' | sed -n 's/^kafka=//p')"
  printf 'metadata.broker.list=%s\ntest.timeout.multiplier=%s\n' \
    "$broker_address" "$timeout_multiplier" >"$broker_dir/test.conf"
  install_kafka_topics
  say "sluice ($binary) ready at $broker_address for scenario $scenario"
}

# KAFKA_PATH/bin/kafka-topics.sh for the tests that shell out to it: the
# Admin API shim scripts/kafka-topics-shim.py, run by the test clients' venv.
install_kafka_topics() {
  local python="$root/target/test-clients/venv/bin/python"
  if [ ! -x "$python" ]; then
    say "no $python (scripts/install-test-clients.sh installs it): the tests that run kafka-topics.sh will fail"
    return
  fi
  mkdir -p "$broker_dir/kafka/bin"
  printf '#!/bin/sh\nexec "%s" "%s" "$@"\n' "$python" "$root/scripts/kafka-topics-shim.py" \
    >"$broker_dir/kafka/bin/kafka-topics.sh"
  chmod +x "$broker_dir/kafka/bin/kafka-topics.sh"
}

stop_broker() {
  [ -n "$broker_pid" ] || return 0
  kill "$broker_pid" 2>/dev/null || true
  wait "$broker_pid" 2>/dev/null || true
  broker_pid=""
}

# The broker-needing tests of test.c's list in the default and noautocreate
# scenarios, in order: one "SCENARIO NUMBER NAME" line each.
selected_tests() {
  python3 - "$src/tests/test.c" "$excluded" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
excluded = set(sys.argv[2].split())
body = text[text.index("struct test tests[] = {"):]
for match in re.finditer(r"_TEST\(", body):
    depth, end = 1, match.end()
    while depth:
        depth += {"(": 1, ")": -1}.get(body[end], 0)
        end += 1
    entry = body[match.end():end - 1]
    name, _, rest = entry.partition(",")
    number = name.strip()[:4]
    flags = rest.split(",")[0]
    if not re.fullmatch(r"\d{4}_\w+", name.strip()):
        continue
    scenarios = re.search(r'\.scenario\s*=\s*"([^"]*)"', rest)
    scenarios = scenarios.group(1).split(",") if scenarios else ["default"]
    scenario = next((s for s in ("default", "noautocreate") if s in scenarios), None)
    if "TEST_F_LOCAL" in flags or "TEST_F_MANUAL" in flags or scenario is None:
        continue
    if name.strip().endswith("_mock") or number in excluded:
        continue
    print(scenario, number, name.strip())
EOF
}

# report_lines REPORT SELECTION SCENARIO NUMBER: one "NAME STATE SECONDS"
# line per test NUMBER_* of SCENARIO in SELECTION that a test-runner JSON
# REPORT lists.
report_lines() {
  python3 - "$1" "$2" "$3" "$4" <<'EOF'
import json, sys
selected = {
    fields[2]
    for fields in (line.split() for line in open(sys.argv[2]))
    if fields[0] == sys.argv[3] and fields[1] == sys.argv[4]
}
try:
    report = json.load(open(sys.argv[1]))
except (OSError, ValueError):
    sys.exit(0)
for name, test in report.get("tests", {}).items():
    if name not in selected or test.get("state") in (None, "DNS"):
        continue
    print(name, test["state"], f"{test.get('duration', 0):.1f}")
EOF
}

# first_error LOG NAME: the lines of LOG that say why test NAME failed (the
# runner's "### Test ... failed at ...: ###" line and the reason after it).
first_error() {
  sed -e 's/\x1b\[[0-9;]*m//g' "$1" |
    grep -a -A1 -F "### Test \"$2" | grep -a -v '^--$' | awk '!seen[$0]++' | head -4 | cut -c1-300 || true
}

# run_test BINARY SCENARIO NUMBER SELECTION LINES: one test-runner process
# for test NUMBER; appends its tests' result lines to LINES.
run_test() {
  local binary="$1" scenario="$2" number="$3" selection="$4" lines="$5"
  local log="$logs/$number-$scenario.log" report="$logs/$number-$scenario.json"
  local test_started=$SECONDS status=0
  # The braces send bash's "Aborted" notice, for a runner that fails its
  # own assertion, to /dev/null (the log has the details).
  { (
    cd "$src/tests"
    TESTS="$number" TEST_KAFKA_VERSION="$kafka_version" TEST_SCENARIO="$scenario" \
      RDKAFKA_TEST_CONF="$broker_dir/test.conf" TEST_REPORT="$report" \
      KAFKA_PATH="$broker_dir/kafka" BROKERS="$broker_address" \
      LD_LIBRARY_PATH="../src:../src-cpp" \
      timeout --kill-after=10 "$test_run_timeout_s" ./test-runner -L -p1 -S $quick
  ) >"$log" 2>&1; } 2>/dev/null || status=$?
  local found
  found="$(report_lines "$report" "$selection" "$scenario" "$number")"
  if [ -z "$found" ]; then
    # No report: the runner crashed or was killed by the backstop timeout.
    found="$number CRASHED(exit=$status) $((SECONDS - test_started))"
  fi
  while read -r name state seconds; do
    printf '%-50s %-8s %6ss\n' "$name" "$state" "$seconds" | tee -a "$lines"
    if [ "$state" != PASSED ] && [ "$state" != SKIPPED ]; then
      first_error "$log" "$name" | sed 's/^/    /' | tee -a "$lines"
    fi
  done <<<"$found"
  if ! kill -0 "$broker_pid" 2>/dev/null; then
    echo "    sluice died during $number; last log lines:" | tee -a "$lines"
    tail -5 "$broker_dir/broker.log" | sed 's/^/    /' | tee -a "$lines"
    cp "$broker_dir/broker.log" "$logs/$number.broker.log"
    start_broker "$binary" "$scenario"
  fi
}

main() {
  fetch_source
  build
  "$build_only" && return 0

  local binary
  binary="$(sluice_binary)"
  [ -x "$binary" ] || fail "no sluice binary at $binary"
  broker_dir="$(mktemp -d /tmp/librdkafka-suite.XXXXXX)"
  trap 'stop_broker; rm -rf "$broker_dir"' EXIT

  mkdir -p "$logs"
  local selection="$logs/selected.txt"
  selected_tests >"$selection"
  local lines="$run_dir/result.lines"
  : >"$lines"
  local started=$SECONDS
  for scenario in default noautocreate; do
    local tests
    tests="$(awk -v scenario="$scenario" '$1 == scenario { print $2 }' "$selection" | uniq)"
    if ((${#requested[@]})); then
      tests="$(printf '%s\n' $tests | grep -x -F -f <(printf '%s\n' "${requested[@]}") || true)"
    fi
    [ -n "$tests" ] || continue
    start_broker "$binary" "$scenario"
    for number in $tests; do
      run_test "$binary" "$scenario" "$number" "$selection" "$lines"
    done
    stop_broker
  done
  local passed failed skipped
  passed="$(grep -c -E '^\S+ +PASSED ' "$lines" || true)"
  failed="$(grep -c -E '^\S+ +(FAILED|CRASHED|RUNNING)' "$lines" || true)"
  skipped="$(grep -c -E '^\S+ +SKIPPED ' "$lines" || true)"
  {
    echo "librdkafka $version test suite against sluice ($binary), $(date -u +%Y-%m-%d)"
    echo "TEST_KAFKA_VERSION=$kafka_version, test.timeout.multiplier=$timeout_multiplier, $(((SECONDS - started) / 60)) min"
    echo
    cat "$lines"
    echo
    echo "summary: $passed of $((passed + failed)) single-broker tests pass ($failed fail, $skipped skipped)"
  } >"$result"
  rm -f "$lines"
  ((${#requested[@]})) || cp "$result" "$work/result.txt"
  echo
  tail -1 "$result"
  say "results in $result, logs in $logs"
}

main
