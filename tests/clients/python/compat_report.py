"""The report of the compatibility scripts (issue 14), shared by the Python
compat_*.py scripts in this directory; tests/integration/compat_clients.rs
parses it and tests/clients/node/compat_report.js writes the same lines.

One JSON line on stdout per check, as soon as it ends:
  {"check": NAME, "outcome": "pass" | "fail" | "not_exposed", "detail": TEXT,
   "seconds": FLOAT}
"not_exposed" means the client has no API for what the check covers (the
detail says what is missing; a detail starting "runtime:" means the client
has it but not on the runtime installed here, and the README table says so). Every check the script declares is reported
once: a declared check that never ran (an earlier step it depends on failed)
is reported as "fail" by finish(). The last line is
  {"client": "<library> <version>", "done": true}

The same data and the same values go into every client's checks, so that a
failure names what differs and the README table compares like with like:
make_records() and the helpers below.
"""

import json
import sys
import time
import traceback


# Every check, in report order; tests/integration/compat_clients.rs and
# tests/clients/node/compat_report.js list the same names.
CHECKS = [
    "admin.create_topic",
    "admin.create_topic_kafka_configs",
    "admin.describe_configs",
    "admin.alter_configs_incremental",
    "admin.alter_configs_legacy",
    "admin.create_partitions",
    "admin.delete_records",
    "admin.delete_topics",
    "admin.describe_log_dirs",
    "admin.describe_topic_partitions",
    "produce.none",
    "produce.gzip",
    "produce.snappy",
    "produce.lz4",
    "produce.zstd",
    "group.classic",
    "admin.list_groups",
    "admin.describe_groups",
    "admin.list_group_offsets",
    "admin.alter_group_offsets",
    "admin.delete_group_offsets",
    "admin.delete_groups",
    "group.consumer_protocol",
    "offsets_for_times",
]

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]

# The consumer-group checks: records the first member reads and commits,
# then records the second member must get, starting after the commit.
GROUP_RECORDS = 10
GROUP_RESUMED_RECORDS = 5

# The offsets-for-times check: records TIMESTAMP_STEP_MS apart, the first
# ten minutes ago (inside any retention and timestamp bound).
TIMESTAMPED_RECORDS = 5
TIMESTAMP_STEP_MS = 1000
TIMESTAMP_BASE_MS = (int(time.time() * 1000) - 600_000) // 1000 * 1000


# A check's detail is cut to this many characters (clients quote whole
# requests in their errors).
DETAIL_CHARS_MAX = 400


class NotExposed(Exception):
    """Raised by a check when the client has no API for it."""


class CheckFailed(Exception):
    """Raised by a check when the broker's answer is not what Kafka gives."""


def expect(condition, message):
    if not condition:
        raise CheckFailed(message)


def expect_equal(found, expected, what):
    if found != expected:
        raise CheckFailed(f"{what}: expected {expected!r}, found {found!r}")


def wait_until(predicate, timeout_seconds, what, interval_seconds=0.2):
    """Poll PREDICATE until it returns a true value (returned) or fail."""
    deadline = time.monotonic() + timeout_seconds
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval_seconds)
    raise CheckFailed(f"{what} not within {timeout_seconds} s (last: {last!r})")


# The records every codec check writes and reads back: keys, values and
# headers, with an empty value, a binary value, a repeated header key and a
# header with a null value, so that every client's encoding and decoding of
# them is exercised.
RECORDS_PER_CODEC = 20


def make_records(codec):
    records = []
    for index in range(RECORDS_PER_CODEC):
        key = f"key-{index}".encode()
        if index == 3:
            value = b""
        elif index == 4:
            value = bytes(range(256))
        else:
            value = (f"{codec}-value-{index}-" + "x" * (index * 50)).encode()
        headers = [("h-index", str(index).encode()), ("h-codec", codec.encode())]
        if index % 5 == 0:
            headers.append(("h-index", b"again"))
        records.append((key, value, headers))
    return records


def same_records(found, expected):
    """Compare [(key, value, [(header, value)])] lists; raise on the first
    difference."""
    expect_equal(len(found), len(expected), "records read back")
    for index, (got, want) in enumerate(zip(found, expected)):
        expect_equal(got[0], want[0], f"record {index} key")
        expect_equal(got[1], want[1], f"record {index} value")
        expect_equal(list(got[2]), list(want[2]), f"record {index} headers")


class Checks:
    def __init__(self, client, declared):
        self.client = client
        self.declared = list(declared)
        self.reported = set()

    def emit(self, name, outcome, detail, seconds):
        assert name in self.declared, f"undeclared check {name}"
        assert name not in self.reported, f"check {name} reported twice"
        self.reported.add(name)
        if len(detail) > DETAIL_CHARS_MAX:
            detail = detail[: DETAIL_CHARS_MAX - 3] + "..."
        line = {"check": name, "outcome": outcome, "detail": detail, "seconds": round(seconds, 2)}
        print(json.dumps(line), flush=True)
        print(f"compat: {name}: {outcome} {detail}", file=sys.stderr, flush=True)

    def not_exposed(self, name, why):
        self.emit(name, "not_exposed", why, 0.0)

    def run(self, name, check, *args):
        """Run CHECK(*args) and report it; returns its result, or None when
        it failed."""
        started = time.monotonic()
        try:
            result = check(*args)
        except NotExposed as why:
            self.emit(name, "not_exposed", str(why), time.monotonic() - started)
            return None
        except Exception as error:  # noqa: BLE001 - every failure is reported
            where = traceback.extract_tb(error.__traceback__)[-1]
            detail = f"{type(error).__name__}: {error} (at {where.name}:{where.lineno})"
            self.emit(name, "fail", detail, time.monotonic() - started)
            return None
        self.emit(name, "pass", "", time.monotonic() - started)
        return True if result is None else result

    def finish(self):
        for name in self.declared:
            if name not in self.reported:
                self.emit(name, "fail", "not run: a step it depends on failed", 0.0)
        print(json.dumps({"client": self.client, "done": True}), flush=True)
