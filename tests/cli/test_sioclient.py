"""The load-test client (gamectl/players/sioclient.py) leaves as a real client does.

It runs under gevent (inside Locust), so the check runs in a subprocess of its own: a
websocket peer on a free port answers the handshake like the gateway, and is slow to close.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent('''
    from gevent import monkey; monkey.patch_all()
    import base64, hashlib, json, socket, struct, sys, time
    import gevent
    sys.path.insert(0, sys.argv[1])
    from gamegw.gamectl.players.sioclient import GameSocket

    GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    seen = {"frames": [], "answered": None}

    def text(payload):
        data = payload.encode()
        return bytes((0x81, len(data))) + data

    def frames(conn, buf):
        """Yield (opcode, payload) for each client frame (masked, short)."""
        while True:
            while len(buf) < 2 or len(buf) < 6 + (buf[1] & 0x7F):
                chunk = conn.recv(4096)
                if not chunk:
                    return
                buf += chunk
            n = buf[1] & 0x7F
            mask, payload = buf[2:6], buf[6:6 + n]
            opcode = buf[0] & 0x0F
            buf = buf[6 + n:]
            yield opcode, bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

    def peer(listener):
        conn, _ = listener.accept()
        head = b""
        while b"\\r\\n\\r\\n" not in head:
            head += conn.recv(4096)
        key = [l.split(b": ")[1] for l in head.split(b"\\r\\n") if l.lower().startswith(b"sec-websocket-key")][0]
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\\r\\n\\r\\n")
        conn.sendall(text('0{"sid":"x","upgrades":[],"pingInterval":25000,"pingTimeout":20000}'))
        for opcode, payload in frames(conn, b""):
            seen["frames"].append([opcode, payload.decode() if opcode == 1 else payload.hex()])
            if payload.startswith(b"40/game,"):
                conn.sendall(text('40/game,{"sid":"s"}') + text('42/game,["session",{"sid":"s"}]'))
            if opcode == 8:  # the close frame: a gateway busy elsewhere answers late
                gevent.sleep(0.3)
                try:
                    conn.sendall(bytes((0x88, 2)) + struct.pack("!H", 1000))
                    seen["answered"] = True
                except OSError as exc:
                    seen["answered"] = repr(exc)
                break
        conn.close()

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    server = gevent.spawn(peer, listener)
    sock = GameSocket(f"http://127.0.0.1:{listener.getsockname()[1]}")
    sock.connect({"token": "t"})
    started = time.monotonic()
    sock.close()
    took = time.monotonic() - started
    server.join(5)
    print(json.dumps({"took": took, **seen}))
''')


def test_close_sends_disconnect_and_waits_for_the_gateway_to_close() -> None:
    """Found by a 1000-player soak: 3-13 players a run ended as drops instead of goodbyes (their
    sessions waited out grace: keys left behind), because close() reset the TCP connection
    right after the DISCONNECT, and a gateway writing to it at that moment lost the connection
    before it had read the packet. close() now waits for the gateway's own close."""
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert [f for f in report["frames"] if f[0] == 1][-1] == [1, "41/game,"]
    assert report["frames"][-1] == [8, "03e8"]  # close 1000, after the DISCONNECT
    assert report["answered"] is True  # the peer's close reached a socket still open
    assert report["took"] >= 0.25
