"""kafka-python's admin config calls against sluice (issue 14).

Creates TOPIC with retention.ms, alters it with the legacy AlterConfigs
(alter_configs(incremental=False): kafka-python first re-adds the overrides
DescribeConfigs reports as modified, since the legacy call replaces them
all), and describes it. Prints one JSON report on stdout:
topic {name: [value, source]}, error.

Usage: python kafka_python_configs.py BOOTSTRAP TOPIC
"""

import json
import sys

import kafka
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic


def run(bootstrap, topic, report):
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="sluice-tests")
    try:
        admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"retention.ms": "3600000"})])
        result = admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, configs={"segment.ms": "600000"})],
            incremental=False,
        )
        outcome = result["topic"][topic]
        if outcome != "OK":
            raise RuntimeError(f"alter_configs: {outcome}")
        described = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all")
        for name, entry in described["topic"][topic].items():
            report["topic"][name] = [entry.get("value"), entry["config_source"]]
    finally:
        admin.close()


def main():
    bootstrap, topic = sys.argv[1:3]
    report = {"client": f"kafka-python {kafka.__version__}", "topic": {}, "error": None}
    try:
        run(bootstrap, topic, report)
    except Exception as error:  # the report carries it to the test
        report["error"] = repr(error)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
