// gainloop watch: follows /api/state (one long-polling request at a time) and draws the page in SVG.
"use strict";

const NS = "http://www.w3.org/2000/svg";
// When each finished trial was first shown (epoch seconds): benchmarks/watch_latency.py reads it.
window.gainloopShown = {};
let version = -1;
let posteriorVersion = -1;

function $(id) { return document.getElementById(id); }

function el(tag, attrs, parent, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  if (parent) parent.appendChild(node);
  return node;
}

function fmt(v, digits) {
  if (v === null || v === undefined || !isFinite(v)) return "";
  return Number(v).toFixed(digits);
}

function sig(v) {
  if (v === null || v === undefined || !isFinite(v)) return "";
  return Number(v).toPrecision(3);
}

function withErr(v, e, digits) {
  if (v === null || v === undefined) return "";
  return e === null || e === undefined ? fmt(v, digits) : fmt(v, digits) + " ± " + fmt(e, digits);
}

function logTicks(lo, hi) {
  const out = [];
  for (let k = Math.floor(Math.log10(lo)); k <= Math.ceil(Math.log10(hi)); k++) {
    for (const m of [1, 2, 5]) {
      const v = m * Math.pow(10, k);
      if (v >= lo && v <= hi) out.push(v);
    }
  }
  return out;
}

function linTicks(lo, hi) {
  const span = hi - lo || 1;
  const step0 = Math.pow(10, Math.floor(Math.log10(span / 5)));
  const step = [1, 2, 5, 10].map((m) => m * step0).find((s) => span / s <= 6);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-12; v += step) out.push(Number(v.toPrecision(6)));
  return out;
}

function tickText(v) {
  if (v >= 1e5 || (v > 0 && v < 1e-2)) return v.toExponential(0).replace("e+", "e");
  return String(Number(v.toPrecision(3)));
}

// A plot frame: scales, axes, labels. kind: "lin" or "log" per axis.
function frame(svg, xr, yr, xkind, ykind, xlabel, ylabel) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const box = { x: 70, y: 12, w: 510, h: 270 };
  const f = (kind, lo, hi, a, b) => (v) => {
    const t = kind === "log" ? (Math.log10(v) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo)) : (v - lo) / (hi - lo);
    return a + t * (b - a);
  };
  const sx = f(xkind, xr[0], xr[1], box.x, box.x + box.w);
  const sy = f(ykind, yr[0], yr[1], box.y + box.h, box.y);
  el("rect", { x: box.x, y: box.y, width: box.w, height: box.h, fill: "none", stroke: "#999" }, svg);
  const xt = xkind === "log" ? logTicks(xr[0], xr[1]) : linTicks(xr[0], xr[1]);
  const yt = ykind === "log" ? logTicks(yr[0], yr[1]) : linTicks(yr[0], yr[1]);
  for (const v of xt) {
    const x = sx(v);
    el("line", { x1: x, x2: x, y1: box.y, y2: box.y + box.h, stroke: "#eee" }, svg);
    el("text", { x: x, y: box.y + box.h + 14, "text-anchor": "middle" }, svg, tickText(v));
  }
  for (const v of yt) {
    const y = sy(v);
    el("line", { x1: box.x, x2: box.x + box.w, y1: y, y2: y, stroke: "#eee" }, svg);
    el("text", { x: box.x - 5, y: y + 4, "text-anchor": "end" }, svg, tickText(v));
  }
  el("text", { x: box.x + box.w / 2, y: box.y + box.h + 32, "text-anchor": "middle" }, svg, xlabel);
  el("text", { x: 14, y: box.y + box.h / 2, transform: `rotate(-90 14 ${box.y + box.h / 2})`, "text-anchor": "middle" }, svg, ylabel);
  return { sx, sy, box };
}

function message(svg, text) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  el("text", { x: 300, y: 165, "text-anchor": "middle", class: "empty" }, svg, text);
}

