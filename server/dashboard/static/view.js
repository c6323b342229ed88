// The dashboard's model (a snapshot, then deltas applied in order) and its rendering: keyed
// rows updated in place, so that a button under the pointer stays the same element.

const FRESH_S = 3; // an instance or a room rate older than this no longer counts

export class Model {
  constructor() {
    this.clear();
  }

  clear() {
    this.connections = new Map(); // sid -> connection
    this.instances = new Map(); // instance id -> heartbeat and figures
    this.seqs = new Map(); // room -> highest seq seen
    this.roomRates = new Map(); // room -> Map(instance -> {perS, at})
    this.offsetS = 0; // server clock minus ours
  }

  now() {
    return Date.now() / 1000 + this.offsetS;
  }

  load(snapshot) {
    this.clear();
    this.offsetS = snapshot.now - Date.now() / 1000;
    for (const c of snapshot.connections) this.connections.set(c.sid, c);
    for (const i of snapshot.instances) this.instances.set(i.instance, i);
    for (const [room, seq] of Object.entries(snapshot.rooms)) this.seqs.set(room, seq);
  }

  apply(deltas) {
    for (const d of deltas) {
      const conn = d.sid === undefined ? undefined : this.connections.get(d.sid);
      switch (d.t) {
        case "conn":
          this.connections.set(d.conn.sid, d.conn);
          break;
        case "gone":
          this.connections.delete(d.sid);
          break;
        case "state":
          if (conn) conn.state = d.state;
          break;
        case "join":
          if (conn && !conn.rooms.includes(d.room)) conn.rooms = [...conn.rooms, d.room].sort();
          break;
        case "leave":
          if (conn) conn.rooms = conn.rooms.filter((r) => r !== d.room);
          break;
        case "seen":
          for (const [sid, at] of Object.entries(d.seen)) {
            const c = this.connections.get(sid);
            if (c) c.last_seen = at;
          }
          break;
        case "room": {
          this.seqs.set(d.room, Math.max(this.seqs.get(d.room) ?? 0, d.seq));
          if (!this.roomRates.has(d.room)) this.roomRates.set(d.room, new Map());
          this.roomRates.get(d.room).set(d.instance, { perS: d.moves / Math.max(d.interval_s, 0.001), at: this.now() });
          break;
        }
        case "instance":
          this.instances.set(d.instance, { ...this.instances.get(d.instance), ...d, alive: true });
          break;
        default:
          break; // "revoked" and types a newer gateway sends
      }
    }
  }

  liveInstances() {
    const now = this.now();
    return [...this.instances.values()].filter((i) => i.beat !== undefined && now - i.beat < FRESH_S);
  }

  rates() {
    const sum = { connects_s: 0, moves_s: 0, deliveries_s: 0, move_p99_ms: null, known: false };
    for (const i of this.liveInstances()) {
      if (!i.rates) continue;
      sum.known = true;
      sum.connects_s += i.rates.connects_s;
      sum.moves_s += i.rates.moves_s;
      sum.deliveries_s += i.rates.deliveries_s;
      if (i.rates.move_p99_ms !== null) sum.move_p99_ms = Math.max(sum.move_p99_ms ?? 0, i.rates.move_p99_ms);
    }
    return sum;
  }

  roomRate(room) {
    const now = this.now();
    let total = 0;
    for (const r of this.roomRates.get(room)?.values() ?? []) if (now - r.at < FRESH_S) total += r.perS;
    return total;
  }

  rooms() {
    const members = new Map();
    for (const c of this.connections.values()) {
      for (const room of c.rooms) {
        if (!members.has(room)) members.set(room, new Set());
        members.get(room).add(c.user_id);
      }
    }
    return [...members.entries()]
      .map(([room, users]) => ({ room, users: [...users].sort(), seq: this.seqs.get(room) ?? 0, rate: this.roomRate(room) }))
      .sort((a, b) => b.users.length - a.users.length || a.room.localeCompare(b.room));
  }
}

export function ago(seconds) {
  const s = Math.max(0, seconds);
  if (s < 10) return `${s.toFixed(1)}s`;
  if (s < 60) return `${Math.round(s)}s`;
  if (s < 3600) return `${Math.round(s / 60)}m`;
  return `${(s / 3600).toFixed(1)}h`;
}

const fixed = (n, digits = 1) => (n === undefined || n === null ? "–" : Number(n).toFixed(digits));
const mib = (bytes) => (bytes === undefined ? "–" : `${(bytes / 1048576).toFixed(1)} MiB`);

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

// Make tbody's rows match items, in order, reusing the row of each key.
function syncRows(tbody, items, key, fill) {
  const existing = new Map();
  for (const tr of tbody.children) existing.set(tr.dataset.key, tr);
  let previous = null;
  for (const item of items) {
    const k = key(item);
    let tr = existing.get(k);
    const fresh = tr === undefined;
    if (fresh) {
      tr = document.createElement("tr");
      tr.dataset.key = k;
    }
    existing.delete(k);
    fill(tr, item, fresh);
    const wanted = previous ? previous.nextSibling : tbody.firstChild;
    if (wanted !== tr) tbody.insertBefore(tr, wanted);
    previous = tr;
  }
  for (const tr of existing.values()) tr.remove();
}

