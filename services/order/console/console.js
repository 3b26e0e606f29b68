// The jwl console's script: sign-in with an admin token (kept in sessionStorage), and the
// views (an order's saga as swim lanes, with what each service holds back of it; dead letters
// with redrive/discard, stuck orders, live figures), each read from the admin-only JSON API
// under /v1/console/. Plain JS and SVG, no build step.
"use strict";

const LANES = ["order", "payment", "inventory", "fulfillment", "dispatch"];
const COMPENSATIONS = new Set(["payment.voided", "inventory.released", "fulfillment.waybill_cancelled"]);
const FAILURES = new Set(["payment.declined", "inventory.rejected", "dispatch.failed"]);
// Redrive of a group: at most this many dead letters a second.
const REDRIVE_PER_SECOND = 5;

// The live figures are read again this often while their view is open.
const FIGURES_EVERY_MS = 5000;

const $ = (id) => document.getElementById(id);
let figuresTimer = null;
let token = sessionStorage.getItem("jwl.console.token") || "";

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "onclick") node.addEventListener("click", value);
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

async function api(method, path, body) {
  const init = { method, headers: { Authorization: `Bearer ${token}` } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let json = null;
  try {
    json = await response.json();
  } catch (_) {
    json = null;
  }
  if (response.status === 401 || response.status === 403) {
    signOut(`The token was refused (${response.status}): ${(json && json.detail) || ""}`);
    throw new ApiError(response.status, "signed out");
  }
  if (!response.ok) {
    throw new ApiError(response.status, `${response.status}: ${(json && (json.detail || json.title)) || response.statusText}`);
  }
  return json;
}

function subjectOf(jwt) {
  try {
    const payload = JSON.parse(atob(jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    return payload.sub || "?";
  } catch (_) {
    return "?";
  }
}

function signOut(message) {
  token = "";
  clearInterval(figuresTimer);
  sessionStorage.removeItem("jwl.console.token");
  $("nav").hidden = true;
  $("views").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
}

async function signIn(candidate) {
  token = candidate.trim();
  if (!token) {
    $("login-error").textContent = "A token is required.";
    return;
  }
  try {
    await api("GET", "/v1/console/stuck?older_than_secs=0");
  } catch (error) {
    if (error.status !== 401 && error.status !== 403) $("login-error").textContent = error.message;
    return;
  }
  sessionStorage.setItem("jwl.console.token", token);
  $("login").hidden = true;
  $("nav").hidden = false;
  $("views").hidden = false;
  $("who").textContent = `signed in as ${subjectOf(token)}`;
  show(location.hash.replace(/^#/, "").split("/")[0] || "order");
}

function show(view) {
  for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== `view-${view}`;
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.view === view);
  if (view === "dead-letters") loadDeadLetters();
  clearInterval(figuresTimer);
  if (view === "figures") {
    loadFigures();
    figuresTimer = setInterval(loadFigures, FIGURES_EVERY_MS);
  }
}

// ---- time helpers ---------------------------------------------------------------------------

const clock = (iso) => (iso ? iso.replace(/^.*T/, "").replace(/Z$/, "").slice(0, 12) : "-");
const stamp = (iso) => (iso ? iso.replace("T", " ").replace(/(\.\d{3})\d*Z$/, "$1Z") : "-");
function hop(ms) {
  if (ms < 1000) return `+${Math.round(ms)} ms`;
  if (ms < 60000) return `+${(ms / 1000).toFixed(1)} s`;
  return `+${(ms / 60000).toFixed(1)} min`;
}
const shortType = (type) => String(type || "?").replace(/^jwl\./, "");
const laneOf = (source) => String(source || "").replace(/^\/jwl\//, "");
const consumerLane = (consumer) => String(consumer || "").split("__")[0];

// ---- what each service holds back of an order -----------------------------------------------

// Each service's answer of GET /v1/holds/<service>/{order_id} (as the console API relays it),
// or null where it could not be read: {service: {held, holds, parked_messages, parked_rows}}.
function holdsByLane(saga) {
  const out = {};
  for (const lane of LANES) {
    const answer = (saga.holds || {})[lane];
    out[lane] = answer && answer.state ? answer.state : null;
  }
  return out;
}

// The dead letter a hold waits on: the one of its consumer whose original is the hold's head
// event; its sequence and type, or what is known of it.
function headOf(hold, saga, byId) {
  const head = byId.get(hold.head_event_id);
  const letter = saga.dead_letters.find((candidate) => candidate.consumer === hold.consumer
    && (!head || candidate.original_stream_seq === head.stream_seq));
  const type = letter ? letter.original_type : head ? head.event_type : null;
  const name = letter ? `#${letter.dlq_seq}` : hold.head_event_id.slice(0, 8);
  return { name, type: type ? shortType(type) : "?", text: `${name} (${type ? shortType(type) : "?"})` };
}

// "held behind dead letter #3 (order.created)": the heads of every hold of the service.
function heldBehind(state, saga, byId) {
  const heads = state.holds.map((hold) => headOf(hold, saga, byId));
  return heads.length ? `held behind dead letter ${heads.map((head) => head.text).join(", ")}` : "held (its hold was just released)";
}

// ---- order view -----------------------------------------------------------------------------

async function loadOrder(orderId) {
  $("order-error").textContent = "";
  $("order-result").replaceChildren();
  if (!/^[0-9a-fA-F-]{36}$/.test(orderId)) {
    $("order-error").textContent = "An order id is a UUID (36 characters).";
    return;
  }
  location.hash = `order/${orderId}`;
  try {
    const saga = await api("GET", `/v1/console/orders/${encodeURIComponent(orderId)}`);
    renderOrder(saga);
  } catch (error) {
    if (error.status === 404) $("order-error").textContent = `No order ${orderId}.`;
    else if (error.message !== "signed out") $("order-error").textContent = error.message;
  }
}

// One line for a service's state of an order, from the body of its admin read route.
function describeState(service, state) {
  switch (service) {
    case "payment":
      return `${state.status} ${state.amount_cents} ¢`;
    case "inventory": {
      const lines = (state.lines || []).map((line) => `${line.sku} ×${line.qty}`);
      return lines.length ? `${state.state} (${lines.join(", ")})` : state.state;
    }
    case "fulfillment":
      return `waybill ${state.status}${state.courier_id ? ` to ${state.courier_id}` : ""}`;
    case "dispatch":
      return `courier ${state.courier_id} at ${Number(state.lat).toFixed(5)}, ${Number(state.lon).toFixed(5)}, ${state.live_waybills} live waybills`;
    default:
      return JSON.stringify(state);
  }
}

function renderOrder(saga) {
  const out = $("order-result");
  const order = saga.order;
  const events = saga.events.filter((entry) => entry.status === "decoded");
  const undecodable = saga.events.filter((entry) => entry.status !== "decoded");
  const byId = new Map(events.map((entry) => [entry.event_id, entry]));

  out.append(el("h2", {}, `Order ${saga.order_id}`));
  if (order) {
    const facts = [`Status: `, el("b", { id: "order-status" }, order.status)];
    if (order.reason) facts.push(` (reason ${order.reason})`);
    facts.push(` · amount ${(order.amount_cents / 100).toFixed(2)} · created ${stamp(order.created_at)}`);
    if (order.waybill_id) facts.push(` · waybill ${order.waybill_id}`);
    if (order.courier_id) facts.push(` · courier ${order.courier_id}`);
    out.append(el("p", { class: "status" }, ...facts));
  } else {
    out.append(el("p", { class: "status" }, "The order service has no such order; the broker holds the events below."));
  }
  const holds = holdsByLane(saga);
  const heldIn = LANES.filter((lane) => holds[lane] && holds[lane].held);
  if (heldIn.length) {
    out.append(el("p", { class: "held-note", id: "held-in" },
      `Held in ${heldIn.join(", ")}: later messages of this order wait there until the dead letter is redriven or discarded.`));
  }

  out.append(el("h3", {}, "Each service's last word"));
  const lastRows = LANES.map((lane) => {
    const own = events.filter((entry) => laneOf(entry.source) === lane);
    const last = own[own.length - 1];
    const dead = saga.dead_letters.filter((letter) => consumerLane(letter.consumer) === lane);
    const held = holds[lane];
    let heldText = "", heldClass = "";
    if (!held) {
      heldText = ((saga.holds || {})[lane] || {}).unavailable || "not read";
      heldClass = "unavailable";
    } else {
      const parts = [];
      if (held.held) parts.push(`HELD, ${held.parked_messages.length} message(s) parked`);
      else if (held.parked_messages.length) parts.push(`${held.parked_messages.length} message(s) parked`);
      if (held.parked_rows.length) parts.push(`${held.parked_rows.length} outbox row(s) parked`);
      heldText = parts.join("; ");
      heldClass = parts.length ? "held" : "";
    }
    return el("tr", { "data-lane": lane },
      el("td", {}, lane),
      el("td", {}, last ? shortType(last.event_type) : "—"),
      el("td", {}, last ? stamp(last.time) : ""),
      el("td", { class: dead.length ? "dead" : "" }, dead.length ? `${dead.length} dead letter(s)` : ""),
      el("td", { class: heldClass }, heldText));
  });
  out.append(el("table", { id: "service-states" },
    el("tr", {}, el("th", {}, "service"), el("th", {}, "last event"), el("th", {}, "at"), el("th", {}, "dead letters"), el("th", {}, "held back")),
    ...lastRows));

  // each other service's current state, read by the order service from that service's API
  out.append(el("h3", {}, "Current state in each service"));
  const services = saga.services || {};
  out.append(el("ul", { id: "peer-states" }, ...LANES.slice(1).map((name) => {
    const peer = services[name] || { unavailable: "not read" };
    return peer.state
      ? el("li", {}, `${name}: ${describeState(name, peer.state)}`)
      : el("li", { class: "unavailable" }, `${name}: ${peer.unavailable}`);
  })));

  out.append(el("h3", {}, "Timeline"));
  out.append(lanes(events, saga.dead_letters, byId, heldItems(saga, byId)));
  const heldRows = heldTable(saga, byId);
  if (heldRows) {
    out.append(el("h3", {}, "Held back"));
    out.append(heldRows);
  }

  const traceTemplate = localStorage.getItem("jwl.console.traceUrl") || "";
  const rows = saga.events.map((entry) => {
    if (entry.status !== "decoded") {
      return el("tr", { class: "dead" }, el("td", {}, String(entry.stream_seq)), el("td", {}, stamp(entry.stored_at)),
        el("td", {}, "?"), el("td", {}, `undecodable: ${entry.error_kind}`), el("td", {}, ""), el("td", {}, entry.error), el("td", {}, ""));
    }
    const cause = entry.causation_id ? byId.get(entry.causation_id) : null;
    const type = shortType(entry.event_type);
    let trace = "";
    if (entry.trace_id) {
      trace = traceTemplate
        ? el("a", { href: traceTemplate.replace("{trace_id}", entry.trace_id), target: "_blank" }, entry.trace_id)
        : el("span", { class: "mono" }, entry.trace_id);
    }
    return el("tr", {},
      el("td", {}, String(entry.stream_seq)),
      el("td", {}, stamp(entry.time)),
      el("td", {}, laneOf(entry.source)),
      el("td", { class: COMPENSATIONS.has(type) ? "compensation" : FAILURES.has(type) ? "dead" : "" },
        type + (COMPENSATIONS.has(type) ? " (compensation)" : "")),
      el("td", {}, cause ? hop(Date.parse(entry.time) - Date.parse(cause.time)) : ""),
      el("td", {}, entry.summary || ""),
      el("td", {}, trace));
  });
  out.append(el("table", { id: "events" },
    el("tr", {}, ...["seq", "time", "service", "event", "after its cause", "summary", "trace"].map((h) => el("th", {}, h))),
    ...rows));
  if (undecodable.length) out.append(el("p", { class: "dead" }, `${undecodable.length} undecodable message(s) on this order's subjects.`));

  if (saga.dead_letters.length) {
    out.append(el("h3", {}, "Dead letters of this order"));
    out.append(deadLetterTable(saga.dead_letters, false));
  }
  const traceInput = el("input", { id: "trace-url", size: 50, placeholder: "e.g. http://localhost:16686/trace/{trace_id}", value: traceTemplate });
  out.append(el("p", {}, "Trace link: ", traceInput, " ",
    el("button", { onclick: () => { localStorage.setItem("jwl.console.traceUrl", traceInput.value.trim()); loadOrder(saga.order_id); } }, "Save")));
}

// What the services hold back, as items of the swim lanes: each message parked behind a dead
// letter on the lane of the service holding it (grey), each outbox row the broker refused on
// the lane of the service that emitted it (amber, dashed).
function heldItems(saga, byId) {
  const items = [];
  const holds = holdsByLane(saga);
  for (const lane of LANES) {
    const state = holds[lane];
    if (!state) continue;
    const behind = heldBehind(state, saga, byId);
    for (const message of state.parked_messages) {
      items.push({ kind: "held", lane, at: Date.parse(message.parked_at), message, behind, heads: state.holds.map((hold) => headOf(hold, saga, byId)) });
    }
    for (const row of state.parked_rows) {
      items.push({ kind: "parked-row", lane, at: Date.parse(row.parked_at), row });
    }
  }
  return items;
}

// The same, as a table: every held message and parked outbox row with its details.
function heldTable(saga, byId) {
  const rows = [];
  for (const item of heldItems(saga, byId)) {
    if (item.kind === "held") {
      const message = item.message;
      rows.push(el("tr", { class: "held" },
        el("td", {}, item.lane),
        el("td", {}, "held message"),
        el("td", {}, shortType(message.event_type)),
        el("td", {}, stamp(message.parked_at)),
        el("td", {}, `${item.behind}; consumer ${message.consumer}, stream seq ${message.stream_seq}`
          + (message.dead_letter_reason ? `; it failed on release (${message.dead_letter_reason}) and heads a hold of its own` : ""))));
    } else {
      const row = item.row;
      rows.push(el("tr", { class: "parked-row" },
        el("td", {}, item.lane),
        el("td", {}, "outbox row not published"),
        el("td", {}, shortType(row.event_type)),
        el("td", {}, stamp(row.parked_at)),
        el("td", {}, `refused by the broker after ${row.attempts} attempt(s): ${row.last_error || "?"}; outbox seq ${row.seq} (jwl outbox retry)`)));
    }
  }
  if (!rows.length) return null;
  return el("table", { id: "held" },
    el("tr", {}, ...["service", "what", "event", "parked", "why"].map((h) => el("th", {}, h))),
    ...rows);
}

// The swim lanes: a lane per service, a box per event in time order, an arrow per causation
// (labelled with the hop's time), dead letters as red boxes in the consumer's lane, messages
// held behind a dead letter as grey boxes in the holding service's lane, and outbox rows the
// broker refused as dashed amber boxes in the emitting service's lane.
function lanes(events, deadLetters, byId, held) {
  const laneHeight = 64, labelWidth = 100, column = 175, boxWidth = 160, boxHeight = 40, tallHeight = 54;
  const items = events.map((entry) => ({ kind: "event", entry, lane: laneOf(entry.source), at: Date.parse(entry.time) }));
  for (const letter of deadLetters) {
    const original = events.find((entry) => entry.stream_seq === letter.original_stream_seq);
    items.push({ kind: "dead", letter, lane: consumerLane(letter.consumer), at: Date.parse(letter.stored_at), original });
  }
  items.push(...held);
  items.sort((a, b) => a.at - b.at);
  const extraLanes = [...new Set(items.map((item) => item.lane).filter((lane) => !LANES.includes(lane)))];
  const laneNames = [...LANES, ...extraLanes];
  const width = labelWidth + Math.max(items.length, 1) * column + 20;
  const height = laneNames.length * laneHeight + 10;
  const root = svg("svg", { class: "lanes", id: "lanes", width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
  const defs = svg("defs");
  for (const [id, color] of [["arrow", "#445"], ["arrow-dead", "#b00020"]]) {
    const marker = svg("marker", { id, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" });
    marker.append(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: color }));
    defs.append(marker);
  }
  root.append(defs);
  laneNames.forEach((lane, index) => {
    const y = index * laneHeight + 5;
    root.append(svg("rect", { x: 0, y, width, height: laneHeight, fill: index % 2 ? "#f4f6fa" : "#fbfcfe" }));
    root.append(svg("text", { x: 8, y: y + laneHeight / 2 + 4, class: "lane-label" }, lane));
  });
  const position = new Map();
  items.forEach((item, index) => {
    const laneIndex = laneNames.indexOf(item.lane);
    const x = labelWidth + index * column + 7;
    const tall = item.kind === "held" || item.kind === "parked-row";
    const y = laneIndex * laneHeight + 5 + (laneHeight - (tall ? tallHeight : boxHeight)) / 2;
    if (item.kind === "event") position.set(item.entry.event_id, { x, y });
    item.box = { x, y };
  });
  // arrows first, boxes on top
  for (const item of items) {
    let from = null, label = "", dead = false;
    if (item.kind === "event" && item.entry.causation_id) {
      from = position.get(item.entry.causation_id);
      const cause = byId.get(item.entry.causation_id);
      if (cause) label = hop(item.at - Date.parse(cause.time));
    } else if (item.kind === "dead" && item.original) {
      from = position.get(item.original.event_id);
      dead = true;
      label = hop(item.at - Date.parse(item.original.time));
    } else if (item.kind === "held") {
      // from the event itself, when the events stream shows it
      from = position.get(item.message.event_id);
      const original = byId.get(item.message.event_id);
      if (original) label = hop(item.at - Date.parse(original.time));
    }
    if (!from) continue;
    const x1 = from.x + boxWidth, y1 = from.y + boxHeight / 2, x2 = item.box.x, y2 = item.box.y + boxHeight / 2;
    const mid = (x1 + x2) / 2;
    root.append(svg("path", {
      d: `M ${x1} ${y1} C ${mid} ${y1}, ${mid} ${y2}, ${x2 - 2} ${y2}`,
      fill: "none", stroke: dead ? "#b00020" : "#445", "stroke-width": 1.4,
      "stroke-dasharray": dead ? "4 3" : "", "marker-end": `url(#${dead ? "arrow-dead" : "arrow"})`,
    }));
    root.append(svg("text", { x: mid - 18, y: Math.min(y1, y2) + (Math.abs(y2 - y1) / 2) - 3, class: "hop" }, label));
  }
  for (const item of items) {
    const { x, y } = item.box;
    if (item.kind === "held" || item.kind === "parked-row") {
      root.append(heldBox(item, x, y, boxWidth, tallHeight));
      continue;
    }
    const group = svg("g", { class: "event" });
    let fill = "#e3ecfa", stroke = "#1d4f91", title, subtitle;
    if (item.kind === "event") {
      const type = shortType(item.entry.event_type);
      title = type;
      subtitle = clock(item.entry.time);
      if (COMPENSATIONS.has(type)) { fill = "#fdecd2"; stroke = "#a65c00"; subtitle += " compensation"; }
      if (FAILURES.has(type)) { fill = "#fbe1e4"; stroke = "#b00020"; }
      group.append(svg("title", {}, `${item.entry.event_type}\n${item.entry.summary || ""}\nid ${item.entry.event_id}`));
    } else {
      fill = "#fbe1e4"; stroke = "#b00020";
      title = `DEAD LETTER #${item.letter.dlq_seq}`;
      subtitle = item.letter.reason;
      group.append(svg("title", {}, `${item.letter.consumer}: ${item.letter.error}`));
    }
    group.append(svg("rect", { x, y, width: boxWidth, height: boxHeight, rx: 5, fill, stroke }));
    group.append(svg("text", { x: x + 6, y: y + 16 }, title));
    group.append(svg("text", { x: x + 6, y: y + 32, fill: "#556" }, subtitle));
    root.append(group);
  }
  return root;
}

// A held message (grey: "held behind dead letter #3", its type, when parked) or a parked outbox
// row (amber, dashed: its type, "not published", the broker's last error) as a box of 3 lines.
function heldBox(item, x, y, width, height) {
  let lines, title, attrs;
  if (item.kind === "held") {
    const heads = item.heads.map((head) => head.name).join(", ");
    lines = [`HELD ${shortType(item.message.event_type)}`, heads ? `behind dead letter ${heads}` : "held", `parked ${clock(item.message.parked_at)}`];
    title = `${item.behind}\n${item.message.event_type || item.message.subject}\nconsumer ${item.message.consumer}\nid ${item.message.event_id}`;
    attrs = { class: "held", fill: "#e4e5e8", stroke: "#6b6f78" };
  } else {
    const error = item.row.last_error || "?";
    lines = [`UNSENT ${shortType(item.row.event_type)}`, `parked ${clock(item.row.parked_at)}`, error.length > 28 ? `${error.slice(0, 27)}…` : error];
    title = `${item.row.event_type || item.row.subject}: the broker refused it for good\n${error}\noutbox seq ${item.row.seq} (jwl outbox retry)`;
    attrs = { class: "parked-row", fill: "#fff4dc", stroke: "#a65c00", "stroke-dasharray": "5 3" };
  }
  const group = svg("g", { class: attrs.class, "data-lane": item.lane });
  group.append(svg("title", {}, title));
  group.append(svg("rect", { x, y, width, height, rx: 5, fill: attrs.fill, stroke: attrs.stroke, "stroke-dasharray": attrs["stroke-dasharray"] || "" }));
  lines.forEach((line, index) => {
    group.append(svg("text", { x: x + 6, y: y + 15 + index * 15, fill: index ? "#445" : "#222" }, line));
  });
  return group;
}

// ---- dead letters ---------------------------------------------------------------------------

function deadLetterTable(letters, actions) {
  const head = ["seq", "dead-lettered", "order", "event", "error"];
  if (actions) head.push("actions");
  const rows = letters.map((letter) => {
    const cells = [
      el("td", {}, String(letter.dlq_seq)),
      el("td", {}, stamp(letter.stored_at)),
      el("td", {}, letter.order_id
        ? el("a", { href: `#order/${letter.order_id}`, onclick: (event) => { event.preventDefault(); openOrder(letter.order_id); } }, letter.order_id)
        : "—"),
      el("td", {}, shortType(letter.original_type)),
      el("td", {}, letter.error),
    ];
    if (actions) {
      const reason = el("input", { placeholder: "reason to discard", size: 22, "data-seq": letter.dlq_seq });
      const note = el("span", { class: "note" });
      cells.push(el("td", {},
        el("button", { class: "redrive", onclick: () => redriveMany([letter.dlq_seq], note) }, "Redrive"), " ",
        reason, " ",
        el("button", { class: "discard", onclick: () => discardOne(letter.dlq_seq, reason.value, note) }, "Discard"), " ",
        note));
    }
    return el("tr", { "data-seq": letter.dlq_seq }, ...cells);
  });
  return el("table", { class: "dead-letters" }, el("tr", {}, ...head.map((h) => el("th", {}, h))), ...rows);
}

async function loadDeadLetters() {
  $("dlq-error").textContent = "";
  try {
    const body = await api("GET", "/v1/console/dead-letters");
    renderDeadLetters(body.dead_letters);
  } catch (error) {
    if (error.message !== "signed out") $("dlq-error").textContent = error.message;
  }
}

function renderDeadLetters(letters) {
  const out = $("dlq-result");
  out.replaceChildren();
  if (!letters.length) {
    out.append(el("p", { id: "dlq-empty" }, "No dead letters."));
    return;
  }
  out.append(el("p", {}, `${letters.length} dead letter(s)`));
  const groups = new Map();
  for (const letter of letters) {
    const key = `${letter.consumer} · ${letter.reason}`;
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(letter);
  }
  for (const [key, members] of groups) {
    const note = el("span", { class: "note" });
    out.append(el("div", { class: "group" },
      el("h3", {}, `${key} (${members.length})`, " ",
        el("button", { class: "redrive-all", onclick: () => redriveMany(members.map((m) => m.dlq_seq), note) }, `Redrive all ${members.length}`), " ",
        note),
      deadLetterTable(members, true)));
  }
}

// Redrives one by one, at most REDRIVE_PER_SECOND a second, showing the progress.
async function redriveMany(seqs, note) {
  const progress = $("dlq-progress");
  let redriven = 0, skipped = 0, gone = 0;
  const skips = [];
  for (const [index, seq] of seqs.entries()) {
    const started = performance.now();
    progress.textContent = `Redriving ${index + 1}/${seqs.length}…`;
    try {
      let result;
      for (;;) {
        try {
          result = await api("POST", `/v1/console/dead-letters/${seq}/redrive`);
          break;
        } catch (error) {
          if (error.status !== 429) throw error;
          // over the service's redrive rate (other operators too): wait, then the same again
          progress.textContent = `Redriving ${index + 1}/${seqs.length}… (waiting: over the redrive rate)`;
          await new Promise((resolve) => setTimeout(resolve, 1000));
        }
      }
      if (result.outcome === "skipped") { skipped += 1; skips.push(`#${seq}: ${result.why}`); } else redriven += 1;
    } catch (error) {
      if (error.message === "signed out") return;
      if (error.status === 404) { gone += 1; continue; } // resolved meanwhile by someone else
      note.textContent = `#${seq} failed: ${error.message}`;
      progress.textContent = `Stopped after ${redriven} redriven, ${skipped} skipped of ${seqs.length}.`;
      return;
    }
    const wait = 1000 / REDRIVE_PER_SECOND - (performance.now() - started);
    if (wait > 0 && index + 1 < seqs.length) await new Promise((resolve) => setTimeout(resolve, wait));
  }
  progress.textContent = `Redriven ${redriven} of ${seqs.length}`
    + (skipped ? `, ${skipped} skipped (${skips.join("; ")})` : "")
    + (gone ? `, ${gone} already gone` : "") + ".";
  await loadDeadLetters();
}

async function discardOne(seq, reason, note) {
  if (!reason.trim()) {
    note.textContent = "A reason is required to discard.";
    note.classList.add("error");
    return;
  }
  try {
    await api("POST", `/v1/console/dead-letters/${seq}/discard`, { reason });
    $("dlq-progress").textContent = `Discarded dead letter ${seq}.`;
    await loadDeadLetters();
  } catch (error) {
    if (error.message !== "signed out") note.textContent = error.message;
  }
}

// ---- stuck orders ---------------------------------------------------------------------------

async function loadStuck(minutes) {
  $("stuck-error").textContent = "";
  const out = $("stuck-result");
  out.replaceChildren();
  const seconds = Math.round(Number(minutes) * 60);
  if (!Number.isFinite(seconds) || seconds < 0) {
    $("stuck-error").textContent = "The age is a number of minutes, 0 or more.";
    return;
  }
  try {
    const body = await api("GET", `/v1/console/stuck?older_than_secs=${seconds}`);
    out.append(el("p", { id: "stuck-count" }, `${body.orders.length} order(s) not finished, created more than ${minutes} min ago`));
    if (!body.orders.length) return;
    out.append(el("table", { id: "stuck-orders" },
      el("tr", {}, ...["order", "status", "created", "last event", "at", "should act next"].map((h) => el("th", {}, h))),
      ...body.orders.map((order) => el("tr", {},
        el("td", {}, el("a", { href: `#order/${order.order_id}`, onclick: (event) => { event.preventDefault(); openOrder(order.order_id); } }, order.order_id)),
        el("td", {}, order.status),
        el("td", {}, stamp(order.created_at)),
        el("td", {}, shortType(order.last_event || "—")),
        el("td", {}, stamp(order.last_event_at)),
        el("td", {}, order.next.length ? order.next.join(", ") : "—")))));
  } catch (error) {
    if (error.message !== "signed out") $("stuck-error").textContent = error.message;
  }
}

// ---- live figures ---------------------------------------------------------------------------

async function loadFigures() {
  if (!token) return;
  $("figures-error").textContent = "";
  try {
    const body = await api("GET", "/v1/console/figures");
    const out = $("figures-result");
    const table = (id, head, rows) => el("table", { id },
      el("tr", {}, ...head.map((h) => el("th", {}, h))),
      ...rows.map((cells) => el("tr", {}, ...cells.map((cell) => el("td", {}, String(cell))))));
    out.replaceChildren(
      el("p", { class: "status", id: "figures-intake" },
        `Orders placed in the last minute: ${body.placed_last_minute} (${body.orders_per_second.toFixed(2)}/s) · open orders: ${body.open_orders}`),
      el("h3", {}, "Sagas finished in the last minute, by outcome"),
      body.finished_last_minute.length
        ? table("figures-outcomes", ["status", "reason", "sagas"], body.finished_last_minute.map((o) => [o.status, o.reason || "", o.count]))
        : el("p", {}, "None."),
      el("h3", {}, "Consumer backlog (events stream)"),
      table("figures-consumers", ["consumer", "pending", "unacknowledged", "redelivered"],
        body.consumers.map((c) => [c.name, c.pending, c.ack_pending, c.redelivered])),
      el("h3", {}, "Outbox backlog"),
      table("figures-outboxes", ["service", "waiting for the relay", "parked"],
        body.outboxes.map((o) => [o.service, o.pending, o.parked])));
    $("figures-at").textContent = `As of ${stamp(body.at)}.`;
  } catch (error) {
    if (error.message !== "signed out") $("figures-error").textContent = error.message;
  }
}

function openOrder(orderId) {
  show("order");
  $("order-id").value = orderId;
  loadOrder(orderId);
}

// ---- wiring ---------------------------------------------------------------------------------

$("login-form").addEventListener("submit", (event) => { event.preventDefault(); signIn($("token").value); });
$("sign-out").addEventListener("click", () => signOut("Signed out."));
$("order-form").addEventListener("submit", (event) => { event.preventDefault(); loadOrder($("order-id").value.trim()); });
$("stuck-form").addEventListener("submit", (event) => { event.preventDefault(); loadStuck($("stuck-minutes").value); });
$("dlq-refresh").addEventListener("click", loadDeadLetters);
for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => { location.hash = tab.dataset.view; show(tab.dataset.view); });
if (token) {
  signIn(token).then(() => {
    const [view, id] = location.hash.replace(/^#/, "").split("/");
    if (view === "order" && id) openOrder(id);
  });
}
