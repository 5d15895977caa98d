// Browser tests of the wechat-kf console, in Debian's Chromium driven by playwright-core.
// Usage: CONSOLE_URL=http://127.0.0.1:PORT CONSOLE_TOKEN=... SCREENSHOTS=dir node console.mjs
// Run by the service's `console_browser` test against a sandbox `serve` (echo bot on).
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);

const base = process.env.CONSOLE_URL;
const token = process.env.CONSOLE_TOKEN;
// A second sandbox whose webhook fails a message the first time it sees it.
const failingBase = process.env.FAILING_URL;
const failingToken = process.env.FAILING_TOKEN;
const shots = process.env.SCREENSHOTS || "console-screenshots";
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
if (!base || !token || !failingBase || !failingToken) {
  throw new Error("set CONSOLE_URL, CONSOLE_TOKEN, FAILING_URL and FAILING_TOKEN");
}
mkdirSync(shots, { recursive: true });

const failures = [];
const check = (ok, what) => {
  console.log(`${ok ? "ok  " : "FAIL"} ${what}`);
  if (!ok) failures.push(what);
};

const browser = await chromium.launch({ executablePath: chromiumPath, args: ["--no-sandbox"] });
const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
const page = await context.newPage();
page.setDefaultTimeout(10000);
const browserErrors = [];
page.on("console", (m) => { if (m.type() === "error") browserErrors.push(m.text()); });
page.on("pageerror", (e) => browserErrors.push(String(e)));

async function labelled(what) {
  // Every visible control has a name: a <label for>, aria-label, or (buttons) its text.
  const unnamed = await page.evaluate(() => {
    const out = [];
    for (const el of document.querySelectorAll("input, select, textarea, button")) {
      if (el.type === "hidden") continue;
      const byFor = el.id && document.querySelector(`label[for="${el.id}"]`);
      const named = byFor || el.getAttribute("aria-label") ||
        (el.tagName === "BUTTON" && el.textContent.trim());
      if (!named) out.push(el.outerHTML.slice(0, 80));
    }
    return out;
  });
  check(unnamed.length === 0, `${what}: every control is labelled ${unnamed.join(" ")}`);
}

async function reachable(what) {
  // Every visible control is reached by Tab (none is skipped by tabindex or hidden from it).
  // Controls are told apart by what they are, not by identity: the live parts of a page are
  // re-rendered under the test.
  const signature = () => {
    window.__kbSignature = (el) => [el.tagName, el.getAttribute("href"), el.getAttribute("aria-label"),
      el.id, el.getAttribute("name"), el.closest("form")?.getAttribute("action"),
      el.textContent.trim()].join("|");
  };
  await page.evaluate(signature);
  const all = await page.evaluate(() => Array.from(
    document.querySelectorAll("a[href], button, input, select, textarea"))
    .filter((el) => el.type !== "hidden" && el.offsetParent !== null && !el.disabled)
    .map((el) => window.__kbSignature(el)));
  const wanted = new Set(all);
  await page.evaluate(() => document.activeElement?.blur());
  const reached = new Set();
  for (let i = 0; i < 3 * all.length + 10 && [...wanted].some((w) => !reached.has(w)); i++) {
    await page.keyboard.press("Tab");
    const focused = await page.evaluate(() =>
      document.activeElement && document.activeElement !== document.body
        ? window.__kbSignature(document.activeElement) : null);
    if (focused) reached.add(focused);
  }
  const missed = [...wanted].filter((w) => !reached.has(w));
  check(missed.length === 0, `${what}: all ${wanted.size} controls are reachable by keyboard ${missed.join(" ; ")}`);
}

async function fits(what) {
  const [scroll, width] = await page.evaluate(() =>
    [document.documentElement.scrollWidth, window.innerWidth]);
  check(scroll <= width + 1, `${what}: no horizontal scrolling (${scroll} <= ${width})`);
}

