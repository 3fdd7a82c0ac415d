// A 2AFC trial: voting opens once both clips have played through; a vote is sent once (the
// buttons lock; the server is idempotent anyway), then the next trial loads. With the vote go what
// the page measured: the display onset (ms from the page's start until both clips were playing),
// the reaction time (ms from that onset to the answer), how many times both clips had played
// through, and how often and for how long the page was hidden in between (another tab, a minimised
// window). A page restored from the back-forward cache is fetched again: the server decides what
// comes next (the done page after the last vote), never a stale copy.
"use strict";

(() => {
  window.addEventListener("pageshow", (e) => { if (e.persisted) location.reload(); });
  const trial = JSON.parse(document.getElementById("trial-id").textContent);
  const url = JSON.parse(document.getElementById("vote-url").textContent);
  const buttons = [...document.querySelectorAll("button.choice")];
  const bar = document.querySelector(".progress [data-percent]");  // set here: the CSP allows no inline style
  bar.style.width = `${bar.dataset.percent}%`;
  const plays = {left: 0, right: 0};  // play-throughs of each clip
  const playing = new Set();
  let onset = null;  // performance.now() when both clips were first playing
  let hiddenCount = 0, hiddenMs = 0, hiddenSince = null;
  let sent = false;

  document.addEventListener("visibilitychange", () => {
    if (document.hidden) { hiddenCount++; hiddenSince = performance.now(); }
    else if (hiddenSince !== null) { hiddenMs += performance.now() - hiddenSince; hiddenSince = null; }
  });

  for (const id of ["left", "right"]) {
    const v = document.getElementById(id);
    v.addEventListener("playing", () => {
      playing.add(id);
      if (onset === null && playing.size === 2) onset = performance.now();
    });
    v.addEventListener("ended", () => {
      plays[id]++;
      v.currentTime = 0;  // play again (not loop: a looping video never says it ended, and we count)
      v.play();
      if (plays.left > 0 && plays.right > 0) {
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

  function timing() {
    const now = performance.now();
    const hidden = hiddenMs + (hiddenSince === null ? 0 : now - hiddenSince);
    return {
      onset_ms: onset === null ? null : Math.round(onset),
      reaction_ms: onset === null ? null : Math.round(now - onset),
      plays: Math.min(plays.left, plays.right),
      hidden_count: hiddenCount,
      hidden_ms: Math.round(hidden),
    };
  }

  async function vote(choice) {
    if (sent || plays.left === 0 || plays.right === 0) return;
    sent = true;
    buttons.forEach((b) => { b.disabled = true; });
    const message = document.getElementById("message");
    const body = JSON.stringify({trial, choice, ...timing()});
    for (let attempt = 0; attempt < 5; attempt++) {  // a dropped connection: retry (the server dedupes)
      try {
        const r = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json", "X-CSRFToken": csrf()},
                                    body, cache: "no-store"});
        const answer = await r.json();
        if (r.ok) { location.assign(answer.next); return; }
        message.textContent = answer.error && typeof answer.error === "string" ? answer.error : "Your answer was not accepted.";
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
