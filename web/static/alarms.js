// The alarm journal: every stored occurrence, and for the one opened every transition, mode change
// comment and verdict in order, with acknowledge, shelve (with expiry), comment and the verdict
// (fault with its cause, false alarm, maintenance; a verdict someone else changed meanwhile is refused).
"use strict";

(function () {
  const { $, api, post, applyRoles, fmtTime, setText, el, emptyRow, toast } = window.GW;
  let open = null; // alarm id whose journal is shown
  let loop = null;
  let rowsKey = "";
  let causes = null; // the configured fault causes, fetched once
  const params = new URLSearchParams(location.search);

  function label(s) {
    return (s || "").replace(/_/g, " ");
  }

  async function refresh() {
    const asset = $("f-asset").value.trim();
    const q = new URLSearchParams({ limit: "100" });
    if (asset) q.set("asset", asset);
    if ($("f-active").checked) q.set("active", "1");
    const [body, st] = await Promise.all([api("/api/alarms?" + q), api("/api/status")]);
    setText($("site"), st.site || "");
    const current = new Map((st.alarms || []).map((a) => [a.asset, a]));
    const key = JSON.stringify(body.alarms.map((a) => [a.id, a.state, a.end, a.acked_by, a.peak_severity,
      a.verdict ? a.verdict.seq : null]));
    if (key !== rowsKey) {
      rowsKey = key;
      const rows = [];
      for (const a of body.alarms) {
        const tr = el("tr", "alarm-row");
        tr.dataset.alarmId = a.id;
        tr.dataset.asset = a.asset;
        tr.dataset.state = a.state;
        const st = el("td");
        st.append(el("span", "pill st-" + a.state, label(a.state)));
        const btn = el("button", "btn btn-small btn-open", a.id === open ? "Close" : "Journal");
        btn.type = "button";
        btn.addEventListener("click", () => { open = open === a.id ? null : a.id; rowsKey = ""; loop.now(); });
        const tdb = el("td");
        tdb.append(btn);
        tr.append(el("td", null, a.asset), el("td", null, a.level), st, el("td", null, fmtTime(a.start)),
          el("td", null, a.active ? "active" : fmtTime(a.end)), el("td", "sev band-" + a.peak_band,
            a.peak_severity + " " + a.peak_band), el("td", null, (a.top_sensors || []).join(", ")),
          el("td", null, a.acked_by || "–"), verdictCell(a), tdb);
        rows.push(tr);
        if (a.id === open) rows.push(detail(a, current.get(a.asset)));
      }
      $("journal-rows").replaceChildren(...(rows.length ? rows : [emptyRow(10, "No alarm stored.")]));
    }
    if (open) await refreshEntries(open);
  }

  function verdictWords(v) {
    return label(v.verdict) + (v.cause ? " (" + label(v.cause) + ")" : "");
  }

  function verdictCell(a) {
    const td = el("td", "verdict-cell");
    if (!a.verdict) {
      td.append(el("span", "muted", "–"));
      return td;
    }
    td.append(el("span", "verdict verdict-" + a.verdict.verdict, verdictWords(a.verdict)),
      el("span", "by small", " " + a.verdict.user));
    if (a.disputed) td.append(el("span", "disputed", "disputed"));
    td.title = a.verdicts.map((v) => fmtTime(v.ts) + " " + v.user + ": " + verdictWords(v)).join("\n");
    return td;
  }

  function verdictBox(row, a) {
    const box = row.querySelector(".verdict-box");
    const kind = box.querySelector(".v-kind");
    const cause = box.querySelector(".v-cause");
    const now = box.querySelector(".verdict-now");
    if (a.verdict) {
      now.className = "verdict-now";
      now.replaceChildren(el("span", "verdict verdict-" + a.verdict.verdict, verdictWords(a.verdict)),
        el("span", "by", " by " + a.verdict.user + ", " + fmtTime(a.verdict.ts) +
          (a.verdicts.length > 1 ? " (changed " + (a.verdicts.length - 1) + "×)" : "")));
      if (a.disputed) now.append(el("span", "disputed", "disputed"));
    }
    cause.replaceChildren(el("option", null, "–"), ...(causes || []).map((c) => {
      const o = el("option", null, label(c));
      o.value = c;
      return o;
    }));
    cause.firstElementChild.value = "";
    kind.addEventListener("change", () => {
      cause.disabled = kind.value !== "fault" || kind.disabled;
      if (cause.disabled) cause.value = "";
    });
    box.querySelector(".btn-verdict").addEventListener("click", () => {
      if (!kind.value) { toast("Choose the verdict first.", false); kind.focus(); return; }
      if (kind.value === "fault" && !cause.value) { toast("A fault needs its cause.", false); cause.focus(); return; }
      command("/api/alarms/" + encodeURIComponent(a.id) + "/verdict", {
        verdict: kind.value, cause: kind.value === "fault" ? cause.value : null,
        note: box.querySelector(".v-note").value.trim(), replaces: a.verdict ? a.verdict.seq : null,
      }, "Verdict given: " + label(kind.value));
    });
  }

  function detail(a, live) {
    const row = $("journal-detail").content.firstElementChild.cloneNode(true);
    row.dataset.alarmId = a.id;
    verdictBox(row, a);
    applyRoles(row);
    const isCurrent = live && live.id === a.id;
    const ack = row.querySelector(".btn-ack");
    const shelve = row.querySelector(".btn-shelve");
    if (!isCurrent) {
      ack.disabled = shelve.disabled = true;
      ack.title = shelve.title = "Only the asset's current alarm can be acknowledged or shelved";
    } else if (live.acked_by) {
      ack.disabled = true;
    }
    const note = row.querySelector(".d-note");
    ack.addEventListener("click", () => command("/api/alarms/" + encodeURIComponent(a.asset) + "/ack",
      { note: note.value.trim() }, "Acknowledged: " + a.asset));
    shelve.addEventListener("click", () => {
      const dur = row.querySelector(".shelve-dur");
      command("/api/alarms/" + encodeURIComponent(a.asset) + "/shelve",
        { duration_s: Number(dur.value), note: note.value.trim() },
        "Shelved " + a.asset + " for " + dur.selectedOptions[0].textContent);
    });
    row.querySelector(".btn-comment").addEventListener("click", async () => {
      const input = row.querySelector(".d-comment");
      const text = input.value.trim();
      if (!text) { toast("Write the comment first.", false); input.focus(); return; }
      await command("/api/alarms/" + encodeURIComponent(a.id) + "/comments", { text: text }, "Comment added");
      input.value = "";
    });
    return row;
  }

  async function refreshEntries(alarmId) {
    const row = document.querySelector('.detail-row[data-alarm-id="' + CSS.escape(alarmId) + '"]');
    if (!row) return;
    const body = await api("/api/alarms/" + encodeURIComponent(alarmId) + "/journal");
    const list = row.querySelector(".entries");
    list.replaceChildren(...body.entries.map((e) => {
      const li = el("li", "entry entry-" + e.type);
      li.append(el("span", "when", fmtTime(e.ts)), el("strong", null, label(e.what)));
      if (e.shelved_until) li.append(el("span", null, " until " + fmtTime(e.shelved_until)));
      if (e.user) li.append(el("span", "by", " by " + e.user));
      if (e.note) li.append(el("q", null, e.note));
      return li;
    }));
  }

  async function command(url, payload, done) {
    try {
      await post(url, payload);
      toast(done + " (" + document.body.dataset.user + ")", true);
    } catch (err) {
      toast(err.message, false);
    }
    rowsKey = "";
    loop.now();
  }

  document.addEventListener("DOMContentLoaded", async () => {
    try { causes = (await api("/api/verdicts/causes")).causes; } catch (_) { causes = []; }
    $("f-asset").value = params.get("asset") || "";
    $("f-active").checked = params.get("active") === "1";
    const again = () => { rowsKey = ""; loop.now(); };
    $("f-asset").addEventListener("change", again);
    $("f-active").addEventListener("change", again);
    loop = window.GW.start(refresh, 5000);
  });
})();
