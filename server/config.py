"""Settings: a TOML file, overridden by ``GAMEGW_*`` variables, overridden by flags.

Every key of the TOML file is a field name of :class:`Settings` (``port = 8000``); the variable
for a field is ``GAMEGW_`` + its name in capitals (``GAMEGW_PORT``). :func:`load_settings` is
the only place where values are parsed and checked: a bad value stops startup with a
:class:`ConfigError` whose message names the setting.

With no configuration at all (no file, no ``GAMEGW_*`` variable) the *development profile*
applies: 127.0.0.1:8000, in-memory state, CORS for localhost origins and an HMAC key generated
on first use and kept in the user's state directory, so that ``gamectl token`` and ``gamectl
serve`` agree without any set-up.
"""

from __future__ import annotations

import dataclasses
import math
import os
import secrets
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .. import games
from .protocol.errors import ConfigError
from .state.redis_url import FORMS, parse_redis_url

ENV_PREFIX = "GAMEGW_"
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "EdDSA"})
MIN_HMAC_KEY_BYTES = 32
HOOK_EVENTS = ("connect", "join", "leave", "move")


@dataclass(frozen=True)
class Settings:
    profile: str = "prod"  # "dev" or "prod"; dev relaxes CORS and generates a key
    host: str = "127.0.0.1"
    port: int = 8000
    # a separate listener for /admin/* and /metrics (and /healthz, /readyz); unset: they share the
    # game listener. admin_port = 0 picks a free port (see Parts.admin_url)
    admin_host: str = "127.0.0.1"
    admin_port: int | None = None
    instance_id: str = ""

    jwt_secret: str = field(default="", repr=False)
    jwt_public_key_file: str = ""
    jwt_private_key_file: str = ""  # only for `gamectl token` with RS/ES keys
    jwt_algorithms: tuple[str, ...] = ()
    # key rotation: tokens signed with the previous key are accepted until jwt_previous_key_until
    jwt_previous_secret: str = field(default="", repr=False)
    jwt_previous_public_key_file: str = ""
    jwt_previous_algorithms: tuple[str, ...] = ()  # default: the main ones when the key is of their kind
    jwt_previous_key_until: str = ""  # ISO-8601 time (UTC unless it says otherwise) or epoch seconds
    jwt_issuer: str = ""
    jwt_audience: str = ""
    jwt_leeway_s: float = 0.0
    jwt_max_token_bytes: int = 8192
    # the longest token lifetime (exp - iat): longer tokens are refused, and revocations are kept this long
    jwt_max_lifetime_s: float = 86400.0
    token_expiring_s: float = 60.0  # `token_expiring` is sent this long before a live token's exp

    redis_url: str = ""
    redis_prefix: str = "gamegw"
    redis_timeout_s: float = 2.0  # every Redis call gives up after this long
    redis_wait_replicas: int = 0  # after each move, WAIT for this many replicas to have it before the ack
    redis_max_connections: int = 128  # per instance; commands queue for a free one (a mass reconnect needs many)
    heartbeat_interval_s: float = 1.0
    bus_probe_interval_s: float = 2.0  # a deaf pub/sub listener is restarted within this + redis_timeout_s
    heartbeat_ttl_s: float = 5.0  # a silent instance is dead after this long; its entries go then
    drain_s: float = 10.0  # on SIGTERM: stop accepting, close every client with 4000, exit within this

    grace_s: float = 30.0
    grace_sweep_interval_s: float = 0.25  # how often an instance ends sessions whose grace ran out
    seat_sweep_interval_s: float = 30.0  # how often room seats of sessions that no longer exist are removed
    ping_interval_s: float = 10.0
    ping_timeout_s: float = 5.0
    cors_allowed_origins: tuple[str, ...] = ()
    max_connections_per_user: int = 1
    on_connection_limit: str = "replace"  # or "refuse"

    game: str = "relay"  # an installed game plugin (entry-point group gamegw.games)
    # a ticking game's lease on a room (Redis): renewed by the instance that ticks it; another
    # instance with members in the room takes over within about this long after that one dies
    tick_lease_s: float = 2.0
    max_action_bytes: int = 4096
    max_room_members: int = 100
    max_rooms_per_connection: int = 50  # more joins get a `room_limit` ack
    move_log_size: int = 1000
    arena_width: int = 16
    arena_height: int = 16
    max_message_bytes: int = 65536
    websocket_compression: bool = False
    websocket_only: bool = False  # refuse long-polling (set for `serve --workers N`)
    reuse_port: bool = False  # bind with SO_REUSEPORT
    # set by `serve --workers N` for each worker: its number (1..N), which starts each sid it makes,
    # and the Unix socket on which the parent hands it connections (server/transport/sticky.py)
    worker_index: int = 0
    worker_handoff_fd: int = -1
    max_events_per_s: float = 30.0  # per user, across reconnects; excess events get `rate_limited` acks (0: off)
    max_events_burst: int = 60
    # sustained abuse: more rate_limited acks than this within abuse_window_s closes the connection
    # with 4029 (a token bucket: that many at once, refilled at that many per window; 0: never)
    abuse_max_rate_limited: int = 100
    abuse_window_s: float = 10.0
    max_connects_per_address_per_s: float = 100.0  # handshakes per client address (0: no limit)
    max_connects_per_address_burst: int = 1000
    handshake_timeout_s: float = 10.0  # a transport must join /game by then or it is closed (0: never)
    max_outbound_bytes: int = 1048576  # unsent bytes to one connection before it is cut (slow consumer)

    # backend hooks (docs/protocol.md, "Backend hooks"): POST each listed event to hooks_url, obey its answer
    hooks_url: str = ""
    hooks_events: tuple[str, ...] = ()  # any of connect, join, leave, move
    hooks_timeout_s: float = 1.0  # per call; a slower hook is a failed one
    hooks_on_error: str = "deny"  # a failed call (down, slow, bad answer, breaker open): "allow" or "deny"
    hooks_breaker_failures: int = 5  # this many failures in a row open the breaker (no calls)...
    hooks_breaker_cooldown_s: float = 5.0  # ...for this long; then one call probes the hook again
    hooks_max_connections: int = 100  # the hook client's connection pool

    log_level: str = "info"
    log_format: str = "text"  # "text" (key=value) or "json"
    state_dir: str = ""

    @property
    def dev(self) -> bool:
        return self.profile == "dev"

    @property
    def admin_listener(self) -> bool:
        """Whether /admin/* and /metrics have a listener of their own (admin_host:admin_port)."""
        return self.admin_port is not None

    @property
    def algorithms(self) -> tuple[str, ...]:
        if self.jwt_algorithms:
            return self.jwt_algorithms
        return ("RS256",) if self.jwt_public_key_file and not self.jwt_secret else ("HS256",)

    @property
    def has_previous_key(self) -> bool:
        return bool(self.jwt_previous_secret or self.jwt_previous_public_key_file)

    @property
    def previous_algorithms(self) -> tuple[str, ...]:
        """The previous key's algorithms: as configured, else the main ones if they fit its kind."""
        if self.jwt_previous_algorithms:
            return self.jwt_previous_algorithms
        main_is_hmac = self.algorithms[0] in HMAC_ALGORITHMS
        if bool(self.jwt_previous_secret) == main_is_hmac:
            return self.algorithms
        return ("HS256",) if self.jwt_previous_secret else ("RS256",)

    @property
    def previous_key_until(self) -> float | None:
        """When the previous key stops being accepted (epoch seconds), or None without one."""
        if not self.jwt_previous_key_until:
            return None
        return parse_instant("jwt_previous_key_until", self.jwt_previous_key_until)


