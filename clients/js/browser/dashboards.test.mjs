// The console's business dashboards in a real browser (Debian's chromium, headless): a
// testbed node whose PostgreSQL holds the dashboards' generated data set (docs/dashboards.md);
// the panel shows what the admin API answers, for every brand and for one. The screenshot
// goes to docs/screenshots/console-dashboards.png.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { startTestbed } from "../support/testbed.mjs";

const docs = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "docs", "screenshots");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
  "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"];
const WAIT = { timeout: 20_000 };

let bed;
let browser;

before(async () => {
  assert.ok(existsSync(CHROMIUM), `no browser at ${CHROMIUM}: apt-get install chromium (scripts/setup test does)`);
  bed = await startTestbed(1, ["--dashboards", "1:400"]);
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: FLAGS });
});

after(async () => {
  await browser?.close();
  if (bed) {
    const invariant = await bed.admin("GET", "/admin/invariant");
    await bed.stop();
    assert.equal(invariant.ok, true, JSON.stringify(invariant.violations));
  }
});

const cells = (row) => row.locator("td").allTextContents();

test("the console draws the three dashboards the admin API serves, for every brand and for one", async () => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (error) => problems.push(String(error)));
  await page.goto(`${bed.nodes[0].admin_url}/console/`);
  await page.fill("#token", bed.admin_token);
  await page.click("#signin-form button[type=submit]");

  const conversion = await bed.admin("GET", "/admin/dashboards/conversion");
  assert.deepEqual(conversion.campaigns.map((c) => c.campaign), ["aurora-launch", "lumen-fans", "aurora-winter"]);
  for (const c of conversion.campaigns) {
    const row = page.locator(`#dash-conversion tr[data-campaign="${c.campaign}"]`);
    await row.waitFor(WAIT);
    const [, issued, accepted, purchased] = await cells(row);
    assert.equal(issued, String(c.issued));
    assert.match(accepted, new RegExp(`^${c.accepted} \\(`));
    assert.match(purchased, new RegExp(`^${c.purchased} \\(`));
  }
  const profile = await bed.admin("GET", "/admin/dashboards/profile");
  const regions = page.locator('#dash-profile [data-dimension="region"] tr');
  assert.equal(await regions.count(), profile.breakdown.region.length);
  assert.equal((await cells(regions.first()))[1], String(profile.breakdown.region[0].recipients));
  const retention = await bed.admin("GET", "/admin/dashboards/retention");
  assert.equal(await page.locator("#dash-retention tr[data-cohort]").count(), retention.cohorts.length);
  const first = retention.cohorts[0];
  const day1 = (await cells(page.locator(`#dash-retention tr[data-cohort="${first.day}"]`)))[2];
  assert.equal(day1, `${Math.round(first.rate[0] * 100)}%`);
  await page.screenshot({ path: join(docs, "console-dashboards.png"), fullPage: true });

  // One brand: its campaigns only, and its recipients.
  await page.fill("#dash-brand", "shop_lumen");
  await page.click("#dash-form button[type=submit]");
  await page.locator("#dash-conversion tr[data-campaign]").first().waitFor(WAIT);
  await page.waitForFunction(() => document.querySelectorAll("#dash-conversion tr[data-campaign]").length === 1, null, WAIT);
  assert.equal(await page.locator('#dash-conversion tr[data-campaign="lumen-fans"]').count(), 1);
  const lumen = await bed.admin("GET", "/admin/dashboards/profile?brand=shop_lumen");
  await page.locator('#dash-profile [data-dimension="app"] .muted', { hasText: `${lumen.recipients} recipients` }).waitFor(WAIT);

  // A bad scope is the API's message, and no error on the page.
  await page.fill("#dash-brand", "no spaces");
  await page.click("#dash-form button[type=submit]");
  await page.locator("#dash-error", { hasText: "BAD_REQUEST" }).waitFor(WAIT);
  assert.deepEqual(problems, []);
  await context.close();
});
