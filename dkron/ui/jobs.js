// Jobs list, job detail with its execution history, and one execution with
// its output followed live while it runs.

import { api, jobPath, streamExecution } from "/ui/api.js";
import {
  badge,
  clear,
  duration,
  executionStatus,
  formatTime,
  h,
  lastLine,
  relative,
  throttle,
} from "/ui/dom.js";

const PAGE = 20;

function jobHash(name, ...rest) {
  return `#/jobs/${[name, ...rest].map(encodeURIComponent).join("/")}`;
}

function pager(start, shown, total, go) {
  const end = start + shown;
  return h(
    "div",
    { class: "pager" },
    h("button", { class: "btn btn-small", disabled: start <= 0, onclick: () => go(Math.max(0, start - PAGE)), "data-testid": "prev" }, "‹ Prev"),
    h("span", { class: "muted", "data-testid": "page-info" }, total ? `${start + 1}–${end} of ${total}` : "0 of 0"),
    h("button", { class: "btn btn-small", disabled: end >= total, onclick: () => go(start + PAGE), "data-testid": "next" }, "Next ›"),
  );
}

// Actions shared by the list and the detail page. Each resolves once the
// server answered, and reports failures in the flash bar.
export async function runJob(ctx, name) {
  try {
    await api("POST", jobPath(name, "run"));
    ctx.flash(`Started ${name}.`);
    return true;
  } catch (err) {
    ctx.flash(err.status === 404 ? `${name} cannot run: no node can take it.` : err.message, "error");
    return false;
  }
}

export async function toggleJob(ctx, name) {
  try {
    const { data } = await api("POST", jobPath(name, "toggle"));
    ctx.flash(`${name} is now ${data.disabled ? "disabled" : "enabled"}.`);
  } catch (err) {
    ctx.flash(err.message, "error");
  }
}

export async function deleteJob(ctx, name) {
  if (!(await ctx.confirm(`Delete job "${name}" and all its executions?`))) return false;
  try {
    await api("DELETE", jobPath(name));
    ctx.flash(`Deleted ${name}.`);
    return true;
  } catch (err) {
    ctx.flash(err.message, "error");
    return false;
  }
}

// -- list ------------------------------------------------------------------------------

export function jobsList(root, { query }, ctx) {
  const state = {
    q: query.q || "",
    status: query.status || "",
    start: Math.max(0, Number.parseInt(query.start || "0", 10) || 0),
  };
  const search = h("input", { type: "search", placeholder: "Search name or display name", value: state.q, "data-testid": "job-search" });
  const statusSelect = h(
    "select",
    { "data-testid": "status-filter" },
    ["", "success", "failed", "partially_failed", "untriggered"].map((s) =>
      h("option", { value: s, selected: s === state.status }, s ? s.replace("_", " ") : "any status"),
    ),
  );
  const body = h("div", {});
  clear(
    root,
    h("div", { class: "page-head" }, h("h1", {}, "Jobs"), h("a", { class: "btn btn-primary", href: "#/jobs/new" }, "New job")),
    h("div", { class: "toolbar" }, search, statusSelect),
    body,
  );

  function remember() {
    const params = new URLSearchParams();
    if (state.q) params.set("q", state.q);
    if (state.status) params.set("status", state.status);
    if (state.start) params.set("start", String(state.start));
    const text = params.toString();
    history.replaceState(null, "", `#/jobs${text ? `?${text}` : ""}`);
  }

  let loads = 0;
  async function load() {
    const mine = ++loads;
    const { data, total } = await api("GET", "/v1/jobs", {
      params: { q: state.q, status: state.status, _start: state.start, _end: state.start + PAGE },
    });
    if (!ctx.alive() || mine !== loads) return; // a newer search is on its way
    if (!data.length && state.start > 0 && total > 0) {
      state.start = Math.max(0, Math.floor((total - 1) / PAGE) * PAGE);
      remember();
      refresh();
      return;
    }
    const rows = data.map((job) =>
      h(
        "tr",
        { "data-job": job.name },
        h("td", {}, h("a", { href: jobHash(job.name) }, job.name), job.displayname ? h("div", { class: "muted" }, job.displayname) : null),
        h("td", {}, h("code", {}, job.schedule || (job.parent_job ? `after ${job.parent_job}` : ""))),
        h("td", {}, badge(job.status), job.disabled ? h("span", { class: "badge badge-disabled" }, "disabled") : null),
        h("td", { class: "num" }, h("span", { class: "ok" }, job.success_count), " / ", h("span", { class: "bad" }, job.error_count)),
        h("td", {}, job.disabled ? "—" : formatTime(job.next), h("div", { class: "muted" }, job.disabled ? "" : relative(job.next))),
        h(
          "td",
          {},
          h(
            "div",
            { class: "row-actions" },
            h("button", { class: "btn btn-small", onclick: () => runJob(ctx, job.name) }, "Run"),
            h("button", { class: "btn btn-small", onclick: () => toggleJob(ctx, job.name).then(refresh) }, job.disabled ? "Enable" : "Disable"),
            h("a", { class: "btn btn-small", href: jobHash(job.name, "edit") }, "Edit"),
          ),
        ),
      ),
    );
    clear(
      body,
      rows.length
        ? h(
            "table",
            { class: "table", "data-testid": "jobs-table" },
            h("thead", {}, h("tr", {}, ["Job", "Schedule", "Status", "OK / Err", "Next", ""].map((x) => h("th", {}, x)))),
            h("tbody", {}, rows),
          )
        : h("p", { class: "muted", "data-testid": "no-jobs" }, state.q || state.status ? "No job matches." : "No jobs yet."),
      pager(state.start, data.length, total ?? data.length, (start) => {
        state.start = start;
        remember();
        refresh();
      }),
    );
  }

  const refresh = throttle(() => load().catch((err) => ctx.alive() && ctx.flash(err.message, "error")), 200);
  search.addEventListener("input", () => {
    state.q = search.value;
    state.start = 0;
    remember();
    refresh();
  });
  statusSelect.addEventListener("change", () => {
    state.status = statusSelect.value;
    state.start = 0;
    remember();
    refresh();
  });
  refresh();
  const unsubscribe = ctx.feed.subscribe((event) => {
    if (event.type === "job" || event.type === "execution" || event.type === "resync") refresh();
  });
  return () => {
    unsubscribe();
    refresh.cancel();
  };
}

