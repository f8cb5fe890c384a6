"""ACL admin clients against a sluice SASL_PLAINTEXT listener (SCRAM-SHA-512).

Both modes take BOOTSTRAP ADMIN_USER ADMIN_PASSWORD USER PREFIX [PASSWORD];
ADMIN_USER is a super user, USER an ordinary one, and every request but the
last is made as ADMIN_USER:

1. create_acls with two ACLs: User:USER, host *, ALLOW READ on TOPIC PREFIX
   PREFIXED, and User:USER, host *, ALLOW DESCRIBE on GROUP PREFIX-group
   LITERAL;
2. describe_acls with a filter on principal User:USER, everything else ANY;
3. delete_acls with one filter: TOPIC PREFIX PREFIXED, principal User:USER,
   host, operation and permission ANY (it matches the TOPIC ACL only);
4. describe_acls again, same filter as 2;
5. only when PASSWORD is given: as USER, create_acls itself (User:USER,
   host *, ALLOW WRITE on TOPIC PREFIX-refused LITERAL), which the broker is
   expected to refuse with CLUSTER_AUTHORIZATION_FAILED.

Modes (argv[1]):

- kafka_python BOOTSTRAP ADMIN_USER ADMIN_PASSWORD USER PREFIX [PASSWORD]:
  kafka-python's KafkaAdminClient (it sends the ACL APIs at v1 to v3, the
  highest the broker offers, to the least loaded broker; describe_acls
  raises the broker's error, create_acls returns it per ACL).
- confluent BOOTSTRAP ADMIN_USER ADMIN_PASSWORD USER PREFIX [PASSWORD]:
  confluent-kafka's AdminClient (librdkafka 2.16 sends the ACL APIs at v0
  to v2, the highest the broker offers, to the broker Metadata names
  controller), one future per ACL or filter.

Prints one JSON line:
  {"client": "...",
   "create": {"succeeded": n, "failed": [error names]},
   "described": [[resource_type, name, pattern_type, principal, host,
                  operation, permission], ...],
   "deleted": n,
   "described_after": [...],
   "refused": error name, null when the broker accepted, or "not run",
   "error": null or "Type: message"}
with enum names ("TOPIC", "GROUP", "PREFIXED", "LITERAL", "READ", "ALLOW";
librdkafka names the cluster resource "BROKER"), lists sorted. Error names:
kafka-python's error class (e.g. "ClusterAuthorizationFailedError"),
librdkafka's error name (e.g. "CLUSTER_AUTHORIZATION_FAILED"). A failure
stops the flow there: the fields not reached keep their initial values
(create null, lists null, deleted null, refused "not run") and "error" says
why. Exits 0 after printing; 1, printing nothing, on wrong arguments.
"""

import json
import logging
import sys

WAIT_SECONDS = 30
# How long a confluent future is waited on: past request_timeout (WAIT_SECONDS),
# so that librdkafka's own _TIMED_OUT is what a silent broker yields.
RESULT_SECONDS = WAIT_SECONDS + 5


def row(resource_type, name, pattern_type, principal, host, operation, permission):
    return [resource_type, name, pattern_type, principal, host, operation, permission]


def new_report(client):
    return {
        "client": client,
        "create": None,
        "described": None,
        "deleted": None,
        "described_after": None,
        "refused": "not run",
        "error": None,
    }


def describe_error(error):
    return f"{type(error).__name__}: {str(error) or repr(error)}"


# --- kafka-python -----------------------------------------------------------


def kafka_python_admin(bootstrap, user, password):
    from kafka import KafkaAdminClient

    return KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="sluice-acls",
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username=user,
        sasl_plain_password=password,
        request_timeout_ms=15_000,
        bootstrap_timeout_ms=15_000,
    )


def kafka_python_name(error):
    """kafka-python reports a broker error as its class or an instance."""
    return error.__name__ if isinstance(error, type) else type(error).__name__


