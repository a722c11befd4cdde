"""The official `openai` SDK against a Bedrock Converse model (kind `bedrock`, Amazon Nova on
the fake's SigV4-checking Converse / ConverseStream with the AWS event-stream framing):
plain, streamed and tool calls, each request's cost computed here from the usage the client
saw and compared with what was charged, to the nano-dollar, under its own key."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
import requests
from openai import OpenAI

import gwlib

MODEL = "nova-pro"
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]


@pytest.fixture(scope="module")
def bedrock_key(gateway) -> dict:
    return gateway.create_key("python-bedrock")


@pytest.fixture(scope="module")
def client(gateway, bedrock_key) -> OpenAI:
    return OpenAI(base_url=gateway.api, api_key=bedrock_key["key"], max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def ledger() -> gwlib.Ledger:
    return gwlib.Ledger()


def usage_of(usage) -> dict:
    details = usage.prompt_tokens_details
    cached = (details.cached_tokens or 0) if details is not None else 0
    return {"input_tokens": usage.prompt_tokens, "cached": cached,
            "output_tokens": usage.completion_tokens}


def test_plain_with_cache(client, ledger):
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, max_completion_tokens=100,
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "Hello Nova [[fake:words=5,cached=2]]"}])
    completion = raw.parse()
    assert completion.model == MODEL
    assert completion.choices[0].message.content == gwlib.fake_text(5)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens == 5
    # Input: the system message (4 + 2) and the user's (4 + 3).
    assert completion.usage.prompt_tokens == 13
    assert completion.usage.prompt_tokens_details.cached_tokens == 2
    expected = ledger.add("bedrock plain", MODEL, **usage_of(completion.usage))
    assert Decimal(raw.headers["x-tollgate-cost"]) == expected


def test_max_tokens_is_a_length_finish(client, ledger):
    completion = client.chat.completions.create(
        model=MODEL, max_completion_tokens=3,
        messages=[{"role": "user", "content": "Long answer please"}])
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == gwlib.fake_text(3)
    ledger.add("bedrock capped", MODEL, **usage_of(completion.usage))


def test_streamed(client, ledger):
    stream = client.chat.completions.create(
        model=MODEL, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Stream please [[fake:words=7]]"}])
    text, usage, finish = "", None, None
    for chunk in stream:
        assert chunk.model == MODEL
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == gwlib.fake_text(7)
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == 7
    ledger.add("bedrock streamed", MODEL, **usage_of(usage))


def test_tool_call_round_trip(client, ledger):
    messages = [{"role": "user", "content": "Weather in Paris? [[fake:tool]]"}]
    first = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)
    ledger.add("bedrock tool call", MODEL, **usage_of(first.usage))
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    second = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content
    ledger.add("bedrock tool result", MODEL, **usage_of(second.usage))


def test_streamed_tool_call(client, ledger):
    stream = client.chat.completions.create(
        model=MODEL, stream=True, stream_options={"include_usage": True}, tools=TOOLS,
        messages=[{"role": "user", "content": "Weather? [[fake:tool]]"}])
    name, arguments, usage = None, "", None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.tool_calls:
            call = chunk.choices[0].delta.tool_calls[0]
            name = call.function.name or name
            arguments += call.function.arguments or ""
        if chunk.usage is not None:
            usage = chunk.usage
    assert name == "get_weather" and json.loads(arguments) == {"city": "Paris"}
    ledger.add("bedrock streamed tool call", MODEL, **usage_of(usage))


def test_charged_to_the_nano_dollar(gateway, bedrock_key, ledger):
    if not ledger.entries:
        pytest.skip("no metered request of this module ran")
    own = requests.get(gateway.api + "/key",
                       headers={"Authorization": f"Bearer {bedrock_key['key']}"}, timeout=10)
    assert own.status_code == 200, own.text
    assert Decimal(own.json()["usage"]) == ledger.total, "\n" + ledger.describe()