// -- detail -----------------------------------------------------------------------------

function facts(pairs) {
  return h(
    "dl",
    { class: "facts" },
    pairs.filter(([, v]) => v !== null && v !== undefined && v !== "").map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]),
  );
}

export function jobDetail(root, { name }, ctx) {
  const head = h("div", {});
  const info = h("div", {});
  const history = h("div", {});
  let start = 0;
  clear(root, head, info, h("section", { class: "card" }, h("h2", {}, "Executions"), history));

  let jobLoads = 0;
  async function loadJob() {
    const mine = ++jobLoads;
    let job;
    try {
      job = (await api("GET", jobPath(name))).data;
    } catch (err) {
      if (!ctx.alive()) return;
      clear(head, h("h1", {}, name));
      clear(info, h("p", { class: "error" }, err.status === 404 ? "This job does not exist (any more)." : err.message));
      return;
    }
    const next = await api("GET", jobPath(name, "next"), { params: { count: 5 } }).catch(() => ({ data: [] }));
    if (!ctx.alive() || mine !== jobLoads) return;
    clear(
      head,
      h(
        "div",
        { class: "page-head" },
        h("h1", { "data-testid": "job-title" }, job.name, " ", badge(job.status), job.disabled ? h("span", { class: "badge badge-disabled" }, "disabled") : null),
        h(
          "div",
          { class: "row-actions" },
          h("button", { class: "btn btn-primary", "data-testid": "run-job", onclick: () => runJob(ctx, name).then(() => refreshHistory()) }, "Run now"),
          h("button", { class: "btn", "data-testid": "toggle-job", onclick: () => toggleJob(ctx, name).then(refreshJob) }, job.disabled ? "Enable" : "Disable"),
          h("a", { class: "btn", href: jobHash(name, "edit"), "data-testid": "edit-job" }, "Edit"),
          h("button", { class: "btn btn-danger", "data-testid": "delete-job", onclick: async () => (await deleteJob(ctx, name)) && ctx.navigate("#/jobs") }, "Delete"),
        ),
      ),
    );
    const cfg = job.executor_config || {};
    clear(
      info,
      h(
        "div",
        { class: "grid" },
        h(
          "section",
          { class: "card" },
          h("h2", {}, "Job"),
          facts([
            ["Display name", job.displayname],
            ["Schedule", job.schedule ? h("code", {}, job.schedule) : null],
            ["Time zone", job.timezone || "server's"],
            ["Parent job", job.parent_job ? h("a", { href: jobHash(job.parent_job) }, job.parent_job) : null],
            ["Dependent jobs", (job.dependent_jobs || []).length ? job.dependent_jobs.map((d, i) => [i ? ", " : "", h("a", { href: jobHash(d) }, d)]) : null],
            ["Executor", job.executor],
            ["Command", cfg.command ? h("code", {}, cfg.command) : null],
            ["Concurrency", job.concurrency],
            ["Retries", String(job.retries)],
            ["Owner", [job.owner, job.owner_email ? ` <${job.owner_email}>` : ""].join("")],
          ]),
        ),
        h(
          "section",
          { class: "card" },
          h("h2", {}, "Activity"),
          facts([
            ["Successes", String(job.success_count)],
            ["Errors", String(job.error_count)],
            ["Last success", formatTime(job.last_success)],
            ["Last error", formatTime(job.last_error)],
            [
              "Next fires",
              next.data.length
                ? h("ol", { class: "times", "data-testid": "job-next" }, next.data.map((t) => h("li", {}, formatTime(t), " ", h("span", { class: "muted" }, relative(t)))))
                : "none",
            ],
          ]),
        ),
      ),
    );
  }

  let historyLoads = 0;
  async function loadHistory() {
    const mine = ++historyLoads;
    const { data, total } = await api("GET", jobPath(name, "executions"), {
      params: { _start: start, _end: start + PAGE, output_size_limit: 400 },
    });
    if (!ctx.alive() || mine !== historyLoads) return;
    const rows = data.map((ex) => {
      const status = executionStatus(ex);
      return h(
        "tr",
        { "data-execution": ex.id, "data-status": status },
        h("td", {}, h("a", { href: jobHash(name, "executions", ex.id), "data-testid": "execution-link" }, formatTime(ex.started_at))),
        h("td", {}, badge(status, { "data-testid": "execution-status" })),
        h("td", {}, ex.node_name || ""),
        h("td", {}, ex.trigger || "", ex.attempt > 1 ? ` #${ex.attempt}` : ""),
        h("td", { class: "num" }, status === "running" ? "…" : duration(ex.started_at, ex.finished_at)),
        h("td", {}, h("code", { class: "output-preview" }, lastLine(ex.output))),
      );
    });
    clear(
      history,
      rows.length
        ? h(
            "table",
            { class: "table", "data-testid": "executions-table" },
            h("thead", {}, h("tr", {}, ["Started", "Status", "Node", "Trigger", "Took", "Output (last line)"].map((x) => h("th", {}, x)))),
            h("tbody", {}, rows),
          )
        : h("p", { class: "muted" }, "No executions yet."),
      pager(start, data.length, total ?? data.length, (s) => {
        start = s;
        refreshHistory();
      }),
    );
  }

  const report = (err) => ctx.alive() && ctx.flash(err.message, "error");
  const refreshJob = throttle(() => loadJob().catch(report), 300);
  const refreshHistory = throttle(() => loadHistory().catch(report), 300);
  refreshJob();
  refreshHistory();
  const unsubscribe = ctx.feed.subscribe((event) => {
    if (event.type === "resync" || (event.type === "job" && event.job === name)) {
      if (event.action === "deleted") {
        ctx.flash(`${name} was deleted.`);
        ctx.navigate("#/jobs");
        return;
      }
      refreshJob();
      refreshHistory();
    } else if (event.type === "execution" && event.job === name) {
      refreshHistory();
      if (event.action === "finished") refreshJob();
    }
  });
  return () => {
    unsubscribe();
    refreshJob.cancel();
    refreshHistory.cancel();
  };
}