function drawBest(s) {
  const svg = $("best-plot");
  const timed = s.trials.filter((t) => t.lab_h !== null && t.status !== "measuring");
  const done = timed.filter((t) => t.threshold_uJ_cm2 !== null);
  if (!done.length) {
    message(svg, "No trial has a measured threshold yet.");
    return;
  }
  const xmax = Math.max(...timed.map((t) => t.lab_h), 1e-3) * 1.06;
  const lows = done.map((t) => t.threshold_uJ_cm2 - (t.threshold_err_uJ_cm2 || 0)).filter((v) => v > 0);
  const highs = done.map((t) => t.threshold_uJ_cm2 + (t.threshold_err_uJ_cm2 || 0));
  const target = s.budget.target_threshold_uJ_cm2;
  if (target) { lows.push(target); highs.push(target); }
  const yr = [Math.min(...lows) * 0.85, Math.max(...highs) * 1.15];
  const p = frame(svg, [0, xmax], yr, "lin", "log", "lab time used (h)", "ASE threshold (uJ/cm^2)");
  const clampY = (v) => p.sy(Math.min(Math.max(v, yr[0]), yr[1]));
  for (const t of done) {
    const x = p.sx(t.lab_h);
    const e = t.threshold_err_uJ_cm2 || 0;
    el("line", { x1: x, x2: x, y1: clampY(t.threshold_uJ_cm2 - e), y2: clampY(t.threshold_uJ_cm2 + e), stroke: "#999", class: "error-bar" }, svg);
    const c = el("circle", { cx: x, cy: p.sy(t.threshold_uJ_cm2), r: 4, fill: "#999", class: "trial-point", "data-trial": t.trial_index }, svg);
    el("title", {}, c, `trial ${t.trial_index}: ${withErr(t.threshold_uJ_cm2, t.threshold_err_uJ_cm2, 1)} uJ/cm^2 at ${fmt(t.lab_h, 3)} lab h`);
  }
  let d = "";
  let last = null;
  for (const t of timed) {
    if (t.best_so_far_uJ_cm2 === null) continue;
    const x = p.sx(t.lab_h);
    const y = p.sy(t.best_so_far_uJ_cm2);
    d += last === null ? `M${x},${y}` : `H${x}V${y}`;
    last = t;
  }
  if (last !== null) {
    d += `H${p.sx(xmax)}`;
    el("path", { d: d, fill: "none", stroke: "#3b75af", "stroke-width": 2.5, class: "best-line" }, svg);
    const e = last.best_so_far_err_uJ_cm2 || 0;
    const x = p.sx(last.lab_h);
    el("line", { x1: x, x2: x, y1: clampY(last.best_so_far_uJ_cm2 - e), y2: clampY(last.best_so_far_uJ_cm2 + e), stroke: "#3b75af", "stroke-width": 2 }, svg);
    el("text", { x: p.box.x + p.box.w - 4, y: p.box.y + 14, "text-anchor": "end", class: "best-label" }, svg,
      `best ${withErr(last.best_so_far_uJ_cm2, last.best_so_far_err_uJ_cm2, 1)} uJ/cm^2`);
  }
  if (target) {
    el("line", { x1: p.box.x, x2: p.box.x + p.box.w, y1: p.sy(target), y2: p.sy(target), stroke: "#2a7d2a", "stroke-dasharray": "6 4" }, svg);
  }
  for (const t of timed.filter((t) => ["failed", "infeasible"].includes(t.status))) {
    const m = el("text", { x: p.sx(t.lab_h), y: p.box.y + p.box.h - 4, "text-anchor": "middle", fill: "#c33", class: "failed-mark", "data-trial": t.trial_index }, svg, "✕");
    el("title", {}, m, `trial ${t.trial_index} ${t.status}: ${t.reason}`);
  }
}

