#!/usr/bin/env python3
"""Faults in cluster mode, measured under load (docs/cluster.md, "Faults under load"):
three replicas on a fresh PostgreSQL database and a redis-server of the script's own;
replica 0 reaches Redis and PostgreSQL through loopback proxies that the script can cut
(new connections are refused and open ones dropped: what a partition looks like to it).
Load runs on all replicas throughout, against keys with small credit limits, while:
  1. replica 0 is cut off from Redis, then reconnected; then partitioned from it (packets
     held, not refused) while a key is deleted on replica 1;
  2. replica 0 is cut off from PostgreSQL, then reconnected;
  3. PostgreSQL itself is restarted (`pg_ctlcluster ... restart -m fast`: every replica
     loses its connections at once; skipped where there is no pg_ctlcluster);
  4. replica 2 is killed (SIGKILL).
Then it checks: no key over its limit in the ledger (no overspend), every answer
delivered with 200 has its usage record (no lost delivered charge), Redis' reservations
back to zero once leases ran out, and prints how long replica 0 took to serve again
after each reconnection (no restart of a replica).

    python3 bench/cluster_faults.py [--bin target/release] [--pg postgres://postgres@127.0.0.1:5432/test]
"""
import argparse
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time

from cluster_parts import ENV, free_port, psql, start_redis, start_replica, start_upstream, write_config

CHAT = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}],
                   "max_tokens": 64})
LEASE_MS = 3000


class Proxy:
    """A loopback TCP proxy that can be cut (open connections are dropped and new ones
    refused until it is restored) or stalled (nothing passes either way and new
    connections wait, as in a partition that drops packets: TCP holds what was sent and
    delivers it once the partition heals)."""

    def __init__(self, target_port):
        self.target = ("127.0.0.1", target_port)
        self.port = free_port()
        self.cut_off = False
        self.flowing = threading.Event()
        self.flowing.set()
        self.lock = threading.Lock()
        self.pairs = []
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", self.port))
        self.srv.listen(256)
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self):
        with self.lock:
            self.cut_off = True
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass

    def stall(self):
        self.flowing.clear()

    def restore(self):
        with self.lock:
            self.cut_off = False
        self.flowing.set()

    def _accept(self):
        while True:
            c, _ = self.srv.accept()
            self.flowing.wait()
            with self.lock:
                if self.cut_off:
                    c.close()
                    continue
            try:
                u = socket.create_connection(self.target)
            except OSError:
                c.close()
                continue
            with self.lock:
                self.pairs.append((c, u))
            threading.Thread(target=self._pipe, args=(c, u), daemon=True).start()
            threading.Thread(target=self._pipe, args=(u, c), daemon=True).start()

    def _pipe(self, a, b):
        try:
            while True:
                self.flowing.wait()
                data = a.recv(65536)
                self.flowing.wait()
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.close()
            except OSError:
                pass


class Load:
    """Threads sending chat completions round robin over replicas and keys; every
    answer is kept as (time, replica, status, request id, key)."""

    def __init__(self, ports, keys, per_replica=4):
        self.ports, self.keys = ports, keys
        self.alive = [True] * len(ports)
        self.results = []
        self.lock = threading.Lock()
        self.stop = False
        self.n = 0
        # Clients of their own per replica (as behind a load balancer that keeps sending
        # to every replica), so a replica that hangs cannot starve the others' load.
        self.threads = [threading.Thread(target=self._run, args=(r,))
                        for r in range(len(ports)) for _ in range(per_replica)]
        for t in self.threads:
            t.start()

    def _next(self):
        with self.lock:
            self.n += 1
            return self.keys[self.n % len(self.keys)]

    def _run(self, r):
        c = None
        while not self.stop:
            if not self.alive[r]:
                return
            key = self._next()
            t = time.time()
            try:
                c = c or http.client.HTTPConnection("127.0.0.1", self.ports[r], timeout=10)
                c.request("POST", "/v1/chat/completions", body=CHAT, headers={
                    "authorization": f"Bearer {key}", "content-type": "application/json"})
                resp = c.getresponse()
                resp.read()
                status, rid = resp.status, resp.getheader("x-request-id")
            except (OSError, http.client.HTTPException):
                c = None
                status, rid = 0, None
                time.sleep(0.05)
            with self.lock:
                self.results.append((t, r, status, rid, key))

    def finish(self):
        self.stop = True
        for t in self.threads:
            t.join()

    def window(self, replica, since, until):
        with self.lock:
            return [x for x in self.results if x[1] == replica and since <= x[0] < until]


