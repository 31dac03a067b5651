// Dashboards: the Print button, printing with every data table open (a closed <details> prints nothing), and
// open disclosures kept open when a widget refreshes.
(function () {
  "use strict";
  var opened = [];

  function openAll() {
    opened = [];
    document.querySelectorAll("details").forEach(function (details) {
      if (!details.open) {
        details.open = true;
        opened.push(details);
      }
    });
  }

  function restore() {
    opened.forEach(function (details) { details.open = false; });
    opened = [];
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-print]").forEach(function (button) {
      button.hidden = false;
      button.addEventListener("click", function () { window.print(); });
    });
  });
  // A widget's refresh replaces its content: the data tables and "How this is computed" notes the reader had
  // open stay open (they carry ids for this).
  document.addEventListener("htmx:beforeSwap", function (event) {
    var target = event.detail.target;
    target.dashboardsOpen = Array.prototype.map.call(target.querySelectorAll("details[open][id]"), function (details) {
      return details.id;
    });
  });
  document.addEventListener("htmx:afterSwap", function (event) {
    (event.detail.target.dashboardsOpen || []).forEach(function (id) {
      var details = document.getElementById(id);
      if (details) { details.open = true; }
    });
  });
  window.addEventListener("beforeprint", openAll);
  window.addEventListener("afterprint", restore);
})();
