"""Seats, sessions and rooms under random interleavings, some of them concurrent (hypothesis).

Two in-process gateways in cluster mode over one real redis-server; a small pool of users and
rooms; rules that connect (alone, or several connections of one user at once on both
instances), join, leave, move, disconnect (final), cut a connection (a drop: the client's socket
aborted, or ``POST /admin/drop``), resume within grace, kick, and end grace (the gateways'
clock is moved past it and both sweep at once); a ``race`` rule runs a few of these
concurrently. After every step, once in-flight work has settled (a bounded wait), the
invariants of :func:`tests.invariants.violations` must hold: no user above the seat limit (in
the sessions, the registry and at the clients), every session in exactly one state, every
seat of a room's users hash backed by a session that lists the room, no entry that outlives
its owner. When an example ends, everyone leaves and grace ends: nothing of its users and
rooms may be left in Redis.

Each example starts with every user connected (on alternating instances) and in a room, and
runs under three policies: one seat per user with ``replace``, two with ``replace``, one with
``refuse``.

The gateways run in an event loop of their own thread (:class:`LoopThread`): hypothesis drives
the rules synchronously and each rule hands its coroutine to that loop. Only time is faked:
the gateways' clock, which the ``expire`` rule moves forward. Shrinking is off (a race does not
shrink reliably) and generation is derandomised, so every run plays the same steps; the first
violation is reported with the steps of its example (see :class:`SeatMachine`).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import pytest
import redis.asyncio as redis_async
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from gamegw.server.app import PARTS
from gamegw.server.auth.tokens import mint
from gamegw.server.config import load_settings
from gamegw.server.state.keys import Keys
from tests.conftest import TEST_SECRET, Gateway, RedisServer, start_gateway
from tests.invariants import check_invariants, check_leftovers, settled
from tests.leanclient import LeanClient

pytestmark = pytest.mark.timeout(120)

T = TypeVar("T")
GRACE_S = 30.0  # real time never ends a grace here: only the expire rule does, by moving the clock
SETTLE_S = 3.0
USERS = 3
ROOMS = 3


class LoopThread:
    """An event loop running in a thread of its own, for synchronous callers (hypothesis rules)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="stateful-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def finish() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.loop.shutdown_asyncgens()
            await self.loop.shutdown_default_executor()

        try:
            self.run(finish(), timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)
            self.loop.close()


class Clock:
    """The gateways' wall clock: real time plus an offset that only grows."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class World:
    """Two gateways, a Redis client and an HTTP session, living in ``thread``'s loop."""

    thread: LoopThread
    clock: Clock
    gateways: list[Gateway]
    redis: Any
    http: aiohttp.ClientSession
    keys: Keys
    limit: int
    policy: str

    def token(self, user: str, **kw: Any) -> str:
        # PyJWT checks exp and iat against the real time; the gateways' clock runs ahead of it by
        # the grace periods the expire rule skipped, which 6 hours leave room for
        return mint(self.gateways[0].settings, user, ttl_s=6 * 3600, **kw)


async def start_world(thread: LoopThread, redis_url: str, prefix: str, limit: int, policy: str) -> World:
    clock = Clock()
    gateways = []
    for i in range(2):
        s = load_settings({"GAMEGW_JWT_SECRET": TEST_SECRET}, None, {
            "port": 0, "instance_id": f"inst-{i + 1}", "redis_url": redis_url, "redis_prefix": prefix,
            "heartbeat_interval_s": 0.2, "heartbeat_ttl_s": 1.0, "grace_s": GRACE_S,
            "max_connections_per_user": limit, "on_connection_limit": policy, "max_events_per_s": 0,
            "max_connects_per_address_per_s": 100000, "max_connects_per_address_burst": 100000})
        gateways.append(await start_gateway(s, clock=clock))
    redis = redis_async.Redis.from_url(redis_url, decode_responses=True)
    return World(thread, clock, gateways, redis, aiohttp.ClientSession(), Keys(prefix), limit, policy)


async def stop_world(world: World) -> None:
    await world.http.close()
    await world.redis.aclose()
    for gw in reversed(world.gateways):
        await gw.aclose()


