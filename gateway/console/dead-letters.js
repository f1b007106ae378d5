// The dead letters: listed by vendor, status and time, opened, replayed one by one, as
// selected or all that match, and deleted; every one of these needs the admin key.

import { $, DASH, call, count, describe, failure, h, isNumber, text, when } from "./page.js";

const PAGE = 100;

const letters = { entries: [], next: null, selected: new Set(), openId: null };

function say(message, isError) {
  const box = $("dl-message");
  box.textContent = message;
  box.className = isError ? "message error" : "message";
}

// The filter as typed: vendor, status and since (an ISO time), each only when given.
function filter() {
  const chosen = {};
  const vendor = $("dl-vendor").value;
  const status = $("dl-status").value.trim();
  const since = $("dl-since").value;
  if (vendor) chosen.vendor = vendor;
  if (status) chosen.status = /^\d+$/.test(status) ? Number(status) : status;
  if (since) {
    const at = new Date(since);
    if (!Number.isNaN(at.getTime())) chosen.since = at.toISOString();
  }
  return chosen;
}

export async function listDeadLetters(more) {
  const query = new URLSearchParams({ ...filter(), limit: String(PAGE) });
  if (more && letters.next) query.set("after", letters.next);
  try {
    const response = await call(`dead-letters?${query}`, { reason: "The dead letters and their actions need the admin key." });
    if (!response.ok) return say(`The dead letters could not be listed: ${await describe(response)}`, true);
    const page = await response.json();
    const entries = Array.isArray(page.dead_letters) ? page.dead_letters : [];
    letters.entries = more ? letters.entries.concat(entries) : entries;
    letters.next = typeof page.next === "string" ? page.next : null;
    const listed = new Set(letters.entries.map((e) => e.id));
    for (const id of letters.selected) if (!listed.has(id)) letters.selected.delete(id);
    showLetters();
  } catch (err) {
    say(failure(err, "The dead letters are not listed"), true);
  }
}

function actionButton(label, onclick, className) {
  return h("button", { type: "button", className, onclick: (event) => onclick(event.currentTarget) }, label);
}

function showLetters() {
  const rows = letters.entries.map((entry) => {
    const id = text(entry.id);
    const request = `${text(entry.method)} ${text(entry.path)}${entry.query ? `?${entry.query}` : ""}`;
    const replays = isNumber(entry.replays) && entry.replays > 0 ? ` (${entry.replays} replayed)` : "";
    const box = h("input", {
      type: "checkbox", "aria-label": `Select ${id}`, checked: letters.selected.has(id),
      onchange: (event) => { if (event.currentTarget.checked) letters.selected.add(id); else letters.selected.delete(id); },
    });
    return h("tr", { "data-id": id },
      h("td", { "data-label": "Select" }, box),
      h("td", { "data-label": "Last failed" }, when(entry.last_at)),
      h("td", { "data-label": "Vendor" }, text(entry.vendor)),
      h("td", { "data-label": "Request" }, h("code", {}, request)),
      h("td", { "data-label": "Status" }, text(entry.status)),
      h("td", { "data-label": "Error", className: "error-text", title: text(entry.error) }, text(entry.error)),
      h("td", { "data-label": "Attempts" }, `${count(entry.attempts)}${replays}`),
      h("td", { "data-label": "Actions", className: "actions" },
        actionButton("Open", () => openLetter(id)),
        actionButton("Replay", (b) => replayOne(id, b)),
        actionButton("Delete", (b) => deleteOne(id, b), "danger")));
  });
  $("dl-rows").replaceChildren(...rows);
  $("dl-select-all").checked = rows.length > 0 && letters.selected.size === rows.length;
  $("dl-empty").hidden = rows.length > 0;
  $("dl-more").hidden = letters.next === null;
}

async function replayOne(id, button) {
  button.disabled = true;
  say(`Replaying ${id}…`);
  try {
    const response = await call(`dead-letters/${encodeURIComponent(id)}/replay`, { method: "POST", reason: "Replaying needs the admin key." });
    if (!response.ok) return say(`${id} was not replayed: ${await describe(response)}`, true);
    const result = await response.json();
    if (result.outcome === "delivered") {
      say(`${id} delivered: the vendor answered ${text(result.status)} (${count(result.attempts)} attempt${result.attempts === 1 ? "" : "s"}).`);
      if (letters.openId === id) closeLetter();
    } else {
      say(`${id} failed again: ${text(result.status)} ${text(result.error)}`, true);
      if (letters.openId === id) openLetter(id);
    }
    await listDeadLetters();
  } catch (err) {
    say(failure(err, `${id} was not replayed`), true);
  } finally {
    button.disabled = false;
  }
}

// Deleting asks twice: the first press arms the button, until it is pressed again or the
// focus leaves it.
function disarm(button) {
  button.dataset.armed = "";
  button.textContent = "Delete";
}

