#!/usr/bin/env python3
"""What the ledger's PostgreSQL backends wait on while one replica, then three, serve one
hot key at capacity: `pg_stat_activity` sampled every 20 ms by one `psql` (`\\watch`),
each active backend of the test database counted under its wait event (`CPU` when it
waits on nothing). Samples are shares, not timings, so they hold on a busy machine.
docs/cluster.md ("Ninth look") holds its figures.

    python3 bench/cluster_waits.py [--bin target/release] [--pg postgres://postgres@127.0.0.1:5432/test]
                                   [--seconds 6] [--connections 32]
Needs wrk, redis-server and psql.
"""
import argparse
import collections
import json
import os
import subprocess
import tempfile
import time

from cluster_parts import Cluster, run_wrk, wrk_script

BODY = json.dumps({
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Say hello"}],
    "max_tokens": 64,
})


def measure(work, ports, key, db_url, seconds, connections):
    """Runs wrk against each replica (the connections split among them) while sampling;
    answers (requests/s, Counter of wait events, samples)."""
    script = wrk_script(work, BODY, key)
    sampler = subprocess.Popen(
        ["psql", db_url, "-At", "-F", " "], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True)
    sampler.stdin.write(
        "SELECT 'sample', COALESCE(wait_event_type, 'CPU') || ':' || COALESCE(wait_event, '-') "
        "FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' "
        "AND pid <> pg_backend_pid() UNION ALL SELECT 'tick', '' \\watch 0.02\n")
    sampler.stdin.flush()
    rate = run_wrk(script, ports, seconds, connections)
    sampler.terminate()
    text = sampler.communicate()[0]
    waits, ticks = collections.Counter(), 0
    for line in text.splitlines():
        if line.startswith("tick"):
            ticks += 1
        elif line.startswith("sample "):
            waits[line.split(" ", 1)[1]] += 1
    return rate, waits, ticks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release")
    ap.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432/test")
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--connections", type=int, default=32)
    args = ap.parse_args()
    bin_dir = os.path.abspath(args.bin)
    cluster = Cluster(args.pg, tempfile.mkdtemp(prefix="tg-cluster-waits."))
    try:
        cluster.start(bin_dir, 3)
        ports = [port for _, port in cluster.replicas]
        for name, targets in [("one replica", ports[:1]), ("three replicas", ports),
                              ("one replica", ports[:1]), ("three replicas", ports)]:
            rate, waits, ticks = measure(cluster.work, targets, cluster.key, cluster.db_url,
                                         args.seconds, args.connections)
            total = sum(waits.values())
            print(f"== {name}: {rate:,.0f} req/s; {ticks} samples, "
                  f"{total / max(ticks, 1):.2f} active backends on average")
            for event, n in waits.most_common(8):
                print(f"   {event:32} {n / max(ticks, 1):5.2f} backends ({100 * n / max(total, 1):4.1f} %)")
            time.sleep(1)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
