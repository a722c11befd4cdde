"""Shared helpers for the client-compatibility tests: the model catalog and its
prices (the single source for the generated config and for the expected costs),
the fake upstream's deterministic answers and token formulas, and a ledger of
what each request should have cost.

Costs are computed exactly as Tollgate documents them: per request,
uncached_input*input + cached*cached_input + cache_write*cache_write +
output*output (USD per million tokens) + per-unit prices, rounded up once to
the next nano-dollar (1e-9 USD).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal

# --------------------------------------------------------------------------------------
# The catalog. Prices are USD per million tokens (input/cached_input/cache_write/output)
# or USD per unit (per_image, per_request, per_audio_second, per_character). Some
# values are deliberately not whole nano-dollars per unit, so the round-up shows.
# --------------------------------------------------------------------------------------
MODELS: dict[str, dict] = {
    "gpt-4.1-mini": {
        "provider": "openai",
        "endpoints": ["chat.completions", "responses", "messages"],
        "context_window": 1047576,
        "max_output_tokens": 32768,
        "pricing": {"input": "0.40", "cached_input": "0.10", "output": "1.60"},
    },
    "gemini-flash": {
        "provider": "gemini",
        "upstream_model": "gemini-2.5-flash",
        "endpoints": ["chat.completions", "responses", "messages"],
        "max_output_tokens": 65536,
        "pricing": {"input": "0.30", "cached_input": "0.03", "output": "2.50"},
    },
    "claude-sonnet-4-5": {
        "provider": "anthropic",
        "upstream_model": "claude-sonnet-4-5-20250929",
        "endpoints": ["messages", "chat.completions"],
        "context_window": 200000,
        "max_output_tokens": 8192,
        "pricing": {
            "input": "3.00",
            "cached_input": "0.30",
            "cache_write": "3.75",
            "output": "15.00",
        },
    },
    "text-embedding-3-small": {
        "provider": "openai",
        "endpoints": ["embeddings"],
        "pricing": {"input": "0.0125"},
    },
    "gpt-image-1": {
        "provider": "openai",
        "endpoints": ["images.generations"],
        "pricing": {"input": "5.00", "output": "40.00", "per_image": "0.011"},
    },
    "tts-1": {
        "provider": "openai",
        "endpoints": ["audio.speech"],
        "pricing": {"per_character": "0.000015"},
    },
    "whisper-1": {
        "provider": "openai",
        "endpoints": ["audio.transcriptions", "audio.translations"],
        "pricing": {"per_audio_second": "0.0001"},
    },
    "omni-moderation-latest": {
        "provider": "openai",
        "endpoints": ["moderations"],
        "pricing": {"per_request": "0.00000012345"},
    },
    # Its only deployment is down (nothing listens there): every request is served by
    # its fallback, a model of another provider and format, at the fallback's price.
    "gpt-4.1-down": {
        "provider": "down",
        "endpoints": ["chat.completions"],
        "fallbacks": ["claude-sonnet-4-5"],
        "max_output_tokens": 8192,
        "pricing": {"input": "0.40", "cached_input": "0.10", "output": "1.60"},
    },
    "nova-pro": {
        "provider": "bedrock",
        "upstream_model": "amazon.nova-pro-v1:0",
        "endpoints": ["chat.completions", "responses", "messages"],
        "max_output_tokens": 10000,
        "pricing": {"input": "0.80", "cached_input": "0.20", "output": "3.20"},
    },
    "claude-bedrock": {
        "provider": "bedrock",
        "upstream_model": "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "endpoints": ["messages", "chat.completions"],
        "max_output_tokens": 8192,
        "pricing": {"input": "3.00", "cached_input": "0.30", "cache_write": "3.75",
                    "output": "15.00"},
    },
    "claude-vertex": {
        "provider": "vertex",
        "upstream_model": "claude-sonnet-4-5@20250929",
        "endpoints": ["messages", "chat.completions"],
        "max_output_tokens": 8192,
        "pricing": {"input": "3.00", "cached_input": "0.30", "cache_write": "3.75",
                    "output": "15.00"},
    },
    "chat-only-model": {
        "provider": "chatonly",
        "upstream_model": "gpt-4o-mini",
        "endpoints": ["chat.completions", "responses"],
        "max_output_tokens": 16384,
        "pricing": {"input": "0.0375", "output": "0.15"},
    },
}

GRANTED = Decimal("100")

# The fake upstream's test-only AWS key (fake_upstream::TEST_AWS_ACCESS_KEY_ID and
# TEST_AWS_SECRET_ACCESS_KEY): its Bedrock checks every SigV4 signature with it.
FAKE_AWS_ACCESS_KEY_ID = "AKIATOLLGATEFAKETEST"
FAKE_AWS_SECRET_ACCESS_KEY = "tollgate/fake+upstream/test-only/secret/0123"
# The bearer token the fake's Vertex paths accept (--vertex-access-token).
FAKE_VERTEX_TOKEN = "vertex-token-for-python-tests"

# --------------------------------------------------------------------------------------
# The fake upstream's deterministic content (see crates/fake-upstream/src/lib.rs).
# --------------------------------------------------------------------------------------
WORDS = [
    "Hello", "from", "the", "fake", "upstream,", "a", "café", "of",
    "deterministic", "words", "for", "tests", "that", "count", "every", "token.",
]


def fake_text(n: int = 12) -> str:
    """The fake's text reply of `n` words."""
    return " ".join(WORDS[i % len(WORDS)] for i in range(n))