function drawScan(s) {
  const svg = $("scan-plot");
  const sc = s.scan;
  if (!sc || !sc.fluence_uJ_cm2.length) {
    message(svg, "No fluence scan finished yet.");
    $("scan-caption").textContent = "";
    return;
  }
  const xs = sc.fluence_uJ_cm2, ys = sc.counts_per_s;
  const xr = [Math.min(...xs) / 1.3, Math.max(...xs) * 1.3];
  const yr = [Math.min(...ys) / 2, Math.max(...ys) * 2];
  const p = frame(svg, xr, yr, "log", "log", "measured pump fluence (uJ/cm^2)", "output (counts/s)");
  if (sc.threshold_uJ_cm2 !== null) {
    const t = sc.threshold_uJ_cm2, e = sc.threshold_err_uJ_cm2 || 0;
    const a = p.sx(Math.max(t - e, xr[0])), b = p.sx(Math.min(t + e, xr[1]));
    el("rect", { x: a, y: p.box.y, width: Math.max(b - a, 1), height: p.box.h, fill: "#f0a040", opacity: 0.25, class: "threshold-band" }, svg);
    el("line", { x1: p.sx(t), x2: p.sx(t), y1: p.box.y, y2: p.box.y + p.box.h, stroke: "#e07b00", "stroke-width": 1.5, class: "threshold-line" }, svg);
  }
  for (let i = 0; i < xs.length; i++) {
    el("circle", { cx: p.sx(xs[i]), cy: p.sy(ys[i]), r: 3, fill: "#3b75af", class: "scan-point" }, svg);
  }
  for (const seg of sc.kink) {
    const clip = (v, r) => Math.min(Math.max(v, r[0]), r[1]);
    el("line", {
      x1: p.sx(clip(seg[0][0], xr)), y1: p.sy(clip(seg[0][1], yr)), x2: p.sx(clip(seg[1][0], xr)), y2: p.sy(clip(seg[1][1], yr)),
      stroke: "#c0392b", "stroke-width": 1.8, class: "kink-line",
    }, svg);
  }
  const thr = sc.threshold_uJ_cm2 !== null ? `threshold ${withErr(sc.threshold_uJ_cm2, sc.threshold_err_uJ_cm2, 1)} uJ/cm^2` : `${sc.status}: ${sc.reason}`;
  el("text", { x: p.box.x + 6, y: p.box.y + 14, class: "scan-title" }, svg, `trial ${sc.trial_index}, stripe ${fmt(sc.stripe_length_um, 0)} um: ${thr}`);
  $("scan-caption").textContent =
    `Trial ${sc.trial_index} (run ${sc.run_uid.slice(0, 8)}): ${xs.length} unsaturated reads` +
    (sc.saturated_left_out ? ` (${sc.saturated_left_out} saturated left out)` : "") +
    "; red: the kink fit (the plan's slopes below and above the break), orange: the threshold with its error.";
}

function row(tbody, cells, cls) {
  const tr = document.createElement("tr");
  if (cls) tr.className = cls;
  for (const c of cells) {
    const td = document.createElement("td");
    td.textContent = c;
    tr.appendChild(td);
  }
  tbody.appendChild(tr);
  return tr;
}

function drawTables(s) {
  const tbody = $("trials-table").querySelector("tbody");
  tbody.textContent = "";
  for (const t of s.trials) {
    const doping = t.measured_doping !== null ? `${fmt(t.measured_doping, 2)} measured (${fmt(t.doping, 2)} asked)` : fmt(t.doping, 2);
    const tr = row(tbody, [
      t.trial_index, t.status, fmt(t.stripe_length_um, 0), doping, t.sample_id + (t.new_film ? " (new)" : ""),
      withErr(t.threshold_uJ_cm2, t.threshold_err_uJ_cm2, 1), fmt(t.lab_h, 3), t.reason, (t.run_uid || "").slice(0, 8),
    ], `trial ${t.status}`);
    tr.dataset.trial = t.trial_index;
  }
  const box = $("failures");
  box.textContent = "";
  if (!s.failures.length) {
    const p = document.createElement("p");
    p.className = "caption";
    p.textContent = "No failed, infeasible or abandoned trial.";
    box.appendChild(p);
    return;
  }
  const table = document.createElement("table");
  const head = document.createElement("tbody");
  row(head, ["trial", "status", "reason"]).querySelectorAll("td").forEach((td) => { td.style.fontWeight = "bold"; });
  for (const f of s.failures) row(head, [f.trial_index, f.status, f.reason], `failure ${f.status}`);
  table.appendChild(head);
  box.appendChild(table);
}

