"""The official `anthropic` SDK against the gateway's `/v1/messages`.

Base URL is the gateway root (the SDK adds `/v1`). Each test runs against
`gpt-4.1-mini` (served by the OpenAI-compatible upstream: the gateway translates) and
`claude-sonnet-4-5` (served natively by the Anthropic upstream). Requests are metered into
a ledger that the last test compares with the gateway's accounting.
"""

from __future__ import annotations

import json
from decimal import Decimal

import anthropic
import pytest
from anthropic import Anthropic

import gwlib
from gwlib import EXPECTED_TEXT, tool_arg_tokens

MODELS = ["gpt-4.1-mini", "claude-sonnet-4-5"]
SYSTEM = "You are a terse assistant."
TOOLS = [
    {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "input_schema": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location"],
        },
    }
]
# The fake fills the required properties, as a model does.
TOOL_ARGS = {"location": "Paris"}
TOOL_ARGS_TOKENS = tool_arg_tokens(json.dumps(TOOL_ARGS, separators=(",", ":")))
TOOL_QUESTION = "What is the weather in Paris right now? [[fake:tool]]"
TOOL_RESULT_TEXT = "Sunny, 21 °C"


@pytest.fixture(scope="module")
def key(gateway) -> dict:
    return gateway.create_key("python-anthropic-sdk")


@pytest.fixture(scope="module")
def client(gateway, key) -> Anthropic:
    return Anthropic(base_url=gateway.url, api_key=key["key"], max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def ledger() -> gwlib.Ledger:
    return gwlib.Ledger()


def message_tokens(n_words: int) -> int:
    return 4 + n_words


def usage_args(usage) -> dict:
    cached = usage.cache_read_input_tokens or 0
    written = usage.cache_creation_input_tokens or 0
    return {"input_tokens": usage.input_tokens + cached + written, "cached": cached,
            "cache_write": written, "output_tokens": usage.output_tokens}


def header_cost(raw) -> Decimal:
    value = raw.headers.get("x-tollgate-cost")
    assert value is not None, "no x-tollgate-cost header on a non-streamed response"
    return Decimal(value)


HELLO = "Say hello to the gateway."
HELLO_TOKENS = message_tokens(gwlib.words(SYSTEM)) + message_tokens(gwlib.words(HELLO))


@pytest.mark.parametrize("model", MODELS)
def test_messages_plain(client, ledger, model):
    raw = client.messages.with_raw_response.create(
        model=model, max_tokens=256, system=SYSTEM,
        messages=[{"role": "user", "content": HELLO}])
    message = raw.parse()
    expected = ledger.add(f"messages plain {model}", model, **usage_args(message.usage))
    assert header_cost(raw) == expected
    assert message.type == "message" and message.role == "assistant"
    assert message.id
    if model == "gpt-4.1-mini":
        assert message.model == "gpt-4.1-mini"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == EXPECTED_TEXT
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == HELLO_TOKENS
    assert message.usage.output_tokens == 12


@pytest.mark.parametrize("model", MODELS)
def test_messages_stream(client, ledger, model):
    with client.messages.stream(model=model, max_tokens=256, system=SYSTEM,
                                messages=[{"role": "user", "content": HELLO}]) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    ledger.add(f"messages stream {model}", model, **usage_args(final.usage))
    assert "".join(pieces) == EXPECTED_TEXT
    assert len(pieces) == 12, pieces
    assert final.content[0].text == EXPECTED_TEXT
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 12
    assert final.usage.input_tokens == HELLO_TOKENS


@pytest.mark.parametrize("model", MODELS)
def test_messages_max_tokens_and_stop_sequence(client, ledger, model):
    capped = client.messages.create(model=model, max_tokens=4, system=SYSTEM,
                                    messages=[{"role": "user", "content": HELLO}])
    ledger.add(f"messages capped {model}", model, **usage_args(capped.usage))
    assert capped.stop_reason == "max_tokens"
    assert capped.content[0].text == gwlib.fake_text(4)
    assert capped.usage.output_tokens == 4

    stopped = client.messages.create(model=model, max_tokens=256, system=SYSTEM,
                                     stop_sequences=["café"],
                                     messages=[{"role": "user", "content": HELLO}])
    ledger.add(f"messages stop sequence {model}", model, **usage_args(stopped.usage))
    assert stopped.content[0].text == gwlib.fake_text(6)
    assert stopped.usage.output_tokens == 6
    if model == "claude-sonnet-4-5":
        assert stopped.stop_reason == "stop_sequence"
        assert stopped.stop_sequence == "café"
    else:
        # Chat Completions does not say which stop sequence matched.
        assert stopped.stop_reason in ("end_turn", "stop_sequence")


def tool_use_of(message):
    blocks = [b for b in message.content if b.type == "tool_use"]
    assert len(blocks) == 1, message.content
    return blocks[0]


@pytest.mark.parametrize("model", MODELS)
def test_tool_use_round_trip(client, ledger, model):
    messages = [{"role": "user", "content": TOOL_QUESTION}]
    raw = client.messages.with_raw_response.create(
        model=model, max_tokens=256, system=SYSTEM, tools=TOOLS, messages=messages)
    first = raw.parse()
    expected = ledger.add(f"tool use {model}", model, **usage_args(first.usage))
    assert header_cost(raw) == expected
    assert first.stop_reason == "tool_use"
    call = tool_use_of(first)
    assert call.id and call.name == "get_weather"
    assert call.input == TOOL_ARGS
    assert first.usage.output_tokens == TOOL_ARGS_TOKENS
    assert first.usage.input_tokens == (message_tokens(gwlib.words(SYSTEM))
                                        + message_tokens(gwlib.words(TOOL_QUESTION)))

    # The documented pattern: send the assistant's content back as it came.
    messages = messages + [
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call.id, "content": TOOL_RESULT_TEXT}]},
    ]
    raw = client.messages.with_raw_response.create(
        model=model, max_tokens=256, system=SYSTEM, tools=TOOLS, messages=messages)
    second = raw.parse()
    expected = ledger.add(f"tool result {model}", model, **usage_args(second.usage))
    assert header_cost(raw) == expected
    assert second.stop_reason == "end_turn"
    assert [b.type for b in second.content] == ["text"]
    assert second.content[0].text == EXPECTED_TEXT
    assistant_words = sum(gwlib.words(b.text) for b in first.content if b.type == "text")
    assert second.usage.input_tokens == (
        message_tokens(gwlib.words(SYSTEM)) + message_tokens(gwlib.words(TOOL_QUESTION))
        + message_tokens(assistant_words) + message_tokens(gwlib.words(TOOL_RESULT_TEXT)))


