// The BitingLip dashboard: one page, no build step, nothing fetched from elsewhere. The
// API key is kept in session storage; every view reads the gateway's own API with it and
// refreshes itself every two seconds (no full reload).
"use strict";

const KEY = "bitinglip.key";
const state = { key: sessionStorage.getItem(KEY), admin: false, timer: null, view: null };

const $ = (sel, root = document) => root.querySelector(sel);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const mib = (b) => (b == null ? "-" : b >= 1 << 30 ? (b / (1 << 30)).toFixed(1) + " GiB" : b >= 1 << 20 ? (b / (1 << 20)).toFixed(0) + " MiB" : (b / 1024).toFixed(0) + " KiB");

// A small line chart of `points` ([x, y] pairs, x in ms) as inline SVG, with its last
// value and its unit; an empty chart says so.
function chart(title, points, unit) {
  const w = 260, h = 64;
  const last = points.length ? points[points.length - 1][1] : null;
  const head = `<figcaption>${esc(title)}: <strong>${last == null ? "-" : last.toFixed(last < 10 ? 1 : 0)}</strong> ${esc(unit)}</figcaption>`;
  if (points.length < 2) return `<figure class="chart">${head}<svg class="chart" viewBox="0 0 ${w} ${h}" role="img" aria-label="${esc(title)}: not enough data yet"></svg></figure>`;
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y1 = Math.max(...ys) || 1;
  // A steady value is a line across the middle, not along the top.
  const flat = Math.min(...ys) === Math.max(...ys);
  const at = ([x, y]) => `${((x - x0) / (x1 - x0 || 1) * (w - 4) + 2).toFixed(1)},${(flat ? h / 2 : h - 2 - (y / y1) * (h - 6)).toFixed(1)}`;
  return `<figure class="chart">${head}<svg class="chart" viewBox="0 0 ${w} ${h}" role="img" aria-label="${esc(title)} over the last minutes">
    <polyline fill="none" stroke="currentColor" stroke-width="1.5" points="${points.map(at).join(" ")}"/></svg></figure>`;
}
const ago = (ms) => {
  if (!ms) return "-";
  const s = Math.max(0, (Date.now() - ms) / 1000);
  return s < 90 ? `${s.toFixed(0)} s` : s < 5400 ? `${(s / 60).toFixed(0)} min` : `${(s / 3600).toFixed(1)} h`;
};
const badge = (text, cls) => `<span class="badge ${cls}">${esc(text)}</span>`;

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: `Bearer ${state.key}` }, options.headers || {});
  if (options.body && typeof options.body !== "string") {
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(options.body);
  }
  const resp = await fetch(path, Object.assign({}, options, { headers }));
  if (!resp.ok) {
    let message = `${resp.status}`;
    try { message = (await resp.json()).error.message; } catch (_) { /* not JSON */ }
    const err = new Error(message);
    err.status = resp.status;
    throw err;
  }
  return resp;
}
const json = async (path, options) => (await api(path, options)).json();

// ---- sign in ----------------------------------------------------------------------

async function signIn(key) {
  state.key = key;
  const me = await json("/v1/key");
  state.admin = me.scope === "admin";
  sessionStorage.setItem(KEY, key);
  $("#signin").hidden = true;
  $("#nav").hidden = false;
  $("#signout").hidden = false;
  for (const a of document.querySelectorAll("[data-admin]")) a.hidden = !state.admin;
  document.body.dataset.scope = state.admin ? "admin" : "inference";
  route();
}

function signOut() {
  sessionStorage.removeItem(KEY);
  location.hash = "";
  location.reload();
}

// ---- views ------------------------------------------------------------------------

const views = {
  cluster: { admin: true, title: "Cluster", render: renderCluster },
  models: { admin: true, title: "Models", render: renderModels },
  deployments: { admin: true, title: "Deployments", render: renderDeployments },
  tasks: { admin: false, title: "Tasks", render: renderTasks },
  keys: { admin: true, title: "Keys & usage", render: renderKeys },
  playground: { admin: false, title: "Playground", render: renderPlayground, once: true },
};

function route() {
  let name = location.hash.replace(/^#\//, "").split("/")[0];
  if (!views[name] || (views[name].admin && !state.admin)) name = state.admin ? "cluster" : "playground";
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.getAttribute("href") === `#/${name}`);
  clearInterval(state.timer);
  const view = $("#view");
  view.hidden = false;
  view.dataset.view = name;
  state.view = name;
  view.innerHTML = `<h1>${esc(views[name].title)}</h1><div id="body"></div><p id="view-error" class="error" role="alert"></p>`;
  const refresh = async () => {
    try {
      await views[name].render($("#body"));
      $("#view-error").textContent = "";
    } catch (err) {
      const e = $("#view-error");
      if (e) e.textContent = err.message;
    }
  };
  refresh();
  if (!views[name].once) state.timer = setInterval(() => { if (state.view === name) refresh(); }, 2000);
}

