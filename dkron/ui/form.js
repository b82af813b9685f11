// Create or edit a job: a form for the fields most jobs set, and a JSON
// editor for everything else (tags, metadata, processors, other executor
// settings, catch-up...). The schedule is checked as it is typed against
// GET /v1/schedule/preview, which also shows the next fire times.

import { api, jobPath } from "/ui/api.js";
import { clear, debounce, formatInZone, h, relative } from "/ui/dom.js";
import { deleteJob, runJob, toggleJob } from "/ui/jobs.js";

// Fields the form owns; the JSON editor holds the rest of the job.
const FORM_FIELDS = [
  "name",
  "displayname",
  "schedule",
  "timezone",
  "owner",
  "owner_email",
  "executor",
  "retries",
  "concurrency",
  "disabled",
  "parent_job",
];
// Computed by the server: never sent back.
const READ_ONLY = [
  "id",
  "success_count",
  "error_count",
  "last_success",
  "last_error",
  "status",
  "next",
  "dependent_jobs",
];

const EXAMPLE_EXTRA = { tags: {}, metadata: {}, processors: {}, executor_config: {} };

function splitJob(job) {
  const extra = {};
  for (const [key, value] of Object.entries(job)) {
    if (!FORM_FIELDS.includes(key) && !READ_ONLY.includes(key)) extra[key] = value;
  }
  const config = { ...(extra.executor_config || {}) };
  const command = config.command || "";
  const shell = ["true", "1", "t", "TRUE", "True", "T"].includes(config.shell || "");
  delete config.command;
  delete config.shell;
  extra.executor_config = config;
  return { extra, command, shell };
}

function field(label, input, hint) {
  return h("label", { class: "field" }, h("span", { class: "label" }, label), input, hint ? h("span", { class: "hint" }, hint) : null);
}

