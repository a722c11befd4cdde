#!/usr/bin/env python3
"""Where one replica's slow answers fall in time: one connection sends chat completions
paced at about 1,000 a second; the replica's access log (JSON, `info`) gives each answer's
server-side latency and time, so slow answers that come at a period (a tick, a renewal)
would show. docs/cluster.md ("The flush's tail") holds its figures.

    python3 bench/cluster_tail.py MODE [--sync on|off] [--seconds 8] [--bin target/release]
                                  [--pg postgres://postgres@127.0.0.1:5432]

MODE: `redis` (PostgreSQL + Redis), `noredis` (PostgreSQL, budgets in the process) or
`sqlite`. `--sync off` sets `synchronous_commit = off` on the fresh database (answers do not
wait for the disk flush). The first answer (the new Redis epoch's grace window, 3 s) is
left out. Needs redis-server and psql.
"""
import argparse
import http.client
import json
import os
import shutil
import subprocess
import tempfile
import time

import cluster_parts
from cluster_parts import hot_key, start_redis, start_replica, start_upstream, write_config

BODY = json.dumps({"model": "gpt-4o-mini", "max_tokens": 64,
                   "messages": [{"role": "user", "content": "Say hello"}]})


def quantile(values, q):
    return values[min(len(values) - 1, int(len(values) * q))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["redis", "noredis", "sqlite"])
    ap.add_argument("--sync", choices=["on", "off"], default="on")
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--bin", default="target/release")
    ap.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432")
    args = ap.parse_args()
    bin_dir = os.path.abspath(args.bin)
    work = tempfile.mkdtemp(prefix="tg-cluster-tail.")
    db = f"tg_tail_{os.getpid()}"
    admin = f"{args.pg}/postgres"
    procs = []
    try:
        subprocess.run(["psql", admin, "-qc", f"CREATE DATABASE {db}"], check=True)
        if args.sync == "off":
            subprocess.run(["psql", admin, "-qc",
                            f"ALTER DATABASE {db} SET synchronous_commit = off"], check=True)
        redis, redis_port = start_redis(work)
        procs.append(redis)
        upstream, address = start_upstream(bin_dir)
        procs.append(upstream)
        db_url = f"{args.pg}/{db}" if args.mode != "sqlite" else f"sqlite://{work}/t.db"
        cfg = write_config(os.path.join(work, "t.toml"), db_url, redis_port, work, address)
        text = open(cfg).read()
        if args.mode != "redis":
            text = text.replace(f'redis_url = "redis://127.0.0.1:{redis_port}/0"\n', "")
        with open(cfg, "w") as f:
            f.write(text + '\n[observability]\nlog_format = "json"\n')
        cluster_parts.ENV["RUST_LOG"] = "info"
        log = os.path.join(work, "tollgate.log")
        replica, port = start_replica(bin_dir, cfg, work, log)
        procs.append(replica)
        key = hot_key(bin_dir, cfg, work, port)
        headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
        conn = http.client.HTTPConnection("127.0.0.1", port)
        conn.request("POST", "/v1/chat/completions", BODY, headers)
        conn.getresponse().read()
        time.sleep(1)
        sent, next_at, end = 0, time.perf_counter(), time.perf_counter() + args.seconds
        while time.perf_counter() < end:
            wait = next_at - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            next_at += 0.001
            conn.request("POST", "/v1/chat/completions", BODY, headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise SystemExit(f"answered {response.status}")
            sent += 1
        replica.terminate()
        replica.wait()
        answers = []
        for line in open(log):
            try:
                fields = json.loads(line)["fields"]
            except (ValueError, KeyError):
                continue
            if fields.get("message") == "request" and fields.get("path") == "/v1/chat/completions":
                answers.append((json.loads(line)["timestamp"], fields["latency_us"] / 1000))
        answers = answers[1:]
        latencies = sorted(ms for _, ms in answers)
        slow = [(at, ms) for at, ms in answers if ms > 3]
        print(f"{args.mode}, synchronous_commit {args.sync}: {sent} answers; server-side p50 "
              f"{quantile(latencies, 0.5):.2f} ms, p99 {quantile(latencies, 0.99):.2f}, "
              f"p99.9 {quantile(latencies, 0.999):.2f}, max {latencies[-1]:.2f}; "
              f"{len(slow)} over 3 ms, at:")
        for at, ms in slow:
            print(f"  {at} {ms:.2f} ms")
    finally:
        for p in procs:
            p.kill()
        subprocess.run(["psql", admin, "-qc", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"],
                       capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
