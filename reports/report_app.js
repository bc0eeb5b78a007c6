// gradprobe's interactive report: draws the charts from the JSON in #gp-data with Plotly, and
// redraws them when a control changes. No network access: everything is in the page.
(function () {
  "use strict";
  const DATA = JSON.parse(document.getElementById("gp-data").textContent);
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                   "#7f7f7f", "#bcbd22", "#17becf"];
  const SEVERITY = {critical: "#d62728", warning: "#ff7f0e", info: "#1f77b4"};
  const CONFIG = {displaylogo: false, responsive: true};
  const state = {scale: "log", smooth: 0, x: "step", query: "", group: "", layerStream: 0, metric: "log_norm"};
  const several = DATA.streams.length > 1;
  // What each per-layer metric of the layer charts is, by its key in the data.
  const METRICS = {log_norm: "gradient L2 norm", log_ratio: "gradient norm / weight norm",
                   log_update_ratio: "update norm / weight norm"};

  const $ = (id) => document.getElementById(id);
  const colour = (i) => PALETTE[i % PALETTE.length];
  const xTitle = () => (state.x === "step" ? "step" : "wall time (s)");

  // Exponential moving average as TensorBoard draws it (debiased), skipping missing values.
  function smooth(values) {
    const w = state.smooth;
    if (!w) return values;
    let last = 0, weight = 0;
    return values.map((v) => {
      if (v === null) return null;
      last = last * w + (1 - w) * v;
      weight = weight * w + (1 - w);
      return last / weight;
    });
  }

  function band(x, series, name, col, group, dash) {
    const traces = [];
    if (series.low) {
      traces.push({x, y: series.low, mode: "lines", line: {width: 0}, hoverinfo: "skip", showlegend: false,
                   legendgroup: group, name: name + " (min per bin)", connectgaps: false});
      traces.push({x, y: series.high, mode: "lines", line: {width: 0}, fill: "tonexty", fillcolor: col + "33",
                   legendgroup: group, showlegend: false, name: name + " (max per bin)", hoverinfo: "skip"});
    }
    traces.push({x, y: smooth(series.mid), mode: "lines", name, legendgroup: group,
                 line: {color: col, width: 1.3, dash: dash || "solid"}});
    return traces;
  }

  function layout(title, ytitle, logAxis, extra) {
    return Object.assign({
      title: {text: title, font: {size: 14}}, margin: {l: 60, r: 20, t: 40, b: 40}, height: 380,
      xaxis: {title: {text: xTitle()}}, hovermode: "x unified",
      yaxis: {title: {text: ytitle}, type: logAxis ? state.scale : "linear", exponentformat: "power"},
      legend: {orientation: "h", y: -0.18, x: 0, yanchor: "top"},
    }, extra || {});
  }

  // Findings as shaded spans (spikes as thin lines) on the time axis, coloured by severity.
  function findingShapes() {
    const shapes = [];
    DATA.streams.forEach((s) => s.findings.forEach((f) => {
      f[state.x].forEach(([a, b]) => {
        const col = SEVERITY[f.severity];
        shapes.push(a === b
          ? {type: "line", xref: "x", yref: "paper", x0: a, x1: a, y0: 0, y1: 1,
             line: {color: col, width: 1, dash: "dot"}}
          : {type: "rect", xref: "x", yref: "paper", x0: a, x1: b, y0: 0, y1: 1, fillcolor: col,
             opacity: 0.13, line: {width: 0}, layer: "below"});
      });
    }));
    return shapes;
  }

  function findingLabels() {
    const labels = [];
    DATA.streams.forEach((s) => s.findings.forEach((f) => {
      const [a] = f[state.x][0];
      labels.push({x: a, y: 1, xref: "x", yref: "paper", text: (several ? s.label + ": " : "") + f.kind,
                   showarrow: false, textangle: -90, xanchor: "right", yanchor: "top",
                   font: {size: 9, color: SEVERITY[f.severity]}});
    }));
    return labels;
  }

  function normTraces() {
    const traces = [];
    DATA.streams.forEach((s, i) => {
      const x = s[state.x], col = colour(i), name = several ? s.label : "global norm";
      traces.push(...band(x, s.norm, name + " (pre-clip)", col, "norm" + i));
      if (s.post) traces.push(...band(x, s.post, name + " (post-clip)", col, "post" + i, "dot"));
      if (s.recorded_threshold) {
        traces.push({x, y: s.recorded_threshold, mode: "lines", name: name + ": recorded clip threshold",
                     line: {color: several ? col : "black", width: 1, dash: "dash"}});
      }
      s.thresholds.forEach((t, k) => {
        traces.push({x: t[state.x], y: t.mid, mode: "lines", name: (several ? s.label + ": " : "") + t.spec,
                     line: {color: PALETTE[(k + 2) % PALETTE.length], width: 1, dash: "dashdot"},
                     visible: several ? "legendonly" : true});
      });
      if (s.nonfinite.step.length) {
        // on a second, fixed axis: at the top of the chart under either scale
        traces.push({x: s.nonfinite[state.x], y: s.nonfinite.step.map(() => 1), yaxis: "y2", mode: "markers",
                     name: name + ": non-finite step", marker: {symbol: "x", color: "#d62728", size: 7},
                     hovertemplate: "non-finite<extra></extra>"});
      }
    });
    return traces;
  }

  function drawNorm() {
    const extra = {shapes: findingShapes(), annotations: findingLabels(),
                   yaxis2: {overlaying: "y", range: [0, 1.05], visible: false, fixedrange: true}};
    return Plotly.react("gp-norm", normTraces(),
                        layout("global gradient norm, pre- and post-clip", "gradient L2 norm", true, extra), CONFIG);
  }

  function drawSeries(id, key, title, ytitle, logAxis) {
    const traces = [];
    DATA.streams.forEach((s, i) => {
      if (s[key]) traces.push(...band(s[state.x], s[key], several ? s.label : key, colour(i), key + i));
    });
    if (!traces.length) return Promise.resolve();
    return Plotly.react(id, traces, layout(title, ytitle, logAxis, {shapes: findingShapes()}), CONFIG);
  }

  function matcher(query) {
    const q = query.trim();
    if (!q) return () => true;
    try {
      const re = new RegExp(q, "i");
      return (name) => re.test(name);
    } catch (e) {
      const low = q.toLowerCase();
      return (name) => name.toLowerCase().includes(low);
    }
  }

  // The layers of the chosen stream that the search box and the group filter keep, in depth order.
  function chosenLayers() {
    const s = DATA.streams[state.layerStream];
    if (!s || !s.layers) return {s, keep: []};
    const match = matcher(state.query);
    const keep = s.layers.names.map((n, i) => i)
      .filter((i) => match(s.layers.names[i]) && (!state.group || s.layers.groups[i] === state.group));
    return {s, keep};
  }

  function drawLayers() {
    const {s, keep} = chosenLayers();
    if (!s || !s.layers) return Promise.resolve();
    const L = s.layers, x = L[state.x], values = L[state.metric] || L.log_norm;
    const traces = keep.map((i, k) => ({
      x, y: smooth(values[i].map((v) => (v === null ? null : Math.pow(10, v)))), mode: "lines",
      name: L.names[i], line: {color: colour(k), width: 1, dash: L.vector[i] ? "dot" : "solid"},
    }));
    const ytitle = METRICS[L[state.metric] ? state.metric : "log_norm"];
    $("gp-layer-count").textContent = keep.length + " of " + L.names.length + " layers";
    const extra = {height: 420, showlegend: true, legend: {orientation: "v", x: 1.02, y: 1, font: {size: 9}},
                   margin: {l: 60, r: 10, t: 40, b: 40}, hovermode: "closest"};
    return Plotly.react("gp-layers", traces, layout("per-layer " + ytitle, ytitle, true, extra), CONFIG);
  }

  function drawHeatmap() {
    const {s, keep} = chosenLayers();
    if (!s || !s.layers) return Promise.resolve();
    const L = s.layers, values = L[state.metric] || L.log_norm;
    const z = keep.map((i) => values[i]);
    const trace = {type: "heatmap", x: L[state.x], y: keep.map((i) => L.names[i]), z, colorscale: "Viridis",
                   colorbar: {title: {text: "log10"}}, hoverongaps: false,
                   hovertemplate: "%{y}<br>%{x}: 10^%{z:.2f}<extra></extra>"};
    const extra = {height: Math.min(900, 160 + 14 * keep.length), hovermode: "closest",
                   yaxis: {autorange: "reversed", type: "category", automargin: true, tickfont: {size: 9}},
                   margin: {l: 20, r: 20, t: 40, b: 40}};
    return Plotly.react("gp-heatmap", [trace],
                        layout("layer-by-step heatmap of log10 " + METRICS[L[state.metric] ? state.metric : "log_norm"]
                          + " (input at the top)", "", false, extra),
                        CONFIG);
  }

  function drawAll() {
    return Promise.all([drawNorm(), drawSeries("gp-loss", "loss", "loss", "loss", true),
                        drawSeries("gp-scale", "scale", "clip scale (1 = not clipped)", "scale", false),
                        drawLayers(), drawHeatmap()]);
  }

  function drawLayerCharts() {
    return Promise.all([drawLayers(), drawHeatmap()]);
  }

  function fillControls() {
    const withLayers = DATA.streams.map((s, i) => [s, i]).filter(([s]) => s.layers);
    const pick = $("gp-layer-stream");
    withLayers.forEach(([s, i]) => pick.add(new Option(s.label, String(i))));
    if (withLayers.length) state.layerStream = withLayers[0][1];
    pick.parentElement.hidden = withLayers.length < 2;
    fillGroups();
    const metric = $("gp-metric");
    [...metric.options].forEach((o) => { o.hidden = !withLayers.some(([s]) => s.layers[o.value]); });
    metric.parentElement.hidden = [...metric.options].filter((o) => !o.hidden).length < 2;
    $("gp-layer-section").hidden = !withLayers.length;
    $("gp-loss").hidden = !DATA.streams.some((s) => s.loss);
    $("gp-scale").hidden = !DATA.streams.some((s) => s.scale);
  }

  function fillGroups() {
    const select = $("gp-group"), s = DATA.streams[state.layerStream];
    select.length = 1;
    if (s && s.layers) [...new Set(s.layers.groups)].forEach((g) => select.add(new Option(g, g)));
    state.group = "";
  }

  function on(id, event, apply, redraw) {
    $(id).addEventListener(event, (e) => { apply(e.target.value); window.gradprobeDrawn = redraw(); });
  }

  fillControls();
  on("gp-scale-select", "change", (v) => { state.scale = v; }, drawAll);
  on("gp-smooth", "input", (v) => { state.smooth = Number(v); $("gp-smooth-value").textContent = v; }, drawAll);
  on("gp-x", "change", (v) => { state.x = v; }, drawAll);
  on("gp-search", "input", (v) => { state.query = v; }, drawLayerCharts);
  on("gp-group", "change", (v) => { state.group = v; }, drawLayerCharts);
  on("gp-metric", "change", (v) => { state.metric = v; }, drawLayerCharts);
  on("gp-layer-stream", "change", (v) => { state.layerStream = Number(v); fillGroups(); }, drawLayerCharts);
  window.gradprobeDrawn = drawAll();
})();
