// The reviewer's decisions in Debian's Chromium, headless, on a phone-sized
// screen (390 px): the runs page's "Needs you", the canary page's figures,
// promoting, the page following the run to its end without a reload (badge
// and actions), validating, then approving; a cancel asks first; the change note.
// Usage: node decide.mjs BASE_URL RUN_ID OUT_DIR TOKEN
// Prints one JSON object of what each page showed, how wide each page was,
// whether the page was reloaded while the run finished, and what the browser
// refused under the console's Content-Security-Policy.
import { chromium } from "playwright-core";

const [base, run, out, token] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu"],
});
const phone = { width: 390, height: 844 };
try {
  const context = await browser.newContext({
    viewport: phone,
    extraHTTPHeaders: { Authorization: `Bearer ${token}` },
  });
  const page = await context.newPage();
  const refused = [];
  page.on("console", (m) => {
    if (m.text().includes("Content Security Policy")) refused.push(m.text());
  });
  const widths = {};
  const measure = async (name) => {
    widths[name] = await page.evaluate(() => document.documentElement.scrollWidth);
  };
  const forms = (action) => page.locator(`form[action$="/actions/${action}"]`).count();
  const decision = () => page.locator(".decision").innerText();
  const post = (action) =>
    Promise.all([page.waitForNavigation(), page.click(`form[action$="/actions/${action}"] button`)]);
  // A screenshot of the page's top for people reading about the console, at a
  // desktop's width.
  const shot = async (name) => {
    await page.setViewportSize({ width: 1100, height: 1250 });
    await page.screenshot({ path: `${out}/${name}.png` });
    await page.setViewportSize(phone);
  };

  await page.goto(`${base}/`);
  await measure("runs");
  const needs = await page.locator("section.needs").innerText();

  await page.goto(`${base}/runs/${run}`);
  await measure("canary");
  const canary = {
    decision: await decision(),
    live: await page.locator("#live").innerText(),
    batchRows: await page.locator("#live h2:text-is('Canary') ~ .scroll").first().locator("tbody tr").count(),
    promote: await forms("promote"),
    times: await page.locator("time[title]").count(),
  };
  await shot("canary");

  await post("promote");
  await page.evaluate(() => { window.__sameDocument = true; });
  await page.waitForFunction(
    () => document.querySelector(".decision .badge")?.textContent === "applied",
    null,
    { timeout: 120_000, polling: 250 },
  );
  const finished = {
    sameDocument: await page.evaluate(() => window.__sameDocument === true),
    decision: await decision(),
    validate: await forms("validate"),
    approve: await forms("approve"),
  };
  await measure("applied");

  await post("validate");
  const validated = { decision: await decision(), approve: await forms("approve") };
  await shot("approval");

  await post("cancel");
  const cancel = { heading: await page.locator("h1").innerText(), text: await page.locator("main").innerText() };
  await measure("confirm");
  await page.goto(`${base}/runs/${run}/note`);
  await measure("note");

  console.log(JSON.stringify({ needs, canary, finished, validated, cancel, widths, refused }));
} finally {
  await browser.close();
}