def parse_instant(name: str, text: str) -> float:
    """Epoch seconds from ``1767225600`` or an ISO-8601 time (``2026-01-01T00:00:00Z``; UTC if no offset)."""
    raw = text.strip()
    try:
        value = float(raw)
    except ValueError:
        try:
            moment = datetime.fromisoformat(raw)
        except ValueError:
            raise ConfigError(f"{name}: {text!r} is neither an ISO-8601 time nor epoch seconds") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name}: {text!r} is not a time")
    return value


FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(Settings)}


def default_state_dir(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "gamegw"


KIND_HINTS = {"int": "a whole number", "float": "a number", "bool": "true or false",
              "list": "a comma-separated list (a TOML array in a file)", "str": "a string"}


def _parse(name: str, raw: Any, source: str = "") -> Any:
    """One value, from TOML (already typed) or from the environment / a flag (a string)."""
    kind = FIELDS[name].type
    try:
        if kind == "int | None":  # unset by an empty variable or flag; a TOML file just leaves it out
            if isinstance(raw, bool):
                raise ValueError
            return None if str(raw).strip() == "" else int(raw)
        if kind == "int":
            if isinstance(raw, bool):
                raise ValueError
            return int(raw)
        if kind == "float":
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind == "tuple[str, ...]":
            items = raw if isinstance(raw, list) else str(raw).split(",")
            return tuple(str(i).strip() for i in items if str(i).strip())
        if isinstance(raw, (dict, list)):
            raise ValueError
        return str(raw)
    except (TypeError, ValueError):
        kind_name = {"tuple[str, ...]": "list", "int | None": "int"}.get(str(kind), str(kind))
        raise ConfigError(f"{name}: {raw!r} is not a valid {kind_name}{f' ({source})' if source else ''}",
                          hint=f"{name} takes {KIND_HINTS.get(kind_name, kind_name)}") from None


def load_settings(
    environ: Mapping[str, str] | None = None,
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge file, environment and flags (later wins) into checked :class:`Settings`.

    ``overrides`` holds flag values; ``None`` values are ignored so that unset flags don't mask
    the file or the environment.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path} is not text (TOML is UTF-8)",
                              hint="pass --config a TOML file such as configs/dev.toml") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {path} is a directory", hint="pass --config a TOML file") from None
        except PermissionError:
            raise ConfigError(f"config file {path} cannot be read: permission denied",
                              hint=f"make it readable by this user (chmod o+r {path}), or run as its owner") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}",
                              hint='settings are lines of key = value, strings quoted: port = 8000, host = "0.0.0.0"'
                              ) from None
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror or exc}") from None
        for key, raw in data.items():
            if key not in FIELDS:
                raise ConfigError(f"config file {path}: unknown setting {key!r}")
            values[key] = _parse(key, raw, f"in {path}")
    env_keys = [k for k in environ if k.startswith(ENV_PREFIX)]
    for key in env_keys:
        name = key[len(ENV_PREFIX) :].lower()
        if name in FIELDS:
            values[name] = _parse(name, environ[key], f"from {key}")
    for name, raw in (overrides or {}).items():
        if raw is not None:
            values[name] = _parse(name, raw, "from the command line")
    if "profile" not in values:
        values["profile"] = "dev" if path is None and not env_keys else "prod"
    state_dir = values.get("state_dir") or str(default_state_dir(environ))
    values["state_dir"] = state_dir
    if values["profile"] == "dev":
        if not values.get("jwt_secret") and not values.get("jwt_public_key_file"):
            values["jwt_secret"] = dev_secret(Path(state_dir))
        values.setdefault("cors_allowed_origins", ("http://localhost:*", "http://127.0.0.1:*"))
    if not values.get("instance_id"):
        values["instance_id"] = f"{socket.gethostname()}-{os.getpid()}"
    settings = Settings(**values)
    validate(settings)
    return settings


