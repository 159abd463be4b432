// The Shepherd console: five pages over the typed /admin endpoints (the same ones scripts use).
// The session cookie authenticates; every change carries the session's CSRF token.
"use strict";
(() => {
  let csrf = "";
  const page = document.getElementById("page");
  const status = document.getElementById("status");
  let timer = null;

  // ------------------------------------------------------------------ helpers
  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
    }
    for (const child of children.flat()) {
      if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }
  const usd = (v) => (v === null || v === undefined ? "–" : "$" + Number(v).toFixed(v < 1 ? 4 : 2));
  const num = (v) => (v === null || v === undefined ? "–" : Number(v).toLocaleString("en-US"));
  const pct = (v) => (Number(v || 0) * 100).toFixed(1) + "%";
  const ms = (v) => (v === null || v === undefined ? "–" : Number(v).toFixed(v < 10 ? 1 : 0) + " ms");
  const time = (t) => new Date(t).toISOString().replace("T", " ").slice(0, 19);

  // Every hour or day of a window, zero where the ledger has no row (UTC, as the ledger).
  function fillSeries(rows, field, bucket, count, end = Date.now()) {
    const step = bucket === "hour" ? 3600e3 : 86400e3;
    const width = bucket === "hour" ? 13 : 10;
    const byStart = new Map(rows.map((r) => [String(r[field]).slice(0, width), r]));
    const out = [];
    for (let i = count - 1; i >= 0; i--) {
      const start = new Date(end - i * step).toISOString().slice(0, width);
      out.push({ start, row: byStart.get(start) || {} });
    }
    return out;
  }

  async function api(path, options = {}) {
    const init = { credentials: "same-origin", headers: {}, ...options };
    if (init.body && typeof init.body !== "string") {
      init.body = JSON.stringify(init.body);
      init.headers["content-type"] = "application/json";
    }
    if (init.method && init.method !== "GET") init.headers["x-csrf-token"] = csrf;
    const response = await fetch(path, init);
    if (response.status === 401) {
      location.href = "/ui";
      throw new Error("signed out");
    }
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error((body.error && body.error.message) || response.statusText);
    return body;
  }

  function say(text, isError = false) {
    status.textContent = text;
    status.className = "status" + (isError ? " error" : "");
  }

  function card(label, value, id) {
    return h("div", { class: "card", "data-card": id }, h("div", { class: "label", text: label }), h("div", { class: "value", text: value }));
  }

  function chart(title, svg) {
    return h("figure", { class: "chart" }, h("h3", { text: title }), svg);
  }

  function table(headers, rows, attrs = {}) {
    return h("div", { class: "table-wrap" }, h("table", attrs,
      h("thead", {}, h("tr", {}, headers.map(([text, cls]) => h("th", { scope: "col", class: cls, text })))),
      h("tbody", {}, rows)));
  }

  // ------------------------------------------------------------------ overview
  async function overview() {
    const o = await api("/admin/overview");
    const lat = o.latency_ms || {}, ttft = o.time_to_first_token_ms || {};
    const hours = fillSeries(o.last_24h_by_hour, "hour", "hour", 24, o.generated_at_ms).map(({ start, row }) => ({
      label: start.slice(11, 13) + ":00", value: row.requests || 0, cost: row.cost_usd || 0, tokens: row.tokens || 0 }));
    return [
      h("h1", { text: "Overview" }),
      h("div", { class: "cards" },
        card("Requests today", num(o.today.requests), "requests-today"),
        card("Error rate today", pct(o.today.error_rate), "error-rate"),
        card("Latency p50 / p95 / p99", `${ms(lat.p50)} / ${ms(lat.p95)} / ${ms(lat.p99)}`, "latency"),
        card("Time to first token p50 / p99", `${ms(ttft.p50)} / ${ms(ttft.p99)}`, "ttft"),
        card("Tokens today", num(o.today.prompt_tokens + o.today.completion_tokens), "tokens-today"),
        card("Tokens this month", num(o.month.prompt_tokens + o.month.completion_tokens), "tokens-month"),
        card("Cost today", usd(o.today.cost_usd), "cost-today"),
        card("Cost this month", usd(o.month.cost_usd), "cost-month"),
        card("Cache hit ratio today", pct(o.today.cache_hit_ratio), "cache-ratio"),
        card("Saved by the cache this month", usd(o.month.saved_usd), "saved"),
        card("In flight now", num(o.in_flight), "in-flight")),
      h("div", { class: "charts" },
        chart("Requests per hour (last 24 h)", Charts.bars("Requests per hour", hours, num)),
        chart("Cost per hour (last 24 h)", Charts.line("Cost per hour", hours.map((p) => ({ label: p.label, value: p.cost })), usd)),
        chart("Tokens per hour (last 24 h)", Charts.bars("Tokens per hour", hours.map((p) => ({ label: p.label, value: p.tokens })), num))),
      h("p", { class: "muted", text: "Latency and time to first token: this replica's last requests. Totals: the usage ledger." }),
    ];
  }

  // ------------------------------------------------------------------ usage
  const usageState = { period: "7d", by: "model", from: "", to: "" };
  async function usage() {
    const s = usageState;
    const range = s.period === "custom"
      ? { from: s.from ? s.from + "T00:00:00Z" : "", to: s.to ? s.to + "T23:59:59Z" : "" }
      : { from: s.period, to: "" };
    const bucket = s.period === "24h" ? "hour" : "day";
    const query = (groupBy, format) => {
      const q = new URLSearchParams({ group_by: groupBy });
      if (range.from) q.set("from", range.from);
      if (range.to) q.set("to", range.to);
      if (format) q.set("format", format);
      return "/admin/usage?" + q;
    };
    const [grouped, series, keys] = await Promise.all([api(query(s.by)), api(query(bucket)), api("/admin/keys")]);
    const names = Object.fromEntries(keys.data.map((k) => [k.id, k.name]));
    const label = (row) => (s.by === "key" ? names[row.key] || row.key : row[s.by]);
    const span = s.period === "24h" ? 24 : s.period === "30d" ? 30 : s.period === "7d" ? 7 : 0;
    const points = (span ? fillSeries(series.data, bucket, bucket, span) : series.data.map((r) => ({ start: r[bucket], row: r })))
      .map(({ start, row }) => ({ label: bucket === "hour" ? start.slice(11, 13) + ":00" : start, value: row.cost_usd || 0, requests: row.requests || 0 }));
    const picker = h("form", { class: "inline", onsubmit: (e) => { e.preventDefault(); render(); } },
      h("label", {}, "Period", h("select", { id: "period", onchange: (e) => { s.period = e.target.value; render(); } },
        [["24h", "Last 24 hours"], ["7d", "Last 7 days"], ["30d", "Last 30 days"], ["custom", "Custom"]].map(([v, t]) => h("option", { value: v, selected: v === s.period, text: t })))),
      s.period === "custom" ? [
        h("label", {}, "From", h("input", { type: "date", value: s.from, onchange: (e) => { s.from = e.target.value; } })),
        h("label", {}, "To", h("input", { type: "date", value: s.to, onchange: (e) => { s.to = e.target.value; } })),
        h("button", { type: "submit", text: "Apply" })] : null,
      h("label", {}, "By", h("select", { id: "group-by", onchange: (e) => { s.by = e.target.value; render(); } },
        [["key", "Key"], ["model", "Model"], ["deployment", "Deployment"]].map(([v, t]) => h("option", { value: v, selected: v === s.by, text: t })))),
      h("a", { href: query(s.by + "," + bucket, "csv"), download: "shepherd-usage.csv", id: "csv" }, "Export CSV"));
    const rows = grouped.data.map((r) => h("tr", {},
      h("td", { text: label(r) || "–" }), h("td", { class: "num", text: num(r.requests) }), h("td", { class: "num", text: num(r.errors) }),
      h("td", { class: "num", text: num(r.prompt_tokens) }), h("td", { class: "num", text: num(r.completion_tokens) }),
      h("td", { class: "num", text: usd(r.cost_usd) }), h("td", { class: "num", text: num(r.cache_hits) }), h("td", { class: "num", text: usd(r.saved_usd) })));
    return [
      h("h1", { text: "Usage and cost" }), picker,
      h("div", { class: "charts" },
        chart(`Cost per ${bucket}`, Charts.line(`Cost per ${bucket}`, points, usd)),
        chart(`Requests per ${bucket}`, Charts.bars(`Requests per ${bucket}`, points.map((p) => ({ label: p.label, value: p.requests })), num))),
      h("h2", { text: `By ${s.by}` }),
      table([[s.by[0].toUpperCase() + s.by.slice(1)], ["Requests", "num"], ["Errors", "num"], ["Prompt tokens", "num"], ["Completion tokens", "num"], ["Cost", "num"], ["Cache hits", "num"], ["Saved", "num"]],
        rows.length ? rows : [h("tr", {}, h("td", { colspan: 8, class: "muted", text: "No usage in this period." }))], { id: "usage-table" }),
    ];
  }

  // ------------------------------------------------------------------ deployments
  async function deployments() {
    const d = await api("/admin/deployments");
    const sections = d.data.map((m) => [
      h("h2", { text: m.model }),
      m.canary_rule ? h("p", { class: "muted", text: `Canary: ${m.canary_rule}; share of recent requests ${pct(m.canary_share)}` }) : null,
      table([["Deployment"], ["Health"], ["Circuit"], ["In flight", "num"], ["Latency (first byte)", "num"], ["Recent requests", "num"], ["Recent errors", "num"], ["Last errors"]],
        m.deployments.map((x) => h("tr", { "data-deployment": x.name },
          h("td", {}, x.name, x.canary ? h("span", { class: "badge warn", text: "canary" }) : null),
          h("td", {}, h("span", { class: "badge " + (x.healthy ? "ok" : "bad"), text: x.healthy ? "healthy" : "unhealthy" })),
          h("td", {}, h("span", { class: "badge " + (x.circuit === "closed" ? "ok" : x.circuit === "open" ? "bad" : "warn"), text: x.circuit.replace("_", "-") })),
          h("td", { class: "num", text: num(x.in_flight) }), h("td", { class: "num", text: ms(x.latency_ms) }),
          h("td", { class: "num", text: num(x.recent_requests) }), h("td", { class: "num", text: num(x.recent_errors) }),
          h("td", { text: x.last_errors.map((e) => `${e.status} ${e.error || ""}`.trim()).join(", ") || "–" })))),
    ]);
    return [h("h1", { text: "Deployments" }), sections];
  }

  // ------------------------------------------------------------------ keys
  const keysState = { search: "", secret: null };
  function secretBox(text, title) {
    const code = h("code", { id: "new-secret", text });
    return h("div", { class: "secret", role: "alert" },
      h("strong", { text: title }), h("p", { text: "Copy it now: it is not shown again." }), code, " ",
      h("button", { type: "button", class: "secondary", id: "copy-secret", onclick: async () => {
        try { await navigator.clipboard.writeText(text); say("Copied."); } catch { say("Select the key and copy it.", true); }
      } }, "Copy"));
  }
  function limitsFrom(form) {
    const n = (name) => (form[name].value === "" ? null : Number(form[name].value));
    const limits = { rpm: n("rpm"), tpm: n("tpm"), concurrency: n("concurrency") };
    const budget = n("budget");
    const models = form.models.value.split(",").map((m) => m.trim()).filter(Boolean);
    return {
      models: models.length ? models : ["*"],
      limits: Object.values(limits).some((v) => v !== null) ? limits : null,
      budget: budget === null ? null : { usd: budget, period: form.period.value },
    };
  }
  function keyFields(k = {}) {
    const l = k.limits || {}, b = k.budget || {};
    return [
      h("label", {}, "Models (comma-separated)", h("input", { name: "models", value: (k.models || ["*"]).join(", ") })),
      h("label", {}, "Requests/min", h("input", { name: "rpm", type: "number", min: 1, value: l.rpm ?? "" })),
      h("label", {}, "Tokens/min", h("input", { name: "tpm", type: "number", min: 1, value: l.tpm ?? "" })),
      h("label", {}, "Concurrency", h("input", { name: "concurrency", type: "number", min: 1, value: l.concurrency ?? "" })),
      h("label", {}, "Budget (USD)", h("input", { name: "budget", type: "number", min: 0, step: "0.01", value: b.usd ?? "" })),
      h("label", {}, "Budget period", h("select", { name: "period" }, ["day", "week", "month"].map((p) => h("option", { value: p, selected: (b.period || "month") === p, text: p })))),
    ];
  }
  async function keys() {
    const list = await api("/admin/keys");
    const term = keysState.search.toLowerCase();
    const shown = list.data.filter((k) => !term || k.name.toLowerCase().includes(term) || k.id.includes(term));
    const create = h("form", { class: "inline", id: "create-key", onsubmit: async (e) => {
      e.preventDefault();
      const form = e.target;
      try {
        const made = await api("/admin/keys", { method: "POST", body: { name: form.name.value, ...limitsFrom(form) } });
        keysState.secret = { text: made.key, title: `Key “${made.name}” created.` };
        say("Key created.");
        render();
      } catch (error) { say(error.message, true); }
    } }, h("label", {}, "Name", h("input", { name: "name", required: true })), keyFields(), h("button", { type: "submit", text: "Create key" }));
    const rows = shown.map((k) => {
      const b = k.budget;
      const used = b && b.usd > 0 ? Math.min(1, (b.spent_usd || 0) / b.usd) : 0;
      const bar = h("span", { class: used > 0.8 ? "high" : "" });
      bar.style.width = (used * 100).toFixed(1) + "%";
      const state = k.revoked_at ? "revoked" : k.enabled ? "active" : "disabled";
      return h("tr", { "data-key": k.name },
        h("td", { text: k.name }), h("td", { class: "muted", text: k.id }),
        h("td", {}, h("span", { class: "badge " + (state === "active" ? "ok" : "bad"), text: state })),
        h("td", { text: k.models.join(", ") }),
        h("td", { text: k.limits && (k.limits.rpm || k.limits.tpm || k.limits.concurrency) ? `${k.limits.rpm ?? "–"} rpm, ${k.limits.tpm ?? "–"} tpm, ${k.limits.concurrency ?? "–"} at once` : "–" }),
        h("td", {}, b ? [h("span", { class: "budget", role: "meter", "aria-valuemin": 0, "aria-valuemax": b.usd, "aria-valuenow": b.spent_usd || 0, "aria-label": `Budget used by ${k.name}` }, bar), ` ${usd(b.spent_usd || 0)} / ${usd(b.usd)} per ${b.period}`] : "–"),
        h("td", {}, state === "revoked" ? "" : [
          h("button", { type: "button", class: "secondary", "data-action": "edit", onclick: () => edit(k) }, "Edit"), " ",
          h("button", { type: "button", class: "secondary", "data-action": "rotate", onclick: () => rotate(k) }, "Rotate"), " ",
          h("button", { type: "button", class: "danger", "data-action": "revoke", onclick: () => revoke(k) }, "Revoke")]));
    });
    const secret = keysState.secret;
    keysState.secret = null;
    return [
      h("h1", { text: "Keys" }),
      secret ? secretBox(secret.text, secret.title) : null,
      h("h2", { text: "Create a key" }), create,
      h("div", { id: "edit-slot" }),
      h("div", { class: "toolbar" }, h("label", {}, "Search", h("input", { id: "key-search", type: "search", value: keysState.search,
        oninput: (e) => { keysState.search = e.target.value; render(); } }))),
      table([["Name"], ["Id"], ["State"], ["Models"], ["Limits"], ["Budget"], ["Actions"]], rows, { id: "keys-table" }),
    ];
  }
  function edit(k) {
    const slot = document.getElementById("edit-slot");
    slot.replaceChildren(h("h2", { text: `Edit ${k.name}` }), h("form", { class: "inline", id: "edit-key", onsubmit: async (e) => {
      e.preventDefault();
      try { await api(`/admin/keys/${k.id}`, { method: "PATCH", body: limitsFrom(e.target) }); say("Saved."); render(); }
      catch (error) { say(error.message, true); }
    } }, keyFields(k), h("button", { type: "submit", text: "Save" }), h("button", { type: "button", class: "secondary", onclick: () => slot.replaceChildren() }, "Cancel")));
    slot.querySelector("input").focus();
  }
  async function rotate(k) {
    const overlap = prompt(`Rotate ${k.name}: how long may the old secret still be used? (e.g. 1h, 0s)`, "1h");
    if (overlap === null) return;
    try {
      const made = await api(`/admin/keys/${k.id}/rotate`, { method: "POST", body: { overlap } });
      keysState.secret = { text: made.key, title: `New secret for “${k.name}”.` };
      render();
    } catch (error) { say(error.message, true); }
  }
  async function revoke(k) {
    if (!confirm(`Revoke ${k.name}? Requests with it are refused at once.`)) return;
    try { await api(`/admin/keys/${k.id}`, { method: "DELETE" }); say(`${k.name} revoked.`); render(); }
    catch (error) { say(error.message, true); }
  }

  // ------------------------------------------------------------------ requests
  const tailState = { key: "", model: "", status: "" };
  async function requests() {
    const q = new URLSearchParams({ limit: "200" });
    for (const [k, v] of Object.entries(tailState)) if (v) q.set(k, v);
    const tail = await api("/admin/requests?" + q);
    const filter = (name, label, placeholder) => h("label", {}, label, h("input", { name, id: "filter-" + name, value: tailState[name], placeholder,
      onchange: (e) => { tailState[name] = e.target.value.trim(); render(); } }));
    const rows = tail.data.map((r) => h("tr", { "data-request": r.request_id },
      h("td", { text: time(r.time_ms) }), h("td", {}, h("span", { class: "badge " + (r.status < 400 ? "ok" : r.status < 500 ? "warn" : "bad"), text: r.status })),
      h("td", { text: r.key || "–" }), h("td", { text: r.model || "–" }), h("td", { text: r.deployment || "–" }),
      h("td", { class: "num", text: num(r.prompt_tokens) }), h("td", { class: "num", text: num(r.completion_tokens) }),
      h("td", { class: "num", text: usd(r.cost_usd) }), h("td", { class: "num", text: ms(r.total_ms) }),
      h("td", { text: r.stream ? "stream" : "" }), h("td", { text: r.error || r.outcome })));
    return [
      h("h1", { text: "Requests" }),
      h("p", { class: "muted", text: "The newest requests of this replica, refreshed every 2 seconds." }),
      h("form", { class: "inline", onsubmit: (e) => {
        e.preventDefault();
        for (const name of Object.keys(tailState)) tailState[name] = e.target[name].value.trim();
        render();
      } }, filter("key", "Key", "key name"), filter("model", "Model", "model"), filter("status", "Status", "2xx, 4xx, 429…"),
        h("button", { type: "submit", text: "Filter" })),
      table([["Time (UTC)"], ["Status"], ["Key"], ["Model"], ["Deployment"], ["Prompt", "num"], ["Completion", "num"], ["Cost", "num"], ["Latency", "num"], ["Stream"], ["Outcome"]],
        rows.length ? rows : [h("tr", {}, h("td", { colspan: 11, class: "muted", text: "No requests yet." }))], { id: "requests-table" }),
    ];
  }

  // ------------------------------------------------------------------ routing
  const pages = { overview, usage, deployments, keys, requests };
  const refreshEvery = { overview: 10000, deployments: 3000, requests: 2000 };
  async function render() {
    clearTimeout(timer);
    const name = pages[location.hash.slice(1)] ? location.hash.slice(1) : "overview";
    for (const a of document.querySelectorAll("nav a")) {
      if (a.dataset.page === name) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
    }
    // Keep focus and typing in a filter or search box across refreshes.
    const active = document.activeElement && document.activeElement.id;
    try {
      const content = await pages[name]();
      page.replaceChildren(...[content].flat(3).filter(Boolean));
      page.dataset.page = name;
      page.dataset.loadedAt = String(Date.now());
      if (active && document.getElementById(active)) document.getElementById(active).focus();
    } catch (error) { say(error.message, true); }
    if (refreshEvery[name]) timer = setTimeout(render, refreshEvery[name]);
  }

  document.getElementById("sign-out").addEventListener("click", async () => {
    await fetch("/ui/sign-out", { method: "POST", credentials: "same-origin", headers: { "x-csrf-token": csrf } });
    location.href = "/ui";
  });
  window.addEventListener("hashchange", () => { render(); page.focus(); });
  api("/admin/session").then((s) => { csrf = s.csrf_token; render(); }).catch((error) => say(error.message, true));
})();
