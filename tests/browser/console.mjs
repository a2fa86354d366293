// Opens the console in Debian's Chromium, headless: screenshots a live run's
// page, then waits on that same page (no reload) until more of its batch grid's
// cells are applied, and screenshots it again; then the runs page, the run
// now under way.
// Usage: node console.mjs BASE_URL RUN_ID OUT_DIR
// Prints one JSON object: the applied cells at first and at last, whether the
// page was ever reloaded, and what the browser refused under the console's
// Content-Security-Policy (nothing, when every style and script is its own).
import { chromium } from "playwright-core";

const [base, run, out] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 1000 } });
  const refused = [];
  page.on("console", (m) => {
    if (m.text().includes("Content Security Policy")) refused.push(m.text());
  });
  await page.goto(`${base}/runs/${run}`);
  const applied = () => page.locator(".grid i.applied").count();
  const first = await applied();
  // Marks this document: a reload would lose the mark.
  await page.evaluate(() => { window.__sameDocument = true; });
  await page.screenshot({ path: `${out}/run-before.png`, fullPage: true });
  await page.waitForFunction(
    (n) => document.querySelectorAll(".grid i.applied").length > n + 1,
    first,
    { timeout: 90_000, polling: 250 },
  );
  const last = await applied();
  const sameDocument = await page.evaluate(() => window.__sameDocument === true);
  await page.screenshot({ path: `${out}/run-after.png`, fullPage: true });
  await page.goto(`${base}/`);
  await page.screenshot({ path: `${out}/runs.png`, fullPage: true });
  console.log(JSON.stringify({ first, last, sameDocument, refused }));
} finally {
  await browser.close();
}
