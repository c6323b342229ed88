"""A gamegw player in Python, with python-socketio's AsyncClient (5.x).

    pip install "python-socketio[asyncio_client]"     # already in the gateway's .venv
    export TOKEN=$(.venv/bin/gamectl token alice)
    .venv/bin/python examples/python_client.py        # Ctrl-C leaves the room for good

Settings, from the environment: GAME_URL (default http://127.0.0.1:8000), TOKEN (required),
ROOM (default "lobby"), MOVES (leave after seeing this many moves; default 0: play until
Ctrl-C).

It prints one line per thing that happens, ``<what> <json>``, so that you can follow along.
The protocol it speaks is in docs/protocol.md.
"""

import asyncio
import json
import os
import random
import signal

import socketio

NS = "/game"  # the gateway serves this namespace only


def say(what, data=None):
    print(what, json.dumps(data), flush=True)


class Player:
    def __init__(self, url, token, room, leave_after=0):
        self.url, self.token, self.room, self.leave_after = url, token, room, leave_after
        self.last_seq = {}          # room -> the highest move seq applied; sent on every (re)connect
        self.moves_seen = 0
        self.closing = None         # the last disconnect_reason the server sent
        self.done = asyncio.Event()  # set when we leave, or when the server says stay away
        self.exit_code = 0
        self.tasks = set()
        # reconnects by itself after a drop (transport close, ping timeout), and resumes
        self.sio = socketio.AsyncClient()
        for event in ("session", "move", "disconnect_reason", "disconnect", "connect_error",
                      "player_joined", "player_left", "player_disconnected", "player_reconnected"):
            self.sio.on(event, getattr(self, "on_" + event, self.show(event)), namespace=NS)

    def show(self, event):
        async def handler(data):
            say(event, data)
        return handler

    async def auth(self):
        # Called on every (re)connect, so that a resume gets the moves we missed replayed, in
        # order, right after the session event.
        return {"token": self.token, "last_seq": dict(self.last_seq)}

    async def connect(self, delay=0.0):
        """Connect, and retry while the gateway says to (rate_limited, unavailable)."""
        for attempt in range(10):
            await asyncio.sleep(delay)
            try:
                await self.sio.connect(self.url, namespaces=[NS], auth=self.auth, transports=["websocket"],
                                       wait_timeout=10)
                return
            except socketio.exceptions.ConnectionError:
                pass  # on_connect_error has said why, and stopped us if retrying is no use
            if self.done.is_set():
                return
            delay = min(30.0, 0.5 * 2 ** attempt) * random.uniform(0.5, 1.5)
        self.stop(1)

    def later(self, coro):
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def stop(self, code):
        self.exit_code = code
        self.done.set()

    # -- what the gateway sends ---------------------------------------------------------------

    async def on_session(self, s):
        # Always the first event on a connection. resumed: true means the gateway kept our seat
        # through a drop (within grace_s), and the rooms are joined again without asking.
        say("session", s)
        self.closing = None
        if not s["resumed"]:
            self.last_seq.clear()   # a fresh session: whatever we had is gone
            self.later(self.play())

    async def play(self):
        ack = await self.sio.call("join", {"room": self.room}, namespace=NS, timeout=5)
        say("joined", ack)
        if not ack["ok"]:
            return self.stop(1)     # e.g. room_full
        self.last_seq.setdefault(self.room, ack["seq"])
        action = {"hello": "from python"}
        say("move ack", await self.sio.call("move", {"room": self.room, "action": action}, namespace=NS, timeout=5))

    async def on_move(self, m):
        last = self.last_seq.get(m["room"], -1)
        if m["seq"] <= last:
            return                  # already applied (possible right after a join)
        if last >= 0 and m["seq"] > last + 1:
            # missed some: ask for them
            ack = await self.sio.call("sync", {"room": m["room"], "after_seq": last}, namespace=NS, timeout=5)
            for e in ack.get("events", []):
                self.apply(e)
        self.apply(m)

    def apply(self, m):
        if m["seq"] <= self.last_seq.get(m["room"], -1):
            return
        self.last_seq[m["room"]] = m["seq"]
        say("move", m)              # a real game updates its state here
        self.moves_seen += 1
        if self.leave_after and self.moves_seen >= self.leave_after:
            self.stop(0)

    async def on_disconnect_reason(self, reason):
        # Sent just before the server closes the connection on purpose: code, reason, reconnect.
        say("disconnect_reason", reason)
        self.closing = reason

    async def on_disconnect(self, reason):
        # First, one turn of the event loop: sio.disconnect() closes the websocket right after
        # queueing Socket.IO's disconnect packet, and this lets the packet go out first. Without
        # it the gateway sees a dropped transport: the room hears player_disconnected and the
        # session waits grace_s for us (docs/protocol.md, "Leaving from python-socketio").
        await self.sio.sleep(0)
        say("disconnected", reason)
        if reason != self.sio.reason.SERVER_DISCONNECT:
            return                  # our own disconnect, or a drop the client recovers from itself
        # The server closed us. Come back only if it said so (4000 shutdown, 4005, 4029...);
        # 4500 token_invalid, 4503 kicked and 4504 session_replaced mean stay away.
        closing = self.closing or {}
        if not closing.get("reconnect"):
            return self.stop(2)
        delay = 5.0 if closing.get("code") == 4029 else 0.0
        self.later(self.connect(delay + random.uniform(0.2, 1.0)))

    async def on_connect_error(self, data):
        # A refused connect: data is {"message": code, "data": {"code", "reason"}}.
        say("connect_error", data)
        message = data.get("message") if isinstance(data, dict) else data
        if message not in ("rate_limited", "unavailable", "connection_limit"):
            self.stop(1)            # token_missing, token_invalid, token_expired: get a new token

    async def leave(self):
        """Leave for good: the room hears player_left, and nothing waits in grace for us."""
        say("leaving", {"room": self.room})
        await self.sio.disconnect()     # with on_disconnect's turn of the loop, see above
        for task in list(self.tasks):
            task.cancel()
        await self.sio.shutdown()


async def main():
    player = Player(os.environ.get("GAME_URL", "http://127.0.0.1:8000"), os.environ["TOKEN"],
                    os.environ.get("ROOM", "lobby"), int(os.environ.get("MOVES", "0")))
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, player.stop, 0)
    await player.connect()
    await player.done.wait()
    await player.leave()
    return player.exit_code


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
