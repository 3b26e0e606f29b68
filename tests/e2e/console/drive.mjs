// Drives the operator's console (`/console`) in headless Chromium with playwright-core, as a
// person would, for tests/e2e/tests/console.rs: signs in (after a refused token), looks up
// each order and checks what the page shows, redrives a dead letter through the page, lists
// stuck orders, reads the live figures, and saves a screenshot of each step. Prints one `screenshot <path> <what>`
// line per screenshot and `ok` at the end; any failed check throws (exit status 1).
//
// Input (environment): CONSOLE_URL, ADMIN_TOKEN, CHROMIUM (executable), PLAYWRIGHT_MODULES
// (a node_modules directory holding playwright-core), SHOTS (directory), and CASES: JSON
// {"orders":[{"id","status","sees":[text…]}],"dead_letter":{"seq","order_id","consumer","reason"}}.
import { createRequire } from "node:module";
import path from "node:path";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const require = createRequire(path.join(env("PLAYWRIGHT_MODULES"), "noop.js"));
const { chromium } = require("playwright-core");

const url = env("CONSOLE_URL");
const token = env("ADMIN_TOKEN");
const shots = env("SHOTS");
const cases = JSON.parse(env("CASES"));
const TIMEOUT = 30_000;

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}

const browser = await chromium.launch({
  executablePath: env("CHROMIUM"),
  headless: true,
  args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1500, height: 900 } });
  page.setDefaultTimeout(TIMEOUT);
  const errors = [];
  page.on("pageerror", (error) => errors.push(String(error)));
  let shot = 0;
  async function screenshot(name, what) {
    shot += 1;
    const file = path.join(shots, `${String(shot).padStart(2, "0")}-${name}.png`);
    await page.screenshot({ path: file, fullPage: true });
    console.log(`screenshot ${file} ${what}`);
  }
  const text = async (selector) => (await page.locator(selector).innerText()).trim();

  // nothing works without a token: the sign-in form, and a wrong token is refused
  await page.goto(`${url}/console`);
  await page.locator("#login").waitFor({ state: "visible" });
  check(await page.locator("#views").isHidden(), "the views are hidden before sign-in");
  await page.fill("#token", "not-a-token");
  await page.click("#login button[type=submit]");
  await page.locator("#login-error", { hasText: "refused (401)" }).waitFor();
  await screenshot("refused", "the sign-in form after a malformed token: 'The token was refused (401)'");

  await page.fill("#token", token);
  await page.click("#login button[type=submit]");
  await page.locator("#who", { hasText: "signed in as" }).waitFor();

  for (const order of cases.orders) {
    await page.click("button.tab[data-view=order]");
    await page.fill("#order-id", order.id);
    await page.click("#order-form button[type=submit]");
    await page.locator("#order-status", { hasText: order.status }).waitFor();
    const lanes = await text("#order-result");
    for (const expected of order.sees) {
      check(lanes.includes(expected) || (await page.locator("#lanes").textContent()).includes(expected),
        `order ${order.id} (${order.status}) shows ${JSON.stringify(expected)}`);
    }
    const boxes = await page.locator("#lanes g.event").count();
    const arrows = await page.locator("#lanes path[marker-end]").count();
    check(boxes >= 2 && arrows >= 1, `order ${order.id}: ${boxes} boxes, ${arrows} arrows in the swim lanes`);
    await screenshot(`order-${order.status}`, `order ${order.id}, ${order.status}: swim lanes (${boxes} boxes, ${arrows} causation arrows), each service's last event, the event table`);
  }

  // the dead letter: inline on its order, then grouped, then redriven through the page
  const letter = cases.dead_letter;
  await page.click("button.tab[data-view=order]");
  await page.fill("#order-id", letter.order_id);
  await page.click("#order-form button[type=submit]");
  await page.locator("#lanes", { hasText: `DEAD LETTER #${letter.seq}` }).waitFor();
  await screenshot("order-dead-letter", `order ${letter.order_id} with dead letter #${letter.seq} inline in the ${letter.consumer.split("__")[0]} lane`);

  await page.click("button.tab[data-view=dead-letters]");
  const group = page.locator(".group", { hasText: `${letter.consumer} · ${letter.reason} (1)` });
  await group.waitFor();
  const row = group.locator(`tr[data-seq="${letter.seq}"]`);
  check((await row.innerText()).includes(letter.order_id), "the dead letter's row names its order");
  // a discard without a reason is refused on the page
  await row.locator("button.discard").click();
  await row.locator(".note", { hasText: "A reason is required" }).waitFor();
  await screenshot("dead-letters", `dead letters grouped by consumer and reason: ${letter.consumer} · ${letter.reason} (1), discard refused without a reason`);
  await row.locator("button.redrive").click();
  await page.locator("#dlq-progress", { hasText: "Redriven 1 of 1" }).waitFor();
  await page.locator("#dlq-empty", { hasText: "No dead letters." }).waitFor();
  await screenshot("redriven", `after Redrive: 'Redriven 1 of 1.' and no dead letters left`);

  await page.click("button.tab[data-view=stuck]");
  await page.fill("#stuck-minutes", "0");
  await page.click("#stuck-form button[type=submit]");
  const stuck = await page.locator("#stuck-count").innerText();
  check(/^\d+ order\(s\) not finished/.test(stuck), `stuck view answers: ${stuck}`);
  await screenshot("stuck", `stuck orders older than 0 min: '${stuck}'`);

  await page.click("button.tab[data-view=figures]");
  await page.locator("#figures-intake", { hasText: "open orders: 0" }).waitFor();
  const consumers = await page.locator("#figures-consumers").innerText();
  check(consumers.includes("payment__"), `the consumer backlog lists payment's consumers: ${consumers}`);
  const outboxes = await page.locator("#figures-outboxes").innerText();
  for (const service of ["order", "payment", "inventory", "fulfillment", "dispatch"]) {
    check(outboxes.includes(service), `the outbox backlog lists ${service}: ${outboxes}`);
  }
  await screenshot("figures", `live figures: ${await page.locator("#figures-intake").innerText()}; consumer and outbox backlogs`);

  check(errors.length === 0, `no script errors on the page: ${errors.join("; ")}`);
  console.log("ok");
} finally {
  await browser.close();
}
