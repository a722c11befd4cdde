#!/usr/bin/env python3
"""Where a request's CPU goes in cluster mode, by process, at capacity: one replica, one
replica behind nginx, three replicas with the load split among them (no proxy), and three
behind nginx (round robin), on one PostgreSQL database and one Redis. wrk (32
connections, one hot key) drives each case in turn, the order reversed every other round;
CPU is read from /proc for each group of processes (PostgreSQL: every process of the
server, background ones included) and from the rusage of wrk itself. Also per request:
the database's committed transactions (PostgreSQL's statistics, which a backend may
report up to a second late) and Redis's commands. docs/cluster.md ("Tenth
look") holds its figures.

    python3 bench/cluster_cpu.py [--bin target/release] [--pg postgres://postgres@127.0.0.1:5432/test]
                                 [--seconds 6] [--rounds 2]
Needs wrk, nginx, redis-server, redis-cli and psql.
"""
import argparse
import json
import os
import re
import resource
import subprocess
import tempfile
import time

from cluster_parts import Cluster, free_port, psql, run_wrk, wrk_script

BODY = json.dumps({
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Say hello"}],
    "max_tokens": 64,
})
CONNECTIONS = 32
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """User and system CPU of a process so far (0 once it is gone)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def redis_calls(port):
    """Commands Redis has run so far, all kinds together."""
    out = subprocess.run(["redis-cli", "-p", str(port), "info", "commandstats"],
                         capture_output=True, text=True, check=True).stdout
    return sum(int(n) for n in re.findall(r"calls=(\d+)", out))


def start_nginx(work, upstream_ports):
    """nginx as the benchmarks run it (tollgate-bench's round robin), on a free port:
    (master process, port, every pid of it)."""
    port = free_port()
    servers = "".join(f"        server 127.0.0.1:{p};\n" for p in upstream_ports)
    conf = os.path.join(work, f"nginx-{port}.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 2;
daemon off;
pid {work}/nginx-{port}.pid;
error_log {work}/nginx-{port}-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {work}/nginx-body;
    proxy_temp_path {work}/nginx-proxy;
    upstream replicas {{
{servers}        keepalive 256;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://replicas;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_next_upstream off;
        }}
    }}
}}
""")
    master = subprocess.Popen(["nginx", "-c", conf, "-p", work],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        workers = subprocess.run(["pgrep", "-P", str(master.pid)], capture_output=True,
                                 text=True).stdout.split()
        if len(workers) >= 2:
            return master, port, [master.pid] + [int(w) for w in workers]
        time.sleep(0.01)
    raise SystemExit("nginx did not start its workers")


def drive(script, ports, seconds):
    """wrk against each port (the connections split among them): (requests/s, wrk's CPU s)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    rate = run_wrk(script, ports, seconds, CONNECTIONS)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return rate, wrk_cpu


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release")
    ap.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432/test")
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    bin_dir = os.path.abspath(args.bin)
    cluster = Cluster(args.pg, tempfile.mkdtemp(prefix="tg-cluster-cpu."))
    try:
        cluster.start(bin_dir, 3)
        script = wrk_script(cluster.work, BODY, cluster.key)
        replica_pids = [proc.pid for proc, _ in cluster.replicas]
        ports = [port for _, port in cluster.replicas]
        one_ng, one_port, one_pids = start_nginx(cluster.work, ports[:1])
        cluster.procs.append(one_ng)
        three_ng, three_port, three_pids = start_nginx(cluster.work, ports)
        cluster.procs.append(three_ng)
        cases = [
            ("one replica", ports[:1], replica_pids[:1], []),
            ("one replica + nginx", [one_port], replica_pids[:1], one_pids),
            ("three replicas, load split", ports, replica_pids, []),
            ("three replicas + nginx", [three_port], replica_pids, three_pids),
        ]

        def commits():
            return int(psql(args.pg, "SELECT xact_commit FROM pg_stat_database "
                                     f"WHERE datname = '{cluster.db}'"))

        drive(script, [three_port], 3)  # warm: every replica has the key and a slice
        print(f"wrk -c{CONNECTIONS}, {args.seconds} s per case; CPU in µs per request "
              "(PostgreSQL: the whole server)")
        for rnd in range(args.rounds):
            for name, targets, tollgates, nginx_pids in (cases if rnd % 2 == 0 else cases[::-1]):
                pg_pids = [int(p) for p in subprocess.run(
                    ["pgrep", "-u", "postgres"], capture_output=True, text=True).stdout.split()]
                groups = {"tollgate": tollgates, "postgres": pg_pids,
                          "redis": [cluster.redis.pid], "upstream": [cluster.upstream.pid],
                          "nginx": nginx_pids}
                committed = commits()
                calls = redis_calls(cluster.redis_port)
                before = {g: sum(cpu_seconds(p) for p in pids) for g, pids in groups.items()}
                rate, wrk_cpu = drive(script, targets, args.seconds)
                after = {g: sum(cpu_seconds(p) for p in pids) for g, pids in groups.items()}
                committed = commits() - committed
                calls = redis_calls(cluster.redis_port) - calls
                n = rate * args.seconds
                spent = {g: after[g] - before[g] for g in groups}
                spent["wrk"] = wrk_cpu
                parts = ", ".join(f"{g} {1e6 * s / n:.0f}" for g, s in spent.items())
                print(f"{name:27} {rate:7,.0f} req/s | {parts} | all {1e6 * sum(spent.values()) / n:.0f} "
                      f"({sum(spent.values()) / args.seconds:.2f} cores) | "
                      f"{n / max(committed, 1):.1f} requests per database commit, "
                      f"{calls / n:.2f} Redis commands per request", flush=True)
                time.sleep(0.5)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
