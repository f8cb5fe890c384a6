"""kafka-python against sluice: the compatibility checks of issue 14
(admin, every codec with headers, consumer groups, offsets for times).
Prints the report compat_report.py describes. kafka-python has no KIP-848
consumer.

Usage: compat_kafka_python.py BOOTSTRAP
"""

import logging
import sys

import kafka
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
from kafka.admin import AlterConfigOp, ConfigResource, NewPartitions, NewTopic

from compat_report import (
    CHECKS,
    CODECS,
    GROUP_RECORDS,
    GROUP_RESUMED_RECORDS,
    TIMESTAMP_BASE_MS,
    TIMESTAMP_STEP_MS,
    TIMESTAMPED_RECORDS,
    Checks,
    expect,
    expect_equal,
    make_records,
    same_records,
    wait_until,
)

PREFIX = "kafka-python"
REQUEST_TIMEOUT_MS = 15000
READ_TIMEOUT_MS = 20000


class Client:
    def __init__(self, bootstrap):
        self.bootstrap = bootstrap
        self.admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=REQUEST_TIMEOUT_MS)

    def create(self, topic, partitions, configs=None):
        self.admin.create_topics([NewTopic(topic, partitions, 1, topic_configs=configs or {})])

    def partitions_of(self, topic):
        described = {t["name"]: t for t in self.admin.describe_topics([topic]) if t["error_code"] == 0}
        return len(described[topic]["partitions"]) if topic in described else None

    def topic_configs(self, topic):
        found = self.admin.describe_configs([ConfigResource("TOPIC", topic)], config_filter="all")
        return found["topic"][topic]

    def produce(self, topic, records, codec="none", partition=0, timestamps=None):
        compression = None if codec == "none" else codec
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, compression_type=compression, linger_ms=20)
        try:
            futures = []
            for index, (key, value, headers) in enumerate(records):
                timestamp = timestamps[index] if timestamps else None
                futures.append(
                    producer.send(topic, value=value, key=key, headers=headers, partition=partition, timestamp_ms=timestamp)
                )
            producer.flush(REQUEST_TIMEOUT_MS / 1000)
            for future in futures:
                future.get(timeout=REQUEST_TIMEOUT_MS / 1000)
        finally:
            producer.close()

    def consumer(self, group, **config):
        return KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            fetch_max_wait_ms=100,
            **config,
        )

    def read(self, consumer, count):
        messages = []
        waited_ms = 0
        while len(messages) < count:
            expect(waited_ms < READ_TIMEOUT_MS, f"read {len(messages)} of {count} records in {READ_TIMEOUT_MS} ms")
            for batch in consumer.poll(timeout_ms=200).values():
                messages.extend(batch)
            waited_ms += 200
        return messages

    def read_partition(self, topic, partition, count):
        consumer = self.consumer(None)
        try:
            consumer.assign([TopicPartition(topic, partition)])
            consumer.seek(TopicPartition(topic, partition), 0)
            return self.read(consumer, count)
        finally:
            consumer.close()

    def group_offsets(self, group, topic):
        listed = self.admin.list_group_offsets({group: None})[group]
        return {tp.partition: meta.offset for tp, meta in listed.items() if tp.topic == topic}


