#!/usr/bin/env python3
"""1 MiB O_DIRECT write + fdatasync latency into three kinds of file space.

    python3 benches/unwritten-extents.py [DIR] [ROUNDS]

- append: writes past the end of an empty file (each fdatasync also
  allocates blocks and grows the file);
- fallocated: writes into space reserved with posix_fallocate (unwritten
  extents: each fdatasync converts them, a journal commit);
- overwrite: writes over blocks already written and synced (what a
  recycled commit-log segment would do).

400 writes each, in DIR (default: the current directory; use the broker's
data directory's file system). Prints p50, p99 and max per kind and round.
Issue 19 item 5: Sluice writes its commit log into fallocated space.
"""
import mmap
import os
import statistics
import sys
import time

WRITES = 400
SIZE = 1 << 20


def run(path, kind, buf):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644)
    try:
        if kind in ("fallocated", "overwrite"):
            os.posix_fallocate(fd, 0, WRITES * SIZE)
        if kind == "overwrite":
            for index in range(WRITES):
                os.pwrite(fd, buf, index * SIZE)
            os.fdatasync(fd)
        latencies = []
        for index in range(WRITES):
            started = time.perf_counter()
            os.pwrite(fd, buf, index * SIZE)
            os.fdatasync(fd)
            latencies.append((time.perf_counter() - started) * 1000)
    finally:
        os.close(fd)
        os.unlink(path)
    latencies.sort()
    return statistics.median(latencies), latencies[int(WRITES * 0.99)], latencies[-1]


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else "."
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    path = os.path.join(directory, "unwritten-extents.scratch")
    buf = mmap.mmap(-1, SIZE)  # page-aligned, as O_DIRECT needs
    buf.write(b"x" * SIZE)
    for round_ in range(1, rounds + 1):
        for kind in ("append", "fallocated", "overwrite"):
            p50, p99, worst = run(path, kind, buf)
            print(f"round {round_} {kind:10s} p50 {p50:.2f} p99 {p99:.2f} max {worst:.2f} ms")


if __name__ == "__main__":
    main()
