"""aiokafka against sluice: the compatibility checks of issue 14 (admin,
every codec with headers, consumer groups, offsets for times). Prints the
report compat_report.py describes. aiokafka's admin client answers with the
raw protocol responses; it has no IncrementalAlterConfigs, no group-offset
or group deletion admin calls, and no KIP-848 consumer.

Usage: compat_aiokafka.py BOOTSTRAP
"""

import asyncio
import logging
import sys
import time

import aiokafka
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.admin.records_to_delete import RecordsToDelete

from compat_report import (
    CHECKS,
    CODECS,
    GROUP_RECORDS,
    GROUP_RESUMED_RECORDS,
    TIMESTAMP_BASE_MS,
    TIMESTAMP_STEP_MS,
    TIMESTAMPED_RECORDS,
    CheckFailed,
    Checks,
    expect,
    expect_equal,
    make_records,
    same_records,
)

PREFIX = "aiokafka"
REQUEST_TIMEOUT_MS = 15000
READ_TIMEOUT_SECONDS = 20
# DescribeConfigs' config_source for a topic override and for a default.
DYNAMIC_TOPIC_CONFIG = 1
DEFAULT_CONFIG = 5


class AsyncChecks:
    """Checks whose bodies are coroutines, run on one event loop."""

    def __init__(self, checks):
        self.checks = checks

    async def run(self, name, check, *args):
        started = time.monotonic()
        try:
            await check(*args)
        except Exception as error:  # noqa: BLE001 - every failure is reported
            self.checks.emit(name, "fail", f"{type(error).__name__}: {error}", time.monotonic() - started)
            return False
        self.checks.emit(name, "pass", "", time.monotonic() - started)
        return True

    def not_exposed(self, name, why):
        self.checks.not_exposed(name, why)


class Client:
    def __init__(self, bootstrap):
        self.bootstrap = bootstrap
        self.admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=REQUEST_TIMEOUT_MS)

    async def create(self, topic, partitions, configs=None):
        response = await self.admin.create_topics([NewTopic(topic, partitions, 1, topic_configs=configs or {})])
        for error in response.topic_errors:
            name, code = error[0], error[1]
            message = error[2] if len(error) > 2 else ""
            expect(code == 0, f"CreateTopics {name}: error {code} {message}")

    async def partitions_of(self, topic):
        for described in await self.admin.describe_topics():
            if described["topic"] == topic and described["error_code"] == 0:
                return len(described["partitions"])
        return None

    async def wait_partitions(self, topic, count, timeout_seconds=10):
        deadline = time.monotonic() + timeout_seconds
        while await self.partitions_of(topic) != count:
            expect(time.monotonic() < deadline, f"{count} partitions of {topic} not in metadata")
            await asyncio.sleep(0.2)

    async def topic_configs(self, topic):
        responses = await self.admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        found = {}
        for response in responses:
            for resource in response.to_object()["resources"]:
                expect(resource["error_code"] == 0, f"DescribeConfigs {topic}: {resource}")
                for entry in resource["config_entries"]:
                    found[entry["config_names"]] = entry
        return found

    async def produce(self, topic, records, codec="none", partition=0, timestamps=None):
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, compression_type=None if codec == "none" else codec, linger_ms=20
        )
        await producer.start()
        try:
            sent = []
            for index, (key, value, headers) in enumerate(records):
                timestamp = timestamps[index] if timestamps else None
                sent.append(
                    await producer.send(
                        topic, value=value, key=key, headers=headers, partition=partition, timestamp_ms=timestamp
                    )
                )
            for future in sent:
                await asyncio.wait_for(future, REQUEST_TIMEOUT_MS / 1000)
        finally:
            await producer.stop()

    def consumer(self, group, *topics, **config):
        return AIOKafkaConsumer(
            *topics,
            bootstrap_servers=self.bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            fetch_max_wait_ms=100,
            **config,
        )

    async def read(self, consumer, count):
        messages = []
        deadline = time.monotonic() + READ_TIMEOUT_SECONDS
        while len(messages) < count:
            expect(time.monotonic() < deadline, f"read {len(messages)} of {count} records in {READ_TIMEOUT_SECONDS} s")
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                messages.extend(batch)
        return messages

    async def read_partition(self, topic, partition, count):
        consumer = self.consumer(None)
        await consumer.start()
        try:
            consumer.assign([TopicPartition(topic, partition)])
            consumer.seek(TopicPartition(topic, partition), 0)
            return await self.read(consumer, count)
        finally:
            await consumer.stop()

    async def group_offsets(self, group, topic):
        listed = await self.admin.list_consumer_group_offsets(group)
        return {tp.partition: meta.offset for tp, meta in listed.items() if tp.topic == topic}