function drawSummary(s) {
  const b = s.budget;
  const used = b.lab_h_used;
  $("lab-text").textContent = b.lab_h_budget
    ? `Lab time: ${fmt(used, 2)} h used of ${fmt(b.lab_h_budget, 1)} h (${s.lab_clock || "lab clock"})`
    : `Lab time: ${fmt(used, 2)} h used (no lab-time budget)`;
  $("lab-bar").style.width = b.lab_h_budget ? `${Math.min(100, (100 * used) / b.lab_h_budget).toFixed(1)}%` : "0%";
  const dl = $("summary");
  dl.textContent = "";
  const best = s.best;
  const items = [
    ["trials", b.max_trials ? `${b.trials} of ${b.max_trials}` : `${b.trials}`],
    ["films made", s.films_made.length ? `${s.films_made.length}: ` + s.films_made.map((f) => `${f.id} (${fmt(f.doping, 2)} asked)`).join(", ") : "none"],
    ["failures", `${s.failures.length}`],
    ["best threshold", best ? `${withErr(best.threshold_uJ_cm2, best.threshold_err_uJ_cm2, 1)} uJ/cm^2 at ${fmt(best.stripe_length_um, 0)} um, doping ${fmt(best.measured_doping !== null ? best.measured_doping : best.doping, 2)} electrons/dot (trial ${best.trial_index})` : "none yet"],
    ["target", b.target_threshold_uJ_cm2 ? `${fmt(b.target_threshold_uJ_cm2, 1)} uJ/cm^2` : "none"],
    ["strategy", `${s.strategy} (seed ${s.seed}), ${s.material || ""}`],
    ["devices", s.devices],
  ];
  for (const [k, v] of items) {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v;
    dd.id = "summary-" + k.replace(/ /g, "-");
    dl.appendChild(dt);
    dl.appendChild(dd);
  }
}

function drawNext(s) {
  const box = $("next-proposal");
  const n = s.next;
  if (!n) {
    box.textContent = s.state.running ? "Next proposal: the optimiser is choosing it." : "The campaign has ended: no next proposal.";
    return;
  }
  const where = n.fluence_uJ_cm2 !== null ? `fluence ${fmt(n.fluence_uJ_cm2, 0)} uJ/cm^2, ` : "";
  const pred = n.predicted_threshold_uJ_cm2 !== null
    ? ` The model predicts ${withErr(n.predicted_threshold_uJ_cm2, n.predicted_threshold_err_uJ_cm2, 1)} uJ/cm^2 there.` : "";
  box.textContent = `Next proposal: trial ${n.trial_index} (${n.measuring ? "being measured now" : "waiting"}) at ${where}` +
    `stripe length ${fmt(n.stripe_length_um, 0)} um, doping ${fmt(n.doping, 2)} electrons/dot; chosen as ${n.why}; ` +
    `${n.film.why}.${pred}`;
}

function drawPosterior(s) {
  const post = s.posterior;
  $("posterior-caption").textContent = post.available ? post.caption + ` (fitted on ${post.n_thresholds} thresholds)` : post.caption;
  const img = $("posterior-img");
  if (post.available && post.version !== posteriorVersion) {
    posteriorVersion = post.version;
    img.src = `/api/posterior.png?v=${post.version}`;
    img.dataset.version = post.version;
    img.dataset.next = post.next === null ? "" : post.next;
  }
  img.hidden = !post.available;
  document.body.dataset.posteriorNext = post.next === null || post.next === undefined ? "" : String(post.next);
  document.body.dataset.posteriorVersion = post.version;
}

