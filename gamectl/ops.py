"""Ops commands: look at the cluster's connections and act on users.

Each command fetches from the admin API (or Redis), builds a small output model and renders it
as a rich table or, with ``--json``, as JSON.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.table import Table

from .admin import AdminClient
from .output import fail, print_json, stdout

UrlOpt = Annotated[str | None, typer.Option("--url", envvar="GAMEGW_URL", show_envvar=False,
                                            help="Any instance's admin base URL (default: from the config's "
                                                 "admin_host/admin_port, else host/port).")]
TokenOpt = Annotated[str | None, typer.Option("--token", envvar="GAMEGW_ADMIN_TOKEN", show_envvar=False,
                                              help="Admin JWT (default: signed with the configured key).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML settings file (for the key and URL).",
                                                readable=False)]

connections_app = typer.Typer(help="The live registry of connections, cluster-wide.", no_args_is_help=True)


def _ago(ts: float, now: float) -> str:
    s = max(0.0, now - ts)
    if s < 60:
        return f"{s:.0f}s ago"
    if s < 3600:
        return f"{s / 60:.0f}m ago"
    return f"{s / 3600:.1f}h ago"


def connections_table(conns: list[dict[str, Any]], now: float) -> Table:
    table = Table(title=f"{len(conns)} connection{'s' if len(conns) != 1 else ''}", title_justify="left")
    for col in ("user", "sid", "instance", "rooms", "state", "connected", "last seen", "address"):
        table.add_column(col, no_wrap=col in ("sid", "instance"))
    for c in conns:
        state = "[green]connected[/]" if c["state"] == "connected" else f"[yellow]{c['state']}[/]"
        table.add_row(c["user_id"], c["sid"], c["instance_id"], ", ".join(c["rooms"]) or "-", state,
                      _ago(c["connected_at"], now), _ago(c["last_seen"], now), c["address"])
    return table


def _fetch(client: AdminClient | None, redis_url: str | None, prefix: str, user: str | None, room: str | None,
           instance: str | None) -> list[dict[str, Any]]:
    if redis_url:
        return asyncio.run(_from_redis(redis_url, prefix, user, room, instance))
    assert client is not None
    conns: list[dict[str, Any]] = client.get("/admin/connections", user=user, room=room, instance=instance)[
        "connections"]
    return conns


async def _from_redis(url: str, prefix: str, user: str | None, room: str | None,
                      instance: str | None) -> list[dict[str, Any]]:
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    from gamegw.server.startup import redis_failure
    from gamegw.server.state.keys import Keys
    from gamegw.server.state.registry_redis import RedisRegistry

    redis = Redis.from_url(url, decode_responses=True, socket_timeout=5, socket_connect_timeout=5)
    try:
        registry = RedisRegistry(redis, Keys(prefix), "gamectl")
        conns = await registry.list(user_id=user, room=room, instance_id=instance)
    except (RedisError, OSError) as exc:
        failure = redis_failure(url, exc, setting="--redis")
        fail(1, str(failure), failure.hint)
    finally:
        await redis.aclose()
    return [c.to_dict() for c in sorted(conns, key=lambda c: c.connected_at)]


@connections_app.command("ls")
def connections_ls(
    user: Annotated[str | None, typer.Option(help="Only this user's connections.")] = None,
    room: Annotated[str | None, typer.Option(help="Only connections in this room.")] = None,
    instance: Annotated[str | None, typer.Option(help="Only connections held by this instance.")] = None,
    as_json: JsonOpt = False,
    watch: Annotated[float | None, typer.Option(
        "--watch", help="Refresh every N seconds (Ctrl-C to stop).", min=0.2)] = None,
    redis: Annotated[str | None, typer.Option(
        "--redis", help="Read the registry straight from Redis instead of through an instance.")] = None,
    prefix: Annotated[str | None, typer.Option(help="Redis key prefix (default: from config, gamegw).")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    config: ConfigOpt = None,
) -> None:
    """List connections: user, sid, instance, rooms, state, connected since, last seen, address."""
    from .settings import settings_from

    settings = settings_from(config)
    redis_url = redis
    if redis_url:
        from gamegw.server.config import check_redis_url
        from gamegw.server.protocol.errors import ConfigError

        try:
            check_redis_url("--redis", redis_url)
        except ConfigError as exc:
            fail(1, str(exc), exc.hint)
    client = None if redis_url else AdminClient(settings, url, token)
    key_prefix = prefix or settings.redis_prefix
    if as_json:
        print_json({"connections": _fetch(client, redis_url, key_prefix, user, room, instance)})
        return
    if watch is None:
        stdout.print(connections_table(_fetch(client, redis_url, key_prefix, user, room, instance), time.time()))
        return
    try:
        with Live(console=stdout, auto_refresh=False) as live:
            while True:
                conns = _fetch(client, redis_url, key_prefix, user, room, instance)
                live.update(connections_table(conns, time.time()), refresh=True)
                time.sleep(watch)
    except KeyboardInterrupt:
        pass


def kick(
    user: Annotated[str, typer.Argument(help="The user id (JWT `sub`) to kick.")],
    reason: Annotated[str, typer.Option(help="Text sent to the client with the 4503 close.")] = "",
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Close all of USER's connections, cluster-wide, with 4503 kicked (do not reconnect).

    Exits 1 if the user had no connection, or if an instance holding one did not confirm.
    """
    from .settings import settings_from

    outcome = AdminClient(settings_from(config), url, token).post("/admin/kick", {"user": user, "reason": reason})
    _report(outcome, as_json, "kicked")


