"""The official `anthropic` SDK against Claude on AWS Bedrock (InvokeModel with the
Messages body, event-stream chunks) and on Google Vertex AI (rawPredict /
streamRawPredict), through the gateway's `/v1/messages`: plain, streamed, tool use
round trips and prompt caching, each request's cost computed from the usage the client saw
and compared with what was charged, to the nano-dollar, under its own key."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
import requests
from anthropic import Anthropic

import gwlib
from gwlib import EXPECTED_TEXT, tool_arg_tokens

MODELS = ["claude-bedrock", "claude-vertex"]
SYSTEM = "You are a terse assistant."
TOOLS = [{"name": "get_weather", "description": "Current weather for a city.",
          "input_schema": {"type": "object", "properties": {"location": {"type": "string"}},
                           "required": ["location"]}}]
TOOL_ARGS = {"location": "Paris"}
TOOL_QUESTION = "What is the weather in Paris right now? [[fake:tool]]"


@pytest.fixture(scope="module")
def key(gateway) -> dict:
    return gateway.create_key("python-cloud-claude")


@pytest.fixture(scope="module")
def client(gateway, key) -> Anthropic:
    return Anthropic(base_url=gateway.url, api_key=key["key"], max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def ledger() -> gwlib.Ledger:
    return gwlib.Ledger()


def usage_args(usage) -> dict:
    cached = usage.cache_read_input_tokens or 0
    written = usage.cache_creation_input_tokens or 0
    return {"input_tokens": usage.input_tokens + cached + written, "cached": cached,
            "cache_write": written, "output_tokens": usage.output_tokens}


@pytest.mark.parametrize("model", MODELS)
def test_plain(client, ledger, model):
    raw = client.messages.with_raw_response.create(
        model=model, max_tokens=256, system=SYSTEM,
        messages=[{"role": "user", "content": "Say hello to the gateway."}])
    message = raw.parse()
    expected = ledger.add(f"plain {model}", model, **usage_args(message.usage))
    assert Decimal(raw.headers["x-tollgate-cost"]) == expected
    assert message.model == model
    assert message.content[0].text == EXPECTED_TEXT
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == (4 + 5) + (4 + 5)
    assert message.usage.output_tokens == 12


@pytest.mark.parametrize("model", MODELS)
def test_streamed(client, ledger, model):
    with client.messages.stream(model=model, max_tokens=256,
                                messages=[{"role": "user", "content": "Stream [[fake:words=7]]"}]) as s:
        pieces = list(s.text_stream)
        final = s.get_final_message()
    ledger.add(f"streamed {model}", model, **usage_args(final.usage))
    assert "".join(pieces) == gwlib.fake_text(7)
    assert len(pieces) == 7
    assert final.usage.output_tokens == 7


@pytest.mark.parametrize("model", MODELS)
def test_tool_use_round_trip_streamed(client, ledger, model):
    messages = [{"role": "user", "content": TOOL_QUESTION}]
    with client.messages.stream(model=model, max_tokens=256, system=SYSTEM, tools=TOOLS,
                                messages=messages) as s:
        first = s.get_final_message()
    ledger.add(f"tool use {model}", model, **usage_args(first.usage))
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    assert call.name == "get_weather" and call.input == TOOL_ARGS
    assert first.usage.output_tokens == tool_arg_tokens(json.dumps(TOOL_ARGS, separators=(",", ":")))
    messages += [{"role": "assistant", "content": first.content},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                               "content": "Sunny, 21 °C"}]}]
    second = client.messages.create(model=model, max_tokens=256, system=SYSTEM, tools=TOOLS,
                                    messages=messages)
    ledger.add(f"tool result {model}", model, **usage_args(second.usage))
    assert second.stop_reason == "end_turn"
    assert second.content[0].text == EXPECTED_TEXT


@pytest.mark.parametrize("model", MODELS)
def test_prompt_caching_is_priced(client, ledger, model):
    raw = client.messages.with_raw_response.create(
        model=model, max_tokens=64, system=SYSTEM,
        messages=[{"role": "user", "content": "Cache this [[fake:cached=3,cache_write=4,words=2]]"}])
    message = raw.parse()
    assert message.usage.cache_read_input_tokens == 3
    assert message.usage.cache_creation_input_tokens == 4
    expected = ledger.add(f"cached {model}", model, **usage_args(message.usage))
    assert Decimal(raw.headers["x-tollgate-cost"]) == expected


def test_charged_to_the_nano_dollar(gateway, key, ledger):
    if not ledger.entries:
        pytest.skip("no metered request of this module ran")
    own = requests.get(gateway.api + "/key",
                       headers={"Authorization": f"Bearer {key['key']}"}, timeout=10)
    assert own.status_code == 200, own.text
    assert Decimal(own.json()["usage"]) == ledger.total, "\n" + ledger.describe()
