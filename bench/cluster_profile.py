#!/usr/bin/env python3
"""Counts what one model request costs a tollgate replica in cluster mode: Redis
commands (INFO commandstats of a redis-server of its own) and PostgreSQL round trips
(a counting proxy in front of the server: every Sync or simple Query a client sends is
one round trip), per request and per ledger commit. Noise-free, so it works on a busy
machine; docs/cluster.md ("Profile") holds its figures.

    python3 bench/cluster_profile.py [--bin target/debug] [--pg postgres://postgres@127.0.0.1:5432/test]
                                     [--requests 400] [--concurrency 1,16]
"""
import argparse
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from cluster_parts import free_port, hot_key, psql, start_redis, start_replica, start_upstream, write_config

CHAT = json.dumps({
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Say hello"}],
    "max_tokens": 64,
}).encode()


class PgCounter:
    """A loopback TCP proxy to PostgreSQL that counts the frontend messages which end a
    round trip (Sync 'S', simple Query 'Q'), and what the simple queries say."""

    def __init__(self, upstream_port):
        self.upstream = ("127.0.0.1", upstream_port)
        self.port = free_port()
        self.lock = threading.Lock()
        self.round_trips = 0
        self.by_text = {}
        self.parses = 0
        self.cut = False
        self.conns = []
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.port))
        srv.listen(128)
        self.srv = srv
        threading.Thread(target=self._accept, daemon=True).start()

    def snapshot(self):
        with self.lock:
            return self.round_trips, dict(self.by_text), self.parses

    def _accept(self):
        while True:
            c, _ = self.srv.accept()
            u = socket.create_connection(self.upstream)
            for s in (c, u):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conns.append((c, u))
            threading.Thread(target=self._client, args=(c, u), daemon=True).start()
            threading.Thread(target=self._server, args=(u, c), daemon=True).start()

    def _server(self, u, c):
        try:
            while True:
                data = u.recv(65536)
                if not data:
                    break
                c.sendall(data)
        except OSError:
            pass
        for s in (c, u):
            try:
                s.close()
            except OSError:
                pass

    def _client(self, c, u):
        buf = b""
        started = False
        names = {}
        try:
            while True:
                data = c.recv(65536)
                if not data:
                    break
                u.sendall(data)
                buf += data
                while True:
                    if not started:
                        if len(buf) < 8:
                            break
                        n, code = struct.unpack("!ii", buf[:8])
                        if len(buf) < n:
                            break
                        buf = buf[n:]
                        if code != 80877103:  # not an SSLRequest: the startup message
                            started = True
                        continue
                    if len(buf) < 5:
                        break
                    kind = buf[:1]
                    (n,) = struct.unpack("!i", buf[1:5])
                    if len(buf) < 1 + n:
                        break
                    body = buf[5:1 + n]
                    buf = buf[1 + n:]
                    if os.environ.get("PG_TRACE"):
                        print("C", kind, body[:50], file=sys.stderr)
                    with self.lock:
                        if kind in (b"S", b"Q"):
                            self.round_trips += 1
                        if kind == b"Q":
                            text = body.split(b"\0")[0].decode(errors="replace")[:60]
                            self.by_text[text] = self.by_text.get(text, 0) + 1
                        if kind == b"P":
                            self.parses += 1
                            name, rest = body.split(b"\0", 1)
                            names[name] = rest.split(b"\0")[0].decode(errors="replace")
                        if kind == b"B":
                            stmt = body.split(b"\0")[1]
                            text = " ".join(names.get(stmt, "?").split())[:60]
                            self.by_text[text] = self.by_text.get(text, 0) + 1
        except OSError:
            pass


