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
  // an image-to-video backbone takes an image prompt set (a first frame per prompt), a text-to-video
  // one a text set: switching between the two kinds picks a set of the new kind where the chosen
  // one does not fit (the server refuses a mismatch all the same, on the field)
  const i2v = JSON.parse(document.getElementById("image-to-video").textContent);
  const fit = {prompts: ["physics-train", "train"], heldout_prompts: ["physics-heldout", "heldout64"]};
  select.addEventListener("change", function () {
    const values = defaults[select.value] || {};
    for (const [name, value] of Object.entries(values)) {
      const input = document.getElementById("id_" + name);
      if (input) input.value = value;
    }
    const wantsImages = i2v.backbones.includes(select.value);
    for (const [name, [imageSet, textSet]] of Object.entries(fit)) {
      const input = document.getElementById("id_" + name);
      if (input && i2v.sets.includes(input.value) !== wantsImages) input.value = wantsImages ? imageSet : textSet;
    }
  });
})();
