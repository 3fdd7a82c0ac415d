// The study form: how many gold trials (attention checks) each volunteer will get, as the server
// computes it (webapp/studies/models.py: gold_trials), updated as the researcher types.
"use strict";

(() => {
  const trials = document.getElementById("id_trials_per_participant");
  const rate = document.getElementById("id_gold_rate");
  const out = document.getElementById("gold-count");

  function goldTrials(t, r) {
    if (!(r > 0) || !(t >= 2)) return 0;
    return Math.min(t - 1, Math.max(1, Math.floor(t * r + 0.5)));
  }

  function show() {
    const t = parseInt(trials.value, 10), r = parseFloat(rate.value);
    if (!Number.isFinite(t) || !Number.isFinite(r)) { out.textContent = ""; return; }
    const g = goldTrials(t, r);
    out.dataset.gold = g;
    out.textContent = g ? `Each volunteer gets ${g} gold trial${g === 1 ? "" : "s"} and ${t - g} comparison${t - g === 1 ? "" : "s"}.`
                        : r > 0 ? "Gold trials need two or more trials per volunteer."
                                : "No gold trials: no attention checks.";
  }
  trials.addEventListener("input", show);
  rate.addEventListener("input", show);
  show();
})();
