/* batchmon pages: what the dashboard and the job page share.
 * The API client (session cookie, X-CSRFToken on POSTs, the {success, data | error} shape),
 * number/time formatting, a tiny DOM builder, the confirmation dialog and the refresh loop.
 * Plain browser JavaScript, no build step. */
(function () {
  "use strict";
  const bm = (window.batchmon = window.batchmon || {});
  const config = JSON.parse(document.getElementById("batchmon-config").textContent);
  bm.config = config;

  /* ---------- DOM ---------- */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.className = value;
      else if (key === "text") el.textContent = value;
      else if (key === "dataset") Object.assign(el.dataset, value);
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? "" : value);
    }
    append(el, children);
    return el;
  }
  function append(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }
  function replace(el, ...children) {
    el.replaceChildren();
    return append(el, children);
  }
  bm.h = h;
  bm.replace = replace;
  bm.$ = (selector, root) => (root || document).querySelector(selector);

  /* ---------- formatting ---------- */
  const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  const decimal = new Intl.NumberFormat("en-US", { maximumFractionDigits: 2 });
  const usd = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD", minimumFractionDigits: 2, maximumFractionDigits: 2 });
  const usdSmall = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD", minimumFractionDigits: 2, maximumSignificantDigits: 3 });
  const timeZone = config.timeZone || "UTC";
  const dateTime = new Intl.DateTimeFormat("en-GB", { timeZone, year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
  const clock = new Intl.DateTimeFormat("en-GB", { timeZone, hour: "2-digit", minute: "2-digit", second: "2-digit" });
  const fmt = {
    int: (n) => (n === null || n === undefined ? "—" : integer.format(n)),
    num: (n) => (n === null || n === undefined ? "—" : decimal.format(n)),
    pct: (n) => (n === null || n === undefined ? "—" : decimal.format(n) + "%"),
    usd: (n) => {
      if (n === null || n === undefined) return "—";
      const abs = Math.abs(n);
      return abs > 0 && abs < 0.01 ? usdSmall.format(n) : usd.format(n);
    },
    duration: (ms) => {
      if (ms === null || ms === undefined) return "—";
      const s = Math.round(ms / 1000);
      if (s < 60) return s + " s";
      const m = Math.round(s / 60);
      if (m < 60) return m + " min";
      const hours = Math.floor(m / 60);
      if (hours < 48) return hours + " h" + (m % 60 ? " " + (m % 60) + " min" : "");
      return Math.round(hours / 24) + " d";
    },
    time: (iso) => (iso ? dateTime.format(new Date(iso)) : "—"),
    clock: (date) => clock.format(date || new Date()),
    zone: timeZone,
    signed: (n, format) => (n > 0 ? "+" : n < 0 ? "−" : "±") + format(Math.abs(n)),
    status: (value) => (config.statuses.find((s) => s.value === value) || { label: value }).label,
  };
  bm.fmt = fmt;

  /* ---------- URLs ---------- */
  bm.url = function (template, id, params) {
    let url = template.replace("{id}", encodeURIComponent(id));
    if (params) {
      const query = new URLSearchParams();
      for (const [key, value] of Object.entries(params)) if (value !== "" && value !== null && value !== undefined) query.set(key, value);
      const text = query.toString();
      if (text) url += (url.includes("?") ? "&" : "?") + text;
    }
    return url;
  };

  /* ---------- API ---------- */
  class ApiError extends Error {
    constructor(message, status, retryAfter) {
      super(message);
      this.status = status;
      this.retryAfter = retryAfter;
    }
  }
  bm.ApiError = ApiError;

  function csrfToken() {
    const name = (config.csrfCookieName || "csrftoken").replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    const match = document.cookie.match(new RegExp("(?:^|;\\s*)" + name + "=([^;]+)"));
    if (match) return decodeURIComponent(match[1]);
    const input = document.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  bm.api = async function (url, options) {
    const method = (options && options.method) || "GET";
    const headers = { Accept: "application/json" };
    if (method !== "GET") {
      headers["X-CSRFToken"] = csrfToken();
      headers["Content-Type"] = "application/json";
    }
    let response;
    try {
      response = await fetch(url, {
        method,
        headers,
        credentials: "same-origin",
        body: method === "GET" ? undefined : JSON.stringify((options && options.body) || {}),
      });
    } catch (error) {
      throw new ApiError("The server could not be reached (" + error.message + ").", 0);
    }
    let payload = null;
    if ((response.headers.get("Content-Type") || "").includes("json")) {
      try {
        payload = await response.json();
      } catch (error) {
        payload = null;
      }
    }
    if (response.ok && payload && payload.success !== false) return payload.data !== undefined ? payload.data : payload;
    const apiMessage = payload && payload.error && payload.error.message;
    let message;
    if (response.status === 401 || response.status === 403) message = "Your session has ended or your account is not staff: log in again.";
    else if (response.status === 429) message = "The API is rate-limiting this page" + (apiMessage ? " (" + apiMessage + ")" : "") + ".";
    else if (apiMessage) message = apiMessage;
    else if (response.ok) message = "The API answered with something that is not its JSON.";
    else message = "The API answered " + response.status + " " + (response.statusText || "") + ".";
    throw new ApiError(message, response.status, Number(response.headers.get("Retry-After")) || null);
  };

  /* ---------- banners and messages ---------- */
  bm.showError = function (error, what) {
    const banner = document.getElementById("api-error");
    if (!error) {
      banner.hidden = true;
      banner.replaceChildren();
      return;
    }
    const parts = [h("strong", { text: "Could not load " + what + ". " }), error.message + " "];
    if (error.status === 401 || error.status === 403) {
      parts.push(h("a", { href: config.pages.login + "?next=" + encodeURIComponent(location.pathname + location.search), text: "Log in" }));
    } else {
      parts.push("The figures shown are from the last successful refresh; the page keeps trying.");
    }
    replace(banner, parts);
    banner.hidden = false;
  };

  bm.outcome = function (kind, ...content) {
    const box = document.getElementById("action-outcome");
    box.className = "bm-outcome bm-outcome-" + kind;
    replace(box, content);
  };

  /* ---------- the confirmation dialog ---------- */
  bm.confirm = function ({ title, message, confirmLabel, danger }) {
    const dialog = document.getElementById("confirm-dialog");
    const ok = document.getElementById("confirm-ok");
    document.getElementById("confirm-title").textContent = title;
    document.getElementById("confirm-message").textContent = message;
    ok.textContent = confirmLabel;
    ok.classList.toggle("bm-button-danger", !!danger);
    dialog.returnValue = "";
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "confirm"), { once: true });
      dialog.showModal();
      document.getElementById("confirm-cancel").focus();
    });
  };

  /* Retry or cancel one job, after confirmation: null when not confirmed, else whether the API accepted it. */
  bm.jobAction = async function (action, job) {
    const retry = action === "retry";
    const failed = job.failedCount || 0;
    const confirmed = await bm.confirm({
      title: retry ? "Retry job " + job.id + "?" : "Cancel job " + job.id + "?",
      message: retry
        ? "Its retryable failed and cancelled requests (up to " + fmt.int(failed) + ") are sent again in a new job. Requests that failed for good stay failed."
        : "The provider is asked to stop the batch. Results it has already produced are kept; the other requests are cancelled.",
      confirmLabel: retry ? "Retry failed requests" : "Cancel job",
      danger: !retry,
    });
    if (!confirmed) return null;
    bm.outcome("busy", (retry ? "Retrying" : "Cancelling") + " job " + job.id + "…");
    try {
      const result = await bm.api(bm.url(config.api[action], job.id), { method: "POST" });
      if (retry) {
        bm.outcome(
          "success",
          "Job " + job.id + ": " + fmt.int(result.requeued) + " requests sent again as ",
          h("a", { href: bm.url(config.pages.job, result.retryJobId), text: "job " + result.retryJobId }),
          "."
        );
      } else {
        bm.outcome("success", "Job " + job.id + ": cancellation requested (now " + fmt.status(result.status) + ").");
      }
      return true;
    } catch (error) {
      bm.outcome("error", (error.status === 409 ? "Refused: " : "Failed: ") + error.message);
      return false;
    }
  };

  /* ---------- the refresh loop: setTimeout after each run, a pause switch, hidden tabs skip ----------
   * setLive(true) says pushes (the WebSocket) now bring the changes: the timer then only runs as a
   * safety net, at LIVE_FACTOR times the interval, and the status line says "live"; setLive(false)
   * goes back to polling every `seconds`. */
  const LIVE_FACTOR = 5;
  bm.refresher = function (run, seconds) {
    const toggle = document.getElementById("auto-refresh");
    const status = document.getElementById("refresh-status");
    const now = document.getElementById("refresh-now");
    let timer = null;
    let running = null;
    let again = false;
    let count = 0;
    let delay = seconds;
    let last = 0;
    let live = false;
    let failed = false;

    const interval = () => (live ? seconds * LIVE_FACTOR : seconds);
    function suffix() {
      if (!toggle.checked) return " · auto-refresh paused";
      if (failed) return " · retrying in " + delay + " s";
      return live ? " · live" : " · every " + seconds + " s";
    }
    const SUFFIX = / · (live|every \d+ s|auto-refresh paused|retrying in \d+ s)$/;
    function showMode() {
      status.dataset.mode = live ? "live" : "polling";
      if (SUFFIX.test(status.textContent)) status.textContent = status.textContent.replace(SUFFIX, "") + suffix();
    }

    function schedule() {
      clearTimeout(timer);
      timer = null;
      if (toggle.checked) timer = setTimeout(() => (document.hidden ? schedule() : go()), delay * 1000);
    }
    async function go() {
      if (running) {
        again = true; // one more run after this one, with the latest filters
        return running;
      }
      clearTimeout(timer);
      running = (async () => {
        do {
          again = false;
          let outcome;
          try {
            outcome = (await run()) || {};
          } catch (error) {
            if (!(error instanceof ApiError)) console.error(error); // a bug of this page, not an API answer: make it loud
            bm.showError(error instanceof ApiError ? error : new Error("the page failed to draw them (" + error.message + ")"), "the figures");
            outcome = { error };
          }
          count += 1;
          status.dataset.refreshCount = String(count);
          failed = !!outcome.error;
          if (failed) {
            delay = Math.max(seconds, outcome.error.retryAfter || 0);
            status.textContent = "Refresh failed at " + fmt.clock() + (toggle.checked ? suffix() : "");
          } else {
            delay = interval();
            status.textContent = "Updated " + fmt.clock() + " (" + fmt.zone + ")" + suffix();
          }
        } while (again);
      })();
      try {
        await running;
      } finally {
        running = null;
        last = Date.now();
        schedule();
      }
    }
    function setLive(value) {
      value = !!value;
      if (value === live) return;
      live = value;
      if (!failed) delay = interval();
      showMode();
      if (running) return; // its end schedules the timer with the new delay
      // back to polling after a long quiet socket: catch up at once rather than a full period later
      if (!live && toggle.checked && !document.hidden && last && Date.now() - last > delay * 1000) go();
      else schedule();
    }
    toggle.addEventListener("change", () => {
      const text = status.textContent.replace(SUFFIX, "");
      status.textContent = text + suffix();
      schedule();
    });
    now.addEventListener("click", () => go());
    document.addEventListener("visibilitychange", () => {
      // a tab in the background skips its refreshes; coming back brings it up to date at once
      if (!document.hidden && toggle.checked && !running && Date.now() - last > delay * 1000) go();
    });
    status.dataset.mode = "polling";
    return {
      refresh: go,
      schedule,
      setLive,
      get live() {
        return live;
      },
      get count() {
        return count;
      },
    };
  };

  /* ---------- live push: the /ws/monitoring/ WebSocket ----------
   * bm.live({path, subscribe, onUpdate, onState}) keeps one socket open: it subscribes, sends a
   * heartbeat every heartbeatInterval, calls onUpdate(message) for each update (not for the first
   * state sent right after the first subscription: the page has just loaded that) and onState(true|false)
   * when pushes start or stop. A lost socket is opened again with backoff (1 s doubling to 60 s);
   * 4401/4403 (logged out, not staff) stop the attempts. Only used when config.live says the page
   * came from an ASGI server, which routes the socket. */
  bm.live = function ({ path, subscribe, onUpdate, onState }) {
    if (!("WebSocket" in window) || !path) return null;
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + path;
    let socket = null;
    let heartbeat = null;
    let retry = null;
    let backoff = 1;
    let open = false;
    let everSubscribed = false;
    let skipFirst = 0;
    let stopped = false;

    function state(value) {
      if (value === open) return;
      open = value;
      onState(value);
    }
    function connect() {
      retry = null;
      let ws;
      try {
        ws = new WebSocket(url);
      } catch (error) {
        return later();
      }
      socket = ws;
      ws.addEventListener("message", (event) => {
        let message;
        try {
          message = JSON.parse(event.data);
        } catch (error) {
          return;
        }
        if (message.type === "connected") {
          clearInterval(heartbeat);
          const every = Math.max(1, Number(message.heartbeatInterval) || 30);
          heartbeat = setInterval(() => ws.readyState === WebSocket.OPEN && ws.send(JSON.stringify({ type: "heartbeat" })), every * 1000);
          for (const sub of subscribe) ws.send(JSON.stringify(Object.assign({ type: "subscribe" }, sub)));
        } else if (message.type === "subscribed") {
          if (!everSubscribed) skipFirst += 1; // its first state is what the page loaded already
          backoff = 1;
          state(true);
        } else if (message.type === "update") {
          if (skipFirst > 0) skipFirst -= 1;
          else onUpdate(message);
        }
      });
      ws.addEventListener("close", (event) => {
        if (socket !== ws) return;
        socket = null;
        clearInterval(heartbeat);
        if (open) everSubscribed = true;
        skipFirst = 0;
        state(false);
        if (event.code === 4401 || event.code === 4403) stopped = true; // the API calls say why
        later();
      });
    }
    function later() {
      if (stopped || retry) return;
      retry = setTimeout(connect, backoff * 1000);
      backoff = Math.min(backoff * 2, 60);
    }
    window.addEventListener("pagehide", () => {
      stopped = true;
      if (socket) socket.close(1000);
    });
    connect();
    return {
      get open() {
        return open;
      },
      get socket() {
        return socket; // the current WebSocket, or null (for scripts and tests)
      },
    };
  };

  /* A page kept fresh by pushes: served over ASGI (config.live), it subscribes on the WebSocket and
   * a push means "something changed": the page runs its refresher again (one code path for
   * drawing), once for pushes that come in a row. While the socket is open the timer runs at 5× the
   * interval as a safety net; without it (closed, failing, reconnecting with backoff) the page polls.
   * Paused auto-refresh pauses pushes too; a push to a hidden tab is applied when it shows again. */
  const DEBOUNCE_MS = 300;
  bm.liveRefresh = function (refresher, subscribe) {
    if (!bm.config.live || !bm.config.livePath) return null;
    const toggle = document.getElementById("auto-refresh");
    let pending = null;
    let missed = false;
    const pushed = () => {
      clearTimeout(pending);
      pending = setTimeout(() => {
        pending = null;
        if (!toggle.checked) return;
        if (document.hidden) missed = true;
        else refresher.refresh();
      }, DEBOUNCE_MS);
    };
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && missed && toggle.checked) {
        missed = false;
        refresher.refresh();
      }
    });
    return bm.live({ path: bm.config.livePath, subscribe, onUpdate: pushed, onState: (open) => refresher.setLive(open) });
  };
})();
