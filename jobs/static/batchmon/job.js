/* A batch job's page: its timeline of transitions, error summary, consumers, failed requests with
 * their errors, and the retry / cancel controls, from GET /api/admin/batch-monitoring/{id}. */
(function () {
  "use strict";
  const bm = window.batchmon;
  const { h, replace, fmt, config } = bm;
  const $ = (id) => document.getElementById(id);
  const jobId = config.jobId;
  const state = { page: 1, limit: 25, job: null };

  const page = parseInt(new URLSearchParams(location.search).get("page"), 10);
  if (page >= 1) state.page = page;
  try {
    const back = sessionStorage.getItem("batchmon.dashboard");
    if (back && back.startsWith(config.pages.dashboard)) $("back-to-dashboard").href = back;
  } catch (error) {
    /* no storage: the plain dashboard link stays */
  }

  async function load() {
    let job;
    try {
      job = await bm.api(bm.url(config.api.job, jobId, { page: state.page, limit: state.limit }));
    } catch (error) {
      bm.showError(error, "this job");
      return { error };
    }
    bm.showError(null);
    if (job.failedRequestsPagination.pages && state.page > job.failedRequestsPagination.pages) {
      state.page = job.failedRequestsPagination.pages;
      return load();
    }
    state.job = job;
    render(job);
    return {};
  }

  function fact(key, value) {
    const el = document.querySelector(`#job-facts [data-fact=${key}]`);
    replace(el, value === null || value === undefined || value === "" ? "—" : value);
  }

  function render(job) {
    const status = $("job-status");
    status.dataset.status = job.status;
    status.textContent = fmt.status(job.status);
    replace($("job-progress"), progressBar(job));
    fact("batchId", job.batchId);
    fact("jobType", job.jobType);
    fact("model", job.model);
    fact("requests", fmt.int(job.requestCount));
    fact("createdAt", h("time", { datetime: job.createdAt, text: fmt.time(job.createdAt) }));
    fact("startedAt", job.startedAt ? h("time", { datetime: job.startedAt, text: fmt.time(job.startedAt) }) : null);
    fact("completedAt", job.completedAt ? h("time", { datetime: job.completedAt, text: fmt.time(job.completedAt) }) : null);
    fact("processing", fmt.duration(job.processingTimeMs));
    fact("cost", fmt.usd(job.costEstimate) + (job.resultsApplied ? "" : " (estimate)"));
    fact("retryOf", job.retryOf ? h("a", { href: bm.url(config.pages.job, job.retryOf), text: "job " + job.retryOf }) : null);
    fact("resultsApplied", job.resultsApplied ? "yes" : "not yet");
    fact("lastProviderError", job.lastProviderError);

    const retry = $("job-retry");
    retry.disabled = !job.canRetry;
    $("job-retry-why").textContent = job.canRetry ? "" : "Only ended jobs whose results are applied and that have failed or cancelled requests can be retried.";
    const cancel = $("job-cancel");
    cancel.disabled = !job.canCancel;
    $("job-cancel-why").textContent = job.canCancel ? "" : "Only pending or running jobs not already being cancelled can be cancelled.";

    renderForecast(job);
    renderTimeline(job.transitions);
    renderErrors(job);
    renderConsumers(job.consumers || []);
    renderProviderErrors(job.providerErrors);
    renderFailed(job);
  }

  function renderForecast(job) {
    const f = job.forecast;
    const box = $("job-forecast");
    const points = (job.progressSamples || []).map((p) => ({ at: Date.parse(p.at), done: p.completed + p.failed, completed: p.completed, failed: p.failed, total: p.total }));
    const total = f ? f.total : points.length ? points[points.length - 1].total : job.requestCount;
    if (!f) {
      replace(box, h("p", { class: "bm-quiet", text: "The batch has ended: no forecast." }));
    } else {
      const flag = f.late ? ["late", "Expected after it expires"] : f.atRisk ? ["at-risk", "At risk of expiring"] : null;
      const when = f.eta
        ? [
            "Expected to finish ",
            h("time", { datetime: f.eta, id: "forecast-eta", text: fmt.time(f.eta) }),
            f.earliest && f.latest ? [" (between ", h("time", { datetime: f.earliest, text: fmt.time(f.earliest) }), " and ", h("time", { datetime: f.latest, text: fmt.time(f.latest) }), ")"] : "",
            f.ratePerHour !== null ? " at " + fmt.num(f.ratePerHour) + " lines/h" : "",
            f.expiresAt ? [" · expires ", h("time", { datetime: f.expiresAt, text: fmt.time(f.expiresAt) })] : "",
          ]
        : ["No finish estimate yet", f.expiresAt ? [" · expires ", h("time", { datetime: f.expiresAt, text: fmt.time(f.expiresAt) })] : ""];
      replace(
        box,
        h("p", {}, flag ? [h("span", { class: "bm-badge", dataset: { status: flag[0] === "late" ? "failed" : "pending" }, id: "forecast-flag", text: flag[1] }), " "] : "", when),
        h("p", { class: "bm-method", id: "forecast-method", text: f.method })
      );
    }
    bm.charts.progress($("job-progress-chart"), {
      title: "Lines done (provider counts, " + fmt.int(points.length) + " samples)",
      points,
      total,
      forecast: f && f.eta ? f : null,
      emptyMessage: "No progress seen yet",
    });
  }

  function renderTimeline(transitions) {
    const list = $("job-timeline");
    if (!transitions.length) {
      replace(list, h("li", { class: "bm-quiet", text: "No transitions recorded." }));
      return;
    }
    let before = null;
    replace(
      list,
      transitions.map((t) => {
        const at = Date.parse(t.at);
        const step = before === null ? null : fmt.duration(at - before);
        before = at;
        return h(
          "li",
          { dataset: { to: t.to } },
          h("time", { datetime: t.at, text: fmt.time(t.at) }),
          step ? h("span", { class: "bm-sub", text: "+" + step }) : null,
          h("span", { class: "bm-transition" }, t.from ? [h("span", { class: "bm-badge", dataset: { status: t.from }, text: fmt.status(t.from) }), " → "] : "", h("span", { class: "bm-badge", dataset: { status: t.to }, text: fmt.status(t.to) })),
          t.reason ? h("span", { class: "bm-reason", text: t.reason }) : null,
          t.by ? h("span", { class: "bm-sub", text: "by " + t.by }) : null
        );
      })
    );
  }

  function renderErrors(job) {
    const summary = job.errorSummary || [];
    if (!summary.length) {
      replace($("job-errors"), h("p", { class: "bm-quiet", text: "No errors." }));
      return;
    }
    replace(
      $("job-errors"),
      h(
        "table",
        { class: "bm-table bm-table-compact" },
        h("caption", { class: "bm-visually-hidden", text: "Errors by code" }),
        h("thead", {}, h("tr", {}, h("th", { scope: "col", text: "Error" }), h("th", { scope: "col", text: "Requests" }), h("th", { scope: "col", text: "Share of the job" }))),
        h(
          "tbody",
          {},
          summary.map((e) =>
            h(
              "tr",
              {},
              h("th", { scope: "row" }, h("code", { text: e.error })),
              h("td", { text: fmt.int(e.count) }),
              h("td", {}, h("span", { class: "bm-minibar bm-minibar-failed", style: "--share:" + e.percentage / 100, "aria-hidden": "true" }), fmt.pct(e.percentage))
            )
          )
        )
      )
    );
  }

  function renderConsumers(consumers) {
    if (!consumers.length) {
      replace($("job-consumers"), h("p", { class: "bm-quiet", text: "No consumer rows." }));
      return;
    }
    const cols = ["Consumer", "Requests", "Succeeded", "Failed", "Cancelled", "Cost", "Saved"];
    replace(
      $("job-consumers"),
      h(
        "div",
        { class: "bm-table-wrap" },
        h(
        "table",
        { class: "bm-table bm-table-compact" },
        h("thead", {}, h("tr", {}, cols.map((c) => h("th", { scope: "col", text: c })))),
        h(
          "tbody",
          {},
          consumers.map((c) =>
            h(
              "tr",
              {},
              h("th", { scope: "row", text: c.consumer }),
              h("td", { text: fmt.int(c.requestCount) }),
              h("td", { text: fmt.int(c.completedCount) }),
              h("td", { text: fmt.int(c.failedCount) }),
              h("td", { text: fmt.int(c.cancelledCount) }),
              h("td", { text: fmt.usd(c.cost) }),
              h("td", { text: fmt.usd(c.savings) })
            )
          )
        )
      )
      )
    );
  }

  function renderProviderErrors(errors) {
    const box = $("job-provider-errors");
    const list = Array.isArray(errors) ? errors : errors && Array.isArray(errors.data) ? errors.data : [];
    if (!list.length) {
      box.replaceChildren();
      return;
    }
    replace(
      box,
      h("h3", { text: "Errors reported by the provider" }),
      h(
        "ul",
        { class: "bm-errors" },
        list.slice(0, 50).map((e) => h("li", {}, e.line ? "line " + e.line + ": " : "", e.code ? h("code", { text: e.code }) : null, e.message ? " " + e.message : ""))
      )
    );
  }

  const cell = (label, content, cls) => h("td", { "data-label": label, class: cls }, h("div", { class: "bm-cell" }, content));

  function renderFailed(job) {
    const p = job.failedRequestsPagination;
    const body = $("failed-body");
    $("failed-summary").textContent = p.total
      ? fmt.int(p.total) + " request" + (p.total === 1 ? "" : "s") + " of this job failed or were cancelled."
      : "";
    $("page-info").textContent = p.pages > 1 ? "Page " + p.page + " of " + p.pages : "";
    $("page-prev").disabled = state.page <= 1;
    $("page-next").disabled = !p.pages || state.page >= p.pages;
    $("failed-pager").hidden = p.pages <= 1;
    if (!job.failedRequests.length) {
      const text = job.failedCount
        ? "No failed requests are left in this job: those sent again by a retry now belong to the retry job."
        : "No failed or cancelled requests.";
      replace(body, h("tr", { class: "bm-empty" }, h("td", { colspan: 7, text })));
      return;
    }
    replace(
      body,
      job.failedRequests.map((r) =>
        h(
          "tr",
          { dataset: { requestId: String(r.id) } },
          cell("Request", config.pages.requestAdmin ? h("a", { href: bm.url(config.pages.requestAdmin, r.id), text: "#" + r.id }) : "#" + r.id),
          cell("Custom id", h("code", { text: r.customId })),
          cell("Consumer", r.consumer),
          cell("Status", h("span", { class: "bm-badge", dataset: { status: r.status }, text: r.status })),
          cell("Error", r.errorCode ? h("code", { text: r.errorCode }) : "—"),
          cell("Message", r.errorMessage || "—", "bm-message"),
          cell("Attempts", fmt.int(r.attempts))
        )
      )
    );
  }

  function progressBar(job) {
    const total = job.requestCount || 0;
    const pct = (n) => (total ? Math.min(100, (100 * n) / total) : 0);
    return [
      h(
        "span",
        { class: "bm-progress bm-progress-large", role: "img", "aria-label": fmt.int(job.completedCount) + " succeeded and " + fmt.int(job.failedCount) + " failed of " + fmt.int(total) + " requests" },
        h("span", { class: "bm-progress-ok", style: "width:" + pct(job.completedCount) + "%" }),
        h("span", { class: "bm-progress-failed", style: "width:" + pct(job.failedCount) + "%" })
      ),
      h("span", { class: "bm-progress-text" }, fmt.int(job.completedCount) + " succeeded · " + fmt.int(job.failedCount) + " failed · " + fmt.int(total) + " requests"),
      job.forecast
        ? h("span", { class: "bm-progress-text bm-wrap", text: "Applied so far; the provider has done " + fmt.int(job.forecast.done) + " of " + fmt.int(job.forecast.total) + " lines." })
        : null,
    ];
  }

  const refresher = bm.refresher(load, config.detailRefreshSeconds);
  bm.refresh = refresher.refresh;
  bm.liveSocket = bm.liveRefresh(refresher, [{ what: "job", id: Number(jobId), frequency: "high" }]); // transitions, progress, results
  for (const action of ["retry", "cancel"]) {
    $("job-" + action).addEventListener("click", async () => {
      if (!state.job) return;
      if ((await bm.jobAction(action, state.job)) !== null) await refresher.refresh();
    });
  }
  const goTo = (n) => {
    state.page = n;
    const q = new URLSearchParams(location.search);
    if (n > 1) q.set("page", n);
    else q.delete("page");
    history.replaceState(null, "", location.pathname + (q.toString() ? "?" + q : ""));
    refresher.refresh();
  };
  $("page-prev").addEventListener("click", () => goTo(Math.max(1, state.page - 1)));
  $("page-next").addEventListener("click", () => goTo(state.page + 1));
  refresher.refresh();
})();
