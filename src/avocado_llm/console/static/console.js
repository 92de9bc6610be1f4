// Avocado console: progressive enhancement only; every page works without it.
// Charts: each <canvas data-chart="ID"> is drawn by Chart.js (vendor/chart.umd.min.js) from
// the JSON configuration in <script type="application/json" id="ID">, built by the server.
(function () {
  "use strict";
  function drawCharts() {
    if (typeof window.Chart === "undefined") return;
    document.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
      var source = document.getElementById(canvas.dataset.chart);
      if (!source) return;
      new window.Chart(canvas, JSON.parse(source.textContent));
    });
  }
  function confirmForms() {
    document.querySelectorAll("button[data-confirm]").forEach(function (button) {
      button.addEventListener("click", function (event) {
        if (!window.confirm(button.dataset.confirm)) event.preventDefault();
      });
    });
  }
  function printButtons() {
    document.querySelectorAll("[data-print]").forEach(function (button) {
      button.addEventListener("click", function () { window.print(); });
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    drawCharts();
    confirmForms();
    printButtons();
  });
})();
