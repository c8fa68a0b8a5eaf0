// The operator console: the admin API of the node serving this page, with the admin token
// the operator enters (kept in sessionStorage, this tab only; never in the page). Charts
// (uPlot) are rates taken from the cumulative counters of GET /admin/stats.
import uPlot from "../lib/uplot/uPlot.esm.js";

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) k.startsWith("on") ? node.addEventListener(k.slice(2), v) : node.setAttribute(k, v);
  node.append(...children);
  return node;
};
const POLL_MS = 2000;
const WINDOW_S = 300;
const COLORS = ["#2f6fed", "#1a7f37", "#c0362c", "#9a6700", "#8250df", "#bf3989", "#0a7ea4", "#57606a"];
let token = sessionStorage.getItem("notecard.admin") ?? "";
let timer = null;

class Unauthorized extends Error {}

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (response.status === 401) throw new Unauthorized(data.message ?? "admin token missing or wrong");
  if (!response.ok) throw new Error(`${data.error ?? response.status}: ${data.message ?? ""}`);
  return data;
}

/** A time-series chart whose series (by name) appear as data brings them. */
class Chart {
  constructor(target) {
    this.target = target;
    this.names = [];
    this.times = [];
    this.values = new Map();
    this.plot = null;
  }
  add(t, points) {
    for (const name of Object.keys(points)) {
      if (!this.values.has(name)) {
        this.names.push(name);
        this.values.set(name, this.times.map(() => null));
        this.plot?.destroy();
        this.plot = null;
      }
    }
    this.times.push(t);
    for (const name of this.names) this.values.get(name).push(points[name] ?? null);
    while (this.times.length && this.times[0] < t - WINDOW_S) {
      this.times.shift();
      for (const series of this.values.values()) series.shift();
    }
    const data = [this.times, ...this.names.map((n) => this.values.get(n))];
    const width = Math.max(260, this.target.clientWidth || 320);
    if (this.plot === null) {
      this.plot = new uPlot({
        width, height: 180, legend: { live: false },
        scales: { y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
        series: [{}, ...this.names.map((label, i) => ({ label, stroke: COLORS[i % COLORS.length], width: 2, points: { show: false } }))],
        axes: [{}, { size: 40 }],
      }, data, this.target);
    } else {
      if (this.plot.width !== width) this.plot.setSize({ width, height: 180 });
      this.plot.setData(data);
    }
  }
}

const charts = {};
let previous = null;
const totals = { sent: 0 };

function rates(now, before) {
  if (before === null) return null;
  const seconds = (now.at_ms - before.at_ms) / 1000;
  const gifts = {};
  const refusals = {};
  const earlier = new Map(before.nodes.map((n) => [n.node, n]));
  for (const node of now.nodes) {
    const old = earlier.get(node.node);
    const same = old && old.started_at_ms === node.started_at_ms;
    for (const [name, value] of Object.entries(node.gifts)) {
      if (name === "refused") continue;
      gifts[name] = (gifts[name] ?? 0) + Math.max(0, value - (same ? old.gifts[name] ?? 0 : 0)) / seconds;
    }
    for (const [code, value] of Object.entries(node.refusals)) {
      const delta = Math.max(0, value - (same ? old.refusals[code] ?? 0 : 0));
      if (delta > 0 || code in refusals) refusals[code] = (refusals[code] ?? 0) + delta / seconds;
    }
  }
  return { gifts, refusals };
}

async function poll() {
  try {
    const stats = await api("GET", "/admin/stats");
    const t = stats.at_ms / 1000;
    const kinds = stats.card_kinds;
    const held = Object.values(stats.held_units).reduce((a, b) => a + b, 0) / stats.units_per_card;
    totals.sent = stats.nodes.reduce((sum, n) => sum + (n.gifts.sent ?? 0), 0);
    $("t-nodes").textContent = String(stats.nodes.length);
    $("t-conns").textContent = String(stats.nodes.reduce((sum, n) => sum + n.connections, 0));
    $("t-sent").textContent = String(totals.sent);
    $("t-pending").textContent = String(stats.pending_gifts);
    $("t-held").textContent = String(held);
    const r = rates(stats, previous);
    previous = stats;
    if (r !== null) {
      charts.gifts.add(t, { sent: 0, accepted: 0, declined: 0, expired: 0, ...r.gifts });
      const box = $("c-gifts"); // the highest rate drawn, for tests and the curious
      box.dataset.peakSent = String(Math.max(Number(box.dataset.peakSent ?? 0), r.gifts.sent ?? 0));
      charts.refusals.add(t, r.refusals);
    }
    charts.conns.add(t, Object.fromEntries(stats.nodes.map((n) => [n.node, n.connections])));
    charts.pending.add(t, { "pending gifts": stats.pending_gifts, ...Object.fromEntries(kinds.map((k) => [`held ${k} (cards)`, (stats.held_units[k] ?? 0) / stats.units_per_card])) });
    $("status").textContent = `live · ${stats.node}`;
    $("status").className = "pill ok";
  } catch (error) {
    if (error instanceof Unauthorized) return signOut(error.message);
    $("status").textContent = `no data: ${error.message}`;
    $("status").className = "pill bad";
  }
}

async function checkInvariant() {
  const target = $("t-invariant");
  target.textContent = "…";
  try {
    const report = await api("GET", "/admin/invariant");
    target.textContent = report.ok ? "ok" : `${report.violations.length} violation(s)`;
    target.style.color = report.ok ? "var(--ok)" : "var(--bad)";
    target.title = report.ok ? `checked ${new Date().toLocaleTimeString()}` : report.violations.join("\n");
  } catch (error) {
    target.textContent = "?";
    target.title = error.message;
  }
}

function signOut(message) {
  sessionStorage.removeItem("notecard.admin");
  token = "";
  clearInterval(timer);
  for (const panel of document.querySelectorAll(".panel")) panel.classList.add("hidden");
  $("signin").classList.remove("hidden");
  $("signout").classList.add("hidden");
  $("status").textContent = "signed out";
  if (message) {
    $("signin-error").textContent = message;
    $("signin-error").classList.remove("hidden");
  }
}

async function open() {
  await api("GET", "/admin/stats"); // the token works
  sessionStorage.setItem("notecard.admin", token);
  $("signin").classList.add("hidden");
  $("signin-error").classList.add("hidden");
  $("signout").classList.remove("hidden");
  for (const panel of document.querySelectorAll(".panel")) panel.classList.remove("hidden");
  charts.gifts = new Chart($("c-gifts"));
  charts.refusals = new Chart($("c-refusals"));
  charts.conns = new Chart($("c-conns"));
  charts.pending = new Chart($("c-pending"));
  await poll();
  checkInvariant();
  loadScenes();
  loadDashboards();
  let n = 0;
  timer = setInterval(() => {
    poll();
    if (++n % 15 === 0) checkInvariant();
  }, POLL_MS);
}

function table(rows) {
  return el("table", {}, ...rows.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v))));
}