def kafka_python_rows(acls):
    return sorted(
        row(
            acl.resource_pattern.resource_type.name,
            acl.resource_pattern.resource_name,
            acl.resource_pattern.pattern_type.name,
            acl.principal,
            acl.host,
            acl.operation.name,
            acl.permission_type.name,
        )
        for acl in acls
    )


def kafka_python(bootstrap, admin_user, admin_password, user, prefix, password=None):
    import kafka
    import kafka.errors
    from kafka.admin import (
        ACL,
        ACLFilter,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        ResourcePattern,
        ResourcePatternFilter,
        ResourceType,
    )

    report = new_report(f"kafka-python {kafka.__version__}")
    principal = f"User:{user}"
    admin = None
    try:
        admin = kafka_python_admin(bootstrap, admin_user, admin_password)
        acls = [
            ACL(
                principal, "*", ACLOperation.READ, ACLPermissionType.ALLOW,
                ResourcePattern(ResourceType.TOPIC, prefix, ACLResourcePatternType.PREFIXED),
            ),
            ACL(
                principal, "*", ACLOperation.DESCRIBE, ACLPermissionType.ALLOW,
                ResourcePattern(ResourceType.GROUP, f"{prefix}-group", ACLResourcePatternType.LITERAL),
            ),
        ]
        created = admin.create_acls(acls)
        report["create"] = {
            "succeeded": len(created["succeeded"]),
            "failed": [kafka_python_name(error) for error in created["failed"]],
        }

        by_principal = ACLFilter(
            principal, None, ACLOperation.ANY, ACLPermissionType.ANY,
            ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY),
        )
        described, _ = admin.describe_acls(by_principal)
        report["described"] = kafka_python_rows(described)

        topic_filter = ACLFilter(
            principal, None, ACLOperation.ANY, ACLPermissionType.ANY,
            ResourcePatternFilter(ResourceType.TOPIC, prefix, ACLResourcePatternType.PREFIXED),
        )
        deleted = 0
        for _, matching, error in admin.delete_acls([topic_filter]):
            if error is not kafka.errors.NoError:
                raise error(f"delete_acls filter failed: {kafka_python_name(error)}")
            deleted += len(matching)
        report["deleted"] = deleted

        described, _ = admin.describe_acls(by_principal)
        report["described_after"] = kafka_python_rows(described)

        if password is not None:
            report["refused"] = kafka_python_refused(bootstrap, user, password, prefix)
    except Exception as error:  # noqa: BLE001 - every failure goes into the report
        report["error"] = describe_error(error)
    finally:
        if admin is not None:
            try:
                admin.close()
            except Exception:  # noqa: BLE001
                pass
    return report


def kafka_python_refused(bootstrap, user, password, prefix):
    """USER's own create_acls: the failing error's name, None if accepted."""
    from kafka.admin import ACL, ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourcePattern, ResourceType

    admin = kafka_python_admin(bootstrap, user, password)
    try:
        acl = ACL(
            f"User:{user}", "*", ACLOperation.WRITE, ACLPermissionType.ALLOW,
            ResourcePattern(ResourceType.TOPIC, f"{prefix}-refused", ACLResourcePatternType.LITERAL),
        )
        try:
            created = admin.create_acls([acl])
        except Exception as error:  # noqa: BLE001 - a raised refusal counts too
            return kafka_python_name(error)
        if created["failed"]:
            return kafka_python_name(created["failed"][0])
        return None
    finally:
        admin.close()


# --- confluent-kafka --------------------------------------------------------


def confluent_admin(bootstrap, user, password):
    from confluent_kafka.admin import AdminClient

    return AdminClient({
        "bootstrap.servers": bootstrap,
        "client.id": "sluice-acls",
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": user,
        "sasl.password": password,
    })


def confluent_name(error):
    """librdkafka's error name for a KafkaException, else the exception type."""
    from confluent_kafka import KafkaError, KafkaException

    if isinstance(error, KafkaException) and error.args and isinstance(error.args[0], KafkaError):
        return error.args[0].name()
    return type(error).__name__


