// The console in a real browser: the account holder's and the operator's flows from
// issue 18, a screenshot of every page (light and dark, in screenshots/), axe-core with
// no serious or critical violation, and every action reachable with the Tab key.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { startGateway, launch, shoot, seriousViolations, unreachableByKeyboard } from "./harness.mjs";

let gw;
let browser;
let context;
let page;
const shared = {};

/** Checks a page the way every page is checked: accessibility, keyboard, screenshots. */
async function checkPage(name) {
  await shoot(page, name);
  assert.deepEqual(await seriousViolations(page), [], `axe on ${name}`);
  assert.deepEqual(await unreachableByKeyboard(page), [], `keyboard on ${name}`);
}

async function gateway(method, path, key, body) {
  return fetch(`${gw.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: body && JSON.stringify(body),
  });
}

describe("the console", { concurrency: false }, () => {
  before(async () => {
    gw = await startGateway();
    gw.cli("credits", "grant", "default", "100", "--note", "Welcome credits");
    browser = await launch();
    context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 900 } });
    await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: gw.url });
    page = await context.newPage();
  });

  after(async () => {
    await browser?.close();
    gw?.stop();
  });

  test("signs in with the provisioning key", async () => {
    await page.goto(`${gw.url}/`);
    assert.match(page.url(), /\/console\/sign-in$/);
    await checkPage("01-sign-in");
    await page.fill("#key", "tg-prov-wrong");
    await page.press("#key", "Enter");
    await page.waitForSelector("[role=alert]");
    assert.match(await page.textContent("[role=alert]"), /Invalid provisioning key/);
    await page.fill("#key", gw.provisioningKey);
    await page.press("#key", "Enter");
    await page.waitForURL(`${gw.url}/console`);
    const cookies = await context.cookies();
    const session = cookies.find((c) => c.name === "tollgate_session");
    assert.ok(session.httpOnly, "HttpOnly");
    assert.equal(session.sameSite, "Strict");
    assert.ok(!cookies.some((c) => c.value.includes(gw.provisioningKey)), "the key is not in a cookie");
    const stored = await page.evaluate(() => JSON.stringify({ ...localStorage }) + JSON.stringify({ ...sessionStorage }) + document.cookie);
    assert.ok(!stored.includes(gw.provisioningKey), "the key is not in the browser's storage");
    assert.match(await page.textContent("[data-balance]"), /\$100\.00/);
    await checkPage("02-overview-empty");
  });

  test("creates a key and shows its plaintext once", async () => {
    await page.click("nav >> text=Keys");
    await page.fill("#name", "Browser key");
    await page.fill("#credit_limit", "10");
    await page.click("button:has-text('Create key')");
    await page.waitForSelector("[data-secret]");
    shared.secret = (await page.textContent("[data-secret]")).trim();
    assert.match(shared.secret, /^tg-inf-[0-9a-f]{48}$/);
    assert.match(await page.textContent(".secret"), /Store it now/);
    await page.click("button[data-copy]");
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), shared.secret);
    await checkPage("03-key-created");
    // Listed, and never shown again.
    await page.goto(`${gw.url}/console/keys`);
    const row = page.locator("#keys tbody tr", { hasText: "Browser key" });
    assert.equal(await row.count(), 1);
    shared.keyId = await row.getAttribute("data-key-id");
    assert.ok(!(await page.content()).includes(shared.secret));
    assert.match(await row.textContent(), /\$10\.00/);
    await checkPage("04-keys");
  });

  test("edits the key's limit", async () => {
    await page.click("a[aria-label='Edit Browser key']");
    await page.fill("#credit_limit", "20");
    await page.selectOption("#limit_reset", "monthly");
    await checkPage("05-key-edit");
    await page.click("button:has-text('Save changes')");
    await page.waitForURL(/done=saved/);
    const row = page.locator("#keys tbody tr", { hasText: "Browser key" });
    assert.match(await row.textContent(), /\$20\.00 monthly/);
    const api = await (await gateway("GET", "/v1/key", shared.secret)).json();
    assert.equal(api.credit_limit, 20);
    assert.equal(api.limit_reset, "monthly");
  });

  test("a model call shows in the chart, the log and the CSV", async () => {
    const response = await gateway("POST", "/v1/chat/completions", shared.secret, {
      model: "gpt-test", messages: [{ role: "user", content: "Hello from the browser test" }], max_tokens: 50,
    });
    assert.equal(response.status, 200);
    const cost = response.headers.get("x-tollgate-cost");
    shared.requestId = response.headers.get("x-request-id");
    assert.ok(Number(cost) > 0);
    await page.goto(`${gw.url}/console`);
    const today = new Date().toISOString().slice(0, 10);
    const day = page.locator(`g.day[data-day="${today}"]`);
    assert.equal(Number(await day.getAttribute("data-total")), Number(cost));
    assert.equal(Number(await day.locator("rect[data-model='gpt-test']").getAttribute("data-cost")), Number(cost));
    assert.match(await page.textContent(".legend"), /gpt-test/);
    await checkPage("06-overview");

    await page.click("nav >> text=Requests");
    const row = page.locator(`tr[data-request-id="${shared.requestId}"]`);
    assert.equal(await row.count(), 1);
    assert.match(await row.textContent(), /gpt-test/);
    await page.selectOption("#f-status", "error");
    await page.click("button:has-text('Apply')");
    await page.waitForURL(/status=error/);
    assert.equal(await page.locator(`tr[data-request-id="${shared.requestId}"]`).count(), 0);
    await page.selectOption("#f-status", "success");
    await page.selectOption("#f-key", shared.keyId);
    await page.click("button:has-text('Apply')");
    await page.waitForURL(/status=success/);
    assert.equal(await page.locator(`tr[data-request-id="${shared.requestId}"]`).count(), 1);
    await checkPage("07-requests");

    const [download] = await Promise.all([page.waitForEvent("download"), page.click("text=Export CSV")]);
    const csv = readFileSync(await download.path(), "utf8");
    assert.match(csv, /^request_id,created_at/);
    assert.ok(csv.includes(shared.requestId), csv);

    await page.click(`a[aria-label='Details of request ${shared.requestId}']`);
    assert.match(await page.textContent("main"), /openai/);
    await checkPage("08-request-details");
  });

  test("shows credits, models and the API reference", async () => {
    await page.click("nav >> text=Credits");
    assert.match(await page.textContent("main"), /Welcome credits/);
    await checkPage("09-credits");
    await page.click("nav >> text=Models");
    assert.match(await page.textContent("#models"), /gpt-small/);
    await checkPage("10-models");
    await page.click("nav >> text=API reference");
    assert.match(await page.textContent("main"), /\/v1\/chat\/completions/);
    await checkPage("11-reference");
  });

  test("deletes the key after a confirmation, then signs out", async () => {
    await page.goto(`${gw.url}/console/keys`);
    await page.click("a[aria-label='Delete Browser key']");
    await checkPage("12-key-delete");
    await page.click("button:has-text('Delete key')");
    await page.waitForURL(/done=deleted/);
    assert.equal(await page.locator("#keys tbody tr", { hasText: "Browser key" }).count(), 0);
    assert.equal((await gateway("GET", "/v1/key", shared.secret)).status, 401);
    await page.click("button:has-text('Sign out')");
    await page.waitForURL(/sign-in/);
    await page.goto(`${gw.url}/console/keys`);
    assert.match(page.url(), /sign-in/);
  });

  test("the operator creates an account, grants credits and mints a key that signs in", async () => {
    const opKey = gw.cli("operator-keys", "create", "--name", "browser");
    await page.goto(`${gw.url}/console/sign-in`);
    await page.fill("#key", opKey);
    await page.press("#key", "Enter");
    await page.waitForURL(`${gw.url}/console`);
    assert.match(await page.textContent("#accounts"), /default/);
    await checkPage("13-accounts");
    await page.fill("#account-name", "acme");
    await page.click("button:has-text('Create account')");
    await page.waitForURL(/done=created/);
    await page.fill("#amount", "25");
    await page.fill("#note", "Pilot credits");
    await page.click("button:has-text('Grant credits')");
    await page.waitForURL(/done=granted/);
    assert.match(await page.textContent("[data-balance]"), /\$25\.00/);
    await page.fill("#key-name", "acme admin");
    await page.click("button:has-text('Mint key')");
    await page.waitForSelector("[data-secret]");
    const prov = (await page.textContent("[data-secret]")).trim();
    assert.match(prov, /^tg-prov-/);
    assert.match(await page.textContent("#grants"), /Pilot credits/);
    await checkPage("14-account");
    await page.click("button:has-text('Sign out')");
    await page.waitForURL(/sign-in/);
    await page.fill("#key", prov);
    await page.press("#key", "Enter");
    await page.waitForURL(`${gw.url}/console`);
    assert.match(await page.textContent("header"), /acme/);
    assert.match(await page.textContent("[data-balance]"), /\$25\.00/);
  });
});
