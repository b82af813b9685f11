// Talking to the agent: REST calls with the stored token, the cluster event
// feed and the live output of one execution. Both websockets reconnect with
// exponential backoff, because a leader change or an agent restart closes them
// and the page should carry on by itself.

const TOKEN_KEY = "dkron-ui.token";

export function getToken() {
  try {
    return localStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

export function setToken(token) {
  try {
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
  } catch {
    // Storage may be disabled (private mode); the token then lives for this page only.
  }
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function query(params) {
  const pairs = [];
  for (const [key, value] of Object.entries(params || {})) {
    if (value === undefined || value === null || value === "") continue;
    pairs.push(`${encodeURIComponent(key)}=${encodeURIComponent(value)}`);
  }
  return pairs.length ? `?${pairs.join("&")}` : "";
}

export function jobPath(name, ...rest) {
  const tail = rest.map((part) => `/${encodeURIComponent(part)}`).join("");
  return `/v1/jobs/${encodeURIComponent(name)}${tail}`;
}

// One REST call. Resolves to {status, total, data}; rejects with ApiError
// carrying the server's message (JSON {"error"}, Dkron's plain text, or the
// status text for Dkron's empty error bodies).
export async function api(method, path, { body, params } = {}) {
  const headers = { Accept: "application/json" };
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path + query(params), init);
  } catch (err) {
    throw new ApiError(0, `cannot reach the agent: ${err.message}`);
  }
  const text = await response.text();
  const isJson = (response.headers.get("content-type") || "").includes("application/json");
  let data = text;
  if (isJson && text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    if (data && typeof data === "object" && typeof data.error === "string") message = data.error;
    else if (typeof data === "string" && data.trim()) message = data.trim();
    throw new ApiError(response.status, message);
  }
  const total = response.headers.get("x-total-count");
  return { status: response.status, total: total === null ? null : Number(total), data };
}

// Browsers cannot set headers on a websocket, so the token rides in the
// query string (the agent accepts ?access_token= on its two websocket routes only).
function wsUrl(path) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const token = getToken();
  const sep = path.includes("?") ? "&" : "?";
  const auth = token ? `${sep}access_token=${encodeURIComponent(token)}` : "";
  return `${scheme}//${location.host}${path}${auth}`;
}

function backoff(attempt) {
  const base = Math.min(15000, 500 * 2 ** attempt);
  return base / 2 + Math.random() * (base / 2);
}

// The /v1/events feed shared by every page. Listeners get each event; after a
// reconnect they get {type: "resync"}, since the server does not replay what
// was missed while disconnected.
export class EventFeed {
  constructor() {
    this.listeners = new Set();
    this.stateListeners = new Set();
    this.attempt = 0;
    this.socket = null;
    this.timer = null;
    this.state = "connecting";
    this.everOpened = false;
  }

  start() {
    this.connect();
  }

  connect() {
    this.timer = null;
    this.setState("connecting");
    let socket;
    try {
      socket = new WebSocket(wsUrl("/v1/events"));
    } catch {
      this.retry();
      return;
    }
    this.socket = socket;
    socket.addEventListener("open", () => {
      this.attempt = 0;
      this.setState("live");
      if (this.everOpened) this.emit({ type: "resync" });
      this.everOpened = true;
    });
    socket.addEventListener("message", (msg) => {
      let event;
      try {
        event = JSON.parse(msg.data);
      } catch {
        return;
      }
      this.emit(event);
    });
    socket.addEventListener("close", () => {
      if (this.socket === socket) this.retry();
    });
  }

  retry() {
    this.socket = null;
    this.setState("offline");
    if (this.timer === null) {
      this.timer = setTimeout(() => this.connect(), backoff(this.attempt));
      this.attempt += 1;
    }
  }

  setState(state) {
    this.state = state;
    for (const fn of this.stateListeners) fn(state);
  }

  emit(event) {
    for (const fn of [...this.listeners]) {
      try {
        fn(event);
      } catch (err) {
        console.error("event listener failed", err);
      }
    }
  }

  subscribe(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  onState(fn) {
    this.stateListeners.add(fn);
    fn(this.state);
    return () => this.stateListeners.delete(fn);
  }
}

// Live output of one execution: onOutput(seq, text) for every chunk, then
// onResult(execution) once the result is committed. A dropped connection is
// resumed from the last seq received, so no chunk is shown twice.
export function streamExecution(job, id, { onOutput, onResult, onState }) {
  let lastSeq = 0;
  let attempt = 0;
  let closed = false;
  let finished = false;
  let socket = null;
  let timer = null;

  function connect() {
    timer = null;
    if (closed) return;
    onState?.("connecting");
    socket = new WebSocket(wsUrl(`${jobPath(job, "executions", id, "stream")}?from_seq=${lastSeq}`));
    socket.addEventListener("open", () => {
      attempt = 0;
      onState?.("live");
    });
    socket.addEventListener("message", (msg) => {
      let event;
      try {
        event = JSON.parse(msg.data);
      } catch {
        return;
      }
      if (event.type === "output" && event.seq > lastSeq) {
        lastSeq = event.seq;
        onOutput(event.seq, event.data);
      } else if (event.type === "result") {
        finished = true;
        onResult(event.execution);
      }
    });
    socket.addEventListener("close", () => {
      if (closed || finished) {
        onState?.("closed");
        return;
      }
      onState?.("reconnecting");
      timer = setTimeout(connect, backoff(attempt));
      attempt += 1;
    });
  }

  connect();
  return () => {
    closed = true;
    if (timer !== null) clearTimeout(timer);
    if (socket && socket.readyState <= 1) socket.close(1000, "page closed");
  };
}
