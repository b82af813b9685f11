// The single-page app: a hash router, the shared event feed, the token field
// and the dashboard. Each page is a function (root, params, ctx) that draws
// into root and returns a cleanup function the router calls when leaving it,
// so that sockets, timers and event subscriptions never outlive their page.

import { EventFeed, api, getToken, setToken } from "/ui/api.js";
import { badge, clear, formatTime, h, relative, throttle } from "/ui/dom.js";
import { jobForm } from "/ui/form.js";
import { executionPage, jobDetail, jobsList, runningList } from "/ui/jobs.js";

const feed = new EventFeed();

function flash(message, kind = "info") {
  const el = document.getElementById("flash");
  el.textContent = message;
  el.className = `flash flash-${kind}`;
  el.hidden = false;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => {
    el.hidden = true;
  }, 6000);
}

function confirmDialog(text) {
  const dialog = document.getElementById("confirm-dialog");
  document.getElementById("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

function navigate(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

// -- dashboard ---------------------------------------------------------------------

function section(title, id, ...body) {
  return h("section", { class: "card", id }, h("h2", {}, title), ...body);
}

function table(headers, rows, empty) {
  if (!rows.length) return h("p", { class: "muted" }, empty);
  return h(
    "table",
    { class: "table" },
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))),
    h("tbody", {}, rows),
  );
}

function jobLink(name) {
  return h("a", { href: `#/jobs/${encodeURIComponent(name)}` }, name);
}

function dashboard(root, _params, ctx) {
  const body = h("div", { class: "grid" });
  clear(root, h("div", { class: "page-head" }, h("h1", {}, "Dashboard")), body);

  async function load() {
    const [stats, members, leader] = await Promise.all([
      api("GET", "/v1/stats"),
      api("GET", "/v1/members"),
      api("GET", "/v1/leader").catch(() => null),
    ]);
    if (!ctx.alive()) return;
    const s = stats.data;
    const leaderName = leader ? leader.data.Name : null;
    const totals = h(
      "div",
      { class: "stats" },
      h("div", { class: "stat", "data-testid": "stat-jobs", "data-count": s.jobs }, h("b", {}, s.jobs), " jobs"),
      h("a", { class: "stat", href: "#/running", "data-testid": "stat-running", "data-count": s.running }, h("b", {}, s.running), " running"),
      h("div", { class: "stat" }, h("b", {}, s.disabled ?? 0), " disabled"),
      Object.entries(s.by_status).map(([status, n]) =>
        h(
          "a",
          { class: "stat", href: `#/jobs?status=${status}`, "data-testid": `stat-${status}`, "data-count": n },
          h("b", {}, n),
          " ",
          badge(status),
        ),
      ),
    );
    const memberRows = members.data.map((m) =>
      h(
        "tr",
        {},
        h("td", {}, m.Name, m.Name === leaderName ? h("span", { class: "badge badge-leader" }, "leader") : null),
        h("td", {}, `${m.Addr}:${m.Port}`),
        h("td", {}, badge(m.statusText || String(m.Status))),
        h("td", {}, m.Tags?.server === "true" ? "server" : "agent"),
        h("td", { class: "muted" }, m.Tags?.dc || ""),
      ),
    );
    const upcomingRows = s.upcoming.map((u) =>
      h(
        "tr",
        { "data-testid": "upcoming-row" },
        h("td", {}, jobLink(u.job)),
        h("td", {}, formatTime(u.at)),
        h("td", { class: "muted" }, relative(u.at)),
      ),
    );
    const missedRows = [];
    for (const [job, reasons] of Object.entries(s.missed)) {
      for (const [reason, n] of Object.entries(reasons)) {
        missedRows.push(h("tr", {}, h("td", {}, jobLink(job)), h("td", {}, reason), h("td", { class: "num" }, n)));
      }
    }
    clear(
      body,
      section(
        "Cluster",
        "cluster",
        h("p", {}, "Leader: ", h("b", { "data-testid": "leader" }, leaderName || "none elected")),
        table(["Member", "Address", "Status", "Role", "DC"], memberRows, "No members known."),
      ),
      section("Jobs", "totals", totals),
      section("Upcoming fires", "upcoming", table(["Job", "At", ""], upcomingRows, "Nothing scheduled.")),
      section("Missed slots", "missed", table(["Job", "Reason", "Count"], missedRows, "No missed slots.")),
    );
  }

  // Stats cost one next-time computation per job: at most one reload a second.
  const reload = () => load().catch((err) => ctx.alive() && flash(err.message, "error"));
  const refresh = throttle(reload, 1000);
  reload();
  const unsubscribe = feed.subscribe(() => refresh());
  const timer = setInterval(refresh, 15000);
  return () => {
    unsubscribe();
    clearInterval(timer);
    refresh.cancel();
  };
}

// -- router --------------------------------------------------------------------------

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, search = ""] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const query = Object.fromEntries(new URLSearchParams(search));
  return { parts, query };
}

function resolve({ parts, query }) {
  if (parts.length === 0) return ["dashboard", dashboard, {}];
  if (parts.length === 1 && parts[0] === "running") return ["running", runningList, {}];
  if (parts[0] !== "jobs") return null;
  if (parts.length === 1) return ["jobs", jobsList, { query }];
  if (parts.length === 2 && parts[1] === "new") return ["new", jobForm, { name: null }];
  if (parts.length === 2) return ["jobs", jobDetail, { name: parts[1], query }];
  if (parts.length === 3 && parts[2] === "edit") return ["jobs", jobForm, { name: parts[1] }];
  if (parts.length === 4 && parts[2] === "executions") {
    return ["jobs", executionPage, { name: parts[1], id: parts[3] }];
  }
  return null;
}

let cleanup = null;
let generation = 0;

function route() {
  if (cleanup) {
    try {
      cleanup();
    } catch (err) {
      console.error(err);
    }
    cleanup = null;
  }
  generation += 1;
  const mine = generation;
  const root = document.getElementById("main");
  const found = resolve(parseHash());
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", Boolean(found) && link.dataset.nav === found[0]);
  }
  if (!found) {
    clear(root, h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/" }, "Back to the dashboard")));
    return;
  }
  const [, page, params] = found;
  const ctx = {
    alive: () => mine === generation,
    feed,
    flash,
    confirm: confirmDialog,
    navigate,
  };
  cleanup = page(root, params, ctx) || null;
}

function setupChrome() {
  const input = document.getElementById("token-input");
  input.value = getToken();
  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setToken(input.value.trim());
    flash(input.value.trim() ? "Token saved in this browser." : "Token cleared.");
  });
  const state = document.getElementById("feed-state");
  feed.onState((s) => {
    state.textContent = s === "live" ? "live" : s;
    state.className = `feed feed-${s}`;
  });
}

setupChrome();
feed.start();
window.addEventListener("hashchange", route);
route();
