"""confluent-kafka (librdkafka) against sluice: the compatibility checks of
issue 14 (admin, every codec with headers, consumer groups of both
protocols, offsets for times). Prints the report compat_report.py
describes.

Usage: compat_confluent.py BOOTSTRAP
"""

import sys
import time

import confluent_kafka
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewPartitions,
    NewTopic,
    ResourceType,
)

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

PREFIX = "confluent"
REQUEST_TIMEOUT_SECONDS = 15


class Client:
    def __init__(self, bootstrap):
        self.bootstrap = bootstrap
        self.admin = AdminClient({"bootstrap.servers": bootstrap})

    def result(self, futures):
        """Wait for a dict of futures; returns {key: result}."""
        return {key: future.result(timeout=REQUEST_TIMEOUT_SECONDS) for key, future in futures.items()}

    def create(self, topic, partitions, config=None):
        self.result(self.admin.create_topics([NewTopic(topic, partitions, 1, config=config or {})]))

    def partitions_of(self, topic):
        # All topics: a Metadata request naming the topic would create it again.
        metadata = self.admin.list_topics(timeout=REQUEST_TIMEOUT_SECONDS)
        described = metadata.topics.get(topic)
        if described is None or described.error is not None:
            return None
        return len(described.partitions)

    def topic_configs(self, topic):
        resource = ConfigResource(ResourceType.TOPIC, topic)
        return self.result(self.admin.describe_configs([resource]))[resource]

    def produce(self, topic, records, codec="none", partition=0, timestamps=None):
        producer = Producer({"bootstrap.servers": self.bootstrap, "compression.type": codec, "linger.ms": 20})
        failures = []

        def delivered(error, _message):
            if error is not None:
                failures.append(str(error))

        for index, (key, value, headers) in enumerate(records):
            extra = {"timestamp": timestamps[index]} if timestamps else {}
            producer.produce(topic, value=value, key=key, headers=headers, partition=partition, on_delivery=delivered, **extra)
        left = producer.flush(REQUEST_TIMEOUT_SECONDS)
        expect(left == 0 and not failures, f"{left} records undelivered, failures {failures[:3]}")

    def consumer(self, group, **config):
        settings = {
            "bootstrap.servers": self.bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 100,
        }
        settings.update(config)
        return Consumer(settings)

    def read(self, consumer, count, timeout_seconds=20):
        """COUNT messages from CONSUMER, in order."""
        messages = []
        deadline = time.monotonic() + timeout_seconds
        while len(messages) < count:
            expect(time.monotonic() < deadline, f"read {len(messages)} of {count} records in {timeout_seconds} s")
            message = consumer.poll(0.2)
            if message is None:
                continue
            expect(message.error() is None, f"consumer error {message.error()}")
            messages.append(message)
        return messages

    def read_partition(self, topic, partition, count):
        consumer = self.consumer(f"{PREFIX}-reader")
        try:
            consumer.assign([TopicPartition(topic, partition, 0)])
            return self.read(consumer, count)
        finally:
            consumer.close()

    def group_offsets(self, group, topic):
        request = ConsumerGroupTopicPartitions(group)
        listed = self.result(self.admin.list_consumer_group_offsets([request]))[group]
        return {tp.partition: tp.offset for tp in listed.topic_partitions if tp.topic == topic}


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
            expect_equal(found[name].value, value, name)

    def describe_configs():
        found = client.topic_configs(topic)
        expect_equal(found["retention.ms"].value, "86400000", "retention.ms")
        source = found["retention.ms"].source
        expect_equal(getattr(source, "value", source), ConfigSource.DYNAMIC_TOPIC_CONFIG.value, "retention.ms source")
        expect("retention.bytes" in found, "retention.bytes (a default) missing")
        expect(found["retention.bytes"].is_default, "retention.bytes is not marked default")

    def alter_configs_incremental():
        resource = ConfigResource(
            ResourceType.TOPIC,
            topic,
            incremental_configs=[
                ConfigEntry("retention.ms", "3600000", incremental_operation=AlterConfigOpType.SET),
                ConfigEntry("cleanup.policy", None, incremental_operation=AlterConfigOpType.DELETE),
            ],
        )
        client.result(client.admin.incremental_alter_configs([resource]))
        found = client.topic_configs(topic)
        expect_equal(found["retention.ms"].value, "3600000", "retention.ms after SET")
        expect(found["cleanup.policy"].is_default, "cleanup.policy is not back to its default after DELETE")

    def alter_configs_legacy():
        resource = ConfigResource(ResourceType.TOPIC, topic, set_config={"retention.ms": "7200000"})
        client.result(client.admin.alter_configs([resource]))
        expect_equal(client.topic_configs(topic)["retention.ms"].value, "7200000", "retention.ms after AlterConfigs")

    def create_partitions():
        client.result(client.admin.create_partitions([NewPartitions(topic, 5)]))
        wait_until(lambda: client.partitions_of(topic) == 5, 10, "5 partitions in metadata")

    def delete_records():
        records = make_records("none")[:10]
        client.produce(topic, records, partition=1)
        deleted = client.result(client.admin.delete_records([TopicPartition(topic, 1, 4)]))
        low = list(deleted.values())[0].low_watermark
        expect_equal(low, 4, "low watermark after deleting records before offset 4")
        consumer = client.consumer(f"{PREFIX}-watermarks")
        try:
            expect_equal(consumer.get_watermark_offsets(TopicPartition(topic, 1), timeout=10), (4, 10), "watermarks")
        finally:
            consumer.close()

    def delete_topics():
        client.result(client.admin.delete_topics([topic]))
        wait_until(lambda: client.partitions_of(topic) is None, 10, "topic gone from metadata")

    checks.run("admin.create_topic", create_topic)
    checks.run("admin.create_topic_kafka_configs", create_topic_kafka_configs)
    checks.run("admin.describe_configs", describe_configs)
    checks.run("admin.alter_configs_incremental", alter_configs_incremental)
    checks.run("admin.alter_configs_legacy", alter_configs_legacy)
    checks.run("admin.create_partitions", create_partitions)
    checks.run("admin.delete_records", delete_records)
    checks.run("admin.delete_topics", delete_topics)
    checks.not_exposed("admin.describe_log_dirs", "no DescribeLogDirs in confluent-kafka's AdminClient")
    checks.not_exposed("admin.describe_topic_partitions", "describe_topics uses Metadata, not DescribeTopicPartitions")


