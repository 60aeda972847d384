#!/usr/bin/env node
// A Sparkplug B edge node made with Eclipse Tahu's own client (sparkplug-client from npm): the peer the
// appliance's Sparkplug input is tested and benchmarked against. Not the appliance's code.
//
//   node edge_node.js --port 1883 --group plant1 --node gw7 --devices pump3,pump4 \
//        --metrics Current,Voltage --bdseq 3 [--client-id x] [--host 127.0.0.1]
//
// Births: NBIRTH (Node Control/Rebirth, Uptime, bdSeq) and one DBIRTH per device, every metric a Double
// with an alias (device i, metric j: alias 100 * (i + 1) + j). Then it reads commands, one JSON object a
// line, on stdin:
//   {"cmd": "data", "device": "pump3", "values": {"Current": 2.5}, "ts": 1700000000000}  DDATA by alias
//                                   ("compress": true, "DEFLATE" or "GZIP": compressed by Tahu)
//   {"cmd": "burst", "device": "pump3", "count": 1000, "start": 1700000000000, "step": 10}  many DDATA
//   {"cmd": "skip", "n": 3}          the next seq jumps by n (a gap: those numbers are never sent)
//   {"cmd": "ddeath", "device": "pump3"}
//   {"cmd": "rebirth"}               NBIRTH and DBIRTHs again, on its own
//   {"cmd": "stop"}                  NDEATH, then disconnect and exit
// and says what happened on stdout, one JSON object a line: {"event": "connected"}, {"event": "birth"},
// {"event": "rebirth_requested"} (an NCMD Node Control/Rebirth = true arrived; it rebirths),
// {"event": "sent", "n": ...} after data and burst, {"event": "error", ...}.
// Tahu 3.2.4 keeps bdSeq at 0 for ever; --bdseq sets it, in the births and in the death registered as
// the MQTT will (its payload is encoded while the client is made, so the encoder is wrapped before).
"use strict";

const readline = require("readline");
const sparkplugPayload = require("sparkplug-payload").get("spBv1.0");

function args(argv) {
  const out = { host: "127.0.0.1", port: 1883, group: "plant1", node: "gw7", devices: "pump3",
                metrics: "Current,Voltage", bdseq: 0, "client-id": "" };
  for (let i = 2; i < argv.length; i += 2) {
    out[argv[i].replace(/^--/, "")] = argv[i + 1];
  }
  out.port = Number(out.port);
  out.bdseq = Number(out.bdseq);
  out.devices = out.devices.split(",").filter(Boolean);
  out.metrics = out.metrics.split(",").filter(Boolean);
  out["client-id"] = out["client-id"] || `tahu-${out.group}-${out.node}`;
  return out;
}

const opt = args(process.argv);

const encode = sparkplugPayload.encodePayload;
sparkplugPayload.encodePayload = function (payload) {
  for (const m of payload.metrics || []) {
    if (m.name === "bdSeq") {
      m.value = opt.bdseq;
    }
  }
  return encode(payload);
};

const sparkplug = require("sparkplug-client");

function say(event) {
  process.stdout.write(JSON.stringify(event) + "\n");
}

function alias(deviceIndex, metricIndex) {
  return 100 * (deviceIndex + 1) + metricIndex;
}

const client = sparkplug.newClient({
  serverUrl: `tcp://${opt.host}:${opt.port}`,
  username: "",
  password: "",
  groupId: opt.group,
  edgeNode: opt.node,
  clientId: opt["client-id"],
  version: "spBv1.0",
  publishDeath: true,
  keepalive: 5,
});
client.bdSeq = opt.bdseq;
const started = Date.now();

function births() {
  client.publishNodeBirth({
    timestamp: Date.now(),
    metrics: [
      { name: "Node Control/Rebirth", type: "Boolean", value: false },
      { name: "Uptime", alias: 1, type: "Double", value: (Date.now() - started) / 1000 },
    ],
  });
  opt.devices.forEach((device, i) => {
    client.publishDeviceBirth(device, {
      timestamp: Date.now(),
      metrics: opt.metrics.map((name, j) => ({ name, alias: alias(i, j), type: "Double", value: 0.0 })),
    });
  });
  say({ event: "birth", bdseq: opt.bdseq, seq: client.seq });
}

function dataMetrics(device, values) {
  const i = opt.devices.indexOf(device);
  return Object.entries(values).map(([name, value]) => (
    { alias: alias(i, opt.metrics.indexOf(name)), type: "Double", value }));
}

function data(cmd) {
  // "compress": true (Tahu's default, DEFLATE with no algorithm metric), "DEFLATE" or "GZIP": Tahu compresses it.
  const options = cmd.compress ? { compress: true, algorithm: cmd.compress === true ? null : cmd.compress } : undefined;
  client.publishDeviceData(cmd.device, { timestamp: cmd.ts || Date.now(), metrics: dataMetrics(cmd.device, cmd.values) },
                           options);
  say({ event: "sent", n: 1, seq: client.seq });
}

function burst(cmd) {
  // One DDATA per step, every metric of the device in it: the benchmark's workload.
  for (let k = 0; k < cmd.count; k++) {
    const ts = cmd.start + k * cmd.step;
    const values = {};
    opt.metrics.forEach((name, j) => { values[name] = Math.sin(ts / 1000 + j); });
    client.publishDeviceData(cmd.device, { timestamp: ts, metrics: dataMetrics(cmd.device, values) });
  }
  say({ event: "sent", n: cmd.count, seq: client.seq });
}

function command(line) {
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (e) {
    say({ event: "error", error: `not JSON: ${line}` });
    return;
  }
  if (cmd.cmd === "data") {
    data(cmd);
  } else if (cmd.cmd === "burst") {
    burst(cmd);
  } else if (cmd.cmd === "skip") {
    client.seq = (client.seq + cmd.n) % 256;
    say({ event: "skipped", n: cmd.n, seq: client.seq });
  } else if (cmd.cmd === "ddeath") {
    client.publishDeviceDeath(cmd.device, { timestamp: Date.now() });
    say({ event: "ddeath", device: cmd.device });
  } else if (cmd.cmd === "rebirth") {
    births();
  } else if (cmd.cmd === "stop") {
    client.stop();
    say({ event: "stopped" });
    setTimeout(() => process.exit(0), 200);
  } else {
    say({ event: "error", error: `unknown command ${cmd.cmd}` });
  }
}

client.on("connect", () => say({ event: "connected" }));
client.on("birth", births);
client.on("error", (e) => say({ event: "error", error: String(e) }));
client.on("ncmd", (payload) => {
  for (const m of payload.metrics || []) {
    if (m.name === "Node Control/Rebirth" && m.value === true) {
      say({ event: "rebirth_requested" });
      births();
    }
  }
});

readline.createInterface({ input: process.stdin }).on("line", command);
process.stdin.on("end", () => {
  client.stop();
  setTimeout(() => process.exit(0), 200);
});
