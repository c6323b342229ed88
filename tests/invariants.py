"""What the cluster's state in Redis must look like once in-flight work has settled.

:func:`snapshot` is the ONE place that reads Redis (one Lua script: every key under the prefix,
read atomically) and knows the key layout of ``server/state/keys.py``; when the layout changes, adapt
it and the :class:`Snapshot` it fills. :func:`violations` (the seats, the sessions, the rooms
and the registry agree with each other) and :func:`leftovers` (what is still there for users
and rooms that are gone) only look at a snapshot and return what is wrong as text, empty when
all is well; :func:`check_invariants` and :func:`check_leftovers` read and check in one call.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gamegw.server.state.keys import Keys

# Every key under the prefix with its type and value (string: GET, hash: HGETALL flattened,
# zset: ZRANGE WITHSCORES flattened, set: SMEMBERS, stream: XLEN), read in one atomic script.
DUMP = """
local out = {}
for _, k in ipairs(redis.call('KEYS', ARGV[1])) do
  local t = redis.call('TYPE', k)['ok']
  local v
  if t == 'string' then v = {redis.call('GET', k)}
  elseif t == 'hash' then v = redis.call('HGETALL', k)
  elseif t == 'zset' then v = redis.call('ZRANGE', k, 0, -1, 'WITHSCORES')
  elseif t == 'set' then v = redis.call('SMEMBERS', k)
  elseif t == 'stream' then v = {tostring(redis.call('XLEN', k))}
  else v = {} end
  table.insert(out, {k, t, v})
end
return out
"""

ROOM_PARTS = ("seq", "log", "users", "insts", "state", "ver", "seats")


@dataclass
class Snapshot:
    """The cluster's state under one prefix, parsed by key kind."""

    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)  # session_id -> the session
    user_sessions: dict[str, set[str]] = field(default_factory=dict)  # usess:{uid} -> session ids
    grace: dict[str, float] = field(default_factory=dict)  # session_id -> grace ends
    conns: dict[str, dict[str, Any]] = field(default_factory=dict)  # conn:{sid} -> the registry entry
    user_sids: dict[str, set[str]] = field(default_factory=dict)  # user:{uid} -> sids
    seen: set[str] = field(default_factory=set)  # sids in the seen hash
    inst_sids: dict[str, set[str]] = field(default_factory=dict)  # inst:{iid}:sids
    inst_rooms: dict[str, set[str]] = field(default_factory=dict)  # inst:{iid}:rooms
    alive: set[str] = field(default_factory=set)  # instances whose heartbeat key is there
    rooms: dict[str, set[str]] = field(default_factory=dict)  # room -> the parts that exist
    room_users: dict[str, dict[str, int]] = field(default_factory=dict)  # room -> user -> count
    room_insts: dict[str, set[str]] = field(default_factory=dict)
    room_seats: dict[str, dict[str, str]] = field(default_factory=dict)  # room -> session id -> user
    other: list[str] = field(default_factory=list)  # keys of other kinds (block, revoked, ...)


async def snapshot(redis: Any, keys: Keys) -> Snapshot:
    """Read every key under ``keys.p`` at one instant (``redis``: a client with decode_responses)."""
    raw = await redis.eval(DUMP, 0, keys.p + ":*")
    snap = Snapshot()
    head = keys.p + ":"
    session_rooms: dict[str, dict[str, int]] = {}
    conn_rooms: dict[str, list[str]] = {}
    for key, _kind, value in raw:
        name = str(key)[len(head):]
        if name.startswith("sess:") and name.endswith(":rooms"):
            session_rooms[name[5:-6]] = {r: int(n) for r, n in zip(value[0::2], value[1::2], strict=True)}
        elif name.startswith("sess:"):
            if value:
                snap.sessions[name[5:]] = dict(zip(value[0::2], value[1::2], strict=True))
        elif name.startswith("conn:") and name.endswith(":rooms"):
            conn_rooms[name[5:-6]] = list(value)
        elif name.startswith("usess:"):
            snap.user_sessions[name[6:]] = set(value[0::2])
        elif name == "grace":
            snap.grace = {m: float(s) for m, s in zip(value[0::2], value[1::2], strict=True)}
        elif name.startswith("conn:"):
            if value:
                snap.conns[name[5:]] = json.loads(value[0])
        elif name.startswith("user:"):
            snap.user_sids[name[5:]] = set(value[0::2])
        elif name == "seen":
            snap.seen = set(value[0::2])
        elif name.startswith("inst:"):
            iid, _, part = name[5:].rpartition(":")
            if part == "sids":
                snap.inst_sids[iid] = set(value)
            elif part == "rooms":
                snap.inst_rooms[iid] = set(value)
            elif part == "alive":
                snap.alive.add(iid)
        elif name.startswith("room:{"):
            room, _, part = name[6:].rpartition("}:")
            snap.rooms.setdefault(room, set()).add(part)
            if part == "users":
                snap.room_users[room] = {u: int(n) for u, n in zip(value[0::2], value[1::2], strict=True)}
            elif part == "insts":
                snap.room_insts[room] = set(value)
            elif part == "seats":
                snap.room_seats[room] = dict(zip(value[0::2], value[1::2], strict=True))
        elif name not in ("instances",) and not name.startswith(("inst:", "reap:", "ch:")):
            snap.other.append(name)
    for session_id, session in snap.sessions.items():
        session["rooms"] = session_rooms.get(session_id, {})
    for sid, conn in snap.conns.items():
        conn["rooms"] = sorted(conn_rooms.get(sid, ()))
    return snap


