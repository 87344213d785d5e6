// The posterior explorer: asks this service's API and draws its answers with uPlot (vendored, served locally).
//
// Each change of y sends POST /v1/models/{model}/posterior (q, diagnostics, SIR draws) and
// GET /v1/models/{model}/exact (the exact posterior's components), then redraws the "At y" charts;
// a change of model or objectives also fetches the sweep over y for the "network outputs" charts.
// The state lives in the URL (?model=gmm&objective=both&y=0&n=1000&seed=7): a link reproduces the view.
// window.explorer exposes the state, the charts and the last answers (for the browser tests and the benchmark).
"use strict";

(() => {
  const CONFIG = JSON.parse(document.getElementById("explorer-config").textContent);
  const OBJECTIVES = ["pq", "qp"];
  const COLOURS = { pq: "#1f77b4", qp: "#ff7f0e", exact: "#444444" };
  const BRANCH_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#ff7f0e"];
  const DASH = { pq: [], qp: [7, 4] };
  const SWEEP_POINTS = 201;
  const DENSITY_POINTS = 400;
  const BRANCH_POINTS = 61;
  const HISTOGRAM_BINS = 60;
  const VISIBLE = 1e-3; // branches or components below this probability do not stretch the x range
  const MAX_ABS_Y = 1e9;

  const $ = (id) => document.getElementById(id);
  const els = {
    model: $("model"), slider: $("y-slider"), input: $("y-input"), n: $("num-samples"), seed: $("seed"),
    status: $("status"), yShown: $("y-shown"), rangeNote: $("range-note"), table: $("diagnostics"),
    branchesFigure: $("branches-figure"), sweepProbabilityFigure: $("sweep-probability-figure"),
    objective: { pq: $("objective-pq"), qp: $("objective-qp") },
  };

  const state = { model: null, objectives: ["pq", "qp"], y: 0, n: 1000, seed: 7 };
  const explorer = {
    state, charts: {}, models: {}, last: null, sweep: null, draws: 0, timings: [], requests: 0, ready: false,
    setY: (y) => changeY(y, performance.now()),
  };
  window.explorer = explorer;

  // ---------- numbers ----------

  const SQRT_2PI = Math.sqrt(2 * Math.PI);
  function mixtureDensity(xs, parts) {
    const out = new Float64Array(xs.length);
    for (const { probability, mean, std } of parts) {
      if (!(probability > 0)) continue;
      const scale = probability / (std * SQRT_2PI);
      for (let i = 0; i < xs.length; i++) {
        const z = (xs[i] - mean) / std;
        out[i] += scale * Math.exp(-0.5 * z * z);
      }
    }
    return Array.from(out);
  }

  function visible(parts) {
    const top = Math.max(...parts.map((p) => p.probability));
    return parts.filter((p) => p.probability >= VISIBLE || p.probability === top);
  }

  // x values covering every visible branch of q and component of p: a uniform grid, plus points around each
  // peak so that a narrow one keeps its height even when q and p are far apart (y = 1e6).
  function xGrid(parts) {
    const shown = visible(parts);
    const low = Math.min(...shown.map((p) => p.mean - 5 * p.std));
    const high = Math.max(...shown.map((p) => p.mean + 5 * p.std));
    const xs = [];
    for (let i = 0; i < DENSITY_POINTS; i++) xs.push(low + ((high - low) * i) / (DENSITY_POINTS - 1));
    for (const p of shown) {
      for (let i = 0; i < BRANCH_POINTS; i++) xs.push(p.mean - 5 * p.std + (10 * p.std * i) / (BRANCH_POINTS - 1));
    }
    xs.sort((a, b) => a - b);
    const unique = xs.filter((x, i) => i === 0 || x > xs[i - 1]);
    const narrowest = Math.min(...shown.map((p) => p.std));
    return { xs: unique, low, high, far: high - low > 400 * narrowest };
  }

  function histogram(values, low, high, bins) {
    const counts = new Array(bins).fill(0);
    let outside = 0, total = 0;
    const width = (high - low) / bins;
    for (const v of values) {
      if (v === null || !Number.isFinite(v)) continue;
      total++;
      if (v < low || v > high) { outside++; continue; }
      counts[Math.min(bins - 1, Math.floor((v - low) / width))]++;
    }
    const density = counts.map((c) => (total ? c / (total * width) : 0));
    return { density, outside, total, width };
  }

  const fmt = (v, digits = 4) => {
    if (v === null || v === undefined) return "–";
    if (typeof v !== "number") return String(v);
    if (v === 0) return "0";
    const a = Math.abs(v);
    return a >= 1e5 || a < 1e-3 ? v.toExponential(digits - 1) : Number(v.toPrecision(digits)).toString();
  };
  const branchLabel = (latents, sep = ",") => Object.entries(latents).map(([k, v]) => `${k}=${v}`).join(sep) || "x";

  // ---------- URL state ----------

  // what the link asked for and the page could not use (said once, beside the first answer): "y=abc (why)"
  let ignoredFromUrl = [];
  // a text box's or link's number: Number() takes "1e3" whole (parseInt read 1); blank is not a number
  const asNumber = (text) => ((text || "").trim() === "" ? NaN : Number(text));
  // seeds up to 2^53 - 1: JavaScript holds those exactly (a larger one would be sent rounded, or refused above 2^63)
  const SEED_RULE = "a whole number from 0 to 2^53 - 1";
  const validSeed = (v) => Number.isSafeInteger(v) && v >= 0;
  const Y_RULE = "a finite number within ±1e9";
  const validY = (v) => Number.isFinite(v) && Math.abs(v) <= MAX_ABS_Y;
  const N_RULE = "a whole number from 1 to 100000";
  const validN = (v) => Number.isInteger(v) && v >= 1 && v <= 100000;

  function readUrl() {
    const q = new URLSearchParams(location.search);
    const ignored = [];
    // a value the link gives, if ok(value); else the default, and the link's value noted with why
    const take = (name, value, ok, fallback, why) => {
      if (!q.has(name)) return fallback;
      if (ok(value)) return value;
      ignored.push(`${name}=${q.get(name)} (${why})`);
      return fallback;
    };
    const names = Object.keys(explorer.models);
    const firstModel = names.includes("gmm") ? "gmm" : names[0];
    state.model = take("model", q.get("model"), (v) => names.includes(v), firstModel, "not served here");
    const compiled = explorer.models[state.model].objectives;
    const objective = take("objective", q.get("objective"), (v) => v === "both" || compiled.includes(v), "both",
      `${state.model} has ${compiled.join(" and ")}`);
    state.objectives = objective === "both" ? OBJECTIVES.filter((o) => compiled.includes(o)) : [objective];
    if (!state.objectives.length) state.objectives = compiled.slice();
    state.y = take("y", asNumber(q.get("y")), validY, 0, `not ${Y_RULE}`);
    state.n = take("n", asNumber(q.get("n")), validN, 1000, `not ${N_RULE}`);
    state.seed = take("seed", asNumber(q.get("seed")), validSeed, 7, `not ${SEED_RULE}`);
    ignoredFromUrl = ignored;
  }

  function objectiveParam() {
    return state.objectives.length === 2 ? "both" : state.objectives[0];
  }

  function writeUrl() {
    const q = new URLSearchParams({ model: state.model, objective: objectiveParam(), y: String(state.y), n: String(state.n), seed: String(state.seed) });
    history.replaceState(null, "", `${location.pathname}?${q}`);
  }

  // ---------- API ----------

  async function api(path, options) {
    explorer.requests++;
    const response = await fetch(path, options);
    const body = await response.json();
    if (!response.ok) {
      const detail = body && body.detail && body.detail[0];
      throw new Error(detail ? `${response.status}: ${detail.msg}` : `HTTP ${response.status}`);
    }
    return body;
  }

  function posteriorRequest(y, extra) {
    return { y, objective: objectiveParam(), num_samples: state.n, seed: state.seed, resample: true, ...extra };
  }

  // the slider's range, from the page's config (a variant served since the page loaded gets a default one)
  const yRange = (model) => CONFIG.y_ranges[model] || [-10, 10];

  const byObjective = (answer) => (answer.objectives ? answer.objectives : { [answer.objective]: answer });

  // ---------- charts ----------

  function width(id) {
    const el = $(id);
    return Math.max(280, Math.floor(el.getBoundingClientRect().width) || 480);
  }

  function yMarker() {
    return {
      hooks: {
        draw: (u) => {
          const x = u.valToPos(state.y, "x", true);
          if (!(x >= u.bbox.left && x <= u.bbox.left + u.bbox.width)) return;
          const ctx = u.ctx;
          ctx.save();
          ctx.strokeStyle = "#c00";
          ctx.lineWidth = 1.5 * devicePixelRatio;
          ctx.setLineDash([4 * devicePixelRatio, 3 * devicePixelRatio]);
          ctx.beginPath();
          ctx.moveTo(x, u.bbox.top);
          ctx.lineTo(x, u.bbox.top + u.bbox.height);
          ctx.stroke();
          ctx.restore();
        },
      },
    };
  }

  function chart(id, series, axes, scales, height, plugins = [], emptyX = [0, 1]) {
    const data = [emptyX, ...series.slice(1).map(() => emptyX.map(() => null))];
    return new uPlot({
      width: width(id), height, series, plugins,
      scales: { x: { time: false, ...(scales.x || {}) }, y: scales.y || {} },
      axes, legend: { show: true }, cursor: { drag: { x: true, y: false } },
    }, data, $(id));
  }

  const linesOf = (stroke, extra = {}) => ({ stroke, width: 2, points: { show: false }, ...extra });
  const zeroBased = { range: (u, min, max) => [0, max > 0 ? max * 1.08 : 1] };

  function destroyCharts() {
    for (const c of Object.values(explorer.charts)) c.destroy();
    explorer.charts = {};
  }

  function buildCharts() {
    destroyCharts();
    const model = explorer.models[state.model];
    const branches = model.branches;
    const several = branches.length > 1;
    const objectives = state.objectives;
    const charts = explorer.charts;
    els.branchesFigure.hidden = !several; // before measuring: the grid's columns depend on it
    els.sweepProbabilityFigure.hidden = !several;

    const exactSeries = { label: "exact p(x | y)", stroke: COLOURS.exact, fill: "rgba(0,0,0,0.10)", width: 1.5, points: { show: false } };
    charts.density = chart("density-chart",
      [{ label: "x" }, exactSeries, ...objectives.map((o) => linesOf(COLOURS[o], { label: `q, ${o}`, dash: DASH[o] }))],
      [{ label: "x" }, { label: "density" }], { y: zeroBased }, 300);

    const stepped = uPlot.paths.stepped({ align: 1 });
    charts.histogram = chart("histogram-chart",
      [{ label: "x" }, { ...exactSeries },
        ...objectives.map((o) => linesOf(COLOURS[o], { label: `SIR draws, ${o}`, paths: stepped, fill: COLOURS[o] + "22" }))],
      [{ label: "x" }, { label: "density" }], { y: zeroBased }, 300);

    if (several) {
      const bars = uPlot.paths.bars({ size: [0.92, Infinity], align: 0 });
      const labels = branches.map((b) => branchLabel(b, branches.length > 3 ? "\n" : ","));  // a latent per line when many
      charts.branches = chart("branches-chart",
        [{ label: "branch" }, { label: "exact p(branch | y)", stroke: COLOURS.exact, fill: "#888888", paths: bars, points: { show: false } },
          ...objectives.map((o) => ({ label: `q(branch | y), ${o}`, stroke: COLOURS[o], fill: COLOURS[o] + "cc", paths: bars, points: { show: false } }))],
        [{ label: "branch", size: branches.length > 3 ? 64 : 50, splits: () => branches.map((_, i) => i), values: (u, splits) => splits.map((i) => labels[i] ?? "") },
          { label: "probability" }],
        { x: { range: () => [-0.5, branches.length - 0.5] }, y: { range: () => [0, 1.02] } }, 260);
    }

    // sweep: per objective and branch, q's mean / std; the exact components (dotted); the exact overall moments (grey)
    const qSeries = (what) => objectives.flatMap((o) => branches.map((b, i) => linesOf(
      several ? BRANCH_COLOURS[i % BRANCH_COLOURS.length] : COLOURS[o],
      { label: several ? `${what}, ${o}, ${branchLabel(b)}` : `${what}, ${o}`, dash: DASH[o] })));
    const exactComponents = (what) => explorer.componentLabels.map(({ branch, label }) => linesOf(
      several ? BRANCH_COLOURS[branch % BRANCH_COLOURS.length] : "#000000",
      { label: `exact ${what}, ${label}`, dash: [2, 3], width: 1.5 }));
    const overall = (what) => linesOf("#999999", { label: `exact ${what} of p(x | y)`, width: 3 });
    const yAxis = [{ label: "y" }];
    charts.sweepMean = chart("sweep-mean-chart", [{ label: "y" }, ...qSeries("mean"), ...exactComponents("mean"), overall("mean")],
      [...yAxis, { label: "mean" }], {}, 300, [yMarker()]);
    charts.sweepStd = chart("sweep-std-chart", [{ label: "y" }, ...qSeries("std"), ...exactComponents("std"), overall("std")],
      [...yAxis, { label: "std" }], { y: zeroBased }, 300, [yMarker()]);
    if (several) {
      const qProb = objectives.flatMap((o) => branches.map((b, i) => linesOf(BRANCH_COLOURS[i % BRANCH_COLOURS.length], { label: `q, ${o}, ${branchLabel(b)}`, dash: DASH[o] })));
      const pProb = branches.map((b, i) => linesOf(BRANCH_COLOURS[i % BRANCH_COLOURS.length], { label: `exact, ${branchLabel(b)}`, dash: [2, 3], width: 1.5 }));
      charts.sweepProbability = chart("sweep-probability-chart", [{ label: "y" }, ...qProb, ...pProb],
        [...yAxis, { label: "probability" }], { y: { range: () => [0, 1.02] } }, 300, [yMarker()]);
    }
  }

  // ---------- drawing ----------

  function drawAtY(answers, exact, t0) {
    const started = performance.now();
    const model = explorer.models[state.model];
    const objectives = state.objectives;
    const components = exact.components;
    const qParts = objectives.flatMap((o) => answers[o].q.branches);
    const grid = xGrid([...components, ...qParts]);
    const { xs } = grid;
    const charts = explorer.charts;

    const exactDensity = mixtureDensity(xs, components);
    charts.density.setData([xs, exactDensity, ...objectives.map((o) => mixtureDensity(xs, answers[o].q.branches))]);

    const edges = [];
    for (let i = 0; i <= HISTOGRAM_BINS; i++) edges.push(grid.low + ((grid.high - grid.low) * i) / HISTOGRAM_BINS);
    const hx = [...new Set([...xs, ...edges])].sort((a, b) => a - b);
    const histograms = {};
    const histogramSeries = objectives.map((o) => {
      const h = histogram(answers[o].resampled.x, grid.low, grid.high, HISTOGRAM_BINS);
      histograms[o] = h;
      return hx.map((x) => h.density[Math.min(HISTOGRAM_BINS - 1, Math.floor((x - grid.low) / h.width))]);
    });
    charts.histogram.setData([hx, mixtureDensity(hx, components), ...histogramSeries]);

    if (charts.branches) {
      const m = objectives.length + 1;
      const bx = [], columns = Array.from({ length: m }, () => []);
      model.branches.forEach((_, b) => {
        for (let j = 0; j < m; j++) {
          bx.push(b + (j - (m - 1) / 2) / (m + 1));
          for (let k = 0; k < m; k++) columns[k].push(null);
          const values = j === 0 ? exact.branch_probabilities : answers[objectives[j - 1]].q.branches.map((br) => br.probability);
          columns[j][columns[j].length - 1] = values[b];
        }
      });
      charts.branches.setData([bx, ...columns]);
    }

    const outside = objectives.filter((o) => histograms[o].outside).map((o) => `${histograms[o].outside} of ${histograms[o].total} ${o} draws lie outside the plotted range`);
    const notes = [];
    if (grid.far) notes.push(`q and the exact posterior span ${fmt(grid.high - grid.low)} in x, far wider than their narrowest peak: each peak is drawn at its height, as a spike.`);
    notes.push(...outside);
    els.rangeNote.hidden = !notes.length;
    els.rangeNote.textContent = notes.join(" ");

    drawTable(answers, exact);
    for (const key of ["sweepMean", "sweepStd", "sweepProbability"]) if (charts[key]) charts[key].redraw(false, false);
    els.yShown.textContent = fmt(state.y, 6);

    explorer.last = { y: state.y, model: state.model, objectives: objectives.slice(), answers, exact, xs, bins: { low: grid.low, high: grid.high, count: HISTOGRAM_BINS }, histograms };
    explorer.draws++;
    const drawn = performance.now();
    requestAnimationFrame(() => {
      const painted = performance.now();
      if (t0 !== null) explorer.timings.push({ y: state.y, total: painted - t0, draw: drawn - started });
      document.body.dataset.drawnY = String(state.y);
      document.body.dataset.draws = String(explorer.draws);
      els.status.textContent = `y = ${fmt(state.y, 6)}: ${objectives.join(" and ")} answered and drawn` + (t0 !== null ? ` in ${(painted - t0).toFixed(0)} ms (drawing ${(drawn - started).toFixed(1)} ms).` : ".")
        + (ignoredFromUrl.length ? ` The link's ${ignoredFromUrl.join(", ")}: the defaults were used instead.` : "");
      ignoredFromUrl = [];
      document.dispatchEvent(new CustomEvent("explorer:drawn", { detail: { y: state.y } }));
    });
  }

  function cell(value, tag = "td", cls = "") {
    const el = document.createElement(tag);
    el.textContent = typeof value === "number" ? fmt(value) : (value ?? "–");
    if (typeof value === "number") el.dataset.value = String(value);
    if (cls) el.className = cls;
    return el;
  }

  function drawTable(answers, exact) {
    const objectives = state.objectives;
    const first = answers[objectives[0]].exact;
    const rows = [
      ["verdict", (a) => a.diagnostics.verdict, null],
      ["reason", (a) => a.diagnostics.reason, null],
      ["ESS / N", (a) => a.diagnostics.ess_fraction, null],
      ["ESS", (a) => a.diagnostics.ess, null],
      ["Pareto k-hat", (a) => a.diagnostics.pareto_k, null],
      ["log p(y), estimate", (a) => a.diagnostics.log_evidence, first.log_evidence],
      ["its standard error", (a) => a.diagnostics.log_evidence_se, null],
      ["ELBO", (a) => a.diagnostics.elbo, first.log_evidence],
      ["E[x | y]", (a) => a.diagnostics.posterior_mean_x, first.posterior_mean_x],
      ["sd(x | y)", (a) => a.diagnostics.posterior_std_x, first.posterior_std_x],
      ["KL(p ‖ q) at y", (a) => a.exact.kl_pq, null],
      ["KL(q ‖ p) at y", (a) => a.exact.kl_qp, null],
      ["cross-check consistent", (a) => (a.diagnostics.cross_check ? String(a.diagnostics.cross_check.consistent) : "–"), null],
      ["misses mass", (a) => (a.diagnostics.cross_check ? String(a.diagnostics.cross_check.misses_mass) : "–"), null],
      ["missed mass, estimate", (a) => (a.diagnostics.cross_check ? a.diagnostics.cross_check.missed_mass ?? null : null), null],
      ["log p(y), defensive mixture", (a) => (a.diagnostics.cross_check ? a.diagnostics.cross_check.log_evidence_mixture : null), null],
    ];
    const table = els.table;
    const caption = table.querySelector("caption");
    table.replaceChildren(caption);
    const head = document.createElement("thead");
    const hr = document.createElement("tr");
    hr.append(cell("", "th"), ...objectives.map((o) => { const th = cell(`q, ${o}`, "th", `objective ${o}`); th.scope = "col"; return th; }), Object.assign(cell("exact", "th"), { scope: "col" }));
    head.append(hr);
    const body = document.createElement("tbody");
    for (const [name, get, exactValue] of rows) {
      const tr = document.createElement("tr");
      const th = cell(name, "th");
      th.scope = "row";
      tr.append(th);
      for (const o of objectives) {
        const value = get(answers[o]);
        const td = cell(value);
        td.dataset.objective = o;
        td.dataset.field = name;
        if (name === "verdict") td.className = `verdict ${value}`;
        tr.append(td);
      }
      tr.append(cell(exactValue));
      body.append(tr);
    }
    const qRow = document.createElement("tr");
    const qth = cell("branches of q; components of p", "th");
    qth.scope = "row";
    const describe = (parts) => parts.map((b) => `${Object.keys(b.latents).length ? branchLabel(b.latents) + ": " : ""}p ${fmt(b.probability, 3)}, mean ${fmt(b.mean)}, sd ${fmt(b.std)}`).join("; ");
    qRow.append(qth, ...objectives.map((o) => cell(describe(answers[o].q.branches))), cell(describe(exact.components)));
    body.append(qRow);
    table.append(head, body);
  }

  function drawSweep(answers, exactResults, ys) {
    const model = explorer.models[state.model];
    const charts = explorer.charts;
    const objectives = state.objectives;
    const branches = model.branches;
    const q = (o, field) => branches.map((_, b) => answers.map((a) => byObjective(a)[o].q.branches[b][field]));
    const comps = (field) => exactResults[0].components.map((_, c) => exactResults.map((r) => r.components[c][field]));
    const firstExact = answers.map((a) => byObjective(a)[objectives[0]].exact);
    charts.sweepMean.setData([ys, ...objectives.flatMap((o) => q(o, "mean")), ...comps("mean"), firstExact.map((e) => e.posterior_mean_x)]);
    charts.sweepStd.setData([ys, ...objectives.flatMap((o) => q(o, "std")), ...comps("std"), firstExact.map((e) => e.posterior_std_x)]);
    if (charts.sweepProbability) {
      const pBranch = branches.map((_, b) => exactResults.map((r) => r.branch_probabilities[b]));
      charts.sweepProbability.setData([ys, ...objectives.flatMap((o) => q(o, "probability")), ...pBranch]);
    }
    explorer.sweep = { model: state.model, objectives: objectives.slice(), ys, answers, exact: exactResults };
  }

  // ---------- updates ----------

  let epoch = 0;          // bumped when the model or objectives change: answers for an older epoch are dropped
  let building = 0;       // rebuilds under way: their charts do not exist yet, so answers meanwhile are not drawn
  let inFlight = false;   // one y query at a time; changes meanwhile coalesce into the latest
  let pending = null;     // {t0}: the latest change not yet asked for (t0 null: not a user's change, not timed)

  function changeY(y, t0) {
    if (!validY(y)) {
      els.status.textContent = `y must be ${Y_RULE} (got ${els.input.value || "no number"}).`;
      return;
    }
    state.y = y;
    // the number box keeps what the user is typing: a redraw started elsewhere (a rebuild after a model or
    // objective change) must not overwrite it before they press Enter
    if (document.activeElement !== els.input) els.input.value = String(y);
    if (document.activeElement !== els.slider) els.slider.value = String(Math.min(Math.max(y, els.slider.min), els.slider.max));
    writeUrl();
    pending = { t0 };
    if (!inFlight) queryY();
  }

  async function queryY() {
    inFlight = true;
    try {
      while (pending !== null) {
        const { t0 } = pending, y = state.y, mine = epoch, model = state.model;
        pending = null;
        const name = encodeURIComponent(model);
        const [answer, exact] = await Promise.all([
          api(`/v1/models/${name}/posterior`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(posteriorRequest(y)) }),
          api(`/v1/models/${name}/exact?y=${encodeURIComponent(y)}`),
        ]);
        // a rebuild under way asks again for state.y once its charts exist
        if (mine === epoch && pending === null && building === 0) drawAtY(byObjective(answer), exact.results[0], t0);
      }
    } catch (error) {
      els.status.textContent = `The API refused: ${error.message}`;
      pending = null;
    } finally {
      inFlight = false;
    }
  }

  async function querySweep() {
    const mine = epoch, model = state.model;
    const [low, high] = yRange(model);
    const ys = Array.from({ length: SWEEP_POINTS }, (_, i) => Number((low + ((high - low) * i) / (SWEEP_POINTS - 1)).toPrecision(12)));
    const name = encodeURIComponent(model);
    try {
      const [batch, exact] = await Promise.all([
        api(`/v1/models/${name}/posterior`, { method: "POST", headers: { "content-type": "application/json" },
          body: JSON.stringify({ y: ys, objective: objectiveParam(), num_samples: 1, seed: state.seed, cross_check: false }) }),
        api(`/v1/models/${name}/exact?${ys.map((y) => `y=${encodeURIComponent(y)}`).join("&")}`),
      ]);
      if (mine === epoch) drawSweep(batch.results, exact.results, ys);
    } catch (error) {
      els.status.textContent = `The API refused the sweep: ${error.message}`;
    }
  }

  async function rebuild() {
    epoch++;
    building++;
    let exact;
    try {
      // the exact posterior's components (for gmm, two within the one branch) name the sweep's dotted lines
      exact = await api(`/v1/models/${encodeURIComponent(state.model)}/exact?y=0`);
    } finally {
      building--;
    }
    if (building > 0) return; // a later rebuild (another model or objective chosen meanwhile) draws the page
    const model = explorer.models[state.model];
    explorer.componentLabels = exact.results[0].components.map((c, i, all) => ({
      branch: c.branch,
      label: all.filter((d) => d.branch === c.branch).length > 1
        ? `${Object.keys(c.latents).length ? branchLabel(c.latents) + ", " : ""}component ${i + 1}` : branchLabel(c.latents),
    }));
    const [low, high] = yRange(state.model);
    els.slider.min = String(low);
    els.slider.max = String(high);
    els.slider.step = String(10 ** Math.floor(Math.log10((high - low) / 500)));
    for (const o of OBJECTIVES) {
      els.objective[o].disabled = !model.objectives.includes(o);
      els.objective[o].checked = state.objectives.includes(o);
    }
    els.n.value = String(state.n);
    els.seed.value = String(state.seed);
    buildCharts();
    querySweep();
    changeY(state.y, null);
  }

  // ---------- controls ----------

  function bind() {
    els.model.addEventListener("change", () => {
      state.model = els.model.value;
      const compiled = explorer.models[state.model].objectives;
      state.objectives = state.objectives.filter((o) => compiled.includes(o));
      if (!state.objectives.length) state.objectives = compiled.slice();
      rebuild();
    });
    for (const o of OBJECTIVES) {
      els.objective[o].addEventListener("change", () => {
        const chosen = OBJECTIVES.filter((k) => els.objective[k].checked);
        if (!chosen.length) { els.objective[o].checked = true; return; } // at least one objective
        state.objectives = chosen;
        rebuild();
      });
    }
    els.slider.addEventListener("input", (event) => changeY(Number.parseFloat(els.slider.value), event.timeStamp || performance.now()));
    const typed = (event) => changeY(Number.parseFloat(els.input.value), event.timeStamp || performance.now());
    els.input.addEventListener("change", typed);
    els.input.addEventListener("keydown", (event) => { if (event.key === "Enter") { event.preventDefault(); typed(event); } });
    const settings = () => {
      const n = asNumber(els.n.value), seed = asNumber(els.seed.value);
      const wrong = [];
      if (!validN(n)) wrong.push(`samples must be ${N_RULE} (got ${els.n.value || "no number"})`);
      if (!validSeed(seed)) wrong.push(`the seed must be ${SEED_RULE} (got ${els.seed.value || "no number"})`);
      if (wrong.length) { els.status.textContent = wrong.join("; ") + ": nothing was asked."; return; }
      state.n = n;
      state.seed = seed;
      changeY(state.y, performance.now());
    };
    els.n.addEventListener("change", settings);
    els.seed.addEventListener("change", settings);
    document.getElementById("controls").addEventListener("submit", (event) => event.preventDefault());
    let resizing = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizing);
      resizing = setTimeout(() => {
        for (const [key, c] of Object.entries(explorer.charts)) c.setSize({ width: width(c.root.parentElement.id || key), height: c.height });
      }, 100);
    });
  }

  async function start() {
    const list = await api("/v1/models");
    for (const m of list) explorer.models[m.name] = m;
    for (const m of list) els.model.append(new Option(`${m.name} — ${m.title}`, m.name));
    readUrl();
    els.model.value = state.model;
    bind();
    await rebuild();
    explorer.ready = true;
  }

  start().catch((error) => { els.status.textContent = `Could not start: ${error.message}`; });
})();