// A worker's prefix cache: hits of lookups and the prompt tokens taken from it.
function cacheUse(c) {
  if (!c || !c.lookups) return "-";
  return `${c.hits} / ${c.lookups} hits · ${c.cached_tokens} tokens`;
}

// Each model's prefix-cache hit rate over its workers.
function cacheRates(nodes) {
  const byModel = {};
  for (const w of nodes.flatMap((n) => n.workers)) {
    const m = (byModel[w.model] ||= { lookups: 0, hits: 0, cached_tokens: 0 });
    for (const k of ["lookups", "hits", "cached_tokens"]) m[k] += (w.prefix_cache || {})[k] || 0;
  }
  const rows = Object.entries(byModel).filter(([, c]) => c.lookups).map(([model, c]) =>
    `<tr data-model="${esc(model)}"><td>${esc(model)}</td><td>${((c.hits / c.lookups) * 100).toFixed(0)}%</td><td>${c.hits} / ${c.lookups}</td><td>${c.cached_tokens}</td></tr>`).join("");
  return rows ? `<h2>Prefix cache</h2><div class="table-wrap"><table id="cache-rates"><thead><tr><th>model</th><th>hit rate</th><th>hits</th><th>cached tokens</th></tr></thead><tbody>${rows}</tbody></table></div>` : "";
}

async function renderCluster(body) {
  const [cluster, ready] = await Promise.all([json("/api/v1/cluster"), fetch("/ready").then((r) => r.json().catch(() => ({})))]);
  const nodes = cluster.nodes.map((n) => {
    const workers = n.workers.map((w) => `<tr data-worker="${esc(w.worker_id)}"><td>${esc(w.model)}</td><td>${badge(w.state, w.state === "ready" ? "ok" : w.state === "failed" ? "bad" : "warn")}</td><td>${w.in_flight} / ${w.max_sequences}</td><td class="cache">${cacheUse(w.prefix_cache)}</td></tr>`).join("");
    const used = n.memory_total ? (1 - n.memory_free / n.memory_total) * 100 : 0;
    const stale = Date.now() - n.last_heartbeat_ms > 5000;
    const gpus = (n.gpus || []).map((g) => {
      const share = g.memory_total ? (g.memory_used / g.memory_total) * 100 : 0;
      return `<tr data-gpu="${esc(g.uuid)}"><td>${g.index}</td><td>${esc(g.name)}</td><td>${mib(g.memory_used)} of ${mib(g.memory_total)}<div class="bar"><span style="width:${share.toFixed(0)}%"></span></div></td><td>${mib(g.budget)}</td><td>${esc(g.compute_capability || "-")}</td><td>${g.utilization == null ? "-" : `${g.utilization}%`}</td></tr>`;
    }).join("");
    return `<article class="card" data-node="${esc(n.node_id)}">
      <h3>${esc(n.node_id)} ${n.node_id === cluster.leader ? badge("leader", "ok") : ""} ${badge(stale ? "stale" : "live", stale ? "warn" : "ok")}</h3>
      <dl class="kv"><dt>roles</dt><dd>${esc(n.roles.join(", "))}</dd>
      <dt>device</dt><dd>${esc(n.device)}</dd>
      <dt>memory</dt><dd>${mib(n.memory_total - n.memory_free)} used of ${mib(n.memory_total)}<div class="bar"><span style="width:${used.toFixed(0)}%"></span></div></dd>
      <dt>up</dt><dd>${ago(n.started_ms)}</dd><dt>http</dt><dd>${esc(n.http || "-")}</dd><dt>version</dt><dd>${esc(n.version)}</dd></dl>
      ${gpus ? `<div class="table-wrap"><table class="gpus"><thead><tr><th>gpu</th><th>name</th><th>memory</th><th>budget</th><th>cc</th><th>util</th></tr></thead><tbody>${gpus}</tbody></table></div>` : ""}
      ${workers ? `<div class="table-wrap"><table><thead><tr><th>model</th><th>worker</th><th>slots</th><th>prefix cache</th></tr></thead><tbody>${workers}</tbody></table></div>` : ""}
    </article>`;
  }).join("");
  const checks = ["nats", "jetstream", "model_loaded"].map((k) => `${esc(k)} ${badge(ready[k] ? "ok" : "down", ready[k] ? "ok" : "bad")}`).join(" ");
  // Metrics at a glance, from the tasks finished in the last ten minutes (every worker's,
  // as their records say).
  const since = Date.now() - 10 * 60 * 1000;
  const done = (await json("/v1/tasks?limit=200&status=completed")).data
    .filter((t) => t.result && t.updated_ms >= since)
    .sort((a, b) => a.updated_ms - b.updated_ms);
  const u = (t) => t.result.usage;
  const ttft = done.map((t) => [t.updated_ms, u(t).time_to_first_token_ms]);
  const tps = done.filter((t) => u(t).total_time_ms > u(t).time_to_first_token_ms)
    .map((t) => [t.updated_ms, u(t).completion_tokens / ((u(t).total_time_ms - u(t).time_to_first_token_ms) / 1000)]);
  const queued = done.map((t) => [t.updated_ms, u(t).queue_time_ms]);
  const warnings = (ready.warnings || []).map((w) => `<p class="warning">${badge("warning", "warn")} ${esc(w)}</p>`).join("");
  body.innerHTML = `<p>This gateway: ${checks} &nbsp; Leading cluster manager: <strong>${esc(cluster.leader || "none")}</strong></p>${warnings}
    <div class="charts">${chart("Time to first token", ttft, "ms")}${chart("Tokens per second", tps, "tok/s")}${chart("Time queued", queued, "ms")}</div>
    ${cacheRates(cluster.nodes)}
    <div class="cards">${nodes || "<p>No live node.</p>"}</div>`;
}