async def settled(check: Callable[[], Awaitable[list[str]]], timeout: float, interval: float = 0.1) -> list[str]:
    """Run ``check`` until it finds nothing wrong or ``timeout`` seconds have passed; its last
    findings (empty once the cluster has settled)."""
    deadline = time.monotonic() + timeout
    found = await check()
    while found and time.monotonic() < deadline:
        await asyncio.sleep(interval)
        found = await check()
    return found


def _everyone(_: str) -> bool:
    return True


async def check_invariants(redis: Any, keys: Keys, limit: int, *, open_sids: Mapping[str, str] | None = None,
                           ours: Callable[[str], bool] = _everyone) -> list[str]:
    """The violations of the cluster's invariants, read from Redis now (see :func:`violations`)."""
    return violations(await snapshot(redis, keys), limit, open_sids=open_sids, ours=ours)


async def check_leftovers(redis: Any, keys: Keys, *, users: set[str] | None = None,
                          rooms: set[str] | None = None) -> list[str]:
    """What is still in Redis for ``users`` and ``rooms`` (see :func:`leftovers`)."""
    return leftovers(await snapshot(redis, keys), users=users, rooms=rooms)


def violations(snap: Snapshot, limit: int, *, open_sids: Mapping[str, str] | None = None,
               ours: Callable[[str], bool] = _everyone) -> list[str]:
    """The violations of the cluster's invariants in ``snap``.

    ``limit`` is ``max_connections_per_user``; ``open_sids`` (sid -> user), when given, are the
    connections the clients still hold open; ``ours`` selects the users and rooms to look at
    (names of one test), so that what another test left cannot be taken for a violation here.
    """
    out: list[str] = []
    sessions = {i: s for i, s in snap.sessions.items() if ours(s["user_id"])}
    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in sessions.values():
        by_user[s["user_id"]].append(s)

    # live seats per user <= limit: in the sessions, in the registry, and as the clients see it
    for user, ss in sorted(by_user.items()):
        live = sorted(s["sid"] for s in ss if s["state"] == "connected")
        if len(live) > limit:
            out.append(f"user {user}: {len(live)} connected sessions (limit {limit}): {live}")
    live_entries = Counter(c["user_id"] for c in snap.conns.values()
                           if ours(c["user_id"]) and c.get("state") == "connected")
    for user, n in sorted(live_entries.items()):
        if n > limit:
            out.append(f"user {user}: {n} connected registry entries (limit {limit})")
    if open_sids is not None:
        for user, n in sorted(Counter(u for u in open_sids.values() if ours(u)).items()):
            if n > limit:
                out.append(f"user {user}: {n} connections open at the clients (limit {limit})")

    # every session is in exactly one state: connected, or grace (and then in the grace zset)
    for sid_, s in sorted(sessions.items()):
        in_grace = sid_ in snap.grace
        if s["state"] == "connected" and in_grace:
            out.append(f"session {sid_} of {s['user_id']}: connected and in the grace zset")
        elif s["state"] == "grace" and not in_grace:
            out.append(f"session {sid_} of {s['user_id']}: state grace but not in the grace zset")
        elif s["state"] not in ("connected", "grace"):
            out.append(f"session {sid_} of {s['user_id']}: unknown state {s['state']!r}")
        if sid_ not in snap.user_sessions.get(s["user_id"], set()):
            out.append(f"session {sid_} of {s['user_id']}: missing from usess:{s['user_id']}")
        entry = snap.conns.get(s["sid"])
        if entry is None:
            out.append(f"session {sid_} of {s['user_id']} ({s['state']}): no registry entry for its sid {s['sid']}")
        elif entry.get("state") != s["state"] or entry.get("session_id") != sid_:
            out.append(f"session {sid_} of {s['user_id']} ({s['state']}): its sid's registry entry says "
                       f"{entry.get('state')}, session {entry.get('session_id')}")
        if s["state"] == "connected" and open_sids is not None and s["sid"] not in open_sids:
            out.append(f"session {sid_} of {s['user_id']}: connected through {s['sid']}, which no client holds open")
    for sid_ in sorted(snap.grace):
        if sid_ not in snap.sessions:
            out.append(f"grace zset: {sid_} has no session")
    for user, ids in sorted(snap.user_sessions.items()):
        if not ours(user):
            continue
        for sid_ in sorted(ids):
            s = snap.sessions.get(sid_)
            if s is None or s["user_id"] != user:
                out.append(f"usess:{user}: {sid_} has no session of that user")

    # every seat in a room's users hash belongs to a live or grace session that lists the room,
    # as many as the hash counts, and every session that lists a room is seated there
    seated: Counter[tuple[str, str]] = Counter()
    for s in sessions.values():
        for room in s["rooms"] or ():
            seated[(room, s["user_id"])] += 1
    for room, users in sorted(snap.room_users.items()):
        if not ours(room):
            continue
        for user, n in sorted(users.items()):
            if seated[(room, user)] != n:
                out.append(f"room {room}: users hash counts {user} {n} time(s); "
                           f"{seated[(room, user)]} session(s) of theirs list the room")
    for (room, user), n in sorted(seated.items()):
        if ours(room) and user not in snap.room_users.get(room, {}):
            out.append(f"room {room}: {n} session(s) of {user} list the room; the users hash does not have them")
    for room, seats in sorted(snap.room_seats.items()):
        if not ours(room):
            continue
        for session_id, user in sorted(seats.items()):
            s = snap.sessions.get(session_id)
            if s is None:
                out.append(f"room {room}: seat of {user} held by session {session_id}, which is gone")
            elif room not in (s["rooms"] or ()):
                out.append(f"room {room}: seat of {user} held by session {session_id}, which does not list the room")
    for room, parts in sorted(snap.rooms.items()):
        if ours(room) and "users" not in parts:
            out.append(f"room {room}: keys {sorted(parts)} left without a users hash")
    # the room's events reach every live member's instance
    for s in sessions.values():
        if s["state"] != "connected":
            continue
        for room in s["rooms"] or ():
            if s["instance_id"] not in snap.room_insts.get(room, set()):
                out.append(f"room {room}: {s['user_id']}'s live connection is on {s['instance_id']}, "
                           f"not among the room's instances {sorted(snap.room_insts.get(room, set()))}")

    # no registry entry outlives its owner
    for sid, c in sorted(snap.conns.items()):
        if not ours(c["user_id"]):
            continue
        s = snap.sessions.get(c.get("session_id", ""))
        if s is None:
            out.append(f"conn:{sid} of {c['user_id']} ({c.get('state')}): its session {c.get('session_id')} is gone")
        elif s["sid"] != sid:
            out.append(f"conn:{sid} of {c['user_id']} ({c.get('state')}): its session is held by {s['sid']} now")
        if c.get("state") == "connected" and open_sids is not None and sid not in open_sids:
            out.append(f"conn:{sid} of {c['user_id']}: connected, but no client holds it open")
        if sid not in snap.user_sids.get(c["user_id"], set()):
            out.append(f"conn:{sid} of {c['user_id']}: missing from user:{c['user_id']}")
    for user, sids in sorted(snap.user_sids.items()):
        if ours(user):
            for sid in sorted(sids - set(snap.conns)):
                out.append(f"user:{user}: {sid} has no registry entry")
    for iid, sids in sorted(snap.inst_sids.items()):
        for sid in sorted(sids - set(snap.conns)):
            out.append(f"inst:{iid}:sids: {sid} has no registry entry")
    for sid in sorted(snap.seen - set(snap.conns)):
        out.append(f"seen: {sid} has no registry entry")
    return out


