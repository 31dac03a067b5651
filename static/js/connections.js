// Connection form: show only the settings and the secret of the chosen HTTP authentication method (or MCP
// transport). Without this script every group shows, and the server ignores the ones the choice does not use.
(function () {
  "use strict";

  function sync(form) {
    var select = form.querySelector('select[name="config_auth"], select[name="config_transport"]');
    if (!select) return;
    var groups = form.querySelectorAll("[data-auth-group]");
    for (var i = 0; i < groups.length; i++) {
      groups[i].hidden = groups[i].getAttribute("data-auth-group") !== select.value;
    }
  }

  function init() {
    var forms = document.querySelectorAll("form[data-connection-form]");
    for (var i = 0; i < forms.length; i++) {
      (function (form) {
        sync(form);
        form.addEventListener("change", function (event) {
          var name = event.target && event.target.name;
          if (name === "config_auth" || name === "config_transport") sync(form);
        });
      })(forms[i]);
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