async function deleteOne(id, button) {
  if (button.dataset.armed !== "yes") {
    button.dataset.armed = "yes";
    button.textContent = "Really delete?";
    button.addEventListener("blur", () => disarm(button), { once: true });
    return;
  }
  disarm(button);
  button.disabled = true;
  try {
    const response = await call(`dead-letters/${encodeURIComponent(id)}`, { method: "DELETE", reason: "Deleting needs the admin key." });
    if (!response.ok) return say(`${id} was not deleted: ${await describe(response)}`, true);
    say(`${id} deleted.`);
    if (letters.openId === id) closeLetter();
    letters.selected.delete(id);
    await listDeadLetters();
  } catch (err) {
    say(failure(err, `${id} was not deleted`), true);
  } finally {
    button.disabled = false;
  }
}

async function replayMany(body, what, button) {
  button.disabled = true;
  say(`Replaying ${what}…`);
  try {
    const response = await call("dead-letters/replay", { method: "POST", body, reason: "Replaying needs the admin key." });
    if (!response.ok) return say(`${what} not replayed: ${await describe(response)}`, true);
    const result = await response.json();
    say(`Replayed ${what}: ${count(result.delivered)} delivered, ${count(result.failed)} failed.`, result.failed > 0);
    letters.selected.clear();
    await listDeadLetters();
  } catch (err) {
    say(failure(err, `${what} not replayed`), true);
  } finally {
    button.disabled = false;
  }
}

function replaySelected(button) {
  const ids = letters.entries.map((e) => e.id).filter((id) => letters.selected.has(id));
  if (!ids.length) return say("Select dead letters first (the boxes on the left).", true);
  return replayMany({ ids }, `${ids.length} selected`, button);
}

function replayMatching(button) {
  const chosen = filter();
  const described = Object.entries(chosen).map(([k, v]) => `${k} ${v}`).join(", ");
  return replayMany(chosen, described ? `all matching ${described}` : "all dead letters", button);
}

export function reviewVendor(vendor) {
  $("dl-vendor").value = vendor;
  listDeadLetters();
  $("dead-letters").scrollIntoView({ behavior: "smooth", block: "start" });
}

async function openLetter(id) {
  try {
    const response = await call(`dead-letters/${encodeURIComponent(id)}`, { reason: "Opening a dead letter needs the admin key." });
    if (!response.ok) return say(`${id} could not be opened: ${await describe(response)}`, true);
    showLetter(await response.json());
  } catch (err) {
    say(failure(err, `${id} not opened`), true);
  }
}

function showLetter(entry) {
  letters.openId = entry.id;
  disarm($("dl-detail-delete"));
  const fact = (label, value) => [h("dt", {}, label), h("dd", {}, value)];
  $("dl-detail-title").textContent = `Dead letter ${text(entry.id)}`;
  $("dl-detail-facts").replaceChildren(
    ...fact("vendor", text(entry.vendor)),
    ...fact("caller", text(entry.caller)),
    ...fact("request", `${text(entry.method)} ${text(entry.path)}${entry.query ? `?${entry.query}` : ""}`),
    ...fact("status", text(entry.status)),
    ...fact("attempts", count(entry.attempts)),
    ...fact("replays", count(entry.replays)),
    ...fact("first failed", when(entry.first_at)),
    ...fact("last failed", when(entry.last_at)));
  const headers = Array.isArray(entry.headers) ? entry.headers : [];
  $("dl-detail-headers").replaceChildren(...headers.map((pair) =>
    h("tr", {}, h("th", { scope: "row" }, text(pair?.[0])), h("td", {}, text(pair?.[1])))));
  let body;
  if (typeof entry.body === "string") body = entry.body === "" ? "(empty)" : entry.body;
  else if (typeof entry.body_base64 === "string") body = `(not UTF-8: ${count(entry.body_bytes)} bytes, base64)\n${entry.body_base64}`;
  else body = entry.body_bytes === null ? "(not kept: the body was streamed, over 1 MiB)" : DASH;
  $("dl-detail-body").textContent = body;
  $("dl-detail-error").textContent = text(entry.error);
  $("dl-detail").hidden = false;
  $("dl-detail").scrollIntoView({ behavior: "smooth", block: "nearest" });
}

function closeLetter() {
  letters.openId = null;
  $("dl-detail").hidden = true;
}

// The vendor filter offers every vendor the status names, keeping the one chosen.
export function offerVendors(names) {
  const select = $("dl-vendor");
  const chosen = select.value;
  select.replaceChildren(h("option", { value: "" }, "all"), ...names.map((n) => h("option", { value: n }, n)));
  select.value = names.includes(chosen) ? chosen : "";
}

export function wireDeadLetters() {
  $("dl-filter").addEventListener("submit", (event) => { event.preventDefault(); listDeadLetters(); });
  $("dl-more").addEventListener("click", () => listDeadLetters(true));
  $("dl-replay-matching").addEventListener("click", (event) => replayMatching(event.currentTarget));
  $("dl-replay-selected").addEventListener("click", (event) => replaySelected(event.currentTarget));
  $("dl-select-all").addEventListener("change", (event) => {
    const all = event.currentTarget.checked;
    letters.selected = new Set(all ? letters.entries.map((e) => e.id) : []);
    showLetters();
  });
  $("dl-detail-replay").addEventListener("click", (event) => letters.openId && replayOne(letters.openId, event.currentTarget));
  $("dl-detail-delete").addEventListener("click", (event) => letters.openId && deleteOne(letters.openId, event.currentTarget));
  $("dl-detail-close").addEventListener("click", closeLetter);
}
