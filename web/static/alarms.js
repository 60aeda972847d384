// The alarm journal: every stored occurrence, and for the one opened every transition, mode change
// and comment in order, with acknowledge, shelve (with expiry) and comment.
"use strict";

(function () {
  const { $, api, post, applyRoles, fmtTime, setText, el, emptyRow, toast } = window.GW;
  let open = null; // alarm id whose journal is shown
  let loop = null;
  let rowsKey = "";
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
    const key = JSON.stringify(body.alarms.map((a) => [a.id, a.state, a.end, a.acked_by, a.peak_severity]));
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
          el("td", null, a.acked_by || "–"), tdb);
        rows.push(tr);
        if (a.id === open) rows.push(detail(a, current.get(a.asset)));
      }
      $("journal-rows").replaceChildren(...(rows.length ? rows : [emptyRow(9, "No alarm stored.")]));
    }
    if (open) await refreshEntries(open);
  }

  function detail(a, live) {
    const row = $("journal-detail").content.firstElementChild.cloneNode(true);
    row.dataset.alarmId = a.id;
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

  document.addEventListener("DOMContentLoaded", () => {
    $("f-asset").value = params.get("asset") || "";
    $("f-active").checked = params.get("active") === "1";
    const again = () => { rowsKey = ""; loop.now(); };
    $("f-asset").addEventListener("change", again);
    $("f-active").addEventListener("change", again);
    loop = window.GW.start(refresh, 5000);
  });
})();