async function shoot(name) {
  for (const [w, h] of [[1280, 800], [390, 844]]) {
    await page.setViewportSize({ width: w, height: h });
    await fits(`${name} at ${w}x${h}`);
    await page.screenshot({ path: `${shots}/${name}-${w}x${h}.png`, fullPage: true });
  }
  await page.setViewportSize({ width: 1280, height: 800 });
}

// 1. A wrong token is refused, the right one logs in.
let answer = await page.goto(`${base}/console/sandbox`);
check(page.url().endsWith("/console/login"), "a page without a session sends to the login form");
await labelled("login");
await reachable("login");
await shoot("login");
let before = browserErrors.length;
await page.fill("#token", "not-the-token");
const [refused] = await Promise.all([
  page.waitForNavigation(),
  page.press("#token", "Enter"),
]);
check(refused.status() === 401, `a wrong token is refused (${refused.status()})`);
check(await page.isVisible("text=Wrong token."), "the refusal is said");
browserErrors.length = before; // the refused login's 401 was expected
await page.fill("#token", token);
await Promise.all([page.waitForNavigation(), page.click("button:has-text('Log in')")]);
check(page.url().includes("/console/sandbox"), `the right token logs in (${page.url()})`);
const cookies = await context.cookies();
const session = cookies.find((c) => c.name === "wkc_session");
check(session && session.httpOnly && session.sameSite === "Strict",
  "the session cookie is HttpOnly and SameSite=Strict");

// 2. Chat as a customer: the echo shows in the customer pane and the conversation view.
await labelled("sandbox");
await reachable("sandbox");
await page.focus("#text");
await page.keyboard.type("hello from the browser");
const sentAt = Date.now();
await page.keyboard.press("Enter");
let seen = true;
try {
  await page.waitForFunction(() => {
    const customer = document.querySelector("#customer-pane")?.textContent || "";
    const service = document.querySelector("#conversation-pane")?.textContent || "";
    return customer.includes("echo: hello from the browser") &&
      service.includes("echo: hello from the browser") && service.includes("sent");
  }, null, { timeout: 2000 });
} catch (e) {
  seen = false;
}
const took = Date.now() - sentAt;
check(seen, `the echo shows in the customer pane and the conversation view within 2 s (${took} ms)`);
check((await page.inputValue("#text")) === "", "the message field is cleared after sending");
await page.click("button:has-text('Send an image')");
await page.waitForSelector("#conversation-pane >> .turn.customer:has-text('[image]')", { timeout: 2000 })
  .then(() => check(true, "an image sent as the customer shows in the conversation view"))
  .catch(() => check(false, "an image sent as the customer shows in the conversation view"));
// The sandbox downloads media: the image itself is shown.
const shown = await page.waitForFunction(() => {
  const img = document.querySelector("#conversation-pane img.media");
  return img && img.complete && img.naturalWidth > 0;
}, null, { timeout: 5000 }).then(() => true).catch(() => false);
check(shown, "the image is shown in the conversation view");
await shoot("sandbox");

// A servicer takes the session (the emulator's client hook): the conversation view shows it
// live, and the bot does not answer the customer's next message.
await page.goto(`${base}/console/sandbox?customer=wmHandoff`);
await page.fill("#text", "I need a human");
await page.keyboard.press("Enter");
await page.waitForSelector("#customer-pane >> text=echo: I need a human", { timeout: 5000 });
await page.click("button:has-text('Queue the session')");
await page.waitForSelector("#conversation-pane >> .state-word:has-text('queued')", { timeout: 5000 })
  .then(() => check(true, "queueing the session shows it queued"))
  .catch(() => check(false, "queueing the session shows it queued"));
const pickedAt = Date.now();
await page.click("button:has-text('A servicer takes it')");
await page.waitForSelector("#conversation-pane >> .state-word:has-text('human')", { timeout: 2000 })
  .then(() => check(true, `the servicer taking the session shows live (${Date.now() - pickedAt} ms)`))
  .catch(() => check(false, "the servicer taking the session shows live"));
