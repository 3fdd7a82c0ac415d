// Sort a leaderboard table by the clicked column (numbers by data-value, runs by name); click again to reverse.
// The base row stays on top: it is the reference every interval is relative to.
document.querySelectorAll("table.sortable").forEach((table) => {
  table.querySelectorAll("thead th").forEach((th, col) => {
    th.style.cursor = "pointer";
    th.addEventListener("click", () => {
      const down = th.dataset.dir !== "desc";
      table.querySelectorAll("thead th").forEach((h) => delete h.dataset.dir);
      th.dataset.dir = down ? "desc" : "asc";
      const body = table.tBodies[0];
      const rows = [...body.rows].filter((r) => !r.classList.contains("base-row"));
      const key = (r) => r.cells[col].dataset.value;
      rows.sort((a, b) => {
        if (th.dataset.sort === "number") {
          const x = parseFloat(key(a)), y = parseFloat(key(b));
          if (isNaN(x) || isNaN(y)) return isNaN(x) - isNaN(y);  // missing values last
          return down ? y - x : x - y;
        }
        return down ? key(b).localeCompare(key(a)) : key(a).localeCompare(key(b));
      });
      rows.forEach((r) => body.appendChild(r));
    });
  });
});
