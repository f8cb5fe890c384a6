"""A Faust application with a Table (issue 17, log compaction item 5): per
key of INPUT, a running count and sum of the records' values (decimal
integers as strings), kept in the Table "totals" (RocksDB, through
rocksdict, under DATA_DIR), whose changelog topic "<APP_ID>-totals-changelog"
Faust creates itself with cleanup.policy=compact and, from the Table's
`extra_topic_configs`, min.cleanable.dirty.ratio=CHANGELOG_DIRTY_RATIO.
Each total goes to OUTPUT as JSON {"key", "count", "sum"} with the
record's key. The consumer group is APP_ID; the web server is off.

Every update of the Table is one changelog record, so the changelog holds
many records per key until the broker's cleaner compacts it. When DATA_DIR
was deleted, Faust restores the Table from the changelog before it
processes anything ("Restoring state from changelog topics" on stderr),
then logs "Worker ready".

Runs until its stdin closes (then stops the worker as SIGTERM does, which
commits the consumed offsets) or it is killed. Writes "processed <key>
<count> <sum>" on stderr for each record, Faust's log (INFO) on stderr, and
on stdout one JSON report: client, error, processed (records this run),
totals (the last {"key": [count, sum]} this run output).

Usage: faust_table.py BOOTSTRAP INPUT OUTPUT APP_ID DATA_DIR PARTITIONS
       CHANGELOG_DIRTY_RATIO
"""

import json
import os
import signal
import sys
import threading

import aiokafka
import faust
from mode import Worker


def build_app(bootstrap, input_name, output_name, app_id, data_dir, partitions, dirty_ratio, report):
    app = faust.App(
        app_id,
        broker=f"kafka://{bootstrap}",
        store="rocksdb://",
        datadir=data_dir,
        web_enabled=False,
        topic_partitions=partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        table_standby_replicas=0,
    )
    source = app.topic(
        input_name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )
    sink = app.topic(output_name, key_serializer="raw", value_serializer="json")
    totals = app.Table(
        "totals",
        default=lambda: [0, 0],
        partitions=partitions,
        extra_topic_configs={"min.cleanable.dirty.ratio": dirty_ratio},
    )

    @app.agent(source)
    async def count_and_sum(stream):
        async for key, value in stream.items():
            key = key.decode()
            count, total = totals[key]
            count, total = count + 1, total + int(value)
            totals[key] = [count, total]
            report["processed"] += 1
            report["totals"][key] = [count, total]
            print(f"processed {key} {count} {total}", file=sys.stderr, flush=True)
            await sink.send(key=key.encode(), value={"key": key, "count": count, "sum": total})

    return app


def main():
    bootstrap, input_name, output_name, app_id, data_dir = sys.argv[1:6]
    partitions, dirty_ratio = int(sys.argv[6]), sys.argv[7]
    report = {
        "client": f"faust-streaming {faust.__version__} (aiokafka {aiokafka.__version__})",
        "error": None,
        "processed": 0,
        "totals": {},
    }
    app = build_app(bootstrap, input_name, output_name, app_id, data_dir, partitions, dirty_ratio, report)

    def stop_when_stdin_closes():
        sys.stdin.read()
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_when_stdin_closes, daemon=True).start()
    # redirect_stdouts=False: Faust would otherwise turn prints into log
    # records, and the report must be the last line of stdout.
    worker = Worker(app, loglevel="INFO", quiet=True, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    except SystemExit:
        pass
    except Exception as error:  # noqa: BLE001 - every failure goes into the report
        report["error"] = f"{type(error).__name__}: {error}"
    # A service that crashed (a refused CreateTopics, a failed commit) stops
    # the worker without raising here.
    if report["error"] is None and app.crash_reason is not None:
        report["error"] = f"{type(app.crash_reason).__name__}: {app.crash_reason}"
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