await page.fill("#text", "are you there");
await page.keyboard.press("Enter");
await page.waitForSelector("#conversation-pane >> .turn.customer:has-text('are you there')", { timeout: 3000 })
  .then(() => check(true, "the customer's message while a human holds the session shows"))
  .catch(() => check(false, "the customer's message while a human holds the session shows"));
// The bot is told it may not answer (bot_may_reply: false): no echo comes. Absence needs a wait.
await page.waitForTimeout(1000);
check(
  (await page.locator("#conversation-pane >> .turn.bot:has-text('echo: are you there')").count()) === 0,
  "the bot stays quiet while a human holds the session",
);
await shoot("sandbox-handoff");

// Keyboard: Tab reaches the message field and the send button.
await page.goto(`${base}/console/sandbox`);
const reached = new Set();
for (let i = 0; i < 40; i++) {
  await page.keyboard.press("Tab");
  reached.add(await page.evaluate(() => document.activeElement?.id ||
    document.activeElement?.textContent?.trim() || document.activeElement?.tagName));
}
check(reached.has("text") && reached.has("Send") && reached.has("Conversations"),
  "the navigation, the message field and Send are reachable by keyboard");

// 3. Conversations list and one conversation, updated live.
await page.goto(`${base}/console/conversations`);
await labelled("conversations");
await reachable("conversations");
check(await page.isVisible("text=wmDemoCustomer"), "the conversation list shows the customer");
await shoot("conversations");
await page.click("a:has-text('wmDemoCustomer')");
check(await page.isVisible("text=echo: hello from the browser"), "the conversation shows the bot's reply");
await labelled("conversation");
await reachable("conversation");
// A message written elsewhere (the reply API's sibling: the sandbox endpoint) shows live.
const csrf = await page.getAttribute('meta[name="csrf-token"]', "content");
const live = await page.evaluate(async ([csrf]) => {
  const url = new URL(location.href);
  const [, , , kf, customer] = url.pathname.split("/");
  const r = await fetch("/console/sandbox/send", {
    method: "POST", headers: { "accept": "application/json", "x-csrf-token": csrf },
    body: new URLSearchParams({ open_kfid: kf, customer, text: "live one" }),
  });
  return r.status;
}, [csrf]);
check(live === 200, `a customer message sent from the page's origin is taken (${live})`);
try {
  await page.waitForSelector("#conversation-pane >> text=echo: live one", { timeout: 2000 });
  check(true, "the conversation view updates live (Server-Sent Events)");
} catch (e) {
  check(false, "the conversation view updates live (Server-Sent Events)");
}
// A state-changing request without the CSRF token is refused.
before = browserErrors.length;
const forged = await page.evaluate(async () => {
  const r = await fetch("/console/sandbox/send", {
    method: "POST", body: new URLSearchParams({ open_kfid: "wkX", customer: "wmX", text: "x" }),
  });
  return r.status;
});
check(forged === 403, `a post without the CSRF token is refused (${forged})`);
browserErrors.length = before; // the forged post's 403 was expected
// Reply as the account: through the send policy.
await page.fill("#reply-text", "a human answer");
await page.keyboard.press("Enter");
await page.waitForSelector("text=Sent.", { timeout: 5000 }).catch(() => {});
check(await page.isVisible("text=Sent."), "a reply as the account is sent");
await shoot("conversation");

// 4. Deliveries and sends.
await page.goto(`${base}/console/deliveries`);
await labelled("deliveries");
await reachable("deliveries");
check(await page.isVisible("#s-heading"), "the deliveries page lists the sends");
check(await page.isVisible("text=sent"), "the echo's send is listed as sent");
check(await page.locator("tr.message button:has-text('Replay')").count() > 0,
  "delivered messages can be replayed");
await shoot("deliveries");

// 5. Accounts, with a contact-way link as a QR code.
await page.goto(`${base}/console/accounts`);
await labelled("accounts");
await reachable("accounts");
await page.fill("#cw-scene", "browser_test");
await Promise.all([page.waitForNavigation(), page.click("button:has-text('Create the link')")]);
const link = await page.textContent("#contact-way-url").catch(() => null);
check(!!link && link.startsWith("http"), `a contact-way link is made (${link})`);
check(await page.isVisible(".qr svg"), "the link is shown as an SVG QR code");
check(await page.isVisible("tr.account >> text=demo_servicer"),
  "the account's servicer is listed (GET /v1/accounts)");
