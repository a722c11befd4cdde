#!/usr/bin/env python3
"""How long the periodic check of one account's shared budget holds Redis, by the
account's number of keys: Redis runs nothing else while a script runs, so every
replica's requests wait for the longest one. Starts one replica (checks every second)
with a redis-server of its own on a fresh database, makes N keys and one request with
each (which loads its budget), then for a few seconds of checks reads every script's
time from Redis' SLOWLOG, pings Redis from a client throughout (what a request's Redis
call waits, at most), and counts the replica's PostgreSQL round trips (through a
counting proxy; an idle replica makes about 4 a second). With several --bin, the
binaries take turns per size, so their figures are from the same minutes.
docs/cluster.md ("How a budget is loaded and checked") holds its figures.

    python3 bench/cluster_check_cost.py --bin target/release [--bin /tmp/base]
        [--keys 1000,10000] [--rounds 2] [--limit-reset daily] [--pg postgres://...]
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from cluster_parts import ENV, start_redis, start_replica, start_upstream, write_config
from cluster_profile import PgCounter

CHAT = json.dumps({
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Say hello"}],
    "max_tokens": 16,
}).encode()


def call(url, key, body=None, method="POST"):
    req = urllib.request.Request(url, data=body, method=method, headers={
        "authorization": f"Bearer {key}", "content-type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return r.status, r.read()


def redis(port, *args):
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True,
                          text=True, check=True).stdout


def slowlog_scripts(port):
    """(microseconds, arguments) of every EVALSHA in the slow log, oldest first."""
    out = subprocess.run(["redis-cli", "-p", str(port), "--json", "SLOWLOG", "GET", "-1"],
                         capture_output=True, text=True, check=True).stdout
    scripts = []
    for entry in json.loads(out):
        args = entry[3]
        if args and args[0].lower() == "evalsha":
            n = len(args)
            if args[-1].startswith("... ("):
                n = len(args) - 1 + int(args[-1][5:].split(" ")[0])
            scripts.append((int(entry[2]), n))
    return list(reversed(scripts))


class Pinger:
    """Pings Redis one after another from its own connection; keeps the slowest."""

    def __init__(self, port):
        self.port, self.stop, self.times = port, False, []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        s = socket.create_connection(("127.0.0.1", self.port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while not self.stop:
            t0 = time.perf_counter()
            s.sendall(b"PING\r\n")
            buf = b""
            while not buf.endswith(b"\r\n"):
                buf += s.recv(64)
            self.times.append(time.perf_counter() - t0)
            time.sleep(0.0005)

    def finish(self):
        self.stop = True
        self.thread.join()
        return sorted(self.times)


def measure(bin_dir, keys, pg, reset):
    work = tempfile.mkdtemp(prefix="tg-check-cost.")
    procs = []
    db = f"tg_check_{os.getpid()}_{keys}"
    root = pg.rsplit("/", 1)[0]
    try:
        redis_proc, rport = start_redis(work)
        procs.append(redis_proc)
        subprocess.run(["psql", pg, "-qc", f"CREATE DATABASE {db}"], check=True)
        up, up_addr = start_upstream(bin_dir)
        procs.append(up)
        pg_port = int(re.search(r":(\d+)/", pg).group(1))
        counter = PgCounter(pg_port)
        cfg = write_config(os.path.join(work, "tollgate.toml"),
                           f"{root.replace(str(pg_port), str(counter.port))}/{db}", rport, work,
                           up_addr, cluster="budget_check_interval_ms = 1000")
        replica, port = start_replica(bin_dir, cfg, work, os.path.join(work, "tollgate.log"))
        procs.append(replica)
        base = f"http://127.0.0.1:{port}"
        subprocess.run([os.path.join(bin_dir, "tollgate"), "--config", cfg, "credits",
                        "grant", "default", "1000000"], env=ENV, check=True,
                       capture_output=True)
        prov = open(os.path.join(work, "provisioning-key.txt")).read().strip()

        def make(i):
            _, body = call(base + "/v1/account/keys", prov,
                           json.dumps({"name": f"k{i}", "credit_limit": 1000,
                                       "limit_reset": reset}).encode())
            return json.loads(body)["key"]

        with ThreadPoolExecutor(16) as ex:
            made = list(ex.map(make, range(keys)))
        with ThreadPoolExecutor(32) as ex:
            statuses = list(ex.map(
                lambda k: call(base + "/v1/chat/completions", k, CHAT)[0], made))
        assert all(s == 200 for s in statuses), "every key served"
        time.sleep(1.5)  # a check of all of them has run
        redis(rport, "CONFIG", "SET", "slowlog-log-slower-than", "0")
        redis(rport, "CONFIG", "SET", "slowlog-max-len", "1000000")
        redis(rport, "SLOWLOG", "RESET")
        pinger = Pinger(rport)
        trips = counter.snapshot()[0]
        time.sleep(4)
        trips = counter.snapshot()[0] - trips
        pings = pinger.finish()
        scripts = slowlog_scripts(rport)
        # A check's last scripts carry four arguments per key; the few others are small.
        check = [us for us, n in scripts if n > 40]
        return {
            "pg_per_s": trips / 4,
            "scripts": len(check),
            "longest_us": max(check, default=0),
            "total_us": sum(check),
            "ping_p50_us": pings[len(pings) // 2] * 1e6,
            "ping_max_us": pings[-1] * 1e6,
            "pings": len(pings),
        }
    finally:
        for p in procs:
            p.kill()
            p.wait()
        subprocess.run(["psql", pg, "-qc", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"],
                       capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", action="append", required=True)
    ap.add_argument("--keys", default="1000,10000")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--limit-reset", choices=["daily", "weekly", "monthly"],
                    help="the keys' limits reset (their budgets are summed from the roll-up)")
    ap.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432/test")
    args = ap.parse_args()
    print("| binary | keys | check scripts in 4 s | longest script (ms) | their total (ms) "
          "| Redis PING p50 / max (ms) | PostgreSQL round trips/s |")
    print("|---|---|---|---|---|---|---|")
    for keys in [int(k) for k in args.keys.split(",")]:
        for r in range(args.rounds):
            order = args.bin if r % 2 == 0 else list(reversed(args.bin))
            for b in order:
                m = measure(os.path.abspath(b), keys, args.pg, args.limit_reset)
                print(f"| {b} | {keys:,} | {m['scripts']} | {m['longest_us'] / 1000:.2f} | "
                      f"{m['total_us'] / 1000:.1f} | {m['ping_p50_us'] / 1000:.2f} / "
                      f"{m['ping_max_us'] / 1000:.2f} | {m['pg_per_s']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