def confluent_rows(bindings):
    return sorted(
        row(
            binding.restype.name,
            binding.name,
            binding.resource_pattern_type.name,
            binding.principal,
            binding.host,
            binding.operation.name,
            binding.permission_type.name,
        )
        for binding in bindings
    )


def confluent(bootstrap, admin_user, admin_password, user, prefix, password=None):
    import confluent_kafka
    from confluent_kafka.admin import (
        AclBinding,
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    # version() is the Python package's version string, libversion() a
    # (string, int) pair for librdkafka.
    report = new_report(
        f"confluent-kafka {confluent_kafka.version()} (librdkafka {confluent_kafka.libversion()[0]})"
    )
    principal = f"User:{user}"
    try:
        admin = confluent_admin(bootstrap, admin_user, admin_password)
        acls = [
            AclBinding(
                ResourceType.TOPIC, prefix, ResourcePatternType.PREFIXED,
                principal, "*", AclOperation.READ, AclPermissionType.ALLOW,
            ),
            AclBinding(
                ResourceType.GROUP, f"{prefix}-group", ResourcePatternType.LITERAL,
                principal, "*", AclOperation.DESCRIBE, AclPermissionType.ALLOW,
            ),
        ]
        succeeded, failed = 0, []
        for future in admin.create_acls(acls, request_timeout=WAIT_SECONDS).values():
            try:
                future.result(timeout=RESULT_SECONDS)
                succeeded += 1
            except Exception as error:  # noqa: BLE001 - each ACL's own outcome
                failed.append(confluent_name(error))
        report["create"] = {"succeeded": succeeded, "failed": failed}

        by_principal = AclBindingFilter(
            ResourceType.ANY, None, ResourcePatternType.ANY,
            principal, None, AclOperation.ANY, AclPermissionType.ANY,
        )
        described = admin.describe_acls(by_principal, request_timeout=WAIT_SECONDS)
        report["described"] = confluent_rows(described.result(timeout=RESULT_SECONDS))

        topic_filter = AclBindingFilter(
            ResourceType.TOPIC, prefix, ResourcePatternType.PREFIXED,
            principal, None, AclOperation.ANY, AclPermissionType.ANY,
        )
        deleted = 0
        for future in admin.delete_acls([topic_filter], request_timeout=WAIT_SECONDS).values():
            deleted += len(future.result(timeout=RESULT_SECONDS))
        report["deleted"] = deleted

        described = admin.describe_acls(by_principal, request_timeout=WAIT_SECONDS)
        report["described_after"] = confluent_rows(described.result(timeout=RESULT_SECONDS))

        if password is not None:
            report["refused"] = confluent_refused(bootstrap, user, password, prefix)
    except Exception as error:  # noqa: BLE001 - every failure goes into the report
        report["error"] = describe_error(error)
    return report


def confluent_refused(bootstrap, user, password, prefix):
    """USER's own create_acls: the failing error's name, None if accepted."""
    from confluent_kafka.admin import AclBinding, AclOperation, AclPermissionType, ResourcePatternType, ResourceType

    admin = confluent_admin(bootstrap, user, password)
    acl = AclBinding(
        ResourceType.TOPIC, f"{prefix}-refused", ResourcePatternType.LITERAL,
        f"User:{user}", "*", AclOperation.WRITE, AclPermissionType.ALLOW,
    )
    future = admin.create_acls([acl], request_timeout=WAIT_SECONDS)[acl]
    try:
        future.result(timeout=RESULT_SECONDS)
    except Exception as error:  # noqa: BLE001 - the refusal is the expected outcome
        return confluent_name(error)
    return None


MODES = {"kafka_python": kafka_python, "confluent": confluent}


def main():
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if len(sys.argv) < 2 or sys.argv[1] not in MODES or len(sys.argv) not in (7, 8):
        raise SystemExit(
            "usage: acl_clients.py {kafka_python|confluent} "
            "BOOTSTRAP ADMIN_USER ADMIN_PASSWORD USER PREFIX [PASSWORD]"
        )
    report = MODES[sys.argv[1]](*sys.argv[2:])
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