async function showUser(user) {
  const target = $("user");
  try {
    const [info, pending, points] = await Promise.all([
      api("GET", `/admin/users/${encodeURIComponent(user)}`),
      api("GET", `/admin/users/${encodeURIComponent(user)}/pending`),
      api("GET", `/admin/users/${encodeURIComponent(user)}/points`),
    ]);
    const unit = info.balances.units_per_card;
    const flags = ["verified", "vip", "banned"].map((flag) => {
      const box = el("input", { type: "checkbox", id: `flag-${flag}`, style: "width:auto;min-height:0" });
      box.checked = info[flag];
      box.addEventListener("change", async () => {
        try {
          await api("PATCH", `/admin/users/${encodeURIComponent(user)}`, { [flag]: box.checked });
        } catch (error) {
          alert(error.message);
        }
        showUser(user);
      });
      return el("label", { for: `flag-${flag}`, style: "display:inline-flex;gap:6px;margin-right:12px" }, box, flag);
    });
    const kinds = [...new Set([...Object.keys(info.balances.available), ...Object.keys(info.balances.held)])];
    const mint = el("form", { class: "row" }, el("div", {}, el("label", {}, "Mint cards"), el("input", { type: "number", min: "1", value: "10", id: "mint-qty" })), el("button", { type: "submit", class: "secondary" }, "Mint"));
    mint.addEventListener("submit", async (event) => {
      event.preventDefault();
      await api("POST", `/admin/users/${encodeURIComponent(user)}/mint`, { qty: Number($("mint-qty").value) }).catch((e) => alert(e.message));
      showUser(user);
    });
    target.replaceChildren(
      el("p", {}, ...flags),
      table([["app", info.app], ["created", new Date(info.created_at_ms).toLocaleString()], ["points", String(points.points ?? 0)],
        ...kinds.map((k) => [k, `${(info.balances.available[k] ?? 0) / unit} available, ${(info.balances.held[k] ?? 0) / unit} held`])]),
      mint,
      el("p", { class: "muted" }, `${pending.gifts.length} offer(s) waiting for ${user}'s answer`),
      el("ul", { class: "list" }, ...pending.gifts.map((g) => el("li", {}, `${g.gift_id}: ${g.qty} ${g.kind} from ${g.sender}`))),
    );
  } catch (error) {
    if (error instanceof Unauthorized) return signOut(error.message);
    target.replaceChildren(el("div", { class: "notice bad" }, error.message));
  }
}