function drawControls(s) {
  const c = s.control;
  const buttons = { pause: $("btn-pause"), resume: $("btn-resume"), stop: $("btn-stop") };
  const actions = c && c.available ? c.actions : [];
  for (const [name, b] of Object.entries(buttons)) b.hidden = !actions.includes(name);
  let text;
  if (!c) {
    text = s.state.runs_in === "queueserver" && s.state.running
      ? "No queueserver control address: start the watch with --qserver tcp://HOST:PORT."
      : s.state.running ? "This campaign runs in a terminal (gainloop campaign run): no controls here; Ctrl+C there."
        : "This campaign has ended: nothing to control.";
  } else if (!c.available) {
    text = c.why;
  } else {
    text = `Queueserver at ${c.address}: ${c.manager_state}` +
      (c.manager_state === "paused" ? " (the campaign waits at its RunEngine's checkpoint: Resume goes on)." : ".");
  }
  $("control-text").textContent = text;
  document.body.dataset.managerState = (c && c.manager_state) || "";
}

function render(s) {
  if (s.loading) {
    $("campaign-uid").textContent = s.campaign_uid;
    $("state-text").textContent = s.error ? "" : "reading the campaign from the catalog…";
    const err = $("error");
    err.hidden = !s.error;
    err.textContent = s.error || "";
    return;
  }
  document.title = `gainloop watch: ${s.campaign_uid.slice(0, 8)}`;
  $("campaign-uid").textContent = s.campaign_uid;
  const badge = $("state-badge");
  badge.className = "badge " + (s.error ? "error" : s.state.running ? "running" : "ended");
  badge.textContent = s.state.running ? "running" : "ended";
  const where = s.state.runs_in === "queueserver" ? "in the queueserver" : "from a terminal";
  $("state-text").textContent = s.state.running
    ? `${where}`
    : `ended ${s.state.exit_status}${s.state.stop_reason ? ": " + s.state.stop_reason : ""}`;
  $("follow-text").textContent = s.follow.subscribed
    ? "live (the catalog's subscription)"
    : `polling the catalog every ${s.follow.poll_s} s`;
  $("updated").textContent = new Date().toLocaleTimeString();
  const err = $("error");
  err.hidden = !s.error;
  err.textContent = s.error || "";
  drawSummary(s);
  drawControls(s);
  drawBest(s);
  drawScan(s);
  drawNext(s);
  drawPosterior(s);
  drawTables(s);
  $("prior-text").textContent = s.prior.available ? "" : s.prior.note;
  const now = Date.now() / 1000;
  let finished = 0;
  for (const t of s.trials) {
    if (t.status === "measuring") continue;
    finished += 1;
    if (!(t.trial_index in window.gainloopShown)) window.gainloopShown[t.trial_index] = now;
  }
  document.body.dataset.version = s.version;
  document.body.dataset.trialsShown = finished;
  document.body.dataset.running = s.state.running ? "1" : "0";
}

async function act(action) {
  $("control-text").textContent = `${action}: sent…`;
  try {
    const r = await fetch(`/api/control/${action}`, { method: "POST", headers: { "X-Gainloop-Watch": "1" }, credentials: "same-origin" });
    const body = await r.json();
    $("control-text").textContent = r.ok ? `${action}: accepted by the queueserver.` : `${action} refused: ${body.error}`;
  } catch (e) {
    $("control-text").textContent = `${action}: no answer from the watch server.`;
  }
}

async function follow() {
  for (;;) {
    try {
      const r = await fetch(`/api/state?after=${version}`, { cache: "no-store", credentials: "same-origin" });
      if (r.status === 401) { window.location.href = "/login"; return; }
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      const s = await r.json();
      render(s);
      version = s.version;
    } catch (e) {
      $("error").hidden = false;
      $("error").textContent = "The watch server does not answer; trying again.";
      await new Promise((ok) => setTimeout(ok, 2000));
    }
  }
}

for (const b of document.querySelectorAll("#control-buttons button")) {
  b.addEventListener("click", () => act(b.dataset.action));
}
follow();