// -- one execution ------------------------------------------------------------------------

export function executionPage(root, { name, id }, ctx) {
  const statusSlot = h("span", {});
  const meta = h("div", {});
  const actions = h("div", { class: "row-actions" });
  const streamState = h("span", { class: "muted", "data-testid": "stream-state" });
  const follow = h("input", { type: "checkbox", checked: true, id: "follow" });
  const output = h("pre", { class: "output", "data-testid": "execution-output" });
  clear(
    root,
    h(
      "div",
      { class: "page-head" },
      h("h1", {}, h("a", { href: jobHash(name) }, name), " · execution ", statusSlot),
      actions,
    ),
    meta,
    h(
      "section",
      { class: "card" },
      h("div", { class: "output-head" }, h("h2", {}, "Output"), streamState, h("label", { class: "follow" }, follow, " follow")),
      output,
    ),
  );
  let stop = null;
  let ticker = null;

  function show(ex) {
    const status = executionStatus(ex);
    clear(statusSlot, badge(status, { "data-testid": "execution-status", "data-status": status }));
    clear(
      meta,
      h(
        "section",
        { class: "card" },
        facts([
          ["Id", h("code", {}, ex.id)],
          ["Node", ex.node_name],
          ["Trigger", ex.trigger],
          ["Attempt", ex.attempt ? String(ex.attempt) : ""],
          ["Scheduled for", ex.scheduled_time ? formatTime(ex.scheduled_time) : ""],
          ["Started", formatTime(ex.started_at)],
          ["Finished", status === "running" ? "still running" : formatTime(ex.finished_at)],
          ["Took", duration(ex.started_at, status === "running" ? null : ex.finished_at)],
        ]),
      ),
    );
    clear(
      actions,
      status === "running"
        ? h("button", { class: "btn btn-danger", "data-testid": "cancel-execution", onclick: cancel }, "Cancel")
        : null,
    );
    return status;
  }

  function scroll() {
    if (follow.checked) output.scrollTop = output.scrollHeight;
  }

  async function cancel(event) {
    event.target.disabled = true;
    try {
      await api("POST", `${jobPath(name, "executions", id)}/cancel`);
      ctx.flash("Cancel requested; the result follows when the worker stops it.");
    } catch (err) {
      ctx.flash(err.message, "error");
      event.target.disabled = false;
    }
  }

  async function load() {
    let ex;
    try {
      ex = (await api("GET", jobPath(name, "executions", id))).data;
    } catch (err) {
      if (ctx.alive()) clear(meta, h("p", { class: "error" }, err.status === 404 ? "This execution is not stored (any more)." : err.message));
      return;
    }
    if (!ctx.alive()) return;
    if (show(ex) !== "running") {
      output.textContent = ex.output || "";
      streamState.textContent = "";
      return;
    }
    // Running: the stream replays every chunk from the start, then follows.
    output.textContent = "";
    ticker = setInterval(() => ctx.alive() && show(ex), 1000);
    stop = streamExecution(name, id, {
      onOutput(_seq, text) {
        output.append(text);
        scroll();
      },
      onResult(final) {
        clearInterval(ticker);
        ex = final;
        show(final);
        // The result holds the whole captured output: the source of truth.
        output.textContent = final.output || "";
        scroll();
      },
      onState(s) {
        streamState.textContent = s === "live" ? "● live" : s === "closed" ? "" : s;
      },
    });
  }

  load();
  return () => {
    if (stop) stop();
    clearInterval(ticker);
  };
}

