// A gamegw player in Node, with the official client (socket.io-client 4.x).
//
//   npm install                      # in this folder: socket.io-client, see package.json
//   export TOKEN=$(../.venv/bin/gamectl token alice)
//   node node-client.js              # Ctrl-C leaves the room for good
//
// Settings, from the environment: GAME_URL (default http://127.0.0.1:8000), TOKEN (required),
// ROOM (default "lobby"), MOVES (leave after seeing this many moves; default 0: play until Ctrl-C).
//
// It prints one line per thing that happens, "<what> <json>", so that you can follow along.
// The protocol it speaks is in docs/protocol.md.

const { io } = require("socket.io-client");

const url = process.env.GAME_URL ?? "http://127.0.0.1:8000";
const token = process.env.TOKEN;                 // a real game gets a fresh one from its backend
const room = process.env.ROOM ?? "lobby";
const leaveAfter = Number(process.env.MOVES ?? 0);

const lastSeq = {};        // room -> the highest move seq applied; sent on every (re)connect
let movesSeen = 0;
let closing = null;        // the last disconnect_reason the server sent
let attempt = 0;           // reconnect attempts since the last session, for the backoff

const say = (what, data) => console.log(what, JSON.stringify(data ?? null));
const backoff = () => Math.min(30000, 500 * 2 ** attempt++) * (0.5 + Math.random());

const socket = io(url + "/game", {
  // A function, so that every reconnect sends the current last_seq: after a drop, the gateway
  // replays the moves this player missed, in order, right after the session event.
  auth: (cb) => cb({ token, last_seq: lastSeq }),
  transports: ["websocket"],
});

// Always the first event on a connection. resumed: true means the gateway kept our seat through
// a drop (within grace_s): the rooms are joined again without asking. Otherwise join.
socket.on("session", async (s) => {
  say("session", s);
  attempt = 0;
  closing = null;
  if (s.resumed) return;
  for (const r in lastSeq) delete lastSeq[r];    // a fresh session: whatever we had is gone
  const ack = await socket.timeout(5000).emitWithAck("join", { room });
  say("joined", ack);
  if (!ack.ok) return leave(1);                  // e.g. room_full
  lastSeq[room] ??= ack.seq;
  say("move ack", await socket.timeout(5000).emitWithAck("move", { room, action: { hello: "from node" } }));
});

// Every accepted move, ours included, with its room's next seq.
socket.on("move", async (m) => {
  const last = lastSeq[m.room] ?? -1;
  if (m.seq <= last) return;                     // already applied (possible right after a join)
  if (last >= 0 && m.seq > last + 1) {           // missed some: ask for them
    const ack = await socket.timeout(5000).emitWithAck("sync", { room: m.room, after_seq: last });
    for (const e of ack.ok ? ack.events : []) apply(e);
  }
  apply(m);
});

function apply(m) {
  if (m.seq <= (lastSeq[m.room] ?? -1)) return;
  lastSeq[m.room] = m.seq;
  say("move", m);                                // a real game updates its state here
  if (leaveAfter && ++movesSeen >= leaveAfter) leave(0);
}

for (const event of ["player_joined", "player_left", "player_disconnected", "player_reconnected"]) {
  socket.on(event, (data) => say(event, data));
}

// Sent just before the server closes the connection on purpose: code, reason, reconnect.
socket.on("disconnect_reason", (r) => { say("disconnect_reason", r); closing = r; });

socket.on("disconnect", (reason) => {
  say("disconnected", reason);
  // A drop (transport close, ping timeout): the client reconnects by itself, and resumes.
  if (reason !== "io server disconnect") return;
  // The server closed us. Come back only if it said so (4000 shutdown, 4005, 4029...);
  // 4500 token_invalid, 4503 kicked and 4504 session_replaced mean stay away.
  if (!closing?.reconnect) return process.exit(2);
  setTimeout(() => socket.connect(), closing.code === 4029 ? 5000 + backoff() : backoff());
});

// A refused connect: err.message is the code (token_expired, rate_limited, unavailable...).
socket.on("connect_error", (err) => {
  say("connect_error", { message: err.message, data: err.data });
  if (!err.data) return;                         // a transport failure: the client retries itself
  if (["rate_limited", "unavailable", "connection_limit"].includes(err.message)) {
    setTimeout(() => socket.connect(), backoff());
  } else {
    process.exit(1);                             // token_missing, token_invalid, token_expired: get a new token
  }
});

// Leaving for good: socket.disconnect() sends Socket.IO's disconnect packet, so the room hears
// player_left (not player_disconnected) and nothing waits in grace for us.
function leave(code) {
  say("leaving", { room });
  socket.disconnect();
  process.exitCode = code;                       // node exits once the socket is closed
}

process.on("SIGINT", () => leave(0));
