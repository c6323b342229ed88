"""What a ``redis_url`` names: one Redis, a master found through Sentinel, or a Redis Cluster.

The forms follow python-socketio's, so one URL configures both:

* ``redis://[user:password@]host:port/db``, ``rediss://`` (TLS), ``unix:///path/to/redis.sock``;
  ``valkey://`` and ``valkeys://`` are the same as ``redis://`` and ``rediss://``;
* ``redis+sentinel://[user:password@]host1:port1,host2:port2/DB/SERVICE`` (and
  ``valkey+sentinel://``): the sentinels to ask for the master of ``SERVICE``. The user and
  password are the master's (the sentinels are asked without them), as python-socketio does;
* ``redis+cluster://[user:password@]host1:port1[,host2:port2...]/0`` (and ``valkey+cluster://``):
  the seed nodes of a Redis Cluster (database 0 only, see :mod:`.rcluster`).

:func:`parse_redis_url` raises :class:`ValueError` with a message for an operator; the
configuration turns it into a ``ConfigError`` that names the setting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote, urlparse

SENTINEL_PORT = 26379
REDIS_PORT = 6379
DIRECT_SCHEMES = {"redis": "redis", "rediss": "rediss", "unix": "unix", "valkey": "redis", "valkeys": "rediss"}
SENTINEL_SCHEMES = ("redis+sentinel", "valkey+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "valkey+cluster")
FORMS = ("redis://[user:password@]host:port/db, rediss://... (TLS), unix:///path/to/redis.sock, valkey://..., "
         "redis+sentinel://[user:password@]host1:port1,host2:port2/db/service (valkey+sentinel://...), "
         "or redis+cluster://[user:password@]host1:port1[,host2:port2...]/0 (valkey+cluster://...)")

Kind = Literal["direct", "sentinel", "cluster"]


@dataclass(frozen=True)
class RedisTarget:
    """Everything a connection needs. ``url`` is what redis-py's ``from_url`` accepts (direct
    kind only: ``valkey`` spelled ``redis``); ``nodes`` are the sentinels (or cluster seeds)."""

    kind: Kind
    url: str = ""
    host: str = ""
    port: int = REDIS_PORT
    path: str = ""  # a unix socket
    tls: bool = False
    db: int = 0
    username: str | None = None
    password: str | None = None
    nodes: tuple[tuple[str, int], ...] = field(default=())
    service: str = ""


def parse_redis_url(url: str) -> RedisTarget:
    """The target ``url`` names, or :class:`ValueError` saying what is wrong with it."""
    scheme, sep, _rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ValueError("is not a Redis URL")
    if scheme in SENTINEL_SCHEMES or scheme in CLUSTER_SCHEMES:
        return _parse_nodes(url, scheme)
    if scheme not in DIRECT_SCHEMES:
        raise ValueError(f"has the scheme {scheme!r}, which is not a Redis one")
    normal = DIRECT_SCHEMES[scheme] + url[len(scheme):]
    try:
        parsed = urlparse(normal)
        port = parsed.port
    except ValueError:
        raise ValueError("has a bad port") from None
    if scheme == "unix":
        if not parsed.path:
            raise ValueError("names no socket path (unix:///path/to/redis.sock)")
        return RedisTarget("direct", normal, path=parsed.path, username=_part(parsed.username),
                           password=_part(parsed.password))
    if not parsed.hostname:
        raise ValueError("names no host")
    db = parsed.path.strip("/")
    if db and not db.isdigit():
        raise ValueError(f"names the database {db!r}, which is not a number")
    return RedisTarget("direct", normal, host=parsed.hostname, port=port or REDIS_PORT, tls=parsed.scheme == "rediss",
                       db=int(db or 0), username=_part(parsed.username), password=_part(parsed.password))


def _parse_nodes(url: str, scheme: str) -> RedisTarget:
    """``scheme://[user:password@]h1:p1,h2:p2/DB/SERVICE`` (urlparse cannot read a list of hosts)."""
    kind: Kind = "sentinel" if scheme in SENTINEL_SCHEMES else "cluster"
    rest = url.split("://", 1)[1]
    if "?" in rest or "#" in rest:
        raise ValueError("takes no query string or fragment")
    netloc, _, path = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    default_port = SENTINEL_PORT if kind == "sentinel" else REDIS_PORT
    nodes = tuple(_node(h, default_port) for h in hosts.split(","))
    db_text, _, service = path.partition("/")
    if db_text and not db_text.isdigit():
        raise ValueError(f"names the database {db_text!r}, which is not a number")
    service = service.strip("/")
    if kind == "sentinel" and not service:
        raise ValueError("names no service: the master's name in Sentinel goes after the database "
                         "(redis+sentinel://host:26379/0/mymaster)")
    if "/" in service:
        raise ValueError(f"names the service {service!r}, which contains '/'")
    if kind == "cluster" and (db_text not in ("", "0") or service):
        raise ValueError(f"names the database {path.strip('/')!r}: a cluster has database 0 only")
    return RedisTarget(kind, db=int(db_text or 0), username=unquote(username) or None,
                       password=unquote(password) or None, nodes=nodes, service=unquote(service))


def _node(text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):  # [ipv6]:port
        host, _, port = text[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        raise ValueError(f"has an empty host in {text!r}" if text else "has an empty host in its list")
    if port and (not port.isdigit() or not 0 < int(port) < 65536):
        raise ValueError(f"has a bad port in {text!r}")
    return host, int(port) if port else default_port


def _part(value: str | None) -> str | None:
    return unquote(value) if value else None