async function renderModels(body) {
  if (!$("#models-table", body)) {
    body.innerHTML = `<form id="pull-form" class="row"><div><label for="pull-model">Pull from the hub</label><input id="pull-model" required placeholder="org/model"></div>
      <div><label for="pull-revision">Revision</label><input id="pull-revision" placeholder="main"></div><div><button type="submit">Pull</button></div></form>
      <div id="pull-progress" hidden><div class="bar"><span></span></div><p class="hint" id="pull-text"></p></div>
      <form id="search-form" class="row"><div><label for="search-q">Search the hub</label><input id="search-q" required></div><div><button type="submit" class="secondary">Search</button></div></form>
      <div id="search-results"></div>
      <h2>Registry</h2><div class="table-wrap"><table id="models-table"><thead><tr><th>model</th><th>source</th><th>revision</th><th>files</th><th>size</th><th>context</th><th>nodes</th><th></th></tr></thead><tbody></tbody></table></div>`;
    $("#pull-form", body).addEventListener("submit", (e) => { e.preventDefault(); pull($("#pull-model").value.trim(), $("#pull-revision").value.trim()); });
    $("#search-form", body).addEventListener("submit", async (e) => {
      e.preventDefault();
      const hits = await json(`/api/v1/models/search?q=${encodeURIComponent($("#search-q").value)}&limit=10`);
      $("#search-results").innerHTML = `<div class="table-wrap"><table><thead><tr><th>model</th><th>downloads</th><th>likes</th><th></th></tr></thead><tbody>${hits.data.map((h) =>
        `<tr><td>${esc(h.id)}</td><td>${h.downloads ?? "-"}</td><td>${h.likes ?? "-"}</td><td><button type="button" class="secondary" data-pull="${esc(h.id)}">Pull</button></td></tr>`).join("")}</tbody></table></div>`;
    });
    body.addEventListener("click", async (e) => {
      const b = e.target.closest("button[data-action], button[data-pull]");
      if (!b) return;
      b.disabled = true;
      try {
        if (b.dataset.pull) await pull(b.dataset.pull, "");
        else if (b.dataset.action === "load") await json("/api/v1/models/load", { method: "POST", body: { model: b.dataset.model, replicas: 1 } });
        else if (b.dataset.action === "unload") await json("/api/v1/models/unload", { method: "POST", body: { model: b.dataset.model } });
        else if (b.dataset.action === "remove" && confirm(`Remove ${b.dataset.model}?`)) await api(`/api/v1/models/${encodeURIComponent(b.dataset.model)}`, { method: "DELETE" });
      } catch (err) {
        $("#view-error").textContent = err.message;
      } finally {
        b.disabled = false;
      }
    });
  }
  const [models, statuses] = await Promise.all([json("/api/v1/models"), json("/api/v1/models/status")]);
  $("#models-table tbody", body).innerHTML = models.data.map((m) => {
    const size = (m.files || []).reduce((s, f) => s + (f.size || 0), 0);
    const source = m.source.type === "local" ? m.source.path : `hub @ ${m.source.revision}`;
    const states = statuses.data.filter((s) => s.model === m.id).map((s) => `${esc(s.node)}: ${badge(s.state, s.state === "loaded" ? "ok" : s.state === "failed" ? "bad" : "warn")}`).join(" ");
    const act = (a) => `<button type="button" class="secondary" data-action="${a}" data-model="${esc(m.id)}">${a[0].toUpperCase() + a.slice(1)}</button>`;
    return `<tr data-model="${esc(m.id)}"><td>${esc(m.id)}</td><td>${esc(source)}</td><td>${esc((m.revision_sha || "-").slice(0, 12))}</td><td>${(m.files || []).length}</td><td>${mib(size)}</td><td>${m.context_length ?? "-"}</td><td>${states || "-"}</td><td>${act("load")} ${act("unload")} ${act("remove")}</td></tr>`;
  }).join("");
}

