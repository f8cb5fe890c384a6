"""A stateless Quix Streams application with processing_guarantee
"exactly-once" (issue 13, design 5.3 item 10): every record of INPUT, a
string "<label>-<partition>-<index>", goes through `sdf.apply` to OUTPUT as
"quix-<partition>-<index>" with the record's key. Quix's own producer and
consumer settings are kept, except the two timeouts the caller gives:

- `transaction.timeout.ms`: Quix gives each start of an application a
  random transactional.id, so a transaction left open by a killed
  application is not fenced by the next start; the transaction coordinator
  aborts it once this has passed (librdkafka's default is 60 s), and until
  then it holds the last stable offset of the output, so read_committed
  readers of the output wait.
- `session.timeout.ms`: the killed application stays a member of the group
  until this has passed (librdkafka's default is 45 s), and the restarted
  one is assigned the partitions only then.

Each checkpoint (one transaction: the output records and the consumed
offsets, sent with the commit) holds COMMIT_EVERY records; the commit
interval is a minute, so only the count cuts them. With STALL_AT > 0 the
transform stops forever at its STALL_AT-th record, after writing
"stalled <value>" on stderr: the records of the checkpoint before it are
produced in its open transaction, and the caller kills the application
there.

Runs until its stdin closes (then stops the application) or it is killed.
Writes "processed <value>" on stderr for each record the transform returns,
and on stdout one JSON report: client, error.

Usage: quix_pipeline.py BOOTSTRAP INPUT OUTPUT GROUP STATE_DIR SESSION_TIMEOUT_MS
       TRANSACTION_TIMEOUT_MS COMMIT_EVERY STALL_AT
"""

import itertools
import json
import logging
import sys
import threading
import time

import confluent_kafka
import quixstreams
from quixstreams import Application

# Longer than any test runs: checkpoints are cut by COMMIT_EVERY alone.
COMMIT_INTERVAL_SECONDS = 60.0


def transformer(stall_at):
    calls = itertools.count(1)

    def transform(value):
        if next(calls) == stall_at:
            print(f"stalled {value}", file=sys.stderr, flush=True)
            while True:
                time.sleep(60)
        _, partition, index = value.rsplit("-", 2)
        print(f"processed {value}", file=sys.stderr, flush=True)
        return f"quix-{partition}-{index}"

    return transform


def main():
    bootstrap, input_name, output_name, group, state_dir = sys.argv[1:6]
    session_timeout_ms, transaction_timeout_ms = int(sys.argv[6]), int(sys.argv[7])
    commit_every, stall_at = int(sys.argv[8]), int(sys.argv[9])
    report = {
        "client": f"quixstreams {quixstreams.__version__} (confluent-kafka {confluent_kafka.__version__} "
        f"librdkafka {confluent_kafka.libversion()[0]})",
        "error": None,
    }
    try:
        app = Application(
            broker_address=bootstrap,
            consumer_group=group,
            auto_offset_reset="earliest",
            processing_guarantee="exactly-once",
            commit_interval=COMMIT_INTERVAL_SECONDS,
            commit_every=commit_every,
            state_dir=state_dir,
            producer_extra_config={"transaction.timeout.ms": transaction_timeout_ms},
            consumer_extra_config={
                "session.timeout.ms": session_timeout_ms,
                "heartbeat.interval.ms": max(session_timeout_ms // 6, 100),
            },
            loglevel=logging.INFO,
        )
        input_topic = app.topic(input_name, value_deserializer="str", value_serializer="str")
        output_topic = app.topic(output_name, value_deserializer="str", value_serializer="str")
        sdf = app.dataframe(input_topic)
        sdf = sdf.apply(transformer(stall_at))
        sdf.to_topic(output_topic)

        def stop_when_stdin_closes():
            sys.stdin.read()
            app.stop()

        threading.Thread(target=stop_when_stdin_closes, daemon=True).start()
        app.run()
    except Exception as error:  # noqa: BLE001 - every failure goes into the report
        report["error"] = f"{type(error).__name__}: {error}"
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
