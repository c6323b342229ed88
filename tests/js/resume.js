#!/usr/bin/env node
// One player on the gateway's /game namespace with the official socket.io-client and its OWN
// automatic reconnection: the only resume code is the `auth` callback, which sends the last
// `move` seq seen per room (`last_seq`) on every (re)connect. Driven by
// tests/integration/test_js_resume.py over JSON lines; every assertion is made there.
//
// stdin, line 1: {url, token, room, timeoutMs} (the token never goes on the command line)
// stdin, later:  {"cmd": "finish"}: print the report, disconnect, exit 0
// stdout, one JSON object a line, in the order things happened:
//   {"ready": {session, join}}       connected, got `session`, joined the room
//   {"event": "move", "seq": n}      every `move` received
//   {"event": "session", "data": {...}}, {"event": "disconnect", "reason": "..."},
//   {"event": "reconnect_attempt", "attempt": n}, {"event": "reconnect", "attempt": n},
//   {"event": "connect_error", "message": "..."}, {"event": "<other server event>", "data": ...}
//   {"resumed": {session}}          a second `session` arrived (after the automatic reconnect)
//   {"report": {...}}               on "finish": everything, including the auth payloads sent
//   {"error": "..."}                something went wrong; the process exits 1
"use strict";

const { io } = require("socket.io-client");
const { drive, emit, withTimeout } = require("./jsonlines");

let cfg = null;
let socket = null;
const report = { events: [], authSent: [], moves: [], sessions: [] };

drive({ start: (config) => { cfg = config; return start(); }, finish },
      () => { if (socket) socket.disconnect(); });

function record(event, extra) {
  const entry = { event, ...extra };
  report.events.push(entry);
  emit(entry);
}

async function start() {
  const lastSeq = {}; // room -> seq of the last move received: the whole of the resume logic
  socket = io(cfg.url + "/game", {
    transports: ["websocket"],
    reconnection: true,
    reconnectionDelay: 200,
    reconnectionDelayMax: 500,
    timeout: cfg.timeoutMs,
    auth: (cb) => {
      report.authSent.push({ last_seq: { ...lastSeq } }); // instrumentation only (no token)
      cb({ token: cfg.token, last_seq: lastSeq });
    },
  });

  socket.on("move", (m) => {
    lastSeq[m.room] = m.seq;
    report.moves.push(m);
    record("move", { seq: m.seq });
  });

  let firstSession;
  const gotFirst = new Promise((resolve) => { firstSession = resolve; });
  socket.on("session", (data) => {
    report.sessions.push(data);
    record("session", { data });
    if (report.sessions.length === 1) firstSession(data);
    else emit({ resumed: data });
  });
  socket.onAny((name, ...args) => {
    if (name !== "move" && name !== "session") record(name, { data: args.length > 1 ? args : args[0] });
  });
  socket.on("disconnect", (reason) => record("disconnect", { reason }));
  socket.on("connect_error", (err) => record("connect_error", { message: err.message, data: err.data ?? null }));
  socket.io.on("reconnect_attempt", (attempt) => record("reconnect_attempt", { attempt }));
  socket.io.on("reconnect", (attempt) => record("reconnect", { attempt }));
  socket.io.on("reconnect_error", (err) => record("reconnect_error", { message: String(err && err.message) }));

  const session = await withTimeout(gotFirst, cfg.timeoutMs, "the first session event");
  const join = await socket.timeout(cfg.timeoutMs).emitWithAck("join", { room: cfg.room });
  emit({ ready: { session, join } });
}

function finish() {
  const connected = socket ? socket.connected : false;
  if (socket) socket.disconnect(); // recorded as the last event: "io client disconnect"
  const out = { ...report, connected };
  process.stdout.write(JSON.stringify({ report: out }) + "\n", () => process.exit(0));
}