// Pulls `model` on a worker node, with the progress bar fed by the pull's events.
async function pull(model, revision) {
  const box = $("#pull-progress");
  const fill = $("#pull-progress .bar > span");
  const text = $("#pull-text");
  box.hidden = false;
  box.dataset.done = "false";
  fill.style.width = "0%";
  text.textContent = `Pulling ${model}…`;
  const controller = new AbortController();
  const events = await api(`/api/v1/models/progress?model=${encodeURIComponent(model)}`, { signal: controller.signal });
  const follow = (async () => {
    try {
      for await (const ev of sse(events)) {
        const p = JSON.parse(ev.data);
        const frac = p.files_total ? (p.files_done + (p.file_size ? p.file_done / p.file_size : 1)) / p.files_total : 0;
        fill.style.width = `${(frac * 100).toFixed(0)}%`;
        text.textContent = `${p.file}: ${(p.file_done / 1e6).toFixed(1)} of ${(p.file_size / 1e6).toFixed(1)} MB, file ${p.files_done + 1} of ${p.files_total}`;
      }
    } catch (_) { /* closed below */ }
  })();
  try {
    const body = { model };
    if (revision) body.revision = revision;
    const record = await json("/api/v1/models/pull", { method: "POST", body });
    fill.style.width = "100%";
    text.textContent = `Pulled ${record.id} at ${(record.revision_sha || "").slice(0, 12)}: 100%`;
    box.dataset.done = "true";
  } catch (err) {
    text.textContent = `Pull failed: ${err.message}`;
  } finally {
    controller.abort();
    await follow;
  }
}

/** The quantizations a deployment may ask for (mistral.rs's in-situ quantization). */
const QUANTIZE = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2K", "Q3K", "Q4K", "Q5K", "Q6K", "Q8K"];

