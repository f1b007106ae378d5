// The vendors: one card each from /_gateway/status (and this process's /metrics), with
// its health colour, refreshed every few seconds.

import {
  $, DASH, adminKey, call, clock, count, describe, duration, failure, h, isNumber, millis, parseTime, percent, text, when,
} from "./page.js";
import { offerVendors, reviewVendor } from "./dead-letters.js";

const REFRESH_MS = 5000;
const RED_BELOW = 0.95; // the 1 h success rate under which a vendor is red
const AMBER_WITHIN = 4 * 3600; // a budget forecast to run out sooner than this is amber
const WINDOWS = ["5m", "1h", "24h"];
const ERROR_CLASSES = ["vendor_4xx", "vendor_5xx", "vendor_429", "gateway_429", "timeout", "connect", "gateway_503", "other"];
const FAILING_CREDENTIALS = new Set(["failing", "rejected"]);

// What the page needs from Prometheus text: dead letters and cache results per vendor,
// and whether storage has fallen back (these figures are this process's).
function readMetrics(body) {
  const found = { deadLetters: {}, cache: {}, fallback: false };
  const line = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/;
  const label = /(\w+)="((?:[^"\\]|\\.)*)"/g;
  for (const row of body.split("\n")) {
    const m = line.exec(row);
    if (!m) continue;
    const [, name, rawLabels, rawValue] = m;
    const value = Number(rawValue);
    const labels = {};
    for (const l of (rawLabels || "").matchAll(label)) labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
    if (name === "gateway_dead_letters" && labels.vendor) found.deadLetters[labels.vendor] = value;
    else if (name === "gateway_cache_requests_total" && labels.vendor) {
      const results = (found.cache[labels.vendor] ||= {});
      results[labels.result] = (results[labels.result] || 0) + value;
    } else if (name === "gateway_storage_fallback" && value > 0) found.fallback = true;
  }
  return found;
}

// The budgets of a vendor's status that can be read.
const budgetsOf = (info) => (Array.isArray(info.budgets) ? info.budgets.filter((b) => b && typeof b === "object") : []);

// Every standing of a budget: the budget's own, or one per caller for `key: caller`.
function standings(budget) {
  if (budget.callers && typeof budget.callers === "object") {
    return Object.entries(budget.callers).map(([caller, level]) => ({ caller, ...(level && typeof level === "object" ? level : {}) }));
  }
  return [budget];
}

function health(info, fallback) {
  const red = [];
  const amber = [];
  const rate = info.stats?.["1h"]?.success_rate;
  if (isNumber(rate) && rate < RED_BELOW) red.push(`1 h success rate ${percent(rate)} is under 95%`);
  if (info.circuit_breaker === "open") red.push("the breaker is open");
  const credentials = info.credentials?.state;
  if (FAILING_CREDENTIALS.has(credentials)) red.push(`credentials are ${credentials}`);
  if (fallback) amber.push("shared storage has failed: budgets follow on_storage_error");
  for (const budget of budgetsOf(info)) {
    for (const level of standings(budget)) {
      if (isNumber(level.exhausts_in) && level.exhausts_in < AMBER_WITHIN) {
        const whose = level.caller ? ` (${level.caller})` : "";
        amber.push(`budget ${text(budget.name)}${whose} runs out in ${duration(level.exhausts_in)}`);
      }
    }
  }
  if (red.length) return { colour: "red", reasons: red.concat(amber) };
  if (amber.length) return { colour: "amber", reasons: amber };
  return { colour: "green", reasons: [] };
}

function statsTable(stats) {
  const windows = WINDOWS.map((w) => (stats && typeof stats[w] === "object" && stats[w]) || {});
  const row = (label, cell) => h("tr", {}, h("th", { scope: "row" }, label), windows.map((w) => h("td", {}, cell(w))));
  const errorRows = ERROR_CLASSES
    .filter((c) => windows.some((w) => isNumber(w.errors?.[c]) && w.errors[c] > 0))
    .map((c) => row(c.replace("_", " "), (w) => count(w.errors?.[c] ?? 0)));
  return h("table", { className: "windows" },
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, ""), WINDOWS.map((w) => h("th", { scope: "col" }, w)))),
    h("tbody", {},
      row("success rate", (w) => percent(w.success_rate)),
      row("requests", (w) => count(w.requests)),
      row("p50", (w) => millis(w.latency_ms?.p50)),
      row("p95", (w) => millis(w.latency_ms?.p95)),
      errorRows.length ? errorRows : h("tr", {}, h("th", { scope: "row" }, "errors"), h("td", { colspan: 3 }, stats ? "none" : DASH))));
}

function lastSuccess(stats) {
  const times = WINDOWS.map((w) => parseTime(stats?.[w]?.last_success)).filter((t) => t !== null);
  if (!times.length) return DASH;
  return when(new Date(Math.max(...times.map((t) => t.getTime()))).toISOString());
}

function budgetItem(budget) {
  const per = isNumber(budget.per) ? ` per ${duration(budget.per)}` : "";
  const flags = budget.shadow ? " (shadow)" : "";
  const lines = standings(budget).map((level) => {
    const parts = [`${count(level.remaining)} / ${count(budget.limit)} left`, level.reset === 0 ? "full" : `resets in ${duration(level.reset)}`];
    if (isNumber(level.exhausts_in)) {
      parts.push(`runs out at ${clock(new Date(Date.now() + level.exhausts_in * 1000))} (in ${duration(level.exhausts_in)})`);
    } else {
      parts.push(level.exhausts_in === null ? "does not run out at this rate" : `runs out at ${DASH}`);
    }
    if (isNumber(level.paused_for) && level.paused_for > 0) parts.push(`paused for ${duration(level.paused_for)} by the vendor`);
    return h("div", { className: "level" }, level.caller ? h("span", { className: "caller" }, `${level.caller}: `) : null, parts.join(" · "));
  });
  return h("li", {}, h("strong", {}, text(budget.name)), `${per}${flags}`, lines);
}

