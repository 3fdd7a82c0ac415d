// New-experiment form: choosing a backbone fills in the fields it has defaults for (a real
// backbone's sampling steps, guidance, LoRA rank...), as `vpo train --backbone` does; choosing an
// algorithm shows only the fields it reads (data-only: the algorithms a field applies to, from
// the metadata of TrainConfig's fields; the server ignores the hidden ones too).
(function () {
  "use strict";
  const defaults = JSON.parse(document.getElementById("backbone-defaults").textContent);
  const algorithm = document.getElementById("id_algorithm");
  function showFieldsOf() {
    for (const field of document.querySelectorAll(".field[data-only]")) {
      field.hidden = !field.dataset.only.split(" ").includes(algorithm.value);
    }
  }
  if (algorithm) {
    algorithm.addEventListener("change", showFieldsOf);
    showFieldsOf();
  }
  const select = document.getElementById("id_backbone");
  if (!select) return;
  select.addEventListener("change", function () {
    const values = defaults[select.value] || {};
    for (const [name, value] of Object.entries(values)) {
      const input = document.getElementById("id_" + name);
      if (input) input.value = value;
    }
  });
})();
