// New-experiment form: choosing a backbone fills in the fields it has defaults for (a real
// backbone's sampling steps, guidance, LoRA rank...), as `vpo train --backbone` does.
(function () {
  "use strict";
  const defaults = JSON.parse(document.getElementById("backbone-defaults").textContent);
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