def redis_stats(port):
    out = subprocess.run(["redis-cli", "-p", str(port), "INFO", "commandstats"],
                         capture_output=True, text=True, check=True).stdout
    stats = {}
    for m in re.finditer(r"cmdstat_([a-z|_]+):calls=(\d+),usec=(\d+)", out):
        stats[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    return stats


def diff(a, b):
    out = {}
    for k, (calls, usec) in b.items():
        c0, u0 = a.get(k, (0, 0))
        if calls - c0:
            out[k] = (calls - c0, usec - u0)
    return out


def post(url, key, body):
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "authorization": f"Bearer {key}", "content-type": "application/json"})
    with urllib.request.urlopen(req) as r:
        r.read()
        return r.status


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/debug")
    ap.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432/test")
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--concurrency", default="1,16")
    args = ap.parse_args()
    bin_dir = os.path.abspath(args.bin)
    work = tempfile.mkdtemp(prefix="tg-cluster-profile.")
    procs = []
    db = f"tg_profile_{os.getpid()}"
    server_url = args.pg
    root = server_url.rsplit("/", 1)[0]
    try:
        redis_proc, rport = start_redis(work)
        procs.append(redis_proc)
        pg_port = int(re.search(r":(\d+)/", server_url).group(1))
        proxy = PgCounter(pg_port)
        psql(server_url, f"CREATE DATABASE {db}")
        db_url = f"{root.replace(str(pg_port), str(proxy.port))}/{db}"
        up, up_addr = start_upstream(bin_dir)
        procs.append(up)
        cfg = write_config(os.path.join(work, "tollgate.toml"), db_url, rport, work, up_addr)
        tg, port = start_replica(bin_dir, cfg, work, os.path.join(work, "tollgate.log"))
        procs.append(tg)
        base = f"http://127.0.0.1:{port}"
        key = hot_key(bin_dir, cfg, work, port)
        url = base + "/v1/chat/completions"
        for _ in range(20):
            post(url, key, CHAT)
        time.sleep(1.2)  # let a background tick pass before counting
        p0, r0 = proxy.snapshot(), redis_stats(rport)
        time.sleep(5)
        p1, r1 = proxy.snapshot(), redis_stats(rport)
        idle = {k: v - p0[1].get(k, 0) for k, v in p1[1].items() if v - p0[1].get(k, 0)}
        print(f"== idle replica: {(p1[0] - p0[0]) / 5:.1f} PostgreSQL round trips/s, "
              f"{sum(c for c, _ in diff(r0, r1).values()) / 5:.1f} Redis commands/s")
        for k, v in sorted(idle.items(), key=lambda x: -x[1]):
            print(f"   statement {k!r:64} {v / 5:.1f}/s")
        for conc in [int(c) for c in args.concurrency.split(",")]:
            n = args.requests
            r0, p0 = redis_stats(rport), proxy.snapshot()
            c0 = int(psql(server_url.rsplit("/", 1)[0] + "/" + db,
                          f"SELECT xact_commit FROM pg_stat_database WHERE datname='{db}'"))
            t0 = time.time()
            with ThreadPoolExecutor(conc) as ex:
                statuses = list(ex.map(lambda _: post(url, key, CHAT), range(n)))
            elapsed = time.time() - t0
            r1, p1 = redis_stats(rport), proxy.snapshot()
            c1 = int(psql(server_url.rsplit("/", 1)[0] + "/" + db,
                          f"SELECT xact_commit FROM pg_stat_database WHERE datname='{db}'"))
            assert all(s == 200 for s in statuses), statuses
            rd = diff(r0, r1)
            evals = sum(c for k, (c, _) in rd.items() if k.startswith("eval"))
            total = sum(c for c, _ in rd.values())
            usec = sum(u for k, (_, u) in rd.items() if k.startswith("eval"))
            rt = p1[0] - p0[0]
            texts = {k: v - p0[1].get(k, 0) for k, v in p1[1].items() if v - p0[1].get(k, 0)}
            print(f"\n== {n} requests, {conc} at a time, {elapsed:.1f} s (wall time incl. the tick)")
            print(f"redis: {total / n:.2f} commands/request ({evals / n:.2f} scripts, "
                  f"{(total - evals) / n:.2f} commands run inside or outside them), "
                  f"{usec / n:.1f} us of script time/request")
            for k, (c, u) in sorted(rd.items(), key=lambda x: -x[1][0]):
                print(f"   {k:24} {c / n:6.2f}/req")
            print(f"postgres: {rt / n:.2f} round trips/request, {(c1 - c0) / n:.3f} "
                  f"transactions/request, {(p1[2] - p0[2]) / n:.3f} parses/request")
            for k, v in sorted(texts.items(), key=lambda x: -x[1]):
                print(f"   statement {k!r:64} {v / n:.3f}/req")
    finally:
        for p in reversed(procs):
            p.kill()
            p.wait()
        try:
            psql(server_url, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        except Exception as e:
            print("drop failed", e, file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