async function renderDeployments(body) {
  if (!$("#deployments-table", body)) {
    body.innerHTML = `<form id="deploy-form" class="row"><div><label for="deploy-source">Source (hub id or folder)</label><input id="deploy-source" required></div>
      <div><label for="deploy-replicas">Replicas</label><input id="deploy-replicas" type="number" min="0" value="1"></div>
      <div><label for="deploy-device">Device</label><select id="deploy-device"><option value="">any</option><option>cpu</option><option>cuda</option><option>metal</option></select></div>
      <div><label for="deploy-quantize">Quantize</label><select id="deploy-quantize"><option value="">none</option>${QUANTIZE.map((q) => `<option>${q}</option>`).join("")}</select></div>
      <div><label for="deploy-context">Context (tokens)</label><input id="deploy-context" type="number" min="1" placeholder="model's, ≤ 8192"></div>
      <div><label for="deploy-min">Autoscale: min replicas</label><input id="deploy-min" type="number" min="0" placeholder="off"></div>
      <div><label for="deploy-max">max replicas</label><input id="deploy-max" type="number" min="1" placeholder="off"></div>
      <div><label for="deploy-target">queue wait p95 target (s)</label><input id="deploy-target" type="number" min="0.001" step="any" value="2"></div>
      <div><button type="submit">Deploy</button></div></form>
      <div class="table-wrap"><table id="deployments-table"><thead><tr><th>model</th><th>wanted</th><th>placed</th><th>serving</th><th>autoscale</th><th>memory (estimate)</th><th>quantize</th><th>constraints</th><th></th></tr></thead><tbody></tbody></table></div>`;
    $("#deploy-form", body).addEventListener("submit", async (e) => {
      e.preventDefault();
      const constraints = $("#deploy-device").value ? { device: $("#deploy-device").value } : {};
      const spec = { source: $("#deploy-source").value.trim() };
      if ($("#deploy-quantize").value) spec.quantize = $("#deploy-quantize").value;
      if ($("#deploy-context").value) spec.context_length = Number($("#deploy-context").value);
      const autoscale = $("#deploy-max").value ? {
        min_replicas: Number($("#deploy-min").value || 1),
        max_replicas: Number($("#deploy-max").value),
        signal: "queue_wait",
        target_ms: Math.round(Number($("#deploy-target").value || 2) * 1000),
      } : undefined;
      await json("/api/v1/deployments", { method: "POST", body: { spec, replicas: Number($("#deploy-replicas").value), constraints, autoscale } })
        .catch((err) => { $("#view-error").textContent = err.message; });
      renderDeployments(body);
    });
    body.addEventListener("click", async (e) => {
      const b = e.target.closest("button[data-scale], button[data-undeploy]");
      if (!b) return;
      b.disabled = true;
      const d = state.deployments.find((x) => x.deployment.model === (b.dataset.scale || b.dataset.undeploy));
      try {
        if (b.dataset.undeploy) await api(`/api/v1/deployments/${encodeURIComponent(d.deployment.model)}`, { method: "DELETE" });
        else {
          const dep = d.deployment;
          const replicas = Math.max(0, dep.replicas + Number(b.dataset.by));
          await json("/api/v1/deployments", { method: "POST", body: { model: dep.model, spec: dep.spec, replicas, constraints: dep.constraints, memory: dep.memory, autoscale: dep.autoscale } });
        }
      } catch (err) {
        $("#view-error").textContent = err.message;
      }
      renderDeployments(body);
    });
  }
  const list = await json("/api/v1/deployments");
  state.deployments = list.data;
  $("#deployments-table tbody", body).innerHTML = list.data.map((d) => {
    const dep = d.deployment;
    const c = dep.constraints || {};
    const constraints = [c.device && `device ${c.device}`, c.min_memory && `≥ ${mib(c.min_memory)}`].filter(Boolean).join(", ") || "-";
    const places = (d.replicas || []).map((r) => r.gpus.length ? `${r.node}:${r.gpus.map((g) => `gpu${g}`).join("+")}` : r.node);
    const e = d.estimate;
    const memory = dep.memory ? `${mib(dep.memory)} (set)` : e
      ? `${mib(e.total)} CPU / ${mib(e.gpu_total)} GPU — weights ${mib(e.weights)}, KV ${mib(e.kv_cache)} (${e.context_length} tokens × ${e.sequences})`
      : "-";
    const why = d.unplaced ? `<tr class="note" data-unplaced="${esc(dep.model)}"><td colspan="9">${esc(d.unplaced)}</td></tr>` : "";
    const a = dep.autoscale;
    const bounds = a ? `${a.min_replicas}–${a.max_replicas}, ${a.signal.replace("_", " ")} < ${a.target_ms / 1000} s` : "-";
    const last = (dep.scaling || []).at(-1);
    const scaled = last ? `<tr class="note" data-scaled="${esc(dep.model)}"><td colspan="9">${last.from} → ${last.to} at ${new Date(last.at_ms).toLocaleTimeString()}: ${esc(last.reason)}</td></tr>` : "";
    return `<tr data-model="${esc(dep.model)}"><td>${esc(dep.model)}</td><td>${dep.replicas}</td><td>${esc(places.join(", ") || "-")}</td><td>${esc(d.serving.join(", ") || "-")}</td><td class="autoscale">${esc(bounds)}</td><td class="estimate">${esc(memory)}</td><td>${esc(dep.spec.quantize || "-")}</td><td>${esc(constraints)}</td>
      <td><button type="button" class="secondary" data-scale="${esc(dep.model)}" data-by="1" aria-label="one more replica">+1</button> <button type="button" class="secondary" data-scale="${esc(dep.model)}" data-by="-1" aria-label="one replica less">−1</button> <button type="button" class="secondary" data-undeploy="${esc(dep.model)}">Remove</button></td></tr>${why}${scaled}`;
  }).join("") || `<tr><td colspan="9">No deployment.</td></tr>`;
}