def codec_checks(client, checks):
    for codec in CODECS:
        topic = f"{PREFIX}-codec-{codec}"

        def round_trip(codec=codec, topic=topic):
            records = make_records(codec)
            client.create(topic, 1)
            client.produce(topic, records, codec)
            messages = client.read_partition(topic, 0, len(records))
            found = [(m.key(), m.value() or b"", m.headers() or []) for m in messages]
            same_records(found, records)

        checks.run(f"produce.{codec}", round_trip)


def group_checks(client, checks):
    topic, group = f"{PREFIX}-group", f"{PREFIX}-classic"

    def classic():
        client.create(topic, 1)
        client.produce(topic, make_records("none")[:GROUP_RECORDS])
        first = client.consumer(group, **{"session.timeout.ms": 10000})
        try:
            first.subscribe([topic])
            messages = client.read(first, GROUP_RECORDS)
            expect_equal([m.offset() for m in messages], list(range(GROUP_RECORDS)), "offsets consumed")
            first.commit(asynchronous=False)
            checks.run("admin.list_groups", list_groups)
            checks.run("admin.describe_groups", describe_groups)
        finally:
            first.close()
        client.produce(topic, make_records("none")[:GROUP_RESUMED_RECORDS])
        second = client.consumer(group, **{"session.timeout.ms": 10000})
        try:
            second.subscribe([topic])
            messages = client.read(second, GROUP_RESUMED_RECORDS)
            expected = list(range(GROUP_RECORDS, GROUP_RECORDS + GROUP_RESUMED_RECORDS))
            expect_equal([m.offset() for m in messages], expected, "offsets after resuming from the commit")
            second.commit(asynchronous=False)
        finally:
            second.close()

    def list_groups():
        listed = client.admin.list_consumer_groups().result(timeout=REQUEST_TIMEOUT_SECONDS)
        ours = [g for g in listed.valid if g.group_id == group]
        expect(ours, f"{group} not listed: {[g.group_id for g in listed.valid]}")
        expect(not ours[0].is_simple_consumer_group, "listed as a simple group (protocol type not consumer)")

    def describe_groups():
        described = client.result(client.admin.describe_consumer_groups([group]))[group]
        expect_equal(described.state.name, "STABLE", "state")
        expect_equal(len(described.members), 1, "members")
        assigned = described.members[0].assignment.topic_partitions
        expect_equal([(tp.topic, tp.partition) for tp in assigned], [(topic, 0)], "assignment")

    def list_group_offsets():
        expect_equal(client.group_offsets(group, topic), {0: GROUP_RECORDS + GROUP_RESUMED_RECORDS}, "committed")

    def alter_group_offsets():
        request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0, 3)])
        client.result(client.admin.alter_consumer_group_offsets([request]))
        expect_equal(client.group_offsets(group, topic), {0: 3}, "committed after alter")

    def delete_groups():
        client.result(client.admin.delete_consumer_groups([group]))
        listed = client.admin.list_consumer_groups().result(timeout=REQUEST_TIMEOUT_SECONDS)
        expect(group not in [g.group_id for g in listed.valid], "group still listed after delete")

    def consumer_protocol():
        topic848, group848 = f"{PREFIX}-kip848", f"{PREFIX}-kip848"
        client.create(topic848, 2)
        client.produce(topic848, make_records("none")[:GROUP_RECORDS], partition=0)
        consumer = client.consumer(group848, **{"group.protocol": "consumer"})
        try:
            consumer.subscribe([topic848])
            messages = client.read(consumer, GROUP_RECORDS)
            expect_equal([m.offset() for m in messages], list(range(GROUP_RECORDS)), "offsets consumed")
            consumer.commit(asynchronous=False)
            expect_equal(client.group_offsets(group848, topic848).get(0), GROUP_RECORDS, "committed")
        finally:
            consumer.close()

    if checks.run("group.classic", classic):
        checks.run("admin.list_group_offsets", list_group_offsets)
        checks.run("admin.alter_group_offsets", alter_group_offsets)
        checks.not_exposed("admin.delete_group_offsets", "no OffsetDelete in confluent-kafka's AdminClient")
        checks.run("admin.delete_groups", delete_groups)
    checks.run("group.consumer_protocol", consumer_protocol)


