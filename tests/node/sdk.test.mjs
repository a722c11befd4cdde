// The official Node SDKs (`openai`, `@anthropic-ai/sdk`) against the gateway: model
// retrieval, token counting, beta messages, the 404 and 529 cases, plain and streamed
// chat and messages, legacy completions and image edits; every answer charged as the
// provider reported it.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";

import Anthropic from "@anthropic-ai/sdk";
import OpenAI, { toFile } from "openai";

import { PRICES, costNanos, startGateway } from "./harness.mjs";

let gw;
let openai;
let claude;

before(async () => {
  gw = await startGateway();
  openai = new OpenAI({ baseURL: gw.api, apiKey: gw.key.key, maxRetries: 0 });
  claude = new Anthropic({ baseURL: gw.url, apiKey: gw.key.key, maxRetries: 0 });
});

after(async () => {
  await gw?.stop();
});

test("models.retrieve in both SDKs, and a 404 for an unknown model", async () => {
  const model = await openai.models.retrieve("gpt-4.1-mini");
  assert.equal(model.id, "gpt-4.1-mini");
  assert.equal(model.object, "model");
  const claudeModel = await claude.models.retrieve("claude-sonnet-4-5");
  assert.equal(claudeModel.type, "model");
  assert.equal(claudeModel.id, "claude-sonnet-4-5");
  const listed = [];
  for await (const m of claude.models.list()) listed.push(m.id);
  assert.ok(listed.includes("claude-haiku-4-5"), listed.join(","));

  await assert.rejects(openai.models.retrieve("no-such-model"), (e) => {
    assert.ok(e instanceof OpenAI.NotFoundError, e.constructor.name);
    assert.equal(e.code, "model_not_found");
    return true;
  });
  await assert.rejects(
    openai.chat.completions.create({ model: "no-such-model", messages: [{ role: "user", content: "hi" }] }),
    OpenAI.NotFoundError,
  );
  await assert.rejects(
    claude.messages.create({ model: "no-such-model", max_tokens: 10, messages: [{ role: "user", content: "hi" }] }),
    (e) => {
      assert.ok(e instanceof Anthropic.NotFoundError, e.constructor.name);
      assert.equal(e.error.error.type, "not_found_error");
      return true;
    },
  );
});

test("messages.countTokens, forwarded to Anthropic and counted locally otherwise", async () => {
  const request = { model: "claude-sonnet-4-5", system: "Be brief.", messages: [{ role: "user", content: "one two three" }] };
  const counted = await claude.messages.countTokens(request);
  assert.equal(counted.input_tokens, 13, "the fake's count: (4 + 2) + (4 + 3)");
  const local = await claude.messages.countTokens({ ...request, model: "gpt-4.1-mini" });
  assert.ok(local.input_tokens >= 5 && local.input_tokens < 100, JSON.stringify(local));
});

test("beta messages: the betas reach Anthropic with the fields they enable", async () => {
  const body = {
    model: "claude-sonnet-4-5",
    max_tokens: 100,
    messages: [{ role: "user", content: "hello" }],
    context_management: { edits: [{ type: "clear_thinking_20251015", keep: "all" }] },
  };
  const message = await claude.beta.messages.create({ ...body, betas: ["context-management-2025-06-27"] });
  assert.equal(message.type, "message");
  // Without the beta the provider refuses the field, as Anthropic does.
  await assert.rejects(claude.beta.messages.create(body), Anthropic.BadRequestError);
});

test("a provider's 529 is 529 overloaded_error to Anthropic clients and 503 to OpenAI ones", async () => {
  const overloaded = "hi [[fake:status=529]]";
  await assert.rejects(
    claude.messages.create({ model: "claude-sonnet-4-5", max_tokens: 10, messages: [{ role: "user", content: overloaded }] }),
    (e) => {
      assert.equal(e.status, 529);
      assert.equal(e.error.error.type, "overloaded_error");
      return true;
    },
  );
  await assert.rejects(
    openai.chat.completions.create({ model: "claude-sonnet-4-5", messages: [{ role: "user", content: overloaded }] }),
    (e) => {
      assert.equal(e.status, 503);
      assert.ok(e instanceof OpenAI.InternalServerError, e.constructor.name);
      return true;
    },
  );
});

test("plain and streamed chat and messages, each charged as the provider reported", async () => {
  const key = await gw.createKey("node-metered");
  const o = new OpenAI({ baseURL: gw.api, apiKey: key.key, maxRetries: 0 });
  const c = new Anthropic({ baseURL: gw.url, apiKey: key.key, maxRetries: 0 });
  const from = gw.answers.length;

  const chat = await o.chat.completions.create({ model: "gpt-4.1-mini", messages: [{ role: "user", content: "Hello [[fake:words=5]]" }] });
  assert.equal(chat.choices[0].message.content.split(" ").length, 5);
  const stream = await o.chat.completions.create({ model: "gpt-4.1-mini", stream: true, messages: [{ role: "user", content: "Hello [[fake:words=6]]" }] });
  let text = "";
  for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? "";
  assert.equal(text.split(" ").length, 6);

  const message = await c.messages.create({ model: "claude-sonnet-4-5", max_tokens: 100, messages: [{ role: "user", content: "Hi [[fake:words=4]]" }] });
  assert.equal(message.content[0].type, "text");
  const streamed = c.messages.stream({ model: "claude-sonnet-4-5", max_tokens: 100, messages: [{ role: "user", content: "Hi [[fake:words=7]]" }] });
  const final = await streamed.finalMessage();
  assert.equal(final.usage.output_tokens, 7);
  // A Chat client on a Claude model: translated, streamed.
  const translated = await o.chat.completions.create({ model: "claude-sonnet-4-5", stream: true, stream_options: { include_usage: true }, messages: [{ role: "user", content: "Hi [[fake:words=3]]" }] });
  let usage;
  for await (const chunk of translated) usage = chunk.usage ?? usage;
  assert.equal(usage.completion_tokens, 3);

  const legacy = await o.completions.create({ model: "gpt-3.5-turbo-instruct", prompt: "def fib(n): [[fake:words=9]]", max_tokens: 20 });
  assert.equal(legacy.object, "text_completion");
  assert.equal(legacy.usage.completion_tokens, 9);

  const png = Buffer.from("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==", "base64");
  const edited = await o.images.edit({ model: "gpt-image-1", image: await toFile(png, "in.png", { type: "image/png" }), prompt: "add a hat" });
  assert.equal(edited.data.length, 1);

  const answers = gw.answers.slice(from);
  assert.equal(answers.length, 7, JSON.stringify(answers));
  const priceOf = (a) => (a.path.includes("messages") ? PRICES.claude : a.path.includes("images") ? { input: "5.00", output: "40.00" } : PRICES.gpt);
  const expected = answers.reduce((sum, a) => sum + costNanos(priceOf(a), a), 0n);
  const ledger = await gw.usageOf(key.id);
  assert.equal(ledger.requests, 7);
  assert.equal(ledger.input, answers.reduce((s, a) => s + a.input, 0));
  assert.equal(ledger.output, answers.reduce((s, a) => s + a.output, 0));
  assert.equal(ledger.nanos, expected);
});
