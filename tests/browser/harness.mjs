// The console under test: the real `fake-upstream` and `tollgate` binaries on loopback,
// and Debian's Chromium driven by playwright-core. Binaries: $TOLLGATE_BIN /
// $FAKE_UPSTREAM_BIN, else $CARGO_TARGET_DIR/debug/, else <repo>/target/debug/.

import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync, readFileSync, existsSync, mkdirSync, openSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(HERE, "..", "..");
export const SCREENSHOTS = path.join(HERE, "screenshots");
const require = createRequire(import.meta.url);
const AXE = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

function binary(envVar, name) {
  const target = process.env.CARGO_TARGET_DIR ? path.resolve(process.env.CARGO_TARGET_DIR) : path.join(REPO, "target");
  const found = process.env[envVar] || path.join(target, "debug", name);
  if (!existsSync(found)) throw new Error(`${name} not found at ${found}; build it first or set ${envVar}`);
  return found;
}

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Starts fake-upstream and tollgate (one priced model on the fake). */
export async function startGateway() {
  const tollgate = binary("TOLLGATE_BIN", "tollgate");
  const fakeBin = binary("FAKE_UPSTREAM_BIN", "fake-upstream");
  const dir = mkdtempSync(path.join(os.tmpdir(), "tollgate-browser-"));
  const env = { ...process.env, FAKE_OPENAI_KEY: "up-openai", RUST_LOG: "info", NO_COLOR: "1" };
  for (const v of ["TOLLGATE_CONFIG", "TOLLGATE_LISTEN", "TOLLGATE_DATABASE_URL", "TOLLGATE_REDIS_URL"]) delete env[v];
  const fake = spawn(fakeBin, ["--listen", "127.0.0.1:0", "--openai-api-key", "up-openai"], { env, stdio: ["ignore", "pipe", "ignore"] });
  const fakeAddr = await new Promise((resolve, reject) => {
    let text = "";
    fake.stdout.on("data", (d) => { text += d; if (text.includes("\n")) resolve(text.trim().split("\n")[0]); });
    fake.on("exit", () => reject(new Error("fake-upstream exited")));
  });
  const base = fakeAddr.startsWith("http") ? fakeAddr : `http://${fakeAddr}`;
  const data = path.join(dir, "data");
  const configFile = path.join(dir, "tollgate.toml");
  writeFileSync(configFile, `
data_dir = "${data}"
database_url = "sqlite://${data}/tollgate.db"

[[providers]]
name = "openai"
kind = "openai"
base_url = "${base}/v1"
api_key_env = "FAKE_OPENAI_KEY"

[[models]]
id = "gpt-test"
provider = "openai"
endpoints = ["chat.completions", "responses"]
max_output_tokens = 1000
pricing = { input = "2.50", cached_input = "1.25", output = "10.00" }

[[models]]
id = "gpt-small"
provider = "openai"
endpoints = ["chat.completions"]
max_output_tokens = 1000
pricing = { input = "0.40", output = "1.60" }
`);
  const listen = await freePort();
  const url = `http://127.0.0.1:${listen}`;
  const logFile = path.join(dir, "tollgate.log");
  const gateway = spawn(tollgate, ["serve", "--config", configFile, "--listen", `127.0.0.1:${listen}`], { env, cwd: dir, stdio: ["ignore", openSync(logFile, "w"), openSync(logFile, "a")] });
  const deadline = Date.now() + 30000;
  for (;;) {
    try { if ((await fetch(`${url}/readyz`)).status === 200) break; } catch { /* not yet */ }
    if (Date.now() > deadline || gateway.exitCode !== null) throw new Error(`tollgate did not start:\n${readFileSync(logFile, "utf8")}`);
    await sleep(50);
  }
  const cli = (...args) => {
    const run = spawnSync(tollgate, [...args, "--config", configFile], { env, cwd: dir, encoding: "utf8" });
    if (run.status !== 0) throw new Error(`tollgate ${args.join(" ")} failed: ${run.stdout}${run.stderr}`);
    return run.stdout.trim();
  };
  return {
    url,
    log: () => readFileSync(logFile, "utf8"),
    provisioningKey: readFileSync(path.join(data, "provisioning-key.txt"), "utf8").trim(),
    cli,
    stop() { gateway.kill("SIGTERM"); fake.kill("SIGTERM"); },
  };
}

/** Chromium from Debian, headless. */
export async function launch() {
  const { chromium } = await import("playwright-core");
  return chromium.launch({
    executablePath: process.env.CHROMIUM_BIN || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
  });
}

/** A screenshot of the whole page, light and dark. */
export async function shoot(page, name) {
  mkdirSync(SCREENSHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SCREENSHOTS, `${name}.png`), fullPage: true });
  await page.emulateMedia({ colorScheme: "dark" });
  await page.screenshot({ path: path.join(SCREENSHOTS, `${name}-dark.png`), fullPage: true });
  await page.emulateMedia({ colorScheme: "light" });
}

/** axe-core's violations of impact serious or critical, in both themes. */
export async function seriousViolations(page) {
  const found = [];
  for (const scheme of ["light", "dark"]) {
    await page.emulateMedia({ colorScheme: scheme });
    const has = await page.evaluate(() => typeof window.axe !== "undefined");
    if (!has) await page.evaluate(AXE);
    const result = await page.evaluate(() => window.axe.run(document, { resultTypes: ["violations"] }));
    for (const v of result.violations) {
      if (v.impact === "serious" || v.impact === "critical") {
        found.push(`${scheme}: ${v.id} (${v.impact}): ${v.help} — ${v.nodes.slice(0, 3).map((n) => n.target.join(" ")).join(", ")}`);
      }
    }
  }
  await page.emulateMedia({ colorScheme: "light" });
  return found;
}

/**
 * Tabs through the page from the top and returns the actionable elements (links, buttons,
 * fields) that focus never reached.
 */
export async function unreachableByKeyboard(page) {
  const actionable = await page.evaluate(() => {
    const els = [...document.querySelectorAll("a[href], button, input:not([type=hidden]), select, textarea, summary")];
    els.forEach((el, i) => el.setAttribute("data-tab-probe", String(i)));
    return els.filter((el) => el.offsetParent !== null || el.getClientRects().length > 0).map((el) => el.getAttribute("data-tab-probe"));
  });
  const reached = new Set();
  await page.evaluate(() => { document.activeElement?.blur(); window.scrollTo(0, 0); });
  for (let i = 0; i < actionable.length * 2 + 5; i++) {
    await page.keyboard.press("Tab");
    const probe = await page.evaluate(() => document.activeElement?.getAttribute("data-tab-probe"));
    if (probe != null) reached.add(probe);
    if (reached.size === actionable.length) break;
  }
  const missing = actionable.filter((p) => !reached.has(p));
  return page.evaluate((ids) => ids.map((id) => document.querySelector(`[data-tab-probe="${id}"]`)?.outerHTML.slice(0, 120)), missing);
}