// -- running executions -----------------------------------------------------------------

// What runs now across the cluster (/v1/busy, Dkron's "Busy" list), with the
// end of each run's output and a way to stop it. Reloads on execution events
// and every few seconds, so that the durations and the output keep moving.
export function runningList(root, _params, ctx) {
  const body = h("div", {});
  clear(
    root,
    h("div", { class: "page-head" }, h("h1", {}, "Running")),
    h("section", { class: "card" }, body),
  );

  async function cancel(ex, button) {
    button.disabled = true;
    try {
      await api("POST", `${jobPath(ex.job_name, "executions", ex.id)}/cancel`);
      ctx.flash(`Cancel requested for ${ex.job_name}; the result follows when the worker stops it.`);
    } catch (err) {
      ctx.flash(err.message, "error");
      button.disabled = false;
    }
  }

  let loads = 0;
  async function load() {
    const mine = ++loads;
    const { data } = await api("GET", "/v1/busy");
    if (!ctx.alive() || mine !== loads) return;
    const rows = data.map((ex) => {
      const button = h("button", { class: "btn btn-small btn-danger", "data-testid": "cancel-running", onclick: () => cancel(ex, button) }, "Cancel");
      return h(
        "tr",
        { "data-running": ex.id, "data-job": ex.job_name },
        h("td", {}, h("a", { href: jobHash(ex.job_name) }, ex.job_name)),
        h("td", {}, h("a", { href: jobHash(ex.job_name, "executions", ex.id), "data-testid": "running-link" }, formatTime(ex.started_at))),
        h("td", { class: "num" }, duration(ex.started_at, null)),
        h("td", {}, ex.node_name || ""),
        h("td", {}, ex.trigger || "", ex.attempt > 1 ? ` #${ex.attempt}` : ""),
        h("td", {}, h("code", { class: "output-preview", "data-testid": "running-output" }, lastLine(ex.output))),
        h("td", {}, button),
      );
    });
    clear(
      body,
      rows.length
        ? h(
            "table",
            { class: "table", "data-testid": "running-table" },
            h("thead", {}, h("tr", {}, ["Job", "Started", "For", "Node", "Trigger", "Output (last line)", ""].map((x) => h("th", {}, x)))),
            h("tbody", {}, rows),
          )
        : h("p", { class: "muted", "data-testid": "none-running" }, "Nothing is running."),
    );
  }

  const reload = () => load().catch((err) => ctx.alive() && ctx.flash(err.message, "error"));
  const refresh = throttle(reload, 1000);
  reload();
  const unsubscribe = ctx.feed.subscribe((event) => {
    if (event.type === "execution" || event.type === "resync") refresh();
  });
  const timer = setInterval(refresh, 3000);
  return () => {
    unsubscribe();
    clearInterval(timer);
    refresh.cancel();
  };
}
