"""The official `openai` SDK against the gateway, every endpoint, with exact metering.

Every request of this module is made with the session's inference key and written to a
ledger with the cost computed here from the usage the SDK saw and the config's prices;
the last test compares the ledger with what the gateway charged.
"""

from __future__ import annotations

import array
import base64
import io
import json
import math
import struct
import sys
import wave
from decimal import Decimal

import openai
import pytest
import requests
from openai import OpenAI

import gwlib
from gwlib import EXPECTED_TEXT, chat_input_tokens, tool_arg_tokens

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {"type": "string", "description": "City name"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["location"],
            },
        },
    }
]
# The fake fills the required properties, as a model does.
TOOL_ARGS = {"location": "Paris"}
TOOL_ARGS_TOKENS = tool_arg_tokens(json.dumps(TOOL_ARGS, separators=(",", ":")))

SYSTEM = {"role": "system", "content": "You are a terse assistant."}


@pytest.fixture(scope="module")
def client(gateway) -> OpenAI:
    return OpenAI(base_url=gateway.api, api_key=gateway.inference_key, max_retries=0,
                  timeout=30)


@pytest.fixture(scope="module")
def ledger() -> gwlib.Ledger:
    return gwlib.Ledger()


def header_cost(raw) -> Decimal:
    value = raw.headers.get("x-tollgate-cost")
    assert value is not None, "no x-tollgate-cost header on a non-streamed response"
    return Decimal(value)


def chat_usage(usage) -> dict:
    details = usage.prompt_tokens_details
    cached = (details.cached_tokens or 0) if details is not None else 0
    return {"input_tokens": usage.prompt_tokens, "cached": cached,
            "output_tokens": usage.completion_tokens}


def responses_usage(usage) -> dict:
    details = usage.input_tokens_details
    cached = (details.cached_tokens or 0) if details is not None else 0
    return {"input_tokens": usage.input_tokens, "cached": cached,
            "output_tokens": usage.output_tokens}


def wav_bytes(seconds: float, rate: int = 16000) -> bytes:
    """A mono 16-bit PCM WAV of a 440 Hz tone."""
    frames = array.array("h", (int(8000 * math.sin(2 * math.pi * 440 * i / rate))
                               for i in range(int(seconds * rate))))
    if sys.byteorder != "little":
        frames.byteswap()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames.tobytes())
    return buf.getvalue()


# ---------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------

def test_models_list(client):
    models = {m.id: m for m in client.models.list()}
    assert set(gwlib.MODELS) <= set(models), sorted(models)
    for model_id, spec in gwlib.MODELS.items():
        extra = models[model_id].to_dict()
        assert extra["object"] == "model"
        assert sorted(extra["supported_endpoints"]) == sorted(spec["endpoints"]), model_id
    pricing = models["gpt-4.1-mini"].to_dict()["pricing"]
    assert Decimal(str(pricing["per_input_token"])) == Decimal("0.0000004")
    assert Decimal(str(pricing["per_output_token"])) == Decimal("0.0000016")


# ---------------------------------------------------------------------------------------
# chat completions
# ---------------------------------------------------------------------------------------

def test_chat_plain(client, ledger):
    messages = [SYSTEM, {"role": "user", "content": "Say hello to the gateway."}]
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4.1-mini", messages=messages, max_completion_tokens=64)
    completion = raw.parse()
    expected = ledger.add("chat plain", "gpt-4.1-mini", **chat_usage(completion.usage))
    assert header_cost(raw) == expected
    assert completion.object == "chat.completion"
    assert completion.model.startswith("gpt-4.1-mini")
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == EXPECTED_TEXT
    assert choice.finish_reason == "stop"
    assert completion.usage.prompt_tokens == chat_input_tokens(messages)
    assert completion.usage.completion_tokens == 12
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 12


def test_chat_cached_input_and_length_cap(client, ledger):
    messages = [SYSTEM, {"role": "user",
                         "content": "Repeat the long shared preamble once more. [[fake:cached=8]]"}]
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4.1-mini", messages=messages, max_completion_tokens=5)
    completion = raw.parse()
    expected = ledger.add("chat cached + capped", "gpt-4.1-mini",
                          **chat_usage(completion.usage))
    assert header_cost(raw) == expected
    assert completion.usage.prompt_tokens_details.cached_tokens == 8
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == gwlib.fake_text(5)
    assert completion.usage.completion_tokens == 5