async function renderTasks(body) {
  if (!$("#tasks-table", body)) {
    body.innerHTML = `<div id="queues"></div><h2>Recent tasks</h2><div class="table-wrap"><table id="tasks-table"><thead><tr><th>task</th><th>model</th><th>status</th><th>priority</th><th>attempts</th><th>worker</th><th>queued</th><th>first token</th><th>total</th><th>age</th><th></th></tr></thead><tbody></tbody></table></div>
      <h2>Task</h2><p class="hint">Pick a task to follow its events as they arrive.</p><div id="task-detail" class="events"></div>`;
    body.addEventListener("click", async (e) => {
      const cancel = e.target.closest("button[data-cancel]");
      const open = e.target.closest("a[data-task]");
      if (cancel) {
        cancel.disabled = true;
        await api(`/v1/tasks/${encodeURIComponent(cancel.dataset.cancel)}`, { method: "DELETE" }).catch((err) => { $("#view-error").textContent = err.message; });
        renderTasks(body);
      } else if (open) {
        e.preventDefault();
        followTask(open.dataset.task, $("#task-detail", body));
      }
    });
  }
  if (state.admin) {
    const queues = await json("/api/v1/queues");
    $("#queues", body).innerHTML = `<h2>Queues</h2><div class="table-wrap"><table id="queues-table"><thead><tr><th>model</th><th>class</th><th>waiting</th><th>running</th><th>oldest</th></tr></thead><tbody>${queues.data.map((q) =>
      `<tr><td>${esc(q.model)}</td><td>${esc(q.priority)}</td><td>${q.waiting}</td><td>${q.running}</td><td>${q.oldest_age_secs ? q.oldest_age_secs.toFixed(1) + " s" : "-"}</td></tr>`).join("")}</tbody></table></div>`;
    const lanes = queues.data.flatMap((q) => (q.tenants || []).map((t) => ({ ...t, model: q.model, priority: q.priority })));
    if (lanes.length) {
      $("#queues", body).insertAdjacentHTML("beforeend", `<h2>Tenants</h2><div class="table-wrap"><table id="tenants-table"><thead><tr><th>model</th><th>class</th><th>tenant</th><th>weight</th><th>waiting</th><th>running</th><th>oldest</th><th>tokens served</th></tr></thead><tbody>${lanes.map((t) =>
        `<tr><td>${esc(t.model)}</td><td>${esc(t.priority)}</td><td>${t.tenant ? esc(t.tenant) : "(before tenants)"}</td><td>${t.weight}</td><td>${t.waiting}</td><td>${t.running}</td><td>${t.oldest_age_secs ? t.oldest_age_secs.toFixed(1) + " s" : "-"}</td><td>${t.tokens_served}</td></tr>`).join("")}</tbody></table></div>`);
    }
  }
  if (!state.admin) {
    const usage = await json("/v1/usage");
    const days = [...new Set(usage.data.map((r) => r.day))].sort();
    const perDay = days.map((d) => [Date.parse(d), usage.data.filter((r) => r.day === d).reduce((s, r) => s + r.prompt_tokens + r.completion_tokens, 0)]);
    const rows = usage.data.map((u) => `<tr><td>${esc(u.model)}</td><td>${esc(u.day)}</td><td>${u.requests}</td><td>${u.prompt_tokens}</td><td>${u.completion_tokens}</td></tr>`).join("");
    $("#queues", body).innerHTML = `<h2>Your usage</h2><div class="charts">${chart("Tokens per day", perDay, "tokens")}</div>
      <div class="table-wrap"><table id="own-usage"><thead><tr><th>model</th><th>day</th><th>requests</th><th>prompt tokens</th><th>completion tokens</th></tr></thead><tbody>${rows}</tbody></table></div>`;
  }
  const page = await json("/v1/tasks?limit=50");
  const cls = { completed: "ok", failed: "bad", cancelled: "bad", running: "warn", queued: "warn" };
  $("#tasks-table tbody", body).innerHTML = page.data.map((t) => `<tr data-task="${esc(t.id)}" data-status="${esc(t.status)}">
    <td><a href="#/tasks" data-task="${esc(t.id)}">${esc(t.id)}</a></td><td>${esc(t.model)}</td><td>${badge(t.status, cls[t.status] || "")}</td><td>${esc(t.priority)}</td>
    <td>${t.attempts}</td><td>${esc(t.worker || "-")}</td>${timings(t)}<td>${ago(t.created_ms)}</td>
    <td>${t.status === "queued" || t.status === "running" ? `<button type="button" class="secondary" data-cancel="${esc(t.id)}">Cancel</button>` : ""}</td></tr>`).join("");
}

// A task's timings from its result's usage: queued, to the first token, in all (ms).
function timings(t) {
  const u = t.result && t.result.usage;
  const ms = (v) => (v == null ? "-" : `${v.toFixed(0)} ms`);
  return `<td>${ms(u && u.queue_time_ms)}</td><td>${ms(u && u.time_to_first_token_ms)}</td><td>${ms(u && u.total_time_ms)}</td>`;
}