check(await page.locator("tr.account .state.receiving").count() > 0, "with its status");
await page.addScriptTag({ path: require.resolve("jsqr/dist/jsQR.js") });
const decoded = await page.evaluate(async () => {
  const svg = document.querySelector(".qr svg");
  const url = URL.createObjectURL(new Blob([svg.outerHTML], { type: "image/svg+xml" }));
  const img = new Image();
  await new Promise((ok, fail) => { img.onload = ok; img.onerror = fail; img.src = url; });
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = 400;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, 400, 400);
  ctx.drawImage(img, 0, 0, 400, 400);
  const data = ctx.getImageData(0, 0, 400, 400);
  return window.jsQR(data.data, 400, 400)?.data ?? null;
});
check(decoded === link, `the QR code decodes to the link (${decoded})`);
await shoot("accounts");

// 6. Setup and health (the body of GET /v1/setup).
await page.goto(`${base}/console/health`);
await labelled("health");
await reachable("health");
check(await page.isVisible("text=Ready"), "the health page says the service is ready");
check(await page.isVisible("#credentials.ok"), "the credentials check passes");
const callbackUrl = await page.textContent("#callback-url").catch(() => null);
check(callbackUrl === `${base}/callback`, `the callback URL to enter is shown (${callbackUrl})`);
check(await page.isVisible("#trusted-ip"), "the trusted-IP hint is shown");
check(await page.isVisible("text=WeChat call budget"), "the call budget is shown");
await shoot("health");

// 7. Log out.
await Promise.all([page.waitForNavigation(), page.click("button:has-text('Log out')")]);
check(page.url().endsWith("/console/login"), "logging out returns to the login form");

// 8. A failing webhook: its delivery retried from the deliveries page, then acknowledged, and
// the message replayed.
await page.goto(`${failingBase}/console/login`);
await page.fill("#token", failingToken);
await Promise.all([page.waitForNavigation(), page.click("button:has-text('Log in')")]);
await page.goto(`${failingBase}/console/sandbox?customer=wmRetryMe`);
await page.fill("#text", "please retry me");
await page.keyboard.press("Enter");
await page.waitForSelector("#customer-pane >> text=please retry me", { timeout: 5000 });
await page.goto(`${failingBase}/console/deliveries`);
await page.waitForSelector("tr.delivery", { timeout: 5000 })
  .then(() => check(true, "the failed delivery is listed"))
  .catch(() => check(false, "the failed delivery is listed"));
const lastError = await page.textContent("tr.delivery .error-text").catch(() => "");
check(lastError.includes("500"), `its last error is shown (${lastError})`);
await labelled("deliveries with a failed delivery");
await shoot("deliveries-failing");
await Promise.all([page.waitForNavigation(), page.click("tr.delivery button:has-text('Retry now')")]);
check(await page.isVisible("text=retrying now"), "Retry now is taken");
await page.waitForSelector("#no-deliveries", { timeout: 5000 })
  .then(() => check(true, "the retried delivery is acknowledged (nothing waits any more)"))
  .catch(() => check(false, "the retried delivery is acknowledged (nothing waits any more)"));
await page.waitForSelector("tr.message .state.delivered", { timeout: 5000 })
  .then(() => check(true, "the message shows delivered"))
  .catch(() => check(false, "the message shows delivered"));
await Promise.all([page.waitForNavigation(), page.click("tr.message button:has-text('Replay')")]);
check(await page.isVisible("text=replaying to the bot"), "a delivered message is replayed");
await shoot("deliveries-retried");

check(browserErrors.length === 0, `no errors in the browser console ${browserErrors.join(" | ")}`);
await browser.close();
if (failures.length > 0) {
  console.error(`${failures.length} console browser check(s) failed`);
  process.exit(1);
}
console.log("all console browser checks passed");
