// The real coding agents, pinned in tests/node/package.json, run non-interactively through
// the gateway to the fake upstream: Claude Code (`claude -p --output-format json`) on a
// Messages-native model, on Claude on AWS Bedrock and on Google Vertex AI, and on an
// OpenAI-compatible one, Codex (`codex exec`, Responses
// wire API) on an OpenAI model, a chat-only model and an Anthropic model. Each run makes a
// tool round trip (the fake calls the agent's shell tool with a harmless `echo`, the agent
// runs it and sends the output back) and is metered exactly: the key's ledger equals what
// the provider reported, read off the wire by the harness's proxy.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";

import { BEDROCK_CLAUDE, PRICES, REPO, VERTEX_CLAUDE, costNanos, startGateway } from "../node/harness.mjs";

const BIN = path.join(REPO, "tests", "node", "node_modules", ".bin");
const MARK = "tollgate-tool-round-trip";
/** Generous: the agents start in a second or two; the machine may be loaded. */
const AGENT_TIMEOUT_MS = 180_000;

let gw;

before(async () => {
  gw = await startGateway();
});

after(async () => {
  await gw?.stop();
});

/** Runs an agent in its own process group (so nothing it does reaches the harness). */
function run(command, args, env, cwd) {
  return new Promise((resolve) => {
    const child = spawn(command, args, {
      cwd,
      env: { PATH: process.env.PATH, LANG: "C.UTF-8", ...env },
      detached: true,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    const timer = setTimeout(() => {
      try { process.kill(-child.pid, "SIGKILL"); } catch { /* gone */ }
    }, AGENT_TIMEOUT_MS);
    child.on("exit", (status, signal) => {
      clearTimeout(timer);
      resolve({ status, signal, stdout, stderr });
    });
  });
}

/** The requests a key made, as the provider saw them, and the ledger check. */
async function checkMetering(key, from, prices) {
  const answers = gw.answers.slice(from);
  const ledger = await gw.usageOf(key.id);
  assert.ok(answers.length >= 2, `a tool round trip takes two calls: ${answers.length}`);
  assert.ok(answers.every((a) => a.status === 200), JSON.stringify(answers.map((a) => [a.path, a.status])));
  assert.equal(ledger.requests, answers.length, "one ledger record per upstream call");
  assert.equal(ledger.input, answers.reduce((s, a) => s + a.input, 0), "input tokens");
  assert.equal(ledger.output, answers.reduce((s, a) => s + a.output, 0), "output tokens");
  const expected = answers.reduce((s, a) => s + costNanos(prices, a), 0n);
  assert.equal(ledger.nanos, expected, "cost in nano-dollars");
  return answers;
}

/** Asserts that the tool's output went back to the model in a later request. */
function assertRoundTrip(answers) {
  const later = answers.slice(1).map((a) => a.request).join("\n");
  assert.ok(later.includes(MARK), `the echo's output never came back:\n${later.slice(0, 2000)}`);
}

function claudeEnv(model, key, home) {
  return {
    HOME: home,
    ANTHROPIC_BASE_URL: gw.url,
    ANTHROPIC_API_KEY: key,
    ANTHROPIC_MODEL: model,
    ANTHROPIC_SMALL_FAST_MODEL: model,
    ANTHROPIC_DEFAULT_HAIKU_MODEL: model,
    ANTHROPIC_DEFAULT_SONNET_MODEL: model,
    ANTHROPIC_DEFAULT_OPUS_MODEL: model,
    DISABLE_TELEMETRY: "1",
    DISABLE_AUTOUPDATER: "1",
    DISABLE_ERROR_REPORTING: "1",
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: "1",
  };
}

async function claudeCode(model, upstreamPath, prices) {
  const key = await gw.createKey(`claude-code-${model}`);
  const home = mkdtempSync(path.join(os.tmpdir(), "claude-code-"));
  const from = gw.answers.length;
  const result = await run(
    path.join(BIN, "claude"),
    ["-p", `Run an echo command. [[fake:tool_name=Bash]]`, "--output-format", "json", "--model", model, "--allowedTools", "Bash(echo:*)"],
    claudeEnv(model, key.key, home),
    home,
  );
  assert.equal(result.status, 0, `claude exited ${result.status} ${result.signal}:\n${result.stdout}\n${result.stderr}\n${gw.log().slice(-3000)}`);
  const output = JSON.parse(result.stdout);
  assert.equal(output.is_error, false, result.stdout);
  assert.equal(output.subtype, "success");
  assert.ok(output.num_turns >= 2, `no tool round trip: ${result.stdout}`);
  const answers = await checkMetering(key, from, prices);
  assert.ok(answers.every((a) => a.path.startsWith(upstreamPath)), JSON.stringify(answers.map((a) => a.path)));
  assertRoundTrip(answers);
  return answers;
}

test("Claude Code on a Messages-native model: its betas pass, a tool round trip, metered exactly", async () => {
  const answers = await claudeCode("claude-sonnet-4-5", "/v1/messages", PRICES.claude);
  const betas = answers[0].headers["anthropic-beta"] ?? "";
  assert.ok(betas.includes("claude-code-"), `Claude Code's betas did not reach the provider: '${betas}'`);
  assert.equal(answers[0].headers["x-api-key"], "up-anthropic", "the provider's key, not the client's");
});

test("Claude Code on Claude on AWS Bedrock (InvokeModel, SigV4, event stream): its betas in the body, a tool round trip, metered exactly", async () => {
  const answers = await claudeCode("bedrock-claude-sonnet-4-5", `/model/${encodeURIComponent(BEDROCK_CLAUDE)}/`, PRICES.claude);
  const body = JSON.parse(answers[0].request);
  assert.equal(body.anthropic_version, "bedrock-2023-05-31");
  assert.equal(body.model, undefined);
  assert.ok((body.anthropic_beta ?? []).some((b) => b.startsWith("claude-code-")), `Claude Code's betas did not reach Bedrock: ${JSON.stringify(body.anthropic_beta)}`);
  assert.ok(answers[0].headers.authorization.startsWith("AWS4-HMAC-SHA256 Credential=AKIATOLLGATEFAKETEST/"));
});

test("Claude Code on Claude on Google Vertex AI (rawPredict, bearer token): a tool round trip, metered exactly", async () => {
  const answers = await claudeCode("vertex-claude-sonnet-4-5", `/v1/projects/fake-project/locations/us-east5/publishers/anthropic/models/${VERTEX_CLAUDE}:`, PRICES.claude);
  const body = JSON.parse(answers[0].request);
  assert.equal(body.anthropic_version, "vertex-2023-10-16");
  assert.equal(answers[0].headers.authorization, "Bearer vertex-token-for-agent-tests");
});

test("Claude Code on an OpenAI-compatible model: translated, a tool round trip, metered exactly", async () => {
  const answers = await claudeCode("gpt-5-codex", "/v1/chat/completions", PRICES.gpt);
  assert.equal(answers[0].headers["anthropic-beta"], undefined);
});

async function codex(model, upstreamPath, prices) {
  const key = await gw.createKey(`codex-${model}`);
  const home = mkdtempSync(path.join(os.tmpdir(), "codex-"));
  const codexHome = path.join(home, ".codex");
  const work = path.join(home, "work");
  mkdirSync(codexHome);
  mkdirSync(work);
  writeFileSync(
    path.join(codexHome, "config.toml"),
    `model = "${model}"
model_provider = "tollgate"

[model_providers.tollgate]
name = "Tollgate"
base_url = "${gw.api}"
env_key = "TOLLGATE_API_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
`,
  );
  const from = gw.answers.length;
  const result = await run(
    path.join(BIN, "codex"),
    ["exec", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox", "--json", `Run an echo command. [[fake:tool_name=exec_command]]`],
    { HOME: home, CODEX_HOME: codexHome, TOLLGATE_API_KEY: key.key, RUST_LOG: "error" },
    work,
  );
  assert.equal(result.status, 0, `codex exited ${result.status} ${result.signal}:\n${result.stdout}\n${result.stderr}\n${gw.log().slice(-3000)}`);
  const events = result.stdout.split("\n").filter(Boolean).map((l) => { try { return JSON.parse(l); } catch { return {}; } });
  const ran = events.some((e) => JSON.stringify(e).includes(MARK) && JSON.stringify(e).includes("command"));
  assert.ok(ran, `codex ran no command:\n${result.stdout}`);
  assert.ok(events.some((e) => e.type === "turn.completed"), `the turn did not complete:\n${result.stdout}`);
  const answers = await checkMetering(key, from, prices);
  assert.ok(answers.every((a) => a.path.startsWith(upstreamPath)), JSON.stringify(answers.map((a) => a.path)));
  assertRoundTrip(answers);
}

test("Codex on an OpenAI model (Responses passed through): a tool round trip, metered exactly", async () => {
  await codex("gpt-5-codex", "/v1/responses", PRICES.gpt);
});

test("Codex on a chat-only model (Responses to Chat): a tool round trip, metered exactly", async () => {
  await codex("qwen3-coder", "/v1/chat/completions", PRICES.gpt);
});

test("Codex on an Anthropic model (Responses to Messages): a tool round trip, metered exactly", async () => {
  await codex("claude-sonnet-4-5", "/v1/messages", PRICES.claude);
});
