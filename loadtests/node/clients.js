// Client side of loadtests/bench_connect_storm.py and loadtests/bench_idle.py, built on the
// official socket.io-client (NODE_PATH must point at a node_modules with socket.io-client and
// jsonwebtoken, e.g. ~/.cache/peer-bench/node_modules).
//
//   node clients.js '<json options>'        HS256 key in $BENCH_SECRET (never on the command line)
//
// Options: mode ("storm" | "idle"), urls ([..], players spread over them in turn), clients,
// concurrency (storm: connects in flight, 0 = all at once), batch (idle: connects per batch),
// transport ("websocket" | "polling"), connect_timeout_ms, hold_max_s (hard stop), user_prefix,
// local_addresses (0: the system's choice; k: client i connects from 127.0.0.(2 + i % k), so that
// more connections than one address has source ports can be held).
//
// Talks to its parent in JSON lines on stdout:
//   {"phase":"ready", ...}      tokens minted; storm mode then waits for "go" on stdin
//   {"phase":"connected", ...}  every connect finished (connected or failed); figures so far
//   {"phase":"done", ...}       after "close" on stdin (or EOF, or hold_max_s): final figures
// then closes every socket and exits. Progress goes to stderr.
"use strict";
const { io } = require("socket.io-client");
const jwt = require("jsonwebtoken");
const readline = require("readline");

const opt = Object.assign({
  mode: "storm", urls: ["http://127.0.0.1:8000"], clients: 100, concurrency: 100, batch: 200,
  transport: "websocket", connect_timeout_ms: 20000, hold_max_s: 300, user_prefix: "bench", local_addresses: 0,
}, JSON.parse(process.argv[2] || "{}"));
const secret = process.env.BENCH_SECRET;
if (!secret) { console.error("clients.js: BENCH_SECRET is not set"); process.exit(2); }

const now = () => Number(process.hrtime.bigint()) / 1e6;
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const pct = (a, p) => {
  if (!a.length) return null;
  const s = [...a].sort((x, y) => x - y);
  return +s[Math.min(s.length - 1, Math.floor(p * s.length))].toFixed(2);
};

// Mint every token before any timing starts: the client's signing cost is not the server's.
const t0mint = now();
const tokens = [];
for (let i = 0; i < opt.clients; i++) {
  tokens.push(jwt.sign({ sub: `${opt.user_prefix}-${i}` }, secret, { algorithm: "HS256", expiresIn: 3600 }));
}
const mintMs = now() - t0mint;

const sockets = [];
const connectMs = [];
const sessionMs = [];
const errors = {};
let connected = 0, failed = 0, dropped = 0, holding = false, heartbeat = null;
const dropReasons = {};

function connectOne(i) {
  return new Promise((resolve) => {
    const t0 = now();
    let settled = false;
    const finish = (ok, why) => {
      if (settled) return;
      settled = true;
      if (ok) connected++; else { failed++; errors[why] = (errors[why] || 0) + 1; }
      resolve();
    };
    const s = io(opt.urls[i % opt.urls.length] + "/game", {
      transports: opt.transport === "polling" ? ["polling", "websocket"] : ["websocket"],
      auth: { token: tokens[i] }, reconnection: false, forceNew: true, timeout: opt.connect_timeout_ms,
      ...(opt.local_addresses ? { localAddress: `127.0.0.${2 + (i % opt.local_addresses)}` } : {}),
    });
    sockets.push(s);
    s.once("session", (info) => {
      sessionMs.push(now() - t0);
      if (!heartbeat && info && info.heartbeat) heartbeat = info.heartbeat;
    });
    s.once("connect", () => { connectMs.push(now() - t0); finish(true); });
    s.once("connect_error", (e) => finish(false, (e && e.message) || "connect_error"));
    s.on("disconnect", (reason) => {
      if (holding) { dropped++; dropReasons[reason] = (dropReasons[reason] || 0) + 1; }
    });
    // Belt and braces: a connect that neither succeeds nor fails in time counts as a failure.
    setTimeout(() => finish(false, "timeout"), opt.connect_timeout_ms + 1000).unref();
  });
}

async function storm() {
  const limit = opt.concurrency > 0 ? opt.concurrency : opt.clients;
  let next = 0;
  const worker = async () => { while (next < opt.clients) await connectOne(next++); };
  await Promise.all(Array.from({ length: Math.min(limit, opt.clients) }, worker));
}

const batchMs = [];
async function batches() {
  for (let i = 0; i < opt.clients; i += opt.batch) {
    const n = Math.min(opt.batch, opt.clients - i);
    const t0 = now();
    await Promise.all(Array.from({ length: n }, (_, k) => connectOne(i + k)));
    batchMs.push(now() - t0);
    if ((i / opt.batch) % 10 === 9) console.error(`clients.js: ${connected} connected, ${failed} failed`);
  }
}

function figures() {
  return {
    clients: opt.clients, connected, failed, errors,
    connect_p50_ms: pct(connectMs, 0.5), connect_p90_ms: pct(connectMs, 0.9), connect_p99_ms: pct(connectMs, 0.99),
    connect_max_ms: connectMs.length ? +Math.max(...connectMs).toFixed(2) : null,
    session_p50_ms: pct(sessionMs, 0.5), session_p99_ms: pct(sessionMs, 0.99), session_events: sessionMs.length,
    heartbeat,
    batch_ms_first: batchMs.length ? +batchMs[0].toFixed(1) : null,
    batch_ms_last: batchMs.length ? +batchMs[batchMs.length - 1].toFixed(1) : null,
  };
}

let closing = false;
function finishAndExit(why) {
  if (closing) return;
  closing = true;
  const heapMb = +(process.memoryUsage().rss / 1048576).toFixed(1);
  out({ phase: "done", why, ...figures(), dropped_while_idle: dropped, drop_reasons: dropReasons, client_rss_mb: heapMb });
  holding = false;
  sockets.forEach((s) => s.close());
  setTimeout(() => process.exit(0), 200);
}

const stdinLines = [];
let onLine = null;
const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (l) => { if (onLine) onLine(l.trim()); else stdinLines.push(l.trim()); });
rl.on("close", () => finishAndExit("stdin closed"));
const nextLine = () => new Promise((r) => {
  if (stdinLines.length) r(stdinLines.shift()); else onLine = (l) => { onLine = null; r(l); };
});
setTimeout(() => finishAndExit("hold_max_s"), opt.hold_max_s * 1000).unref();

(async () => {
  out({ phase: "ready", tokens: tokens.length, mint_ms: +mintMs.toFixed(1) });
  if (opt.mode === "storm") {
    while ((await nextLine()) !== "go") { /* wait for the parent to take its CPU reading */ }
  }
  const t0 = now();
  await (opt.mode === "storm" ? storm() : batches());
  const wallMs = now() - t0;
  holding = true;
  out({ phase: "connected", wall_ms: +wallMs.toFixed(1),
    connects_per_s: +(connected / Math.max(wallMs / 1000, 1e-9)).toFixed(1), ...figures() });
  // Keep a timer alive until the parent says "close" (or hold_max_s passes).
  const keep = setInterval(() => {}, 1000);
  while ((await nextLine()) !== "close") { /* ignore anything else */ }
  clearInterval(keep);
  finishAndExit("close");
})();