def test_chat_stream_without_usage(client, ledger):
    messages = [SYSTEM, {"role": "user", "content": "Stream a greeting, please."}]
    stream = client.chat.completions.create(model="gpt-4.1-mini", messages=messages,
                                            stream=True)
    chunks = list(stream)
    # The client did not ask for usage: computed from the fake's formulas.
    ledger.add("chat stream (no usage)", "gpt-4.1-mini",
               input_tokens=chat_input_tokens(messages), output_tokens=12)
    assert chunks, "no chunks"
    for chunk in chunks:
        assert chunk.object == "chat.completion.chunk"
        assert chunk.usage is None, f"usage in a chunk the client did not ask for: {chunk}"
        assert "usage" not in chunk.to_dict(), f"usage field in chunk: {chunk.to_dict()}"
        assert chunk.choices, f"a chunk without choices: {chunk.to_dict()}"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == EXPECTED_TEXT
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert len({c.id for c in chunks}) == 1


def test_chat_stream_with_usage(client, ledger):
    messages = [SYSTEM, {"role": "user", "content": "Stream a greeting with usage."}]
    stream = client.chat.completions.create(model="gpt-4.1-mini", messages=messages,
                                            stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    last = chunks[-1]
    assert last.usage is not None, "the last chunk carries no usage"
    ledger.add("chat stream (usage)", "gpt-4.1-mini", **chat_usage(last.usage))
    assert last.choices == []
    for chunk in chunks[:-1]:
        assert chunk.usage is None
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    assert text == EXPECTED_TEXT
    assert last.usage.prompt_tokens == chat_input_tokens(messages)
    assert last.usage.completion_tokens == 12


def test_chat_stream_wire_format(client, ledger):
    """The raw stream as the SDK receives it: SSE, `data:` lines, ending with [DONE]."""
    messages = [{"role": "user", "content": "Stream a greeting, please."}]
    with client.chat.completions.with_streaming_response.create(
            model="gpt-4.1-mini", messages=messages, stream=True) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in resp.iter_lines() if line.strip()]
    ledger.add("chat stream (raw)", "gpt-4.1-mini",
               input_tokens=chat_input_tokens(messages), output_tokens=12)
    assert lines[-1] == "data: [DONE]", lines[-3:]
    payloads = [json.loads(line[len("data: "):]) for line in lines[:-1]
                if line.startswith("data: ")]
    assert payloads and all(p["object"] == "chat.completion.chunk" for p in payloads)
    assert all("usage" not in p for p in payloads)


# ---------------------------------------------------------------------------------------
# responses
# ---------------------------------------------------------------------------------------

def check_response(response, model):
    assert response.object == "response"
    assert response.status == "completed"
    assert response.output_text == EXPECTED_TEXT
    msg = response.output[0]
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.content[0].type == "output_text"
    assert msg.content[0].text == EXPECTED_TEXT
    assert response.model.startswith(model)
    # instructions (1 message) + string input (1 message).
    assert response.usage.input_tokens == (4 + 2) + (4 + 5)
    assert response.usage.output_tokens == 12


@pytest.mark.parametrize("model", ["gpt-4.1-mini", "chat-only-model"])
def test_responses_plain(client, ledger, model):
    raw = client.responses.with_raw_response.create(
        model=model, instructions="Be brief.", input="Say hello to the gateway.",
        max_output_tokens=64)
    response = raw.parse()
    expected = ledger.add(f"responses plain {model}", model, **responses_usage(response.usage))
    assert header_cost(raw) == expected
    check_response(response, model)


@pytest.mark.parametrize("model", ["gpt-4.1-mini", "chat-only-model"])
def test_responses_stream(client, ledger, model):
    stream = client.responses.create(model=model, instructions="Be brief.",
                                     input="Say hello to the gateway.", stream=True)
    events = list(stream)
    last = events[-1]
    assert last.type == "response.completed", [e.type for e in events]
    assert last.response.usage is not None
    ledger.add(f"responses stream {model}", model, **responses_usage(last.response.usage))
    assert events[0].type == "response.created"
    seq = [e.sequence_number for e in events]
    assert seq == sorted(seq) and len(set(seq)) == len(seq)
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == EXPECTED_TEXT
    done = [e for e in events if e.type == "response.output_text.done"]
    assert len(done) == 1 and done[0].text == EXPECTED_TEXT
    check_response(last.response, model)


# ---------------------------------------------------------------------------------------
# embeddings
# ---------------------------------------------------------------------------------------