async function loadScenes() {
  try {
    const scenes = await api("GET", "/admin/scenes");
    const rows = Object.entries(scenes.config).map(([field, value]) => {
      const input = el("input", { value: JSON.stringify(value) });
      const save = el("button", { class: "secondary" }, "Set");
      save.addEventListener("click", async () => {
        try {
          await api("PATCH", "/admin/scenes", { [field]: JSON.parse(input.value) });
          $("scenes-result").replaceChildren(el("div", { class: "notice ok" }, `${field} set`));
        } catch (error) {
          $("scenes-result").replaceChildren(el("div", { class: "notice bad" }, error.message));
        }
      });
      return el("tr", {}, el("th", {}, field), el("td", {}, input), el("td", {}, save));
    });
    const festivals = scenes.festivals.map((f) => {
      const remove = el("button", { class: "danger" }, "Delete");
      remove.addEventListener("click", async () => {
        await api("DELETE", `/admin/festivals/${encodeURIComponent(f.festival_id ?? f.id)}`).catch((e) => alert(e.message));
        loadScenes();
      });
      return el("li", {}, el("span", { class: "grow" }, `${f.name} (${f.festival_id ?? f.id}): ×${f.multiplier}, ${new Date(f.start_ms).toLocaleString()} – ${new Date(f.end_ms).toLocaleString()}`), remove);
    });
    $("scenes").replaceChildren(el("table", {}, ...rows), el("ul", { class: "list" }, ...festivals));
  } catch (error) {
    $("scenes").replaceChildren(el("div", { class: "notice bad" }, error.message));
  }
}

// The business dashboards (docs/dashboards.md): the three JSON routes, drawn as bars, a table
// and a heat map. A node without a book of record answers 503 NO_BOOKS: shown, not an error.
async function loadDashboards() {
  const query = new URLSearchParams();
  for (const name of ["brand", "campaign"]) {
    const value = $(`dash-${name}`).value.trim();
    if (value) query.set(name, value);
  }
  const suffix = query.toString() ? `?${query}` : "";
  try {
    const [profile, conversion, retention] = await Promise.all(
      ["profile", "conversion", "retention"].map((name) => api("GET", `/admin/dashboards/${name}${suffix}`)));
    $("dash-error").replaceChildren();
    drawProfile(profile);
    drawConversion(conversion);
    drawRetention(retention);
  } catch (error) {
    if (error instanceof Unauthorized) return signOut(error.message);
    for (const id of ["dash-profile", "dash-conversion", "dash-retention"]) $(id).replaceChildren();
    $("dash-error").replaceChildren(el("div", { class: "notice warn" }, error.message));
  }
}

