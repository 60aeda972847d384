// One asset: its severity now, the severity and every sensor over a chosen range (uPlot, vendored),
// alarm episodes shaded, the top contributing sensors, and its alarms.
"use strict";

(function () {
  const { $, api, fmtTime, setText, el, emptyRow } = window.GW;
  const page = $("asset-page");
  const asset = page.dataset.asset;
  let range = page.dataset.range;
  let charts = [];
  let lastKey = "";

  function width() {
    return Math.max(280, page.clientWidth - 40);
  }

  // Alarm episodes as shaded bands, and the threshold as a dashed line, drawn under the series.
  function episodesPlugin(episodes, threshold) {
    return {
      hooks: {
        drawClear: [(u) => {
          const ctx = u.ctx;
          const { left, top, width: w, height: h } = u.bbox;
          ctx.save();
          for (const ep of episodes) {
            const x0 = Math.max(left, u.valToPos(ep.start, "x", true));
            const x1 = Math.min(left + w, u.valToPos(ep.end || u.scales.x.max, "x", true));
            if (x1 > x0) {
              ctx.fillStyle = ep.level === "critical" ? "rgba(198,40,40,0.18)" : "rgba(230,81,0,0.14)";
              ctx.fillRect(x0, top, x1 - x0, h);
            }
          }
          if (threshold !== null) {
            const y = u.valToPos(threshold, "y", true);
            ctx.strokeStyle = "#c62828";
            ctx.setLineDash([6, 4]);
            ctx.lineWidth = 1.5;
            ctx.beginPath();
            ctx.moveTo(left, y);
            ctx.lineTo(left + w, y);
            ctx.stroke();
          }
          ctx.restore();
        }],
      },
    };
  }

  function chart(target, title, data, series, opts) {
    const o = Object.assign({
      title: title, width: width(), height: 220,
      scales: { x: { time: true, range: [opts.since, opts.until] } },
      axes: [{ stroke: "#37474f" }, { stroke: "#37474f", size: 56 }],
      series: [{}].concat(series),
      legend: { live: true },
      cursor: { drag: { x: false, y: false } },
      plugins: [episodesPlugin(opts.episodes, opts.threshold === undefined ? null : opts.threshold)],
    }, opts.extra || {});
    // eslint-disable-next-line no-undef
    return new uPlot(o, data, target);
  }

  function render(t) {
    charts.forEach((c) => c.destroy());
    charts = [];
    const common = { since: t.since, until: t.until, episodes: t.episodes };
    const scoreBox = $("chart-score");
    scoreBox.replaceChildren();
    const s = t.score;
    charts.push(chart(scoreBox, "", [s.t, s.severity], [
      { label: "severity (peak)", stroke: "#1565c0", width: 2, points: { show: s.t.length < 60 } },
    ], Object.assign({}, common, {
      threshold: t.threshold_severity,
      extra: { scales: { x: { time: true, range: [t.since, t.until] }, y: { range: [0, 100] } } },
    })));
    scoreBox.dataset.points = String(s.t.length);

    const box = $("sensor-charts");
    box.replaceChildren();
    for (const [name, d] of Object.entries(t.sensors)) {
      const wrap = el("div", "chart sensor-chart");
      wrap.dataset.sensor = name;
      wrap.dataset.points = String(d.t.length);
      box.append(wrap);
      if (!d.t.length) {
        wrap.append(el("p", "muted", name + ": no readings in this range."));
        continue;
      }
      charts.push(chart(wrap, name, [d.t, d.mean, d.min, d.max], [
        { label: "mean", stroke: "#263238", width: 2 },
        { label: "min", stroke: "#90a4ae", width: 1, dash: [4, 3] },
        { label: "max", stroke: "#90a4ae", width: 1, dash: [4, 3] },
      ], common));
    }
    setText($("trend-source"), "from the " + t.source + ", " + t.bucket_s.toFixed(t.bucket_s < 10 ? 1 : 0) +
      " s per point");
  }

  function renderHead(t, st) {
    const latest = t.latest;
    setText($("sev-now"), latest ? String(latest.severity) : "–");
    setText($("band-now"), latest ? latest.band : "no score yet");
    $("sev-now").parentElement.className = "sev-now band-" + (latest ? latest.band : "none");
    page.dataset.severity = latest ? String(latest.severity) : "";
    const alarm = (st.alarms || []).find((a) => a.asset === asset);
    const mode = (st.point_modes || {})[asset] || "in_service";
    setText($("asset-state"), alarm ? (alarm.state.replace(/_/g, " ") + (alarm.active ? ", " + alarm.level : "") +
      (alarm.acked_by ? ", acknowledged by " + alarm.acked_by : "")) : "normal" + (mode !== "in_service" ? " (" +
      mode.replace(/_/g, " ") + ")" : ""));
    const top = $("top-sensors");
    top.replaceChildren(...(t.top_sensors.length ? t.top_sensors.map((x) =>
      el("li", null, x.sensor + " — " + Math.round(x.share * 100) + " %")) : [el("li", "muted", "–")]));
  }

  function words(v) {
    return v.verdict.replace(/_/g, " ") + (v.cause ? " (" + v.cause.replace(/_/g, " ") + ")" : "");
  }

  // The episode's verdict: the current one with who and when, and every earlier one under it.
  function verdictCell(a) {
    const td = el("td", "verdict-cell");
    if (!a.verdict) {
      td.append(el("span", "muted", "none yet"));
      return td;
    }
    td.append(el("span", "verdict verdict-" + a.verdict.verdict, words(a.verdict)),
      el("span", "by small", " " + a.verdict.user + ", " + fmtTime(a.verdict.ts)));
    if (a.disputed) td.append(el("span", "disputed", "disputed"));
    if (a.verdicts.length > 1) {
      const ol = el("ol", "verdict-history");
      for (const v of a.verdicts.slice(0, -1)) ol.append(el("li", null, fmtTime(v.ts) + " " + v.user + ": " + words(v)));
      td.append(ol);
    }
    return td;
  }

  // This asset in the banner's live load: chattering now, or stale.
  document.addEventListener("alarm-load", (e) => {
    const load = e.detail;
    const chat = load.chattering.find((c) => c.asset === asset);
    const stale = load.stale.find((s) => s.asset === asset);
    const parts = [];
    if (chat) parts.push("Chattering: " + chat.cycles + " raise/clear cycles since " + fmtTime(chat.since));
    if (stale) parts.push("Stale: active for " + window.GW.fmtDuration(stale.active_s));
    setText($("asset-load"), parts.join(" · "));
    $("asset-load").hidden = !parts.length;
    page.dataset.chattering = chat ? "1" : "0";
  });

  async function refreshAlarms() {
    const body = await api("/api/alarms?asset=" + encodeURIComponent(asset) + "&limit=20");
    const rows = body.alarms.map((a) => {
      const tr = el("tr");
      tr.append(el("td", null, fmtTime(a.start)), el("td", null, a.active ? "active" : fmtTime(a.end)),
        el("td", null, a.level));
      const st = el("td");
      st.append(el("span", "pill st-" + a.state, a.state.replace(/_/g, " ")));
      tr.append(st, el("td", null, a.peak_severity + " " + a.peak_band), el("td", null, (a.top_sensors || []).join(", ")),
        el("td", null, a.acked_by || "–"), verdictCell(a));
      tr.dataset.alarmId = a.id;
      return tr;
    });
    $("asset-alarms").replaceChildren(...(rows.length ? rows : [emptyRow(8, "None stored.")]));
  }

  async function refresh(info) {
    const [t, st] = await Promise.all([
      api("/api/assets/" + encodeURIComponent(asset) + "/trend?range=" + encodeURIComponent(range)),
      api("/api/status"),
    ]);
    setText($("site"), st.site || "");
    renderHead(t, st);
    // Redraw the charts when the data moved on (every poll in short ranges); keep the cursor otherwise.
    const key = [range, t.score.t.length, t.score.t[t.score.t.length - 1], t.episodes.length].join("|");
    if (key !== lastKey || info.reason !== "poll") {
      lastKey = key;
      render(t);
    }
    if (info.tick % 5 === 0 || info.reason !== "poll") await refreshAlarms();
    page.dataset.loaded = "1";
  }

  document.addEventListener("DOMContentLoaded", () => {
    const loop = window.GW.start(refresh, 5000);
    document.querySelectorAll(".range-btn").forEach((b) => b.addEventListener("click", () => {
      range = b.dataset.range;
      document.querySelectorAll(".range-btn").forEach((o) => o.classList.toggle("current", o === b));
      history.replaceState(null, "", "?range=" + encodeURIComponent(range));
      lastKey = "";
      loop.now();
    }));
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => charts.forEach((c) => c.setSize({ width: width(), height: 220 })), 150);
    });
  });
})();
