// Technician dashboard: polls the gateway's JSON API and updates the page in place.
// Plain JavaScript, no framework and no build step, so it runs offline from the gateway itself.
// Every value from the API is written with textContent (never innerHTML): asset and sensor
// names come from the field and must not be able to inject markup.
"use strict";

(function () {
  const POLL_MS = Number(document.body.dataset.pollMs) || 2000;
  const SLOW_EVERY = 5; // alarm history and dead letters: every 5th poll, or when their counters move
  const FETCH_TIMEOUT_MS = 8000;
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

  const $ = (id) => document.getElementById(id);
  const cards = new Map(); // asset -> card elements, kept across polls so inputs keep their values
  let tick = 0;
  let lastOk = null;
  let lastSlowKey = "";
  let modeChanges = 0; // mode changes the appliance counted; a new one re-asks who made it

  // -- helpers ----------------------------------------------------------------
  async function api(url, options) {
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), FETCH_TIMEOUT_MS);
    try {
      const resp = await fetch(url, Object.assign({ cache: "no-store", signal: ctrl.signal }, options || {}));
      let body = null;
      try { body = await resp.json(); } catch (_) { /* a non-JSON error page */ }
      if (!resp.ok) {
        const err = new Error((body && body.error) || ("HTTP " + resp.status));
        err.status = resp.status;
        throw err;
      }
      return body;
    } finally {
      clearTimeout(timer);
    }
  }

  function fmtTime(ts) {
    if (ts === null || ts === undefined) return "–";
    const d = new Date(ts * 1000);
    const time = d.toLocaleTimeString([], { hour12: false });
    return d.toDateString() === new Date().toDateString() ? time : d.toLocaleDateString() + " " + time;
  }

  function fmtUptime(s) {
    if (typeof s !== "number") return "–";
    s = Math.floor(s);
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    if (d) return d + " d " + h + " h";
    if (h) return h + " h " + String(m).padStart(2, "0") + " min";
    if (m) return m + " min " + String(s % 60).padStart(2, "0") + " s";
    return s + " s";
  }

  function fmtNum(n) {
    return typeof n === "number" ? n.toLocaleString() : "0";
  }

  function setText(el, text) {
    if (el.textContent !== text) el.textContent = text;
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  let toastTimer = null;
  function toast(message, ok) {
    const t = $("toast");
    t.textContent = message;
    t.className = "toast " + (ok ? "toast-ok" : "toast-bad");
    t.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { t.hidden = true; }, ok ? 6000 : 12000);
  }

  function setLink(ok, err) {
    const link = $("link");
    const banner = $("offline");
    if (ok) {
      lastOk = new Date();
      link.textContent = "Live";
      link.className = "link link-ok";
      banner.hidden = true;
      document.querySelector("main").classList.remove("stale");
    } else {
      link.textContent = "Offline";
      link.className = "link link-bad";
      banner.textContent = (lastOk ? "No answer from the gateway since " + fmtTime(lastOk / 1000)
        : "Cannot reach the gateway") + " (" + (err && err.message ? err.message : "error") +
        "). The values below may be out of date.";
      banner.hidden = false;
      document.querySelector("main").classList.add("stale");
    }
  }

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
    setText(card.peak, alarm && typeof alarm.peak_ratio === "number"
      ? alarm.peak_ratio.toFixed(2) + " × threshold" : "–");
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
      card.buttons.ack.disabled = !(alarm && !alarm.acked_by && alarm.state !== "normal");
      card.buttons.shelve.disabled = false;
      card.dur.disabled = false;
      card.buttons.in_service.disabled = mode === "in_service";
      card.buttons.out_of_service.disabled = mode === "out_of_service";
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
    const pts = rows.filter((r) => typeof r.ratio === "number" && isFinite(r.ratio));
    if (!pts.length) {
      card.line.setAttribute("points", "");
      setText(card.cap, "No scores yet.");
      return;
    }
    // The threshold line must always be on the chart, so the scale never ends below 2x threshold.
    const top = Math.max(2, ...pts.map((p) => p.ratio)) * 1.1;
    const y = (r) => (SPARK_H - (Math.min(r, top) / top) * SPARK_H).toFixed(1);
    const t0 = pts[0].t_end, t1 = pts[pts.length - 1].t_end;
    const x = (p, i) => (t1 > t0 ? ((p.t_end - t0) / (t1 - t0)) * SPARK_W
      : (pts.length > 1 ? (i / (pts.length - 1)) * SPARK_W : SPARK_W)).toFixed(1);
    const points = pts.map((p, i) => x(p, i) + "," + y(p.ratio)).join(" ");
    card.line.setAttribute("points", pts.length === 1 ? "0," + y(pts[0].ratio) + " " + points : points);
    const yThr = y(1);
    card.thr.setAttribute("y1", yThr);
    card.thr.setAttribute("y2", yThr);
    card.over.setAttribute("height", yThr);
    const last = pts[pts.length - 1];
    setText(card.cap, "Score ÷ threshold, last " + pts.length + " windows — now " + last.ratio.toFixed(2) +
      " at " + fmtTime(last.t_end));
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
        el("td", null, typeof a.peak_ratio === "number" ? a.peak_ratio.toFixed(2) : "–"),
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

  function emptyRow(span, text) {
    const tr = el("tr");
    const td = el("td", "muted", text);
    td.colSpan = span;
    tr.append(td);
    return tr;
  }

  // -- commands ---------------------------------------------------------------
  async function command(asset, action, card) {
    const userInput = $("user");
    const user = userInput.value.trim();
    if (!user) {
      userInput.classList.add("need");
      userInput.focus();
      toast("Enter your name before giving a command.", false);
      return;
    }
    userInput.classList.remove("need");
    try { localStorage.setItem("dashboard.user", user); } catch (_) { /* private mode */ }
    const body = { user: user, note: $("note").value.trim() };
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
      await api(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      toast(done + ": " + asset + " (" + user + ")", true);
      $("note").value = "";
    } catch (err) {
      toast(asset + ": " + err.message, false);
    } finally {
      card.busy = false;
    }
    await refresh(true);
  }

  // -- polling ----------------------------------------------------------------
  async function refresh(slow) {
    let st;
    try {
      st = await api("/api/status");
    } catch (err) {
      setLink(false, err);
      return;
    }
    setLink(true);
    const c = st.counters || {};
    modeChanges = Object.keys(c).filter((k) => k.startsWith("mode_")).reduce((n, k) => n + (Number(c[k]) || 0), 0);
    const assets = renderStatus(st);
    const slowKey = [c.dead_letters, c.alarm_raised, c.alarm_acknowledged, c.alarm_cleared].join("/");
    const tasks = [refreshScores(assets), refreshModes(assets)];
    if (slow || slowKey !== lastSlowKey) {
      lastSlowKey = slowKey;
      tasks.push(refreshAlarmHistory(), refreshDeadLetters());
    }
    await Promise.all(tasks.map((p) => p.catch(() => {})));
  }

  async function loop() {
    await refresh(tick % SLOW_EVERY === 0);
    tick += 1;
    setTimeout(loop, POLL_MS);
  }

  document.addEventListener("DOMContentLoaded", () => {
    try { $("user").value = localStorage.getItem("dashboard.user") || ""; } catch (_) { /* private mode */ }
    $("user").addEventListener("input", (e) => e.target.classList.remove("need"));
    loop();
  });
})();
