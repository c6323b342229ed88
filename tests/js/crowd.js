#!/usr/bin/env node
// Several players on the gateway's /game namespace, each an official socket.io-client with its
// DEFAULT options (long-polling first, then the upgrade to websocket; automatic reconnection),
// plus the `auth` callback that sends the token and `last_seq` (the seq of the last move seen
// per room) on every (re)connect. Driven by tests/cli/test_workers_sticky.py over JSON lines;
// every assertion is made there.
//
// stdin, line 1: {url, users: [..], tokens: {user: token}, room, timeoutMs}
// stdin, later:  {"cmd": "moves", "users": [..], "count": n, "start": i}: each listed user sends
//                n moves {i: start..start+n-1} (all users at once); prints {"acks": {user: [..]}}
//                {"cmd": "finish"}: print the report, disconnect, exit 0
// stdout, one JSON object a line, in the order things happened:
//   {"ready": {user: {session, join, opened, upgrades}}}   all connected, upgraded and joined
//   {"event": "move", "user": u, "seq": n}                  every `move` a user received
//   {"event": "session" | "disconnect" | "connect_error" | "open" | "upgrade", "user": u, ...}
//   {"resumed": {"user": u, "session": {...}}}               a later `session` (after a reconnect)
//   {"report": {user: {...}}}                                on "finish"
//   {"error": "..."}                                         something went wrong; exit 1
"use strict";

const { io } = require("socket.io-client");
const { drive, emit, withTimeout } = require("./jsonlines");

let cfg = null;
const players = {};

drive({ start: (config) => { cfg = config; return start(); }, moves, finish },
      () => { for (const p of Object.values(players)) p.socket.disconnect(); });

function player(user) {
  const p = { user, lastSeq: {}, moves: [], sessions: [], opened: [], upgrades: [], events: [] };
  const record = (event, extra) => {
    const entry = { event, user, ...extra };
    p.events.push(entry);
    emit(entry);
  };
  // Default options: no `transports`, no reconnection settings. Only the credential.
  const socket = io(cfg.url + "/game", {
    auth: (cb) => cb({ token: cfg.tokens[user], last_seq: { ...p.lastSeq } }),
  });
  p.socket = socket;
  socket.io.on("open", () => {
    const engine = socket.io.engine; // a new one for every (re)connect
    p.opened.push(engine.transport.name);
    record("open", { transport: engine.transport.name, eioSid: engine.id });
    engine.on("upgrade", (transport) => {
      p.upgrades.push(transport.name);
      record("upgrade", { transport: transport.name });
    });
  });
  socket.on("move", (m) => {
    p.lastSeq[m.room] = m.seq;
    p.moves.push(m);
    record("move", { seq: m.seq });
  });
  p.firstSession = new Promise((resolve) => {
    socket.on("session", (data) => {
      p.sessions.push(data);
      record("session", { data });
      if (p.sessions.length === 1) resolve(data);
      else emit({ resumed: { user, session: data } });
    });
  });
  socket.on("disconnect", (reason) => record("disconnect", { reason }));
  socket.on("connect_error", (err) => record("connect_error", { message: err.message, data: err.data ?? null }));
  return p;
}

async function upgraded(p) {
  const deadline = Date.now() + cfg.timeoutMs;
  while (p.upgrades.length === 0) {
    if (Date.now() > deadline) throw new Error(`${p.user} never upgraded (opened over ${p.opened})`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

async function start() {
  for (const user of cfg.users) players[user] = player(user);
  const ready = {};
  await Promise.all(cfg.users.map(async (user) => {
    const p = players[user];
    const session = await withTimeout(p.firstSession, cfg.timeoutMs, `${user}'s session event`);
    const join = await p.socket.timeout(cfg.timeoutMs).emitWithAck("join", { room: cfg.room });
    await upgraded(p);
    ready[user] = { session, join, opened: [...p.opened], upgrades: [...p.upgrades] };
  }));
  emit({ ready });
}

async function moves(cmd) {
  const acks = {};
  await Promise.all(cmd.users.map(async (user) => {
    const socket = players[user].socket;
    acks[user] = [];
    for (let i = cmd.start; i < cmd.start + cmd.count; i++) {
      acks[user].push(await socket.timeout(cfg.timeoutMs).emitWithAck("move", {
        room: cfg.room, action: { by: user, i } }));
    }
  }));
  emit({ acks });
}

function finish() {
  const report = {};
  for (const [user, p] of Object.entries(players)) {
    report[user] = { connected: p.socket.connected, moves: p.moves, sessions: p.sessions, opened: p.opened,
                     upgrades: p.upgrades, transport: p.socket.io.engine.transport.name };
    p.socket.disconnect();
  }
  process.stdout.write(JSON.stringify({ report }) + "\n", () => process.exit(0));
}
