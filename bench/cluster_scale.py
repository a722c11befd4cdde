#!/usr/bin/env python3
"""Cluster mode on scale data (docs/cluster.md, "At scale"): seeds a fresh PostgreSQL
database with bench/seed-cluster.sql, starts one replica on it (with a redis-server of
its own) and measures: start-up to ready, RSS after N distinct keys made requests, the
activity endpoint for the account with 1,000 keys, and what a key's first request
(identity-cache miss, budget load) adds over its second.

    python3 bench/cluster_scale.py [--bin target/release] [--pg postgres://postgres@127.0.0.1:5432/test]
        [--accounts 10000] [--keys 100000] [--rows 10000000] [--distinct 100000] [--keep-db NAME]
"""
import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time

from cluster_parts import start_redis, start_replica, start_upstream, write_config

HERE = os.path.dirname(os.path.abspath(__file__))
CHAT = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}],
                   "max_tokens": 64})


def psql(url, *args):
    return subprocess.run(["psql", url, "-Atq", *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        m = re.search(r"VmRSS:\s+(\d+) kB", f.read())
    return int(m.group(1)) / 1024


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class Client:
    def __init__(self, port):
        self.conn = http.client.HTTPConnection("127.0.0.1", port)

    def call(self, method, path, key, body=None):
        t = time.perf_counter()
        self.conn.request(method, path, body=body, headers={
            "authorization": f"Bearer {key}", "content-type": "application/json"})
        r = self.conn.getresponse()
        r.read()
        return r.status, (time.perf_counter() - t) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release")
    ap.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432/test")
    ap.add_argument("--accounts", type=int, default=10000)
    ap.add_argument("--keys", type=int, default=100000)
    ap.add_argument("--rows", type=int, default=10000000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--distinct", type=int, default=100000)
    ap.add_argument("--keep-db", help="use (or keep) this database: seeded if it has no accounts")
    args = ap.parse_args()
    bin_dir = os.path.abspath(args.bin)
    root = args.pg.rsplit("/", 1)[0]
    db = args.keep_db or f"tg_scale_{os.getpid()}"
    db_url = f"{root}/{db}"
    work = tempfile.mkdtemp(prefix="tg-cluster-scale.")
    procs = []
    try:
        exists = psql(args.pg, "-c", f"SELECT 1 FROM pg_database WHERE datname = '{db}'")
        if not exists:
            psql(args.pg, "-c", f"CREATE DATABASE {db}")
        subprocess.run([os.path.join(bin_dir, "tollgate"), "migrate", "--database-url", db_url],
                       check=True, capture_output=True)
        if psql(db_url, "-c", "SELECT COUNT(*) FROM accounts WHERE name = 'seed-1'") == "0":
            t = time.time()
            psql(db_url, "-v", f"accounts={args.accounts}", "-v", f"keys={args.keys}",
                 "-v", f"rows={args.rows}", "-v", f"days={args.days}",
                 "-f", os.path.join(HERE, "seed-cluster.sql"))
            print(f"seeded {args.accounts} accounts, {args.keys} keys, {args.rows} usage rows "
                  f"in {time.time() - t:.0f} s")
        counts = psql(db_url, "-c", "SELECT (SELECT COUNT(*) FROM accounts), (SELECT COUNT(*) FROM "
                      "api_keys WHERE kind = 'inference'), (SELECT COUNT(*) FROM usage_records), "
                      "(SELECT COUNT(*) FROM usage_daily)")
        print(f"database {db}: accounts|keys|usage rows|roll-up rows = {counts}")
        redis_proc, rport = start_redis(work)
        procs.append(redis_proc)
        up, up_addr = start_upstream(bin_dir)
        procs.append(up)
        cfg = write_config(os.path.join(work, "tollgate.toml"), db_url, rport, work, up_addr)
        time.sleep(0.3)
        started = time.perf_counter()
        tg, port = start_replica(bin_dir, cfg, work, os.path.join(work, "tollgate.log"))
        procs.append(tg)
        ready_ms = (time.perf_counter() - started) * 1e3
        print(f"start-up to ready: {ready_ms:.0f} ms; idle RSS {rss_mb(tg.pid):.1f} MB")
        time.sleep(4)  # past the new epoch's grace window (a fresh Redis)

        # A key's first request against its second (same connection, one at a time).
        c = Client(port)
        firsts, seconds = [], []
        # (Keys past the first 1,000, from the distinct-keys run's far end, unused so far.)
        for n in range(1, 201):
            key = f"tg-inf-seed-{1001 + (n * 37) % max(1, args.keys - 1000)}"
            s1, t1 = c.call("POST", "/v1/chat/completions", key, CHAT)
            s2, t2 = c.call("POST", "/v1/chat/completions", key, CHAT)
            assert s1 == 200 and s2 == 200, (s1, s2)
            firsts.append(t1)
            seconds.append(t2)
        print(f"first request of a key: p50 {pct(firsts, .5):.2f} ms, p99 {pct(firsts, .99):.2f} ms; "
              f"its second: p50 {pct(seconds, .5):.2f} ms, p99 {pct(seconds, .99):.2f} ms; "
              f"added p50 {pct(firsts, .5) - pct(seconds, .5):+.2f} ms")

        # Activity of the account with 1,000 keys.
        times = []
        for _ in range(100):
            s, t = c.call("GET", "/v1/account/activity?days=30", "tg-prov-seed-1")
            assert s == 200, s
            times.append(t)
        print(f"/v1/account/activity?days=30, 1,000 keys: p50 {pct(times, .5):.1f} ms, "
              f"p99 {pct(times, .99):.1f} ms")

        # Distinct keys, 16 at a time.
        n = min(args.distinct, args.keys)
        nxt = iter(range(1, n + 1))
        lock = threading.Lock()
        failed = []

        def worker():
            w = Client(port)
            while True:
                with lock:
                    k = next(nxt, None)
                if k is None:
                    return
                s, _ = w.call("POST", "/v1/chat/completions", f"tg-inf-seed-{k}", CHAT)
                if s != 200:
                    failed.append(s)

        t = time.time()
        threads = [threading.Thread(target=worker) for _ in range(16)]
        for th in threads:
            th.start()
        peak = 0.0
        while any(th.is_alive() for th in threads):
            peak = max(peak, rss_mb(tg.pid))
            time.sleep(0.5)
        print(f"{n} distinct keys in {time.time() - t:.0f} s ({len(failed)} failed): RSS "
              f"{rss_mb(tg.pid):.1f} MB after, peak {peak:.1f} MB")
    finally:
        for p in reversed(procs):
            p.kill()
            p.wait()
        if not args.keep_db:
            psql(args.pg, "-c", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
