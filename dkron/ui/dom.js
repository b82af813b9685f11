// Small DOM and formatting helpers. Everything the server sends is put in the
// page as text (never as HTML), so a job name or an output line cannot inject
// markup.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "class") {
      el.className = value;
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else if (key === "value") {
      el.value = value;
    } else if (key === "checked") {
      el.checked = Boolean(value);
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function debounce(fn, ms) {
  let timer = null;
  const wrapped = (...args) => {
    if (timer !== null) clearTimeout(timer);
    timer = setTimeout(() => {
      timer = null;
      fn(...args);
    }, ms);
  };
  wrapped.cancel = () => {
    if (timer !== null) clearTimeout(timer);
    timer = null;
  };
  return wrapped;
}

// At most one call per `ms`, and never starved: unlike a debounce, a steady
// stream of events (a busy cluster) still lets the page refresh.
export function throttle(fn, ms) {
  let timer = null;
  const wrapped = () => {
    if (timer !== null) return;
    timer = setTimeout(() => {
      timer = null;
      fn();
    }, ms);
  };
  wrapped.cancel = () => {
    if (timer !== null) clearTimeout(timer);
    timer = null;
  };
  return wrapped;
}

export const ZERO_TIME = "0001-01-01T00:00:00Z";

// The API prints nanoseconds; Date wants at most milliseconds.
export function parseTime(text) {
  if (!text || text === ZERO_TIME) return null;
  const trimmed = String(text).replace(/(\.\d{3})\d+/, "$1");
  const ms = Date.parse(trimmed);
  return Number.isNaN(ms) ? null : new Date(ms);
}

const pad = (n) => String(n).padStart(2, "0");

export function formatTime(value) {
  const date = value instanceof Date ? value : parseTime(value);
  if (!date) return "—";
  return (
    `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ` +
    `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`
  );
}

// A time as a wall clock in a named zone ("" = the browser's).
export function formatInZone(value, zone) {
  const date = value instanceof Date ? value : parseTime(value);
  if (!date) return "—";
  if (!zone || zone === "Local") return formatTime(date);
  try {
    return new Intl.DateTimeFormat("sv-SE", {
      timeZone: zone,
      year: "numeric",
      month: "2-digit",
      day: "2-digit",
      hour: "2-digit",
      minute: "2-digit",
      second: "2-digit",
    }).format(date);
  } catch {
    return formatTime(date);
  }
}

export function relative(value, now = Date.now()) {
  const date = value instanceof Date ? value : parseTime(value);
  if (!date) return "";
  const seconds = Math.round((date.getTime() - now) / 1000);
  const abs = Math.abs(seconds);
  let text;
  if (abs < 60) text = `${abs}s`;
  else if (abs < 3600) text = `${Math.round(abs / 60)}m`;
  else if (abs < 86400) text = `${Math.round(abs / 3600)}h`;
  else text = `${Math.round(abs / 86400)}d`;
  return seconds >= 0 ? `in ${text}` : `${text} ago`;
}

export function duration(start, end) {
  const a = parseTime(start);
  const b = end ? parseTime(end) : new Date();
  if (!a || !b) return "—";
  const ms = Math.max(0, b.getTime() - a.getTime());
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.floor(ms / 60000)}m ${Math.round((ms % 60000) / 1000)}s`;
}

// An execution's state as one word: running, success, failed, cancelled, lost.
export function executionStatus(ex) {
  if (!ex.finished_at || ex.finished_at === ZERO_TIME) return "running";
  if (ex.status) return ex.status;
  return ex.success ? "success" : "failed";
}

export function badge(status, extra = {}) {
  const word = status || "untriggered";
  return h("span", { class: `badge badge-${word}`, ...extra }, word.replace("_", " "));
}

export function lastLine(text, max = 80) {
  const line = String(text || "").trim().split("\n").pop() || "";
  return line.length > max ? `${line.slice(0, max - 1)}…` : line;
}
