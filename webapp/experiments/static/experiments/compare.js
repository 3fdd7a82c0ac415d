// Overlay every metric of several experiments on a common step axis: one panel per metric (the
// default metric first), each run by its name in its own colour; optionally the runs of one group
// (e.g. seeds) as their mean with a min-max band, each group in its own colour.
"use strict";

(async () => {
  const ids = JSON.parse(document.getElementById("experiment-ids").textContent);
  const runNames = JSON.parse(document.getElementById("experiment-names").textContent);
  const runGroups = JSON.parse(document.getElementById("experiment-groups").textContent);
  const grouping = document.getElementById("group-runs");
  // each run by its name, in the colour of its line (the legend above the charts too)
  document.querySelectorAll(".legend .swatch").forEach((el, i) => {
    el.style.background = VPOCharts.COLOURS[i % VPOCharts.COLOURS.length];
  });
  const runs = await Promise.all(ids.map((id) => fetch(`/experiments/${id}/metrics.json`).then((r) => r.json())));
  const shown = JSON.parse(document.getElementById("default-metric").textContent);  // vpo/train/keys.py
  const names = [...new Set(runs.flatMap((r) => Object.keys(r.series)))].sort();
  names.sort((a, b) => (b === shown) - (a === shown));  // the default metric's panel first
  const filter = document.getElementById("metric-filter");
  const container = document.getElementById("charts");
  const steps = [...new Set(runs.flatMap((r) => r.steps))].sort((a, b) => a - b);
  const panels = names.map((metric) => {
    const chart = new VPOCharts.Chart(container, metric, "step");
    chart.integerX = true;  // steps are whole numbers: no tick at 2.5
    chart.el.dataset.metric = metric;
    return {metric, chart};
  });

  function linesOf(metric) {
    let lines = runs.map((r, i) => {
      const at = new Map(r.steps.map((s, j) => [s, r.series[metric] ? r.series[metric][j] : null]));
      return {label: `${runNames[i]} (#${ids[i]})`, values: steps.map((s) => at.has(s) ? at.get(s) : null)};
    });
    const bands = [];
    if (grouping && grouping.checked) {
      // the runs of each group as their mean per step inside their min-max band
      const byGroup = new Map();
      lines.forEach((line, i) => {
        const key = runGroups[i] || line.label;  // a run without a group stays on its own
        if (!byGroup.has(key)) byGroup.set(key, []);
        byGroup.get(key).push(line.values);
      });
      lines = [];
      for (const [key, members] of byGroup) {
        if (members.length === 1) { lines.push({label: key, values: members[0]}); continue; }
        const at = (j) => members.map((m) => m[j]).filter((v) => v !== null && v !== undefined);
        const label = `${key} (mean of ${members.length})`;
        lines.push({label, values: steps.map((_, j) => {
          const v = at(j);
          return v.length ? v.reduce((a, b) => a + b, 0) / v.length : null;
        })});
        bands.push({label, loLabel: `${key} min`, hiLabel: `${key} max`,
                    lo: steps.map((_, j) => at(j).length ? Math.min(...at(j)) : null),
                    hi: steps.map((_, j) => at(j).length ? Math.max(...at(j)) : null)});
      }
    }
    return {lines, bands};
  }

  function draw() {
    const alpha = parseFloat(document.getElementById("smoothing").value);
    const words = filter ? filter.value.trim().toLowerCase() : "";
    for (const {metric, chart} of panels) {
      chart.el.hidden = Boolean(words) && !metric.toLowerCase().includes(words);
      if (chart.el.hidden) continue;
      const {lines, bands} = linesOf(metric);
      chart.signature = "";  // grouping may change the series: a new chart
      chart.update(steps, lines, bands, alpha);
    }
  }
  if (filter) filter.addEventListener("input", draw);
  if (grouping) grouping.addEventListener("change", draw);
  document.getElementById("smoothing").addEventListener("input", draw);
  draw();
})();