EXPECTED_TEXT = fake_text(12)


def words(s: str) -> int:
    return len(s.split())


def content_words(content) -> int:
    """Words of every `text` in a content value (string or list of parts)."""
    if content is None:
        return 0
    if isinstance(content, str):
        return words(content)
    total = 0
    for part in content:
        if isinstance(part, dict):
            text = part.get("text")
            if isinstance(text, str):
                total += words(text)
            elif part.get("type") == "tool_result":
                total += content_words(part.get("content"))
    return total


def chat_input_tokens(messages: list[dict]) -> int:
    """The fake's input-token count of an OpenAI chat request: Σ (4 + words)."""
    return sum(4 + content_words(m.get("content")) for m in messages)


def tool_arg_tokens(arguments: str) -> int:
    """Output tokens of a tool call: the number of 8-character argument fragments."""
    return -(-len(arguments) // 8)


# --------------------------------------------------------------------------------------
# Costs.
# --------------------------------------------------------------------------------------
_MILLION = Decimal(1_000_000)
_NANO = Decimal("0.000000001")


def _price(model: str, name: str) -> Decimal | None:
    value = MODELS[model]["pricing"].get(name)
    return None if value is None else Decimal(value)


def cost(
    model: str,
    *,
    input_tokens: int = 0,
    cached: int = 0,
    cache_write: int = 0,
    output_tokens: int = 0,
    images: int = 0,
    audio_seconds: int = 0,
    characters: int = 0,
) -> Decimal:
    """Exact cost in USD of one request; `input_tokens` includes cached and cache-write tokens."""
    zero = Decimal(0)
    p_in = _price(model, "input") or zero
    p_cached = _price(model, "cached_input")
    p_write = _price(model, "cache_write")
    cached = min(cached, input_tokens)
    cache_write = min(cache_write, input_tokens - cached)
    uncached = input_tokens - cached - cache_write
    per_million = (
        uncached * p_in
        + cached * (p_cached if p_cached is not None else p_in)
        + cache_write * (p_write if p_write is not None else p_in)
        + output_tokens * (_price(model, "output") or zero)
    )
    total = per_million / _MILLION
    total += images * (_price(model, "per_image") or zero)
    total += audio_seconds * (_price(model, "per_audio_second") or zero)
    total += characters * (_price(model, "per_character") or zero)
    total += _price(model, "per_request") or zero
    nanos = (total / _NANO).to_integral_value(rounding=ROUND_CEILING)
    return nanos * _NANO


@dataclass
class Entry:
    what: str
    model: str
    cost: Decimal
    input_tokens: int
    output_tokens: int


@dataclass
class Ledger:
    """What one key's requests should have cost, request by request."""

    entries: list[Entry] = field(default_factory=list)
    failed: int = 0  # requests that reached the provider and failed (charged nothing)
    # What broken streams of other keys cost, by model (what they delivered is charged).
    elsewhere: dict[str, Decimal] = field(default_factory=dict)

    def add(self, what: str, model: str, *, input_tokens: int = 0, cached: int = 0,
            cache_write: int = 0, output_tokens: int = 0, images: int = 0,
            audio_seconds: int = 0, characters: int = 0) -> Decimal:
        c = cost(model, input_tokens=input_tokens, cached=cached, cache_write=cache_write,
                 output_tokens=output_tokens, images=images, audio_seconds=audio_seconds,
                 characters=characters)
        self.entries.append(Entry(what, model, c, input_tokens, output_tokens))
        return c

    @property
    def total(self) -> Decimal:
        return sum((e.cost for e in self.entries), Decimal(0))

    @property
    def input_tokens(self) -> int:
        return sum(e.input_tokens for e in self.entries)

    @property
    def output_tokens(self) -> int:
        return sum(e.output_tokens for e in self.entries)

    def by_model(self) -> dict[str, Decimal]:
        out: dict[str, Decimal] = {}
        for e in self.entries:
            out[e.model] = out.get(e.model, Decimal(0)) + e.cost
        return out

    def describe(self) -> str:
        return "\n".join(
            f"  {e.what:<48} {e.model:<24} {e.cost:>16} in={e.input_tokens} out={e.output_tokens}"
            for e in self.entries
        )


def config_toml(fake_addr: str) -> str:
    """The gateway's config: three providers on the fake, and the catalog above."""
    base = f"http://{fake_addr}/v1"
    out = [
        "# Generated by tests/python/conftest.py",
        "",
        "[[providers]]",
        'name = "openai"',
        'kind = "openai"',
        f'base_url = "{base}"',
        'api_key_env = "FAKE_OPENAI_KEY"',
        "",
        "[[providers]]",
        'name = "anthropic"',
        'kind = "anthropic"',
        f'base_url = "{base}"',
        'api_key_env = "FAKE_ANTHROPIC_KEY"',
        "",
        "[[providers]]",
        'name = "chatonly"',
        'kind = "openai"',
        f'base_url = "{base}"',
        'api_key_env = "FAKE_OPENAI_KEY"',
        "chat_only = true",
        "",
        "[[providers]]",
        'name = "gemini"',
        'kind = "gemini"',
        f'base_url = "http://{fake_addr}/v1beta"',
        'api_key_env = "FAKE_GEMINI_KEY"',
        "",
        "[[providers]]",
        'name = "bedrock"',
        'kind = "bedrock"',
        'region = "us-east-1"',
        f'base_url = "http://{fake_addr}"',
        "",
        "[[providers]]",
        'name = "vertex"',
        'kind = "vertex"',
        'project = "fake-project"',
        'region = "us-east5"',
        f'base_url = "http://{fake_addr}"',
        'access_token_env = "FAKE_VERTEX_TOKEN"',
        "",
        "[[providers]]",
        'name = "down"',
        'kind = "openai"',
        'base_url = "http://127.0.0.1:1/v1"',
        "",
    ]
    for model_id, m in MODELS.items():
        out.append("[[models]]")
        out.append(f'id = "{model_id}"')
        out.append(f'provider = "{m["provider"]}"')
        if "upstream_model" in m:
            out.append(f'upstream_model = "{m["upstream_model"]}"')
        out.append("endpoints = [" + ", ".join(f'"{e}"' for e in m["endpoints"]) + "]")
        if "fallbacks" in m:
            out.append("fallbacks = [" + ", ".join(f'"{f}"' for f in m["fallbacks"]) + "]")
        for k in ("context_window", "max_output_tokens"):
            if k in m:
                out.append(f"{k} = {m[k]}")
        pricing = ", ".join(f'{k} = "{v}"' for k, v in m["pricing"].items())
        out.append(f"pricing = {{ {pricing} }}")
        out.append("")
    out += [
        "[[startups]]",
        'name = "Example"',
        'url = "https://example.com"',
        "",
    ]
    return "\n".join(out)
