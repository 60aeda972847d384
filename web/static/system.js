// The gateway's health: CPU and memory, connectors, outputs and their outboxes, silent sensors,
// dead letters, detection latency, and (engineers) the sign-in log.
"use strict";

(function () {
  const { $, api, can, fmtTime, fmtUptime, fmtNum, fmtBytes, setText, el, emptyRow } = window.GW;

  // A component's status as short "key value" lines: numbers and words, nested one level.
  function summary(st) {
    const parts = [];
    for (const [k, v] of Object.entries(st || {})) {
      if (v === null || v === undefined) continue;
      if (typeof v === "object" && !Array.isArray(v)) {
        const inner = Object.entries(v).filter(([, x]) => x !== null && typeof x !== "object")
          .map(([a, x]) => a + " " + x).join(", ");
        if (inner) parts.push(k + ": " + inner);
      } else if (!Array.isArray(v)) {
        parts.push(k + " " + v);
      }
    }
    return parts.join(" · ");
  }

  function table(tbody, obj, span) {
    const rows = Object.entries(obj || {}).map(([name, st]) => {
      const tr = el("tr");
      tr.dataset.name = name;
      tr.append(el("td", null, name), el("td", "small", summary(st)));
      return tr;
    });
    tbody.replaceChildren(...(rows.length ? rows : [emptyRow(span, "None.")]));
  }

  // Asset names an input refused (not in its list, or its table full of names still in use).
  function refusedAssets(inputs) {
    const rows = Object.entries(inputs || {}).filter(([, st]) => st && st.admission && st.admission.assets_refused)
      .map(([name, st]) => {
        const a = st.admission, tr = el("tr");
        tr.append(el("td", null, name), el("td", null, fmtNum(a.assets_refused)),
          el("td", null, fmtNum(a.assets_evicted || 0)), el("td", "mono small", (a.last_refused || []).join(", ")));
        return tr;
      });
    $("s-refused-assets").replaceChildren(...(rows.length ? rows : [emptyRow(4, "None.")]));
  }

  async function refresh(info) {
    const s = await api("/api/system");
    setText($("site"), s.site || "");
    const p = s.process || {};
    setText($("s-cpu"), typeof p.process_cpu_percent === "number" ? p.process_cpu_percent.toFixed(1) : "…");
    setText($("s-rss"), fmtBytes(p.process_rss_bytes));
    setText($("s-mem"), fmtBytes(p.memory_available_bytes) + " / " + fmtBytes(p.memory_total_bytes));
    setText($("s-load"), (p.load_1m === null ? "–" : String(p.load_1m)) + " / " + (p.cores || "?"));
    setText($("s-uptime"), fmtUptime(s.uptime_s));
    table($("s-inputs"), s.inputs, 2);
    table($("s-outputs"), s.outputs, 2);
    const silent = s.silent_sensors || [];
    $("s-silent").replaceChildren(...(silent.length ? silent.map((x) =>
      el("li", null, x.asset + " / " + x.sensor + " — silent " + Math.round(x.silent_for_s) + " s"))
      : [el("li", "muted", "None: every sensor is reporting.")]));
    const dead = Object.entries(s.dead_letters_by_reason || {});
    $("s-dead").replaceChildren(...(dead.length ? dead.map(([k, v]) => {
      const tr = el("tr");
      tr.append(el("td", "mono", k), el("td", null, fmtNum(v)));
      return tr;
    }) : [emptyRow(2, "None.")]));
    refusedAssets(s.inputs);
    const lat = s.latency || {}, fl = s.in_flight || {}, c = s.counters || {};
    const dl = $("s-detect");
    const pairs = [["Readings", fmtNum(c.readings)], ["Windows scored", fmtNum(c.windows_scored)],
      ["Decision latency p50 / p99", lat.p50_us ? lat.p50_us + " / " + lat.p99_us + " µs" : "–"],
      ["In flight (now / limit)", (fl.now || 0) + " / " + (fl.limit || "–")], ["Store queue", String(fl.store_queue || 0)],
      ["Live page connections", s.live ? s.live.streams + " / " + s.live.max_streams : "–"]];
    dl.replaceChildren(...pairs.flatMap(([k, v]) => [el("dt", null, k), el("dd", null, v)]));
    const panel = $("s-auth-panel");
    panel.hidden = !can("engineer");
    if (can("engineer") && (info.tick % 3 === 0 || info.reason !== "poll")) {
      const log = await api("/api/auth-log?limit=50");
      $("s-auth").replaceChildren(...(log.entries.length ? log.entries.map((e) => {
        const tr = el("tr", "ev-" + e.event);
        tr.append(el("td", null, fmtTime(e.ts)), el("td", null, e.event.replace(/_/g, " ")), el("td", null, e.name),
          el("td", "mono", e.addr), el("td", "small", e.detail));
        return tr;
      }) : [emptyRow(5, "None.")]));
    }
  }

  document.addEventListener("DOMContentLoaded", () => { window.GW.start(refresh, 5000); });
})();
