#!/usr/bin/env python3
"""How long a disk flush takes on this machine, as PostgreSQL's commit makes it: a write
of a few KB into a preallocated file, then `fdatasync`, at a steady rate, each timed.
Every answer of a replica waits for its commit's flush, so the tail of this distribution
is a floor under the tail of its added latency (docs/cluster.md, "The flush's tail").

    python3 bench/fsync_latency.py [--dir DIR] [--rate 1000] [--seconds 10] [--size 8192]

DIR defaults to the current directory: give one on PostgreSQL's volume to measure that
disk (the file is removed at the end).
"""
import argparse
import os
import tempfile
import time

SEGMENT = 16 * 1024 * 1024  # a WAL segment's size


def percentile(sorted_ns, p):
    return sorted_ns[min(len(sorted_ns) - 1, int(len(sorted_ns) * p))] / 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=".")
    ap.add_argument("--rate", type=int, default=1000, help="flushes per second")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--size", type=int, default=8192, help="bytes written before each flush")
    args = ap.parse_args()

    fd, path = tempfile.mkstemp(prefix="fsync-latency-", dir=args.dir)
    try:
        # Preallocated and flushed once, as PostgreSQL does a new WAL segment, so each
        # flush below writes data only, not the file's size.
        os.write(fd, b"\0" * SEGMENT)
        os.fsync(fd)
        block = os.urandom(args.size)
        interval = 1.0 / args.rate
        latencies = []
        offset = 0
        start = time.monotonic()
        next_at = start
        while time.monotonic() - start < args.seconds:
            now = time.monotonic()
            if now < next_at:
                time.sleep(next_at - now)
            next_at += interval
            t0 = time.perf_counter_ns()
            os.pwrite(fd, block, offset)
            os.fdatasync(fd)
            latencies.append(time.perf_counter_ns() - t0)
            offset = (offset + args.size) % (SEGMENT - args.size)
    finally:
        os.close(fd)
        os.unlink(path)

    latencies.sort()
    elapsed = time.monotonic() - start
    print(
        f"{len(latencies)} flushes of {args.size} bytes in {elapsed:.1f} s "
        f"({len(latencies) / elapsed:.0f}/s) under {os.path.abspath(args.dir)}: "
        f"p50 {percentile(latencies, 0.5):.3f} ms, p90 {percentile(latencies, 0.9):.3f}, "
        f"p99 {percentile(latencies, 0.99):.3f}, p99.9 {percentile(latencies, 0.999):.3f}, "
        f"max {latencies[-1] / 1e6:.3f}; over 2 ms: {sum(1 for t in latencies if t > 2e6)}, "
        f"over 10 ms: {sum(1 for t in latencies if t > 10e6)}"
    )


if __name__ == "__main__":
    main()
