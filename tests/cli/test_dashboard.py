"""`gamectl dashboard`: a link to /admin/ui whose short-lived admin token sits in the fragment,
checked against the gateway before it is printed, and opened in a browser with --open."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import jwt

from gamegw.server.app import PARTS
from tests.cli.run import gamectl
from tests.conftest import TEST_SECRET


async def test_dashboard_prints_a_link_with_a_short_lived_admin_token(gateway) -> None:
    code, out, err = await gamectl("dashboard", "--url", gateway.url, "--ttl", "5m", "--json")
    assert code == 0, err
    answer = json.loads(out)
    link = urlsplit(answer["url"])
    assert (f"{link.scheme}://{link.netloc}", link.path, link.query) == (gateway.url, "/admin/ui", "")
    assert link.fragment.startswith("token=")  # the fragment: never sent to a server, so never logged
    token = link.fragment.removeprefix("token=")
    claims = jwt.decode(token, TEST_SECRET, algorithms=["HS256"])
    assert (claims["sub"], claims["role"], answer["user"]) == ("dashboard", "admin", "dashboard")
    assert claims["exp"] - claims["iat"] == 300 and abs(answer["exp"] - claims["exp"]) <= 1
    assert claims["exp"] - time.time() > 290
    async with aiohttp.ClientSession() as http:  # what the page does with it
        async with http.get(answer["url"].split("#")[0]) as resp:
            assert resp.status == 200 and "<title>gamegw" in await resp.text()
        async with http.get(gateway.url + "/admin/live", headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200
            assert (await resp.content.readuntil(b"\n")) == b"event: snapshot\n"

    code, out, err = await gamectl("dashboard", "--url", gateway.url, "--user", "ops-ann")
    assert code == 0
    [line] = out.splitlines()
    assert jwt.decode(line.split("#token=")[1], TEST_SECRET, algorithms=["HS256"])["sub"] == "ops-ann"
    assert "valid for 15m" in err and "gamectl revoke ops-ann" in err


async def test_dashboard_opens_the_browser(gateway, tmp_path: Path) -> None:
    opened = tmp_path / "opened"
    browser = tmp_path / "browser"
    browser.write_text(f'#!/bin/sh\nprintf %s "$1" > {opened}\n')
    browser.chmod(browser.stat().st_mode | stat.S_IXUSR)
    code, out, err = await gamectl("dashboard", "--url", gateway.url, "--open", BROWSER=f"{browser} %s")
    assert code == 0, err
    assert opened.read_text() == out.strip() and "#token=" in out


async def test_dashboard_refuses_a_link_that_would_not_work(gateway) -> None:
    code, out, err = await gamectl("dashboard", "--url", gateway.url,
                                   GAMEGW_JWT_SECRET="another-secret-0123456789-0123456789-xyz")
    assert (code, out) == (1, "")
    assert "the gateway refused: token_invalid" in err and "hint:" in err
    code, _, err = await gamectl("dashboard", "--url", "http://127.0.0.1:9")
    assert code == 1 and "cannot reach the gateway" in err
    for ttl in ("0", "2d", "soon"):
        code, _, err = await gamectl("dashboard", "--url", gateway.url, "--ttl", ttl)
        assert code == 2 and "--ttl" in err, ttl
    assert not gateway.app[PARTS].feed.watching