EMBED_INPUT = ["The quick brown fox", "jumps over the lazy dog"]


def test_embeddings_float_and_base64(client, ledger):
    raw = client.embeddings.with_raw_response.create(
        model="text-embedding-3-small", input=EMBED_INPUT, encoding_format="float")
    floats = raw.parse()
    expected = ledger.add("embeddings float", "text-embedding-3-small",
                          input_tokens=floats.usage.prompt_tokens)
    assert header_cost(raw) == expected
    assert floats.usage.prompt_tokens == 4 + 5
    assert [d.index for d in floats.data] == [0, 1]
    vectors = [d.embedding for d in floats.data]
    assert all(isinstance(x, float) for x in vectors[0]) and len(vectors[0]) > 0

    # Explicit base64: the SDK hands the string back as it came.
    raw = client.embeddings.with_raw_response.create(
        model="text-embedding-3-small", input=EMBED_INPUT, encoding_format="base64")
    b64 = raw.parse()
    expected = ledger.add("embeddings base64", "text-embedding-3-small",
                          input_tokens=b64.usage.prompt_tokens)
    assert header_cost(raw) == expected
    for d, vec in zip(b64.data, vectors):
        assert isinstance(d.embedding, str)
        decoded = struct.unpack(f"<{len(vec)}f", base64.b64decode(d.embedding))
        assert decoded == pytest.approx(vec, rel=1e-6, abs=1e-7)

    # Default: the SDK asks for base64 itself and decodes it to floats.
    default = client.embeddings.create(model="text-embedding-3-small", input=EMBED_INPUT)
    ledger.add("embeddings default", "text-embedding-3-small",
               input_tokens=default.usage.prompt_tokens)
    for d, vec in zip(default.data, vectors):
        assert d.embedding == pytest.approx(vec, rel=1e-6, abs=1e-7)


# ---------------------------------------------------------------------------------------
# images, audio, moderations
# ---------------------------------------------------------------------------------------

def test_images_generate(client, ledger):
    prompt = "A small red lighthouse on a rocky coast"
    raw = client.images.with_raw_response.generate(
        model="gpt-image-1", prompt=prompt, size="1024x1024", quality="low", n=1)
    images = raw.parse()
    assert images.usage is not None
    expected = ledger.add("images.generate", "gpt-image-1",
                          input_tokens=images.usage.input_tokens,
                          output_tokens=images.usage.output_tokens, images=len(images.data))
    assert header_cost(raw) == expected
    assert len(images.data) == 1
    png = base64.b64decode(images.data[0].b64_json)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert images.usage.input_tokens == gwlib.words(prompt)
    assert images.usage.output_tokens == 272  # gpt-image-1, low quality, 1024x1024


SPEECH_TEXT = "Hello there, traveller. Welcome to the gateway."


def test_audio_speech(client, ledger):
    audio = client.audio.speech.create(model="tts-1", voice="alloy", input=SPEECH_TEXT,
                                       response_format="mp3")
    ledger.add("audio.speech", "tts-1", characters=len(SPEECH_TEXT))
    data = audio.read()
    assert len(data) == 1024 + 64 * len(SPEECH_TEXT)
    assert data.startswith(b"ID3")
    assert audio.response.headers["content-type"].startswith("audio/mpeg")


def test_audio_speech_streaming_response(client, ledger):
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=SPEECH_TEXT, response_format="wav") as resp:
        assert resp.status_code == 200
        parts = list(resp.iter_bytes(chunk_size=1024))
    ledger.add("audio.speech streamed", "tts-1", characters=len(SPEECH_TEXT))
    data = b"".join(parts)
    assert len(data) == 1024 + 64 * len(SPEECH_TEXT)
    assert data.startswith(b"RIFF")


