// What every part of the console shares: building elements, writing figures, the admin
// key (asked once per browser session) and requests to the gateway.
//
// Everything that comes from the gateway (vendor names, callers' requests and bodies, the
// vendors' errors) is put into the page as text nodes, never as markup.

export const DASH = "—";
const KEY_NAME = "gateway-admin-key";

export const $ = (id) => document.getElementById(id);

// An element whose children are nodes or text (strings become text nodes).
export function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "className") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child !== undefined && child !== null) node.append(child);
  }
  return node;
}

// ---- formatting: anything missing or of the wrong type is shown as a dash ----------

export const isNumber = (x) => typeof x === "number" && Number.isFinite(x);

export function percent(rate) {
  if (!isNumber(rate)) return DASH;
  const p = rate * 100;
  // Rounded down: 99.96% must not read as 100%.
  return Number.isInteger(p) ? `${p}%` : `${(Math.floor(p * 10) / 10).toFixed(1)}%`;
}

export const count = (n) => (isNumber(n) ? n.toLocaleString("en") : DASH);
export const millis = (ms) => (isNumber(ms) ? `${Math.round(ms).toLocaleString("en")} ms` : DASH);

export function duration(seconds) {
  if (!isNumber(seconds)) return DASH;
  const s = Math.max(0, seconds);
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 90 * 60) return `${Math.round(s / 60)} min`;
  if (s < 48 * 3600) {
    const minutes = Math.round((s % 3600) / 60);
    return `${Math.floor(s / 3600)} h${minutes ? ` ${minutes} min` : ""}`;
  }
  return `${Math.round(s / 86400)} d`;
}

export function parseTime(iso) {
  if (typeof iso !== "string") return null;
  const at = new Date(iso);
  return Number.isNaN(at.getTime()) ? null : at;
}

export function clock(at) {
  const sameDay = at.toDateString() === new Date().toDateString();
  return sameDay
    ? at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" })
    : at.toLocaleString([], { dateStyle: "short", timeStyle: "short" });
}

export function when(iso) {
  const at = parseTime(iso);
  if (at === null) return DASH;
  const ago = (Date.now() - at.getTime()) / 1000;
  return ago >= 0 ? `${clock(at)} (${duration(ago)} ago)` : `${clock(at)} (in ${duration(-ago)})`;
}

export const text = (x) => (typeof x === "string" && x !== "" ? x : isNumber(x) ? String(x) : DASH);

// ---- the admin key: asked once per browser session ----------------------------------

let keyInMemory = null; // where session storage is refused (some private modes)
export const adminKey = {
  get() {
    try { return sessionStorage.getItem(KEY_NAME) || keyInMemory; } catch { return keyInMemory; }
  },
  set(value) {
    keyInMemory = value;
    try { sessionStorage.setItem(KEY_NAME, value); } catch { /* kept in memory only */ }
    $("forget-key").hidden = false;
  },
  clear() {
    keyInMemory = null;
    try { sessionStorage.removeItem(KEY_NAME); } catch { /* nothing was stored */ }
    $("forget-key").hidden = true;
  },
};

class NoKey extends Error {}
let keyAsked = null; // {promise, resolve, reject} while the key form waits

function askKey(reason, isError) {
  const form = $("key-form");
  const why = $("key-reason");
  why.textContent = reason;
  why.className = isError ? "error" : "";
  form.hidden = false;
  $("key-input").value = "";
  $("key-input").focus();
  if (keyAsked === null) {
    let resolve, reject;
    const promise = new Promise((yes, no) => { resolve = yes; reject = no; });
    keyAsked = { promise, resolve, reject };
  }
  return keyAsked.promise;
}

export function keyGiven(event) {
  event.preventDefault();
  const value = $("key-input").value;
  if (!value) return;
  adminKey.set(value);
  $("key-input").value = "";
  $("key-form").hidden = true;
  const asked = keyAsked;
  keyAsked = null;
  if (asked) asked.resolve(value);
}

export function keyRefused() {
  $("key-form").hidden = true;
  const asked = keyAsked;
  keyAsked = null;
  if (asked) asked.reject(new NoKey("no admin key given"));
}

// ---- talking to the gateway -----------------------------------------------------------

// What an error answer says: the problem's status, type and detail when it has them.
export async function describe(response) {
  let problem = null;
  try { problem = await response.json(); } catch { /* not JSON */ }
  if (problem && typeof problem === "object") {
    const type = typeof problem.type === "string" ? ` ${problem.type}` : "";
    const detail = typeof problem.detail === "string" ? `: ${problem.detail}` : "";
    return `${response.status}${type}${detail}`;
  }
  return `${response.status} ${response.statusText || ""}`.trim();
}

// A request with the stored key (if any); a 401 asks for the key and tries again, until
// the request is let through, refused otherwise, or the key form is cancelled (NoKey).
export async function call(path, { method = "GET", body, reason }) {
  for (;;) {
    const key = adminKey.get();
    const headers = { Accept: "application/json" };
    if (key) headers["X-Gateway-Admin-Key"] = key;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "same-origin",
    });
    if (response.status !== 401) return response;
    if (key) {
      const refused = await describe(response);
      adminKey.clear();
      await askKey(`${refused}. ${reason} Give the admin key again.`, true);
    } else {
      await askKey(reason, false);
    }
  }
}

// What to say when an action did not happen: no key given, or the gateway unreachable.
export function failure(err, notDone) {
  return err instanceof NoKey ? `${notDone}: no admin key given.` : `The gateway did not answer: ${err.message || err}`;
}