export function jobForm(root, { name }, ctx) {
  const editing = name !== null;
  const inputs = {
    name: h("input", { name: "name", required: true, readonly: editing, "data-testid": "job-name", spellcheck: "false" }),
    displayname: h("input", { name: "displayname" }),
    schedule: h("input", { name: "schedule", placeholder: "@every 1m, 0 30 * * * *, @at 2030-01-01T00:00:00Z…", "data-testid": "job-schedule", spellcheck: "false" }),
    timezone: h("input", { name: "timezone", placeholder: "Europe/Berlin (empty: the server's zone)", "data-testid": "job-timezone", spellcheck: "false" }),
    executor: h("select", { name: "executor" }, ["shell", "http"].map((x) => h("option", { value: x }, x))),
    command: h("textarea", { name: "command", rows: 3, placeholder: "echo hello", "data-testid": "job-command", spellcheck: "false" }),
    owner: h("input", { name: "owner" }),
    owner_email: h("input", { name: "owner_email", type: "email" }),
    retries: h("input", { name: "retries", type: "number", min: 0, value: 0 }),
    concurrency: h("select", { name: "concurrency" }, ["allow", "forbid"].map((x) => h("option", { value: x }, x))),
    parent_job: h("input", { name: "parent_job", placeholder: "runs after this job instead of on a schedule" }),
    disabled: h("input", { name: "disabled", type: "checkbox" }),
    shell: h("input", { name: "shell", type: "checkbox", "data-testid": "job-shell" }),
  };
  const extra = h("textarea", { class: "json", rows: 12, spellcheck: "false", "data-testid": "job-json" });
  const jsonState = h("span", { class: "hint" });
  const preview = h("div", { class: "preview", "data-testid": "schedule-preview" });
  const errorBox = h("p", { class: "error", "data-testid": "form-error", hidden: true });
  const submit = h("button", { type: "submit", class: "btn btn-primary", "data-testid": "save-job" }, editing ? "Save" : "Create job");
  const extraActions = h("div", { class: "row-actions" });
  const form = h(
    "form",
    { class: "job-form", novalidate: true, "data-testid": "job-form" },
    h(
      "div",
      { class: "grid" },
      h(
        "section",
        { class: "card" },
        h("h2", {}, "Job"),
        field("Name", inputs.name, editing ? "The name identifies the job; create a new job to rename." : "Letters, digits, - and _."),
        field("Display name", inputs.displayname),
        field("Schedule", inputs.schedule),
        field("Time zone", inputs.timezone),
        preview,
        field("Parent job", inputs.parent_job),
      ),
      h(
        "section",
        { class: "card" },
        h("h2", {}, "Execution"),
        field("Executor", inputs.executor),
        field("Command", inputs.command, "executor_config.command; other settings go in the JSON below."),
        h("label", { class: "check" }, inputs.shell, " Run through a shell (executor_config.shell: pipes, loops, variables)"),
        field("Concurrency", inputs.concurrency),
        field("Retries", inputs.retries),
        h("label", { class: "check" }, inputs.disabled, " Disabled"),
        field("Owner", inputs.owner),
        field("Owner e-mail", inputs.owner_email),
      ),
    ),
    h(
      "section",
      { class: "card" },
      h("h2", {}, "Everything else (JSON)"),
      h("p", { class: "hint" }, "Merged into the job: tags, metadata, processors, executor_config, starts_at, expires_at, ephemeral, catchup…"),
      extra,
      jsonState,
    ),
    errorBox,
    h("div", { class: "row-actions" }, submit, h("a", { class: "btn", href: editing ? `#/jobs/${encodeURIComponent(name)}` : "#/jobs" }, "Cancel")),
  );
  clear(root, h("div", { class: "page-head" }, h("h1", {}, editing ? `Edit ${name}` : "New job"), extraActions), form);

  function parseExtra() {
    const text = extra.value.trim();
    if (!text) return {};
    const value = JSON.parse(text);
    if (!value || typeof value !== "object" || Array.isArray(value)) throw new Error("the JSON must be an object");
    return value;
  }

  function checkJson() {
    try {
      parseExtra();
      jsonState.textContent = "valid JSON";
      jsonState.className = "hint ok";
      return true;
    } catch (err) {
      jsonState.textContent = `invalid: ${err.message}`;
      jsonState.className = "hint bad";
      return false;
    }
  }

  let previewSeq = 0;
  async function updatePreview() {
    const mine = ++previewSeq;
    const schedule = inputs.schedule.value.trim();
    const zone = inputs.timezone.value.trim();
    preview.dataset.state = "pending";
    if (!schedule) {
      preview.dataset.state = "empty";
      clear(preview, h("span", { class: "hint" }, inputs.parent_job.value.trim() ? "No schedule: the job runs after its parent." : "Enter a schedule to see its next fire times."));
      return;
    }
    try {
      const { data } = await api("GET", "/v1/schedule/preview", {
        params: { schedule, timezone: zone, job: inputs.name.value.trim(), count: 5 },
      });
      if (mine !== previewSeq || !ctx.alive()) return;
      preview.dataset.state = "ok";
      clear(
        preview,
        h("span", { class: "hint ok" }, data.length ? "Next fire times" + (zone ? ` (${zone})` : "") + ":" : "Valid, but it never fires from now on."),
        h("ol", { class: "times" }, data.map((t) => h("li", { "data-testid": "preview-time" }, formatInZone(t, zone), " ", h("span", { class: "muted" }, relative(t))))),
      );
    } catch (err) {
      if (mine !== previewSeq || !ctx.alive()) return;
      preview.dataset.state = "error";
      clear(preview, h("span", { class: "hint bad", "data-testid": "preview-error" }, err.message));
    }
  }
  const schedulePreview = debounce(updatePreview, 300);
  for (const key of ["schedule", "timezone", "name", "parent_job"]) inputs[key].addEventListener("input", schedulePreview);
  extra.addEventListener("input", debounce(checkJson, 200));

  function fill(job) {
    for (const key of FORM_FIELDS) {
      const input = inputs[key];
      if (key === "disabled") input.checked = Boolean(job.disabled);
      else if (job[key] !== undefined && job[key] !== null) input.value = String(job[key]);
    }
    if (job.executor && ![...inputs.executor.options].some((o) => o.value === job.executor)) {
      inputs.executor.append(h("option", { value: job.executor }, job.executor));
      inputs.executor.value = job.executor;
    }
    const parts = splitJob(job);
    inputs.command.value = parts.command;
    inputs.shell.checked = parts.shell;
    extra.value = JSON.stringify(parts.extra, null, 2);
    checkJson();
    updatePreview();
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    errorBox.hidden = true;
    let rest;
    try {
      rest = parseExtra();
    } catch (err) {
      errorBox.textContent = `The JSON is not valid: ${err.message}`;
      errorBox.hidden = false;
      return;
    }
    const job = { ...rest };
    for (const key of READ_ONLY) delete job[key];
    for (const key of ["name", "displayname", "schedule", "timezone", "owner", "owner_email", "executor", "concurrency", "parent_job"]) {
      job[key] = inputs[key].value.trim();
    }
    job.retries = Number.parseInt(inputs.retries.value || "0", 10) || 0;
    job.disabled = inputs.disabled.checked;
    const config = { ...(rest.executor_config || {}) };
    const command = inputs.command.value.trim();
    if (command) config.command = command;
    else delete config.command;
    if (inputs.shell.checked) config.shell = "true";
    else delete config.shell;
    job.executor_config = config;
    submit.disabled = true;
    try {
      const { data } = await api("POST", "/v1/jobs", { body: job });
      ctx.flash(editing ? `Saved ${data.name}.` : `Created ${data.name}.`);
      ctx.navigate(`#/jobs/${encodeURIComponent(data.name)}`);
    } catch (err) {
      if (!ctx.alive()) return;
      errorBox.textContent = err.message;
      errorBox.hidden = false;
    } finally {
      submit.disabled = false;
    }
  });

  if (editing) {
    clear(
      extraActions,
      h("button", { class: "btn", type: "button", onclick: () => runJob(ctx, name) }, "Run now"),
      h("button", { class: "btn", type: "button", onclick: () => toggleJob(ctx, name).then(load) }, "Toggle"),
      h("button", { class: "btn btn-danger", type: "button", onclick: async () => (await deleteJob(ctx, name)) && ctx.navigate("#/jobs") }, "Delete"),
    );
  }

  async function load() {
    try {
      const { data } = await api("GET", jobPath(name));
      if (ctx.alive()) fill(data);
    } catch (err) {
      if (!ctx.alive()) return;
      errorBox.textContent = err.status === 404 ? `There is no job named ${name}.` : err.message;
      errorBox.hidden = false;
    }
  }

  if (editing) load();
  else fill({ executor: "shell", concurrency: "allow", retries: 0, ...EXAMPLE_EXTRA, executor_config: { shell: "true" } });
  return () => schedulePreview.cancel();
}
