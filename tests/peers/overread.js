// The physician over-read in a real browser (playwright-core driving Debian's chromium), as
// people would do it: used by tests/test_overread_browser.py.
//
//   node overread.js plan.json   ->  JSON on stdout: what the browser saw at each step
//
// plan.json: {"chromium", "base", "ecg_id", "remove": "AF", "statement": "...",
//             "reader": {"username", "password"}, "viewer": {"username", "password"},
//             "shots": {"worklist": "/tmp/shots/worklist.png", "confirm": "/tmp/shots/confirm.png"}}
//
// 1. The reader logs in on the login form (user name and password), lands on the worklist
//    (screenshot), opens the ECG from it, removes one finding, adds a statement (screenshot of
//    the confirm form), and confirms.  Before confirming, the same form is posted without its
//    CSRF token from the reader's own browser context (cookies and all): refused.
// 2. The reader logs out; the session cookie saved before is replayed in a new context: refused
//    (the login page), so logout ended the session on the server.
// 3. A viewer logs in: the ECG page has no confirm form, and a confirm posted with the viewer's
//    own valid CSRF token is refused.
"use strict";
const fs = require("fs");
const { chromium } = require("playwright-core");

async function login(browser, plan, who, next) {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  const page = await context.newPage();
  const csp = [];
  page.on("console", (m) => { if (m.type() === "error" && m.text().includes("Content Security Policy")) csp.push(m.text()); });
  await page.goto(`${plan.base}/login?next=${encodeURIComponent(next)}`);
  await page.fill('input[name="username"]', who.username);
  await page.fill('input[name="password"]', who.password);
  await Promise.all([
    page.waitForURL((u) => !u.pathname.startsWith("/login"), { timeout: 20000 }),
    page.click('button[type="submit"]'),
  ]);
  await page.waitForLoadState("load").catch(() => {});
  return { context, page, csp };
}

const text = (page, selector) => page.locator(selector).first().textContent({ timeout: 3000 }).catch(() => null);

async function main() {
  const plan = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
  const browser = await chromium.launch({ executablePath: plan.chromium, args: ["--no-sandbox", "--disable-gpu"] });
  const out = {};
  try {
    // 1. the reader
    const { context, page, csp } = await login(browser, plan, plan.reader, "/worklist");
    out.worklist = {
      url: page.url(),
      h1: await text(page, "h1"),
      count: await text(page, ".worklist-count"),
      ids: await page.locator("table.worklist tbody tr td:first-child a").allTextContents(),
      wards: await page.locator("table.worklist tbody tr td:nth-child(5)").allTextContents(),
    };
    await page.screenshot({ path: plan.shots.worklist, fullPage: true });
    await Promise.all([page.waitForURL((u) => u.pathname === `/ecgs/${plan.ecg_id}`), page.click(`a[href="/ecgs/${plan.ecg_id}#over-read"]`)]);
    const form = page.locator("form.confirm");
    out.ecg_page = {
      url: page.url(),
      state: await text(page, "section.over-read h2 .badge"),
      checked_before: await form.locator('input[name="findings"]:checked').evaluateAll((els) => els.map((e) => e.value)),
    };
    await form.locator(`input[name="findings"][value="${plan.remove}"]`).uncheck();
    await form.locator('textarea[name="statements"]').fill(plan.statement);
    out.ecg_page.checked_after = await form.locator('input[name="findings"]:checked').evaluateAll((els) => els.map((e) => e.value));
    await page.locator("section.over-read").screenshot({ path: plan.shots.confirm });

    // the same form without its CSRF token, from this signed-in browser context: refused
    const forged = await context.request.post(`${plan.base}/ecgs/${plan.ecg_id}/confirm`, {
      form: { findings: plan.remove, statements: "forged" }, maxRedirects: 0,
    });
    out.without_csrf = { status: forged.status(), body: (await forged.text()).slice(0, 4000) };

    await Promise.all([page.waitForURL((u) => u.pathname === "/worklist", { timeout: 60000 }), form.locator("button.confirm-edited").click()]);
    out.after_confirm = {
      url: page.url(),
      note: await text(page, ".confirmed-note"),
      count: await text(page, ".worklist-count"),
      ids: await page.locator("table.worklist tbody tr td:first-child a").allTextContents(),
    };
    await page.goto(`${plan.base}/ecgs/${plan.ecg_id}`);
    out.confirmed_page = {
      state: await text(page, "section.over-read h2 .badge"),
      by: await text(page, "section.over-read .confirmed-by"),
      versions: await page.locator("table.confirmations tr.confirmation-version").count(),
    };
    out.reader_csp = csp;

    // 2. logout really ends the session: the cookie saved before is refused afterwards
    const cookies = await context.cookies();
    await Promise.all([page.waitForURL((u) => u.pathname.startsWith("/login")), page.click("form.logout button")]);
    out.after_logout = { url: page.url() };
    await page.goto(`${plan.base}/worklist`);
    out.same_browser_after_logout = { url: page.url() };
    const replay = await browser.newContext();
    await replay.addCookies(cookies);
    const again = await replay.newPage();
    await again.goto(`${plan.base}/worklist`);
    out.replayed_cookie = { url: again.url(), h1: await text(again, "h1") };
    await replay.close();
    await context.close();

    // 3. a viewer: no form, and a confirm with the viewer's own CSRF token is refused
    const viewer = await login(browser, plan, plan.viewer, `/ecgs/${plan.ecg_id}`);
    const token = await viewer.page.locator('form.logout input[name="csrf_token"]').getAttribute("value");
    out.viewer = {
      url: viewer.page.url(),
      forms: await viewer.page.locator("form.confirm").count(),
      note: await text(viewer.page, "section.over-read .note"),
    };
    const refused = await viewer.context.request.post(`${plan.base}/ecgs/${plan.ecg_id}/confirm`, {
      form: { csrf_token: token, findings: plan.remove }, maxRedirects: 0,
    });
    out.viewer.confirm = { status: refused.status(), body: (await refused.text()).slice(0, 4000) };
    await viewer.context.close();
  } catch (e) {
    out.error = String(e && e.stack ? e.stack : e);
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(out));
}

main();
