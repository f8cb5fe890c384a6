"""A stand-in for Kafka's bin/kafka-topics.sh, for the librdkafka tests that
shell out to it (0045, 0052, 0077: librdkafka's test_kafka_topics()), so
that scripts/librdkafka-suite.sh can run them without a Kafka installation.
It does what those tests ask through the Admin API with confluent-kafka (the
venv of scripts/install-test-clients.sh):

  --bootstrap-server HOST:PORT
  --create --topic NAME [--partitions N] [--replication-factor N] [--config K=V]...
  --alter --topic NAME --partitions N
  --delete --topic NAME

Anything else is refused with exit status 2.
"""

import argparse
import sys

from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic

REQUEST_TIMEOUT_SECONDS = 30


def main():
    parser = argparse.ArgumentParser(prog="kafka-topics.sh (sluice shim)")
    parser.add_argument("--bootstrap-server", required=True)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--create", action="store_true")
    action.add_argument("--alter", action="store_true")
    action.add_argument("--delete", action="store_true")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--partitions", type=int)
    parser.add_argument("--replication-factor", type=int, default=1)
    parser.add_argument("--config", action="append", default=[])
    options = parser.parse_args()

    admin = AdminClient({"bootstrap.servers": options.bootstrap_server})
    if options.create:
        configs = dict(entry.split("=", 1) for entry in options.config)
        topic = NewTopic(options.topic, options.partitions or 1, options.replication_factor, config=configs)
        futures = admin.create_topics([topic])
    elif options.alter:
        if options.partitions is None or options.config:
            parser.error("--alter supports only --partitions")
        futures = admin.create_partitions([NewPartitions(options.topic, options.partitions)])
    else:
        futures = admin.delete_topics([options.topic])
    for future in futures.values():
        future.result(timeout=REQUEST_TIMEOUT_SECONDS)
    print(f"kafka-topics shim: done: {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
