"""Session fixtures: the real `fake-upstream` and `tollgate` binaries, a generated config,
credits, and keys.

Binaries come from `TOLLGATE_BIN` / `FAKE_UPSTREAM_BIN`, else `<repo>/target/debug/`.
They are never built from here: build them first (tests/python/run.sh does not either;
the CI script does). Each run works in a fresh temp dir (config, SQLite data, logs), removed
at the end unless TOLLGATE_KEEP_TMP is set; on failure the logs' tails are printed.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gwlib  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

# Everything here talks to 127.0.0.1; never through a proxy.
for _var in ("NO_PROXY", "no_proxy"):
    _have = os.environ.get(_var, "")
    os.environ[_var] = ",".join(x for x in (_have, "127.0.0.1", "localhost") if x)

UPSTREAM_OPENAI_KEY = "up-openai"
UPSTREAM_ANTHROPIC_KEY = "up-anthropic"
UPSTREAM_GEMINI_KEY = "up-gemini"

# Log files of the processes, printed when a test fails.
_LOGS: dict[str, Path] = {}


def _binary(env_var: str, name: str) -> Path:
    explicit = os.environ.get(env_var)
    path = Path(explicit) if explicit else REPO / "target" / "debug" / name
    if not path.is_file():
        pytest.exit(
            f"{name} binary not found at {path}; build it first "
            f"(cargo build -p tollgate-server -p fake-upstream) or set {env_var}",
            returncode=2,
        )
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _tail(path: Path, lines: int = 150) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    return "\n".join(text[-lines:])


class Gateway:
    """The running gateway, its keys, and small helpers for the account API."""

    def __init__(self, url: str, workdir: Path, config: Path, env: dict, fake_addr: str,
                 tollgate_bin: Path):
        self.url = url  # http://127.0.0.1:PORT (no /v1)
        self.api = url + "/v1"
        self.workdir = workdir
        self.config = config
        self.env = env
        self.fake_addr = fake_addr
        self.tollgate_bin = tollgate_bin
        self.provisioning_key = ""
        self.inference_key = ""
        self.inference_key_id = 0

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.tollgate_bin), *args, "--config", str(self.config)],
            cwd=self.workdir, env=self.env, capture_output=True, text=True, timeout=60,
        )

    def account(self, method: str, path: str, **kw) -> requests.Response:
        headers = kw.pop("headers", {})
        headers.setdefault("Authorization", f"Bearer {self.provisioning_key}")
        return requests.request(method, self.api + path, headers=headers, timeout=30, **kw)

    def create_key(self, name: str, credit_limit: float | None = None) -> dict:
        r = self.account("POST", "/account/keys",
                         json={"name": name, "credit_limit": credit_limit})
        assert r.status_code == 201, f"POST /v1/account/keys -> {r.status_code} {r.text}"
        body = r.json()
        assert body["key"], body
        return body

    def key(self, key_id: int) -> dict:
        r = self.account("GET", f"/account/keys/{key_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def balance(self) -> Decimal:
        r = self.account("GET", "/account/balance")
        assert r.status_code == 200, r.text
        return Decimal(r.json()["balance"])

    def activity(self, days: int | None = None) -> dict:
        params = {} if days is None else {"days": days}
        r = self.account("GET", "/account/activity", params=params)
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture(scope="session")
def gateway() -> Gateway:
    tollgate_bin = _binary("TOLLGATE_BIN", "tollgate")
    fake_bin = _binary("FAKE_UPSTREAM_BIN", "fake-upstream")
    workdir = Path(tempfile.mkdtemp(prefix="tollgate-pytest-"))
    fake_log = workdir / "fake-upstream.log"
    server_log = workdir / "tollgate.log"
    _LOGS["fake-upstream"] = fake_log
    _LOGS["tollgate"] = server_log

    env = {k: v for k, v in os.environ.items()
           if k not in ("TOLLGATE_CONFIG", "TOLLGATE_LISTEN", "TOLLGATE_DATABASE_URL",
                        "TOLLGATE_REDIS_URL", "FAKE_UPSTREAM_OPENAI_API_KEY",
                        "FAKE_UPSTREAM_ANTHROPIC_API_KEY",
                        "FAKE_UPSTREAM_GEMINI_API_KEY", "AWS_SESSION_TOKEN",
                        "FAKE_UPSTREAM_AWS_ACCESS_KEY_ID", "FAKE_UPSTREAM_AWS_SECRET_ACCESS_KEY",
                        "FAKE_UPSTREAM_AWS_SESSION_TOKEN")}
    env["FAKE_OPENAI_KEY"] = UPSTREAM_OPENAI_KEY
    env["FAKE_ANTHROPIC_KEY"] = UPSTREAM_ANTHROPIC_KEY
    env["FAKE_GEMINI_KEY"] = UPSTREAM_GEMINI_KEY
    env["AWS_ACCESS_KEY_ID"] = gwlib.FAKE_AWS_ACCESS_KEY_ID
    env["AWS_SECRET_ACCESS_KEY"] = gwlib.FAKE_AWS_SECRET_ACCESS_KEY
    env["FAKE_VERTEX_TOKEN"] = gwlib.FAKE_VERTEX_TOKEN
    env.setdefault("RUST_LOG", "info")
    env["NO_COLOR"] = "1"

    fake = server = None
    fake_log_file = open(fake_log, "wb")
    server_log_file = open(server_log, "wb")
    try:
        # 1. The fake upstream; it prints its address once ready.
        fake = subprocess.Popen(
            [str(fake_bin), "--listen", "127.0.0.1:0",
             "--openai-api-key", UPSTREAM_OPENAI_KEY,
             "--anthropic-api-key", UPSTREAM_ANTHROPIC_KEY,
             "--gemini-api-key", UPSTREAM_GEMINI_KEY,
             "--vertex-access-token", gwlib.FAKE_VERTEX_TOKEN],
            stdout=subprocess.PIPE, stderr=fake_log_file, env=env, cwd=workdir,
        )
        line: list[bytes] = []
        reader = threading.Thread(target=lambda: line.append(fake.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(timeout=15)
        if not line or not line[0].strip():
            raise RuntimeError(f"fake-upstream printed no address:\n{_tail(fake_log)}")
        fake_addr = line[0].decode().strip()

        # 2. The config.
        config = workdir / "tollgate.toml"
        config.write_text(gwlib.config_toml(fake_addr))

        # 3. The gateway, on a free port, from the temp dir (data under ./tollgate-data).
        for _attempt in range(3):
            port = _free_port()
            url = f"http://127.0.0.1:{port}"
            server = subprocess.Popen(
                [str(tollgate_bin), "serve", "--config", str(config),
                 "--listen", f"127.0.0.1:{port}"],
                stdout=server_log_file, stderr=subprocess.STDOUT, env=env, cwd=workdir,
            )
            deadline = time.monotonic() + 30
            ready = False
            while time.monotonic() < deadline and server.poll() is None:
                try:
                    if requests.get(url + "/readyz", timeout=1).status_code == 200:
                        ready = True
                        break
                except requests.RequestException:
                    pass
                time.sleep(0.05)
            if ready:
                break
            _stop(server)
            if "cannot listen" not in _tail(server_log):
                raise RuntimeError(f"tollgate did not become ready:\n{_tail(server_log)}")
        else:
            raise RuntimeError(f"tollgate could not bind a port:\n{_tail(server_log)}")

        gw = Gateway(url, workdir, config, env, fake_addr, tollgate_bin)

        # 4. The bootstrap provisioning key, credits, an inference key.
        key_file = workdir / "tollgate-data" / "provisioning-key.txt"
        assert key_file.is_file(), f"no {key_file}:\n{_tail(server_log)}"
        gw.provisioning_key = key_file.read_text().strip()
        granted = gw.cli("credits", "grant", "default", str(gwlib.GRANTED))
        assert granted.returncode == 0, f"credits grant failed: {granted.stdout}{granted.stderr}"
        # The server re-reads grants made by other processes (every second or so).
        deadline = time.monotonic() + 15
        while gw.balance() != gwlib.GRANTED:
            assert time.monotonic() < deadline, f"balance is {gw.balance()}, not {gwlib.GRANTED}"
            time.sleep(0.1)
        created = gw.create_key("python-openai-sdk")
        gw.inference_key = created["key"]
        gw.inference_key_id = created["id"]
        yield gw
    finally:
        _stop(server)
        _stop(fake)
        fake_log_file.close()
        server_log_file.close()
        if os.environ.get("TOLLGATE_KEEP_TMP"):
            print(f"\nkept {workdir}", file=sys.stderr)
        else:
            # Logs are printed from pytest_terminal_summary; keep them until then.
            _CLEANUP.append(workdir)


_CLEANUP: list[Path] = []


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    failed = terminalreporter.stats.get("failed") or terminalreporter.stats.get("error")
    if failed or exitstatus not in (0, 5):
        for name, path in _LOGS.items():
            terminalreporter.section(f"{name} log (last lines of {path.name})")
            terminalreporter.write_line(_tail(path))
    for d in _CLEANUP:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def gw_url(gateway: Gateway) -> str:
    return gateway.url


@pytest.fixture(scope="session")
def inference_key(gateway: Gateway) -> str:
    return gateway.inference_key