@pytest.mark.parametrize("model", MODELS)
def test_tool_use_round_trip_streamed(client, ledger, model):
    messages = [{"role": "user", "content": TOOL_QUESTION}]
    json_deltas = []
    with client.messages.stream(model=model, max_tokens=256, system=SYSTEM, tools=TOOLS,
                                messages=messages) as stream:
        for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                json_deltas.append(event.delta.partial_json)
        first = stream.get_final_message()
    ledger.add(f"tool use streamed {model}", model, **usage_args(first.usage))
    assert first.stop_reason == "tool_use"
    call = tool_use_of(first)
    assert call.id and call.name == "get_weather"
    assert call.input == TOOL_ARGS
    assert json.loads("".join(json_deltas)) == TOOL_ARGS
    assert len(json_deltas) > 1, "the tool input was not streamed in pieces"
    assert first.usage.output_tokens == TOOL_ARGS_TOKENS

    messages = messages + [
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": call.id, "name": call.name, "input": call.input}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call.id,
             "content": [{"type": "text", "text": TOOL_RESULT_TEXT}]}]},
    ]
    with client.messages.stream(model=model, max_tokens=256, system=SYSTEM, tools=TOOLS,
                                messages=messages) as stream:
        text = "".join(stream.text_stream)
        second = stream.get_final_message()
    ledger.add(f"tool result streamed {model}", model, **usage_args(second.usage))
    assert text == EXPECTED_TEXT
    assert second.stop_reason == "end_turn"
    assert second.usage.output_tokens == 12


def test_prompt_caching_is_priced(client, ledger):
    """Native Anthropic cache reads and writes, each at its own price."""
    prompt = "Summarise the shared context again. [[fake:cached=6,cache_write=4]]"
    raw = client.messages.with_raw_response.create(
        model="claude-sonnet-4-5", max_tokens=256, system=SYSTEM,
        messages=[{"role": "user", "content": prompt}])
    message = raw.parse()
    expected = ledger.add("messages cached", "claude-sonnet-4-5", **usage_args(message.usage))
    assert header_cost(raw) == expected
    total = message_tokens(gwlib.words(SYSTEM)) + message_tokens(gwlib.words(prompt))
    assert message.usage.cache_read_input_tokens == 6
    assert message.usage.cache_creation_input_tokens == 4
    assert message.usage.input_tokens == total - 10


