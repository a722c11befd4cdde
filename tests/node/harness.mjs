// The gateway under test: the real `fake-upstream` and `tollgate` binaries, with a small
// recording proxy between them that reads every answer's usage off the wire (JSON or
// event stream, in each provider format), so a test can check the gateway's ledger
// against what the provider reported, independently of the gateway's own reading.
//
// Binaries: $TOLLGATE_BIN / $FAKE_UPSTREAM_BIN, else $CARGO_TARGET_DIR/debug/, else
// <repo>/target/debug/. Build them first (cargo build -p tollgate-server -p fake-upstream).

import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync, readFileSync, existsSync, rmSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");

function binary(envVar, name) {
  const explicit = process.env[envVar];
  const target = process.env.CARGO_TARGET_DIR
    ? path.resolve(process.env.CARGO_TARGET_DIR)
    : path.join(REPO, "target");
  const found = explicit || path.join(target, "debug", name);
  if (!existsSync(found)) {
    throw new Error(`${name} not found at ${found}; build it first or set ${envVar}`);
  }
  return found;
}

/** Claude's ids on Bedrock (a US inference profile) and on Vertex. */
export const BEDROCK_CLAUDE = "us.anthropic.claude-sonnet-4-5-20250929-v1:0";
export const VERTEX_CLAUDE = "claude-sonnet-4-5@20250929";
/** The fake upstream's test-only AWS key (fake_upstream::TEST_AWS_*) and Vertex token. */
const FAKE_AWS = { AWS_ACCESS_KEY_ID: "AKIATOLLGATEFAKETEST", AWS_SECRET_ACCESS_KEY: "tollgate/fake+upstream/test-only/secret/0123" };
const FAKE_VERTEX_TOKEN = "vertex-token-for-agent-tests";

/** The messages of an AWS event stream (Bedrock), with their string headers. */
function eventStreamMessages(buf) {
  const out = [];
  let at = 0;
  while (at + 12 <= buf.length) {
    const total = buf.readUInt32BE(at);
    const headersLen = buf.readUInt32BE(at + 4);
    if (total < 16 || at + total > buf.length) break;
    const headers = {};
    let h = at + 12;
    const end = h + headersLen;
    while (h < end) {
      const n = buf[h];
      const name = buf.toString("utf8", h + 1, h + 1 + n);
      h += 1 + n;
      if (buf[h] !== 7) break;
      const len = buf.readUInt16BE(h + 1);
      headers[name] = buf.toString("utf8", h + 3, h + 3 + len);
      h += 3 + len;
    }
    out.push({ headers, payload: buf.toString("utf8", end, at + total - 4) });
    at += total;
  }
  return out;
}

/** Prices in USD per million tokens, as the config writes them. */
export const PRICES = {
  claude: { input: "3.00", cached_input: "0.30", cache_write: "3.75", output: "15.00", web_search: "0.01" },
  gpt: { input: "1.25", cached_input: "0.125", output: "10.00", web_search: "0.01" },
};

/** The catalog: the real agents' model names on each kind of provider. */
function config(proxy, dataDir) {
  const price = (p) =>
    "{ " + Object.entries(p).map(([k, v]) => `${k} = "${v}"`).join(", ") + " }";
  const model = (id, provider, endpoints, prices, extra = "") => `
[[models]]
id = "${id}"
provider = "${provider}"
endpoints = [${endpoints.map((e) => `"${e}"`).join(", ")}]
context_window = 400000
max_output_tokens = 64000
pricing = ${price(prices)}
${extra}`;
  const text = ["messages", "chat.completions", "responses"];
  return `
data_dir = "${dataDir}"
database_url = "sqlite://${dataDir}/tollgate.db"

[routing]
backoff_ms = 1

[[providers]]
name = "openai"
kind = "openai"
base_url = "${proxy}/v1"
api_key_env = "FAKE_OPENAI_KEY"

[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "${proxy}/v1"
api_key_env = "FAKE_ANTHROPIC_KEY"

[[providers]]
name = "bedrock"
kind = "bedrock"
region = "us-east-1"
base_url = "${proxy}"

[[providers]]
name = "vertex"
kind = "vertex"
project = "fake-project"
region = "us-east5"
base_url = "${proxy}"
access_token_env = "FAKE_VERTEX_TOKEN"

[[providers]]
name = "local"
kind = "openai"
base_url = "${proxy}/v1"
api_key_env = "FAKE_OPENAI_KEY"
chat_only = true
${model("claude-sonnet-4-5", "anthropic", text, PRICES.claude)}
${model("claude-haiku-4-5", "anthropic", text, PRICES.claude)}
${model("bedrock-claude-sonnet-4-5", "bedrock", text, PRICES.claude, `upstream_model = "${BEDROCK_CLAUDE}"`)}
${model("vertex-claude-sonnet-4-5", "vertex", text, PRICES.claude, `upstream_model = "${VERTEX_CLAUDE}"`)}
${model("gpt-5-codex", "openai", text, PRICES.gpt)}
${model("gpt-4.1-mini", "openai", text, PRICES.gpt)}
${model("qwen3-coder", "local", text, PRICES.gpt)}
${model("gpt-3.5-turbo-instruct", "openai", ["completions"], PRICES.gpt)}
${model("gpt-image-1", "openai", ["images.edits", "images.generations"], { input: "5.00", output: "40.00" })}
`;
}

