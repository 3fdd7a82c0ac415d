// Live results: a notice of new votes arrives over the websocket (at most one a second) -> refetch
// the summary two seconds later, so that the votes of that second are all in (not while the
// researcher is typing an exclusion's reason into it).
"use strict";

(() => {
  const id = JSON.parse(document.getElementById("study-id").textContent);
  let pending = false, delay = 500;

  async function refresh() {
    pending = false;
    const typing = document.activeElement && document.activeElement.closest("#summary form");
    if (typing) { pending = true; setTimeout(refresh, 2000); return; }  // not under the researcher's hands
    const html = await (await fetch(location.pathname)).text();
    const fresh = new DOMParser().parseFromString(html, "text/html").querySelector("#summary");
    if (fresh) document.querySelector("#summary").replaceWith(fresh);
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/ws/studies/${id}/`);
    ws.onopen = () => { delay = 500; document.getElementById("live").textContent = "live"; refresh(); };
    ws.onmessage = () => { if (!pending) { pending = true; setTimeout(refresh, 2000); } };
    ws.onclose = (e) => {
      if (e.code === 4403) return;
      document.getElementById("live").textContent = "reconnecting…";
      setTimeout(connect, delay);
      delay = Math.min(2 * delay, 15000);
    };
  }
  connect();
})();
