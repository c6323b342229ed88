#!/usr/bin/env node
// Drives the gateway's /game namespace with the official socket.io-client, as a browser or a
// Node game client would, and prints ONE JSON line describing what it observed. The Python test
// (tests/integration/test_js_client.py) makes every assertion; this script only records codes
// and payloads, so a failure shows the server's actual answer rather than a log message.
//
// Config: a JSON object as argv[2], or on stdin when argv[2] is absent or "-":
//   url          gateway base URL, e.g. "http://127.0.0.1:1234"
//   transports   e.g. ["websocket"], ["polling", "websocket"], ["polling"]
//   credential   how to present the token: "auth" (auth: {token}), "header"
//                (extraHeaders: {Authorization: "Bearer ..."}) or "query" (query: {token})
//   users        [userA, userB]; tokens: {userA: jwt, userB: jwt}
//   room         the room both players join
//   moves        moves each player sends (default 5)
//   badToken     a token the gateway must refuse, presented the same way as the good ones
//   refusals     optional extra refusal cases: [{label, auth?, extraHeaders?, query?}]
//   mode         "game" (default: the two-player scenario, then the refusals) or "refusals"
//                (only the refusal cases)
//   expectUpgrade  wait (bounded) for the engine to upgrade to websocket before finishing
//   timeoutMs    per-wait timeout (default 5000); the whole run is capped at 8 x timeoutMs
"use strict";

const { io } = require("socket.io-client");
const { withTimeout } = require("./jsonlines");

const NAMESPACE = "/game";

function readConfig() {
  const arg = process.argv[2];
  if (arg && arg !== "-") return Promise.resolve(JSON.parse(arg));
  return new Promise((resolve, reject) => {
    let text = "";
    process.stdin.setEncoding("utf8");
    process.stdin.on("data", (chunk) => { text += chunk; });
    process.stdin.on("end", () => {
      try { resolve(JSON.parse(text)); } catch (err) { reject(err); }
    });
    process.stdin.on("error", reject);
  });
}

// Records every event a socket receives, in order, and lets the scenario wait for one.
class Recorder {
  constructor(socket, timeoutMs) {
    this.socket = socket;
    this.timeoutMs = timeoutMs;
    this.events = []; // [name, payload] in arrival order
    this.waiters = [];
    socket.onAny((name, ...args) => {
      this.events.push([name, args.length > 1 ? args : args[0]]);
      this._check();
    });
  }

  named(name) {
    return this.events.filter(([n]) => n === name).map(([, data]) => data);
  }

  _check() {
    this.waiters = this.waiters.filter((w) => {
      if (!w.done()) return true;
      clearTimeout(w.timer);
      w.resolve();
      return false;
    });
  }

  // Resolves once `count` events called `name` have arrived; rejects after the timeout.
  waitFor(name, count = 1, what = `${count} ${name} event(s)`) {
    return new Promise((resolve, reject) => {
      const waiter = { done: () => this.named(name).length >= count, resolve };
      if (waiter.done()) return resolve();
      waiter.timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(new Error(`timed out after ${this.timeoutMs} ms waiting for ${what}; ` +
          `got ${this.named(name).length}`));
      }, this.timeoutMs);
      this.waiters.push(waiter);
    });
  }
}

// Socket options presenting `token` the way `credential` says.
function credentialOptions(credential, token) {
  switch (credential) {
    case "auth": return { auth: { token } };
    case "header": return { extraHeaders: { Authorization: `Bearer ${token}` } };
    case "query": return { query: { token } };
    default: throw new Error(`unknown credential mode ${JSON.stringify(credential)}`);
  }
}

function makeSocket(cfg, options) {
  return io(cfg.url + NAMESPACE, {
    transports: cfg.transports,
    reconnection: false,
    forceNew: true, // one manager (and engine) per socket: headers and query are per engine
    autoConnect: false,
    timeout: cfg.timeoutMs,
    ...options,
  });
}

// A player: a connected socket with its recorder and what its engine did.
// The player is stored in `into[key]` before connecting, so a refusal still shows in the report.
async function connectPlayer(cfg, user, token, into, key) {
  const socket = makeSocket(cfg, credentialOptions(cfg.credential, token));
  const rec = new Recorder(socket, cfg.timeoutMs);
  const info = { user, upgrades: [], transportAtOpen: null, transportAtConnect: null, connectErrors: [] };
  const player = { socket, rec, info };
  into[key] = player;
  socket.io.on("open", () => {
    info.transportAtOpen = socket.io.engine.transport.name;
    socket.io.engine.on("upgrade", (transport) => { info.upgrades.push(transport.name); });
  });
  const connected = new Promise((resolve, reject) => {
    socket.once("connect", () => {
      info.transportAtConnect = socket.io.engine.transport.name;
      info.socketId = socket.id;
      resolve();
    });
    socket.once("connect_error", (err) => {
      info.connectErrors.push({ message: err.message, data: err.data ?? null });
      reject(new Error(`${user} was refused: ${err.message} ${JSON.stringify(err.data ?? null)}`));
    });
  });
  socket.connect();
  await withTimeout(connected, cfg.timeoutMs, `${user} to connect`);
  await rec.waitFor("session", 1, `${user}'s session event`);
  return player;
}

function ack(socket, cfg, event, payload) {
  return socket.timeout(cfg.timeoutMs).emitWithAck(event, payload);
}

// Connects expecting a refusal; returns {message, data} of the connect_error, or {accepted}.
async function refusal(cfg, options) {
  const socket = makeSocket(cfg, options);
  try {
    const outcome = new Promise((resolve) => {
      socket.once("connect_error", (err) => resolve({ message: err.message, data: err.data ?? null }));
      socket.once("connect", () => resolve({ accepted: true, socketId: socket.id }));
    });
    socket.connect();
    return await withTimeout(outcome, cfg.timeoutMs, "connect or connect_error");
  } finally {
    socket.disconnect();
  }
}

