// Mitigation: armed or not, the proposals waiting for an engineer's approval, and the audit log.
"use strict";

(function () {
  const { $, api, post, can, applyRoles, fmtTime, setText, el, emptyRow, toast } = window.GW;
  let loop = null;
  let pendingKey = "";

  function fmtVal(v) {
    return v === null || v === undefined ? "–" : String(v);
  }

  async function refresh(info) {
    const [p, st] = await Promise.all([api("/api/actions/pending"), api("/api/status")]);
    setText($("site"), st.site || "");
    setText($("mit-state"), !p.enabled ? "Mitigation is not enabled on this gateway ([outputs.mitigation])."
      : p.armed ? "Armed: an approved proposal is written to the PLC." : "Not armed: proposals are advice only.");
    $("mit-state").dataset.armed = String(p.armed);
    $("arm").disabled = !can("engineer") || !p.enabled || p.armed;
    $("disarm").disabled = !can("engineer") || !p.enabled || !p.armed;
    const key = JSON.stringify(p.pending.map((x) => x.proposal_id));
    if (key !== pendingKey) {
      pendingKey = key;
      $("pending-rows").replaceChildren(...(p.pending.length ? p.pending.map(pendingRow) : [emptyRow(6, "None.")]));
    } else {
      for (const x of p.pending) {
        const cell = document.querySelector('tr[data-proposal="' + CSS.escape(x.proposal_id) + '"] .expires');
        if (cell) setText(cell, Math.round(x.expires_in_s) + " s");
      }
    }
    if (info.tick % 3 === 0 || info.reason !== "poll") await refreshLog(p.enabled);
  }

  function pendingRow(x) {
    const tr = el("tr", "proposal");
    tr.dataset.proposal = x.proposal_id;
    const acts = el("td", "row-actions");
    const ok = el("button", "btn btn-approve", "Approve");
    const no = el("button", "btn btn-reject", "Reject");
    ok.type = no.type = "button";
    ok.dataset.role = no.dataset.role = "engineer";
    ok.addEventListener("click", () => decide(x, "approve"));
    no.addEventListener("click", () => decide(x, "reject"));
    acts.append(ok, no);
    const write = (x.node || "") + (x.new_value !== undefined ? " ← " + fmtVal(x.new_value) : "");
    tr.append(el("td", null, x.asset), el("td", null, x.rule), el("td", "mono", write), el("td", null, x.reason),
      el("td", "expires", Math.round(x.expires_in_s) + " s"), acts);
    applyRoles(tr);
    return tr;
  }

  async function decide(x, verdict) {
    if (verdict === "approve" &&
        !window.confirm("Approve '" + x.rule + "' on " + x.asset + "? If armed, this writes to the PLC.")) return;
    try {
      const r = await post("/api/actions/" + encodeURIComponent(x.proposal_id) + "/" + verdict,
        verdict === "reject" ? { note: $("m-note").value.trim() } : {});
      const rec = (r.records || [])[0] || {};
      toast((verdict === "approve" ? "Approved" : "Rejected") + ": " + x.rule + " on " + x.asset +
        (rec.status ? " → " + rec.status : ""), true);
      $("m-note").value = "";
    } catch (err) {
      toast(err.message, false);
    }
    pendingKey = "";
    loop.now();
  }

  async function refreshLog(enabled) {
    if (!enabled) {
      $("audit-rows").replaceChildren(emptyRow(10, "Mitigation is not enabled."));
      return;
    }
    const body = await api("/api/actions/log?limit=100");
    $("audit-rows").replaceChildren(...(body.actions.length ? body.actions.map((a) => {
      const tr = el("tr");
      tr.dataset.status = a.status;
      tr.append(el("td", null, String(a.seq)), el("td", null, fmtTime(a.ts)), el("td", null, a.asset),
        el("td", null, a.kind), el("td", null, a.status), el("td", "mono", a.node || "–"),
        el("td", null, fmtVal(a.old_value) + " → " + fmtVal(a.new_value)), el("td", "actor", a.actor || "–"),
        el("td", null, a.armed ? "yes" : "no"), el("td", null, a.detail || a.reason || ""));
      return tr;
    }) : [emptyRow(10, "None.")]));
  }

  async function arm(armed) {
    try {
      await post("/api/mitigation/arm", { armed: armed });
      toast(armed ? "Mitigation armed" : "Mitigation disarmed", true);
    } catch (err) {
      toast(err.message, false);
    }
    loop.now();
  }

  document.addEventListener("DOMContentLoaded", () => {
    applyRoles();
    $("arm").addEventListener("click", () => {
      if (window.confirm("Arm mitigation? Approved proposals will then be written to the PLC.")) arm(true);
    });
    $("disarm").addEventListener("click", () => arm(false));
    loop = window.GW.start(refresh, 3000);
  });
})();
