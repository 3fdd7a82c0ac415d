// The live dashboard of one experiment. First paint from metrics.json (columnar), then a websocket
// that backfills after the last step seen and pushes new points; a dropped connection reconnects
// with backoff from the last step, so nothing is missed or drawn twice. Updates never reset the
// zoom, the smoothing, the axis or the video step the user chose. Charts come in collapsible sections
// (vpo/train/keys.py's DASHBOARD); a logged metric no chart names gets a chart of its own in "Other".
// While the run runs, a line says what its step is doing (the phase the worker stored and pushes) and
// when it should end.
"use strict";

(() => {
  const id = JSON.parse(document.getElementById("experiment-id").textContent);
  const base = `/experiments/${id}`;
  const state = {steps: [], wall: [], series: {}, last: -1, samples: new Map()};
  // the sections, their charts and the metric names they draw: vpo/train/keys.py's DASHBOARD
  const SECTIONS = JSON.parse(document.getElementById("dashboard-charts").textContent);
  const TOTAL_STEPS = JSON.parse(document.getElementById("total-steps").textContent);
  const $ = (sel) => document.querySelector(sel);
  const charts = {};
  const sectionEls = {};
  const ENDED = ["finished", "failed", "cancelled"];
  let status = $("#status").textContent.trim();
  let done = ENDED.includes(status);  // the run has ended: not "live"

  function sectionEl(title, open) {
    if (!sectionEls[title]) {
      const details = document.createElement("details");
      details.className = "section";
      details.open = open;
      details.dataset.section = title;
      const summary = document.createElement("summary");
      summary.textContent = title;
      const grid = document.createElement("div");
      grid.className = "charts";
      details.append(summary, grid);
      $("#charts").appendChild(details);
      // a closed section's charts are drawn when it opens (a long run's first paint draws only what shows)
      details.addEventListener("toggle", () => { if (details.open) scheduleDraw(); });
      sectionEls[title] = grid;
    }
    return sectionEls[title];
  }
  // the sections in their order, so that "Other" (made on demand) comes last
  SECTIONS.forEach((s) => sectionEl(s.section, !!s.open));

  // every chart to draw now: the named ones with data, then one per logged metric no chart names
  function chartSpecs() {
    const specs = [];
    const named = new Set();
    for (const section of SECTIONS) {
      for (const spec of section.charts) {
        const names = spec.prefix ? Object.keys(state.series).filter((n) => n.startsWith(spec.prefix)).sort()
                                  : spec.lines.filter((n) => state.series[n]);
        (spec.lines || []).concat(spec.band || []).forEach((n) => named.add(n));
        names.forEach((n) => named.add(n));
        if (names.length) specs.push({...spec, names, section: section.section});
      }
    }
    for (const n of Object.keys(state.series).sort()) {
      if (!named.has(n)) specs.push({key: `metric:${n}`, title: n, names: [n], section: "Other"});
    }
    return specs;
  }

  // --- metrics -----------------------------------------------------------------------------
  function addPoints(points) {
    for (const p of points) {
      if (p.step <= state.last) continue;  // already have it
      const i = state.steps.length;
      state.steps.push(p.step);
      state.wall.push(p.wall);
      for (const [name, v] of Object.entries(p.values)) {
        if (!state.series[name]) state.series[name] = new Array(i).fill(null);
      }
      for (const [name, arr] of Object.entries(state.series)) arr.push(name in p.values ? p.values[name] : null);
      state.last = p.step;
    }
    scheduleDraw();
  }

  let drawPending = false;
  function scheduleDraw() {
    if (drawPending) return;
    drawPending = true;
    requestAnimationFrame(() => { drawPending = false; draw(); });
  }

  function draw() {
    const alpha = parseFloat($("#smoothing").value);
    const byWall = $("#xaxis").value === "wall";
    const x = byWall ? state.wall : state.steps;
    let drawn = 0;
    for (const spec of chartSpecs()) {
      const names = spec.names;
      if (!sectionEl(spec.section, false).parentElement.open) continue;
      if (!charts[spec.key]) {
        charts[spec.key] = new VPOCharts.Chart(sectionEl(spec.section, false), spec.title, byWall ? "seconds" : "step");
      }
      const chart = charts[spec.key];
      chart.xLabel = byWall ? "seconds" : "step";
      chart.integerX = !byWall;  // steps are whole numbers: no tick at 2.5
      chart.xMax = byWall ? null : TOTAL_STEPS;  // the x range fits the run, not a rounded-up 100
      const band = spec.band && spec.band.every((n) => state.series[n])
        ? {label: spec.lines[0], lo: state.series[spec.band[0]], hi: state.series[spec.band[1]],
           loLabel: spec.band[0], hiLabel: spec.band[1]} : null;
      chart.update(x, names.map((n) => ({label: n, values: state.series[n]})), band, alpha);
      drawn = Math.max(drawn, chart.drawn);
    }
    showPhase();
    const count = $("#point-count");
    count.textContent = state.steps.length.toLocaleString();
    count.dataset.count = state.steps.length;
    $("#drawn").textContent = drawn < state.steps.length ? ` (${drawn.toLocaleString()} drawn)` : "";
  }

  $("#smoothing").addEventListener("input", (e) => {
    $("#smoothing-value").textContent = parseFloat(e.target.value) ? parseFloat(e.target.value).toFixed(2) : "off";
    scheduleDraw();
  });
  $("#xaxis").addEventListener("change", () => {
    for (const c of Object.values(charts)) { c.zoomed = false; c.signature = ""; }  // new x: new scales
    scheduleDraw();
  });
  window.addEventListener("resize", () => Object.values(charts).forEach((c) => c.resize()));

  // --- status --------------------------------------------------------------------------------
  function setStatus(msg) {
    const el = $("#status");
    el.textContent = msg.status;
    el.className = `status ${msg.status}`;
    status = msg.status;
    done = ENDED.includes(msg.status);
    if (done && $("#live").textContent === "live") $("#live").textContent = "the run has ended: not live";
    showPhase();
    $("#cancel-form").hidden = done || msg.cancel_requested;
    $("#cancelling").hidden = done || !msg.cancel_requested;
    $("#error").hidden = !msg.error;
    $("#error").textContent = msg.error || "";
    $("#stopped").hidden = !msg.stopped_reason;
    $("#stopped").textContent = msg.stopped_reason || "";
    $("#continue-form").hidden = !(msg.stopped_reason && msg.status === "finished");
  }

  // --- phase: what the step in progress is doing, and when the run should end ---------------
  let phase = JSON.parse(document.getElementById("phase-stored").textContent);
  function setPhase(p) {
    if (phase && p.wall < phase.wall) return;  // an older one (pushed while the newer was read back)
    phase = p;
    showPhase();
  }

  // seconds per step from the points so far: wall time from the start (or from step 0, the base
  // model's held-out check) to the last point, over its steps; it includes held-out checks and
  // checkpoints. null before the first step has ended.
  function secondsPerStep() {
    const n = state.steps.length;
    if (!n || state.steps[n - 1] <= 0) return null;
    const from = state.steps[0] === 0 ? state.wall[0] : 0;
    return (state.wall[n - 1] - from) / state.steps[n - 1];
  }

  function duration(s) {
    if (s < 60) return `${Math.round(s)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
    return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  }

  function showPhase() {
    const el = $("#phase");
    el.hidden = status !== "running" || !phase;  // queued, paused or ended: no step is in progress
    if (el.hidden) return;
    $("#phase-step").textContent = phase.step === 0 ? "before step 1" : `step ${phase.step} of ${TOTAL_STEPS}`;
    $("#phase-name").textContent = phase.name;
    $("#phase-progress").textContent = phase.total ? ` ${phase.done} of ${phase.total}` : "";
    const perStep = secondsPerStep();
    const lastDone = state.steps.length ? state.steps[state.steps.length - 1] : 0;
    $("#eta").textContent = perStep === null ? "ETA after the first step"
      : `about ${duration(perStep * Math.max(0, TOTAL_STEPS - lastDone))} left (${perStep.toFixed(1)} s/step)`;
  }
  showPhase();

  // cancel without leaving the page (the form still works without JavaScript)
  $("#cancel-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const form = e.target;
    const r = await fetch(form.action, {method: "POST", body: new FormData(form), headers: {Accept: "application/json"}});
    if (r.ok) setStatus(await r.json());
  });

  // --- videos --------------------------------------------------------------------------------
  function addSamples(list) {
    for (const s of list) {
      if (!state.samples.has(s.step)) state.samples.set(s.step, {candidates: [], heldout: []});
      const slot = state.samples.get(s.step)[s.kind] || (state.samples.get(s.step)[s.kind] = []);
      slot[s.index] = s;
    }
    const slider = $("#video-step");
    const steps = [...state.samples.keys()].sort((a, b) => a - b);
    const wasAtEnd = slider.disabled || +slider.value === +slider.max;
    slider.max = steps.length - 1;
    slider.disabled = steps.length === 0;
    if (wasAtEnd) slider.value = steps.length - 1;  // follow new steps unless the user moved away
    showVideos();
  }

  function videoCard(s, title) {
    const card = document.createElement("figure");
    card.className = `video ${s.label || ""}${s.image ? " i2v" : ""}`;
    const v = document.createElement("video");
    Object.assign(v, {src: s.url, muted: true, loop: true, autoplay: true, playsInline: true, controls: true,
                      preload: "auto"});
    if (s.image) {  // image-to-video: the first frame it was conditioned on, beside it
      const frame = document.createElement("img");
      Object.assign(frame, {src: s.image, className: "first-frame", alt: "first frame (the condition)",
                            title: "the first frame this video was conditioned on"});
      const both = document.createElement("div");
      both.className = "with-frame";
      both.append(frame, v);
      card.append(both);
    } else {
      card.append(v);
    }
    const score = s.score === null ? "–" : s.score.toFixed(4);
    const cap = document.createElement("figcaption");
    cap.innerHTML = `<b></b> <span class="score"></span><br><small></small>`;
    cap.querySelector("b").textContent = title || s.label || "";
    cap.querySelector(".score").textContent = `score ${score}`;
    cap.querySelector("small").textContent = s.prompt;
    card.append(cap);
    return card;
  }

  function showVideos() {
    const steps = [...state.samples.keys()].sort((a, b) => a - b);
    const panel = $("#video-panel");
    if (!steps.length) return;
    const step = steps[+$("#video-step").value];
    $("#video-step-value").textContent = `step ${step}`;
    const at = state.samples.get(step);
    const baseRow = state.samples.get(0) ? state.samples.get(0).heldout || [] : [];
    panel.replaceChildren();
    if (at.candidates && at.candidates.length) {
      const h = document.createElement("h3");
      h.textContent = `Candidates at step ${step} (scored on the trained dimension; DPO marks winner and loser, RWR the best)`;
      const grid = document.createElement("div");
      grid.className = "grid";
      at.candidates.filter(Boolean).forEach((s) => grid.appendChild(videoCard(s)));
      panel.append(h, grid);
    }
    if (at.heldout && at.heldout.length) {
      const h = document.createElement("h3");
      h.textContent = `Held-out prompts: base (step 0) vs step ${step}`;
      const grid = document.createElement("div");
      grid.className = "pairs";
      at.heldout.filter(Boolean).forEach((s, i) => {
        const pair = document.createElement("div");
        pair.className = "pair";
        if (baseRow[i] && step !== 0) pair.appendChild(videoCard(baseRow[i], "base"));
        pair.appendChild(videoCard(s, step === 0 ? "base" : `step ${step}`));
        grid.appendChild(pair);
      });
      panel.append(h, grid);
    }
  }

  $("#video-step").addEventListener("input", showVideos);
  document.addEventListener("keydown", (e) => {
    const slider = $("#video-step");
    if (slider.disabled || e.target.matches("input, select, textarea") && e.target !== slider) return;
    if (e.target === slider) return;  // the range input moves itself
    if (e.key === "ArrowRight" || e.key === "ArrowLeft") {
      slider.value = +slider.value + (e.key === "ArrowRight" ? 1 : -1);
      showVideos();
      e.preventDefault();
    }
  });

  // --- live connection -----------------------------------------------------------------------
  let delay = 500;
  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/ws/experiments/${id}/?after=${state.last}`);
    ws.onopen = () => { delay = 500; $("#live").textContent = done ? "the run has ended: not live" : "live"; };
    ws.onmessage = (e) => {
      const msg = JSON.parse(e.data);
      if (msg.type === "points") addPoints(msg.points);
      else if (msg.type === "samples") addSamples(msg.samples);
      else if (msg.type === "status") setStatus(msg);
      else if (msg.type === "phase") setPhase(msg);
      else if (msg.type === "evaluation") refreshEvaluations();
    };
    ws.onclose = (e) => {
      if (e.code === 4403) { $("#live").textContent = "not allowed"; return; }
      $("#live").textContent = `reconnecting in ${(delay / 1000).toFixed(1)} s…`;
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 15000);
    };
  }

  async function refreshEvaluations() {
    const html = await (await fetch(location.pathname)).text();
    const fresh = new DOMParser().parseFromString(html, "text/html").querySelector("#evaluations");
    if (fresh) $("#evaluations").replaceWith(fresh);
  }

  async function start() {
    const [metrics, samples] = await Promise.all([
      fetch(`${base}/metrics.json`).then((r) => r.json()),
      fetch(`${base}/samples.json`).then((r) => r.json()),
    ]);
    // columnar already: take it as it is (the websocket then sends only what comes after)
    Object.assign(state, {steps: metrics.steps, wall: metrics.wall, series: metrics.series,
                          last: metrics.steps.length ? metrics.steps[metrics.steps.length - 1] : -1});
    scheduleDraw();
    addSamples(samples.samples);
    connect();
  }
  start();
})();
