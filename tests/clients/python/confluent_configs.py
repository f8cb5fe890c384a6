"""confluent-kafka's admin config calls against sluice (issue 14).

Creates TOPIC with cleanup.policy and min.insync.replicas, replaces its
overrides with retention.bytes alone (legacy alter_configs), then adds to
them with incremental_alter_configs (APPEND to a list, SET), sets an
unchecked broker setting as librdkafka's admin test does, and describes
both. Prints one JSON report on stdout: topic {name: [value, source]},
broker {name: value}, error.

Usage: python confluent_configs.py BOOTSTRAP TOPIC
"""

import json
import sys

import confluent_kafka
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewTopic,
)

TIMEOUT_S = 30


def wait_all(futures):
    for future in futures.values():
        future.result(timeout=TIMEOUT_S)


def run(bootstrap, topic, report):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    wait_all(admin.create_topics([NewTopic(topic, 1, 1, config={
        "cleanup.policy": "delete", "min.insync.replicas": "2"})]))
    wait_all(admin.alter_configs([ConfigResource(
        "topic", topic, set_config={"retention.bytes": "1048576"})]))
    wait_all(admin.incremental_alter_configs([ConfigResource("topic", topic, incremental_configs=[
        ConfigEntry("leader.replication.throttled.replicas", "0:0",
                    incremental_operation=AlterConfigOpType.APPEND),
        ConfigEntry("max.message.bytes", "2097164", incremental_operation=AlterConfigOpType.SET),
    ])]))
    wait_all(admin.incremental_alter_configs([ConfigResource("topic", topic, incremental_configs=[
        ConfigEntry("leader.replication.throttled.replicas", "1:0",
                    incremental_operation=AlterConfigOpType.APPEND),
    ])]))
    wait_all(admin.incremental_alter_configs([ConfigResource("broker", "0", incremental_configs=[
        ConfigEntry("sasl.kerberos.min.time.before.relogin", "58000",
                    incremental_operation=AlterConfigOpType.SET),
    ])]))
    described = admin.describe_configs([ConfigResource("topic", topic), ConfigResource("broker", "0")])
    for resource, future in described.items():
        for name, entry in future.result(timeout=TIMEOUT_S).items():
            if resource.restype == confluent_kafka.admin.ResourceType.TOPIC:
                report["topic"][name] = [entry.value, ConfigSource(entry.source).name]
            else:
                report["broker"][name] = entry.value


def main():
    bootstrap, topic = sys.argv[1:3]
    report = {
        "client": f"confluent-kafka {confluent_kafka.__version__} librdkafka {confluent_kafka.libversion()[0]}",
        "topic": {},
        "broker": {},
        "error": None,
    }
    try:
        run(bootstrap, topic, report)
    except Exception as error:  # the report carries it to the test
        report["error"] = repr(error)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