/** Usage as the provider reported it, in its own format. */
function usageOf(value, seen) {
  if (!value || typeof value !== "object") return;
  // Hosted web searches, charged per call: Responses output items, Anthropic's count.
  const output = value.response?.output ?? (value.object === "response" ? value.output : undefined);
  if (Array.isArray(output)) {
    seen.searches = output.filter((item) => item?.type === "web_search_call").length;
  }
  const anthropicSearches = (value.usage ?? value.message?.usage)?.server_tool_use?.web_search_requests;
  if (typeof anthropicSearches === "number") seen.searches = anthropicSearches;
  const u = value.usage ?? value.response?.usage ?? value.message?.usage;
  if (!u || typeof u !== "object") return;
  if ("prompt_tokens" in u) {
    // Chat Completions, legacy completions.
    seen.format = "chat";
    seen.input = u.prompt_tokens ?? 0;
    seen.cached = u.prompt_tokens_details?.cached_tokens ?? 0;
    seen.output = u.completion_tokens ?? 0;
  } else if (value.type === "message_start" || value.type === "message_delta" || value.type === "message" || "cache_read_input_tokens" in u) {
    // Anthropic: later events repeat the counts they change.
    seen.format = "anthropic";
    for (const [k, field] of [["input_tokens", "a_input"], ["cache_read_input_tokens", "cached"], ["cache_creation_input_tokens", "cache_write"], ["output_tokens", "output"]]) {
      if (typeof u[k] === "number") seen[field] = u[k];
    }
    seen.input = (seen.a_input ?? 0) + (seen.cached ?? 0) + (seen.cache_write ?? 0);
  } else if ("input_tokens" in u) {
    // Responses, images.
    seen.format = "responses";
    seen.input = u.input_tokens ?? 0;
    seen.cached = u.input_tokens_details?.cached_tokens ?? 0;
    seen.output = u.output_tokens ?? 0;
  }
}

