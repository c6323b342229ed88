"""The ``gamectl`` command: serve the gateway and operate it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from gamegw import __version__
from gamegw.server.protocol.errors import ConfigError, StartupError

from .output import fail, parse_duration, print_json, stderr
from .settings import settings_from
from .usage import group

app = group(
    help="Run and operate gamegw, a real-time gateway for multiplayer games.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"gamectl (gamegw) {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True, help="Print gamegw's version and exit.")] = False) -> None:
    pass


ConfigOpt = Annotated[
    Path | None,
    # readable=False: load_settings says what is wrong with the file, with a hint, like every setting
    typer.Option("--config", "-c", help="TOML settings file (see configs/). GAMEGW_* variables override it.",
                 envvar="GAMEGW_CONFIG", show_envvar=False, readable=False),
]


@app.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (default: 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default: 8000).")] = None,
    redis: Annotated[str | None, typer.Option("--redis", help="Redis URL: cluster mode with shared state.")] = None,
    admin_port: Annotated[int | None, typer.Option("--admin-port", help=(
        "Serve /admin/* and /metrics on this port only (on admin_host, default 127.0.0.1), not on the "
        "game port. With --workers N, worker k takes this port + k - 1."))] = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help=(
        "Processes behind this port, forming one cluster over Redis (needs --redis). The parent "
        "accepts each connection and hands it to one worker: a request with an Engine.IO sid to "
        "the worker that made it (sticky routing, so long-polling works), others round-robin. "
        "Several machines behind a load balancer still need sticky routing there (README)."))] = 1,
) -> None:
    """Run the gateway.

    With no configuration at all it runs the development profile: 127.0.0.1:8000, in-memory
    state, CORS for localhost origins and a generated HMAC key kept in your state directory
    (the same one `gamectl token` uses).
    """
    from gamegw.server.app import run
    from gamegw.server.logs import configure

    settings = settings_from(config, host=host, port=port, redis_url=redis, admin_port=admin_port)
    if workers > 1:
        if not settings.redis_url:
            fail(1, "--workers > 1 needs cluster mode (--redis)", "run one worker, or add --redis URL")
        if settings.port == 0:
            fail(1, "--workers > 1 needs a fixed --port", "pick a port: the workers share it")
        if settings.admin_port:
            last = settings.admin_port + workers - 1
            if last > 65535 or settings.admin_port <= settings.port <= last:
                fail(1, f"--workers {workers} take admin ports {settings.admin_port}-{last}, which must be free "
                        f"ports other than the game port {settings.port}", "choose another --admin-port")
        from .workers import run_workers

        try:
            code = run_workers(settings, workers, str(config) if config else None)
        except StartupError as exc:  # the port is taken
            fail(1, str(exc), exc.hint or None)
        raise typer.Exit(code)
    configure(settings.log_level, settings.log_format)
    if settings.dev:
        import logging

        from gamegw.server.logs import log

        log(logging.getLogger("gamegw.app"), "dev_profile", logging.WARNING,
            note="using a development JWT key; do not expose this instance",
            key_file=str(Path(settings.state_dir) / "dev-jwt-secret"))
    try:
        run(settings)
    except (StartupError, ConfigError) as exc:  # a port that is taken, Redis unreachable
        fail(1, str(exc), exc.hint or None)


@app.command()
def token(
    user: Annotated[str, typer.Argument(help="The user id (the JWT `sub`).")],
    config: ConfigOpt = None,
    ttl: Annotated[str, typer.Option(help="Lifetime: 90s, 15m, 1h, 7d.")] = "1h",
    role: Annotated[str | None, typer.Option(help="A `role` claim, e.g. admin for the admin API.")] = None,
    claim: Annotated[list[str] | None, typer.Option(help="An extra claim as key=value (repeatable).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print {token, sub, exp} as JSON.")] = False,
) -> None:
    """Print a signed JWT for USER, made with the configured key."""
    from gamegw.server.auth.tokens import mint

    ttl_s = parse_duration(ttl, "--ttl")
    if ttl_s <= 0:
        raise typer.BadParameter("must be positive", param_hint="--ttl")
    extra: dict[str, Any] = {}
    for item in claim or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r} is not key=value", param_hint="--claim")
        extra[key] = value
    settings = settings_from(config)
    if ttl_s > settings.jwt_max_lifetime_s:
        stderr.print(f"[yellow]warning:[/] the gateway refuses tokens that live longer than jwt_max_lifetime_s "
                     f"({settings.jwt_max_lifetime_s:g} s)", highlight=False, soft_wrap=True)
    try:
        jwt_text = mint(settings, user, ttl_s=ttl_s, role=role, claims=extra)
    except ConfigError as exc:
        fail(1, str(exc), "set GAMEGW_JWT_SECRET, or GAMEGW_JWT_PRIVATE_KEY_FILE for RS/ES keys")
    if as_json:
        import jwt as pyjwt

        payload = pyjwt.decode(jwt_text, options={"verify_signature": False})
        print_json({"token": jwt_text, "sub": user, "exp": payload["exp"]})
    else:
        typer.echo(jwt_text)


def _register() -> None:
    from . import dashboard, loadtest, ops

    app.add_typer(ops.connections_app, name="connections")
    app.command("instances")(ops.instances)
    app.command("kick")(ops.kick)
    app.command("simulate-drop")(ops.simulate_drop)
    app.command("revoke")(ops.revoke)
    app.command("publish")(ops.publish)
    app.command("loadtest")(loadtest.loadtest)
    app.command("dashboard")(dashboard.dashboard)


_register()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
