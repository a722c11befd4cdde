"""The Python examples of the two seed documents, run as written.

Each example is kept verbatim below; only the base URL (`https://api.naga.ac/v1`) and
the placeholder keys are replaced before it runs. The output it prints is checked.
"""

from __future__ import annotations

import contextlib
import io
import re
from decimal import Decimal
from pathlib import Path

import pytest
import requests

import gwlib

# The design documents sit beside the repository (../shared/seeds), in CI too.
SEEDS_DIR = Path(__file__).resolve().parents[3] / "shared" / "seeds"

# ---- seed 000 (account key management): "Create A Key" --------------------------------
CREATE_KEY_EXAMPLE = '''import requests

response = requests.post(
    "https://api.naga.ac/v1/account/keys",
    headers={
        "Authorization": "Bearer YOUR_PROVISIONING_KEY",
        "Content-Type": "application/json",
    },
    json={
        "name": "CI worker",
        "credit_limit": 25.0,
    },
)
response.raise_for_status()

key_data = response.json()
print(key_data["id"])
print(key_data.get("key"))'''

# ---- seed 001 (authentication): "Standard request example" ----------------------------
STANDARD_REQUEST_EXAMPLE = '''import requests

response = requests.post(
    "https://api.naga.ac/v1/responses",
    headers={
        "Authorization": "Bearer YOUR_API_KEY",
        "Content-Type": "application/json",
    },
    json={
        "model": "gpt-4.1-mini",
        "input": "Say hello.",
    },
)
response.raise_for_status()

print(response.json()["output"][0]["content"][0]["text"])'''

# ---- seed 001 (authentication): "Account request example" -----------------------------
ACCOUNT_REQUEST_EXAMPLE = '''import requests

response = requests.get(
    "https://api.naga.ac/v1/account/balance",
    headers={"Authorization": "Bearer YOUR_PROVISIONING_KEY"},
)
response.raise_for_status()

print(response.json()["balance"])'''

SEED_URL = "https://api.naga.ac/v1"


def _seed_text(name_prefix: str) -> str | None:
    if not SEEDS_DIR.is_dir():
        return None
    for p in SEEDS_DIR.glob(f"{name_prefix}_*.txt"):
        return p.read_text()
    return None


@pytest.mark.parametrize(
    "seed,example",
    [("000", CREATE_KEY_EXAMPLE), ("001", STANDARD_REQUEST_EXAMPLE),
     ("001", ACCOUNT_REQUEST_EXAMPLE)],
    ids=["create-key", "standard-request", "account-request"],
)
def test_examples_are_verbatim(seed, example):
    text = _seed_text(seed)
    assert text is not None, f"seed document {seed} not found in {SEEDS_DIR}"
    assert example in text


def run_example(code: str, gateway, *, api_key: str | None = None) -> tuple[str, dict]:
    """Runs an example with only the base URL and placeholder keys replaced; returns
    what it printed and its namespace."""
    code = code.replace(SEED_URL, gateway.api)
    code = code.replace("YOUR_PROVISIONING_KEY", gateway.provisioning_key)
    if api_key is not None:
        code = code.replace("YOUR_API_KEY", api_key)
    assert "api.naga.ac" not in code and "YOUR_" not in code
    out = io.StringIO()
    namespace: dict = {"__name__": "__seed_example__"}
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<seed example>", "exec"), namespace)
    return out.getvalue(), namespace


@pytest.fixture(scope="module")
def created_key(gateway):
    """The 'Create A Key' example, run once: (printed, namespace)."""
    return run_example(CREATE_KEY_EXAMPLE, gateway)


