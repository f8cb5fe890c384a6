"""SASL clients against a sluice SASL_PLAINTEXT listener (issue 20), or a
SASL_SSL one when the environment variable SLUICE_TEST_TLS_CA names the CA
certificate (PEM) the broker's certificate chains to.

Modes (argv[1]):

- roundtrip BOOTSTRAP MECHANISM USER PASSWORD TOPIC COUNT: confluent-kafka
  (librdkafka) and kafka-python each produce COUNT records to TOPIC
  authenticated as USER with MECHANISM, then each consumes all of them from
  the start. Prints {"confluent": {...}, "kafka_python": {...}} with the
  values each acked and each read back, and any error.
- admin BOOTSTRAP ADMIN_USER ADMIN_PASSWORD NEW_USER NEW_PASSWORD: as the
  admin (SCRAM-SHA-512), confluent-kafka's AdminClient creates NEW_USER with
  SCRAM-SHA-256 and SCRAM-SHA-512 credentials (KIP-554, the client salts
  and hashes), then describes it. Prints {"described": [[mechanism,
  iterations]...], "error": ...}.
- login BOOTSTRAP MECHANISM USER PASSWORD: confluent-kafka lists topics
  authenticated as USER; prints {"ok": bool, "error": ...}.
"""

import json
import logging
import os
import sys
import uuid

WAIT_SECONDS = 30
TLS_CA = os.environ.get("SLUICE_TEST_TLS_CA")


def confluent_config(bootstrap, mechanism, user, password):
    config = {
        "bootstrap.servers": bootstrap,
        "security.protocol": "SASL_SSL" if TLS_CA else "SASL_PLAINTEXT",
        "sasl.mechanisms": mechanism,
        "sasl.username": user,
        "sasl.password": password,
    }
    if TLS_CA:
        config["ssl.ca.location"] = TLS_CA
    return config


def confluent_roundtrip(bootstrap, mechanism, user, password, topic, count):
    from confluent_kafka import Consumer, Producer

    result = {"acked": [], "read": [], "error": None}
    errors = []
    config = confluent_config(bootstrap, mechanism, user, password)
    config["error_cb"] = lambda error: errors.append(str(error))
    producer = Producer(config)

    def delivered(error, message):
        if error is None:
            result["acked"].append(message.value().decode())

    for index in range(count):
        producer.produce(topic, value=f"confluent-{index}".encode(), on_delivery=delivered)
    producer.flush(WAIT_SECONDS)
    consumer_config = confluent_config(bootstrap, mechanism, user, password)
    consumer_config.update({"group.id": f"sasl-{uuid.uuid4()}", "auto.offset.reset": "earliest"})
    consumer = Consumer(consumer_config)
    consumer.subscribe([topic])
    misses = 0
    while misses < 10:
        message = consumer.poll(1.0)
        if message is None:
            misses += 1
            continue
        if message.error() is None:
            result["read"].append(message.value().decode())
            misses = 0
    consumer.close()
    if errors and not result["acked"]:
        result["error"] = "; ".join(errors[:3])
    return result


def kafka_python_roundtrip(bootstrap, mechanism, user, password, topic, count):
    from kafka import KafkaConsumer, KafkaProducer

    result = {"acked": [], "read": [], "error": None}
    security = {
        "bootstrap_servers": bootstrap,
        "security_protocol": "SASL_SSL" if TLS_CA else "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": user,
        "sasl_plain_password": password,
    }
    if TLS_CA:
        security["ssl_cafile"] = TLS_CA
    producer = KafkaProducer(**security)
    futures = [
        (f"kafka-python-{index}", producer.send(topic, value=f"kafka-python-{index}".encode()))
        for index in range(count)
    ]
    producer.flush(timeout=WAIT_SECONDS)
    for value, future in futures:
        future.get(timeout=WAIT_SECONDS)
        result["acked"].append(value)
    producer.close(timeout=5)
    consumer = KafkaConsumer(
        topic,
        group_id=f"sasl-{uuid.uuid4()}",
        auto_offset_reset="earliest",
        consumer_timeout_ms=10_000,
        **security,
    )
    for message in consumer:
        result["read"].append(message.value.decode())
    consumer.close()
    return result


def guarded(run, *args):
    try:
        return run(*args)
    except Exception as error:  # noqa: BLE001 - every failure goes into the report
        return {"acked": [], "read": [], "error": f"{type(error).__name__}: {error}"}


def admin(bootstrap, admin_user, admin_password, new_user, new_password):
    from confluent_kafka.admin import (
        AdminClient,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    report = {"described": [], "error": None}
    try:
        client = AdminClient(confluent_config(bootstrap, "SCRAM-SHA-512", admin_user, admin_password))
        upsertions = [
            UserScramCredentialUpsertion(
                new_user, ScramCredentialInfo(mechanism, 8192), new_password.encode()
            )
            for mechanism in (ScramMechanism.SCRAM_SHA_256, ScramMechanism.SCRAM_SHA_512)
        ]
        for future in client.alter_user_scram_credentials(upsertions).values():
            future.result(WAIT_SECONDS)
        described = client.describe_user_scram_credentials([new_user])
        for description in described[new_user].result(WAIT_SECONDS).scram_credential_infos:
            report["described"].append([description.mechanism.name, description.iterations])
    except Exception as error:  # noqa: BLE001
        report["error"] = f"{type(error).__name__}: {error}"
    return report


def login(bootstrap, mechanism, user, password):
    from confluent_kafka.admin import AdminClient

    errors = []
    config = confluent_config(bootstrap, mechanism, user, password)
    config["error_cb"] = lambda error: errors.append(str(error))
    try:
        AdminClient(config).list_topics(timeout=10)
        return {"ok": True, "error": None}
    except Exception as error:  # noqa: BLE001
        return {"ok": False, "error": f"{type(error).__name__}: {error}; {errors[:2]}"}


def main():
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "roundtrip":
        bootstrap, mechanism, user, password, topic, count = args
        count = int(count)
        report = {
            "confluent": guarded(
                confluent_roundtrip, bootstrap, mechanism, user, password, topic + "-confluent", count
            ),
            "kafka_python": guarded(
                kafka_python_roundtrip, bootstrap, mechanism, user, password, topic + "-kp", count
            ),
        }
    elif mode == "admin":
        report = admin(*args)
    elif mode == "login":
        report = login(*args)
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
