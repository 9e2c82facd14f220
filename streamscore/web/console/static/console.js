// The console's one script: draws the charts of a page, and keeps the queue live.
// No page has an inline script (the Content-Security-Policy forbids them): data comes in
// <script type="application/json"> blocks, and text from the server is set as text, never HTML.
"use strict";

function drawCharts() {
  for (const block of document.querySelectorAll('script[type="application/json"][data-chart]')) {
    const target = document.getElementById(block.dataset.chart);
    if (!target || target.dataset.drawn) continue;
    const spec = JSON.parse(block.textContent);
    window.Plotly.newPlot(target, spec.figure.data, spec.figure.layout, spec.config);
    target.dataset.drawn = "1";
  }
}

// ---------------------------------------------------------------- the live queue

let refreshing = null;

async function refreshQueue() {
  // The page itself, fetched again and parsed as an inert document (DOMParser runs no script):
  // its #queue replaces ours, rendered and escaped by the server as on the first load.
  const response = await fetch(window.location.href, {
    headers: {"Accept": "text/html"}, credentials: "same-origin", cache: "no-store",
  });
  if (!response.ok) return;
  const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
  const next = fresh.getElementById("queue");
  const current = document.getElementById("queue");
  if (next && current) current.replaceWith(document.adoptNode(next));
}

function scheduleRefresh(delayMs) {
  if (refreshing !== null) return;
  refreshing = setTimeout(async () => {
    try { await refreshQueue(); } finally { refreshing = null; }
    highlight();
  }, delayMs);
}

const recent = new Map();  // lead id -> when it was announced

function highlight() {
  const now = Date.now();
  for (const row of document.querySelectorAll("#queue tr[data-lead-id]")) {
    const when = recent.get(row.dataset.leadId);
    if (when !== undefined && now - when < 10000) row.classList.add("flash");
  }
}

function announce(handoff) {
  const notices = document.getElementById("notices");
  const notice = document.createElement("p");
  notice.className = "notice";
  notice.dataset.leadId = handoff.lead_id;
  const link = document.createElement("a");
  try {
    link.href = "/lead?id=" + encodeURIComponent(handoff.lead_id);
  } catch (_) {
    // a lone surrogate has no URL encoding: the notice goes without a link
  }
  link.textContent = handoff.lead_id;
  notice.append("Handed off just now: ", link,
    ` (${handoff.new_tier}, score ${Number(handoff.score).toFixed(1)}, grade ${handoff.grade})`);
  notices.prepend(notice);
  while (notices.children.length > 5) notices.lastElementChild.remove();
  recent.set(handoff.lead_id, Date.now());
}

function liveQueue() {
  const queue = document.getElementById("queue");
  if (!queue) return;
  const status = document.getElementById("live-status");
  const source = new EventSource("/events");
  source.addEventListener("open", () => {
    status.className = "on";
    status.textContent = "(live)";
  });
  source.addEventListener("error", () => {
    status.className = "off";
    status.textContent = "(reconnecting)";
  });
  source.addEventListener("handoff", (message) => {
    announce(JSON.parse(message.data));
    scheduleRefresh(300);  // a burst of handoffs: one refresh
  });
  const everyMs = 1000 * Number(queue.dataset.refreshS || 30);
  setInterval(() => scheduleRefresh(0), everyMs);
}

document.addEventListener("DOMContentLoaded", () => {
  if (window.Plotly) drawCharts();
  liveQueue();
});