/** A proxy to the fake that records, per answered model request, the usage reported. */
function startProxy(target) {
  const answers = [];
  const server = http.createServer((req, res) => {
    const sent = [];
    req.on("data", (c) => sent.push(c));
    const upstream = http.request(
      { host: target.host, port: target.port, method: req.method, path: req.url, headers: req.headers },
      (up) => {
        res.writeHead(up.statusCode, up.headers);
        const chunks = [];
        up.on("data", (c) => { chunks.push(c); res.write(c); });
        up.on("end", () => {
          res.end();
          const raw = Buffer.concat(chunks);
          const body = raw.toString("utf8");
          const seen = { path: req.url, status: up.statusCode, input: 0, cached: 0, cache_write: 0, output: 0, searches: 0,
            request: Buffer.concat(sent).toString("utf8"), headers: req.headers };
          if ((up.headers["content-type"] || "").startsWith("application/vnd.amazon.eventstream")) {
            // Bedrock: each chunk wraps the model's own event, base64.
            for (const m of eventStreamMessages(raw)) {
              try {
                const payload = JSON.parse(m.payload);
                const event = m.headers[":event-type"] === "chunk"
                  ? JSON.parse(Buffer.from(payload.bytes, "base64").toString("utf8"))
                  : payload;
                usageOf(event, seen);
              } catch { /* not JSON */ }
            }
          } else if ((up.headers["content-type"] || "").startsWith("text/event-stream")) {
            for (const line of body.split("\n")) {
              if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
              try { usageOf(JSON.parse(line.slice(6)), seen); } catch { /* not JSON */ }
            }
          } else {
            try { usageOf(JSON.parse(body), seen); } catch { /* not JSON */ }
          }
          answers.push(seen);
        });
      },
    );
    upstream.on("error", () => { res.destroy(); });
    req.pipe(upstream);
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve({ server, answers, url: `http://127.0.0.1:${server.address().port}` })));
}

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Starts the fake, the proxy and the gateway; credits granted, one inference key made. */
export async function startGateway() {
  const tollgate = binary("TOLLGATE_BIN", "tollgate");
  const fakeBin = binary("FAKE_UPSTREAM_BIN", "fake-upstream");
  const dir = mkdtempSync(path.join(os.tmpdir(), "tollgate-node-"));
  const env = { ...process.env, FAKE_OPENAI_KEY: "up-openai", FAKE_ANTHROPIC_KEY: "up-anthropic", ...FAKE_AWS, FAKE_VERTEX_TOKEN, RUST_LOG: "info", NO_COLOR: "1" };
  for (const v of ["TOLLGATE_CONFIG", "TOLLGATE_LISTEN", "TOLLGATE_DATABASE_URL", "TOLLGATE_REDIS_URL", "AWS_SESSION_TOKEN", "FAKE_UPSTREAM_AWS_ACCESS_KEY_ID", "FAKE_UPSTREAM_AWS_SECRET_ACCESS_KEY", "FAKE_UPSTREAM_AWS_SESSION_TOKEN"]) delete env[v];

  const fake = spawn(fakeBin, ["--listen", "127.0.0.1:0", "--openai-api-key", "up-openai", "--anthropic-api-key", "up-anthropic", "--vertex-access-token", FAKE_VERTEX_TOKEN], { env, stdio: ["ignore", "pipe", "ignore"] });
  const fakeAddr = await new Promise((resolve, reject) => {
    let text = "";
    fake.stdout.on("data", (d) => { text += d; if (text.includes("\n")) resolve(text.trim().split("\n")[0]); });
    fake.on("exit", () => reject(new Error("fake-upstream exited")));
  });
  const [host, port] = fakeAddr.replace(/^https?:\/\//, "").split(":");
  const proxy = await startProxy({ host, port: Number(port) });
  const configFile = path.join(dir, "tollgate.toml");
  writeFileSync(configFile, config(proxy.url, path.join(dir, "data")));
  const listen = await freePort();
  const url = `http://127.0.0.1:${listen}`;
  const logFile = path.join(dir, "tollgate.log");
  const { openSync } = await import("node:fs");
  const log = openSync(logFile, "w");
  const gateway = spawn(tollgate, ["serve", "--config", configFile, "--listen", `127.0.0.1:${listen}`], { env, cwd: dir, stdio: ["ignore", log, log] });
  const deadline = Date.now() + 30000;
  for (;;) {
    try { if ((await fetch(`${url}/readyz`)).status === 200) break; } catch { /* not yet */ }
    if (Date.now() > deadline || gateway.exitCode !== null) {
      throw new Error(`tollgate did not start:\n${readFileSync(logFile, "utf8")}`);
    }
    await sleep(50);
  }
  const prov = readFileSync(path.join(dir, "data", "provisioning-key.txt"), "utf8").trim();
  const granted = spawnSync(tollgate, ["credits", "grant", "default", "100", "--config", configFile], { env, cwd: dir, encoding: "utf8" });
  if (granted.status !== 0) throw new Error(`credits grant failed: ${granted.stdout}${granted.stderr}`);
  const account = (method, p, body) =>
    fetch(`${url}/v1${p}`, { method, headers: { authorization: `Bearer ${prov}`, "content-type": "application/json" }, body: body && JSON.stringify(body) }).then((r) => r.json());
  while (Number((await account("GET", "/account/balance")).balance) !== 100) {
    if (Date.now() > deadline) throw new Error("the grant never reached the server");
    await sleep(100);
  }
  const gw = {
    url,
    api: `${url}/v1`,
    dir,
    logFile,
    answers: proxy.answers,
    /** A new inference key: { id, key }. */
    async createKey(name) {
      const created = await account("POST", "/account/keys", { name });
      return { id: created.id, key: created.key };
    },
    /** A key's ledger totals: requests, input and output tokens, cost in nano-dollars. */
    async usageOf(keyId) {
      const activity = await account("GET", "/account/activity?days=1");
      const row = activity.api_key_usage.find((k) => k.api_key_id === keyId);
      if (!row) return { requests: 0, input: 0, output: 0, nanos: 0n };
      return { requests: row.request_count, input: row.total_input_tokens, output: row.total_output_tokens, nanos: toNanos(row.total_cost) };
    },
    log() { return readFileSync(logFile, "utf8"); },
    async stop() {
      gateway.kill("SIGTERM");
      fake.kill("SIGTERM");
      proxy.server.close();
      await sleep(100);
      if (!process.env.TOLLGATE_KEEP_TMP) rmSync(dir, { recursive: true, force: true });
    },
  };
  gw.key = await gw.createKey("node-tests");
  return gw;
}

/** An exact decimal of credits as nano-dollars. */
export function toNanos(text) {
  const [whole, frac = ""] = String(text).split(".");
  return BigInt(whole) * 1000000000n + BigInt((frac + "000000000").slice(0, 9));
}

/** What one answer costs at `prices` (USD per million tokens; `web_search` USD per call),
 * rounded up once, in nanos. */
export function costNanos(prices, a) {
  // femto-dollars per token = USD per million tokens * 1e9.
  const per = (k) => (prices[k] === undefined ? null : toNanos(prices[k]));
  const input = per("input"), cached = per("cached_input") ?? input, write = per("cache_write") ?? input, output = per("output");
  const uncached = BigInt(a.input - a.cached - a.cache_write);
  const search = per("web_search") === null ? 0n : per("web_search") * 1000000n;
  const femtos = uncached * input + BigInt(a.cached) * cached + BigInt(a.cache_write) * write + BigInt(a.output) * output
    + BigInt(a.searches ?? 0) * search;
  return (femtos + 999999n) / 1000000n;
}
