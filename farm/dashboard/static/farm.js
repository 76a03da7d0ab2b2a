/* Engine Farm dashboard: draws the charts whose ECharts options the server embedded, and polls a
   running job. No inline event handlers; options arrive as JSON in <script type="application/json">. */
(function () {
  "use strict";

  function readJson(id) {
    var node = document.getElementById(id);
    return node ? JSON.parse(node.textContent) : null;
  }

  function drawCharts() {
    var nodes = document.querySelectorAll("[data-chart]");
    window.farmCharts = {};
    nodes.forEach(function (el) {
      var option = readJson(el.getAttribute("data-chart"));
      if (!option || typeof echarts === "undefined") { return; }
      var chart = echarts.init(el, null, { renderer: "svg" });
      chart.setOption(option);
      chart.on("click", function (params) {
        var data = params.data;
        if (data && typeof data === "object" && !Array.isArray(data) && typeof data.url === "string" &&
            data.url.charAt(0) === "/") {
          window.location.href = data.url;
        }
      });
      window.farmCharts[el.id] = chart;
      el.setAttribute("data-rendered", String(chart.getOption().series.length));
    });
    window.addEventListener("resize", function () {
      Object.keys(window.farmCharts).forEach(function (k) { window.farmCharts[k].resize(); });
    });
  }

  function pollJob() {
    var panel = document.getElementById("live");
    if (!panel) { return; }
    var url = panel.getAttribute("data-live-url");
    var stateNode = document.getElementById("live-state");
    var logNode = document.getElementById("live-log");
    var bar = document.getElementById("live-bar");
    var detail = document.getElementById("live-detail");
    var steps = document.getElementById("live-steps");
    function render(body) {
      [stateNode, document.getElementById("head-state")].forEach(function (node) {
        if (node) { node.textContent = body.state; node.className = "chip state-" + body.state; }
      });
      var progress = body.progress || {};
      var fraction = progress.total ? Math.min(1, progress.done / progress.total) : 0;
      bar.style.width = Math.round(fraction * 100) + "%";
      detail.textContent = (progress.step || "waiting for a worker") + (progress.detail ? ": " + progress.detail : "") +
        (progress.total > 1 ? " (" + progress.done + "/" + progress.total + ")" : "");
      steps.textContent = "";
      (progress.steps || []).forEach(function (step, index, all) {
        var item = document.createElement("li");
        var done = index < all.length - 1 || body.final;
        item.className = done ? "done" : "current";
        item.textContent = step.step + (step.seconds !== undefined ? " " + step.seconds.toFixed(1) + " s" : "");
        steps.appendChild(item);
      });
      var atBottom = logNode.scrollTop + logNode.clientHeight >= logNode.scrollHeight - 8;
      logNode.textContent = body.log || "(no log yet)";
      if (atBottom) { logNode.scrollTop = logNode.scrollHeight; }
    }
    function tick() {
      fetch(url, { headers: { Accept: "application/json" } })
        .then(function (r) { return r.json(); })
        .then(function (body) {
          render(body);
          if (body.final) { window.location.reload(); } else { window.setTimeout(tick, 1500); }
        })
        .catch(function () { window.setTimeout(tick, 4000); });
    }
    tick();
  }

  function pickEngines() {
    var button = document.getElementById("compare-selected");
    if (!button) { return; }
    var boxes = document.querySelectorAll("input.pick-job");
    var picked = [];  // in the order they were picked: the first is A, the second B
    function update(event) {
      var box = event && event.target;
      if (box) {
        picked = picked.filter(function (b) { return b !== box; });
        if (box.checked) { picked.push(box); }
        while (picked.length > 2) { picked.shift().checked = false; }
      }
      if (picked.length === 2) {
        button.href = button.getAttribute("data-compare-url") + "?a=" + encodeURIComponent(picked[0].value) +
          "&b=" + encodeURIComponent(picked[1].value);
        button.setAttribute("aria-disabled", "false");
      } else {
        button.removeAttribute("href");
        button.setAttribute("aria-disabled", "true");
      }
      button.textContent = picked.length === 2 ? "Compare the 2 picked engines" : "Pick 2 engines to compare (" + picked.length + ")";
    }
    boxes.forEach(function (box) { box.addEventListener("change", update); });
    update();
  }

  document.addEventListener("DOMContentLoaded", function () { drawCharts(); pollJob(); pickEngines(); });
})();
