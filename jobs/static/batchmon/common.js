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
    for (const child of children.flat()) {
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

  /* ---------- the refresh loop: setTimeout after each run, a pause switch, hidden tabs skip ---------- */
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
          const next = toggle.checked ? " · next in " + delay + " s" : " · auto-refresh paused";
          if (outcome.error) {
            delay = Math.max(seconds, outcome.error.retryAfter || 0);
            status.textContent = "Refresh failed at " + fmt.clock() + (toggle.checked ? " · retrying in " + delay + " s" : "");
          } else {
            delay = seconds;
            status.textContent = "Updated " + fmt.clock() + " (" + fmt.zone + ")" + next;
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
    toggle.addEventListener("change", () => {
      const text = status.textContent.replace(/ · (next in \d+ s|auto-refresh paused|retrying in \d+ s)$/, "");
      status.textContent = text + (toggle.checked ? " · next in " + delay + " s" : " · auto-refresh paused");
      schedule();
    });
    now.addEventListener("click", () => go());
    document.addEventListener("visibilitychange", () => {
      // a tab in the background skips its refreshes; coming back brings it up to date at once
      if (!document.hidden && toggle.checked && !running && Date.now() - last > delay * 1000) go();
    });
    return { refresh: go, schedule, get count() { return count; } };
  };
})();
