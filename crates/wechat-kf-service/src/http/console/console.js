// The console's script (inside the binary): live updates and forms without a page load.
// Every page works without it.
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]');
  const live = () => Array.from(document.querySelectorAll("[data-live]"));

  async function refresh(elements) {
    for (const el of elements) {
      try {
        const r = await fetch(el.dataset.live, { credentials: "same-origin" });
        if (r.ok) el.innerHTML = await r.text();
      } catch (e) { /* the next event tries again */ }
    }
  }

  if (csrf && live().length > 0 && "EventSource" in window) {
    const events = new EventSource("/console/events");
    events.addEventListener("change", () => refresh(live()));
    // A change between the page's rendering and the stream's start sends no event: catch up
    // once the stream is open (also after a reconnection).
    events.addEventListener("open", () => refresh(live()));
  }

  for (const form of document.querySelectorAll("form[data-refresh]")) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const button = form.querySelector('button[type="submit"]');
      if (button) button.disabled = true;
      try {
        const r = await fetch(form.getAttribute("action"), {
          method: "POST",
          credentials: "same-origin",
          headers: { "accept": "application/json", "x-csrf-token": csrf ? csrf.content : "" },
          body: new URLSearchParams(new FormData(form)),
        });
        const text = form.querySelector('input[name="text"]');
        if (r.ok && text) text.value = "";
        let notice = form.querySelector(".notice");
        const body = await r.json().catch(() => ({}));
        const message = body.notice || (r.ok ? "" : (body.error || ("Failed: " + r.status)));
        if (message) {
          if (!notice) {
            notice = document.createElement("p");
            notice.className = "notice";
            notice.setAttribute("role", "status");
            form.appendChild(notice);
          }
          notice.textContent = message;
        } else if (notice) {
          notice.remove();
        }
        const ids = form.dataset.refresh.split(" ");
        await refresh(ids.map((id) => document.getElementById(id)).filter(Boolean));
      } finally {
        if (button) button.disabled = false;
        const text = form.querySelector('input[name="text"]');
        if (text) text.focus();
      }
    });
  }

  // The sandbox prints the login URL with the token after '#': never sent to the server.
  const token = document.getElementById("token");
  if (token && location.hash.startsWith("#token=")) {
    token.value = decodeURIComponent(location.hash.slice(7));
    history.replaceState(null, "", location.pathname);
    token.form.submit();
  }
})();
