// Line charts on uPlot (vendored from npm, webapp/static/vendor/uplot): EMA smoothing with the raw
// line faint behind it, min-max bands, downsampling that keeps every bucket's extremes, and zoom
// that survives new data. Shared by the dashboard and the compare page. Tick labels carry as many
// decimals as it takes to tell them apart (never "0.693 / 0.693"); a step axis has whole-number
// ticks only and its range is the run's steps; a smoothed line never leaves its own min-max band.
"use strict";

const VPOCharts = (() => {
  const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

  // Exponential moving average with TensorBoard's debiasing; null stays null (a gap).
  function ema(values, alpha) {
    if (!alpha) return values;
    const out = new Array(values.length);
    let acc = 0, weight = 0;
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      if (v === null || v === undefined || Number.isNaN(v)) { out[i] = null; continue; }
      acc = alpha * acc + (1 - alpha) * v;
      weight = alpha * weight + (1 - alpha);
      out[i] = acc / weight;
    }
    return out;
  }

  // Indices to draw when there are more points than pixels: per bucket, the first and last point
  // and, for every series, the points holding its minimum and maximum, so no spike is lost.
  function downsample(x, ys, maxPoints) {
    const n = x.length;
    if (n <= maxPoints) return null;
    const buckets = Math.max(1, Math.floor(maxPoints / 4));
    const size = n / buckets;
    const keep = [];
    for (let b = 0; b < buckets; b++) {
      const lo = Math.floor(b * size), hi = Math.min(n, Math.floor((b + 1) * size));
      if (hi <= lo) continue;
      const picked = new Set([lo, hi - 1]);
      for (const y of ys) {
        let iMin = -1, iMax = -1;
        for (let i = lo; i < hi; i++) {
          const v = y[i];
          if (v === null || v === undefined) continue;
          if (iMin < 0 || v < y[iMin]) iMin = i;
          if (iMax < 0 || v > y[iMax]) iMax = i;
        }
        if (iMin >= 0) { picked.add(iMin); picked.add(iMax); }
      }
      keep.push(...[...picked].sort((a, b) => a - b));
    }
    return keep;
  }

  function pick(arr, idx) { return idx ? idx.map((i) => arr[i]) : arr; }

  // The smoothed mean inside the step's raw [min, max]: the EMA lags, and a mean drawn above the
  // step's best candidate (or below its worst) would show a reward no candidate had.
  function clampToBand(values, lo, hi) {
    return values.map((v, i) => {
      if (v === null || v === undefined) return v;
      if (lo[i] !== null && lo[i] !== undefined && v < lo[i]) return lo[i];
      if (hi[i] !== null && hi[i] !== undefined && v > hi[i]) return hi[i];
      return v;
    });
  }

  // Tick labels with the fewest decimals that keep them all different (uPlot's own can repeat one
  // on a narrow range); -0.0 shows as 0.0.
  function tickLabels(splits) {
    const shown = splits.filter((v) => v !== null && v !== undefined);
    const fmt = (v, d) => v.toFixed(d).replace(/^-(0\.?0*)$/, "$1");  // a rounding error below 0 is 0
    for (let d = 0; d <= 15; d++) {
      const labels = splits.map((v) => (v === null || v === undefined ? "" : fmt(v, d)));
      if (new Set(labels.filter((l) => l !== "")).size === shown.length) return labels;
    }
    return splits.map((v) => (v === null || v === undefined ? "" : String(v)));
  }

  // whole-number tick spacings for a step axis
  const INTEGER_INCRS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1e3, 2e3, 2.5e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6];

  // One chart: {title, lines: [{label, values}], bands: [{lo, hi, label}]}.
  class Chart {
    constructor(container, title, xLabel) {
      this.el = document.createElement("div");
      this.el.className = "chart";
      container.appendChild(this.el);
      this.title = title;
      this.xLabel = xLabel;
      this.plot = null;
      this.zoomed = false;
      this.signature = "";
      this.drawn = 0;
      this.integerX = false;  // steps: whole-number ticks
      this.xMax = null;  // the x range reaches at least this (a run's steps), null = the data's range
      this.ticks = {x: [], y: []};  // the labels last drawn (what the browser tests read)
      this.bandFills = [];  // the colour of each band last drawn (read by them too)
      this.el.vpoChart = this;
    }

    // x: numbers; lines: [{label, values}]; bands: {label, lo, hi, loLabel?, hiLabel?}, a list of
    // them, or null (label: the line it bounds, drawn in that line's colour; loLabel/hiLabel: its
    // edges' names in the legend); alpha: EMA factor (0 = off)
    update(x, lines, bands, alpha) {
      const given = bands ? (Array.isArray(bands) ? bands : [bands]) : [];
      const bandOf = new Map(given.map((b) => [b.label, b]));
      const raw = [...lines.map((l) => l.values), ...given.flatMap((b) => [b.lo, b.hi])];
      const idx = downsample(x, raw, Math.max(200, 2 * (this.el.clientWidth || 600)));
      this.drawn = idx ? idx.length : x.length;
      const data = [pick(x, idx)];
      const series = [{label: this.xLabel}];
      lines.forEach((line, i) => {
        const colour = COLOURS[i % COLOURS.length];
        if (alpha) {  // raw faint behind, smoothed solid on top
          data.push(pick(line.values, idx));
          series.push({label: `${line.label} (raw)`, stroke: colour + "40", width: 1, spanGaps: true});
          let smooth = ema(line.values, alpha);
          const band = bandOf.get(line.label);
          if (band) smooth = clampToBand(smooth, band.lo, band.hi);
          data.push(pick(smooth, idx));
          series.push({label: line.label, stroke: colour, width: 2, spanGaps: true});
        } else {
          data.push(pick(line.values, idx));
          series.push({label: line.label, stroke: colour, width: 1.5, spanGaps: true});
        }
      });
      const fills = [];
      for (const band of given) {  // in the colour of the line it bounds (the first line's if none)
        const colour = COLOURS[Math.max(0, lines.findIndex((l) => l.label === band.label)) % COLOURS.length];
        data.push(pick(band.lo, idx), pick(band.hi, idx));
        series.push({label: band.loLabel || `${band.label} min`, stroke: colour + "55", width: 1, spanGaps: true},
                    {label: band.hiLabel || `${band.label} max`, stroke: colour + "55", width: 1, spanGaps: true});
        fills.push({series: [series.length - 1, series.length - 2], fill: colour + "22"});
      }
      const signature = series.map((s) => s.label).join("|") + `|${this.integerX}`;
      if (!this.plot || signature !== this.signature) {
        this.create(series, fills, data);
        this.bandFills = fills.map((f) => f.fill);
        this.signature = signature;
      } else {
        // keep what the user zoomed into; otherwise follow the data as it grows
        this.plot.setData(data, !this.zoomed);
      }
    }

    create(series, bands, data) {
      const scale = this.plot ? this.plot.scales.x : null;
      if (this.plot) this.plot.destroy();
      const chart = this;
      this.plot = new uPlot({
        title: this.title,
        width: Math.max(300, this.el.clientWidth || 600),
        height: 220,
        series,
        bands,
        scales: {x: {time: false, range: (u, min, max) => chart.xRange(min, max)}},
        axes: [
          {
            label: this.xLabel,
            ...(this.integerX ? {incrs: INTEGER_INCRS} : {}),
            values: (u, splits) => (chart.ticks.x = tickLabels(splits)),
          },
          {values: (u, splits) => (chart.ticks.y = tickLabels(splits))},
        ],
        legend: {live: true},
        cursor: {sync: {key: "vpo"}, drag: {x: true, y: false}},
        hooks: {
          setSelect: [(u) => { if (u.select.width > 0) chart.zoomed = true; }],
          ready: [(u) => {
            u.over.addEventListener("dblclick", () => { chart.zoomed = false; });
          }],
        },
      }, data, this.el);
      if (scale && this.zoomed && scale.min !== null) this.plot.setScale("x", {min: scale.min, max: scale.max});
    }

    // the x range when not zoomed: the data's, reaching to xMax (the run's last step) if that is set
    xRange(min, max) {
      if (min === null || max === null) return [0, this.xMax || 1];
      if (this.xMax !== null && this.xMax !== undefined) max = Math.max(max, this.xMax);
      return min === max ? [min - 1, max + 1] : [min, max];
    }

    resize() {
      if (this.plot) this.plot.setSize({width: Math.max(300, this.el.clientWidth), height: 220});
    }
  }

  return {Chart, ema, downsample, tickLabels, clampToBand, COLOURS};
})();