// A task's events as server-sent events, read with fetch (EventSource cannot send the key).
async function followTask(id, out) {
  out.textContent = `${id}\n`;
  const resp = await api(`/v1/tasks/${encodeURIComponent(id)}/events`);
  for await (const ev of sse(resp)) {
    if (!out.isConnected) return;
    out.textContent += `${ev.event || "message"}: ${ev.data}\n`;
    out.scrollTop = out.scrollHeight;
  }
}

// Server-sent events from a fetch response: {event, data} per event.
async function* sse(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true });
    let at;
    while ((at = buf.indexOf("\n\n")) >= 0) {
      const raw = buf.slice(0, at);
      buf = buf.slice(at + 2);
      const ev = { event: null, data: "" };
      for (const line of raw.split("\n")) {
        if (line.startsWith("event:")) ev.event = line.slice(6).trim();
        else if (line.startsWith("data:")) ev.data += line.slice(5).trimStart();
      }
      if (ev.data || ev.event) yield ev;
    }
  }
}

async function renderKeys(body) {
  if (!$("#keys-table", body)) {
    body.innerHTML = `<form id="key-form" class="row"><div><label for="key-name">New key</label><input id="key-name" required placeholder="name"></div>
      <div><label for="key-scope">Scope</label><select id="key-scope"><option>inference</option><option>admin</option></select></div>
      <div><label for="key-tenant">Tenant</label><input id="key-tenant" placeholder="its own"></div>
      <div><label for="key-weight">Weight</label><input id="key-weight" type="number" min="1" max="1000" placeholder="1"></div>
      <div><button type="submit">Create</button></div></form><p id="key-secret" class="hint"></p>
      <div class="table-wrap"><table id="keys-table"><thead><tr><th>id</th><th>name</th><th>scope</th><th>models</th><th>tenant</th><th>weight</th><th>created</th><th>state</th><th></th></tr></thead><tbody></tbody></table></div>
      <h2>Usage</h2><label for="usage-of">Of</label><select id="usage-of"><option value="">every key and model</option></select>
      <div id="usage-charts" class="charts"></div><div class="table-wrap"><table id="usage-table"><thead><tr><th>key</th><th>model</th><th>day</th><th>requests</th><th>prompt tokens</th><th>completion tokens</th></tr></thead><tbody></tbody></table></div>`;
    $("#key-form", body).addEventListener("submit", async (e) => {
      e.preventDefault();
      const request = { name: $("#key-name").value, scope: $("#key-scope").value };
      if ($("#key-tenant").value) request.tenant = $("#key-tenant").value;
      if ($("#key-weight").value) request.weight = Number($("#key-weight").value);
      const created = await json("/api/v1/keys", { method: "POST", body: request });
      $("#key-secret").textContent = `Key ${created.id} (shown once): ${created.key}`;
      renderKeys(body);
    });
    body.addEventListener("click", async (e) => {
      const revoke = e.target.closest("button[data-revoke]");
      if (!revoke) return;
      await api(`/api/v1/keys/${encodeURIComponent(revoke.dataset.revoke)}`, { method: "DELETE" });
      renderKeys(body);
    });
  }
  const [keys, usage] = await Promise.all([json("/api/v1/keys"), json("/api/v1/usage")]);
  $("#keys-table tbody", body).innerHTML = keys.data.map((k) => `<tr><td>${esc(k.id)}</td><td>${esc(k.name)}</td><td>${esc(k.scope)}</td><td>${esc((k.models || []).join(", ") || "all")}</td>
    <td>${esc(k.tenant)}</td><td>${esc(k.weight)}</td><td>${ago(k.created_ms)}</td><td>${k.revoked_ms ? badge("revoked", "bad") : badge("active", "ok")}</td>
    <td>${k.revoked_ms ? "" : `<button type="button" class="secondary" data-revoke="${esc(k.id)}">Revoke</button>`}</td></tr>`).join("");
  // Tokens and requests per day: every key and model together, or the key or model chosen.
  const select = $("#usage-of", body);
  const chosen = select.value;
  const choices = [...new Set(usage.data.map((r) => `key:${r.key}`)), ...new Set(usage.data.map((r) => `model:${r.model}`))];
  select.innerHTML = `<option value="">every key and model</option>` + choices.map((c) => `<option value="${esc(c)}">${esc(c.replace(":", " "))}</option>`).join("");
  select.value = choices.includes(chosen) ? chosen : "";
  if (!select.dataset.bound) {
    select.dataset.bound = "true";
    select.addEventListener("change", () => renderKeys(body));
  }
  const rowsOf = usage.data.filter((r) => !select.value || select.value === `key:${r.key}` || select.value === `model:${r.model}`);
  const days = [...new Set(rowsOf.map((r) => r.day))].sort();
  const perDay = days.map((d) => [Date.parse(d), rowsOf.filter((r) => r.day === d).reduce((s, r) => s + r.prompt_tokens + r.completion_tokens, 0)]);
  const requests = days.map((d) => [Date.parse(d), rowsOf.filter((r) => r.day === d).reduce((s, r) => s + r.requests, 0)]);
  $("#usage-charts", body).innerHTML = chart("Tokens per day", perDay, "tokens") + chart("Requests per day", requests, "requests");
  $("#usage-table tbody", body).innerHTML = usage.data.map((u) => `<tr><td>${esc(u.key)}</td><td>${esc(u.model)}</td><td>${esc(u.day)}</td><td>${u.requests}</td><td>${u.prompt_tokens}</td><td>${u.completion_tokens}</td></tr>`).join("");
}

