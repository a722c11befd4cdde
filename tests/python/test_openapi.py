"""schemathesis against /openapi.json: a gateway of its own (schemathesis creates,
changes and deletes keys and accounts), every operation fuzzed with the key it takes,
and no server error and no answer that contradicts the document."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
CHECKS = ",".join([
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def own_gateway():
    binary = Path(os.environ.get("TOLLGATE_BIN") or REPO / "target" / "debug" / "tollgate")
    workdir = Path(tempfile.mkdtemp(prefix="tollgate-openapi-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    port = _free_port()
    log = open(workdir / "log.txt", "wb")
    proc = subprocess.Popen([str(binary), "serve", "--listen", f"127.0.0.1:{port}"],
                            cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while True:
            try:
                if requests.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.time() < deadline, (workdir / "log.txt").read_text()
            time.sleep(0.1)
        prov = (workdir / "tollgate-data" / "provisioning-key.txt").read_text().strip()
        minted = subprocess.run([str(binary), "operator-keys", "create"], cwd=workdir, env=env,
                                capture_output=True, text=True, timeout=60, check=True)
        operator = minted.stdout.strip()
        created = requests.post(url + "/v1/account/keys", json={"name": "schemathesis"},
                                headers={"Authorization": f"Bearer {prov}"}, timeout=10)
        assert created.status_code == 201, created.text
        yield {"url": url, "provisioning": prov, "operator": operator,
               "inference": created.json()["key"], "log": workdir / "log.txt"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        if not os.environ.get("TOLLGATE_KEEP_TMP"):
            shutil.rmtree(workdir, ignore_errors=True)


def _schemathesis(gw: dict, key: str, *selection: str) -> None:
    cli = Path(sys.executable).with_name("schemathesis")
    result = subprocess.run(
        [str(cli), "run", gw["url"] + "/openapi.json", "--checks", CHECKS,
         "-H", f"Authorization: Bearer {key}", "--max-examples", "25", "--seed", "1",
         *selection],
        capture_output=True, text=True, timeout=900,
        env={**os.environ, "NO_COLOR": "1", "NO_PROXY": "127.0.0.1,localhost"},
    )
    tail = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, tail + "\n--- gateway log ---\n" + gw["log"].read_text()[-4000:]
    assert " passed" in result.stdout, tail


def test_the_document_is_openapi_3_1_and_lists_every_surface(own_gateway):
    doc = requests.get(own_gateway["url"] + "/openapi.json", timeout=10).json()
    assert doc["openapi"] == "3.1.0"
    for path in ["/v1/chat/completions", "/v1/messages", "/v1/models", "/v1/account/keys",
                 "/v1/account/requests", "/v1/admin/accounts", "/healthz"]:
        assert path in doc["paths"], path


def test_account_and_public_endpoints_conform(own_gateway):
    _schemathesis(own_gateway, own_gateway["provisioning"],
                  "--include-path-regex", "^/(v1/account|v1/startups|healthz|readyz|openapi)")


def test_model_endpoints_conform(own_gateway):
    _schemathesis(own_gateway, own_gateway["inference"],
                  "--include-path-regex", "^/v1/(chat|responses|messages|completions|embeddings|images|audio|moderations|models|key)")


def test_operator_endpoints_conform(own_gateway):
    _schemathesis(own_gateway, own_gateway["operator"], "--include-path-regex", "^/v1/admin")
