// The audit list answers a filter it cannot use with 400 and the form errors in the results fragment: show
// them in place, as a full page load would, instead of htmx's default of ignoring error responses.
document.addEventListener("htmx:beforeSwap", (event) => {
  const target = event.detail.target;
  if (event.detail.xhr.status === 400 && target && target.id === "audit-results") {
    event.detail.shouldSwap = true;
    event.detail.isError = false;
  }
});
