// mmed-node dashboard: live refresh and filtering, vanilla JS, no build step.
// The node renders (and escapes) every row; this script only swaps in the fresh rows it gets
// from /ui/fragment/jobs and hides the rows the filters exclude.
(function () {
  "use strict";
  var REFRESH_MS = 3000;

  function applyFilters() {
    var text = (document.getElementById("filter-text") || {}).value || "";
    var state = (document.getElementById("filter-state") || {}).value || "";
    var route = (document.getElementById("filter-route") || {}).value || "";
    var needle = text.trim().toLowerCase();
    document.querySelectorAll("#jobs tr[data-state]").forEach(function (row) {
      var shown = (!state || row.dataset.state === state) &&
        (!route || row.dataset.route === route) &&
        (!needle || row.dataset.text.indexOf(needle) !== -1);
      row.hidden = !shown;
    });
  }

  function refreshJobs() {
    fetch("/ui/fragment/jobs", { credentials: "same-origin", cache: "no-store" })
      .then(function (rsp) { return rsp.ok ? rsp.text() : Promise.reject(rsp.status); })
      .then(function (rows) {
        document.getElementById("jobs").innerHTML = rows;  // rendered and escaped by the node
        applyFilters();
        var stamp = document.getElementById("refreshed");
        if (stamp) { stamp.textContent = "updated " + new Date().toLocaleTimeString(); }
      })
      .catch(function () {
        var stamp = document.getElementById("refreshed");
        if (stamp) { stamp.textContent = "refresh failed"; }
      });
  }

  function colourSwatches() {
    document.querySelectorAll(".swatch[data-rgb]").forEach(function (el) {
      var rgb = el.dataset.rgb.split(",").map(Number);
      if (rgb.length === 3 && rgb.every(function (v) { return v >= 0 && v <= 255; })) {
        el.style.backgroundColor = "rgb(" + rgb.join(",") + ")";
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    colourSwatches();
    ["filter-text", "filter-state", "filter-route"].forEach(function (id) {
      var el = document.getElementById(id);
      if (el) { el.addEventListener("input", applyFilters); }
    });
    if (document.body.dataset.live !== "1") { return; }
    if (document.getElementById("jobs")) {
      setInterval(refreshJobs, REFRESH_MS);
    } else {
      setTimeout(function () { window.location.reload(); }, REFRESH_MS);
    }
  });
})();