def first_ok_after(load, replica, since, deadline=60):
    while time.time() < since + deadline:
        with load.lock:
            # 200 or 402: the replica decides from the shared budget again.
            ok = [x[0] for x in load.results if x[1] == replica and x[0] >= since and x[2] in (200, 402)]
        if ok:
            return min(ok) - since
        time.sleep(0.05)
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release")
    ap.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432/test")
    ap.add_argument("--keys", type=int, default=20)
    ap.add_argument("--phase", type=float, default=5.0)
    args = ap.parse_args()
    bin_dir = os.path.abspath(args.bin)
    missing = [b for b in ("tollgate", "fake-upstream") if not os.access(os.path.join(bin_dir, b), os.X_OK)]
    if missing:
        raise SystemExit(f"--bin {args.bin}: no executable {' or '.join(missing)} there "
                         "(build with: cargo build --release -p tollgate-server -p fake-upstream)")
    port = re.search(r":(\d+)/", args.pg)
    if not port:
        raise SystemExit(f"--pg {args.pg}: expected postgres://user@host:PORT/database")
    pg_port = int(port.group(1))
    root = args.pg.rsplit("/", 1)[0]
    db = f"tg_faults_{os.getpid()}"
    work = tempfile.mkdtemp(prefix="tg-cluster-faults.")
    procs = []
    try:
        psql(args.pg, f"CREATE DATABASE {db}")
        redis_proc, rport = start_redis(work)
        procs.append(redis_proc)
        up, up_addr = start_upstream(bin_dir, "--latency-ms", "20")
        procs.append(up)
        redis_proxy, pg_proxy = Proxy(rport), Proxy(pg_port)

        def config(i, pg, redis):
            return write_config(os.path.join(work, f"replica-{i}.toml"),
                                f"{root.replace(str(pg_port), str(pg))}/{db}", redis,
                                f"{work}/data-{i}", up_addr,
                                cluster=f"reservation_lease_ms = {LEASE_MS}")

        def start(i, cfg):
            return start_replica(bin_dir, cfg, work, os.path.join(work, f"replica-{i}.log"))

        cfgs = [config(0, pg_proxy.port, redis_proxy.port), config(1, pg_port, rport),
                config(2, pg_port, rport)]
        first, p0 = start(0, cfgs[0])
        procs.append(first)
        others = [start(i, cfgs[i]) for i in (1, 2)]
        procs.extend(p for p, _ in others)
        ports = [p0] + [port for _, port in others]
        subprocess.run([os.path.join(bin_dir, "tollgate"), "--config", cfgs[1], "credits", "grant",
                        "default", "1000"], env=ENV, check=True, capture_output=True)
        prov = open(os.path.join(work, "data-0", "provisioning-key.txt")).read().strip()
        # Limits of 0.0005, 0.001, ... credits (about 45 answers of the fake upstream per
        # 0.0005): keys run out one after another, each raced for on every replica.
        def make_key(name, limit):
            c = http.client.HTTPConnection("127.0.0.1", ports[1])
            c.request("POST", "/v1/account/keys", body=json.dumps({"name": name, "credit_limit": limit}),
                      headers={"authorization": f"Bearer {prov}", "content-type": "application/json"})
            made = json.loads(c.getresponse().read())
            return made["id"], made["key"]

        def call(port, key):
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                c.request("POST", "/v1/chat/completions", body=CHAT, headers={
                    "authorization": f"Bearer {key}", "content-type": "application/json"})
                r = c.getresponse()
                r.read()
                return r.status
            except OSError:
                return 0

        keys = [make_key(f"k{n}", round(0.0005 * (n + 1), 6))[1] for n in range(args.keys)]
        time.sleep(4)  # the first epoch's grace window
        load = Load(ports, keys)
        report = []
        time.sleep(args.phase)

        def phase(name, cut, restore, replica=0):
            t0 = time.time()
            cut()
            time.sleep(args.phase)
            during = load.window(replica, t0 + 2, time.time())
            t1 = time.time()
            restore()
            back = first_ok_after(load, replica, t1)
            others_ok = sum(1 for r in (1, 2) for x in load.window(r, t0, t1) if x[2] in (200, 402))
            statuses = {}
            for x in during:
                statuses[x[2]] = statuses.get(x[2], 0) + 1
            report.append((name, statuses, others_ok, back))

        phase("replica 0 cut off from Redis", redis_proxy.cut, redis_proxy.restore)

        # A partition that drops packets, with a key deleted elsewhere meanwhile.
        victim_id, victim = make_key("victim", None)
        for _ in range(3):
            assert call(ports[0], victim) == 200
        redis_proxy.stall()
        time.sleep(1)
        c = http.client.HTTPConnection("127.0.0.1", ports[1])
        c.request("DELETE", f"/v1/account/keys/{victim_id}", headers={"authorization": f"Bearer {prov}"})
        assert c.getresponse().status == 204
        time.sleep(args.phase)
        during = call(ports[0], victim)
        redis_proxy.restore()
        healed_at = time.time()
        while call(ports[0], victim) != 401 and time.time() < healed_at + 30:
            time.sleep(0.02)
        revoked = time.time() - healed_at
        report.append(("replica 0 partitioned from Redis (packets held)", {"deleted key during": during},
                       None, revoked))
        phase("replica 0 cut off from PostgreSQL", pg_proxy.cut, pg_proxy.restore)
        restarted = None
        if shutil.which("pg_ctlcluster") and os.path.isdir("/etc/postgresql"):
            # Fast shutdown: open connections are terminated, as in a fail-over.
            version = sorted(os.listdir("/etc/postgresql"))[-1]
            t0 = time.time()
            subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main",
                            "restart", "-m", "fast"], check=True, capture_output=True)
            t1 = time.time()
            backs = [first_ok_after(load, r, t1) for r in range(3)]
            statuses = {}
            for r in range(3):
                for x in load.window(r, t0, t1):
                    statuses[x[2]] = statuses.get(x[2], 0) + 1
            restarted = (t1 - t0, statuses, backs)
        t0 = time.time()
        others[1][0].kill()
        load.alive[2] = False
        time.sleep(args.phase)
        load.finish()
        killed_at = t0
        time.sleep(LEASE_MS / 1000 + 2)
        # Leases that ran out are given back by the next reservation on the account.
        c = http.client.HTTPConnection("127.0.0.1", ports[1], timeout=10)
        c.request("POST", "/v1/chat/completions", body=CHAT, headers={
            "authorization": f"Bearer {keys[-1]}", "content-type": "application/json"})
        c.getresponse().read()

        url = f"{root}/{db}"
        # What each key was charged, from the ledger's records (the counters are kept per
        # writer since migration 0015; the records are the truth either way).
        over = psql(url, "SELECT COUNT(*) FROM api_keys k WHERE kind = 'inference' AND credit_limit IS NOT NULL "
                         "AND (SELECT COALESCE(SUM(cost), 0) FROM usage_records r WHERE r.key_id = k.id) > credit_limit")
        ledger_ids = set(psql(url, "SELECT request_id FROM usage_records").split())
        delivered = [x for x in load.results if x[2] == 200]
        lost = [x for x in delivered if x[3] not in ledger_ids]
        reserved = subprocess.run(["redis-cli", "-p", str(rport), "--scan", "--pattern", "tg2:*:a:*"],
                                  capture_output=True, text=True).stdout.split()
        held = sum(int(subprocess.run(["redis-cli", "-p", str(rport), "HGET", k, "reserved"],
                                      capture_output=True, text=True).stdout.strip() or 0)
                   for k in reserved)
        refused_402 = sum(1 for x in load.results if x[2] == 402)
        print(f"\n{len(load.results)} requests, {len(delivered)} answered 200, {refused_402} "
              f"refused 402 (key limit reached)")
        for name, statuses, others_ok, back in report:
            if others_ok is None:
                print(f"- {name}: a key deleted on replica 1 during it was answered {statuses} "
                      f"by replica 0; refused (401) by replica 0 {back:.2f} s after the partition healed")
                continue
            print(f"- {name}: its answers while cut {statuses}; the other replicas answered "
                  f"{others_ok} with 200 or 402 meanwhile; serving again {back:.2f} s after the "
                  f"reconnection" if back is not None else f"- {name}: NOT serving again within 60 s")
        if restarted:
            took, statuses, backs = restarted
            print(f"- PostgreSQL restarted under load (down and up again in {took:.2f} s): "
                  f"the replicas' answers meanwhile {statuses}; each serving again "
                  + ", ".join("never" if b is None else f"{b:.2f} s" for b in backs)
                  + " after it was back")
        after_kill = sum(1 for r in (0, 1) for x in load.window(r, killed_at, killed_at + args.phase) if x[2] in (200, 402))
        print(f"- replica 2 killed: the others answered {after_kill} with 200 or 402 in the next "
              f"{args.phase:.0f} s; Redis reservations held {LEASE_MS / 1000 + 2:.0f} s after "
              f"the load stopped, after one more request: {held} nanos")
        print(f"keys over their limit in the ledger: {over}")
        print(f"answers delivered with 200 but missing from the ledger: {len(lost)}")
        backs = [b for *_, b in report] + (restarted[2] if restarted else [])
        ok = over == "0" and not lost and held == 0 and all(b is not None and b < 30 for b in backs)
        print("RESULT:", "ok" if ok else "FAILED")
    finally:
        for p in reversed(procs):
            p.kill()
            p.wait()
        psql(args.pg, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        if os.environ.get("KEEP"):
            print("kept", work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