def test_create_key_example(gateway, created_key):
    printed, ns = created_key
    lines = printed.splitlines()
    assert len(lines) == 2, printed
    key_id, plaintext = lines
    assert re.fullmatch(r"[1-9][0-9]*", key_id), f"id printed as {key_id!r}"
    assert plaintext not in ("", "None"), "the plaintext key was not returned"
    assert ns["response"].status_code == 201
    body = ns["key_data"]
    assert isinstance(body["id"], int)
    assert body["name"] == "CI worker"
    assert body["credit_limit"] == 25.0
    assert body["is_enabled"] is True
    assert body["expires_at"] is None
    assert body["created_at"]
    assert body["message"]
    # The key is stored: listed (without key material) and fetchable by id.
    listed = gateway.account("GET", "/account/keys").json()["keys"]
    mine = [k for k in listed if k["id"] == body["id"]]
    assert len(mine) == 1 and mine[0]["name"] == "CI worker"
    assert plaintext not in gateway.account("GET", "/account/keys").text
    one = gateway.key(body["id"])
    assert one["id"] == body["id"] and one["credit_limit"] == 25.0
    assert plaintext not in str(one)
    # And it works as an inference key.
    r = requests.get(gateway.api + "/key", headers={"Authorization": f"Bearer {plaintext}"},
                     timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == body["id"]


def test_standard_request_example(gateway, created_key):
    printed_key = created_key[0].splitlines()[1]
    printed, ns = run_example(STANDARD_REQUEST_EXAMPLE, gateway, api_key=printed_key)
    assert printed == gwlib.EXPECTED_TEXT + "\n"
    assert ns["response"].status_code == 200


def test_standard_request_example_with_x_api_key(gateway, created_key):
    printed_key = created_key[0].splitlines()[1]
    code = STANDARD_REQUEST_EXAMPLE.replace(
        '"Authorization": "Bearer YOUR_API_KEY"', '"x-api-key": "YOUR_API_KEY"')
    assert code != STANDARD_REQUEST_EXAMPLE
    printed, _ = run_example(code, gateway, api_key=printed_key)
    assert printed == gwlib.EXPECTED_TEXT + "\n"


def test_standard_request_is_metered_on_the_created_key(gateway, created_key):
    """The example's request ("Say hello." -> 12 words) costs what the prices say."""
    key_id = int(created_key[0].splitlines()[0])
    plaintext = created_key[0].splitlines()[1]
    before = Decimal(gateway.key(key_id)["usage"])
    r = requests.post(gateway.api + "/responses",
                      headers={"x-api-key": plaintext},
                      json={"model": "gpt-4.1-mini", "input": "Say hello."}, timeout=30)
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert usage["input_tokens"] == 4 + 2 and usage["output_tokens"] == 12
    expected = gwlib.cost("gpt-4.1-mini", input_tokens=6, output_tokens=12)
    assert Decimal(r.headers["x-tollgate-cost"]) == expected
    after = gateway.key(key_id)
    assert Decimal(after["usage"]) - before == expected
    assert Decimal(after["limit_remaining"]) == Decimal("25") - Decimal(after["usage"])


def test_account_request_example(gateway):
    printed, ns = run_example(ACCOUNT_REQUEST_EXAMPLE, gateway)
    balance = ns["response"].json()["balance"]
    assert isinstance(balance, str), f"balance is {balance!r}, not a string"
    assert printed == balance + "\n"
    assert re.fullmatch(r"-?[0-9]+\.[0-9]{2,9}", balance), balance
    assert Decimal("0") < Decimal(balance) <= gwlib.GRANTED


# ---- the rest of the seeds, as plain requests --------------------------------------------

def test_other_key_operations(gateway):
    """Seed 000's table: list, get, update (rename/disable/limit), delete."""
    created = gateway.create_key("staging", credit_limit=5)
    key_id, plaintext = created["id"], created["key"]
    auth = {"Authorization": f"Bearer {plaintext}"}
    r = gateway.account("PATCH", f"/account/keys/{key_id}",
                        json={"name": "staging-2", "credit_limit": 7.5})
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "staging-2" and r.json()["credit_limit"] == 7.5
    r = gateway.account("PATCH", f"/account/keys/{key_id}", json={"is_enabled": False})
    assert r.status_code == 200 and r.json()["is_enabled"] is False
    assert r.json()["name"] == "staging-2"
    assert requests.get(gateway.api + "/key", headers=auth, timeout=10).status_code == 401
    r = gateway.account("PATCH", f"/account/keys/{key_id}",
                        json={"is_enabled": True, "credit_limit": None})
    assert r.status_code == 200 and r.json()["credit_limit"] is None
    assert requests.get(gateway.api + "/key", headers=auth, timeout=10).status_code == 200
    r = gateway.account("DELETE", f"/account/keys/{key_id}")
    assert r.status_code == 204 and r.content == b""
    assert requests.get(gateway.api + "/key", headers=auth, timeout=10).status_code == 401
    assert gateway.account("GET", f"/account/keys/{key_id}").status_code == 404


def test_wrong_kind_of_key(gateway, inference_key):
    """Seed 001's common mistakes: each kind of key is refused where the other belongs."""
    r = requests.get(gateway.api + "/account/balance",
                     headers={"Authorization": f"Bearer {inference_key}"}, timeout=10)
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"
    assert inference_key not in r.text
    r = requests.post(gateway.api + "/responses",
                      headers={"Authorization": f"Bearer {gateway.provisioning_key}"},
                      json={"model": "gpt-4.1-mini", "input": "Say hello."}, timeout=10)
    assert r.status_code == 401
    assert gateway.provisioning_key not in r.text


def test_public_endpoints(gateway, inference_key):
    anon = requests.get(gateway.api + "/models", timeout=10)
    assert anon.status_code == 200
    ids = {m["id"] for m in anon.json()["data"]}
    assert set(gwlib.MODELS) <= ids
    authed = requests.get(gateway.api + "/models",
                          headers={"Authorization": f"Bearer {inference_key}"}, timeout=10)
    assert authed.status_code == 200
    startups = requests.get(gateway.api + "/startups", timeout=10)
    assert startups.status_code == 200
    assert startups.json()["object"] == "list"
    assert startups.json()["data"][0]["url"] == "https://example.com"