function cells(tr, classes) {
  for (const name of classes) {
    const td = document.createElement("td");
    td.className = name;
    tr.appendChild(td);
  }
}

function page(items, pager, state, size) {
  const pages = Math.max(1, Math.ceil(items.length / size));
  state.page = Math.min(Math.max(0, state.page), pages - 1);
  const start = state.page * size;
  const shown = items.slice(start, start + size);
  setText(pager.querySelector(".where"),
    items.length ? `${start + 1}–${start + shown.length} of ${items.length}` : "none");
  pager.querySelector('[data-step="-1"]').disabled = state.page === 0;
  pager.querySelector('[data-step="1"]').disabled = state.page >= pages - 1;
  return shown;
}

export function matches(conn, filters) {
  const has = (text, part) => !part || text.toLowerCase().includes(part.toLowerCase());
  return has(conn.user_id, filters.user) && has(conn.instance_id, filters.instance)
    && (!filters.room || conn.rooms.some((r) => has(r, filters.room)));
}

export function render(model, ui) {
  const now = model.now();
  const rates = model.rates();
  setText(ui.rate.connects, rates.known ? fixed(rates.connects_s) : "–");
  setText(ui.rate.moves, rates.known ? fixed(rates.moves_s) : "–");
  setText(ui.rate.deliveries, rates.known ? fixed(rates.deliveries_s) : "–");
  setText(ui.rate.p99, rates.move_p99_ms === null ? "–" : fixed(rates.move_p99_ms, 2));
  setText(ui.rate.connections, String(model.connections.size));

  const instances = [...model.instances.values()].sort((a, b) => a.instance.localeCompare(b.instance));
  syncRows(ui.instances, instances, (i) => i.instance, (tr, i, fresh) => {
    if (fresh) cells(tr, ["instance", "beat num", "connections num", "cpu num", "rss num", "moves num", "deliveries num"]);
    tr.dataset.instance = i.instance;
    const stale = i.beat === undefined || now - i.beat >= FRESH_S;
    tr.classList.toggle("stale", stale);
    const [name, beat, conns, cpu, rss, moves, deliveries] = tr.children;
    setText(name, i.instance);
    setText(beat, i.beat === undefined ? "gone" : `${ago(now - i.beat)} ago`);
    setText(conns, String(i.connections ?? "–"));
    setText(cpu, i.cpu_pct === undefined ? "–" : `${fixed(i.cpu_pct)}%`);
    setText(rss, mib(i.rss_bytes));
    setText(moves, fixed(i.rates?.moves_s));
    setText(deliveries, fixed(i.rates?.deliveries_s));
  });

  const filtered = [...model.connections.values()].filter((c) => matches(c, ui.filters))
    .sort((a, b) => a.connected_at - b.connected_at || a.sid.localeCompare(b.sid));
  setText(ui.connectionsCount, `${filtered.length} of ${model.connections.size}`);
  const shown = page(filtered, ui.connectionsPager, ui.pages.connections, ui.pageSize);
  syncRows(ui.connections, shown, (c) => c.sid, (tr, c, fresh) => {
    if (fresh) {
      cells(tr, ["user", "instance", "rooms", "state", "transport", "connected num", "seen num", "actions"]);
      for (const action of ["kick", "drop", "revoke"]) {
        const button = document.createElement("button");
        button.type = "button";
        button.className = action;
        button.dataset.action = action;
        button.textContent = action;
        tr.lastChild.appendChild(button);
      }
    }
    tr.dataset.sid = c.sid;
    tr.dataset.user = c.user_id;
    const [user, instance, rooms, state, transport, connected, seen] = tr.children;
    setText(user, c.user_id);
    setText(instance, c.instance_id);
    setText(rooms, c.rooms.join(", ") || "–");
    setText(state, c.state);
    state.className = `state state-${c.state}`;
    setText(transport, c.transport || "–");
    setText(connected, `${ago(now - c.connected_at)} ago`);
    setText(seen, `${ago(now - c.last_seen)} ago`);
  });

  const rooms = model.rooms().filter((r) => !ui.filters.room || r.room.toLowerCase().includes(ui.filters.room.toLowerCase()));
  setText(ui.roomsCount, String(rooms.length));
  syncRows(ui.rooms, page(rooms, ui.roomsPager, ui.pages.rooms, ui.pageSize), (r) => r.room, (tr, r, fresh) => {
    if (fresh) cells(tr, ["room", "members", "seq num", "rate num"]);
    tr.dataset.room = r.room;
    const [room, members, seq, rate] = tr.children;
    setText(room, r.room);
    setText(members, `${r.users.length}: ${r.users.slice(0, 20).join(", ")}${r.users.length > 20 ? ", …" : ""}`);
    setText(seq, String(r.seq));
    setText(rate, fixed(r.rate));
  });
}

export function clearTables(ui) {
  for (const tbody of [ui.instances, ui.connections, ui.rooms]) tbody.replaceChildren();
  for (const node of Object.values(ui.rate)) node.textContent = "–";
}
