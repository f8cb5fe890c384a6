"""kafka-python 3's admin client against sluice's Kafka 4 APIs (issue 14).

Creates PREFIX-a, PREFIX-b and PREFIX-c (3, 2 and 4 partitions), produces
to PREFIX-a, then: pages through DescribeTopicPartitions (API 75) with a
limit of 2 partitions per page, following its cursor; describes PREFIX-a's
log dirs (DescribeLogDirs v4); describes PREFIX-b by topic id (Metadata
v12+); deletes PREFIX-c by topic id (DeleteTopics v6). Prints one JSON
report on stdout: pages [[[topic, partition], ...], ...], log_dir_bytes
(PREFIX-a's partitions, summed), log_dir_total_bytes, by_id (the name the
id resolved to), deleted_code, after_delete (whether PREFIX-c still exists),
error.

Usage: kafka_python_kafka4_admin.py BOOTSTRAP PREFIX
"""

import json
import logging
import sys
import uuid

import kafka
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

PAGES_MAX = 20
WAIT_SECONDS = 30


def main():
    bootstrap, prefix = sys.argv[1], sys.argv[2]
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    report = {"client": f"kafka-python {kafka.__version__}", "error": None}
    admin = None
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        names = {f"{prefix}-a": 3, f"{prefix}-b": 2, f"{prefix}-c": 4}
        admin.create_topics(
            [NewTopic(name, partitions, 1) for name, partitions in names.items()]
        )
        producer = KafkaProducer(bootstrap_servers=bootstrap)
        for index in range(20):
            producer.send(f"{prefix}-a", value=b"x" * 100, partition=index % 3)
        producer.flush(timeout=WAIT_SECONDS)
        producer.close(timeout=5)

        pages, cursor = [], None
        for _ in range(PAGES_MAX):
            page = admin.describe_topic_partitions(
                list(names), response_partition_limit=2, cursor=cursor
            )
            pages.append(
                [
                    [topic["name"], partition["partition_index"]]
                    for topic in page["topics"]
                    for partition in topic["partitions"]
                ]
            )
            cursor = page["next_cursor"]
            if cursor is None:
                break
        report["pages"] = pages

        dirs = admin.describe_log_dirs({f"{prefix}-a": [0, 1, 2]})
        total_bytes, partition_bytes = 0, 0
        for broker in dirs:
            for log_dir in broker["log_dirs"]:
                total_bytes = max(total_bytes, log_dir.get("total_bytes", -1))
                for topic in log_dir["topics"]:
                    for partition in topic["partitions"]:
                        partition_bytes += partition["partition_size"]
        report["log_dir_bytes"] = partition_bytes
        report["log_dir_total_bytes"] = total_bytes

        described = {topic["name"]: topic for topic in admin.describe_topics(list(names))}
        ids = {name: uuid.UUID(str(topic["topic_id"])) for name, topic in described.items()}
        by_id = admin.describe_topics([ids[f"{prefix}-b"]])
        report["by_id"] = by_id[0]["name"]
        deleted = admin.delete_topics([ids[f"{prefix}-c"]])
        report["deleted_code"] = deleted["topics"][0]["error_code"]
        report["after_delete"] = f"{prefix}-c" in admin.list_topics()
    except Exception as error:  # noqa: BLE001 - every failure goes into the report
        report["error"] = f"{type(error).__name__}: {error}"
    finally:
        if admin is not None:
            admin.close()
    print(json.dumps(report, default=str), flush=True)


if __name__ == "__main__":
    main()
