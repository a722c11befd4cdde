"""What the cluster benchmarks (bench/cluster_*.py) start the same way: a redis-server of
their own, the fake upstream, a replica's configuration and a replica, ready; a hot key;
a whole cluster of replicas on a new database (`Cluster`); a wrk script and its runs."""
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request

# The replicas' environment: the fake upstream's key, and warnings only.
ENV = dict(os.environ, BENCH_UPSTREAM_KEY="sk-bench", RUST_LOG="warn")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_redis(work):
    """A redis-server on a free port that keeps nothing on disk: (process, port)."""
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--save", "",
                             "--appendonly", "no", "--dir", work], stdout=subprocess.DEVNULL)
    return proc, port


def start_upstream(bin_dir, *args):
    """The fake upstream, answering at once unless `args` say otherwise: (process, address)."""
    proc = subprocess.Popen([os.path.join(bin_dir, "fake-upstream"), "--listen", "127.0.0.1:0",
                             "--fast", *args], stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def write_config(path, database_url, redis_port, data_dir, upstream, cluster=""):
    """A replica's configuration: one model on the fake upstream; `cluster`, if given, is
    the body of its [cluster] table."""
    table = f"\n[cluster]\n{cluster}\n" if cluster else ""
    with open(path, "w") as f:
        f.write(f'''database_url = "{database_url}"
redis_url = "redis://127.0.0.1:{redis_port}/0"
data_dir = "{data_dir}"
{table}
[[providers]]
name = "fake"
kind = "openai"
base_url = "http://{upstream}/v1"
api_key_env = "BENCH_UPSTREAM_KEY"

[[models]]
id = "gpt-4o-mini"
provider = "fake"
endpoints = ["chat.completions"]
max_output_tokens = 16384
pricing = {{ input = "0.15", output = "0.60" }}
''')
    return path


def start_replica(bin_dir, cfg, cwd, log_path, timeout=60):
    """Starts `tollgate serve` on a free port and waits until /readyz answers 200:
    (process, port). Gives up, with the replica's log, after `timeout` seconds."""
    port = free_port()
    proc = subprocess.Popen([os.path.join(bin_dir, "tollgate"), "serve", "--config", cfg,
                             "--listen", f"127.0.0.1:{port}"], env=ENV, cwd=cwd,
                            stderr=open(log_path, "w"))
    started = time.perf_counter()
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/readyz")
            if c.getresponse().status == 200:
                return proc, port
        except OSError:
            pass
        if time.perf_counter() - started > timeout or proc.poll() is not None:
            proc.kill()
            raise SystemExit(f"the replica was not ready in {timeout} s:\n"
                             + open(log_path).read())
        time.sleep(0.005)


def psql(url, sql):
    """One statement through psql: its output, unaligned, without headers."""
    return subprocess.run(["psql", url, "-Atqc", sql], capture_output=True, text=True,
                          check=True).stdout.strip()


def hot_key(bin_dir, cfg, work, port):
    """Grants the default account credits (with `tollgate credits grant`) and makes it an
    inference key named "hot" through the replica on `port`: the key's plaintext."""
    subprocess.run([os.path.join(bin_dir, "tollgate"), "--config", cfg, "credits", "grant",
                    "default", "1000000"], env=ENV, check=True, capture_output=True)
    provisioning = open(os.path.join(work, "provisioning-key.txt")).read().strip()
    made = urllib.request.Request(f"http://127.0.0.1:{port}/v1/account/keys", method="POST",
                                  data=json.dumps({"name": "hot"}).encode(),
                                  headers={"authorization": f"Bearer {provisioning}",
                                           "content-type": "application/json"})
    return json.loads(urllib.request.urlopen(made).read())["key"]


class Cluster:
    """A redis-server of its own, a new database on `pg`'s server, the fake upstream and
    replicas sharing them, with a hot key (`key`). Call `stop` even when `start` failed
    part way: it stops what was started."""

    def __init__(self, pg, work):
        self.pg, self.work = pg, work
        self.db = f"tg_bench_{os.getpid()}"
        self.db_url = f"{pg.rsplit('/', 1)[0]}/{self.db}"
        self.procs, self.replicas = [], []

    def start(self, bin_dir, count):
        for name in ("tollgate", "fake-upstream"):
            if not os.access(os.path.join(bin_dir, name), os.X_OK):
                raise SystemExit(f"no {name} in {bin_dir}: build it (cargo build --release) "
                                 "or name its directory with --bin")
        self.redis, self.redis_port = start_redis(self.work)
        self.procs.append(self.redis)
        subprocess.run(["psql", self.pg, "-c", f"CREATE DATABASE {self.db}"], check=True,
                       capture_output=True)
        self.upstream, upstream_addr = start_upstream(bin_dir)
        self.procs.append(self.upstream)
        cfg = write_config(os.path.join(self.work, "tollgate.toml"), self.db_url,
                           self.redis_port, self.work, upstream_addr)
        for i in range(count):
            proc, port = start_replica(bin_dir, cfg, self.work,
                                       os.path.join(self.work, f"tollgate{i}.log"))
            self.procs.append(proc)
            self.replicas.append((proc, port))
        self.key = hot_key(bin_dir, cfg, self.work, self.replicas[0][1])

    def stop(self):
        """Stops every process started (TERM, then KILL after 10 s; nginx's master ends
        its workers on TERM only), drops the database, removes the work directory."""
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(["psql", self.pg, "-c", f"DROP DATABASE IF EXISTS {self.db} WITH (FORCE)"],
                       capture_output=True)
        shutil.rmtree(self.work, ignore_errors=True)


def wrk_script(work, body, key):
    """A wrk script that POSTs `body` with `key`: its path."""
    path = os.path.join(work, "post.lua")
    with open(path, "w") as f:
        f.write('wrk.method = "POST"\n'
                f'wrk.body = {json.dumps(body)}\n'
                f'wrk.headers["authorization"] = "Bearer {key}"\n'
                'wrk.headers["content-type"] = "application/json"\n')
    return path


def run_wrk(script, ports, seconds, connections):
    """wrk with `script` against the chat endpoint of each port, the connections split
    among them, all at once: the requests per second of all together."""
    per = max(1, connections // len(ports))
    loads = [subprocess.Popen(["wrk", "-t1", f"-c{per}", f"-d{seconds}s", "-s", script,
                               f"http://127.0.0.1:{p}/v1/chat/completions"],
                              stdout=subprocess.PIPE, text=True) for p in ports]
    outputs = [load.communicate()[0] for load in loads]
    return sum(float(re.search(r"Requests/sec:\s+([\d.]+)", o).group(1)) for o in outputs)