# ---------------------------------------------------------------------------------------
# errors, in Anthropic's shape
# ---------------------------------------------------------------------------------------

def test_bad_key_is_authentication_error(gateway):
    bad = Anthropic(base_url=gateway.url, api_key="tg-this-is-not-a-key", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as e:
        bad.messages.create(model="claude-sonnet-4-5", max_tokens=64,
                            messages=[{"role": "user", "content": "Hi"}])
    assert e.value.status_code == 401
    assert e.value.body["type"] == "error"
    assert e.value.body["error"]["type"] == "authentication_error"
    assert "tg-this-is-not-a-key" not in json.dumps(e.value.body)


def test_unknown_model_is_not_found(client):
    with pytest.raises(anthropic.NotFoundError) as e:
        client.messages.create(model="no-such-model", max_tokens=64,
                               messages=[{"role": "user", "content": "Hi"}])
    assert e.value.status_code == 404
    assert e.value.body["type"] == "error"
    assert e.value.body["error"]["type"] == "not_found_error"
    assert "no-such-model" in e.value.body["error"]["message"]


def test_zero_credit_limit_is_402(gateway):
    created = gateway.create_key("python-anthropic-zero-limit", credit_limit=0)
    broke = Anthropic(base_url=gateway.url, api_key=created["key"], max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as e:
        broke.messages.create(model="claude-sonnet-4-5", max_tokens=64,
                              messages=[{"role": "user", "content": "Hi"}])
    assert e.value.status_code == 402
    assert e.value.body["type"] == "error"


@pytest.mark.parametrize("model", MODELS)
def test_upstream_failure_is_502(client, ledger, model):
    with pytest.raises(anthropic.APIStatusError) as e:
        client.messages.create(model=model, max_tokens=64, messages=[
            {"role": "user", "content": "Break please. [[fake:status=500]]"}])
    ledger.failed += 1
    assert e.value.status_code == 502
    assert e.value.body["type"] == "error"


@pytest.mark.parametrize("directive", ["error_after=3", "cut_after=3"])
@pytest.mark.parametrize("model", MODELS)
def test_stream_failing_midway_ends_with_an_error_event(gateway, model, directive):
    """A stream that breaks after it started ends with Anthropic's `error` event, which
    the SDK raises; what it delivered is charged (on a separate key)."""
    created = gateway.create_key(f"python-anthropic-broken-{model}-{directive}")
    broken = Anthropic(base_url=gateway.url, api_key=created["key"], max_retries=0,
                       timeout=30)
    pieces = []
    with pytest.raises(anthropic.APIError) as e:
        with broken.messages.stream(model=model, max_tokens=256, messages=[
                {"role": "user", "content": f"Tell me more. [[fake:{directive}]]"}]) as stream:
            for text in stream.text_stream:
                pieces.append(text)
    assert "".join(pieces) == gwlib.fake_text(3)
    assert not isinstance(e.value, anthropic.APIConnectionError), repr(e.value)
    assert Decimal(gateway.key(created["id"])["usage"]) > 0, "delivered output was free"


# ---------------------------------------------------------------------------------------
# metering
# ---------------------------------------------------------------------------------------

def test_metering_matches_to_the_nano_dollar(gateway, key, ledger):
    if not ledger.entries:
        pytest.skip("no metered request of this module ran")
    detail = "\nexpected per request:\n" + ledger.describe()
    got = gateway.key(key["id"])
    assert Decimal(got["usage"]) == ledger.total, f"key usage {got['usage']}" + detail
    activity = gateway.activity(days=7)
    assert activity["period_days"] == 7
    mine = [k for k in activity["api_key_usage"] if k["api_key_id"] == key["id"]]
    assert len(mine) == 1, activity["api_key_usage"]
    mine = mine[0]
    assert Decimal(mine["total_cost"]) == ledger.total, f"activity {mine}" + detail
    assert mine["total_input_tokens"] == ledger.input_tokens, mine
    assert mine["total_output_tokens"] == ledger.output_tokens, mine
    n = len(ledger.entries)
    assert n <= mine["request_count"] <= n + ledger.failed, mine
