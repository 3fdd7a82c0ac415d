// Overlay one metric of several experiments on a common step axis.
"use strict";

(async () => {
  const ids = JSON.parse(document.getElementById("experiment-ids").textContent);
  const runNames = JSON.parse(document.getElementById("experiment-names").textContent);
  // each run by its name, in the colour of its line (the legend above the chart too)
  document.querySelectorAll(".legend .swatch").forEach((el, i) => {
    el.style.background = VPOCharts.COLOURS[i % VPOCharts.COLOURS.length];
  });
  const runs = await Promise.all(ids.map((id) => fetch(`/experiments/${id}/metrics.json`).then((r) => r.json())));
  const names = [...new Set(runs.flatMap((r) => Object.keys(r.series)))].sort();
  const shown = JSON.parse(document.getElementById("default-metric").textContent);  // vpo/train/keys.py
  const select = document.getElementById("metric");
  for (const n of names) select.add(new Option(n, n, n === shown, n === shown));
  const chart = new VPOCharts.Chart(document.getElementById("charts"), "", "step");

  function draw() {
    const metric = select.value;
    const steps = [...new Set(runs.flatMap((r) => r.steps))].sort((a, b) => a - b);
    const lines = runs.map((r, i) => {
      const at = new Map(r.steps.map((s, j) => [s, r.series[metric] ? r.series[metric][j] : null]));
      return {label: `${runNames[i]} (#${ids[i]})`, values: steps.map((s) => at.has(s) ? at.get(s) : null)};
    });
    chart.title = metric;
    chart.signature = "";  // a new metric: new chart
    chart.update(steps, lines, null, parseFloat(document.getElementById("smoothing").value));
  }
  select.addEventListener("change", draw);
  document.getElementById("smoothing").addEventListener("input", draw);
  draw();
})();
