/* batchmon charts: small SVG bar and time-series charts, drawn at the container's real width
 * (so text stays readable on a phone), with labelled axes and units, a legend, a text summary
 * for screen readers and the numbers in a table. No library, no build step. */
(function () {
  "use strict";
  const bm = (window.batchmon = window.batchmon || {});
  const { h, replace } = bm;
  const NS = "http://www.w3.org/2000/svg";
  let serial = 0;

  function s(tag, attrs, ...children) {
    const el = document.createElementNS(NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      if (key === "text") el.textContent = value;
      else el.setAttribute(key, value);
    }
    for (const child of children.flat()) if (child) el.append(child);
    return el;
  }

  /* Round axis steps (1, 2, 2.5, 5 × 10^n) from 0 to at least max. */
  function ticks(max, count, integer) {
    if (!(max > 0)) return [0, 1];
    let step = max / count;
    const magnitude = Math.pow(10, Math.floor(Math.log10(step)));
    const norm = step / magnitude;
    step = (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 2.5 ? 2.5 : norm <= 5 ? 5 : 10) * magnitude;
    if (integer) step = Math.max(1, Math.ceil(step));
    const out = [];
    for (let v = 0; v < max + step * 0.999; v += step) out.push(Number(v.toPrecision(12)));
    return out.length > 1 ? out : [0, step];
  }

  const observer =
    "ResizeObserver" in window
      ? new ResizeObserver((entries) => {
          for (const entry of entries) {
            const box = entry.target;
            const width = Math.round(entry.contentRect.width);
            if (box._chart && width && width !== box._chartWidth) draw(box);
          }
        })
      : null;

  function mount(box, chart) {
    box._chart = chart;
    if (observer && !box._observed) {
      observer.observe(box);
      box._observed = true;
    }
    draw(box);
  }

  function draw(box) {
    const chart = box._chart;
    const width = Math.max(260, Math.round(box.clientWidth || 320));
    box._chartWidth = width;
    const id = box._chartId || (box._chartId = "bm-chart-" + ++serial);
    const figure = h("figure", { class: "bm-figure" });
    const caption = h("figcaption", { class: "bm-figcaption" }, h("span", { class: "bm-figtitle", text: chart.title }));
    if (chart.legend) {
      caption.append(
        h("ul", { class: "bm-legend" }, chart.legend.map((item) => h("li", {}, h("span", { class: "bm-swatch " + item.cls, "aria-hidden": "true" }), item.name)))
      );
    }
    figure.append(caption);
    const svg = chart.render(width, id);
    figure.append(svg);
    if (chart.note) figure.append(h("p", { class: "bm-chart-note", text: chart.note }));
    if (chart.table) {
      const details = h("details", { class: "bm-details bm-chart-data", open: box._tableOpen ? true : null });
      details.addEventListener("toggle", () => (box._tableOpen = details.open));
      details.append(h("summary", { text: "Show the numbers" }), chart.table());
      figure.append(details);
    }
    replace(box, figure);
  }

  function frame(width, height, yTicks, format, yLabel) {
    const labelWidth = Math.max(...yTicks.map((t) => format(t).length)) * 7 + 8;
    const m = { top: 14, right: 14, bottom: 46, left: 26 + labelWidth };
    return { m, w: width - m.left - m.right, hgt: height - m.top - m.bottom, width, height, format, yLabel };
  }

  function axes(f, yTicks, yMax) {
    const g = s("g", { class: "bm-axis" });
    for (const t of yTicks) {
      const y = f.m.top + f.hgt - (t / yMax) * f.hgt;
      g.append(s("line", { x1: f.m.left, x2: f.m.left + f.w, y1: y, y2: y, class: t === 0 ? "bm-axis-line" : "bm-grid-line" }));
      g.append(s("text", { x: f.m.left - 6, y: y + 4, "text-anchor": "end", class: "bm-tick", text: f.format(t) }));
    }
    const cy = f.m.top + f.hgt / 2;
    g.append(s("text", { x: 12, y: cy, transform: `rotate(-90 12 ${cy})`, "text-anchor": "middle", class: "bm-axis-title", text: f.yLabel }));
    return g;
  }

  function emptyNote(f, message) {
    return s("text", { x: f.m.left + f.w / 2, y: f.m.top + f.hgt / 2, "text-anchor": "middle", class: "bm-chart-empty", text: message });
  }

  function svgRoot(id, width, height, title, desc) {
    return s(
      "svg",
      { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-labelledby": id + "-t " + id + "-d", class: "bm-svg" },
      s("title", { id: id + "-t", text: title }),
      s("desc", { id: id + "-d", text: desc })
    );
  }

  /* Categories as vertical bars: [{label, value, cls}] */
  bm.charts = {};
  bm.charts.bars = function (box, { title, yLabel, xLabel, note, categories, format, emptyMessage }) {
    format = format || bm.fmt.int;
    const values = categories.map((c) => c.value || 0);
    const yTicks = ticks(Math.max(...values), 4, true);
    const yMax = yTicks[yTicks.length - 1];
    const desc = categories.map((c) => c.label + ": " + format(c.value)).join(", ");
    mount(box, {
      title,
      note,
      render(width, id) {
        const f = frame(width, 210, yTicks, format, yLabel);
        const svg = svgRoot(id, width, f.height, title, desc);
        svg.append(axes(f, yTicks, yMax));
        const band = f.w / categories.length;
        categories.forEach((c, i) => {
          const value = c.value || 0;
          const barH = (value / yMax) * f.hgt;
          const x = f.m.left + i * band + band * 0.18;
          const y = f.m.top + f.hgt - barH;
          svg.append(
            s("rect", { x, y, width: band * 0.64, height: Math.max(barH, value ? 1 : 0), class: "bm-bar " + c.cls }, s("title", { text: c.label + ": " + format(value) })),
            s("text", { x: x + band * 0.32, y: y - 4, "text-anchor": "middle", class: "bm-bar-value", text: format(value) }),
            s("text", { x: f.m.left + (i + 0.5) * band, y: f.m.top + f.hgt + 16, "text-anchor": "middle", class: "bm-tick", text: c.label })
          );
        });
        svg.append(s("text", { x: f.m.left + f.w / 2, y: f.height - 6, "text-anchor": "middle", class: "bm-axis-title", text: xLabel }));
        if (!values.some((v) => v)) svg.append(emptyNote(f, emptyMessage || "No jobs"));
        return svg;
      },
    });
  };

  /* Time buckets: series [{name, values, cls, type: "bar"|"line"}]; bars of one chart stack. */
  bm.charts.timeline = function (box, { title, yLabel, starts, interval, series, format, integer, note, emptyMessage }) {
    format = format || bm.fmt.num;
    const n = starts.length;
    const stackTop = starts.map((_, i) => series.filter((x) => x.type === "bar").reduce((sum, x) => sum + (x.values[i] || 0), 0));
    const lineMax = Math.max(0, ...series.filter((x) => x.type !== "bar").flatMap((x) => x.values));
    const yTicks = ticks(Math.max(lineMax, ...stackTop, 0), 4, integer);
    const yMax = yTicks[yTicks.length - 1];
    const daily = interval >= 86400;
    const tickTime = new Intl.DateTimeFormat("en-GB", daily ? { timeZone: bm.fmt.zone, day: "numeric", month: "short" } : { timeZone: bm.fmt.zone, hour: "2-digit", minute: "2-digit" });
    const bucket = interval >= 86400 ? interval / 86400 + " d" : interval >= 3600 ? interval / 3600 + " h" : interval / 60 + " min";
    const xLabel = "Time (" + bm.fmt.zone + "), " + bucket + " buckets";
    const peak = Math.max(0, ...stackTop, lineMax);
    const desc = n + " buckets of " + bucket + "; " + series.map((x) => x.name + " peak " + format(Math.max(0, ...x.values))).join("; ");
    mount(box, {
      title,
      note,
      legend: series.map((x) => ({ name: x.name, cls: x.cls })),
      render(width, id) {
        const f = frame(width, 230, yTicks, format, yLabel);
        const svg = svgRoot(id, width, f.height, title, desc);
        svg.append(axes(f, yTicks, yMax));
        const band = f.w / Math.max(n, 1);
        const y = (v) => f.m.top + f.hgt - (v / yMax) * f.hgt;
        const base = starts.map(() => 0);
        for (const x of series.filter((x) => x.type === "bar")) {
          x.values.forEach((v, i) => {
            if (!v) return;
            const top = y(base[i] + v);
            svg.append(
              s(
                "rect",
                { x: f.m.left + i * band + band * 0.12, y: top, width: Math.max(band * 0.76, 1), height: Math.max(y(base[i]) - top, 1), class: "bm-bar " + x.cls },
                s("title", { text: tickTime.format(starts[i]) + " · " + x.name + ": " + format(v) })
              )
            );
            base[i] += v;
          });
        }
        for (const x of series.filter((x) => x.type !== "bar")) {
          const points = x.values.map((v, i) => [f.m.left + (i + 0.5) * band, y(v || 0)]);
          svg.append(s("polyline", { points: points.map((p) => p.join(",")).join(" "), class: "bm-line " + x.cls }));
          points.forEach((p, i) =>
            svg.append(s("circle", { cx: p[0], cy: p[1], r: n > 40 ? 1.5 : 2.5, class: "bm-dot " + x.cls }, s("title", { text: tickTime.format(starts[i]) + " · " + x.name + ": " + format(x.values[i]) })))
          );
        }
        const every = Math.max(1, Math.ceil((n * 54) / f.w));
        for (let i = 0; i < n; i += every) {
          const cx = f.m.left + i * band;
          svg.append(
            s("line", { x1: cx, x2: cx, y1: f.m.top + f.hgt, y2: f.m.top + f.hgt + 4, class: "bm-axis-line" }),
            s("text", { x: cx, y: f.m.top + f.hgt + 17, "text-anchor": "middle", class: "bm-tick", text: tickTime.format(starts[i]) })
          );
        }
        svg.append(s("text", { x: f.m.left + f.w / 2, y: f.height - 6, "text-anchor": "middle", class: "bm-axis-title", text: xLabel }));
        if (!peak) svg.append(emptyNote(f, emptyMessage || "Nothing in this range"));
        return svg;
      },
      table() {
        return h(
          "table",
          { class: "bm-table bm-table-compact" },
          h("thead", {}, h("tr", {}, h("th", { scope: "col", text: "From" }), series.map((x) => h("th", { scope: "col", text: x.name + " (" + yLabel + ")" })))),
          h(
            "tbody",
            {},
            starts.map((start, i) => h("tr", {}, h("td", { text: bm.fmt.time(start.toISOString()) }), series.map((x) => h("td", { text: format(x.values[i]) }))))
          )
        );
      },
    });
  };
  /* A batch's lines done over real time (the progress samples), the total as a ceiling and, while it
   * runs, the forecast: a dashed projection to the estimate and the earliest–latest band. */
  bm.charts.progress = function (box, { title, points, total, forecast, note, emptyMessage }) {
    const format = bm.fmt.int;
    const ends = forecast && forecast.eta ? [forecast.eta, forecast.earliest, forecast.latest].filter(Boolean).map(Date.parse) : [];
    const times = points.map((p) => p.at);
    const t0 = times.length ? Math.min(...times) : Date.now();
    const t1 = Math.max(t0 + 60000, ...times, ...ends);
    const yTicks = ticks(Math.max(total || 0, ...points.map((p) => p.done)), 4, true);
    const yMax = yTicks[yTicks.length - 1];
    const long = t1 - t0 > 36 * 3600 * 1000;
    const tickTime = new Intl.DateTimeFormat("en-GB", long ? { timeZone: bm.fmt.zone, day: "numeric", month: "short", hour: "2-digit" } : { timeZone: bm.fmt.zone, hour: "2-digit", minute: "2-digit" });
    const last = points[points.length - 1];
    const desc =
      points.length + " progress samples" + (last ? "; " + format(last.done) + " of " + format(total) + " lines done at " + bm.fmt.time(new Date(last.at).toISOString()) : "") +
      (forecast && forecast.eta ? "; expected to finish " + bm.fmt.time(forecast.eta) : "");
    const legend = [{ name: "Lines done", cls: "bm-c-ok" }];
    if (ends.length) legend.push({ name: "Forecast (range shaded)", cls: "bm-c-processing" });
    mount(box, {
      title,
      note,
      legend,
      render(width, id) {
        const f = frame(width, 230, yTicks, format, "Lines");
        const svg = svgRoot(id, width, f.height, title, desc);
        svg.append(axes(f, yTicks, yMax));
        const x = (t) => f.m.left + ((t - t0) / (t1 - t0)) * f.w;
        const y = (v) => f.m.top + f.hgt - (v / yMax) * f.hgt;
        if (total) svg.append(s("line", { x1: f.m.left, x2: f.m.left + f.w, y1: y(total), y2: y(total), class: "bm-total-line" }, s("title", { text: "Total: " + format(total) + " lines" })));
        if (ends.length && last) {
          const [eta, earliest, latest] = [forecast.eta, forecast.earliest || forecast.eta, forecast.latest || forecast.eta].map(Date.parse);
          svg.append(
            s("polygon", { points: [[x(last.at), y(last.done)], [x(earliest), y(total)], [x(latest), y(total)]].map((p) => p.join(",")).join(" "), class: "bm-forecast-band" }),
            s("line", { x1: x(last.at), y1: y(last.done), x2: x(eta), y2: y(total), class: "bm-forecast-line" }, s("title", { text: "Expected finish: " + bm.fmt.time(forecast.eta) }))
          );
        }
        if (points.length) {
          const xy = points.map((p) => [x(p.at), y(p.done)]);
          svg.append(s("polyline", { points: xy.map((p) => p.join(",")).join(" "), class: "bm-line bm-c-ok" }));
          xy.forEach((p, i) =>
            svg.append(s("circle", { cx: p[0], cy: p[1], r: points.length > 60 ? 1.5 : 2.5, class: "bm-dot bm-c-ok" }, s("title", { text: bm.fmt.time(new Date(points[i].at).toISOString()) + " · " + format(points[i].done) + " lines" })))
          );
        }
        const count = Math.max(2, Math.floor(f.w / 90));
        for (let i = 0; i <= count; i++) {
          const t = t0 + ((t1 - t0) * i) / count;
          svg.append(
            s("line", { x1: x(t), x2: x(t), y1: f.m.top + f.hgt, y2: f.m.top + f.hgt + 4, class: "bm-axis-line" }),
            s("text", { x: x(t), y: f.m.top + f.hgt + 17, "text-anchor": "middle", class: "bm-tick", text: tickTime.format(new Date(t)) })
          );
        }
        svg.append(s("text", { x: f.m.left + f.w / 2, y: f.height - 6, "text-anchor": "middle", class: "bm-axis-title", text: "Time (" + bm.fmt.zone + ")" }));
        if (!points.length) svg.append(emptyNote(f, emptyMessage || "No progress seen yet"));
        return svg;
      },
      table() {
        return h(
          "table",
          { class: "bm-table bm-table-compact" },
          h("thead", {}, h("tr", {}, ["Seen at", "Completed", "Failed", "Total"].map((c) => h("th", { scope: "col", text: c })))),
          h("tbody", {}, points.map((p) => h("tr", {}, h("td", { text: bm.fmt.time(new Date(p.at).toISOString()) }), h("td", { text: format(p.completed) }), h("td", { text: format(p.failed) }), h("td", { text: format(p.total) }))))
        );
      },
    });
  };
})();