def admin_checks(client, checks):
    topic = f"{PREFIX}-admin"

    def create_topic():
        client.create(topic, 3, {"retention.ms": "86400000", "cleanup.policy": "delete"})
        wait_until(lambda: client.partitions_of(topic) == 3, 10, "3 partitions in metadata")

    def create_topic_kafka_configs():
        configs = {
            "min.insync.replicas": "1",
            "segment.ms": "3600000",
            "unclean.leader.election.enable": "false",
            "max.message.bytes": "2097164",
            "compression.type": "producer",
        }
        client.create(f"{PREFIX}-kafka-configs", 1, configs)
        found = client.topic_configs(f"{PREFIX}-kafka-configs")
        for name, value in configs.items():
            expect(name in found, f"{name} missing from DescribeConfigs")
            expect_equal(found[name]["value"], value, name)

    def describe_configs():
        found = client.topic_configs(topic)
        expect_equal(found["retention.ms"]["value"], "86400000", "retention.ms")
        expect_equal(found["retention.ms"]["config_source"], "DYNAMIC_TOPIC_CONFIG", "retention.ms source")
        expect_equal(found["retention.bytes"]["config_source"], "DEFAULT_CONFIG", "retention.bytes source")

    def alter_configs_incremental():
        configs = {"retention.ms": (AlterConfigOp.SET, "3600000"), "cleanup.policy": (AlterConfigOp.DELETE, None)}
        client.admin.alter_configs([ConfigResource("TOPIC", topic, configs=configs)], incremental=True)
        found = client.topic_configs(topic)
        expect_equal(found["retention.ms"]["value"], "3600000", "retention.ms after SET")
        expect_equal(found["cleanup.policy"]["config_source"], "DEFAULT_CONFIG", "cleanup.policy source after DELETE")

    def alter_configs_legacy():
        resource = ConfigResource("TOPIC", topic, configs={"retention.ms": "7200000"})
        client.admin.alter_configs([resource], incremental=False)
        expect_equal(client.topic_configs(topic)["retention.ms"]["value"], "7200000", "retention.ms after AlterConfigs")

    def create_partitions():
        client.admin.create_partitions({topic: NewPartitions(5)})
        wait_until(lambda: client.partitions_of(topic) == 5, 10, "5 partitions in metadata")

    def delete_records():
        client.produce(topic, make_records("none")[:10], partition=1)
        deleted = client.admin.delete_records({TopicPartition(topic, 1): 4})
        expect_equal(deleted[TopicPartition(topic, 1)]["low_watermark"], 4, "low watermark after delete_records")
        consumer = client.consumer(None)
        try:
            partition = TopicPartition(topic, 1)
            expect_equal(consumer.beginning_offsets([partition])[partition], 4, "earliest offset")
        finally:
            consumer.close()

    def delete_topics():
        client.admin.delete_topics([topic])
        wait_until(lambda: topic not in client.admin.list_topics(), 10, "topic gone from the topic list")

    def describe_log_dirs():
        described = client.admin.describe_log_dirs()
        text = repr(described)
        expect(f"{PREFIX}-kafka-configs" in text or f"{PREFIX}-codec" in text or "log_dir" in text, f"no log dirs: {text[:300]}")

    def describe_topic_partitions():
        described = client.admin.describe_topic_partitions([f"{PREFIX}-kafka-configs"])
        text = repr(described)
        expect(f"{PREFIX}-kafka-configs" in text, f"topic missing: {text[:300]}")

    checks.run("admin.create_topic", create_topic)
    checks.run("admin.create_topic_kafka_configs", create_topic_kafka_configs)
    checks.run("admin.describe_configs", describe_configs)
    checks.run("admin.alter_configs_incremental", alter_configs_incremental)
    checks.run("admin.alter_configs_legacy", alter_configs_legacy)
    checks.run("admin.create_partitions", create_partitions)
    checks.run("admin.delete_records", delete_records)
    checks.run("admin.delete_topics", delete_topics)
    checks.run("admin.describe_log_dirs", describe_log_dirs)
    checks.run("admin.describe_topic_partitions", describe_topic_partitions)


def codec_checks(client, checks):
    for codec in CODECS:
        topic = f"{PREFIX}-codec-{codec}"

        def round_trip(codec=codec, topic=topic):
            records = make_records(codec)
            client.create(topic, 1)
            client.produce(topic, records, codec)
            messages = client.read_partition(topic, 0, len(records))
            found = [(m.key, m.value or b"", list(m.headers)) for m in messages]
            same_records(found, records)

        checks.run(f"produce.{codec}", round_trip)