async def admin_checks(client, checks):
    topic = f"{PREFIX}-admin"

    async def create_topic():
        await client.create(topic, 3, {"retention.ms": "86400000", "cleanup.policy": "delete"})
        await client.wait_partitions(topic, 3)

    async def create_topic_kafka_configs():
        configs = {
            "min.insync.replicas": "1",
            "segment.ms": "3600000",
            "unclean.leader.election.enable": "false",
            "max.message.bytes": "2097164",
            "compression.type": "producer",
        }
        await client.create(f"{PREFIX}-kafka-configs", 1, configs)
        found = await client.topic_configs(f"{PREFIX}-kafka-configs")
        for name, value in configs.items():
            expect(name in found, f"{name} missing from DescribeConfigs")
            expect_equal(found[name]["config_value"], value, name)

    async def describe_configs():
        found = await client.topic_configs(topic)
        expect_equal(found["retention.ms"]["config_value"], "86400000", "retention.ms")
        expect_equal(found["retention.ms"]["config_source"], DYNAMIC_TOPIC_CONFIG, "retention.ms source")
        expect_equal(found["retention.bytes"]["config_source"], DEFAULT_CONFIG, "retention.bytes source")

    async def alter_configs_legacy():
        resource = ConfigResource(ConfigResourceType.TOPIC, topic, configs={"retention.ms": "7200000"})
        for response in await client.admin.alter_configs([resource]):
            for resource_answer in response.to_object()["resources"]:
                expect(resource_answer["error_code"] == 0, f"AlterConfigs: {resource_answer}")
        found = await client.topic_configs(topic)
        expect_equal(found["retention.ms"]["config_value"], "7200000", "retention.ms after AlterConfigs")

    async def create_partitions():
        await client.admin.create_partitions({topic: NewPartitions(5)})
        await client.wait_partitions(topic, 5)

    async def delete_records():
        await client.produce(topic, make_records("none")[:10], partition=1)
        partition = TopicPartition(topic, 1)
        deleted = await client.admin.delete_records({partition: RecordsToDelete(before_offset=4)})
        expect_equal(deleted[partition], 4, "low watermark after delete_records")
        consumer = client.consumer(None)
        await consumer.start()
        try:
            expect_equal((await consumer.beginning_offsets([partition]))[partition], 4, "earliest offset")
        finally:
            await consumer.stop()

    async def delete_topics():
        response = await client.admin.delete_topics([topic])
        for name, code, *_ in response.topic_error_codes:
            expect(code == 0, f"DeleteTopics {name}: error {code}")
        deadline = time.monotonic() + 10
        while topic in await client.admin.list_topics():
            expect(time.monotonic() < deadline, "topic still listed 10 s after delete")
            await asyncio.sleep(0.2)

    await checks.run("admin.create_topic", create_topic)
    await checks.run("admin.create_topic_kafka_configs", create_topic_kafka_configs)
    await checks.run("admin.describe_configs", describe_configs)
    checks.not_exposed("admin.alter_configs_incremental", "no IncrementalAlterConfigs in aiokafka's admin client")
    await checks.run("admin.alter_configs_legacy", alter_configs_legacy)
    await checks.run("admin.create_partitions", create_partitions)
    await checks.run("admin.delete_records", delete_records)
    await checks.run("admin.delete_topics", delete_topics)
    checks.not_exposed("admin.describe_log_dirs", "no DescribeLogDirs in aiokafka's admin client")
    checks.not_exposed("admin.describe_topic_partitions", "describe_topics uses Metadata")


async def codec_checks(client, checks):
    for codec in CODECS:

        async def round_trip(codec=codec, topic=f"{PREFIX}-codec-{codec}"):
            records = make_records(codec)
            await client.create(topic, 1)
            await client.produce(topic, records, codec)
            messages = await client.read_partition(topic, 0, len(records))
            found = [(m.key, m.value or b"", list(m.headers)) for m in messages]
            same_records(found, records)

        await checks.run(f"produce.{codec}", round_trip)


