// The web app and the console in a real browser: Debian's chromium, headless, driven by
// playwright-core (nothing downloads a browser). Two browser contexts are two users on two
// nodes; a node is stopped and killed, and the page reconnects and shows what it missed; the
// console shows the gifts in its charts. Screenshots go to docs/screenshots/.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { NotecardClient } from "../dist/index.js";
import { befriend, startTestbed, unique } from "../support/testbed.mjs";

const docs = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "docs", "screenshots");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
  "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"];
const WAIT = { timeout: 20_000 };

let bed;
let browser;
const closers = [];

before(async () => {
  assert.ok(existsSync(CHROMIUM), `no browser at ${CHROMIUM}: apt-get install chromium (scripts/setup test does)`);
  bed = await startTestbed(2);
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: FLAGS });
});

after(async () => {
  for (const close of closers) await close().catch(() => undefined);
  await browser?.close();
  if (bed) {
    const invariant = await bed.admin("GET", "/admin/invariant");
    await bed.stop();
    assert.equal(invariant.ok, true, JSON.stringify(invariant.violations));
  }
});

async function signIn(page, url, user) {
  await page.goto(url);
  await page.fill("#signin-user", user);
  await page.click("#signin-form button[type=submit]");
  await page.locator("#status").filter({ hasText: "connected" }).waitFor(WAIT);
}

test("two users on two nodes gift, accept, decline; a node dies and the page shows what it missed; the console charts it", async () => {
  const [alice, bob] = [unique("alice"), unique("bob")];
  await befriend(bed, [alice, bob]);
  const [n1, n2] = bed.nodes;
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 1, isMobile: true, hasTouch: true });
  const laptop = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  closers.push(() => phone.close(), () => laptop.close());
  const pageA = await laptop.newPage();
  const pageB = await phone.newPage();
  const problems = [];
  for (const page of [pageA, pageB]) page.on("pageerror", (error) => problems.push(String(error)));
  // Alice's page on node 1, Bob's on node 2 (each connects to its own node first).
  await signIn(pageA, `${n1.admin_url}/app/?gateways=${n1.url},${n2.url}`, alice);
  await signIn(pageB, `${n2.admin_url}/app/?gateways=${n2.url},${n1.url}`, bob);
  assert.match(await pageA.textContent("#status"), new RegExp(`^connected · ${n1.name}`));
  assert.match(await pageB.textContent("#status"), new RegExp(`^connected · ${n2.name}`));
  assert.equal(await pageA.textContent('#balance [data-kind="note"]'), "10");

  async function give(qty) {
    await pageA.fill("#give-to", bob);
    await pageA.fill("#give-qty", String(qty));
    await pageA.click("#give-send");
    await pageA.locator("#give-result .notice.ok").last().waitFor(WAIT);
  }

  // Accept.
  await give(2);
  const first = pageB.locator("#offers li").first();
  await first.waitFor(WAIT);
  assert.match(await first.textContent(), new RegExp(`2 note cards from ${alice}`));
  await first.locator("button", { hasText: "Accept" }).click();
  await pageA.locator('#outcomes li[data-state="accepted"]').waitFor(WAIT);
  await pageB.locator('#balance [data-kind="note"]', { hasText: "12" }).waitFor(WAIT);
  assert.equal(await pageA.textContent('#balance [data-kind="note"]'), "8");

  // Decline.
  await give(1);
  await pageB.locator("#offers li").first().locator("button", { hasText: "Decline" }).click();
  await pageA.locator('#outcomes li[data-state="declined"]').waitFor(WAIT);
  await pageA.locator('#balance [data-kind="note"]', { hasText: "8" }).waitFor(WAIT);

  // A refusal is explained.
  await pageA.fill("#give-to", alice);
  await pageA.click("#give-send");
  await pageA.locator("#give-result .notice.bad", { hasText: "SELF_GIFT" }).waitFor(WAIT);

  // Bob's tablet (the SDK in this process) keeps him online on node 1.
  const tablet = new NotecardClient(n1.url, bed.tokenFor(bob));
  closers.push(() => tablet.close());
  await tablet.connect();
  await give(1);
  const pendingId = await pageB.locator("#offers li").first().getAttribute("data-gift");
  // Node 2 stops (frozen, then killed): what happens meanwhile never reaches Bob's page.
  process.kill(n2.pid, "SIGSTOP");
  await tablet.accept(pendingId);
  await give(1);
  bed.kill(1);
  await pageB.locator("#away", { hasText: "While you were away: 1 offer(s), 1 outcome(s)" }).waitFor(WAIT);
  assert.match(await pageB.textContent("#status"), new RegExp(`^connected · ${n1.name}`));
  await pageB.locator(`#outcomes li[data-gift="${pendingId}"][data-state="accepted"]`, { hasText: "while you were away" }).waitFor(WAIT);
  await pageB.locator("#offers li", { hasText: "while you were away" }).waitFor(WAIT);
  await pageB.locator('#balance [data-kind="note"]', { hasText: "13" }).waitFor(WAIT);
  await pageB.screenshot({ path: join(docs, "app.png"), fullPage: true });

  // The console on node 1: the admin token entered, the gifts in its charts.
  const ops = await laptop.newPage();
  ops.on("pageerror", (error) => problems.push(String(error)));
  await ops.goto(`${n1.admin_url}/console/`);
  await ops.fill("#token", "wrong-token");
  await ops.click("#signin-form button[type=submit]");
  await ops.locator("#signin-error", { hasText: "admin token missing or wrong" }).waitFor(WAIT);
  await ops.fill("#token", bed.admin_token);
  await ops.click("#signin-form button[type=submit]");
  await ops.locator('[data-testid="gifts-sent"]', { hasText: /^[4-9]$/ }).waitFor(WAIT);
  await ops.locator("#c-gifts canvas").waitFor(WAIT);
  await ops.locator('[data-testid="invariant"]', { hasText: "ok" }).waitFor(WAIT);
  // A gift while the console watches shows in its gifts/s chart.
  await tablet.sendGift(alice); // the daily limits keep Alice from giving Bob a fourth
  await ops.waitForFunction(() => Number(document.querySelector("#c-gifts")?.dataset.peakSent ?? 0) > 0, null, WAIT);
  await ops.locator('[data-testid="gifts-sent"]', { hasText: "5" }).waitFor(WAIT);
  await ops.fill("#user-id", bob);
  await ops.click("#user-form button[type=submit]");
  await ops.locator("#user table").waitFor(WAIT);
  assert.match(await ops.textContent("#user"), /12 available, 1 held/);
  await ops.screenshot({ path: join(docs, "console.png"), fullPage: true });
  assert.deepEqual(problems, []);
});
