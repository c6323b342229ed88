"""Client websocket frames (RFC 6455), as cheap as Python makes them.

Every client frame is masked with a fresh 4-byte key, as the RFC requires. The keys come from
the system's random source, read 4 KB at a time rather than one ``os.urandom(4)`` call (a
``getrandom`` system call) per frame; the mask is one XOR of two big integers.
"""

from __future__ import annotations

import os
import struct

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_POOL_BYTES = 4096


class _Keys:
    __slots__ = ("pool", "pos")

    def __init__(self) -> None:
        self.pool = b""
        self.pos = _POOL_BYTES

    def next(self) -> bytes:
        pos = self.pos
        if pos >= _POOL_BYTES:
            self.pool, pos = os.urandom(_POOL_BYTES), 0
        self.pos = pos + 4
        return self.pool[pos:pos + 4]


_keys = _Keys()


def mask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if n == 0:
        return payload
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")


def frame(opcode: int, payload: bytes) -> bytes:
    """A client frame: FIN set, masked as RFC 6455 requires of clients."""
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    key = _keys.next()
    return header + key + mask(payload, key)
