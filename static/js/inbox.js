// The inbox's keyboard shortcuts, the live "new items" bar, and the decision form's guard on low-confidence
// fields. Everything here is an enhancement: without it, every action is a plain link or form.
(function () {
  "use strict";

  function typing(target) {
    return target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName));
  }

  function rows() { return Array.prototype.slice.call(document.querySelectorAll("[data-inbox-list] [data-row]")); }

  function move(step) {
    var list = rows();
    if (!list.length) return;
    var index = list.findIndex(function (row) { return row.classList.contains("is-current"); });
    var next = Math.max(0, Math.min(list.length - 1, index + step));
    list.forEach(function (row) { row.classList.remove("is-current"); });
    list[next].classList.add("is-current");
    var link = list[next].querySelector("[data-row-link]");
    if (link) link.focus();
  }

  function press(key) {
    var control = document.querySelector('[data-shortcut="' + key + '"]');
    if (control && !control.disabled) { control.click(); return true; }
    return false;
  }

  document.addEventListener("keydown", function (event) {
    if (event.altKey || event.ctrlKey || event.metaKey || typing(event.target)) return;
    var key = event.key;
    if (key === "j") { move(1); event.preventDefault(); }
    else if (key === "k") { move(-1); event.preventDefault(); }
    else if (key === "?") {
      var help = document.querySelector(".shortcuts");
      if (help) { help.open = !help.open; help.querySelector("summary").focus(); }
      event.preventDefault();
    } else if (key === "e") {
      var first = document.querySelector('[data-must-confirm="1"] input, [data-must-confirm="1"] select, [data-must-confirm="1"] textarea');
      if (first) { first.focus(); event.preventDefault(); }
    } else if (key === "n" || key === "c" || key === "a" || key === "r") {
      if (press(key)) event.preventDefault();
    }
  });

  // Approve stays disabled until every low-confidence field is confirmed or changed (the server checks too).
  var form = document.querySelector("[data-decision-form]");
  if (form) {
    var approve = form.querySelector("[data-approve]");
    var help = form.querySelector("[data-approve-help]");
    var update = function () {
      if (!approve) return;
      var open = 0;
      form.querySelectorAll('[data-must-confirm="1"]').forEach(function (field) {
        var box = field.querySelector("[data-confirm]");
        var input = field.querySelector("input:not([type=checkbox]):not([type=hidden]), select, textarea");
        var changed = input && input.value !== field.getAttribute("data-proposed");
        if (!(box && box.checked) && !changed) open += 1;
      });
      approve.disabled = open > 0;
      if (help) help.textContent = open ? open + " low-confidence field" + (open > 1 ? "s" : "") + " still to confirm or correct before you can approve." : "";
    };
    form.addEventListener("input", update);
    form.addEventListener("change", update);
    update();
  }

  document.querySelectorAll("[data-evidence-link]").forEach(function (link) {
    link.addEventListener("click", function () {
      document.querySelectorAll(".evidence.is-focused").forEach(function (mark) { mark.classList.remove("is-focused"); });
      var mark = document.getElementById("evidence-" + link.getAttribute("data-evidence-link"));
      if (mark) mark.classList.add("is-focused");
    });
  });

  var focus = document.querySelector("[data-focus]");
  if (focus) focus.focus();

})();