def leftovers(snap: Snapshot, *, users: set[str] | None = None, rooms: set[str] | None = None) -> list[str]:
    """What is still there for ``users`` and ``rooms`` (None: any) once they are all gone."""
    def mine(user: str) -> bool:
        return users is None or user in users

    out: list[str] = []
    for sid_, s in sorted(snap.sessions.items()):
        if mine(s["user_id"]):
            out.append(f"sess:{sid_} ({s['user_id']}, {s['state']}, rooms {sorted(s['rooms'] or ())})")
    for user, ids in sorted(snap.user_sessions.items()):
        if mine(user):
            out.append(f"usess:{user} ({len(ids)} sessions)")
    for sid, c in sorted(snap.conns.items()):
        if mine(c["user_id"]):
            out.append(f"conn:{sid} ({c['user_id']}, {c.get('state')}, on {c.get('instance_id')})")
    for user, sids in sorted(snap.user_sids.items()):
        if mine(user):
            out.append(f"user:{user} ({len(sids)} sids)")
    for sid_ in sorted(snap.grace):
        s = snap.sessions.get(sid_)
        if s is None or mine(s["user_id"]):
            out.append(f"grace: {sid_}")
    for room, parts in sorted(snap.rooms.items()):
        if rooms is None or room in rooms:
            out.append(f"room {room}: {sorted(parts)}, users {snap.room_users.get(room, {})}")
        elif users is not None:
            out.extend(f"room {room}: users hash still counts {u} ({n})"
                       for u, n in sorted(snap.room_users.get(room, {}).items()) if u in users)
    # entries of connections that have no registry entry left belong to nobody
    out.extend(f"inst:{iid}:sids: {sid} has no registry entry"
               for iid, sids in sorted(snap.inst_sids.items()) for sid in sorted(sids - set(snap.conns)))
    out.extend(f"seen: {sid} has no registry entry" for sid in sorted(snap.seen - set(snap.conns)))
    if users is None:
        out.extend(f"inst:{iid}:rooms: {sorted(rs)}" for iid, rs in sorted(snap.inst_rooms.items()) if rs)
    return out
