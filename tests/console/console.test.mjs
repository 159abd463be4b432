// The console, end to end, in Debian's chromium driven by playwright-core: sign in, create a key
// and see its secret once, send traffic with it, see it on the usage page and the live tail,
// rotate it (both secrets work during the overlap) and edit its limits,
// make a deployment fail at the mock and see it unhealthy, revoke the key and see the gateway
// refuse it, sign out and be refused. Screenshots of each page go to $SCREENSHOTS.
// Run by tests/python/test_console.py, which starts mock-upstream and the gateway.
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";

const GATEWAY = process.env.GATEWAY_URL;
const MOCK = process.env.MOCK_URL;
const MASTER = process.env.MASTER_KEY;
const MODEL = process.env.MODEL;
const SHOTS = process.env.SCREENSHOTS;
mkdirSync(SHOTS, { recursive: true });

const step = (text) => console.log(`-- ${text}`);

async function until(what, check, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try {
      last = await check();
      if (last) return last;
    } catch (error) {
      last = error;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`timed out waiting for ${what} (last: ${last})`);
}

async function chat(key, stream = false) {
  const response = await fetch(`${GATEWAY}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: JSON.stringify({ model: MODEL, stream, messages: [{ role: "user", content: "Hello from the console test" }] }),
  });
  await response.text();
  return response.status;
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-background-networking"],
});
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const consoleErrors = [];
  page.on("console", (message) => { if (message.type() === "error") consoleErrors.push(message.text()); });
  page.on("pageerror", (error) => consoleErrors.push(String(error)));
  page.on("dialog", (dialog) => dialog.accept(dialog.type() === "prompt" ? "1h" : undefined));

  step("nothing of the console without a session");
  const anonymous = await (await fetch(`${GATEWAY}/ui/app.js`)).status;
  assert.equal(anonymous, 401, "the console's script needs a session");
  assert.equal((await fetch(`${GATEWAY}/admin/overview`)).status, 401);

  step("sign in: a wrong key is refused, the master key opens the console");
  await page.goto(`${GATEWAY}/ui`);
  await page.getByLabel("Master key").fill("not-the-master-key");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("alert").filter({ hasText: "not the master key" }).waitFor();
  await page.getByLabel("Master key").fill(MASTER);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Overview" }).waitFor();
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === "shepherd_console");
  assert.ok(session, "a session cookie");
  assert.equal(session.httpOnly, true);
  assert.equal(session.sameSite, "Strict");

  step("a change without the CSRF token is refused, even with the cookie");
  const noCsrf = await page.request.post(`${GATEWAY}/admin/keys`, { data: { name: "forged" } });
  assert.equal(noCsrf.status(), 403);

  step("create a key: its secret is shown once");
  await page.getByRole("link", { name: "Keys" }).click();
  await page.getByRole("heading", { name: "Keys", exact: true }).waitFor();
  const create = page.locator("#create-key");
  await create.getByLabel("Name").fill("console-e2e");
  await create.getByLabel("Budget (USD)").fill("5");
  await create.getByRole("button", { name: "Create key" }).click();
  const secret = (await page.locator("#new-secret").textContent()).trim();
  assert.match(secret, /^sk-shep-/);
  await page.locator('tr[data-key="console-e2e"]').waitFor();
  await page.screenshot({ path: `${SHOTS}/keys.png`, fullPage: true });
  await page.reload();
  await page.getByRole("heading", { name: "Keys", exact: true }).waitFor();
  assert.equal(await page.locator("#new-secret").count(), 0, "the secret is not shown again");
  assert.ok(!(await page.content()).includes(secret), "nor anywhere in the page");

  step("traffic with the new key");
  for (let i = 0; i < 3; i++) assert.equal(await chat(secret), 200);
  assert.equal(await chat(secret, true), 200);

  step("the usage page shows its requests, tokens and cost");
  await page.getByRole("link", { name: "Usage and cost" }).click();
  await page.getByRole("heading", { name: "Usage and cost" }).waitFor();
  await page.locator("#group-by").selectOption("key");
  const usageRow = await until("the key on the usage page", async () => {
    await page.locator("#group-by").selectOption("model");
    await page.locator("#group-by").selectOption("key");
    const row = page.locator("#usage-table tbody tr", { hasText: "console-e2e" });
    if ((await row.count()) === 0) return false;
    const cells = await row.locator("td").allTextContents();
    return Number(cells[1].replace(/,/g, "")) >= 4 ? cells : false;
  });
  assert.ok(Number(usageRow[3].replace(/,/g, "")) > 0, "prompt tokens counted");
  assert.match(usageRow[5], /^\$\d/, "a cost");
  assert.ok(Number(usageRow[5].slice(1)) > 0, "the cost is not zero");
  const csvHref = await page.locator("#csv").getAttribute("href");
  const csv = await page.request.get(`${GATEWAY}${csvHref}`);
  assert.equal(csv.status(), 200);
  assert.match(csv.headers()["content-type"], /text\/csv/);
  assert.match(await csv.text(), /^key,day,requests,errors,/);
  await page.screenshot({ path: `${SHOTS}/usage.png`, fullPage: true });

  step("the live tail shows them, filtered by key");
  await page.getByRole("link", { name: "Requests" }).click();
  await page.locator("#filter-key").fill("console-e2e");
  await page.locator("#filter-key").press("Enter");
  await until("4 requests of the key in the tail", async () => (await page.locator("#requests-table tbody tr[data-request]").count()) >= 4);
  const tailCells = await page.locator("#requests-table tbody tr[data-request]").first().locator("td").allTextContents();
  assert.equal(tailCells[1], "200");
  assert.equal(tailCells[2], "console-e2e");
  assert.equal(tailCells[3], MODEL);
  await page.screenshot({ path: `${SHOTS}/requests.png`, fullPage: true });

  step("the overview counts today's traffic");
  await page.getByRole("link", { name: "Overview" }).click();
  await until("requests on the overview", async () => {
    await page.reload();
    const text = await page.locator('[data-card="requests-today"] .value').textContent();
    return Number(text.replace(/,/g, "")) >= 4;
  });
  await page.screenshot({ path: `${SHOTS}/overview.png`, fullPage: true });

  step("rotate the key with an hour of overlap: both secrets work");
  await page.getByRole("link", { name: "Keys" }).click();
  await page.locator('tr[data-key="console-e2e"] [data-action="rotate"]').click();
  const rotated = (await page.locator("#new-secret").textContent()).trim();
  assert.match(rotated, /^sk-shep-/);
  assert.notEqual(rotated, secret);
  assert.equal(await chat(rotated), 200);
  assert.equal(await chat(secret), 200, "the old secret during the overlap");

  step("edit the key's limits: the table shows them");
  await page.locator('tr[data-key="console-e2e"] [data-action="edit"]').click();
  await page.locator("#edit-key").getByLabel("Requests/min").fill("600");
  await page.locator("#edit-key").getByRole("button", { name: "Save" }).click();
  await until("the new limit in the table", async () => (await page.locator('tr[data-key="console-e2e"]').textContent()).includes("600 rpm"));

  step("a failing deployment shows unhealthy");
  const failing = await fetch(`${MOCK}/_mock/behavior`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ status: 500 }) });
  assert.equal(failing.status, 200);
  for (let i = 0; i < 3; i++) assert.ok((await chat(secret)) >= 500);
  await page.getByRole("link", { name: "Deployments" }).click();
  const row = page.locator("tr[data-deployment]").first();
  await until("the deployment unhealthy", async () => (await row.textContent()).includes("unhealthy"));
  assert.match(await row.textContent(), /open/);
  await page.screenshot({ path: `${SHOTS}/deployments.png`, fullPage: true });
  await fetch(`${MOCK}/_mock/reset`, { method: "POST" });

  step("revoke the key: the gateway refuses it");
  await page.getByRole("link", { name: "Keys" }).click();
  await page.locator('tr[data-key="console-e2e"] [data-action="revoke"]').click();
  await until("the key revoked", async () => (await page.locator('tr[data-key="console-e2e"]').textContent()).includes("revoked"));
  await until("the gateway refusing it", async () => (await chat(secret)) === 401);
  assert.equal(await chat(rotated), 401, "its rotated secret too");

  step("readable in a narrow window");
  await page.setViewportSize({ width: 390, height: 844 });
  await page.getByRole("link", { name: "Overview" }).click();
  await page.getByRole("heading", { name: "Overview" }).waitFor();
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `no sideways scrolling of the page (${overflow}px)`);
  await page.screenshot({ path: `${SHOTS}/overview-narrow.png`, fullPage: true });
  await page.setViewportSize({ width: 1280, height: 900 });

  step("keyboard: the pages are reachable with Tab and Enter");
  await page.locator("nav a").first().focus();
  await page.keyboard.press("Tab");
  await page.keyboard.press("Enter");
  await page.getByRole("heading", { name: "Usage and cost" }).waitFor();

  step("sign out: the session is gone and the console refuses");
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByLabel("Master key").waitFor();
  await page.screenshot({ path: `${SHOTS}/sign-in.png` });
  assert.equal((await page.request.get(`${GATEWAY}/admin/keys`)).status(), 401);
  const replayed = await fetch(`${GATEWAY}/admin/keys`, { headers: { cookie: `shepherd_console=${session.value}` } });
  assert.equal(replayed.status, 401, "the old cookie is dead");
  assert.deepEqual(consoleErrors.filter((e) => !e.includes("401")), [], "no script errors");
  console.log("console test passed");
} finally {
  await browser.close();
}
