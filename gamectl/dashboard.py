"""``gamectl dashboard``: a link to the live operations page, carrying a short-lived admin token.

The token travels in the URL's fragment (``#token=...``), which a browser never sends to a
server: it reaches no access log and no proxy. The page keeps it in its tab and sends it as
``Authorization: Bearer``; when it expires, or is revoked (``gamectl revoke USER``), the page
signs out at once.
"""

from __future__ import annotations

import time
import webbrowser
from typing import Annotated

import typer

from .admin import AdminClient
from .ops import ConfigOpt, JsonOpt, UrlOpt
from .output import fail, parse_duration, print_json, stderr


def dashboard(
    url: UrlOpt = None,
    ttl: Annotated[str, typer.Option(help="How long the link works: 90s, 15m, 1h (at most jwt_max_lifetime_s).")
                   ] = "15m",
    user: Annotated[str, typer.Option(help="The token's `sub`: `gamectl revoke USER` ends every page "
                                           "opened with it.")] = "dashboard",
    open_browser: Annotated[bool, typer.Option("--open", help="Open the link in the default browser too.")] = False,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Print a link to the live dashboard (served by the gateway at /admin/ui).

    The link carries a short-lived admin token in its #fragment, which no server sees.

    The gateway is asked first, with that token: a link that would not work is never printed.
    """
    from gamegw.server.auth.tokens import mint
    from gamegw.server.protocol.errors import ConfigError

    from .settings import settings_from

    ttl_s = parse_duration(ttl, "--ttl")
    settings = settings_from(config)
    if not 0 < ttl_s <= settings.jwt_max_lifetime_s:
        raise typer.BadParameter(f"must be positive and at most jwt_max_lifetime_s "
                                 f"({settings.jwt_max_lifetime_s:g} s), which the gateway enforces",
                                 param_hint="--ttl")
    try:
        token = mint(settings, user, ttl_s=ttl_s, role="admin")
    except ConfigError as exc:
        fail(1, str(exc), "set GAMEGW_JWT_SECRET (or GAMEGW_JWT_PRIVATE_KEY_FILE) to the gateway's key")
    client = AdminClient(settings, url, token)
    client.get("/admin/instances")  # reachable, and the gateway accepts the token (else fail with a hint)
    link = f"{client.url}/admin/ui#token={token}"
    exp = time.time() + ttl_s
    if as_json:
        print_json({"url": link, "user": user, "exp": int(exp), "ttl_s": ttl_s})
    else:
        typer.echo(link)
        stderr.print(f"[dim]valid for {ttl}; `gamectl revoke {user}` signs out every page opened with it[/]",
                     highlight=False, soft_wrap=True)
    if open_browser and not webbrowser.open(link):
        fail(1, "no browser could be opened here", "open the link above by hand")
