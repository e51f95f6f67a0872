#!/usr/bin/env python3
"""The disk's own floor under a durable publish: how long one WAL-sized flush takes.

Every event Herald acknowledges, and so every webhook it sends, waits for one WAL flush
(`fdatasync` of the WAL file, PostgreSQL's default `wal_sync_method` on Linux). This writes
one 8 kB block and `fdatasync`s it at a steady rate, as a committing backend does at that
many events per second, and prints the latency percentiles of the flush alone. Run it on
the file system that holds PostgreSQL's WAL, with nothing else running, before and after
a latency benchmark: publish-to-receive cannot have a lower tail than this.

usage: scripts/fsync-tail.py [DIRECTORY] [--rate 200] [--seconds 15]
  DIRECTORY  where the scratch file goes (default: the system cluster's data directory,
             /var/lib/postgresql/15/main); the file is removed afterwards
"""

import argparse
import os
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", nargs="?", default="/var/lib/postgresql/15/main")
    parser.add_argument("--rate", type=float, default=200.0, help="flushes per second")
    parser.add_argument("--seconds", type=float, default=15.0, help="how long to run")
    args = parser.parse_args()

    path = os.path.join(args.directory, f"herald-fsync-tail-{os.getpid()}.tmp")
    block = b"\0" * 8192
    count = max(1, int(args.rate * args.seconds))
    interval = 1.0 / args.rate
    latencies = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        next_start = time.perf_counter()
        for i in range(count):
            started = time.perf_counter()
            # The WAL is written in 8 kB pages into a 16 MB segment: cycle over 16 MB.
            os.pwrite(fd, block, (i % 2048) * 8192)
            os.fdatasync(fd)
            latencies.append((time.perf_counter() - started) * 1000.0)
            next_start += interval
            time.sleep(max(0.0, next_start - time.perf_counter()))
    finally:
        os.close(fd)
        os.unlink(path)

    latencies.sort()

    def pct(p):
        return latencies[min(len(latencies) - 1, int(len(latencies) * p / 100.0))]

    print(
        f"fdatasync of 8 kB at {args.rate:g}/s for {args.seconds:g} s ({count} flushes) in {args.directory}: "
        f"p50 {pct(50):.2f} ms  p95 {pct(95):.2f} ms  p99 {pct(99):.2f} ms  "
        f"p99.9 {pct(99.9):.2f} ms  max {latencies[-1]:.2f} ms"
    )


if __name__ == "__main__":
    main()
