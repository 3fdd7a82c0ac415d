// While a study renders: show progress, reload once it is open (or failed).
"use strict";

(() => {
  const id = JSON.parse(document.getElementById("study-id").textContent);
  const timer = setInterval(async () => {
    const p = await (await fetch(`/studies/${id}/progress.json`)).json();
    document.getElementById("rendered").textContent = p.rendered;
    document.getElementById("to-render").textContent = p.to_render;
    if (p.status !== "rendering") { clearInterval(timer); location.reload(); }
  }, 2000);
})();
