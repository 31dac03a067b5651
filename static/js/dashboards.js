// Dashboards: the Print button, and printing with every data table open (a closed <details> prints nothing).
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
  window.addEventListener("beforeprint", openAll);
  window.addEventListener("afterprint", restore);
})();