def test_audio_transcription(client, ledger):
    wav = wav_bytes(1.5)
    raw = client.audio.transcriptions.with_raw_response.create(
        model="whisper-1", file=("hello.wav", wav, "audio/wav"))
    result = raw.parse()
    assert result.usage is not None and result.usage.type == "duration"
    expected = ledger.add("audio.transcriptions", "whisper-1",
                          audio_seconds=math.ceil(result.usage.seconds))
    assert header_cost(raw) == expected
    assert result.text == EXPECTED_TEXT
    assert result.usage.seconds == -(-len(wav) // 16000)


def test_audio_translation(client, ledger):
    wav = wav_bytes(0.5)
    raw = client.audio.translations.with_raw_response.create(
        model="whisper-1", file=("bonjour.wav", wav, "audio/wav"))
    result = raw.parse()
    usage = result.to_dict().get("usage")
    assert usage and usage["type"] == "duration", result.to_dict()
    expected = ledger.add("audio.translations", "whisper-1",
                          audio_seconds=math.ceil(usage["seconds"]))
    assert header_cost(raw) == expected
    assert result.text == EXPECTED_TEXT
    assert usage["seconds"] == -(-len(wav) // 16000)


def test_moderations(client, ledger):
    raw = client.moderations.with_raw_response.create(model="omni-moderation-latest",
                                                      input="I like turtles.")
    result = raw.parse()
    expected = ledger.add("moderations", "omni-moderation-latest")
    assert header_cost(raw) == expected
    assert result.results[0].flagged is False

    flagged = client.moderations.create(model="omni-moderation-latest",
                                        input="You are awful. [[fake:flagged]]")
    ledger.add("moderations flagged", "omni-moderation-latest")
    assert flagged.results[0].flagged is True
    assert flagged.results[0].categories.harassment is True


# ---------------------------------------------------------------------------------------
# tool calls through the Anthropic upstream (chat.completions -> messages translation)
# ---------------------------------------------------------------------------------------

TOOL_QUESTION = {"role": "user", "content": "What is the weather in Paris right now? [[fake:tool]]"}
TOOL_RESULT_TEXT = "Sunny, 21 °C"


def test_chat_tool_call_round_trip_anthropic(client, ledger):
    messages = [SYSTEM, TOOL_QUESTION]
    raw = client.chat.completions.with_raw_response.create(
        model="claude-sonnet-4-5", messages=messages, tools=TOOLS, max_tokens=256)
    first = raw.parse()
    expected = ledger.add("chat tool call (claude)", "claude-sonnet-4-5",
                          **chat_usage(first.usage))
    assert header_cost(raw) == expected
    assert first.model == "claude-sonnet-4-5"
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    calls = choice.message.tool_calls
    assert calls and len(calls) == 1
    assert calls[0].type == "function" and calls[0].id
    assert calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == TOOL_ARGS
    assert first.usage.prompt_tokens == chat_input_tokens(messages)
    assert first.usage.completion_tokens == TOOL_ARGS_TOKENS

    # The usual SDK pattern: append the assistant message object as returned.
    messages = messages + [
        choice.message,
        {"role": "tool", "tool_call_id": calls[0].id, "content": TOOL_RESULT_TEXT},
    ]
    raw = client.chat.completions.with_raw_response.create(
        model="claude-sonnet-4-5", messages=messages, tools=TOOLS, max_tokens=256)
    second = raw.parse()
    expected = ledger.add("chat tool result (claude)", "claude-sonnet-4-5",
                          **chat_usage(second.usage))
    assert header_cost(raw) == expected
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == EXPECTED_TEXT
    assert not second.choices[0].message.tool_calls
    # system + user, then the assistant's call (no text) and the tool result.
    assert second.usage.prompt_tokens == (
        chat_input_tokens([SYSTEM, TOOL_QUESTION]) + 4 + (4 + gwlib.words(TOOL_RESULT_TEXT)))


def test_streamed_chat_fails_over_to_a_fallback_of_another_format(client, ledger):
    """gpt-4.1-down's only deployment refuses connections; its fallback is Claude (a
    Messages provider): the stream is translated, names the model that served and is
    charged at its price."""
    messages = [SYSTEM, {"role": "user", "content": "Fail over, please."}]
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4.1-down", messages=messages, max_tokens=256, stream=True,
        stream_options={"include_usage": True})
    assert raw.headers["x-tollgate-model"] == "claude-sonnet-4-5"
    assert raw.headers["x-tollgate-provider"] == "anthropic"
    assert int(raw.headers["x-tollgate-attempts"]) >= 2
    chunks = list(raw.parse())
    usage = chunks[-1].usage
    assert usage is not None, "no usage in the last chunk"
    ledger.add("chat streamed via a fallback (claude)", "claude-sonnet-4-5",
               **chat_usage(usage))
    assert all(c.model == "claude-sonnet-4-5" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == EXPECTED_TEXT
    assert usage.prompt_tokens == chat_input_tokens(messages)


def test_chat_tool_call_round_trip_anthropic_streamed(client, ledger):
    messages = [SYSTEM, TOOL_QUESTION]
    stream = client.chat.completions.create(
        model="claude-sonnet-4-5", messages=messages, tools=TOOLS, max_tokens=256,
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].usage is not None, "no usage in the last chunk"
    ledger.add("chat tool call streamed (claude)", "claude-sonnet-4-5",
               **chat_usage(chunks[-1].usage))
    calls: dict[int, dict] = {}
    fragments = 0
    finishes = []
    for chunk in chunks[:-1]:
        assert chunk.usage is None
        choice = chunk.choices[0]
        if choice.finish_reason:
            finishes.append(choice.finish_reason)
        for d in choice.delta.tool_calls or []:
            acc = calls.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
            if d.id:
                acc["id"] = d.id
            if d.function and d.function.name:
                acc["name"] += d.function.name
            if d.function and d.function.arguments:
                acc["arguments"] += d.function.arguments
                fragments += 1
    assert finishes == ["tool_calls"]
    assert list(calls) == [0]
    call = calls[0]
    assert call["id"] and call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == TOOL_ARGS
    assert fragments > 1, "the arguments were not streamed in pieces"
    assert chunks[-1].usage.completion_tokens == TOOL_ARGS_TOKENS
    assert chunks[-1].usage.prompt_tokens == chat_input_tokens(messages)

    messages = messages + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call["id"], "type": "function",
             "function": {"name": call["name"], "arguments": call["arguments"]}}]},
        {"role": "tool", "tool_call_id": call["id"], "content": TOOL_RESULT_TEXT},
    ]
    stream = client.chat.completions.create(
        model="claude-sonnet-4-5", messages=messages, tools=TOOLS, max_tokens=256,
        stream=True)
    chunks = list(stream)
    ledger.add("chat tool result streamed (claude)", "claude-sonnet-4-5",
               input_tokens=chat_input_tokens(messages), output_tokens=12)
    for chunk in chunks:
        assert chunk.usage is None
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == EXPECTED_TEXT
    finishes = [c.choices[0].finish_reason for c in chunks
                if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]