async def group_checks(client, checks):
    topic, group = f"{PREFIX}-group", f"{PREFIX}-classic"

    async def classic():
        await client.create(topic, 1)
        await client.produce(topic, make_records("none")[:GROUP_RECORDS])
        first = client.consumer(group, topic, session_timeout_ms=10000)
        await first.start()
        try:
            messages = await client.read(first, GROUP_RECORDS)
            expect_equal([m.offset for m in messages], list(range(GROUP_RECORDS)), "offsets consumed")
            await first.commit()
            await checks.run("admin.list_groups", list_groups)
            await checks.run("admin.describe_groups", describe_groups)
        finally:
            await first.stop()
        await client.produce(topic, make_records("none")[:GROUP_RESUMED_RECORDS])
        second = client.consumer(group, topic, session_timeout_ms=10000)
        await second.start()
        try:
            messages = await client.read(second, GROUP_RESUMED_RECORDS)
            expected = list(range(GROUP_RECORDS, GROUP_RECORDS + GROUP_RESUMED_RECORDS))
            expect_equal([m.offset for m in messages], expected, "offsets after resuming from the commit")
            await second.commit()
        finally:
            await second.stop()

    async def list_groups():
        listed = dict(await client.admin.list_consumer_groups())
        expect(group in listed, f"{group} not listed: {sorted(listed)}")
        expect_equal(listed[group], "consumer", "protocol type")

    async def describe_groups():
        responses = await client.admin.describe_consumer_groups([group])
        described = [g for r in responses for g in r.to_object()["groups"] if g["group"] == group]
        expect(described, f"{group} not described")
        expect_equal(described[0]["error_code"], 0, "error code")
        expect_equal(described[0]["state"], "Stable", "state")
        expect_equal(described[0]["protocol_type"], "consumer", "protocol type")
        expect_equal(len(described[0]["members"]), 1, "members")

    async def list_group_offsets():
        committed = await client.group_offsets(group, topic)
        expect_equal(committed, {0: GROUP_RECORDS + GROUP_RESUMED_RECORDS}, "committed")

    if await checks.run("group.classic", classic):
        await checks.run("admin.list_group_offsets", list_group_offsets)
    checks.not_exposed("admin.alter_group_offsets", "no alter-offsets call in aiokafka's admin client")
    checks.not_exposed("admin.delete_group_offsets", "no OffsetDelete in aiokafka's admin client")
    checks.not_exposed("admin.delete_groups", "no DeleteGroups in aiokafka's admin client")
    checks.not_exposed("group.consumer_protocol", "aiokafka has no KIP-848 consumer")


async def offsets_for_times_check(client, checks):
    topic = f"{PREFIX}-times"

    async def offsets_for_times():
        await client.create(topic, 1)
        timestamps = [TIMESTAMP_BASE_MS + i * TIMESTAMP_STEP_MS for i in range(TIMESTAMPED_RECORDS)]
        await client.produce(topic, make_records("none")[:TIMESTAMPED_RECORDS], timestamps=timestamps)
        consumer = client.consumer(None)
        await consumer.start()
        try:
            partition = TopicPartition(topic, 0)
            found = []
            for timestamp in (TIMESTAMP_BASE_MS + TIMESTAMP_STEP_MS + 1, TIMESTAMP_BASE_MS, timestamps[-1] + 1):
                answer = (await consumer.offsets_for_times({partition: timestamp}))[partition]
                found.append(None if answer is None else (answer.offset, answer.timestamp))
            expected = [(2, timestamps[2]), (0, timestamps[0]), None]
            expect_equal(found, expected, "(offset, timestamp) for (between 1 and 2, the first, after the last)")
        finally:
            await consumer.stop()

    await checks.run("offsets_for_times", offsets_for_times)


async def run_all(bootstrap, checks):
    client = Client(bootstrap)  # aiokafka's clients must be made on the running loop
    await client.admin.start()
    try:
        await admin_checks(client, checks)
        await codec_checks(client, checks)
        await group_checks(client, checks)
        await offsets_for_times_check(client, checks)
    finally:
        await client.admin.close()


def main():
    bootstrap = sys.argv[1]
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    checks = Checks(f"aiokafka {aiokafka.__version__}", CHECKS)
    try:
        asyncio.run(run_all(bootstrap, AsyncChecks(checks)))
    except CheckFailed:
        pass
    finally:
        checks.finish()


if __name__ == "__main__":
    main()
