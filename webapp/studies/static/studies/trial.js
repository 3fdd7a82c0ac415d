// A 2AFC trial: voting opens once both clips have played through; a vote is sent once (the
// buttons lock; the server is idempotent anyway), then the next trial loads.
"use strict";

(() => {
  const trial = JSON.parse(document.getElementById("trial-id").textContent);
  const url = JSON.parse(document.getElementById("vote-url").textContent);
  const buttons = [...document.querySelectorAll("button.choice")];
  const ended = new Set();
  const bar = document.querySelector(".progress [data-percent]");  // set here: the CSP allows no inline style
  bar.style.width = `${bar.dataset.percent}%`;
  let sent = false;

  for (const id of ["left", "right"]) {
    const v = document.getElementById(id);
    v.addEventListener("ended", () => {
      ended.add(id);
      v.loop = true;  // keep it visible for comparison
      v.play();
      if (ended.size === 2) {
        buttons.forEach((b) => { b.disabled = false; });
        document.getElementById("wait").hidden = true;
      }
    });
    v.play().catch(() => {});
  }

  function csrf() {
    const m = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return m ? decodeURIComponent(m[1]) : "";
  }

  async function vote(choice) {
    if (sent || ended.size < 2) return;
    sent = true;
    buttons.forEach((b) => { b.disabled = true; });
    const message = document.getElementById("message");
    for (let attempt = 0; attempt < 5; attempt++) {  // a dropped connection: retry (the server dedupes)
      try {
        const r = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json", "X-CSRFToken": csrf()},
                                    body: JSON.stringify({trial, choice})});
        const body = await r.json();
        if (r.ok) { location.assign(body.next); return; }
        message.textContent = body.error && typeof body.error === "string" ? body.error : "Your answer was not accepted.";
        message.hidden = false;
        // 429: too fast; 409: the server counts the clips' duration from when it served the page,
        // so a vote right at the end of playback may come a moment early: wait and send it again
        if (r.status !== 429 && r.status !== 409) return;
        await new Promise((res) => setTimeout(res, r.status === 409 ? 1000 : 3000));
      } catch (e) {
        await new Promise((res) => setTimeout(res, 1000 * (attempt + 1)));
      }
    }
  }

  buttons.forEach((b) => b.addEventListener("click", () => vote(b.dataset.choice)));
  document.addEventListener("keydown", (e) => {
    const key = {ArrowLeft: "left", ArrowRight: "right", ArrowDown: "tie"}[e.key];
    if (key && buttons.some((b) => b.dataset.choice === key)) { e.preventDefault(); vote(key); }
  });
})();
