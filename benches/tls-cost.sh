#!/usr/bin/env bash
# What TLS costs produce and fetch against plaintext (issue 20 item 2): one
# release broker with a PLAINTEXT listener and an SSL one, kcat (librdkafka,
# OpenSSL) producing LINES records of 1000 bytes (acks=1) and reading them
# back, alternating plaintext and TLS for ROUNDS rounds. Prints client
# throughput and the broker's CPU seconds per GB (utime+stime from /proc).
# kcat is single-threaded, so throughput is the client's as much as the
# broker's; the broker's CPU per GB is the cost that matters.
#
#   cargo build --release --bin sluice && benches/tls-cost.sh
set -euo pipefail
unset LD_LIBRARY_PATH
REPO=$(cd "$(dirname "$0")/.." && pwd)
BIN=${SLUICE_BIN:-$REPO/target/release/sluice}
ROUNDS=${ROUNDS:-3}; LINES=${LINES:-400000}
D=$(mktemp -d /tmp/sluice-tls-cost.XXXXXX)
cd $D
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=bench CA" -keyout ca-key.pem -out ca.pem 2>/dev/null
printf "subjectAltName=DNS:localhost,IP:127.0.0.1\n" > server.ext
openssl req -newkey rsa:2048 -nodes -keyout server-key.pem -out server.csr -subj "/CN=localhost" 2>/dev/null
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -out server.pem -days 30 -extfile server.ext 2>/dev/null
python3 -c "
import sys
row = ('x' * 999 + '\n').encode()
sys.stdout.buffer.write(row * $LINES)" > lines.txt
PORT=$(python3 -c "import socket;s=socket.socket();s.bind(('127.0.0.1',0));print(s.getsockname()[1])")
cat > sluice.toml <<TOML
[security]
[[security.listeners]]
name = "TLS"
listen = "127.0.0.1:$PORT"
security_protocol = "SSL"
[security.tls]
certificate = "$D/server.pem"
private_key = "$D/server-key.pem"
TOML
RUST_LOG=warn,sluice=info $BIN serve --config sluice.toml --data-dir $D/data --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 2> broker.log &
PID=$!; trap "kill $PID; rm -rf $D" EXIT
until grep -q "sluice ready" broker.log; do sleep 0.2; done
PLAIN=$(grep -m1 "sluice ready" broker.log | tr ' ' '\n' | sed -n 's/^kafka=//p')
TLS=127.0.0.1:$PORT
cpu() { awk '{print $14+$15}' /proc/$PID/stat; }
TICK=$(getconf CLK_TCK); MB=$(( $(stat -c %s lines.txt) / 1000000 ))
run() { # name address extra...
  local name=$1 address=$2; shift 2
  local c0=$(cpu) t0=$(date +%s.%N)
  kcat -b $address "$@" -P -t $name -X acks=1 -X linger.ms=5 -X batch.num.messages=10000 -X queue.buffering.max.kbytes=1048576 < lines.txt
  local t1=$(date +%s.%N) c1=$(cpu)
  kcat -b $address "$@" -C -t $name -e -q -o beginning > /dev/null
  local t2=$(date +%s.%N) c2=$(cpu)
  python3 -c "
mb=$MB; p=$t1-$t0; c=$t2-$t1; pc=($c1-$c0)/$TICK; cc=($c2-$c1)/$TICK
print(f'$name produce {mb/p:7.1f} MB/s broker {pc/mb*1000:5.2f} cpu-s/GB | consume {mb/c:7.1f} MB/s broker {cc/mb*1000:5.2f} cpu-s/GB')"
}
for r in $(seq 1 $ROUNDS); do
  run plain-$r $PLAIN
  run tls-$r $TLS -X security.protocol=ssl -X ssl.ca.location=$D/ca.pem
done
