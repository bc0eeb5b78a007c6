// Injected by test_report_browser.py at the top of a report: records console errors, script errors
// and blocked requests, then drives the controls as a user would and writes what the charts drew
// into a pre element with id "probe" as JSON, for `chromium --dump-dom` to print.
window.__probe = {errors: [], violations: []};
const __error = console.error;
console.error = (...args) => { __probe.errors.push(args.map(String).join(" ")); __error.apply(console, args); };
window.addEventListener("error", (e) => __probe.errors.push("error: " + e.message));
window.addEventListener("unhandledrejection", (e) => __probe.errors.push("rejection: " + e.reason));
document.addEventListener("securitypolicyviolation", (e) => __probe.violations.push(e.violatedDirective + " " + e.blockedURI));
window.addEventListener("load", async () => {
  const out = {};
  const $ = (id) => document.getElementById(id);
  const drawn = (id) => [...document.querySelectorAll("#" + id + " .scatterlayer .trace path.js-line")]
    .filter((path) => /L/.test(path.getAttribute("d") || "")).length;  // a polyline, not a lone point
  const legend = (id) => [...document.querySelectorAll("#" + id + " .legendtext")].map((t) => t.textContent);
  const ticks = (id) => [...document.querySelectorAll("#" + id + " .ytick text")].map((t) => t.textContent);
  const set = async (id, value, event) => {
    $(id).value = value;
    $(id).dispatchEvent(new Event(event));
    await window.gradprobeDrawn;
    await new Promise((resolve) => setTimeout(resolve, 100));
  };
  const snapshot = () => ({
    norm_traces: $("gp-norm").data.length, norm_lines: drawn("gp-norm"), norm_legend: legend("gp-norm"),
    norm_axis: $("gp-norm").layout.yaxis.type, norm_ticks: ticks("gp-norm"),
    layer_lines: drawn("gp-layers"), layer_legend: legend("gp-layers"),
    heatmap_rows: $("gp-heatmap").data[0].y, heatmap_images: document.querySelectorAll("#gp-heatmap .hm image").length,
    loss_lines: drawn("gp-loss"),
  });
  try {
    await window.gradprobeDrawn;
    out.initial = snapshot();
    await set("gp-scale-select", "linear", "change");
    out.linear = snapshot();
    await set("gp-search", window.PROBE_QUERY || "", "input");
    out.searched = snapshot();
    await set("gp-search", "", "input");
    await set("gp-group", window.PROBE_GROUP || "", "change");
    out.grouped = snapshot();
    await set("gp-group", "", "change");
    out.metrics = [...$("gp-metric").options].filter((o) => !o.hidden).map((o) => o.value);
    for (const metric of out.metrics) {
      await set("gp-metric", metric, "change");
      out["metric_" + metric] = {...snapshot(), title: $("gp-layers").layout.yaxis.title.text,
                                 first: $("gp-layers").data[0].y.slice(0, 3)};
    }
  } catch (e) {
    out.exception = String(e && e.stack || e);
  }
  out.errors = __probe.errors;
  out.violations = __probe.violations;
  out.resources = performance.getEntriesByType("resource").map((r) => r.name);
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