@pytest.fixture(params=[(1, "replace"), (2, "replace"), (1, "refuse")], ids=lambda p: f"limit{p[0]}-{p[1]}")
def world(request: pytest.FixtureRequest, redis_server: RedisServer, redis_prefix: str) -> Iterator[World]:
    limit, policy = request.param
    thread = LoopThread()
    try:
        w = thread.run(start_world(thread, redis_server.url, redis_prefix, limit, policy))
        try:
            yield w
        finally:
            thread.run(stop_world(w))
    finally:
        thread.close()


@dataclass
class Seat:
    """One client connection of the machine, and what it was told."""

    user: str
    inst: int
    client: LeanClient
    seqs: dict[str, int] = field(default_factory=dict)  # room -> last move seq seen

    def note_moves(self) -> None:
        for m in self.client.events.get("move", []):
            self.seqs[m["room"]] = max(self.seqs.get(m["room"], 0), m["seq"])


examples = itertools.count(1)
users = st.integers(0, USERS - 1)
rooms = st.integers(0, ROOMS - 1)
insts = st.integers(0, 1)
picks = st.integers(0, 1000)  # an index into the open connections, modulo their number
ops = st.one_of(
    st.tuples(st.just("connect"), users, insts),
    st.tuples(st.just("join"), picks, rooms),
    st.tuples(st.just("leave"), picks, rooms),
    st.tuples(st.just("move"), picks, rooms),
    st.tuples(st.just("disconnect"), picks),
    st.tuples(st.just("drop"), picks),
    st.tuples(st.just("admin_drop"), users, insts),
    st.tuples(st.just("resume"), picks, insts),
    st.tuples(st.just("kick"), users, insts),
    st.tuples(st.just("expire")),
)