def revoke(
    user: Annotated[str, typer.Argument(help="The user id (JWT `sub`) whose tokens to revoke.")],
    jti: Annotated[str | None, typer.Option("--jti", help="Revoke only this token (its `jti` claim).")] = None,
    exp: Annotated[str | None, typer.Option("--exp", help=(
        "With --jti: the token's `exp` (epoch seconds or ISO-8601); the revocation is then kept until "
        "then, even if jwt_max_lifetime_s is raised later."))] = None,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Revoke USER's tokens issued before now (or one token with --jti), cluster-wide.

    Connections using them close with 4500 and the tokens are refused from then on, across
    restarts, until they expire (the gateway refuses tokens that live longer than
    jwt_max_lifetime_s, and keeps revocations that long). Exits 1 if an instance holding one
    of the user's connections did not confirm.
    """
    from gamegw.server.config import parse_instant
    from gamegw.server.protocol.errors import ConfigError

    from .settings import settings_from

    body: dict[str, Any] = {"user": user} | ({"jti": jti} if jti else {})
    if exp is not None:
        if not jti:
            raise typer.BadParameter("only with --jti", param_hint="--exp")
        try:
            body["exp"] = parse_instant("--exp", exp)
        except ConfigError as exc:
            raise typer.BadParameter(str(exc).removeprefix("--exp: "), param_hint="--exp") from None
    outcome = AdminClient(settings_from(config), url, token).post("/admin/revoke", body)
    if as_json:
        print_json(outcome)
    else:
        what = f"token {jti}" if jti else "tokens issued before now"
        stdout.print(f"revoked {user}'s {what}; closed {outcome['count']} connection(s)")
    if not outcome["confirmed"]:
        fail(1, f"instances did not confirm: {', '.join(outcome['unconfirmed'])}",
             "they may be down; the revocation itself is stored and holds")


def simulate_drop(
    user: Annotated[str, typer.Argument(help="The user id (JWT `sub`) whose connections to cut.")],
    block: Annotated[float, typer.Option("--block", min=0, max=3600,
                                         help="Refuse the user's reconnects for S seconds, as a lasting outage.")] = 0,
    wait: Annotated[float | None, typer.Option(min=0, help="How long to watch for the user's return "
                                               "(default: block + 15 s); 0 to not wait.")] = None,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Cut USER's connections as a network fault would, and report the user's return.

    No disconnect packet is sent: the TCP connection just ends. The command then watches the
    registry and reports whether the user came back, on which instance, after how long, and
    whether the session resumed. Exits 1 if the user had no connection.
    """
    from .settings import settings_from

    client = AdminClient(settings_from(config), url, token)
    before = {c["sid"] for c in client.get("/admin/connections", user=user)["connections"]}
    started = time.time()
    outcome = client.post("/admin/drop", {"user": user, "block_s": block})
    if outcome["count"] == 0:
        _report(outcome, as_json, "dropped")
    deadline = started + (block + 15 if wait is None else wait)
    back: dict[str, Any] | None = None
    while time.time() < deadline:
        conns = client.get("/admin/connections", user=user)["connections"]
        fresh = [c for c in conns if c["sid"] not in before]
        if fresh:
            back = fresh[0]
            break
        time.sleep(0.2)
    result = {**outcome, "block_s": block, "came_back": back is not None,
              "instance": back["instance_id"] if back else None,
              "after_s": round(back["connected_at"] - started, 3) if back else None,
              "resumed": bool(back.get("resumed", False)) if back else None}
    if as_json:
        print_json(result)
    else:
        stdout.print(f"dropped {outcome['count']} connection(s) of [bold]{user}[/] on "
                     f"{', '.join(f'{k} ({v})' for k, v in outcome['instances'].items())}")
        if back:
            stdout.print(f"came back after {result['after_s']:.2f}s on {back['instance_id']}; "
                         f"session {'resumed' if result['resumed'] else 'not resumed (fresh session)'}")
        elif wait != 0:
            stdout.print("[yellow]did not come back[/] within the wait")
    if not outcome["confirmed"]:
        fail(1, f"instances did not confirm: {', '.join(outcome['unconfirmed'])}", "check `gamectl connections ls`")


def _report(outcome: dict[str, Any], as_json: bool, verb: str) -> None:
    if as_json:
        print_json(outcome)
    elif outcome["count"]:
        where = ", ".join(f"{k} ({v})" for k, v in outcome["instances"].items())
        stdout.print(f"{verb} {outcome['count']} connection(s) of [bold]{outcome['user']}[/] on {where}")
    if outcome.get("ended"):
        stdout.print(f"ended {outcome['ended']} session(s) of [bold]{outcome['user']}[/] waiting in grace")
    if outcome["count"] == 0 and not outcome.get("ended"):
        fail(1, f"nobody was {verb}: {outcome['user']} has no live connection",
             "check the user id with `gamectl connections ls`")
    if not outcome["confirmed"]:
        fail(1, f"instances did not confirm: {', '.join(outcome['unconfirmed'])}",
             "they may be down; their connections end when their heartbeat expires")
