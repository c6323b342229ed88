"""Which worker a request line names (server/transport/sticky.py): no I/O."""

from __future__ import annotations

import pytest

from gamegw.server.transport.eio import ConformantServer
from gamegw.server.transport.sticky import sid_prefix, worker_of


@pytest.mark.parametrize(("head", "worker"), [
    (b"GET /socket.io/?EIO=4&transport=polling&sid=w2.abc HTTP/1.1\r\nHost: x\r\n", 2),
    (b"POST /socket.io/?sid=w1.abc&EIO=4&transport=polling HTTP/1.1\r\n", 1),
    (b"GET /socket.io/?EIO=4&transport=websocket&sid=w12.a-b_c HTTP/1.1\r\n", 12),
    (b"GET /socket.io/?EIO=4&transport=polling&sid=w2%2Eabc HTTP/1.1\r\n", 2),  # percent-encoded '.'
    (b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\n", None),  # a handshake: round-robin
    (b"GET /socket.io/?EIO=4&transport=polling&sid=w13.abc HTTP/1.1\r\n", None),  # no such worker
    (b"GET /socket.io/?EIO=4&transport=polling&sid=w0.abc HTTP/1.1\r\n", None),
    (b"GET /socket.io/?EIO=4&transport=polling&sid=abcdef HTTP/1.1\r\n", None),  # not a worker's sid
    (b"GET /socket.io/?EIO=4&transport=polling&sid= HTTP/1.1\r\n", None),
    (b"GET /healthz HTTP/1.1\r\nCookie: sid=w1.abc\r\n", None),  # only the request line counts
    (b"sid=w1\r\n", None),  # not a request line
])
def test_worker_of(head: bytes, worker: int | None) -> None:
    assert worker_of(head, workers=12) == worker


def test_a_workers_sids_carry_its_number() -> None:
    server = ConformantServer(async_mode="aiohttp")
    server.sid_prefix = sid_prefix(7)
    sids = {server.generate_id() for _ in range(100)}
    assert len(sids) == 100
    assert all(sid.startswith("w7.") and len(sid) == len("w7.") + 20 for sid in sids)
    assert {worker_of(f"GET /socket.io/?EIO=4&sid={sid} HTTP/1.1\r\n".encode(), 7) for sid in sids} == {7}
