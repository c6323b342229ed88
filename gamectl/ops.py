"""Ops commands: look at the cluster's connections, act on users, publish to rooms.

Each command fetches from the admin API (or Redis), builds a small output model and renders it
as a rich table or, with ``--json``, as JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from .admin import AdminClient
from .output import fail, print_json, stdout
from .usage import group

if TYPE_CHECKING:
    from gamegw.server.config import Settings

UrlOpt = Annotated[str | None, typer.Option("--url", envvar="GAMEGW_URL", show_envvar=False,
                                            help="Any instance's admin base URL (default: from the config's "
                                                 "admin_host/admin_port, else host/port).")]
TokenOpt = Annotated[str | None, typer.Option("--token", envvar="GAMEGW_ADMIN_TOKEN", show_envvar=False,
                                              help="Admin JWT (default: signed with the configured key).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML settings file (for the key and URL).",
                                                readable=False)]

INTERRUPTED = 130  # 128 + SIGINT: what shells report for a command stopped with Ctrl-C

connections_app = group(help="The live registry of connections, cluster-wide.", no_args_is_help=True)


def _ago(ts: float, now: float) -> str:
    s = max(0.0, now - ts)
    if s < 60:
        return f"{s:.0f}s ago"
    if s < 3600:
        return f"{s / 60:.0f}m ago"
    return f"{s / 3600:.1f}h ago"


def connections_table(conns: list[dict[str, Any]], now: float, console: Console | None = None) -> Table:
    """The registry as a table that fits the terminal. When the one-line rows do not fit, each
    row takes two lines: the sid under the user, the address under the instance. The user is
    never cut (the sid folds first; ``--json`` has every field whole)."""
    table = _wide_table(conns, now)
    console = console or stdout
    if console.measure(table, options=console.options.update_width(10_000)).maximum > console.width:
        table = _narrow_table(conns, now, console.width)
    return table


def _title(conns: list[dict[str, Any]]) -> str:
    return f"{len(conns)} connection{'s' if len(conns) != 1 else ''}"


def _state(c: dict[str, Any]) -> str:
    return "[green]connected[/]" if c["state"] == "connected" else f"[yellow]{c['state']}[/]"


def _wide_table(conns: list[dict[str, Any]], now: float) -> Table:
    table = Table(title=_title(conns), title_justify="left")
    for col in ("user", "sid", "instance", "rooms", "state", "connected", "last seen", "address"):
        table.add_column(col, no_wrap=col in ("sid", "instance"))
    for c in conns:
        table.add_row(c["user_id"], c["sid"], c["instance_id"], ", ".join(c["rooms"]) or "-", _state(c),
                      _ago(c["connected_at"], now), _ago(c["last_seen"], now), c["address"])
    return table


def _narrow_table(conns: list[dict[str, Any]], now: float, width: int) -> Table:
    # no grid: two columns' worth of width go to the cells; a blank line parts the rows
    table = Table(title=_title(conns), title_justify="left", box=None, pad_edge=False,
                  header_style="bold underline")
    # widths set here, not left to rich (which may cut the last columns): the user and sid
    # first, then instance and address, the rooms get what is left
    user_w = min(40, max((len(c[k]) for c in conns for k in ("user_id", "sid")), default=10))
    where_w = min(15, max((len(c[k]) for c in conns for k in ("instance_id", "address")), default=8))
    rooms_w = max(5, width - user_w - where_w - 3 * len("connected") - 2 * 5)
    table.add_column("user / sid", overflow="fold", width=user_w)
    table.add_column("instance / address", overflow="fold", width=where_w)
    table.add_column("rooms", overflow="fold", width=rooms_w)
    table.add_column("state", no_wrap=True)
    table.add_column("connected", no_wrap=True)
    table.add_column("last seen", no_wrap=True)
    for i, c in enumerate(conns):
        if i:
            table.add_row()
        table.add_row(f"{escape(c['user_id'])}\n[dim]{c['sid']}[/]",
                      f"{escape(c['instance_id'])}\n[dim]{escape(c['address'])}[/]",
                      escape(", ".join(c["rooms"]) or "-"), _state(c),
                      _ago(c["connected_at"], now), _ago(c["last_seen"], now))
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
    from redis.exceptions import RedisError

    from gamegw.server.startup import redis_failure
    from gamegw.server.state.clients import redis_client
    from gamegw.server.state.keys import Keys
    from gamegw.server.state.redis_link import RedisLink
    from gamegw.server.state.redis_url import parse_redis_url
    from gamegw.server.state.registry_redis import RedisRegistry

    target = parse_redis_url(url)
    redis = redis_client(target, max_connections=4, timeout_s=5)  # one Redis, its Sentinel, or a Cluster
    try:
        if target.kind == "sentinel":  # no master: a message naming each sentinel's answer
            await RedisLink(target, timeout_s=5).master()
        registry = RedisRegistry(redis, Keys(prefix, cluster=target.kind == "cluster"), "gamectl")
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
        "--watch", help="Refresh every N seconds; Ctrl-C stops it, with exit code 130 (128 + SIGINT, "
                        "as shells report an interrupt).", min=0.2)] = None,
    redis: Annotated[str | None, typer.Option(
        "--redis", help="Read the registry straight from Redis instead of through an instance.")] = None,
    prefix: Annotated[str | None, typer.Option(help="Redis key prefix (default: from config, gamegw).")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    config: ConfigOpt = None,
) -> None:
    """List connections: user, sid, instance, rooms, state, connected since, last seen, address."""
    from .settings import settings_from

    if redis:
        from gamegw.server.config import check_redis_url
        from gamegw.server.protocol.errors import ConfigError

        try:
            check_redis_url("--redis", redis)
        except ConfigError as exc:
            fail(1, str(exc), exc.hint)
    try:
        _list_connections(settings_from(config), redis, prefix, user, room, instance, as_json, watch, url, token)
    except KeyboardInterrupt:  # how a --watch ends, at any moment: the exit code shells give an interrupt
        raise typer.Exit(INTERRUPTED) from None


def _list_connections(settings: Settings, redis_url: str | None, prefix: str | None, user: str | None,
                      room: str | None, instance: str | None, as_json: bool, watch: float | None,
                      url: str | None, token: str | None) -> None:
    client = None if redis_url else AdminClient(settings, url, token)
    key_prefix = prefix or settings.redis_prefix
    if as_json:
        print_json({"connections": _fetch(client, redis_url, key_prefix, user, room, instance)})
        return
    if watch is None:
        stdout.print(connections_table(_fetch(client, redis_url, key_prefix, user, room, instance), time.time()))
        return
    with Live(console=stdout, auto_refresh=False) as live:
        while True:
            conns = _fetch(client, redis_url, key_prefix, user, room, instance)
            live.update(connections_table(conns, time.time()), refresh=True)
            time.sleep(watch)


def instances_table(rows: list[dict[str, Any]], now: float) -> Table:
    alive = sum(1 for r in rows if r.get("alive"))
    table = Table(title=f"{len(rows)} instance{'s' if len(rows) != 1 else ''}, {alive} alive", title_justify="left")
    table.add_column("instance", no_wrap=True)
    table.add_column("state", no_wrap=True)
    for col in ("connections", "started", "last heartbeat"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        # an instance whose heartbeat expired is known by its name only (until the survivors reap it)
        table.add_row(escape(str(r["instance"])), "[green]alive[/]" if r.get("alive") else "[red]gone[/]",
                      str(r["connections"]) if "connections" in r else "-",
                      _ago(r["started"], now) if "started" in r else "-",
                      _ago(r["beat"], now) if "beat" in r else "-")
    return table


def instances(
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
    config: ConfigOpt = None,
) -> None:
    """List the cluster's instances: alive or gone, connections held, started, last heartbeat.

    An instance whose heartbeat expired shows as gone until a survivor has turned its
    connections into drops.
    """
    from .settings import settings_from

    rows: list[dict[str, Any]] = AdminClient(settings_from(config), url, token).get("/admin/instances")["instances"]
    if as_json:
        print_json({"instances": rows})
    else:
        stdout.print(instances_table(rows, time.time()))


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
        stdout.print(f"dropped {outcome['count']} connection(s) of [bold]{user}[/]: {_per_instance(outcome)}")
        if back:
            stdout.print(f"came back after {result['after_s']:.2f}s on {back['instance_id']}; "
                         f"session {'resumed' if result['resumed'] else 'not resumed (fresh session)'}")
        elif wait != 0:
            stdout.print("[yellow]did not come back[/] within the wait")
    if not outcome["confirmed"]:
        fail(1, f"instances did not confirm: {', '.join(outcome['unconfirmed'])}", "check `gamectl connections ls`")


def _per_instance(outcome: dict[str, Any]) -> str:
    """``2 on gw-a, 1 on gw-b``: how many of the connections each instance held."""
    return ", ".join(f"{count} on {iid}" for iid, count in outcome["instances"].items())


def _report(outcome: dict[str, Any], as_json: bool, verb: str) -> None:
    if as_json:
        print_json(outcome)
    elif outcome["count"]:
        stdout.print(f"{verb} {outcome['count']} connection(s) of [bold]{outcome['user']}[/]: {_per_instance(outcome)}")
    if outcome.get("ended"):
        stdout.print(f"ended {outcome['ended']} session(s) of [bold]{outcome['user']}[/] waiting in grace")
    if outcome["count"] == 0 and not outcome.get("ended"):
        fail(1, f"nobody was {verb}: {outcome['user']} has no live connection",
             "check the user id with `gamectl connections ls`")
    if not outcome["confirmed"]:
        fail(1, f"instances did not confirm: {', '.join(outcome['unconfirmed'])}",
             "they may be down; their connections end when their heartbeat expires")


def publish(
    room: Annotated[str, typer.Argument(help="The room to send the event to.")],
    action: Annotated[str, typer.Argument(help="The action: a JSON object, e.g. '{\"round\": \"over\"}'; "
                                               "- reads it from stdin.")],
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Send a server event to ROOM: its members get a `move` with the room's next seq, whose
    `user` is the admin token's `sub` (gamectl's own token: `gamectl`).

    It is logged, replayed on resume and returned by `sync` like any move, on every instance.
    The game's rules do not see it and the room's state does not change. Exits 1 if the room
    has no members.
    """
    from .settings import settings_from

    text = sys.stdin.read() if action == "-" else action
    try:
        parsed = json.loads(text)
    except ValueError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="ACTION") from None
    if not isinstance(parsed, dict):
        raise typer.BadParameter("must be a JSON object", param_hint="ACTION")
    outcome = AdminClient(settings_from(config), url, token).post(
        "/admin/publish", {"room": room, "action": parsed},
        hints={"room_not_found": "a room exists while it has members: check the name with "
                                 "`gamectl connections ls --room ROOM`"})
    if as_json:
        print_json(outcome)
    else:
        stdout.print(f"published to [bold]{escape(outcome['room'])}[/] as seq {outcome['seq']}")
