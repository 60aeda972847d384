// A Sparkplug B host application made of Eclipse Tahu's payload codec (sparkplug-payload) and the MQTT.js
// client Tahu's sparkplug-client uses: it decodes every message of a group and prints it as one JSON line,
// and sends what a SCADA host sends (rebirth requests, writes, its STATE) when told on stdin.
//
//   node host.js --url mqtt://127.0.0.1:1883 --group plant [--host-id scada]
//
// stdout, one JSON object a line:
//   {"event":"ready"}                                 subscribed (and STATE online published, with --host-id)
//   {"event":"message","topic":T,"kind":K,"node":N,"device":D,"payload":{...decoded...}}
//   {"event":"undecodable","topic":T,"error":E}
// stdin, one JSON object a line:
//   {"cmd":"rebirth","node":N}                        NCMD Node Control/Rebirth = true
//   {"cmd":"ncmd","node":N,"metrics":[{name,type,value}]}
//   {"cmd":"dcmd","node":N,"device":D,"metrics":[{name,type,value}]}
//   {"cmd":"state","online":true|false}               STATE (needs --host-id)
//   {"cmd":"raw","topic":T,"base64":B}                any bytes on any topic
// Long integers (seq, timestamps, bdSeq, aliases) are printed as numbers.
"use strict";

const mqtt = require("mqtt");
const Long = require("long");
const readline = require("readline");
const sparkplug = require("sparkplug-payload").get("spBv1.0");

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

const url = arg("--url", "mqtt://127.0.0.1:1883");
const group = arg("--group", "plant");
const hostId = arg("--host-id", null);
const stateTopic = hostId ? `spBv1.0/STATE/${hostId}` : null;

function print(obj) {
  process.stdout.write(JSON.stringify(obj, (k, v) => {
    if (Long.isLong(v)) return v.toNumber();
    if (v instanceof Uint8Array) return Buffer.from(v).toString("base64");
    return v;
  }) + "\n");
}

function statePayload(online) {
  return JSON.stringify({ online: online, timestamp: Date.now() });
}

const options = { clientId: `tahu-host-${process.pid}`, clean: true, keepalive: 30, reconnectPeriod: 200 };
if (stateTopic) {
  options.will = { topic: stateTopic, payload: statePayload(false), qos: 1, retain: true };
}
const client = mqtt.connect(url, options);

client.on("connect", () => {
  client.subscribe(`spBv1.0/${group}/#`, { qos: 1 }, (err) => {
    if (err) { print({ event: "error", error: String(err) }); return; }
    if (stateTopic) {
      client.publish(stateTopic, statePayload(true), { qos: 1, retain: true }, () => print({ event: "ready" }));
    } else {
      print({ event: "ready" });
    }
  });
});

client.on("message", (topic, message) => {
  const parts = topic.split("/");
  try {
    const payload = sparkplug.decodePayload(message);
    print({ event: "message", topic: topic, kind: parts[2], node: parts[3], device: parts[4] || null,
            payload: payload });
  } catch (e) {
    print({ event: "undecodable", topic: topic, error: String(e) });
  }
});

function command(node, device, metrics) {
  const kind = device ? "DCMD" : "NCMD";
  const topic = `spBv1.0/${group}/${kind}/${node}` + (device ? `/${device}` : "");
  const payload = sparkplug.encodePayload({ timestamp: Date.now(), metrics: metrics });
  client.publish(topic, Buffer.from(payload), { qos: 0 }, () => print({ event: "sent", topic: topic }));
}

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  if (!line.trim()) return;
  const c = JSON.parse(line);
  if (c.cmd === "rebirth") {
    command(c.node, null, [{ name: "Node Control/Rebirth", type: "Boolean", value: true }]);
  } else if (c.cmd === "ncmd") {
    command(c.node, null, c.metrics);
  } else if (c.cmd === "dcmd") {
    command(c.node, c.device, c.metrics);
  } else if (c.cmd === "state") {
    client.publish(stateTopic, statePayload(c.online), { qos: 1, retain: true },
                   () => print({ event: "sent", topic: stateTopic }));
  } else if (c.cmd === "raw") {
    client.publish(c.topic, Buffer.from(c.base64, "base64"), { qos: 0 }, () => print({ event: "sent", topic: c.topic }));
  }
}).on("close", () => client.end(true, () => process.exit(0)));