def dev_secret(state_dir: Path) -> str:
    """The development HMAC key: made on first use, kept (mode 0600) for serve and token."""
    key_file = state_dir / "dev-jwt-secret"
    try:
        existing = key_file.read_text().strip()
    except FileNotFoundError:
        existing = ""
    if len(existing) >= MIN_HMAC_KEY_BYTES:
        return existing
    state_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secret + "\n")
    return secret


def _check_key(algorithms: tuple[str, ...], secret: str, public_key_file: str, *, prefix: str) -> None:
    """One verification key: known algorithms of one kind, and a key that fits them."""
    unknown = [a for a in algorithms if a not in HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS]
    if unknown or not algorithms:
        raise ConfigError(
            f"{prefix}algorithms: unknown algorithm {', '.join(unknown) or '(none)'}; "
            f"use {', '.join(sorted(HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS))}"
        )
    hmac = [a for a in algorithms if a in HMAC_ALGORITHMS]
    if hmac and len(hmac) != len(algorithms):
        raise ConfigError(f"{prefix}algorithms: HMAC (HS*) and public-key algorithms must not be mixed")
    if hmac:
        if not secret:
            raise ConfigError(f"{prefix}secret: no key configured for {', '.join(algorithms)}; "
                              f"set GAMEGW_{prefix.upper()}SECRET (32 bytes or more)",
                              hint=f"set GAMEGW_{prefix.upper()}SECRET; a config file or any GAMEGW_* variable "
                                   "ends the development profile and its generated key (GAMEGW_PROFILE=dev keeps it)")
        if len(secret.encode()) < MIN_HMAC_KEY_BYTES:
            raise ConfigError(
                f"{prefix}secret: the HMAC key is {len(secret.encode())} bytes; "
                f"at least {MIN_HMAC_KEY_BYTES} are required"
            )
    else:
        if not public_key_file:
            raise ConfigError(f"{prefix}public_key_file: required for {', '.join(algorithms)}")
        if not Path(public_key_file).is_file():
            raise ConfigError(f"{prefix}public_key_file: {public_key_file} does not exist")


