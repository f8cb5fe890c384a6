"""A stateful Quix Streams application (issue 17, log compaction item 5):
per key of INPUT, a running count and sum of the records' values (decimal
integers as strings), kept in Quix's `State` (RocksDB under STATE_DIR,
mirrored to a changelog topic that Quix creates itself with
cleanup.policy=compact), written to OUTPUT as JSON
{"key", "count", "sum"} with the record's key.

A checkpoint is cut every COMMIT_EVERY records: the state changed since
the last one goes to the changelog (one record per changed key), then the
consumed offsets are committed. Many checkpoints over few keys give the
changelog many records per key, for the broker's cleaner to compact.

When STATE_DIR was deleted, Quix restores the state from the changelog
topic before it processes anything: that is what the caller checks.

Runs until its stdin closes (then stops the application, which commits its
last checkpoint) or it is killed. Writes "processed <key> <count> <sum>" on
stderr for each record, Quix's own log (INFO: "Recovery successful for ...")
on stderr, and on stdout one JSON report: client, error, processed
(records this run), totals (the last {"key": [count, sum]} this run
output).

Usage: quix_stateful.py BOOTSTRAP INPUT OUTPUT GROUP STATE_DIR COMMIT_EVERY
"""

import json
import logging
import os
import sys
import threading

import confluent_kafka
import quixstreams
from quixstreams import Application, State

# Longer than any test runs: checkpoints are cut by COMMIT_EVERY alone.
COMMIT_INTERVAL_SECONDS = 60.0
# The one state key per message key: [count, sum]. One state key, so that a
# compacted changelog holds exactly one record per message key.
TOTALS = "totals"


def counter(report):
    def count_and_sum(value, key, _timestamp, _headers, state: State):
        count, total = state.get(TOTALS, [0, 0])
        count, total = count + 1, total + int(value)
        state.set(TOTALS, [count, total])
        key = key.decode()
        report["processed"] += 1
        report["totals"][key] = [count, total]
        print(f"processed {key} {count} {total}", file=sys.stderr, flush=True)
        return {"key": key, "count": count, "sum": total}

    return count_and_sum


def main():
    bootstrap, input_name, output_name, group, state_dir = sys.argv[1:6]
    commit_every = int(sys.argv[6])
    report = {
        "client": f"quixstreams {quixstreams.__version__} (confluent-kafka {confluent_kafka.__version__} "
        f"librdkafka {confluent_kafka.libversion()[0]})",
        "error": None,
        "processed": 0,
        "totals": {},
    }
    try:
        app = Application(
            broker_address=bootstrap,
            consumer_group=group,
            auto_offset_reset="earliest",
            commit_interval=COMMIT_INTERVAL_SECONDS,
            commit_every=commit_every,
            state_dir=state_dir,
            loglevel=logging.INFO,
        )
        input_topic = app.topic(input_name, value_deserializer="str")
        output_topic = app.topic(output_name, value_serializer="json")
        sdf = app.dataframe(input_topic)
        sdf = sdf.apply(counter(report), stateful=True, metadata=True)
        sdf.to_topic(output_topic)

        def stop_when_stdin_closes():
            sys.stdin.read()
            app.stop()

        threading.Thread(target=stop_when_stdin_closes, daemon=True).start()
        app.run()
    except Exception as error:  # noqa: BLE001 - every failure goes into the report
        report["error"] = f"{type(error).__name__}: {error}"
        print(f"error: {report['error']}", file=sys.stderr, flush=True)
    print(json.dumps(report), flush=True)
    if report["error"] is not None:
        # Exit now: after a failed start (a refused CreateTopics) Quix's
        # threads would keep the process alive until stdin closes, and the
        # caller would wait for records that never come.
        os._exit(1)


if __name__ == "__main__":
    main()
