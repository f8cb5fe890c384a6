#!/usr/bin/env bash
# Installs the real Kafka clients that tests/integration/eos_clients.rs,
# txn_clients.rs, txn_pipelines.rs (issue 13), compat_clients.rs (issue 14) and
# compaction_clients.rs (issue 17) drive against the sluice binary:
#   target/test-clients/venv           Python venv with tests/clients/requirements.txt
#                                      (kafka-python, confluent-kafka, aiokafka and the
#                                      snappy/lz4/zstd libraries they use; exact pins)
#   target/test-clients/quix-venv      Python venv with tests/clients/requirements-quix.txt
#                                      (Quix Streams, which needs an older confluent-kafka)
#   target/test-clients/faust-venv     Python venv with tests/clients/requirements-faust.txt
#                                      (faust-streaming, its aiokafka, and rocksdict)
#   tests/clients/node/node_modules    `npm ci` of tests/clients/node/package-lock.json
#                                      (kafkajs and its codecs, @platformatic/kafka)
# Idempotent: a marker records what was installed (the pin files and the
# python and node versions); when it matches, the script does nothing.
# Needs python3 (3.11+, with venv and pip; Quix Streams wants 3.11), node and
# npm, and PyPI and the npm registry. Run by .ci/run before `cargo test`, and
# by the tests themselves.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
clients="$root/tests/clients"
install_dir="$root/target/test-clients"
venv="$install_dir/venv"
quix_venv="$install_dir/quix-venv"
faust_venv="$install_dir/faust-venv"
node_dir="$clients/node"
marker="$install_dir/installed"
python="${PYTHON:-python3}"

say() { echo "install-test-clients: $*"; }
fail() {
  echo "install-test-clients: $*" >&2
  exit 1
}

command -v "$python" >/dev/null 2>&1 || fail "$python is missing (CPython 3.11+ with venv and pip is needed)"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  fail "$("$python" --version 2>&1) is too old: Quix Streams needs CPython 3.11+ (set PYTHON=python3.11)"
command -v node >/dev/null 2>&1 || fail "node is missing (Node.js 20.19+ is needed for @platformatic/kafka)"
command -v npm >/dev/null 2>&1 || fail "npm is missing (it comes with Node.js)"

fingerprint() {
  {
    "$python" --version 2>&1
    node --version
    cat "$clients/requirements.txt" "$clients/requirements-quix.txt" \
      "$clients/requirements-faust.txt" \
      "$node_dir/package.json" "$node_dir/package-lock.json"
  } | sha256sum | cut -d' ' -f1
}

installed() {
  [ -f "$marker" ] && [ "$(cat "$marker")" = "$1" ] &&
    [ -x "$venv/bin/python" ] && [ -x "$quix_venv/bin/python" ] &&
    [ -x "$faust_venv/bin/python" ] &&
    [ -f "$node_dir/node_modules/kafkajs/package.json" ] &&
    [ -f "$node_dir/node_modules/@platformatic/kafka/package.json" ]
}

want="$(fingerprint)"
if installed "$want"; then
  say "up to date ($venv, $quix_venv, $faust_venv, $node_dir/node_modules)"
  exit 0
fi

mkdir -p "$install_dir"
# Test processes (nextest runs one per test) may start this at once: one installs.
exec 9>"$install_dir/.lock"
flock 9
if installed "$want"; then
  say "installed meanwhile by another run"
  exit 0
fi
rm -f "$marker"

# install_venv VENV REQUIREMENTS: a fresh venv with exactly REQUIREMENTS.
install_venv() {
  say "creating $1 with $("$python" --version 2>&1)"
  rm -rf "$1"
  "$python" -m venv "$1" || fail "could not create the venv (Debian: apt-get install python3-venv)"
  say "installing $(grep -v -e '^#' -e '^$' "$2" | tr '\n' ' ')"
  "$1/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$2" ||
    fail "pip install -r $2 failed (is PyPI reachable?)"
}
install_venv "$venv" "$clients/requirements.txt"
install_venv "$quix_venv" "$clients/requirements-quix.txt"
install_venv "$faust_venv" "$clients/requirements-faust.txt"

say "installing kafkajs and @platformatic/kafka from $node_dir/package-lock.json with npm ci"
(cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error) ||
  fail "npm ci failed (is the npm registry reachable?)"

echo "$want" >"$marker"
say "done: $venv, $quix_venv, $faust_venv and $node_dir/node_modules"
