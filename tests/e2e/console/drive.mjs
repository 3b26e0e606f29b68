// Drives the operator's console (`/console`) in headless Chromium with playwright-core, as a
// person would, for tests/e2e/tests/console.rs: signs in (after a refused token), looks up
// each order and checks what the page shows, redrives a dead letter through the page, finds a
// message held behind another dead letter as a grey box on the holding service's lane,
// discards that dead letter through the page and sees the order released, finds an event the
// broker refused for good as a dashed box on the emitting service's lane, lists stuck orders,
// reads the live figures, and saves a screenshot of each step. Prints one `screenshot <path> <what>`
// line per screenshot and `ok` at the end; any failed check throws (exit status 1).
//
// Input (environment): CONSOLE_URL, ADMIN_TOKEN, CHROMIUM (executable), PLAYWRIGHT_MODULES
// (a node_modules directory holding playwright-core), SHOTS (directory), and CASES: JSON
// {"orders":[{"id","status","sees":[text…]}],"dead_letter":{"seq","order_id","consumer","reason"},
//  "held":{"order_id","service","consumer","reason","event","head"},
//  "parked_row":{"order_id","service","event","error"}} (event types without the `jwl.` prefix:
// the held message's, the dead letter's it waits behind, the parked outbox row's; `error` is a
// part of the broker's refusal).
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
  await page.locator(`#dlq-result tr[data-seq="${letter.seq}"]`).waitFor({ state: "detached" });
  await screenshot("redriven", `after Redrive: 'Redriven 1 of 1.' and dead letter #${letter.seq} gone`);

  // a message held behind a dead letter: a grey box on the holding service's lane, the order
  // marked held there
  const held = cases.held;
  const showOrder = async (orderId) => {
    await page.click("button.tab[data-view=order]");
    await page.fill("#order-id", orderId);
    await page.click("#order-form button[type=submit]");
    await page.locator("#lanes").waitFor();
  };
  await showOrder(held.order_id);
  const heldBox = page.locator("#lanes g.held", { hasText: `HELD ${held.event}` });
  await heldBox.waitFor();
  const boxText = await heldBox.textContent();
  const behind = /behind dead letter #(\d+)/.exec(boxText);
  check(behind, `the held box names the dead letter it waits behind: ${JSON.stringify(boxText)}`);
  const heldSeq = behind[1];
  check(/parked \d\d:\d\d:\d\d/.test(boxText), `the held box says when it was parked: ${JSON.stringify(boxText)}`);
  // on the holding service's lane, as drawn: the box's middle is level with the lane's label
  const label = await page.locator("#lanes text.lane-label", { hasText: new RegExp(`^${held.service}$`) }).boundingBox();
  const drawn = await heldBox.locator("rect").boundingBox();
  check(label && drawn && Math.abs((label.y + label.height / 2) - (drawn.y + drawn.height / 2)) < 20,
    `the held box is on the ${held.service} lane (label ${JSON.stringify(label)}, box ${JSON.stringify(drawn)})`);
  check((await text("#held-in")).includes(`Held in ${held.service}`), `the order is marked held in ${held.service}`);
  const laneRow = await text(`#service-states tr[data-lane="${held.service}"]`);
  check(laneRow.includes("HELD, 1 message(s) parked"), `${held.service}'s row says it holds the order: ${laneRow}`);
  const heldTable = await text("#held");
  check(heldTable.includes(`held behind dead letter #${heldSeq} (${held.head})`) && heldTable.includes(held.event),
    `the held-back table explains the held message: ${heldTable}`);
  await screenshot("order-held", `order ${held.order_id}: ${held.event} held behind dead letter #${heldSeq} (${held.head}) as a grey box on the ${held.service} lane, the order marked held in ${held.service}`);

  // discarding that dead letter through the page releases the order
  await page.click("button.tab[data-view=dead-letters]");
  const heldGroup = page.locator(".group", { hasText: `${held.consumer} · ${held.reason} (1)` });
  await heldGroup.waitFor();
  const heldRow = heldGroup.locator(`tr[data-seq="${heldSeq}"]`);
  check((await heldRow.innerText()).includes(held.order_id), "the holding dead letter's row names its order");
  await heldRow.locator("input").fill("console test: the capture contradicts the rejection");
  await heldRow.locator("button.discard").click();
  await page.locator("#dlq-progress", { hasText: `Discarded dead letter ${heldSeq}.` }).waitFor();
  await page.locator("#dlq-empty", { hasText: "No dead letters." }).waitFor();
  await screenshot("discarded", `after Discard of #${heldSeq}: no dead letters left`);
  const releasedBy = Date.now() + TIMEOUT;
  for (;;) {
    await showOrder(held.order_id);
    const stillHeld = await page.locator("#lanes g.held").count();
    const row = await text(`#service-states tr[data-lane="${held.service}"]`);
    if (stillHeld === 0 && !row.includes("HELD")) break;
    check(Date.now() < releasedBy, `the order is still held in ${held.service} after the discard: ${row}`);
    await page.waitForTimeout(500);
  }
  check(await page.locator("#held-in").count() === 0, "the order is no longer marked held");
  await screenshot("order-released", `order ${held.order_id} after the discard: nothing held back in ${held.service}`);

  // an event the service committed but the broker refused for good: a dashed box on its lane
  const unsent = cases.parked_row;
  await showOrder(unsent.order_id);
  const unsentBox = page.locator("#lanes g.parked-row", { hasText: `UNSENT ${unsent.event}` });
  await unsentBox.waitFor();
  const unsentText = await unsentBox.textContent();
  check(unsentText.includes(unsent.error), `the unsent box shows the broker's error: ${JSON.stringify(unsentText)}`);
  const unsentLabel = await page.locator("#lanes text.lane-label", { hasText: new RegExp(`^${unsent.service}$`) }).boundingBox();
  const unsentDrawn = await unsentBox.locator("rect").boundingBox();
  check(unsentLabel && unsentDrawn && Math.abs((unsentLabel.y + unsentLabel.height / 2) - (unsentDrawn.y + unsentDrawn.height / 2)) < 20,
    `the unsent box is on the ${unsent.service} lane`);
  const unsentRow = await text(`#service-states tr[data-lane="${unsent.service}"]`);
  check(unsentRow.includes("1 outbox row(s) parked"), `${unsent.service}'s row counts the parked row: ${unsentRow}`);
  const unsentTable = await text("#held");
  check(unsentTable.includes("outbox row not published") && unsentTable.includes("refused by the broker") && unsentTable.includes(unsent.error),
    `the held-back table explains the parked row: ${unsentTable}`);
  check(await page.locator("#held-in").count() === 0, "a parked outbox row does not hold the order");
  await screenshot("order-unsent", `order ${unsent.order_id}: ${unsent.event} refused by the broker, a dashed box on the ${unsent.service} lane with the error`);

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