async function waitForUpgrade(player, cfg) {
  const engine = player.socket.io.engine;
  if (engine.transport.name === "websocket") return;
  await withTimeout(new Promise((resolve) => engine.once("upgrade", resolve)), cfg.timeoutMs,
    `${player.info.user}'s engine to upgrade to websocket`);
}

function playerReport(player) {
  const { socket, rec, info } = player;
  return {
    ...info,
    transportAtEnd: socket.io.engine ? socket.io.engine.transport.name : null,
    firstEvent: rec.events.length ? rec.events[0][0] : null,
    session: rec.named("session")[0] ?? null,
    moves: rec.named("move"),
    playerJoined: rec.named("player_joined"),
    playerLeft: rec.named("player_left"),
    eventNames: rec.events.map(([n]) => n),
  };
}

async function scenario(cfg, result) {
  if (cfg.mode !== "refusals") await game(cfg, result);
  // Refusals: the bad token presented the same way as the good ones, plus any extra cases.
  result.refusals = {};
  if (cfg.badToken) {
    result.refusals.bad_token = await refusal(cfg, credentialOptions(cfg.credential, cfg.badToken));
  }
  for (const c of cfg.refusals || []) {
    const options = {};
    for (const key of ["auth", "extraHeaders", "query"]) if (c[key] !== undefined) options[key] = c[key];
    result.refusals[c.label] = await refusal(cfg, options);
  }
}

async function game(cfg, result) {
  const [userA, userB] = cfg.users;
  const room = cfg.room;
  const n = cfg.moves;

  // Both players connect and join; B's arrival is announced to A.
  const a = await connectPlayer(cfg, userA, cfg.tokens[userA], result.players, "a");
  result.joinA = await ack(a.socket, cfg, "join", { room });
  const b = await connectPlayer(cfg, userB, cfg.tokens[userB], result.players, "b");
  result.joinB = await ack(b.socket, cfg, "join", { room });
  await a.rec.waitFor("player_joined", 1, `${userA} to see ${userB} join`);

  // Both fire their moves back to back, at the same time, and collect the acks.
  const send = async (player) => {
    const acks = await Promise.all(Array.from({ length: n }, (_, i) =>
      ack(player.socket, cfg, "move", { room, action: { by: player.info.user, i } })));
    return acks;
  };
  [result.moveAcksA, result.moveAcksB] = await Promise.all([send(a), send(b)]);
  await Promise.all([
    a.rec.waitFor("move", 2 * n, `${userA} to receive ${2 * n} moves`),
    b.rec.waitFor("move", 2 * n, `${userB} to receive ${2 * n} moves`),
  ]);

  // Catch-up and state.
  result.syncAll = await ack(a.socket, cfg, "sync", { room, after_seq: 0 });
  result.syncTail = await ack(b.socket, cfg, "sync", { room, after_seq: n });
  result.stateA = await ack(a.socket, cfg, "state", { room });

  // Payloads the gateway must turn down with an error ack, not a dropped connection.
  result.bad = {
    moveActionNotObject: await ack(a.socket, cfg, "move", { room, action: "north" }),
    joinWithoutRoom: await ack(a.socket, cfg, "join", {}),
    joinNotObject: await ack(b.socket, cfg, "join", "lobby"),
    syncNegative: await ack(b.socket, cfg, "sync", { room, after_seq: -1 }),
    moveNotInRoom: await ack(b.socket, cfg, "move", { room: `${room}-elsewhere`, action: { i: 0 } }),
  };
  result.stateAfterBad = await ack(b.socket, cfg, "state", { room });
  result.connectedAfterBad = { a: a.socket.connected, b: b.socket.connected };

  if (cfg.expectUpgrade) {
    await Promise.all([waitForUpgrade(a, cfg), waitForUpgrade(b, cfg)]);
  }

  // One more move once any upgrade is done: the rejected payloads above took no seq.
  result.lastMoveAck = await ack(b.socket, cfg, "move", { room, action: { by: userB, i: n } });
  await Promise.all([
    a.rec.waitFor("move", 2 * n + 1, `${userA} to receive the last move`),
    b.rec.waitFor("move", 2 * n + 1, `${userB} to receive the last move`),
  ]);

  // B leaves: A hears it with reason "left".
  result.leaveB = await ack(b.socket, cfg, "leave", { room });
  await a.rec.waitFor("player_left", 1, `${userA} to see ${userB} leave`);
}

async function main() {
  const cfg = await readConfig();
  cfg.timeoutMs = cfg.timeoutMs || 5000;
  cfg.moves = cfg.moves || 5;
  cfg.credential = cfg.credential || "auth";
  const result = { error: null, transports: cfg.transports, credential: cfg.credential, players: {} };
  const cap = setTimeout(() => {
    result.error = `scenario did not finish within ${8 * cfg.timeoutMs} ms`;
    finish(result, 1);
  }, 8 * cfg.timeoutMs);
  try {
    await scenario(cfg, result);
  } catch (err) {
    result.error = String(err && err.stack ? err.stack : err);
  }
  clearTimeout(cap);
  finish(result, 0);
}

let finished = false;

function finish(result, code) {
  if (finished) return;
  finished = true;
  const out = { ...result, players: {} };
  for (const [k, p] of Object.entries(result.players)) out.players[k] = playerReport(p);
  for (const p of Object.values(result.players)) p.socket.disconnect();
  process.stdout.write(JSON.stringify(out) + "\n", () => process.exit(code));
}

main().catch((err) => {
  process.stderr.write(`scenario.js: ${err && err.stack ? err.stack : err}\n`);
  process.exit(2);
});
