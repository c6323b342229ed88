"""What must hold before the gateway says ``ready``: its listeners bound, and Redis answering.

Each check that fails raises one :class:`StartupError` whose message names the address or the
URL (its password masked) and whose hint names the fix, so that an operator's mistake ends in
one line rather than in a traceback or in ten seconds of retries. The listeners are bound
before anything else starts: a port that is taken stops the start before Redis is touched, and
``ready`` can give the port that was really bound (``--port 0``).
"""

from __future__ import annotations

import errno
import socket

from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, AuthenticationWrongNumberOfArgsError, RedisError, ResponseError

from .config import redacted
from .protocol.errors import StartupError
from .state.redis_link import MasterNotFound, RedisLink
from .state.subscriber import SubscriptionRefused

# the replies of a Redis that refuses the credentials (redis-py raises some as ResponseError)
_AUTH_REPLIES = ("WRONGPASS", "NOAUTH", "AUTH ", "invalid password", "invalid username")


def listen(host: str, port: int, *, host_setting: str = "--host", port_setting: str = "--port",
           reuse_port: bool = False, backlog: int = 4096) -> list[socket.socket]:
    """Listening sockets on every address ``host`` resolves to, as asyncio's ``create_server``
    would make them (SO_REUSEADDR, IPv6 sockets IPv6-only), all on one port even for port 0.

    ``host_setting`` and ``port_setting`` are what the operator sets them with, for the hint.
    """
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:  # a name with an empty label fails in the idna codec
        reason = exc.strerror if isinstance(exc, socket.gaierror) else "not a host name"
        raise StartupError(f"cannot listen on {host}: the name does not resolve ({reason})",
                           hint=f"set {host_setting} to an address of this machine: 127.0.0.1 (this machine "
                                "only), 0.0.0.0 (every interface), or a name that resolves to one") from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            if sockets and port == 0:  # the port the first address got, for every address
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise _bind_failure(host, port, exc, host_setting, port_setting) from None
    return sockets


def _bind_failure(host: str, port: int, exc: OSError, host_setting: str, port_setting: str) -> StartupError:
    if exc.errno == errno.EADDRINUSE:
        return StartupError(f"port {port} on {host} is in use",
                            hint=f"stop what listens there (`ss -ltnp 'sport = :{port}'` names it), "
                                 f"or choose another {port_setting}")
    if exc.errno == errno.EADDRNOTAVAIL:
        return StartupError(f"cannot listen on {host}: it is not an address of this machine",
                            hint=f"set {host_setting} to an address of this machine: 127.0.0.1 (this machine "
                                 "only) or 0.0.0.0 (every interface)")
    if exc.errno == errno.EACCES and 0 < port < 1024:
        return StartupError(f"port {port} on {host} needs privileges (ports below 1024 are reserved)",
                            hint=f"choose a {port_setting} of 1024 or above and let a proxy or load balancer "
                                 "forward to it, or grant the process CAP_NET_BIND_SERVICE")
    return StartupError(f"cannot listen on {host} port {port}: {exc.strerror or exc}",
                        hint=f"check {host_setting} and {port_setting}")


async def check_redis(redis: Redis, url: str, link: RedisLink | None = None) -> None:
    """One PING: an unreachable Redis, or one that refuses us, stops the start at once. With
    ``link`` (a Sentinel URL), its sentinels are asked for the master first: that error names
    each sentinel and what it answered (redis-py's would be a page of connection reprs)."""
    try:
        if link is not None and link.target.kind == "sentinel":
            await link.master()
        await redis.ping()
    except (RedisError, OSError) as exc:
        raise redis_failure(url, exc) from None


def redis_failure(url: str, exc: BaseException, *, setting: str = "--redis / GAMEGW_REDIS_URL") -> StartupError:
    """The one line for a Redis that cannot be used, by what went wrong; ``setting`` is where the
    operator gave the URL."""
    where = redacted(url)
    text = exc.reply if isinstance(exc, SubscriptionRefused) else str(exc).strip() or type(exc).__name__
    refused = isinstance(exc, (ResponseError, SubscriptionRefused))
    if isinstance(exc, (AuthenticationError, AuthenticationWrongNumberOfArgsError)) or (
            refused and text.removeprefix("ERR ").startswith(_AUTH_REPLIES)):
        return StartupError(f"Redis at {where} refused the credentials: {text}",
                            hint=f"put the right user and password in {setting}: "
                                 "redis://user:password@host:port/db (or redis://:password@... for the default user)")
    if refused:
        return StartupError(f"Redis at {where} refused: {text}",
                            hint=f"check the database number in {setting}, and the user's ACL permissions")
    if isinstance(exc, MasterNotFound):
        return StartupError(f"no master for Redis at {where}: {text}",
                            hint=f"start the sentinels, or correct their addresses and the service name in {setting}")
    if isinstance(exc, TimeoutError) and not str(exc).strip():
        text = "no answer in time"
    return StartupError(f"cannot reach Redis at {where}: {text}",
                        hint=f"start Redis there, or correct {setting}"
                             + (" (without it, the gateway runs one instance in memory)" if "GAMEGW" in setting
                                else ""))