function credentialsText(credentials) {
  if (!credentials || typeof credentials !== "object") return DASH;
  const parts = [`${text(credentials.state)} (${text(credentials.type)})`];
  if (credentials.expires_at) parts.push(`expires ${when(credentials.expires_at)}`);
  if (credentials.last_error) parts.push(`last error: ${credentials.last_error}`);
  if (credentials.next_attempt_at) parts.push(`next try ${when(credentials.next_attempt_at)}`);
  return parts.join(" · ");
}

function cacheText(results) {
  if (!results) return DASH;
  const total = Object.values(results).reduce((a, b) => a + b, 0);
  if (!total) return DASH;
  return `${percent((results.hit || 0) / total)} of ${count(total)} (this process)`;
}

function card(vendor, info, metrics) {
  const verdict = health(info, metrics.fallback);
  const deadLetters = metrics.deadLetters[vendor];
  const fact = (label, ...value) => [h("dt", {}, label), h("dd", {}, ...value)];
  const review = isNumber(deadLetters) && deadLetters > 0
    ? h("button", { type: "button", className: "link", onclick: () => reviewVendor(vendor) }, "Review")
    : null;
  const budgets = budgetsOf(info);
  return h("article", { className: `card ${verdict.colour}`, "data-vendor": vendor, "data-health": verdict.colour },
    h("header", {},
      h("span", { className: "dot", "aria-hidden": "true" }),
      h("h3", {}, vendor),
      h("span", { className: "badge" }, verdict.colour)),
    verdict.reasons.length ? h("ul", { className: "reasons" }, verdict.reasons.map((r) => h("li", {}, r))) : null,
    h("p", { className: "upstream" }, text(info.upstream)),
    statsTable(info.stats),
    h("dl", { className: "facts" },
      fact("last success", lastSuccess(info.stats)),
      fact("breaker", text(info.circuit_breaker === null ? "none" : info.circuit_breaker)),
      fact("credentials", credentialsText(info.credentials)),
      fact("cache hits", cacheText(metrics.cache[vendor])),
      fact("dead letters", h("span", { className: "dead-letter-count" }, count(deadLetters)), review ? " " : null, review)),
    h("h4", {}, "Budgets"),
    budgets.length ? h("ul", { className: "budgets" }, budgets.map(budgetItem)) : h("p", {}, "none"));
}

let knownVendors = [];

function showVendors(status, metrics) {
  const vendors = status && typeof status.vendors === "object" && status.vendors ? status.vendors : {};
  const names = Object.keys(vendors).sort();
  const cards = names.map((name) => card(name, vendors[name] && typeof vendors[name] === "object" ? vendors[name] : {}, metrics));
  $("cards").replaceChildren(...cards);
  const tally = { red: 0, amber: 0, green: 0 };
  for (const c of cards) tally[c.dataset.health] += 1;
  const parts = [`${names.length} vendor${names.length === 1 ? "" : "s"}: ${tally.red} red, ${tally.amber} amber, ${tally.green} green`];
  const config = (status && status.config) || {};
  if (config.loaded_at) parts.push(`config loaded ${when(config.loaded_at)}`);
  if (config.last_error) parts.push(`last reload failed: ${config.last_error}`);
  if (metrics.fallback) parts.push("storage: fallen back");
  parts.push(`updated ${clock(new Date())}`);
  $("overview").textContent = parts.join(" · ");
  if (names.join("\n") !== knownVendors.join("\n")) {
    knownVendors = names;
    offerVendors(names);
  }
}

const NO_METRICS = { deadLetters: {}, cache: {}, fallback: false };

// The first figures are read before the page finishes loading (a synchronous request),
// so that the page is whole when its load event fires: `chromium --dump-dom`, a saved
// page or a screen reader sees the vendors, not an empty frame. Later ones are read in
// the background. False when they could not be read this way (a key is asked for then).
function firstLook() {
  const read = (path) => {
    const request = new XMLHttpRequest();
    request.open("GET", path, false);
    const key = adminKey.get();
    if (key) request.setRequestHeader("X-Gateway-Admin-Key", key);
    try { request.send(); } catch { return null; }
    return request.status === 200 ? request.responseText : null;
  };
  const status = read("status");
  if (status === null) return false;
  const metrics = read("../metrics");
  try {
    showVendors(JSON.parse(status), metrics === null ? NO_METRICS : readMetrics(metrics));
  } catch {
    return false;
  }
  return true;
}

async function refresh() {
  try {
    const reason = "Reading the status needs a key here (callers are configured).";
    const [status, metrics] = await Promise.all([call("status", { reason }), call("../metrics", { reason })]);
    if (!status.ok) {
      $("vendors-error").textContent = `The status could not be read: ${await describe(status)}`;
      $("vendors-error").hidden = false;
      return;
    }
    const read = metrics.ok ? readMetrics(await metrics.text()) : NO_METRICS;
    showVendors(await status.json(), read);
    $("vendors-error").hidden = true;
  } catch (err) {
    $("vendors-error").textContent = failure(err, "The status is not shown");
    $("vendors-error").hidden = false;
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

// The cards at once (when the status can be read before the page has loaded), then every
// few seconds.
export function watchVendors() {
  if (firstLook()) setTimeout(refresh, REFRESH_MS);
  else refresh();
}
