// Drives Debian's chromium (playwright-core, no downloaded browser) through the admin web view's
// login form, the way an admin would, and reports what the browser did. Used by
// tests/test_admin_browser.py.
//
//   node browse.js plan.json   ->  JSON on stdout: one result per step
//
// plan.json: {"chromium": "/usr/bin/chromium", "base": "http://127.0.0.1:PORT", "token": "...",
//             "steps": [{"next": "/ecgs/1", "screenshot": "/tmp/x.png", "inject_inline_style": false,
//                        "download": "a.report-pdf", "download_to": "/tmp/r.pdf"}]}
//             (a step may give "username" and "password": a user's login; else the user name stays
//             empty and the token goes into the password field: the bootstrap admin token)
//             "dom": true reports the page's HTML after the scripts ran ("dom");
//             "logout": true clicks "Log out" at the end, then reports where the browser lands
//             when it opens "next" again ("after_logout_url") and where a new context carrying
//             the cookies copied before the logout lands ("replayed_cookie_url").
// Each step: a fresh browser context opens /login?next=<next>, types the credentials, submits, and
// waits until the browser has left /login (the login answer moves on by itself). Reported:
// the final URL, <title>, the first <h1>, the header's computed background (is style.css
// applied?), every request URL, every Content-Security-Policy violation (securitypolicyviolation
// events and console messages) and every console error. "inject_inline_style" adds an element
// with an inline style attribute afterwards: a control that the CSP check reports violations.
// "download" clicks the first element matching that selector and reports the file the browser
// saved (suggested name, size, first bytes; copied to "download_to" when given); also reported:
// the measurement rows of the page (table.measurements).
"use strict";
const fs = require("fs");
const { chromium } = require("playwright-core");

async function step(browser, plan, s) {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 }, acceptDownloads: true });
  const result = { next: s.next, requests: [], csp: [], console_errors: [], page_errors: [] };
  await context.exposeBinding("__reportCsp", (_source, v) => result.csp.push(v));
  await context.addInitScript(() => {
    document.addEventListener("securitypolicyviolation", (e) =>
      window.__reportCsp({ directive: e.violatedDirective, blocked: e.blockedURI, url: document.URL }));
  });
  const page = await context.newPage();
  page.on("request", (r) => result.requests.push(r.url()));
  page.on("console", (m) => {
    if (m.type() === "error") result.console_errors.push(m.text());
  });
  page.on("pageerror", (e) => result.page_errors.push(String(e)));
  try {
    await page.goto(`${plan.base}/login?next=${encodeURIComponent(s.next)}`);
    if (s.username) await page.fill('input[name="username"]', s.username);
    await page.fill('input[name="password"]', s.password || plan.token);
    await Promise.all([
      page.waitForURL((u) => u.origin !== plan.base || !u.pathname.startsWith("/login"), { timeout: 15000 }),
      page.click('button[type="submit"]'),
    ]);
    await page.waitForLoadState("load").catch(() => {});
    result.url = page.url();
    result.title = await page.title().catch(() => null);
    result.h1 = await page.locator("h1").first().textContent({ timeout: 2000 }).catch(() => null);
    result.header_background = await page
      .evaluate(() => { const h = document.querySelector("header.top"); return h ? getComputedStyle(h).backgroundColor : null; })
      .catch(() => null);
    result.bar_fills = await page
      .evaluate(() => Array.from(document.querySelectorAll("svg.track rect.fill"), (r) => getComputedStyle(r).fill))
      .catch(() => []);
    result.measurements = await page
      .evaluate(() => Array.from(document.querySelectorAll("table.measurements tr[data-measurement]"),
                                 (r) => r.getAttribute("data-measurement")))
      .catch(() => []);
    if (s.download) {
      // click a link (a CSS selector) as an admin would; report the file the browser saved
      const link = page.locator(s.download).first();
      result.download_border = await link.evaluate((a) => getComputedStyle(a).borderTopColor).catch(() => null);
      const [download] = await Promise.all([page.waitForEvent("download", { timeout: 30000 }), link.click()]);
      const saved = await download.path();
      const bytes = fs.readFileSync(saved);
      result.download = { name: download.suggestedFilename(), size: bytes.length, head: bytes.subarray(0, 5).toString("latin1") };
      if (s.download_to) fs.copyFileSync(saved, s.download_to);
    }
    if (s.inject_inline_style) {
      await page.evaluate(() => document.body.insertAdjacentHTML("beforeend", '<p id="control" style="color: red">x</p>'));
      await page.waitForTimeout(300);
    }
    if (s.screenshot) await page.screenshot({ path: s.screenshot, fullPage: true });
    if (s.dom) result.dom = await page.content();
    if (s.logout) {
      const copied = await context.cookies();
      await Promise.all([page.waitForURL((u) => u.pathname.startsWith("/login"), { timeout: 15000 }),
                         page.click('form.logout button[type="submit"]')]);
      result.logout_url = page.url();
      await page.goto(`${plan.base}${s.next}`);
      result.after_logout_url = page.url();
      const thief = await browser.newContext();
      await thief.addCookies(copied);
      const stolen = await thief.newPage();
      await stolen.goto(`${plan.base}${s.next}`);
      result.replayed_cookie_url = stolen.url();
      result.replayed_cookie_h1 = await stolen.locator("h1").first().textContent({ timeout: 2000 }).catch(() => null);
      await thief.close();
    }
    await page.waitForTimeout(200); // late violation reports
  } catch (e) {
    result.error = String(e);
    result.url = page.url();
  }
  await context.close();
  return result;
}

(async () => {
  const plan = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
  const browser = await chromium.launch({
    executablePath: plan.chromium,
    args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--disable-quic",
           "--disable-background-networking", "--disable-component-update", "--no-first-run"],
  });
  const results = [];
  try {
    for (const s of plan.steps) results.push(await step(browser, plan, s));
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(results));
})().catch((e) => { console.error(e); process.exit(1); });
