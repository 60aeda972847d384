// The alarm system's KPIs (ISA-18.2 / IEC 62682, EEMUA 191) over 24 h, 7 d or 30 d: the gateway's
// figures, the bad actors, floods and stale alarms, and every asset's figures.
"use strict";

(function () {
  const { $, api, fmtTime, fmtDuration, setText, el, emptyRow } = window.GW;
  const page = $("kpi-page");
  let span = "24h";
  // A month of a busy line's alarms can take the gateway seconds to count when the report is not cached:
  // longer than the 8 s other calls get.
  const KPI_TIMEOUT_MS = 60000;

  function pct(x) {
    return typeof x === "number" ? Math.round(x * 100) + " %" : "–";
  }

  function num(x) {
    return typeof x === "number" ? String(Math.round(x * 100) / 100) : "–";
  }

  function verdictCounts(v) {
    const parts = Object.entries(v || {}).map(([k, n]) => n + " " + k.replace(/_/g, " "));
    return parts.length ? parts.join(", ") : "–";
  }

  function renderTiles(sr, live) {
    const g = sr.gateway;
    setText($("k-per-day"), num(g.per_day));
    setText($("k-alarms"), String(g.alarms));
    setText($("k-false"), pct(g.false_alarm_share));
    setText($("k-unjudged"), String(g.without_verdict));
    setText($("k-ack-med"), fmtDuration(g.ack_median_s));
    setText($("k-ack-p90"), fmtDuration(g.ack_p90_s));
    setText($("k-in-alarm"), fmtDuration(g.time_in_alarm_s));
    setText($("k-floods"), String(sr.floods.length));
    setText($("k-chatter"), String(sr.chattering_assets.length));
    setText($("k-stale"), String(live.stale.length));
  }

  function renderTables(sr) {
    $("bad-actors").replaceChildren(...(sr.bad_actors.length ? sr.bad_actors.map((b) => {
      const tr = el("tr");
      const a = el("a", null, b.asset);
      a.href = "/assets/" + encodeURIComponent(b.asset);
      const td = el("td");
      td.append(a);
      tr.append(td, el("td", null, String(b.alarms)), el("td", null, pct(b.share)));
      return tr;
    }) : [emptyRow(3, "No alarm in the span.")]));
    const events = [];
    for (const f of sr.floods) {
      const tr = el("tr", "flood-row");
      tr.append(el("td", null, "flood"), el("td", null, fmtTime(f.start)), el("td", null, fmtTime(f.end)),
        el("td", null, f.alarms + " alarms"));
      events.push(tr);
    }
    for (const s of sr.stale) {
      const tr = el("tr", "stale-row");
      tr.append(el("td", null, "stale"), el("td", null, fmtTime(s.start)), el("td", null, fmtDuration(s.active_s)),
        el("td", null, s.asset));
      events.push(tr);
    }
    $("events").replaceChildren(...(events.length ? events : [emptyRow(4, "None.")]));
    const rows = Object.entries(sr.assets).sort((x, y) => y[1].alarms - x[1].alarms).map(([asset, f]) => {
      const tr = el("tr");
      tr.dataset.asset = asset;
      tr.append(el("td", null, asset), el("td", null, String(f.alarms)), el("td", null, num(f.per_day)),
        el("td", null, pct(f.false_alarm_share)), el("td", null, String(f.without_verdict)),
        el("td", null, fmtDuration(f.ack_median_s)), el("td", null, fmtDuration(f.ack_p90_s)),
        el("td", null, fmtDuration(f.time_in_alarm_s)), el("td", f.chattering ? "verdict verdict-fault" : null,
          f.chattering ? f.chattering + " burst(s)" : "–"), el("td", null, verdictCounts(f.verdicts)));
      return tr;
    });
    $("kpi-assets").replaceChildren(...(rows.length ? rows : [emptyRow(10, "No alarm in the span.")]));
  }

  async function refresh() {
    const rep = await api("/api/kpis", { signal: AbortSignal.timeout(KPI_TIMEOUT_MS) });
    const sr = rep.spans[span];
    renderTiles(sr, rep.live);
    renderTables(sr);
    const t = rep.thresholds;
    setText($("kpi-when"), "computed " + fmtTime(rep.now));
    setText($("kpi-thresholds"), "Chattering: " + t.chatter_count + " raise/clear cycles within " +
      fmtDuration(t.chatter_window_s) + " · flood: " + t.flood_count + " alarms within " + fmtDuration(t.flood_window_s) +
      " · stale: active over " + fmtDuration(t.stale_s) + " (config [web.kpis]).");
    page.dataset.span = span;
    // When the first report was drawn, from the start of the navigation (benchmarks/kpi_page.py reads it).
    if (!page.dataset.firstReportMs) page.dataset.firstReportMs = performance.now().toFixed(1);
    page.dataset.loaded = "1";
  }

  document.addEventListener("DOMContentLoaded", () => {
    window.GW.site();
    const loop = window.GW.start(refresh, 10000);
    document.querySelectorAll(".span-btn").forEach((b) => b.addEventListener("click", () => {
      span = b.dataset.span;
      document.querySelectorAll(".span-btn").forEach((o) => o.classList.toggle("current", o === b));
      loop.now();
    }));
  });
})();
