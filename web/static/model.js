// The model: what runs, how it was trained, INT8 against FP32, the candidate in shadow, the last update,
// refusal and back-test, its history.
"use strict";

(function () {
  const { $, api, post, can, applyRoles, fmtTime, fmtBytes, setText, el, emptyRow, toast } = window.GW;
  let loop = null;
  // Where a release was refused: by the updater before install, after install, by the back-test on the
  // labelled history, or in its shadow run.
  const STAGES = { updater: "before install", install: "after install", backtest: "in the back-test",
    shadow: "in shadow" };
  // A back-test's verdict: ok is null when it did not judge (too little labelled history, or it failed).
  const BACKTEST = { true: "passed", false: "rejected", null: "not judged" };

  function facts(dl, pairs) {
    const items = [];
    for (const [k, v] of pairs) {
      if (v === null || v === undefined || v === "") continue;
      items.push(el("dt", null, k), el("dd", null, typeof v === "number" ? String(+v.toPrecision(6)) : String(v)));
    }
    dl.replaceChildren(...(items.length ? items : [el("dd", "muted", "not known")]));
  }

  function backtestLine(bt) {
    if (!bt) return "None since the gateway started.";
    return fmtTime(bt.at) + ", " + bt.candidate + " against " + bt.current + ": " + BACKTEST[bt.ok] + ". "
      + bt.reason;
  }

  async function refresh() {
    const [m, st] = await Promise.all([api("/api/model"), api("/api/status")]);
    setText($("site"), st.site || "");
    const model = m.model || {};
    const b = model.bundle || {};
    setText($("m-version"), model.version || "–");
    facts($("m-facts"), [
      ["Running at", model.precision], ["Threshold", model.threshold], ["Sensors", (model.sensors || []).join(", ")],
      ["Window", model.window ? model.window + " rows" + (b.period_s ? " of " + b.period_s + " s" : "") : null],
      ["Stride", b.stride], ["Score", b.score], ["Level-free sensors", (b.level_free || []).join(", ") || "none"],
      ["Created", b.created_at], ["Design false-alarm rate", b.expected_window_exceedance
        ? (b.expected_window_exceedance.design * 100).toFixed(2) + " % of windows" : null],
      ["Network", b.model_type ? b.model_type + " " + JSON.stringify(b.hidden || []) : null],
      ["Previous model", model.previous || "none"],
      ["Probation", model.probation ? model.probation.raises + " of " + model.probation.allowed + " alarms" : "none"],
    ]);
    const q = b.int8_vs_fp32 || {};
    const th = b.thresholds || {};
    facts($("m-int8"), [
      ["Check passed", q.passed === undefined ? null : (q.passed ? "yes" : "NO")],
      ["Decision agreement", typeof q.agreement === "number" ? (q.agreement * 100).toFixed(2) + " %" : null],
      ["Error correlation", q.error_correlation], ["Mean error FP32", q.fp32_mean_error],
      ["Mean error INT8", q.int8_mean_error], ["Threshold FP32", th.fp32], ["Threshold INT8", th.int8],
      ["Files", Object.entries(b.files || {}).map(([k, v]) => k + " " + fmtBytes(v)).join(", ")],
    ]);
    const t = b.training || {};
    facts($("m-training"), [
      ["Rows", t.rows], ["Training rows", t.train_rows], ["Training windows", t.train_windows],
      ["Held-out windows", t.holdout_windows], ["Fit time", t.fit_seconds ? t.fit_seconds + " s" : null],
      ["Data SHA-256", t.data_sha256 ? t.data_sha256.slice(0, 16) + "…" : null],
    ]);
    const sh = model.shadow;
    setText($("m-shadow"), sh ? "Candidate " + (sh.candidate || "?") + " in shadow: " + JSON.stringify(sh)
      : "No candidate in shadow." + (m.sync ? "" : " (Cloud sync is not enabled on this gateway.)"));
    const up = model.last_update;
    setText($("m-update"), up ? fmtTime(up.at) + ": " + up.line
      : (m.sync ? "No update pass since the gateway started." : "Cloud sync is not enabled on this gateway."));
    const no = model.last_refusal;
    setText($("m-refusal"), no ? fmtTime(no.at) + ", " + (STAGES[no.stage] || no.stage) + " (" + no.kind + "): "
      + no.reason : "None since the gateway started.");
    setText($("m-backtest"), backtestLine(model.last_backtest));
    $("m-promote").disabled = $("m-reject").disabled = !can("engineer") || !sh;
    $("m-rollback").disabled = !can("engineer") || !model.previous;
    $("m-sync").disabled = !can("engineer") || !m.sync;
    $("m-changes").replaceChildren(...(m.changes.length ? m.changes.map((c) => {
      const tr = el("tr");
      tr.append(el("td", null, fmtTime(c.ts)), el("td", null, c.event), el("td", "mono", c.version),
        el("td", "mono", c.previous), el("td", null, c.reason), el("td", null, c.user));
      return tr;
    }) : [emptyRow(6, "None.")]));
  }

  async function act(url, payload, done) {
    try {
      await post(url, payload);
      toast(done, true);
    } catch (err) {
      toast(err.message, false);
    }
    loop.now();
  }

  document.addEventListener("DOMContentLoaded", () => {
    applyRoles();
    const note = () => ({ note: $("m-note").value.trim() });
    $("m-promote").addEventListener("click", () => act("/api/model/promote", note(), "Candidate promoted"));
    $("m-reject").addEventListener("click", () => act("/api/model/reject", note(), "Candidate rejected"));
    $("m-rollback").addEventListener("click", () => {
      if (window.confirm("Roll back to the previous model?")) act("/api/model/rollback", note(), "Rolled back");
    });
    $("m-sync").addEventListener("click", () => act("/api/sync/now", {}, "Sync window opened"));
    loop = window.GW.start(refresh, 10000);
  });
})();