REDIS_URL_FORMS = FORMS


def check_redis_url(name: str, url: str) -> None:
    """A URL the gateway can open, or a :class:`ConfigError` naming ``name`` and the accepted forms."""
    try:
        parse_redis_url(url)
    except ValueError as exc:
        raise ConfigError(f"{name}: {redacted(url)!r} {exc}", hint=f"use {REDIS_URL_FORMS}") from None


def redacted(url: str) -> str:
    """``url`` with its password masked, for messages and logs."""
    try:
        parsed = urlparse(url)
        password = parsed.password
    except ValueError:
        return url.split("@", 1)[-1] if "@" in url else url
    if not password:
        return url
    user = parsed.username or ""
    host = parsed.netloc.rsplit("@", 1)[1]
    return parsed._replace(netloc=f"{user}:***@{host}").geturl()


def validate(s: Settings) -> None:
    """Fail fast, one message per problem, naming the setting and the fix."""
    if s.profile not in ("dev", "prod"):
        raise ConfigError(f"profile: {s.profile!r} must be 'dev' or 'prod'")
    if not 0 < s.port < 65536 and s.port != 0:
        raise ConfigError(f"port: {s.port} is out of range (1-65535, or 0 for any free port)")
    if s.admin_port is not None:
        if not 0 <= s.admin_port < 65536:
            raise ConfigError(f"admin_port: {s.admin_port} is out of range (1-65535, or 0 for any free port)")
        if s.admin_port == s.port != 0:
            raise ConfigError(f"admin_port: {s.admin_port} is the game port; choose another one, or leave "
                              "admin_port unset to serve /admin and /metrics on the game port")
        if not s.admin_host:
            raise ConfigError("admin_host: empty; set the address of the admin listener (e.g. 127.0.0.1)")
    _check_key(s.algorithms, s.jwt_secret, s.jwt_public_key_file, prefix="jwt_")
    if s.has_previous_key or s.jwt_previous_key_until or s.jwt_previous_algorithms:
        if not s.has_previous_key:
            raise ConfigError("jwt_previous_key_until: set, but there is no previous key "
                              "(jwt_previous_secret or jwt_previous_public_key_file)")
        if s.jwt_previous_secret and s.jwt_previous_public_key_file:
            raise ConfigError("jwt_previous_secret: set one previous key, not a secret and a public key file")
        if not s.jwt_previous_key_until:
            raise ConfigError("jwt_previous_key_until: required with a previous key (an ISO-8601 time or epoch "
                              "seconds); a previous key accepted forever is not a rotation")
        s.previous_key_until  # noqa: B018  (raises on a bad time)
        _check_key(s.previous_algorithms, s.jwt_previous_secret, s.jwt_previous_public_key_file,
                   prefix="jwt_previous_")
    if s.jwt_leeway_s < 0:
        raise ConfigError("jwt_leeway_s: must not be negative")
    if s.jwt_max_lifetime_s <= 0:
        raise ConfigError("jwt_max_lifetime_s: must be positive")
    if s.redis_url:
        check_redis_url("redis_url", s.redis_url)
        if s.redis_wait_replicas > 0 and parse_redis_url(s.redis_url).kind == "cluster":
            # a cluster's moves go through redis-py's cluster client, not the pipe that sends WAIT
            raise ConfigError("redis_wait_replicas: not with a Redis Cluster (redis+cluster://) in this build",
                              hint="set it to 0, or use one Redis or Sentinel")
    if not 0 <= s.worker_index <= 999:
        raise ConfigError(f"worker_index: {s.worker_index} is out of range (0-999); `serve --workers N` sets it")
    if s.heartbeat_ttl_s <= s.heartbeat_interval_s:
        raise ConfigError("heartbeat_ttl_s: must be longer than heartbeat_interval_s")
    for name in ("grace_s", "ping_interval_s", "ping_timeout_s", "redis_timeout_s", "heartbeat_interval_s",
                 "grace_sweep_interval_s", "seat_sweep_interval_s", "bus_probe_interval_s", "drain_s"):
        if getattr(s, name) < 0 or (name != "grace_s" and getattr(s, name) == 0):
            raise ConfigError(f"{name}: {getattr(s, name)} must be positive")
    for name in ("ping_interval_s", "ping_timeout_s"):
        # the Engine.IO handshake advertises them in whole milliseconds; a client times its pings
        # by those figures, so a value that would be rounded is refused rather than misannounced
        if abs(getattr(s, name) * 1000 - round(getattr(s, name) * 1000)) > 1e-6:
            raise ConfigError(f"{name}: {getattr(s, name)} is not a whole number of milliseconds")
    if "*" in s.cors_allowed_origins and not s.dev:
        raise ConfigError("cors_allowed_origins: '*' is only allowed in the development profile")
    if s.max_connections_per_user < 1:
        raise ConfigError("max_connections_per_user: must be at least 1")
    if s.on_connection_limit not in ("replace", "refuse"):
        raise ConfigError(f"on_connection_limit: {s.on_connection_limit!r} must be 'replace' or 'refuse'")
    installed = games.installed()
    if s.game not in installed:
        raise ConfigError(f"game: {s.game!r} is not an installed game (installed: {', '.join(sorted(installed))})",
                          hint="install the game's package into the gateway's environment (docs/games.md)")
    if s.tick_lease_s <= 0:
        raise ConfigError("tick_lease_s: must be positive")
    for name in ("max_action_bytes", "max_room_members", "max_rooms_per_connection", "move_log_size",
                 "arena_width", "arena_height", "max_message_bytes", "jwt_max_token_bytes", "redis_max_connections",
                 "max_outbound_bytes"):
        if getattr(s, name) < 1:
            raise ConfigError(f"{name}: must be at least 1")
    for name in ("abuse_max_rate_limited", "abuse_window_s", "max_events_per_s", "handshake_timeout_s",
                 "redis_wait_replicas"):
        if getattr(s, name) < 0:
            raise ConfigError(f"{name}: must not be negative (0 turns it off)")
    _check_hooks(s)
    if s.log_format not in ("text", "json"):
        raise ConfigError(f"log_format: {s.log_format!r} must be 'text' or 'json'")
    if s.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"log_level: {s.log_level!r} must be debug, info, warning or error")


