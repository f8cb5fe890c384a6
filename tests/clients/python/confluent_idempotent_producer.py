"""confluent-kafka's idempotent producer (enable.idempotence=true) that keeps
producing while the broker is killed and restarted under it (issue 13).

Produces round-robin over PARTITIONS partitions of TOPIC (value
"<partition>-<sequence within partition>") until a line or end of file
arrives on stdin, then flushes and prints one JSON report on stdout: acked
[{partition, offset, value}] in delivery-report order, failed, fatal, error.
Writes "first-ack" to stderr when the first delivery report arrives, so the
test knows production is under way before it kills the broker.

The rate is held down (RECORDS_PER_TICK every TICK_SECONDS) and the local
queue bounded, so the run stays small on a 2-core machine; message.timeout.ms
outlasts any restart, so nothing should fail, only wait and retry.

Usage: confluent_idempotent_producer.py BOOTSTRAP TOPIC PARTITIONS
"""

import json
import sys
import threading
import time

import confluent_kafka
from confluent_kafka import Producer

RECORDS_PER_TICK = 10
TICK_SECONDS = 0.01
QUEUED_MAX = 5000
FLUSH_SECONDS = 60


def main():
    bootstrap, topic, partitions = sys.argv[1], sys.argv[2], int(sys.argv[3])
    report = {
        "client": f"confluent-kafka {confluent_kafka.__version__} librdkafka {confluent_kafka.libversion()[0]}",
        "acked": [],
        "failed": [],
        "fatal": [],
        "error": None,
    }
    stop = threading.Event()

    def wait_for_stop():
        sys.stdin.readline()
        stop.set()

    threading.Thread(target=wait_for_stop, daemon=True).start()

    def on_error(error):
        if error.fatal():
            report["fatal"].append(str(error))
        print(f"error_cb: {error}", file=sys.stderr, flush=True)

    def on_delivery(error, message):
        value = message.value().decode()
        if error is not None:
            report["failed"].append(f"{value}: {error}")
            return
        if not report["acked"]:
            print("first-ack", file=sys.stderr, flush=True)
        report["acked"].append({"partition": message.partition(), "offset": message.offset(), "value": value})

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "linger.ms": 5,
            "message.timeout.ms": 60000,
            # Reconnect quickly to the restarted broker (defaults back off to 10 s).
            "reconnect.backoff.ms": 50,
            "reconnect.backoff.max.ms": 500,
            "error_cb": on_error,
        }
    )
    try:
        next_sequence = [0] * partitions
        sent = 0
        while not stop.is_set() and not report["fatal"]:
            if len(producer) >= QUEUED_MAX:
                producer.poll(0.05)
                continue
            for _ in range(RECORDS_PER_TICK):
                partition = sent % partitions
                value = f"{partition}-{next_sequence[partition]}"
                next_sequence[partition] += 1
                sent += 1
                producer.produce(topic, value=value.encode(), partition=partition, on_delivery=on_delivery)
            producer.poll(0)
            time.sleep(TICK_SECONDS)
        remaining = producer.flush(FLUSH_SECONDS)
        report["sent"] = sent
        if remaining:
            report["error"] = f"{remaining} records still unacknowledged after flush({FLUSH_SECONDS})"
    except Exception as error:  # noqa: BLE001 - every failure goes into the report
        report["error"] = f"{type(error).__name__}: {error}"
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