# ---------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------

def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model",
                                       messages=[{"role": "user", "content": "Hi"}])
    assert e.value.status_code == 404
    assert e.value.code == "model_not_found"
    assert "no-such-model" in e.value.message


def test_bad_key_is_authentication_error(gateway):
    bad = OpenAI(base_url=gateway.api, api_key="tg-this-is-not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.chat.completions.create(model="gpt-4.1-mini",
                                    messages=[{"role": "user", "content": "Hi"}])
    assert e.value.status_code == 401
    assert e.value.type == "authentication_error"
    assert "tg-this-is-not-a-key" not in str(e.value.body)


def test_zero_credit_limit_is_402(gateway):
    created = gateway.create_key("python-zero-limit", credit_limit=0)
    broke = OpenAI(base_url=gateway.api, api_key=created["key"], max_retries=0)
    with pytest.raises(openai.APIStatusError) as e:
        broke.chat.completions.create(model="gpt-4.1-mini",
                                      messages=[{"role": "user", "content": "Hi"}])
    assert e.value.status_code == 402
    assert e.value.type == "insufficient_quota"
    with pytest.raises(openai.APIStatusError) as e:
        broke.embeddings.create(model="text-embedding-3-small", input="Hi")
    assert e.value.status_code == 402
    assert Decimal(gateway.key(created["id"])["usage"]) == 0


def test_upstream_500_is_502(client, ledger):
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(
            model="gpt-4.1-mini",
            messages=[{"role": "user", "content": "Break please. [[fake:status=500]]"}])
    ledger.failed += 1
    assert e.value.status_code == 502
    assert e.value.type == "upstream_error"
    # A failed call is charged nothing: nothing added to the ledger.


def charged_for_delivered(gateway, key_id: int, ledger, model: str) -> None:
    """A stream broken after content delivered output: it is charged, not free."""
    usage = Decimal(gateway.key(key_id)["usage"])
    assert usage > 0, "a broken stream's delivered output was free"
    ledger.elsewhere[model] = ledger.elsewhere.get(model, Decimal(0)) + usage


