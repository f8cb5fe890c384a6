"""A stateless Quix Streams application with processing_guarantee
"exactly-once" (issue 13, design 5.3 item 10): every record of INPUT, a
string "<label>-<partition>-<index>", goes through `sdf.apply` to OUTPUT as
"quix-<partition>-<index>" with the record's key. Quix's own producer and
consumer settings are kept, except `transaction.timeout.ms`, which the
caller gives (see below).

Quix gives each start of an application a random transactional.id, so a
transaction left open by a killed application is not fenced by the next
start: the transaction coordinator aborts it once `transaction.timeout.ms`
has passed (librdkafka's default is 60 s), and until then the restarted
application's consumer waits (its offsets in that transaction are unstable).
A test passes a shorter timeout to keep that wait short.

Runs until its stdin closes (then stops the application, which commits its
last checkpoint) or it is killed. Writes "processed <value>" on stderr for
each record the transform sees, and on stdout one JSON report:
client, error.

Usage: quix_pipeline.py BOOTSTRAP INPUT OUTPUT GROUP STATE_DIR SESSION_TIMEOUT_MS
       TRANSACTION_TIMEOUT_MS COMMIT_INTERVAL_S RECORD_DELAY_MS
"""

import json
import logging
import sys
import threading
import time

import confluent_kafka
import quixstreams
from quixstreams import Application


def transformer(record_delay_seconds):
    def transform(value):
        _, partition, index = value.rsplit("-", 2)
        # Slow enough that a kill lands inside a checkpoint's transaction.
        time.sleep(record_delay_seconds)
        print(f"processed {value}", file=sys.stderr, flush=True)
        return f"quix-{partition}-{index}"

    return transform


def main():
    bootstrap, input_name, output_name, group, state_dir = sys.argv[1:6]
    session_timeout_ms, transaction_timeout_ms = int(sys.argv[6]), int(sys.argv[7])
    commit_interval, record_delay_ms = float(sys.argv[8]), int(sys.argv[9])
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
            commit_interval=commit_interval,
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
        sdf = sdf.apply(transformer(record_delay_ms / 1000))
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
