// The overview: every asset as a card (state, severity, sparkline, commands), recent alarms, dead letters.
// Refreshed by polling and at once when the live stream reports an alarm event or a mode change.
"use strict";

(function () {
  const { $, api, post, can, applyRoles, fmtTime, fmtUptime, fmtNum, setText, el, emptyRow, toast } = window.GW;
  const SLOW_EVERY = 5; // alarm history and dead letters: every 5th poll, or when their counters move
  const SPARK_W = 300, SPARK_H = 64, SPARK_N = 120;

  const STATE_TEXT = {
    unacknowledged: "Unacknowledged",
    acknowledged: "Acknowledged",
    returned_unacknowledged: "Returned, not acknowledged",
    shelved: "Shelved",
    suppressed: "Suppressed",
    out_of_service: "Out of service",
    normal: "Normal",
  };
  const MODE_TEXT = {
    in_service: "In service", shelved: "Shelved", suppressed: "Suppressed", out_of_service: "Out of service",
  };

  const cards = new Map(); // asset -> card elements, kept across polls so inputs keep their values
  let lastSlowKey = "";
  let modeChanges = 0; // mode changes the appliance counted; a new one re-asks who made it
  let loop = null;

  // -- status -----------------------------------------------------------------
  function renderStatus(st) {
    const counters = st.counters || {};
    setText($("site"), st.site || "");
    setText($("model-version"), (st.model && st.model.version) || "–");
    setText($("uptime"), fmtUptime(st.uptime_s));
    setText($("c-readings"), fmtNum(counters.readings));
    setText($("c-windows"), fmtNum(counters.windows_scored));
    setText($("c-alarms"), fmtNum(counters.alarm_raised));
    setText($("c-dead"), fmtNum(counters.dead_letters));
    // The gateway's clock is wrong and the data's time stands in for it (appliance/core/timebase.py).
    const clockMessage = (st.clock && st.clock.message) || "";
    setText($("clock-banner"), clockMessage);
    $("clock-banner").hidden = !clockMessage;

    const silent = st.silent_sensors || [];
    $("silent").hidden = silent.length === 0;
    const list = $("silent-list");
    list.replaceChildren(...silent.map((s) =>
      el("li", null, s.asset + " / " + s.sensor + " — silent " + Math.round(s.silent_for_s) + " s")));

    const alarms = new Map((st.alarms || []).map((a) => [a.asset, a]));
    const modes = st.point_modes || {};
    const assets = Array.from(new Set([...alarms.keys(), ...Object.keys(modes)])).sort();
    for (const asset of assets) updateCard(asset, alarms.get(asset) || null, modes[asset] || "in_service");
    for (const asset of Array.from(cards.keys())) {
      if (!assets.includes(asset)) { cards.get(asset).root.remove(); cards.delete(asset); }
    }
    $("no-assets").hidden = assets.length > 0;
    return assets;
  }

  function makeCard(asset) {
    const root = $("asset-card").content.firstElementChild.cloneNode(true);
    const q = (sel) => root.querySelector(sel);
    const card = {
      root, name: q(".asset-name"), state: q(".state-label"), level: q(".level-badge"),
      peak: q(".f-peak"), top: q(".f-top"), start: q(".f-start"), end: q(".f-end"),
      acked: q(".f-acked"), mode: q(".f-mode"), dur: q(".shelve-dur"),
      over: q(".spark-over"), thr: q(".spark-thr"), line: q(".spark-line"), cap: q(".spark-cap"),
      buttons: {
        ack: q(".btn-ack"), shelve: q(".btn-shelve"), in_service: q(".btn-rts"), out_of_service: q(".btn-oos"),
      },
      busy: false,
    };
    root.dataset.asset = asset;
    card.name.textContent = asset;
    card.name.href = "/assets/" + encodeURIComponent(asset);
    applyRoles(root);
    q(".spark-svg").setAttribute("aria-label", "Recent anomaly scores of " + asset);
    for (const [action, button] of Object.entries(card.buttons)) {
      button.addEventListener("click", () => command(asset, action, card));
    }
    // Keep cards in name order as assets appear.
    const after = Array.from(cards.keys()).sort().find((a) => a > asset);
    $("assets").insertBefore(root, after ? cards.get(after).root : null);
    cards.set(asset, card);
    return card;
  }

  function updateCard(asset, alarm, mode) {
    const card = cards.get(asset) || makeCard(asset);
    const modeState = { shelved: "shelved", suppressed: "suppressed", out_of_service: "out_of_service" };
    const state = alarm ? alarm.state : (modeState[mode] || "normal");
    card.root.className = "card st-" + state;
    card.root.dataset.state = state;
    card.root.dataset.mode = mode;
    setText(card.state, STATE_TEXT[state] || state);

    const active = !!(alarm && alarm.active);
    card.level.hidden = !active;
    if (active) {
      setText(card.level, alarm.level);
      card.level.className = "level-badge" + (alarm.level === "critical" ? " level-critical" : "");
    }
    setText(card.peak, alarm && typeof alarm.peak_severity === "number"
      ? alarm.peak_severity + " (" + alarm.peak_band + ")" : "–");
    card.peak.title = alarm && typeof alarm.peak_ratio === "number"
      ? "score " + alarm.peak_ratio.toFixed(2) + " × threshold" : "";
    const top = alarm && alarm.top_sensors && alarm.top_sensors.length ? alarm.top_sensors : null;
    const topKey = top ? top.join("\n") : "";
    if (card.top.dataset.key !== topKey) {
      card.top.dataset.key = topKey;
      // One unbreakable chip per sensor, most responsible first: a name never splits across lines.
      card.top.replaceChildren(...(top ? top.map((s, i) => el("span", "sensor", s + (i < top.length - 1 ? "," : "")))
        : [document.createTextNode("–")]));
    }
    setText(card.start, alarm ? fmtTime(alarm.start) : "–");
    setText(card.end, alarm ? (alarm.active ? "still active" : fmtTime(alarm.end)) : "–");
    setText(card.acked, (alarm && alarm.acked_by) || "–");
    let modeText = MODE_TEXT[mode] || mode;
    if (mode === "shelved" && alarm && alarm.shelved_until) modeText += " until " + fmtTime(alarm.shelved_until);
    card.modeText = modeText;
    card.modeUntil = (mode === "shelved" && alarm && alarm.shelved_until) || null;
    card.modeKey = mode === "in_service" ? "" : [mode, card.modeUntil, modeChanges].join("|");
    renderMode(card);

    if (!card.busy) {
      card.buttons.ack.disabled = !can("technician") || !(alarm && !alarm.acked_by && alarm.state !== "normal");
      card.buttons.shelve.disabled = !can("technician");
      card.dur.disabled = !can("technician");
      card.buttons.in_service.disabled = !can("technician") || mode === "in_service";
      card.buttons.out_of_service.disabled = !can("engineer") || mode === "out_of_service";
    }
  }

  // -- who changed a point's mode ---------------------------------------------
  function renderMode(card) {
    const by = card.modeBy && card.modeBy.key === card.modeKey ? card.modeBy : null;
    setText(card.mode, card.modeText + (by ? " by " + by.user : ""));
    const title = by && by.note ? by.note : "";
    if (card.mode.title !== title) card.mode.title = title;
  }

  // A point out of service for a week must still say who took it out, so the latest
  // change is fetched from the store; only when the mode changes, not on every poll.
  async function refreshModes(assets) {
    await Promise.all(assets.map(async (asset) => {
      const card = cards.get(asset);
      const key = card ? card.modeKey : "";
      if (!card || !key || (card.modeBy && card.modeBy.key === key)) return;
      try {
        const body = await api("/api/assets/" + encodeURIComponent(asset) + "/modes?limit=1");
        const last = body.mode_changes[0];
        // The store may not hold the newest change yet; then ask again next poll.
        if (last && card.modeKey === key && last.mode === card.root.dataset.mode &&
            (card.modeUntil === null || last.shelved_until === card.modeUntil)) {
          card.modeBy = { key: key, user: last.user, note: last.note };
          renderMode(card);
        }
      } catch (_) { /* the status poll reports connectivity; the name is tried again next poll */ }
    }));
  }

  // -- sparklines -------------------------------------------------------------
  async function refreshScores(assets) {
    await Promise.all(assets.map(async (asset) => {
      try {
        const body = await api("/api/scores?asset=" + encodeURIComponent(asset) + "&limit=" + SPARK_N);
        const card = cards.get(asset);
        if (card) drawSpark(card, body.scores.slice().reverse());
      } catch (_) { /* the status poll reports connectivity; a missing sparkline is not worth a second alert */ }
    }));
  }

  function drawSpark(card, rows) {
    const pts = rows.filter((r) => typeof r.severity === "number");
    if (!pts.length) {
      card.line.setAttribute("points", "");
      setText(card.cap, "No scores yet.");
      return;
    }
    // Severity is 0-100 with the threshold at GW.thresholdSeverity: the scale is fixed, never rescaled.
    const y = (s) => (SPARK_H - (Math.max(0, Math.min(100, s)) / 100) * SPARK_H).toFixed(1);
    const t0 = pts[0].t_end, t1 = pts[pts.length - 1].t_end;
    const x = (p, i) => (t1 > t0 ? ((p.t_end - t0) / (t1 - t0)) * SPARK_W
      : (pts.length > 1 ? (i / (pts.length - 1)) * SPARK_W : SPARK_W)).toFixed(1);
    const points = pts.map((p, i) => x(p, i) + "," + y(p.severity)).join(" ");
    card.line.setAttribute("points", pts.length === 1 ? "0," + y(pts[0].severity) + " " + points : points);
    const yThr = y(window.GW.thresholdSeverity);
    card.thr.setAttribute("y1", yThr);
    card.thr.setAttribute("y2", yThr);
    card.over.setAttribute("height", yThr);
    const last = pts[pts.length - 1];
    card.root.dataset.severity = String(last.severity);
    setText(card.cap, "Severity, last " + pts.length + " windows — now " + last.severity + " (" + last.band +
      ") at " + fmtTime(last.t_end));
  }

  // -- slower panels ----------------------------------------------------------
  async function refreshAlarmHistory() {
    const body = await api("/api/alarms?limit=15");
    const rows = body.alarms.map((a) => {
      const tr = el("tr");
      tr.append(el("td", null, a.asset), el("td", null, a.level));
      const st = el("td");
      st.append(el("span", "pill st-" + a.state, STATE_TEXT[a.state] || a.state));
      tr.append(st, el("td", null, fmtTime(a.start)), el("td", null, a.active ? "active" : fmtTime(a.end)),
        el("td", null, typeof a.peak_severity === "number" ? a.peak_severity + " " + a.peak_band : "–"),
        el("td", null, a.acked_by || "–"));
      return tr;
    });
    $("alarm-rows").replaceChildren(...(rows.length ? rows : [emptyRow(7, "None stored.")]));
  }

  async function refreshDeadLetters() {
    const body = await api("/api/dead-letters?limit=20");
    const rows = body.dead_letters.map((d) => {
      const tr = el("tr");
      const reason = el("td");
      reason.append(el("span", "mono", d.code));
      if (d.detail) reason.append(document.createTextNode(": " + d.detail));
      tr.append(el("td", null, fmtTime(d.received_at)), el("td", null, d.source), reason,
        el("td", "mono", d.payload + (d.truncated ? " …" : "")));
      return tr;
    });
    $("dead-rows").replaceChildren(...(rows.length ? rows : [emptyRow(4, "None.")]));
  }


  // -- commands ---------------------------------------------------------------
  async function command(asset, action, card) {
    const body = { note: $("note").value.trim() };
    const base = "/api/alarms/" + encodeURIComponent(asset);
    let url, done;
    if (action === "ack") {
      url = base + "/ack";
      done = "Acknowledged";
    } else if (action === "shelve") {
      url = base + "/shelve";
      body.duration_s = Number(card.dur.value);
      done = "Shelved for " + card.dur.selectedOptions[0].textContent;
    } else {
      if (action === "out_of_service" &&
          !window.confirm("Take " + asset + " out of service? It will raise no alarm until returned to service.")) {
        return;
      }
      url = base + "/mode";
      body.mode = action;
      done = action === "in_service" ? "Returned to service" : "Taken out of service";
    }
    card.busy = true;
    Object.values(card.buttons).forEach((b) => { b.disabled = true; });
    try {
      await post(url, body);
      toast(done + ": " + asset + " (" + document.body.dataset.user + ")", true);
      $("note").value = "";
    } catch (err) {
      toast(asset + ": " + err.message, false);
    } finally {
      card.busy = false;
    }
    if (loop) loop.now();
  }

  // -- polling ----------------------------------------------------------------
  async function refresh(info) {
    const st = await api("/api/status");
    const c = st.counters || {};
    modeChanges = Object.keys(c).filter((k) => k.startsWith("mode_")).reduce((n, k) => n + (Number(c[k]) || 0), 0);
    const assets = renderStatus(st);
    const slowKey = [c.dead_letters, c.alarm_raised, c.alarm_acknowledged, c.alarm_cleared].join("/");
    const tasks = [refreshScores(assets), refreshModes(assets)];
    if (info.tick % SLOW_EVERY === 0 || info.reason !== "poll" || slowKey !== lastSlowKey) {
      lastSlowKey = slowKey;
      tasks.push(refreshAlarmHistory(), refreshDeadLetters());
    }
    await Promise.all(tasks.map((p) => p.catch(() => {})));
  }

  document.addEventListener("DOMContentLoaded", () => {
    loop = window.GW.start(refresh);
  });
})();
