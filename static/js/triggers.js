// Copy buttons on the trigger pages: a button with data-copy="<id>" copies that element's text.
// Without JavaScript (or clipboard access) the text stays selectable, so nothing is lost.
document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const source = document.getElementById(button.dataset.copy);
  if (!source) return;
  try {
    await navigator.clipboard.writeText(source.textContent.trim());
  } catch {
    const range = document.createRange();
    range.selectNodeContents(source);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    return;
  }
  let note = button.nextElementSibling;
  if (!note || !note.classList.contains("copied")) {
    note = document.createElement("span");
    note.className = "copied";
    note.setAttribute("role", "status");
    button.after(note);
  }
  note.textContent = "Copied";
});