def _check_hooks(s: Settings) -> None:
    if s.hooks_on_error not in ("allow", "deny"):
        raise ConfigError(f"hooks_on_error: {s.hooks_on_error!r} must be 'allow' or 'deny'")
    for name in ("hooks_timeout_s", "hooks_breaker_cooldown_s"):
        if not getattr(s, name) > 0 or not math.isfinite(getattr(s, name)):
            raise ConfigError(f"{name}: {getattr(s, name)} must be positive")
    for name in ("hooks_breaker_failures", "hooks_max_connections"):
        if getattr(s, name) < 1:
            raise ConfigError(f"{name}: must be at least 1")
    if not s.hooks_url:
        if s.hooks_events:
            raise ConfigError("hooks_events: set, but hooks_url is not; set hooks_url (http://host:port/path) "
                              "or leave hooks_events empty")
        return
    try:
        parsed = urlparse(s.hooks_url)
        parsed.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        raise ConfigError(f"hooks_url: {redacted(s.hooks_url)!r} has a bad port") from None
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"hooks_url: {redacted(s.hooks_url)!r} is not an http:// or https:// URL",
                          hint="e.g. hooks_url = \"http://127.0.0.1:9000/gamegw\"")
    if not s.hooks_events:
        raise ConfigError(f"hooks_events: empty; list the events to send to the hook ({', '.join(HOOK_EVENTS)})")
    unknown = [e for e in s.hooks_events if e not in HOOK_EVENTS]
    if unknown:
        raise ConfigError(f"hooks_events: unknown event {', '.join(map(repr, unknown))}; "
                          f"use any of {', '.join(HOOK_EVENTS)}")