class SeatMachine(RuleBasedStateMachine):
    """The rules record the first failure (with the steps that led to it) instead of raising it
    into hypothesis: a race need not come back when hypothesis replays the example, and a replay
    that goes differently is reported as a flaky test instead of the violation. Once a failure
    is recorded, every step is skipped and the test reports it."""

    world: World  # set by the test before the machine runs
    failure: str | None = None

    def __init__(self) -> None:
        super().__init__()
        self.n = next(examples)
        self.tag = f"x{self.n}-"
        self.seats: list[Seat] = []
        self.dropped: list[Seat] = []  # cut by the client (abort); candidates for resume
        self.steps: list[str] = []

    # -- names and helpers ----------------------------------------------------------------------

    def user(self, i: int) -> str:
        return f"{self.tag}u{i}"

    def room(self, i: int) -> str:
        return f"{self.tag}r{i}"

    def ours(self, name: str) -> bool:
        return name.startswith(self.tag)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.world.thread.run(coro)

    def step(self, label: str, coro: Coroutine[Any, Any, Any]) -> None:
        """Run one rule's work in the gateways' loop; record the first failure."""
        if SeatMachine.failure is not None:
            coro.close()
            return
        self.steps.append(label)
        try:
            self.run(coro)
        except Exception as exc:
            self.fail(f"{label} failed: {type(exc).__name__}: {exc}")

    def fail(self, what: str) -> None:
        w = self.world
        runs = [(label, len(list(group))) for label, group in itertools.groupby(self.steps)]
        steps = "\n    ".join(label if n == 1 else f"{label} x {n}" for label, n in runs)
        SeatMachine.failure = (f"example {self.n} (limit {w.limit}, {w.policy}): {what}\n"
                               f"  steps:\n    {steps}")

    def open_seats(self) -> list[Seat]:
        return [s for s in self.seats if s.client.connected]

    def pick(self, i: int) -> Seat | None:
        live = self.open_seats()
        return live[i % len(live)] if live else None

    async def admin(self, inst: int, path: str, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.world.token('ops', role='admin')}"}
        async with self.world.http.post(self.world.gateways[inst].url + path, json=body, headers=headers) as resp:
            assert resp.status == 200, (path, resp.status, await resp.text())
            return dict(await resp.json())

    # -- operations (each an async step; ``race`` runs several at once) --------------------------

    async def op(self, name: str, *args: int) -> None:
        await getattr(self, "op_" + name)(*args)

    async def _connect(self, user: str, inst: int, last_seq: dict[str, int] | None = None) -> None:
        auth: dict[str, Any] = {"token": self.world.token(user)}
        if last_seq:
            auth["last_seq"] = last_seq
        client = await LeanClient.connect(self.world.gateways[inst].url, auth)
        self.seats.append(Seat(user, inst, client))
        if client.session is None:
            error = client.connect_error or {}
            refused = self.world.policy == "refuse" and error.get("message") == "connection_limit"
            assert refused, f"{user} on inst-{inst + 1}: refused with {error}"
        else:
            assert client.session["user"] == user, client.session

    async def op_connect(self, user: int, inst: int) -> None:
        await self._connect(self.user(user), inst)

    async def op_resume(self, pick: int, inst: int) -> None:
        if not self.dropped:
            return
        old = self.dropped.pop(pick % len(self.dropped))
        old.note_moves()
        await self._connect(old.user, inst, old.seqs)

    async def op_join(self, pick: int, room: int) -> None:
        seat = self.pick(pick)
        if seat is not None:
            ack = await seat.client.call("join", {"room": self.room(room)})
            assert ack is None or ack["ok"] or ack["error"]["code"] == "unavailable", ack

    async def op_leave(self, pick: int, room: int) -> None:
        seat = self.pick(pick)
        if seat is not None:
            ack = await seat.client.call("leave", {"room": self.room(room)})
            assert ack is None or ack["ok"] or ack["error"]["code"] in ("not_in_room", "unavailable"), ack

    async def op_move(self, pick: int, room: int) -> None:
        seat = self.pick(pick)
        if seat is not None:
            ack = await seat.client.call("move", {"room": self.room(room), "action": {"by": seat.user}})
            assert ack is None or ack["ok"] or ack["error"]["code"] in ("not_in_room", "unavailable"), ack

    async def op_disconnect(self, pick: int) -> None:
        seat = self.pick(pick)
        if seat is not None:
            await seat.client.disconnect()

    async def op_drop(self, pick: int) -> None:
        seat = self.pick(pick)
        if seat is not None:
            seat.note_moves()
            seat.client.abort()
            await seat.client.aclose()
            self.dropped.append(seat)

    async def op_admin_drop(self, user: int, inst: int) -> None:
        await self.admin(inst, "/admin/drop", {"user": self.user(user), "block_s": 0})

    async def op_kick(self, user: int, inst: int) -> None:
        await self.admin(inst, "/admin/kick", {"user": self.user(user), "reason": "stateful"})

    async def op_expire(self) -> None:
        self.world.clock.offset += GRACE_S + 1
        await asyncio.gather(*(gw.app[PARTS].gateway.expire_grace() for gw in self.world.gateways))

    # -- rules ------------------------------------------------------------------------------------

    @initialize(rooms_=st.lists(rooms, min_size=USERS, max_size=USERS))
    def seat_everyone(self, rooms_: list[int]) -> None:
        """Each user starts connected (alternating instances) and in a room."""
        async def go() -> None:
            for i, room in enumerate(rooms_):
                await self.op_connect(i, i % 2)
                await self.op_join(len(self.open_seats()) - 1, room)

        self.step(f"seat_everyone(rooms_={rooms_})", go())

    @rule(user=users, inst=insts)
    def connect(self, user: int, inst: int) -> None:
        self.step(f"connect(user={user}, inst={inst})", self.op_connect(user, inst))

    @rule(user=users, n=st.integers(2, 4))
    def connect_at_once(self, user: int, n: int) -> None:
        """``n`` connections of one user, alternating over both instances, CONNECTs in one turn."""
        async def go() -> None:
            name = self.user(user)
            clients = await asyncio.gather(*(LeanClient.open(self.world.gateways[i % 2].url) for i in range(n)))
            for c in clients:
                c.send_connect({"token": self.world.token(name)})
            for i, c in enumerate(clients):
                self.seats.append(Seat(name, i % 2, c))
            await asyncio.gather(*(c.wait_answer() for c in clients))
            for c in clients:
                if c.session is None:
                    error = c.connect_error or {}
                    assert self.world.policy == "refuse" and error.get("message") == "connection_limit", error

        self.step(f"connect_at_once(user={user}, n={n})", go())

    @rule(pick=picks, room=rooms)
    def join(self, pick: int, room: int) -> None:
        self.step(f"join(pick={pick}, room={room})", self.op_join(pick, room))

    @rule(pick=picks, room=rooms)
    def leave(self, pick: int, room: int) -> None:
        self.step(f"leave(pick={pick}, room={room})", self.op_leave(pick, room))

    @rule(pick=picks, room=rooms)
    def move(self, pick: int, room: int) -> None:
        self.step(f"move(pick={pick}, room={room})", self.op_move(pick, room))

    @rule(pick=picks)
    def disconnect(self, pick: int) -> None:
        self.step(f"disconnect(pick={pick})", self.op_disconnect(pick))

    @rule(pick=picks)
    def drop(self, pick: int) -> None:
        self.step(f"drop(pick={pick})", self.op_drop(pick))

    @rule(user=users, inst=insts)
    def admin_drop(self, user: int, inst: int) -> None:
        self.step(f"admin_drop(user={user}, inst={inst})", self.op_admin_drop(user, inst))

    @rule(pick=picks, inst=insts)
    def resume(self, pick: int, inst: int) -> None:
        self.step(f"resume(pick={pick}, inst={inst})", self.op_resume(pick, inst))

    @rule(user=users, inst=insts)
    def kick(self, user: int, inst: int) -> None:
        self.step(f"kick(user={user}, inst={inst})", self.op_kick(user, inst))

    @rule()
    def expire(self) -> None:
        self.step("expire()", self.op_expire())

    @rule(steps=st.lists(ops, min_size=2, max_size=4))
    def race(self, steps: list[tuple[Any, ...]]) -> None:
        """Several operations at the same time (on both instances)."""
        async def go() -> None:
            await asyncio.gather(*(self.op(*s) for s in steps))

        self.step(f"race({steps})", go())

    # -- invariants ---------------------------------------------------------------------------------

    async def settle(self) -> None:
        def open_sids() -> dict[str, str]:
            return {s.client.sid: s.user for s in self.seats if s.client.connected}

        async def check() -> list[str]:
            return await check_invariants(self.world.redis, self.world.keys, self.world.limit,
                                          open_sids=open_sids(), ours=self.ours)

        found = await settled(check, timeout=SETTLE_S, interval=0.05)
        if found:
            self.fail(f"after settling {SETTLE_S} s:\n    " + "\n    ".join(found))

    @invariant()
    def the_cluster_agrees_with_itself(self) -> None:
        if SeatMachine.failure is None:
            self.run(self.settle())

    def teardown(self) -> None:
        """Everyone leaves, grace ends: nothing of this example's users or rooms may be left."""
        async def go() -> None:
            try:
                await asyncio.gather(*(s.client.disconnect() for s in self.seats if s.client.connected))
            finally:
                await asyncio.gather(*(s.client.aclose() for s in self.seats), return_exceptions=True)
            if SeatMachine.failure is not None:
                return
            await asyncio.sleep(0.1)  # the closes reach the gateways
            await self.op_expire()
            names = {self.user(i) for i in range(USERS)}
            rooms_ = {self.room(i) for i in range(ROOMS)}
            left = await settled(lambda: check_leftovers(self.world.redis, self.world.keys, users=names,
                                                         rooms=rooms_), timeout=SETTLE_S)
            if left:
                self.fail("left in Redis after everyone left and grace ended:\n    " + "\n    ".join(left))

        self.steps.append("teardown: everyone disconnects, grace ends")
        try:
            self.run(go())
        except Exception as exc:
            if SeatMachine.failure is None:
                self.fail(f"teardown failed: {type(exc).__name__}: {exc}")


def test_seats_sessions_and_rooms_stay_consistent(world: World) -> None:
    SeatMachine.world = world
    SeatMachine.failure = None
    try:
        run_state_machine_as_test(SeatMachine, settings=settings(
            max_examples=25, stateful_step_count=30, deadline=None, derandomize=True, database=None,
            phases=[Phase.explicit, Phase.reuse, Phase.generate], suppress_health_check=[HealthCheck.too_slow]))
        if SeatMachine.failure is not None:
            pytest.fail(SeatMachine.failure, pytrace=False)
    finally:
        del SeatMachine.world
        SeatMachine.failure = None

