// The conversation page's composer: Enter sends, Shift+Enter starts a new line, one send at a time.
(function () {
  "use strict";

  function setUp() {
    var form = document.getElementById("chat-composer");
    if (!form) return;
    var input = form.querySelector("[data-chat-input]");
    var send = form.querySelector("[data-chat-send]");
    var sending = false;

    form.addEventListener("submit", function (event) {
      if (sending) {
        event.preventDefault();
        return;
      }
      sending = true;
      if (send) {
        send.setAttribute("aria-disabled", "true");
        send.textContent = "Sending…";
      }
    });

    if (input) {
      input.addEventListener("keydown", function (event) {
        // While an input method composes (Japanese, Chinese), Enter picks a candidate, it does not send.
        if (event.key !== "Enter" || event.shiftKey || event.isComposing || event.keyCode === 229) return;
        event.preventDefault();
        if (typeof form.requestSubmit === "function") {
          form.requestSubmit();
        } else {
          form.submit();
        }
      });
    }

    // After a send the page opens at the new answer; keep the latest messages in view above the composer.
    var log = document.querySelector(".chat-log");
    if (log && log.lastElementChild && !window.location.hash) {
      log.lastElementChild.scrollIntoView({ block: "end" });
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", setUp);
  } else {
    setUp();
  }
})();
