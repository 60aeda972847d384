// Shared by every page: the API helper (CSRF token, sign-in expiry), formatting, the toast,
// the link indicator, live updates (server-sent events) and the poll loop.
// Plain JavaScript, no framework and no build step, so it runs offline from the gateway itself.
// Every value from the API is written with textContent (never innerHTML): asset and sensor
// names come from the field and must not be able to inject markup.
"use strict";

(function () {
  const FETCH_TIMEOUT_MS = 8000;
  const TOUCH_EVERY_MS = 60000;
  const ROLES = ["viewer", "technician", "engineer"];
  const body = document.body;
  const csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  const $ = (id) => document.getElementById(id);
  let lastOk = null;

  function signInAgain() {
    const next = location.pathname + location.search;
    location.assign("/login?next=" + encodeURIComponent(next));
  }

  async function api(url, options) {
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), FETCH_TIMEOUT_MS);
    const opts = Object.assign({ cache: "no-store", signal: ctrl.signal, credentials: "same-origin" }, options || {});
    try {
      const resp = await fetch(url, opts);
      let data = null;
      try { data = await resp.json(); } catch (_) { /* a non-JSON error page */ }
      if (resp.status === 401) {
        signInAgain();
        throw Object.assign(new Error((data && data.error) || "signed out"), { status: 401 });
      }
      if (!resp.ok) {
        throw Object.assign(new Error((data && data.error) || ("HTTP " + resp.status)), { status: resp.status });
      }
      return data;
    } finally {
      clearTimeout(timer);
    }
  }

  function post(url, payload) {
    return api(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrf },
      body: JSON.stringify(payload || {}),
    });
  }

  function can(role) {
    return ROLES.indexOf(body.dataset.role) >= ROLES.indexOf(role);
  }

  // Controls a role may not use stay visible, disabled, and say why.
  function applyRoles(root) {
    (root || document).querySelectorAll("[data-role]").forEach((e) => {
      if (e === body) return;
      if (!can(e.dataset.role)) {
        e.disabled = true;
        e.classList.add("no-role");
        e.title = "Needs the " + e.dataset.role + " role";
      }
    });
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

  function fmtBytes(n) {
    if (typeof n !== "number") return "–";
    const units = ["B", "KiB", "MiB", "GiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return n.toFixed(i ? 1 : 0) + " " + units[i];
  }

  function fmtSeverity(sev, band) {
    return typeof sev === "number" ? sev + " " + (band || "") : "–";
  }

  function setText(e, text) {
    if (e && e.textContent !== text) e.textContent = text;
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }

  function emptyRow(span, text) {
    const tr = el("tr");
    const td = el("td", "muted", text);
    td.colSpan = span;
    tr.append(td);
    return tr;
  }

  let toastTimer = null;
  function toast(message, ok) {
    const t = $("toast");
    if (!t) return;
    t.textContent = message;
    t.className = "toast " + (ok ? "toast-ok" : "toast-bad");
    t.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { t.hidden = true; }, ok ? 6000 : 12000);
  }

  function setLink(ok, err) {
    const link = $("link");
    const banner = $("offline");
    const main = document.querySelector("main");
    if (ok) {
      lastOk = new Date();
      link.textContent = "Live";
      link.className = "link link-ok";
      banner.hidden = true;
      main.classList.remove("stale");
    } else {
      link.textContent = "Offline";
      link.className = "link link-bad";
      banner.textContent = (lastOk ? "No answer from the gateway since " + fmtTime(lastOk / 1000)
        : "Cannot reach the gateway") + " (" + (err && err.message ? err.message : "error") +
        "). The values below may be out of date.";
      banner.hidden = false;
      main.classList.add("stale");
    }
  }

  // Run refresh() now, every pollMs, and at once (debounced) when the live stream reports a change.
  function start(refresh, pollMs) {
    // A page may poll less often than the base interval, never more often.
    pollMs = Math.max(pollMs || 0, Number(body.dataset.pollMs) || 2000);
    let timer = null, running = false, again = false, tick = 0;
    async function run(reason) {
      if (running) { again = true; return; }
      running = true;
      clearTimeout(timer);
      try {
        await refresh({ tick: tick, reason: reason || "poll" });
        setLink(true);
      } catch (err) {
        if (err && err.status !== 401) setLink(false, err);
      } finally {
        tick += 1;
        running = false;
        if (again) { again = false; run("event"); } else { timer = setTimeout(run, pollMs); }
      }
    }
    if (window.EventSource) {
      const es = new EventSource("/api/events");
      const onChange = (e) => {
        let data = null;
        try { data = JSON.parse(e.data); } catch (_) { /* ignore */ }
        document.dispatchEvent(new CustomEvent("gateway-change", { detail: { type: e.type, data: data } }));
        run("event");
      };
      es.addEventListener("alarm", onChange);
      es.addEventListener("mode", onChange);
      body.dataset.live = "connecting";
      es.addEventListener("open", () => { body.dataset.live = "open"; });
      es.addEventListener("error", () => { body.dataset.live = "retrying"; });
    }
    run("start");
    return { now: () => run("command") };
  }

  // The idle timeout counts the user's taps and keys, not the page's own polling.
  let lastTouch = Date.now();
  function touch() {
    if (Date.now() - lastTouch < TOUCH_EVERY_MS) return;
    lastTouch = Date.now();
    post("/api/session/touch", {}).catch(() => {});
  }
  document.addEventListener("pointerdown", touch, { passive: true });
  document.addEventListener("keydown", touch, { passive: true });

  async function site() {
    try {
      const st = await api("/api/status");
      setText($("site"), st.site || "");
      return st;
    } catch (_) { return null; }
  }

  function fmtDuration(s) {
    if (typeof s !== "number") return "–";
    if (s < 90) return Math.round(s) + " s";
    if (s < 5400) return Math.round(s / 60) + " min";
    if (s < 172800) return (s / 3600).toFixed(1) + " h";
    return (s / 86400).toFixed(1) + " d";
  }

  // The alarm load banner, on every page: a flood, chattering assets and stale alarms while they happen.
  // Its own slow poll (and at once on a live alarm event); pages hear of it through "alarm-load" events.
  const LOAD_POLL_MS = 10000;
  let loadRunning = false;
  async function refreshLoad() {
    const box = $("alarm-load");
    if (!box || loadRunning) return;
    loadRunning = true;
    try {
      const load = await api("/api/alarm-load");
      const th = load.thresholds;
      body.dataset.flood = load.flood ? "1" : "0";
      body.dataset.chattering = load.chattering.map((c) => c.asset).join(",");
      const flood = $("load-flood"), chatter = $("load-chatter"), stale = $("load-stale");
      setText(flood, load.flood ? "Alarm flood: " + load.raised_in_flood_window + " alarms in the last " +
        fmtDuration(th.flood_window_s) + " (since " + fmtTime(load.flood_since) + ")." : "");
      flood.hidden = !load.flood;
      setText(chatter, load.chattering.length ? "Chattering: " + load.chattering.map((c) => c.asset + " (" +
        c.cycles + " raise/clear cycles)").join(", ") + " in the last " + fmtDuration(th.chatter_window_s) + "." : "");
      chatter.hidden = !load.chattering.length;
      setText(stale, load.stale.length ? "Stale: " + load.stale.map((a) => a.asset + " active for " +
        fmtDuration(a.active_s)).join(", ") + "." : "");
      stale.hidden = !load.stale.length;
      box.hidden = flood.hidden && chatter.hidden && stale.hidden;
      body.dataset.loadChecked = String(Date.now());
      document.dispatchEvent(new CustomEvent("alarm-load", { detail: load }));
    } catch (_) {
      /* the page's own loop reports an unreachable gateway */
    } finally {
      loadRunning = false;
    }
  }
  function loadLoop() {
    refreshLoad().finally(() => setTimeout(loadLoop, LOAD_POLL_MS));
  }
  document.addEventListener("DOMContentLoaded", () => { if ($("alarm-load")) loadLoop(); });
  document.addEventListener("gateway-change", () => { refreshLoad(); });

  window.GW = {
    $, api, post, can, applyRoles, fmtTime, fmtUptime, fmtNum, fmtBytes, fmtSeverity, fmtDuration, setText, el,
    emptyRow, toast, setLink, start, site, refreshLoad, thresholdSeverity: Number(body.dataset.thresholdSeverity) || 50,
  };
})();