@pytest.mark.parametrize("directive", ["error_after=3", "cut_after=3"])
@pytest.mark.parametrize("model", ["gpt-4.1-mini", "claude-sonnet-4-5"])
def test_chat_stream_failing_midway_raises(gateway, ledger, model, directive):
    """A stream that breaks after it started ends with an error event in Chat Completions'
    format, which the SDK raises as APIError; what it delivered is charged (on a separate
    key, so the module's ledger stays exact)."""
    created = gateway.create_key(f"python-openai-broken-{model}-{directive}")
    broken = OpenAI(base_url=gateway.api, api_key=created["key"], max_retries=0, timeout=30)
    pieces = []
    with pytest.raises(openai.APIError) as e:
        stream = broken.chat.completions.create(
            model=model, stream=True, max_tokens=256,
            messages=[{"role": "user", "content": f"Tell me more. [[fake:{directive}]]"}])
        for chunk in stream:
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
    assert "".join(pieces) == gwlib.fake_text(3)
    assert not isinstance(e.value, openai.APIConnectionError), repr(e.value)
    charged_for_delivered(gateway, created["id"], ledger, model)


@pytest.mark.parametrize("model", ["gpt-4.1-mini", "chat-only-model"])
def test_responses_stream_failing_midway_ends_with_error_event(gateway, ledger, model):
    created = gateway.create_key(f"python-openai-broken-responses-{model}")
    broken = OpenAI(base_url=gateway.api, api_key=created["key"], max_retries=0, timeout=30)
    stream = broken.responses.create(model=model, input="Tell me more. [[fake:cut_after=3]]",
                                     stream=True)
    events = list(stream)
    types = [e.type for e in events]
    assert types[-1] == "error", types
    assert "response.completed" not in types
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == gwlib.fake_text(3)
    charged_for_delivered(gateway, created["id"], ledger, model)


def test_chat_stop_sequence(client, ledger):
    messages = [{"role": "user", "content": "Say hello to the gateway."}]
    completion = client.chat.completions.create(model="gpt-4.1-mini", messages=messages,
                                                stop=["café"])
    ledger.add("chat stop sequence", "gpt-4.1-mini", **chat_usage(completion.usage))
    assert completion.choices[0].message.content == gwlib.fake_text(6)
    assert completion.choices[0].finish_reason == "stop"


# ---------------------------------------------------------------------------------------
# metering: what the gateway charged equals what was computed here
# ---------------------------------------------------------------------------------------

def test_metering_matches_to_the_nano_dollar(gateway, ledger):
    if not ledger.entries:
        pytest.skip("no metered request of this module ran")
    detail = "\nexpected per request:\n" + ledger.describe()
    key = gateway.key(gateway.inference_key_id)
    assert Decimal(key["usage"]) == ledger.total, f"key usage {key['usage']}" + detail
    assert key["credit_limit"] is None and key["limit_remaining"] is None

    own = requests.get(gateway.api + "/key",
                       headers={"Authorization": f"Bearer {gateway.inference_key}"}, timeout=10)
    assert own.status_code == 200, own.text
    assert Decimal(own.json()["usage"]) == ledger.total

    activity = gateway.activity()
    assert activity["period_days"] == 30
    mine = [k for k in activity["api_key_usage"] if k["api_key_id"] == gateway.inference_key_id]
    assert len(mine) == 1, activity["api_key_usage"]
    mine = mine[0]
    assert mine["api_key_name"] == "python-openai-sdk"
    assert isinstance(mine["total_cost"], str)
    assert Decimal(mine["total_cost"]) == ledger.total, f"activity {mine}" + detail
    assert mine["total_input_tokens"] == ledger.input_tokens, mine
    assert mine["total_output_tokens"] == ledger.output_tokens, mine
    n = len(ledger.entries)
    assert n <= mine["request_count"] <= n + ledger.failed, mine

    # Models only this module uses: their totals are this ledger's.
    shared = {"gpt-4.1-mini", "claude-sonnet-4-5"}
    top = {m["model_name"]: Decimal(m["total_cost"]) for m in activity["top_models"]}
    for model, total in ledger.by_model().items():
        if model not in shared:
            total += ledger.elsewhere.get(model, Decimal(0))
            assert top.get(model) == total, f"top_models[{model}] = {top.get(model)}, not {total}"

    # The account adds up: totals, days, keys and the balance.
    total = Decimal(activity["total_stats"]["total_cost"])
    assert total == sum(Decimal(k["total_cost"]) for k in activity["api_key_usage"])
    assert total == sum(Decimal(d["total_cost"]) for d in activity["daily_stats"])
    assert total == sum(Decimal(m["total_cost"]) for m in activity["top_models"])
    assert activity["total_stats"]["total_requests"] == sum(
        k["request_count"] for k in activity["api_key_usage"])
    assert gateway.balance() == gwlib.GRANTED - total