async function renderPlayground(body) {
  const models = await json("/v1/models");
  body.innerHTML = `<form id="chat-form">
    <div class="row"><div><label for="chat-model">Model</label><select id="chat-model">${models.data.map((m) => `<option>${esc(m.id)}</option>`).join("")}</select></div>
    <div><label for="chat-temperature">Temperature</label><input id="chat-temperature" type="number" min="0" max="2" step="0.1" placeholder="greedy"></div>
    <div><label for="chat-max">Max tokens</label><input id="chat-max" type="number" min="1" value="128"></div></div>
    <label for="chat-system">System prompt</label><textarea id="chat-system" rows="2"></textarea>
    <label for="chat-input">Message</label><textarea id="chat-input" rows="3" required></textarea>
    <p><button type="submit" id="chat-send">Send</button> <span class="hint">Ctrl+Enter sends.</span></p></form>
    <h2>Answer</h2><div id="chat-answer" class="answer"></div><p id="chat-stats" class="hint"></p>`;
  const input = $("#chat-input");
  input.addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("#chat-form").requestSubmit(); });
  $("#chat-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const messages = [];
    if ($("#chat-system").value.trim()) messages.push({ role: "system", content: $("#chat-system").value });
    messages.push({ role: "user", content: input.value });
    const req = { model: $("#chat-model").value, messages, stream: true, stream_options: { include_usage: true }, max_tokens: Number($("#chat-max").value) || 128 };
    if ($("#chat-temperature").value !== "") req.temperature = Number($("#chat-temperature").value);
    const answer = $("#chat-answer");
    const stats = $("#chat-stats");
    answer.textContent = "";
    stats.textContent = "";
    $("#chat-send").disabled = true;
    const started = performance.now();
    let first = null;
    try {
      const resp = await api("/v1/chat/completions", { method: "POST", body: req });
      for await (const ev of sse(resp)) {
        if (ev.data === "[DONE]") break;
        const chunk = JSON.parse(ev.data);
        if (chunk.error) throw new Error(chunk.error.message);
        for (const c of chunk.choices || []) {
          if (c.delta && c.delta.content) {
            if (first === null) first = performance.now() - started;
            answer.textContent += c.delta.content;
          }
        }
        if (chunk.usage && !(chunk.choices || []).length) {
          const u = chunk.usage;
          stats.textContent = `${u.prompt_tokens} prompt + ${u.completion_tokens} completion tokens · first token after ${(first ?? 0).toFixed(0)} ms here (${u.time_to_first_token_ms.toFixed(0)} ms on the worker) · queued ${u.queue_time_ms.toFixed(0)} ms`;
          answer.dataset.done = "true";
        }
      }
    } catch (err) {
      $("#view-error").textContent = err.message;
    } finally {
      $("#chat-send").disabled = false;
    }
  });
}

// ---- start ------------------------------------------------------------------------

window.addEventListener("hashchange", () => { if (state.key && !$("#nav").hidden) route(); });
document.addEventListener("DOMContentLoaded", () => {
  $("#signout").addEventListener("click", signOut);
  $("#signin-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    $("#signin-error").textContent = "";
    try {
      await signIn($("#key").value.trim());
    } catch (err) {
      state.key = null;
      $("#signin-error").textContent = err.status === 401 ? "That key is not valid." : err.message;
    }
  });
  if (state.key) signIn(state.key).catch(() => { sessionStorage.removeItem(KEY); state.key = null; });
  else $("#key").focus();
});