const percent = (rate) => (rate === null ? "–" : `${Math.round(rate * 100)}%`);

function drawProfile(report) {
  const titles = { region: "region", age: "age bucket", app: "app", fan_level: "fan level" };
  $("dash-profile").replaceChildren(...Object.entries(report.breakdown).map(([name, rows]) => {
    const top = Math.max(1, ...rows.map((row) => row.recipients));
    return el("div", { class: "tile", "data-dimension": name },
      el("div", { class: "muted" }, `${titles[name] ?? name} · ${report.recipients} recipients`),
      el("table", {}, ...rows.map((row) => el("tr", {},
        el("th", {}, row.value),
        el("td", { style: "width:60%" }, el("div", { style: `background:var(--accent);height:10px;width:${(100 * row.recipients) / top}%` })),
        el("td", {}, String(row.recipients))))));
  }));
}

function drawConversion(report) {
  const money = (cents) => (cents === null ? "–" : (cents / 100).toFixed(2));
  const head = ["campaign", "issued", "accepted", "purchased", "cost", "revenue", "cost / purchase", "ROI"];
  $("dash-conversion").replaceChildren(el("table", {},
    el("tr", {}, ...head.map((h) => el("th", {}, h))),
    ...report.campaigns.map((c) => el("tr", { "data-campaign": c.campaign },
      el("td", {}, `${c.name} (${c.brand})`), el("td", {}, String(c.issued)),
      el("td", {}, `${c.accepted} (${percent(c.accept_rate)})`), el("td", {}, `${c.purchased} (${percent(c.purchase_rate)})`),
      el("td", {}, money(c.cost_cents)), el("td", {}, money(c.revenue_cents)), el("td", {}, money(c.cost_per_conversion_cents)),
      el("td", {}, percent(c.roi))))));
}

function drawRetention(report) {
  const days = Array.from({ length: report.days }, (_, i) => i + 1);
  $("dash-retention").replaceChildren(el("table", {},
    el("tr", {}, el("th", {}, `cohort (${report.timezone})`), el("th", {}, "recipients"), ...days.map((d) => el("th", {}, String(d)))),
    ...report.cohorts.map((c) => el("tr", { "data-cohort": c.day },
      el("td", {}, c.day), el("td", {}, String(c.recipients)),
      ...c.rate.map((rate) => el("td", { style: `background:rgba(47,111,237,${rate ?? 0});color:${(rate ?? 0) > 0.5 ? "#fff" : "inherit"}` }, percent(rate)))))));
}

$("signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  token = $("token").value.trim();
  $("token").value = "";
  try {
    await open();
  } catch (error) {
    signOut(error.message);
  }
});
$("signout").addEventListener("click", () => signOut(""));
$("check").addEventListener("click", checkInvariant);
$("user-form").addEventListener("submit", (event) => {
  event.preventDefault();
  showUser($("user-id").value.trim());
});
$("gift-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const gift = await api("GET", `/admin/gifts/${encodeURIComponent($("gift-id").value.trim())}`);
    $("gift").replaceChildren(table(Object.entries(gift).map(([k, v]) => [k, String(v)])));
  } catch (error) {
    $("gift").replaceChildren(el("div", { class: "notice bad" }, error.message));
  }
});
$("dash-form").addEventListener("submit", (event) => {
  event.preventDefault();
  loadDashboards();
});
$("festival-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    await api("PUT", `/admin/festivals/${encodeURIComponent($("f-id").value.trim())}`, {
      start: $("f-start").value, end: $("f-end").value, multiplier: Number($("f-mult").value),
    });
    loadScenes();
  } catch (error) {
    $("scenes-result").replaceChildren(el("div", { class: "notice bad" }, error.message));
  }
});

if (token) open().catch((error) => signOut(error.message));