def group_checks(client, checks):
    topic, group = f"{PREFIX}-group", f"{PREFIX}-classic"

    def classic():
        client.create(topic, 1)
        client.produce(topic, make_records("none")[:GROUP_RECORDS])
        first = client.consumer(group, session_timeout_ms=10000)
        try:
            first.subscribe([topic])
            messages = client.read(first, GROUP_RECORDS)
            expect_equal([m.offset for m in messages], list(range(GROUP_RECORDS)), "offsets consumed")
            first.commit()
            checks.run("admin.list_groups", list_groups)
            checks.run("admin.describe_groups", describe_groups)
        finally:
            first.close()
        client.produce(topic, make_records("none")[:GROUP_RESUMED_RECORDS])
        second = client.consumer(group, session_timeout_ms=10000)
        try:
            second.subscribe([topic])
            messages = client.read(second, GROUP_RESUMED_RECORDS)
            expected = list(range(GROUP_RECORDS, GROUP_RECORDS + GROUP_RESUMED_RECORDS))
            expect_equal([m.offset for m in messages], expected, "offsets after resuming from the commit")
            second.commit()
        finally:
            second.close()

    def list_groups():
        listed = {g["group_id"]: g for g in client.admin.list_groups()}
        expect(group in listed, f"{group} not listed: {sorted(listed)}")
        expect_equal(listed[group]["protocol_type"], "consumer", "protocol type")

    def describe_groups():
        described = client.admin.describe_groups([group])[group]
        expect_equal(described["group_state"], "Stable", "state")
        expect_equal(described["protocol_type"], "consumer", "protocol type")
        expect_equal(len(described["members"]), 1, "members")

    def list_group_offsets():
        expect_equal(client.group_offsets(group, topic), {0: GROUP_RECORDS + GROUP_RESUMED_RECORDS}, "committed")

    def alter_group_offsets():
        client.admin.alter_group_offsets(group, {TopicPartition(topic, 0): OffsetAndMetadata(3, "", -1)})
        expect_equal(client.group_offsets(group, topic), {0: 3}, "committed after alter")

    def delete_group_offsets():
        client.admin.delete_group_offsets(group, [TopicPartition(topic, 0)])
        expect_equal(client.group_offsets(group, topic), {}, "committed after delete")

    def delete_groups():
        client.admin.delete_groups([group])
        expect(group not in [g["group_id"] for g in client.admin.list_groups()], "group listed after delete")

    if checks.run("group.classic", classic):
        checks.run("admin.list_group_offsets", list_group_offsets)
        checks.run("admin.alter_group_offsets", alter_group_offsets)
        checks.run("admin.delete_group_offsets", delete_group_offsets)
        checks.run("admin.delete_groups", delete_groups)
    checks.not_exposed("group.consumer_protocol", "kafka-python has no KIP-848 consumer")


def offsets_for_times_check(client, checks):
    topic = f"{PREFIX}-times"

    def offsets_for_times():
        client.create(topic, 1)
        timestamps = [TIMESTAMP_BASE_MS + i * TIMESTAMP_STEP_MS for i in range(TIMESTAMPED_RECORDS)]
        client.produce(topic, make_records("none")[:TIMESTAMPED_RECORDS], timestamps=timestamps)
        consumer = client.consumer(None)
        try:
            partition = TopicPartition(topic, 0)
            found = []
            for timestamp in (TIMESTAMP_BASE_MS + TIMESTAMP_STEP_MS + 1, TIMESTAMP_BASE_MS, timestamps[-1] + 1):
                answer = consumer.offsets_for_times({partition: timestamp})[partition]
                found.append(None if answer is None else (answer.offset, answer.timestamp))
            expected = [(2, timestamps[2]), (0, timestamps[0]), None]
            expect_equal(found, expected, "(offset, timestamp) for (between 1 and 2, the first, after the last)")
        finally:
            consumer.close()

    checks.run("offsets_for_times", offsets_for_times)


def main():
    bootstrap = sys.argv[1]
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    checks = Checks(f"kafka-python {kafka.__version__}", CHECKS)
    client = Client(bootstrap)
    try:
        admin_checks(client, checks)
        codec_checks(client, checks)
        group_checks(client, checks)
        offsets_for_times_check(client, checks)
    finally:
        checks.finish()


if __name__ == "__main__":
    main()
