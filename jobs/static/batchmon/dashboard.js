/* The batch monitoring dashboard: cards, charts, breakdowns, alerts and the job table, all from
 * GET /api/admin/batch-monitoring (and its siblings), refreshed in place without reloading the
 * page: filters live in the URL, rows are updated by job id (focus and scroll stay put) and an
 * open confirmation dialog is left alone. */
(function () {
  "use strict";
  const bm = window.batchmon;
  const { h, replace, fmt, config } = bm;
  const $ = (id) => document.getElementById(id);

  const FILTERS = ["timeRange", "status", "jobType", "consumer"];
  const SORTS = ["id", "status", "jobType", "progress", "createdAt", "processingTimeMs", "costEstimate"];
  const DEFAULTS = { timeRange: "24h", status: "", jobType: "", consumer: "", page: 1, limit: config.pageSizes[0], sort: "-createdAt" };
  const state = Object.assign({}, DEFAULTS, { data: null, offsetSupported: null });

  /* ---------- filters <-> URL ---------- */
  function allowed(select, value) {
    return [...select.options].some((o) => o.value === value);
  }
  function readUrl() {
    const q = new URLSearchParams(location.search);
    for (const key of FILTERS) if (q.has(key) && allowed($("f-" + key), q.get(key))) state[key] = q.get(key);
    const page = parseInt(q.get("page"), 10);
    if (page >= 1) state.page = page;
    const limit = parseInt(q.get("limit"), 10);
    if (config.pageSizes.includes(limit)) state.limit = limit;
    const sort = q.get("sort") || "";
    if (SORTS.includes(sort.replace(/^-/, ""))) state.sort = sort;
  }
  function writeUrl() {
    const q = new URLSearchParams(location.search); // keeps anything else, such as ?refresh=
    for (const key of [...FILTERS, "page", "limit", "sort"]) {
      if (String(state[key]) !== String(DEFAULTS[key])) q.set(key, state[key]);
      else q.delete(key);
    }
    const text = q.toString();
    history.replaceState(null, "", location.pathname + (text ? "?" + text : "") + location.hash);
    try {
      sessionStorage.setItem("batchmon.dashboard", location.pathname + location.search);
    } catch (error) {
      /* storage may be disabled: the back link then goes to the plain dashboard */
    }
  }
  function showFilters() {
    for (const key of FILTERS) $("f-" + key).value = state[key];
    $("f-limit").value = String(state.limit);
  }
  function rangeLabel(value) {
    const found = config.timeRanges.find((r) => r.value === (value || state.timeRange));
    return found ? "the " + found.label.toLowerCase() : "the last " + state.timeRange;
  }

  /* ---------- loading ---------- */
  function monitoringUrl(extra) {
    const params = { timeRange: state.timeRange, jobType: state.jobType, consumer: state.consumer };
    return bm.url(config.api.monitoring, null, Object.assign(params, extra));
  }

  /* The previous period of the same length: the API shifts the window back with ?offset=<span>.
   * An API that ignores the parameter answers the same window again: that is detected from
   * data.range, and the cards then say the comparison is unavailable rather than show ±0. */
  function previousWindow(data, previous) {
    if (!previous || !previous.range) return false;
    const from = Date.parse(data.range.from);
    const span = Date.parse(data.range.to) - from;
    return Math.abs(Date.parse(previous.range.to) - from) < span / 10;
  }

  /* The admin API allows 60 calls a minute per user, so a change of status, page, page size or
   * order fetches the job table alone; the previous period and the breakdowns are fetched again when
   * the scope (time range, job type, consumer) changes and on each timed refresh. */
  const scoped = { key: null, at: 0, previous: null, breakdowns: null };
  async function load() {
    const main = bm.api(
      monitoringUrl({ status: state.status, page: state.page, limit: state.limit, ordering: state.sort, includeDetails: "true" })
    );
    const key = [state.timeRange, state.jobType, state.consumer].join("|");
    const full = key !== scoped.key || Date.now() - scoped.at >= config.refreshSeconds * 1000 - 250;
    let previous = null;
    let breakdowns = null;
    let kpis = null;
    let forecasts = null;
    if (full) {
      previous = state.offsetSupported === false ? null : bm.api(monitoringUrl({ offset: state.timeRange, limit: 1 })).catch(() => null);
      breakdowns = loadBreakdowns();
      kpis = loadKpis();
      forecasts = loadForecasts();
    }
    let data;
    try {
      data = await main;
    } catch (error) {
      bm.showError(error, "the monitoring figures");
      document.body.classList.add("bm-stale");
      await Promise.allSettled([previous, breakdowns, kpis, forecasts]);
      return { error };
    }
    bm.showError(null);
    document.body.classList.remove("bm-stale");
    state.data = data;
    if (data.pagination.pages && state.page > data.pagination.pages) {
      state.page = data.pagination.pages; // the last page went away: show the new last page
      writeUrl();
      return load();
    }
    renderStats(data);
    renderCharts(data);
    renderJobs();
    if (full) {
      const prev = await previous;
      if (prev) state.offsetSupported = previousWindow(data, prev);
      scoped.previous = state.offsetSupported ? prev : null;
    }
    renderCards(data, scoped.previous);
    if (full) {
      renderBreakdowns(await breakdowns);
      await Promise.all([kpis, forecasts]);
      scoped.key = key;
      scoped.at = Date.now();
    }
    return {};
  }

  /* Per job type and per consumer: one API call per name, scoped like the page. */
  /* Both breakdown panels from one call (GET /api/admin/batch-monitoring/breakdown): one throttle
   * token per refresh, however many job types and consumers there are. */
  function loadBreakdowns() {
    const params = { timeRange: state.timeRange, jobType: state.jobType, consumer: state.consumer, limit: config.maxBreakdown };
    return bm.api(bm.url(config.api.breakdown, null, params)).then(
      (data) => [
        { key: "jobType", rows: data.byJobType.map((r) => ({ name: r.name, data: r })), more: data.more.jobType },
        { key: "consumer", rows: data.byConsumer.map((r) => ({ name: r.name, data: r })), more: data.more.consumer },
      ],
      (error) => [
        { key: "jobType", rows: config.jobTypes.slice(0, config.maxBreakdown).map((name) => ({ name, error })), more: 0 },
        { key: "consumer", rows: config.consumers.slice(0, config.maxBreakdown).map((name) => ({ name, error })), more: 0 },
      ]
    );
  }

  /* ---------- cards and figures ---------- */
  function card(id, value, raw, sub, change) {
    const el = $(id);
    const valueEl = el.querySelector("[data-field=value]");
    valueEl.textContent = value;
    valueEl.dataset.value = raw;
    if (sub !== undefined) el.querySelector("[data-field=sub]").textContent = sub;
    const changeEl = el.querySelector("[data-field=change]");
    changeEl.textContent = change.text;
    changeEl.dataset.trend = change.trend || "none";
    changeEl.title = change.title || "";
  }
  // Rates exist only over requests with a final outcome: with none, there is no rate (not 0 %).
  const hasOutcomes = (data) => data.summary.successRate > 0 || data.performance.efficiency.errorRate > 0;
  function change(now, before, format, { better, unit, rate } = {}) {
    const vs = " vs previous " + state.timeRange;
    if (before === null || before === undefined) {
      return { text: "previous " + state.timeRange + ": not available", trend: "none", title: "The API did not give the previous period." };
    }
    if (rate === false) return { text: "no outcomes in the previous " + state.timeRange, trend: "none" };
    const delta = Math.round((now - before) * 100) / 100;
    const trend = delta === 0 || !better ? "flat" : (delta > 0) === (better === "up") ? "good" : "bad";
    return { text: fmt.signed(delta, format) + (unit || "") + vs, trend: delta === 0 ? "flat" : trend };
  }
  function renderCards(data, prev) {
    const s = data.summary;
    const p = prev && prev.summary;
    const eff = data.performance.efficiency;
    card("card-total", fmt.int(s.totalJobs), s.totalJobs, "created in " + rangeLabel(), change(s.totalJobs, p && p.totalJobs, fmt.int));
    const outcomes = hasOutcomes(data);
    const rate = prev ? hasOutcomes(prev) : undefined;
    const noRate = { text: "", trend: "none" };
    const rateSub = outcomes ? "of requests with a final outcome" : "no request has a final outcome yet";
    card(
      "card-success",
      outcomes ? fmt.pct(s.successRate) : "—",
      s.successRate,
      rateSub,
      outcomes ? change(s.successRate, p && p.successRate, fmt.num, { better: "up", unit: " pp", rate }) : noRate
    );
    card(
      "card-savings",
      fmt.usd(s.costSavings.currentPeriod),
      s.costSavings.currentPeriod,
      fmt.pct(s.costSavings.savingsPercentage) + " vs individual API",
      change(s.costSavings.currentPeriod, p && p.costSavings.currentPeriod, fmt.usd, { better: "up" })
    );
    const q = data.queues;
    // The queue is a snapshot of now; a previous figure exists only if the API says when its snapshot was taken.
    const prevQueue = prev && prev.queues && prev.queues.at && prev.queues.at !== q.at ? prev.queues.pending + prev.queues.processing : null;
    const queueChange =
      prevQueue === null
        ? { text: "a snapshot of now", trend: "none", title: "The API keeps no history of the queue, so there is no previous figure." }
        : change(q.pending + q.processing, prevQueue, fmt.int);
    card("card-queue", fmt.int(q.pending) + " / " + fmt.int(q.processing), q.pending + "/" + q.processing, undefined, queueChange);
    card(
      "card-errors",
      outcomes ? fmt.pct(eff.errorRate) : "—",
      eff.errorRate,
      rateSub,
      outcomes ? change(eff.errorRate, prev && prev.performance.efficiency.errorRate, fmt.num, { better: "down", unit: " pp", rate }) : noRate
    );
  }
  function renderStats(data) {
    const s = data.summary;
    const perf = data.performance;
    const set = (key, text) => (document.querySelector(`#perf-stats [data-stat=${key}]`).textContent = text);
    set("requests", fmt.int(s.processedRequests) + " of " + fmt.int(s.totalRequests) + " with a final outcome");
    set("throughput", fmt.num(perf.throughput.requestsPerHour) + " requests/h · " + fmt.num(perf.throughput.jobsPerHour) + " jobs/h");
    set("processing", fmt.duration(s.averageProcessingTime));
    set("batchSize", fmt.num(perf.throughput.averageBatchSize) + " requests (" + fmt.pct(perf.efficiency.batchUtilization) + " of the maximum " + fmt.int(config.maxRequests) + ")");
    set("efficiency", fmt.pct(perf.efficiency.processingEfficiency) + " of attempts succeeded");
    set("projected", fmt.usd(s.costSavings.projectedMonthly));
  }

  /* ---------- charts ---------- */
  function renderCharts(data) {
    const q = data.queues;
    bm.charts.bars($("chart-queues"), {
      title: "Jobs by queue",
      yLabel: "Jobs",
      xLabel: "Queue",
      note: "Pending and processing: now. Completed and failed: jobs that ended in " + rangeLabel() + ".",
      categories: [
        { label: "Pending", value: q.pending, cls: "bm-c-pending" },
        { label: "Processing", value: q.processing, cls: "bm-c-processing" },
        { label: "Completed", value: q.completed, cls: "bm-c-ok" },
        { label: "Failed", value: q.failed, cls: "bm-c-failed" },
      ],
      emptyMessage: "No jobs queued, running or ended",
    });
    const buckets = data.historical.buckets;
    const starts = buckets.map((b) => new Date(b.start));
    const hours = buckets.map((b) => Math.max((Date.parse(b.end) - Date.parse(b.start)) / 3600000, 1e-9));
    const perHour = (key) => buckets.map((b, i) => Math.round((b[key] / hours[i]) * 100) / 100);
    const interval = data.historical.interval;
    bm.charts.timeline($("chart-requests"), {
      title: "Requests finished",
      yLabel: "Requests per hour",
      starts,
      interval,
      series: [
        { name: "Succeeded", values: perHour("requestsSucceeded"), cls: "bm-c-ok", type: "bar" },
        { name: "Failed", values: perHour("requestsFailed"), cls: "bm-c-failed", type: "bar" },
      ],
      emptyMessage: "No requests finished in this range",
    });
    bm.charts.timeline($("chart-jobs"), {
      title: "Jobs finished",
      yLabel: "Jobs per hour",
      starts,
      interval,
      series: [{ name: "Jobs", values: perHour("jobsFinished"), cls: "bm-c-jobs", type: "bar" }],
      emptyMessage: "No jobs finished in this range",
    });
    // Stacked: what the batch price cost, and on top what the individual API would have cost more.
    bm.charts.timeline($("chart-cost"), {
      title: "Cost of the jobs that ended",
      yLabel: "USD per bucket",
      starts,
      interval,
      format: fmt.usd,
      series: [
        { name: "Paid (batch price)", values: buckets.map((b) => b.cost), cls: "bm-c-cost", type: "bar" },
        { name: "Saved vs individual API", values: buckets.map((b) => b.savings), cls: "bm-c-savings", type: "bar" },
      ],
      note: "The whole bar is what the same requests would have cost one by one.",
      emptyMessage: "No cost in this range",
    });
  }

  /* ---------- breakdowns ---------- */
  const lastGood = { jobType: {}, consumer: {} };
  function renderBreakdowns(parts) {
    for (const { key, rows, more } of parts) {
      for (const row of rows) {
        const scope = [state.timeRange, state.jobType, state.consumer].join("|");
        if (row.data) lastGood[key][row.name] = { scope, data: row.data };
        else if (lastGood[key][row.name] && lastGood[key][row.name].scope === scope) {
          row.data = lastGood[key][row.name].data; // shown as it was, rather than a gap
          row.stale = true;
        }
      }
      const box = $("breakdown-" + key);
      if (!rows.length) {
        replace(box, h("p", { class: "bm-quiet", text: key === "jobType" ? "No job types yet." : "No consumers yet." }));
        continue;
      }
      const maxRequests = Math.max(1, ...rows.map((r) => (r.data ? r.data.summary.totalRequests : 0)));
      rows.sort((a, b) => (b.data ? b.data.summary.totalRequests : -1) - (a.data ? a.data.summary.totalRequests : -1) || a.name.localeCompare(b.name));
      const scope = key === "jobType" ? (state.consumer ? "consumer " + state.consumer : "") : state.jobType ? "job type " + state.jobType : "";
      const table = h(
        "table",
        { class: "bm-table bm-table-compact bm-table-breakdown" },
        h("caption", { class: "bm-quiet", text: "In " + rangeLabel() + (scope ? ", " + scope : "") }),
        h(
          "thead",
          {},
          h("tr", {}, ["Name", "Jobs", "Requests", "Success", "Cost", "Saved"].map((t) => h("th", { scope: "col", text: t })))
        ),
        h(
          "tbody",
          {},
          rows.map((row) => {
            const selected = state[key] === row.name;
            const name = h(
              "button",
              {
                type: "button",
                class: "bm-linkbutton",
                "aria-pressed": selected ? "true" : "false",
                title: selected ? "Show all" : "Filter the page by " + row.name,
                onclick: () => setFilter(key, selected ? "" : row.name),
              },
              row.name
            );
            if (!row.data) return h("tr", { dataset: { name: row.name } }, h("th", { scope: "row" }, name), h("td", { colspan: 5, class: "bm-quiet", text: row.error.message }));
            const s = row.data.summary;
            return h(
              "tr",
              { dataset: { name: row.name }, class: [selected ? "bm-selected" : "", row.stale ? "bm-stale-row" : ""].join(" ").trim() || null, title: row.stale ? "Not updated: " + row.error.message : null },
              h("th", { scope: "row" }, name),
              h("td", { "data-label": "Jobs", text: fmt.int(s.totalJobs) }),
              h(
                "td",
                { "data-label": "Requests" },
                h("span", { class: "bm-minibar", style: "--share:" + s.totalRequests / maxRequests, "aria-hidden": "true" }),
                fmt.int(s.totalRequests)
              ),
              h("td", { "data-label": "Success", text: s.processedRequests ? fmt.pct(s.successRate) : "—" }),
              h("td", { "data-label": "Cost", text: fmt.usd(row.data.costs.batch) }),
              h("td", { "data-label": "Saved", text: fmt.usd(s.costSavings.currentPeriod) })
            );
          })
        )
      );
      replace(box, table, more ? h("p", { class: "bm-quiet", text: "The first " + config.maxBreakdown + " are shown; " + more + " more: use the filter." }) : null);
    }
  }

  /* ---------- the job table ---------- */
  /* Applied results; while a batch runs and nothing is applied yet, the provider's own counts
   * (providerProgress), said so in the text. */
  function progress(job) {
    const atProvider = !job.resultsApplied && job.providerProgress && !config.terminalStatuses.includes(job.status);
    const total = (atProvider ? job.providerProgress.total : job.requestCount) || 0;
    const done = (atProvider ? job.providerProgress.completed : job.completedCount) || 0;
    const failed = (atProvider ? job.providerProgress.failed : job.failedCount) || 0;
    const pct = (n) => (total ? Math.min(100, (100 * n) / total) : 0);
    const where = atProvider ? " at the provider" : "";
    return [
      h(
        "span",
        { class: "bm-progress", role: "img", "aria-label": fmt.int(done) + " succeeded and " + fmt.int(failed) + " failed of " + fmt.int(total) + " requests" + where },
        h("span", { class: "bm-progress-ok", style: "width:" + pct(done) + "%" }),
        h("span", { class: "bm-progress-failed", style: "width:" + pct(failed) + "%" })
      ),
      h("span", { class: "bm-progress-text" }, fmt.int(done) + " ok · " + fmt.int(failed) + " failed / " + fmt.int(total) + where),
    ];
  }
  bm.progress = progress;

  function errorsCell(job) {
    const summary = job.errorSummary || [];
    if (!summary.length) return h("span", { class: "bm-quiet", text: "—" });
    const list = h("ul", { class: "bm-errors" }, summary.slice(0, 2).map((e) => h("li", {}, h("code", { text: e.error }), " × " + fmt.int(e.count))));
    if (summary.length > 2) list.append(h("li", { class: "bm-quiet", text: "+" + (summary.length - 2) + " more" }));
    return list;
  }
  function badge(status) {
    return h("span", { class: "bm-badge", dataset: { status }, text: fmt.status(status) });
  }

  const CELLS = [
    ["Job", (j) => [h("a", { href: bm.url(config.pages.job, j.id), text: "#" + j.id, "aria-label": "Job " + j.id + " details" }), j.batchId ? h("span", { class: "bm-sub bm-batch-id", title: j.batchId, text: j.batchId }) : null]],
    ["Status", (j) => badge(j.status)],
    ["Type", (j) => j.jobType],
    ["Consumers", (j) => (j.consumers || []).map((c) => c.consumer).join(", ") || "—"],
    ["Progress", progress],
    ["Created", (j) => h("time", { datetime: j.createdAt, text: fmt.time(j.createdAt) })],
    ["Processing", (j) => fmt.duration(j.processingTimeMs)],
    ["Cost", (j) => fmt.usd(j.costEstimate)],
    ["Errors", errorsCell],
  ];

  function buildRow(job) {
    const tr = h("tr", { dataset: { jobId: job.id } });
    for (const [label] of CELLS) tr.append(h("td", { "data-label": label }));
    const retry = h("button", { type: "button", class: "button bm-small", dataset: { action: "retry" }, text: "Retry" });
    const cancel = h("button", { type: "button", class: "button bm-small bm-button-danger", dataset: { action: "cancel" }, text: "Cancel" });
    tr.append(h("td", { "data-label": "Actions", class: "bm-row-actions" }, h("div", { class: "bm-cell" }, retry, cancel)));
    return tr;
  }
  function fillRow(tr, job) {
    const signature = JSON.stringify(job);
    if (tr._signature === signature) return;
    tr._signature = signature;
    tr._job = job;
    tr.dataset.status = job.status;
    CELLS.forEach(([, render], i) => replace(tr.cells[i], h("div", { class: "bm-cell" }, render(job))));
    const [retry, cancel] = tr.cells[CELLS.length].querySelectorAll("button");
    retry.disabled = !job.canRetry;
    retry.setAttribute("aria-label", "Retry job " + job.id);
    retry.title = job.canRetry ? "Send the failed requests again in a new job" : "Only ended jobs with failed or cancelled requests can be retried";
    cancel.disabled = !job.canCancel;
    cancel.setAttribute("aria-label", "Cancel job " + job.id);
    cancel.title = job.canCancel ? "Ask the provider to stop this job" : "Only pending or running jobs not already being cancelled can be cancelled";
  }

  /* The API sorts the whole table (?ordering= takes state.sort as it is: a key, "-" first for
   * descending), so the rows are drawn in the order they come in. */
  function showSort() {
    const key = state.sort.replace(/^-/, "");
    for (const th of document.querySelectorAll("#jobs-table th[aria-sort]")) {
      const k = th.querySelector("button").dataset.sort;
      th.setAttribute("aria-sort", k === key ? (state.sort.startsWith("-") ? "descending" : "ascending") : "none");
    }
  }

  function renderJobs() {
    const data = state.data;
    if (!data) return;
    const body = $("jobs-body");
    const jobs = data.jobs;
    const p = data.pagination;
    const filtered = [state.status && "status " + fmt.status(state.status), state.jobType && "job type " + state.jobType, state.consumer && "consumer " + state.consumer]
      .filter(Boolean)
      .join(", ");
    $("jobs-summary").textContent =
      fmt.int(p.total) + " job" + (p.total === 1 ? "" : "s") + " created in " + rangeLabel() + (filtered ? " (" + filtered + ")" : "") + ".";
    showSort();
    $("page-info").textContent = p.pages ? "Page " + p.page + " of " + p.pages : "";
    $("page-prev").disabled = state.page <= 1;
    $("page-next").disabled = !p.pages || state.page >= p.pages;
    if (!jobs.length) {
      const text = p.total || state.page > 1 ? "No jobs on this page." : "No jobs created in " + rangeLabel() + (filtered ? " match these filters." : ".");
      replace(body, h("tr", { class: "bm-empty" }, h("td", { colspan: CELLS.length + 1, text })));
      return;
    }
    for (const row of body.querySelectorAll("tr.bm-empty")) row.remove();
    const existing = new Map([...body.querySelectorAll("tr[data-job-id]")].map((tr) => [tr.dataset.jobId, tr]));
    let previous = null;
    for (const job of jobs) {
      let tr = existing.get(job.id);
      if (tr) existing.delete(job.id);
      else tr = buildRow(job);
      fillRow(tr, job);
      const expected = previous ? previous.nextElementSibling : body.firstElementChild;
      if (tr !== expected) body.insertBefore(tr, expected); // moves only rows out of place, so focus stays
      previous = tr;
    }
    for (const tr of existing.values()) tr.remove();
  }

  /* Panels that depend on fewer filters than the page (KPIs on none, forecasts on the time range
   * and job type) are fetched again only when those change or the refresh interval has passed:
   * the admin API allows 60 calls a minute per user. */
  function due(shown, key) {
    return key !== shown.key || Date.now() - shown.at >= config.refreshSeconds * 1000 - 250;
  }
  function shownNow(shown, key) {
    shown.key = key;
    shown.at = Date.now();
  }
  const forecastsShown = { key: null, at: 0 };
  const kpisShown = { key: null, at: 0 };

  /* ---------- KPI widgets (GET /api/admin/kpis), fetched with each full refresh ---------- */
  const SVG = "http://www.w3.org/2000/svg";
  const KPI_STATUS = { ok: "OK", warning: "Warning", critical: "Critical", no_data: "No data" };
  function svg(tag, attrs) {
    const el = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "text") el.textContent = value;
      else el.setAttribute(key, value);
    }
    return el;
  }
  function withUnit(value, unit) {
    if (value === null || value === undefined) return "—";
    return fmt.num(value) + (unit ? (unit === "%" ? "%" : " " + unit) : "");
  }
  /* A line through the non-null points (gaps where a bucket has no value), with a text label. */
  function sparkline(kpi) {
    const width = 160;
    const height = 36;
    const pad = 3;
    const points = kpi.sparkline || [];
    const values = points.map((p) => p.value).filter((v) => v !== null && v !== undefined);
    const shown = values.filter((v, i) => i === 0 || i === values.length - 1);
    const label =
      kpi.name +
      " trend, " +
      points.length +
      " points" +
      (values.length ? ": from " + withUnit(shown[0], kpi.unit) + " to " + withUnit(shown[shown.length - 1], kpi.unit) + ", lowest " + withUnit(Math.min(...values), kpi.unit) + ", highest " + withUnit(Math.max(...values), kpi.unit) : ": no values");
    const root = svg("svg", { class: "bm-sparkline", width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label });
    root.append(svg("title", { text: label }));
    if (values.length) {
      const low = Math.min(...values);
      const high = Math.max(...values);
      const span = high - low || 1;
      const x = (i) => pad + (points.length > 1 ? (i / (points.length - 1)) * (width - 2 * pad) : (width - 2 * pad) / 2);
      const y = (v) => (high === low ? height / 2 : pad + (1 - (v - low) / span) * (height - 2 * pad));
      let d = "";
      let pen = false;
      points.forEach((p, i) => {
        if (p.value === null || p.value === undefined) {
          pen = false;
          return;
        }
        d += (pen ? " L" : " M") + x(i).toFixed(1) + " " + y(p.value).toFixed(1);
        pen = true;
      });
      root.append(svg("path", { d: d.trim(), class: "bm-sparkline-line", fill: "none" }));
      const last = points.length - 1 - [...points].reverse().findIndex((p) => p.value !== null && p.value !== undefined);
      root.append(svg("circle", { cx: x(last).toFixed(1), cy: y(points[last].value).toFixed(1), r: 2.5, class: "bm-sparkline-dot" }));
    }
    return root;
  }
  function kpiWidget(kpi) {
    const status = KPI_STATUS[kpi.status] || kpi.status;
    const better = kpi.direction === "lower_is_better" ? "lower is better" : "higher is better";
    return h(
      "li",
      { class: "bm-kpi", dataset: { kpiStatus: kpi.status, kpiName: kpi.name } },
      h("h3", { class: "bm-kpi-name", text: kpi.name }),
      h("p", { class: "bm-kpi-value" }, h("span", { "data-field": "value", text: withUnit(kpi.value, kpi.unit) }), " ", h("span", { class: "bm-badge bm-kpi-badge", dataset: { kpiStatus: kpi.status }, text: status })),
      h("p", { class: "bm-sub", text: "Target " + withUnit(kpi.target, kpi.unit) + " · warning " + withUnit(kpi.warning, kpi.unit) + " · critical " + withUnit(kpi.critical, kpi.unit) + " (" + better + ")" }),
      sparkline(kpi),
      kpi.description ? h("p", { class: "bm-sub", text: kpi.description }) : null
    );
  }
  async function loadKpis() {
    const panel = $("kpis-panel");
    if (!panel) return;
    const status = $("kpis-status");
    const list = $("kpis-list");
    const empty = $("kpis-empty");
    if (!due(kpisShown, "")) return;
    try {
      const data = await bm.api(panel.dataset.kpisApi);
      shownNow(kpisShown, "");
      const kpis = (data && data.kpis) || [];
      empty.hidden = kpis.length > 0;
      list.hidden = kpis.length === 0;
      replace(list, ...kpis.map(kpiWidget));
      status.textContent = kpis.length ? kpis.length + (kpis.length === 1 ? " KPI" : " KPIs") + ", updated " + fmt.clock() : "";
      status.hidden = kpis.length === 0;
    } catch (error) {
      status.hidden = false;
      status.textContent = "Could not load the KPIs: " + error.message;
    }
  }

  /* ---------- forecasts (GET /api/admin/forecasts): late and at-risk batches first ---------- */
  const FLAG_ORDER = (b) => (b.late ? 0 : b.atRisk ? 1 : 2);

  function forecastRow(b) {
    const time = (iso) => (iso ? h("time", { datetime: iso, text: fmt.time(iso) }) : "—");
    const flag = b.late ? ["failed", "Late"] : b.atRisk ? ["pending", "At risk"] : null;
    return h(
      "tr",
      { dataset: { jobId: String(b.jobId) } },
      h("th", { scope: "row" }, h("a", { href: bm.url(config.pages.job, b.jobId), text: "Job " + b.jobId })),
      h("td", { text: fmt.int(b.done) + " / " + fmt.int(b.total) }),
      h("td", { text: b.ratePerHour === null ? "—" : fmt.num(b.ratePerHour) + " lines/h" }),
      h("td", {}, time(b.eta)),
      h("td", {}, b.earliest && b.latest ? [time(b.earliest), " – ", time(b.latest)] : "—"),
      h("td", {}, time(b.expiresAt)),
      h("td", {}, flag ? h("span", { class: "bm-badge", dataset: { status: flag[0] }, text: flag[1] }) : b.eta ? "On time" : "No estimate yet")
    );
  }

  async function loadForecasts() {
    const panel = $("forecasts-panel");
    if (!panel) return;
    const status = $("forecasts-status");
    const url = bm.url(panel.dataset.forecastsApi, null, { window: state.timeRange, jobType: state.jobType });
    if (!due(forecastsShown, url)) return;
    try {
      const data = await bm.api(url);
      shownNow(forecastsShown, url);
      const fact = (key, value) => replace(document.querySelector(`#forecasts-figures [data-forecast=${key}]`), value);
      const m = data.monthly.projectedMonthly;
      const q = data.queue;
      fact("cost", fmt.usd(m.cost) + " (" + fmt.usd(m.standardCost) + " at standard price)");
      fact("savings", fmt.usd(m.savings));
      fact(
        "queue",
        q.state === "empty"
          ? "empty"
          : q.draining
            ? [fmt.int(q.backlog) + " waiting, drains in " + fmt.duration(q.hoursToDrain * 3600000) + " (by ", h("time", { datetime: q.drainsAt, text: fmt.time(q.drainsAt) }), ")"]
            : fmt.int(q.backlog) + " waiting, not draining (nothing finished in the last hour)"
      );
      const batches = [...data.batches].sort((a, b) => FLAG_ORDER(a) - FLAG_ORDER(b));
      const risky = batches.filter((b) => b.late || b.atRisk).length;
      fact("batches", batches.length ? fmt.int(batches.length) + (risky ? " · " + fmt.int(risky) + " late or at risk" : " · all on time") : "none");
      $("forecasts-figures").hidden = false;
      $("forecasts-table").hidden = batches.length === 0;
      replace($("forecasts-body"), ...batches.slice(0, 10).map(forecastRow));
      const methods = [["Monthly", data.monthly.method], ["Queue", q.method], ...(batches.length ? [["Job " + batches[0].jobId, batches[0].method]] : [])];
      replace($("forecasts-methods"), ...methods.map(([what, text]) => h("li", {}, h("strong", { text: what + ": " }), text)));
      status.textContent = "Updated " + fmt.clock() + (batches.length > 10 ? " · the 10 most urgent of " + fmt.int(batches.length) + " running batches" : "");
    } catch (error) {
      status.textContent = "Could not load the forecasts: " + error.message;
    }
  }

  /* ---------- alerts ---------- */
  async function loadAlertRules() {
    const box = $("alert-rules-body");
    try {
      const data = await bm.api(config.api.alertConfig);
      const comparison = { gt: ">", gte: "≥", lt: "<", lte: "≤", eq: "=" };
      replace(
        box,
        data.rules.length
          ? h(
              "ul",
              { class: "bm-rules" },
              data.rules.map((r) =>
                h(
                  "li",
                  { class: r.enabled ? null : "bm-quiet" },
                  h("strong", { text: r.name }),
                  ": " + r.metric + " " + (comparison[r.comparison] || r.comparison) + " " + fmt.num(r.threshold) + " · ",
                  h("span", { class: "bm-badge", dataset: { severity: r.severity }, text: r.severity }),
                  " · " + r.notification + (r.channels.length ? " · " + r.channels.join(", ") : "") + (r.enabled ? "" : " · disabled")
                )
              )
            )
          : h("p", { class: "bm-quiet", text: "No alert rules." })
      );
    } catch (error) {
      replace(box, h("p", { class: "bm-quiet", text: "Could not load the alert rules: " + error.message }));
    }
  }

  function alertsFrom(data) {
    if (Array.isArray(data)) return data;
    return (data && (data.results || data.alerts)) || [];
  }
  async function loadAlerts() {
    const status = $("alerts-status");
    const list = $("alerts-list");
    try {
      const alerts = alertsFrom(await bm.api(config.api.alerts.list)).filter((a) => (a.state || a.status) !== "resolved");
      status.textContent = alerts.length ? alerts.length + " active alert" + (alerts.length === 1 ? "" : "s") + " · " + fmt.clock() : "No active alerts · " + fmt.clock();
      const focused = document.activeElement && document.activeElement.closest("#alerts-list li");
      const keep = focused ? focused.dataset.alertId : null;
      replace(
        list,
        alerts.map((a) => {
          const acked = Boolean(a.acknowledgedAt || a.acknowledged || a.acknowledgedBy);
          const name = a.rule || a.name || "alert";
          const li = h(
            "li",
            { dataset: { alertId: String(a.id), severity: a.severity || "" }, title: a.description || null },
            h("span", { class: "bm-badge", dataset: { severity: a.severity || "" }, text: a.severity || "alert" }),
            " ",
            h("strong", { text: name }),
            a.summary || a.message ? " — " + (a.summary || a.message) : "",
            h(
              "span",
              { class: "bm-sub" },
              (a.state || a.status || "") + (a.firedAt || a.startedAt ? " since " + fmt.time(a.firedAt || a.startedAt) : "") + (acked ? " · acknowledged" + (a.acknowledgedBy ? " by " + a.acknowledgedBy : "") : "")
            ),
            h("button", {
              type: "button",
              class: "button bm-small",
              disabled: acked,
              "aria-label": "Acknowledge " + name,
              text: acked ? "Acknowledged" : "Acknowledge",
              onclick: (event) => acknowledge(a, event.currentTarget),
            })
          );
          return li;
        })
      );
      if (keep) {
        const button = list.querySelector(`li[data-alert-id="${CSS.escape(keep)}"] button`);
        if (button) button.focus();
      }
      return {};
    } catch (error) {
      status.textContent = "Could not load alerts: " + error.message;
      return { error };
    }
  }
  async function acknowledge(alert, button) {
    button.disabled = true;
    try {
      await bm.api(bm.url(config.api.alerts.ack, alert.id), { method: "POST" });
      bm.outcome("success", "Alert " + (alert.rule || alert.name || alert.id) + " acknowledged.");
    } catch (error) {
      button.disabled = false;
      bm.outcome("error", "Could not acknowledge the alert: " + error.message);
    }
    return loadAlerts();
  }
  function startAlerts() {
    if (!config.api.alerts) return;
    const toggle = $("auto-refresh");
    let timer = null;
    const loop = async () => {
      clearTimeout(timer);
      const result = document.hidden ? {} : await loadAlerts();
      const wait = Math.max(config.alertRefreshSeconds, (result.error && result.error.retryAfter) || 0);
      if (toggle.checked) timer = setTimeout(loop, wait * 1000);
    };
    toggle.addEventListener("change", () => (toggle.checked ? loop() : clearTimeout(timer)));
    bm.refreshAlerts = loop;
    loop();
  }

  /* ---------- wiring ---------- */
  let refresher;
  function setFilter(key, value) {
    state[key] = value;
    state.page = 1;
    showFilters();
    writeUrl();
    return refresher.refresh();
  }

  function init() {
    readUrl();
    showFilters();
    showSort();
    writeUrl();
    refresher = bm.refresher(load, config.refreshSeconds);
    bm.refresh = refresher.refresh;

    for (const key of FILTERS) $("f-" + key).addEventListener("change", (event) => setFilter(key, event.target.value));
    $("f-limit").addEventListener("change", (event) => {
      state.limit = parseInt(event.target.value, 10);
      state.page = 1;
      writeUrl();
      refresher.refresh();
    });
    $("bm-filters").addEventListener("submit", (event) => event.preventDefault());
    $("bm-filters").addEventListener("reset", (event) => {
      event.preventDefault();
      Object.assign(state, { timeRange: DEFAULTS.timeRange, status: "", jobType: "", consumer: "", page: 1 });
      showFilters();
      writeUrl();
      refresher.refresh();
    });
    $("page-prev").addEventListener("click", () => {
      state.page = Math.max(1, state.page - 1);
      writeUrl();
      refresher.refresh();
    });
    $("page-next").addEventListener("click", () => {
      state.page += 1;
      writeUrl();
      refresher.refresh();
    });
    for (const button of document.querySelectorAll("#jobs-table .bm-sort")) {
      button.addEventListener("click", () => {
        const key = button.dataset.sort;
        const current = state.sort.replace(/^-/, "");
        const textual = key === "status" || key === "jobType";
        state.sort = current === key ? (state.sort.startsWith("-") ? key : "-" + key) : textual ? key : "-" + key;
        state.page = 1; // a new order starts from its first page
        writeUrl();
        showSort();
        refresher.refresh();
      });
    }
    $("jobs-body").addEventListener("click", async (event) => {
      const button = event.target.closest("button[data-action]");
      if (!button || button.disabled) return;
      const job = button.closest("tr")._job;
      if ((await bm.jobAction(button.dataset.action, job)) !== null) await refresher.refresh();
    });

    refresher.refresh();
    startLive();
    loadAlertRules();
    startAlerts();
  }

  /* ---------- live updates: summary pushes on the WebSocket (bm.liveRefresh) ---------- */
  function startLive() {
    bm.liveSocket = bm.liveRefresh(refresher, [{ what: "summary", frequency: "high" }]);
  }

  init();
})();
