// Copy buttons: <button type="button" class="button quiet copy" data-copy="#element-id">Copy</button>
// copies the text (or an input's value) of the element the selector names, and says so in the
// button for two seconds. The only script the dashboard runs; every page works without it (the
// text is shown and selectable), so it is progressive enhancement, allowed by the CSP ('self').
"use strict";
document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-copy]");
  if (!button) return;
  const source = document.querySelector(button.dataset.copy);
  if (!source) return;
  const text = "value" in source ? source.value : source.textContent.trim();
  const label = button.dataset.label || button.textContent;
  button.dataset.label = label;
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch (error) {
    // No clipboard (plain http on a remote host): select the text so Ctrl+C copies it.
    const range = document.createRange();
    range.selectNodeContents(source);
    window.getSelection().removeAllRanges();
    window.getSelection().addRange(range);
    button.textContent = "Selected: press Ctrl+C";
  }
  setTimeout(() => { button.textContent = label; }, 2000);
});
