// The builder's small enhancements over its plain forms: the data picker inserts references at the cursor,
// expressions are checked as they are typed, and (when SortableJS is installed) cards can be dragged.
// Everything here is optional: without it every control still works as a form.
(function () {
  "use strict";

  function insertAtCursor(field, text) {
    var start = field.selectionStart == null ? field.value.length : field.selectionStart;
    var end = field.selectionEnd == null ? field.value.length : field.selectionEnd;
    field.value = field.value.slice(0, start) + text + field.value.slice(end);
    field.focus();
    field.setSelectionRange(start + text.length, start + text.length);
    field.dispatchEvent(new Event("input", { bubbles: true }));
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest(".picker__item");
    if (!button) return;
    var field = document.getElementById(button.dataset.target);
    if (!field) return;
    var expression = button.dataset.insert;
    insertAtCursor(field, button.dataset.widget === "template" ? "{{ " + expression + " }}" : expression);
    var details = button.closest("details");
    if (details) details.open = false;
  });

  // Live checks: the server says whether the text parses and whether the steps it reads run before.
  var timers = new WeakMap();
  function checkTarget(field) {
    var id = field.id + "-check";
    var target = document.getElementById(id);
    if (!target) {
      target = document.createElement("p");
      target.id = id;
      target.className = "field-check";
      target.setAttribute("aria-live", "polite");
      field.insertAdjacentElement("afterend", target);
    }
    return target;
  }
  function check(field) {
    var url = field.dataset.checkUrl + "?widget=" + encodeURIComponent(field.dataset.widget || "cel") +
      "&text=" + encodeURIComponent(field.value);
    fetch(url, { credentials: "same-origin", headers: { "Accept": "text/plain" } })
      .then(function (response) { return response.ok ? response.text() : ""; })
      .then(function (text) {
        var target = checkTarget(field);
        target.textContent = text;
        target.classList.toggle("field-check--ok", text.indexOf("✓") === 0);
        target.classList.toggle("field-check--bad", text !== "" && text.indexOf("✓") !== 0);
      })
      .catch(function () { /* offline: the check on save still reports it */ });
  }
  document.addEventListener("input", function (event) {
    var field = event.target;
    if (!field.dataset || !field.dataset.checkUrl) return;
    clearTimeout(timers.get(field));
    timers.set(field, setTimeout(function () { check(field); }, 400));
  });

  // Drag and drop, as an enhancement: dropping a card posts the same "move to" operation as the menu.
  function csrfToken() {
    var input = document.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }
  function postMove(builder, key, lane, index) {
    var form = document.createElement("form");
    form.method = "post";
    form.action = builder.dataset.operationUrl;
    var fields = { csrfmiddlewaretoken: csrfToken(), revision: builder.dataset.revision, operation: "move_to",
      key: key, lane: lane, index: String(index), control: "moveto" };
    Object.keys(fields).forEach(function (name) {
      var input = document.createElement("input");
      input.type = "hidden";
      input.name = name;
      input.value = fields[name];
      form.appendChild(input);
    });
    document.body.appendChild(form);
    form.submit();
  }
  function enableDragging() {
    var builder = document.getElementById("builder");
    if (!builder || typeof window.Sortable === "undefined" || builder.classList.contains("builder--draggable")) return;
    builder.classList.add("builder--draggable");
    builder.querySelectorAll("ol.sequence").forEach(function (list) {
      window.Sortable.create(list, {
        group: "blocks",
        handle: ".drag-handle",
        draggable: ".block",
        fallbackOnBody: true,
        swapThreshold: 0.6,
        onEnd: function (event) {
          if (event.from === event.to && event.oldDraggableIndex === event.newDraggableIndex) return;
          postMove(builder, event.item.dataset.key, event.to.dataset.lane, event.newDraggableIndex);
        }
      });
    });
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", enableDragging);
  } else {
    enableDragging();
  }
  // An edit answered by htmx brings a new outline: make it draggable too.
  document.addEventListener("htmx:afterSettle", enableDragging);
})();

// A step's settings are saved with "Save step"; leaving with unsaved typing asks first, so nothing typed is
// lost to a closed tab or a stray link. Everything else in the builder is saved the moment it happens.
(function () {
  "use strict";
  var dirty = false;
  document.addEventListener("input", function (event) {
    if (event.target.closest && event.target.closest("form.step-form, form.inputs-form")) dirty = true;
  });
  document.addEventListener("submit", function () { dirty = false; });
  document.addEventListener("htmx:afterSwap", function () { dirty = false; });
  window.addEventListener("beforeunload", function (event) {
    if (dirty) {
      event.preventDefault();
      event.returnValue = "";
    }
  });

  // An agent tool's approval queue matters only when each call is asked first: it is shown then, and always
  // while a problem is on it (without this script it is always shown).
  function syncApprovalQueues() {
    document.querySelectorAll(".agent-tool-approval").forEach(function (box) {
      var policy = box.querySelector("select[name$='.approval']");
      var queue = box.querySelector("select[name$='.approval_queue']");
      var field = queue && queue.closest(".field");
      if (!policy || !field) return;
      field.hidden = policy.value !== "ask" && !field.classList.contains("field--invalid");
    });
  }
  document.addEventListener("change", function (event) {
    if (event.target.matches(".agent-tool-approval select")) syncApprovalQueues();
  });
  document.addEventListener("DOMContentLoaded", syncApprovalQueues);
  document.addEventListener("htmx:afterSwap", syncApprovalQueues);
})();