def offsets_for_times_check(client, checks):
    topic = f"{PREFIX}-times"

    def offsets_for_times():
        client.create(topic, 1)
        timestamps = [TIMESTAMP_BASE_MS + i * TIMESTAMP_STEP_MS for i in range(TIMESTAMPED_RECORDS)]
        client.produce(topic, make_records("none")[:TIMESTAMPED_RECORDS], timestamps=timestamps)
        consumer = client.consumer(f"{PREFIX}-times")
        try:
            asked = [
                TopicPartition(topic, 0, TIMESTAMP_BASE_MS + TIMESTAMP_STEP_MS + 1),
                TopicPartition(topic, 0, TIMESTAMP_BASE_MS),
                TopicPartition(topic, 0, timestamps[-1] + 1),
            ]
            found = [consumer.offsets_for_times([tp], timeout=10)[0].offset for tp in asked]
            # Past the last record Kafka answers offset -1 (librdkafka's OFFSET_END).
            expect_equal(found, [2, 0, -1], "offsets for (between 1 and 2, the first, after the last)")
        finally:
            consumer.close()

    checks.run("offsets_for_times", offsets_for_times)


def main():
    bootstrap = sys.argv[1]
    name = f"confluent-kafka {confluent_kafka.__version__} (librdkafka {confluent_kafka.libversion()[0]})"
    checks = Checks(name, CHECKS)
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
