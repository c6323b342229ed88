#!/usr/bin/env python3
"""The README's dashboard screenshot, taken during a `gamectl loadtest` of 1000 players.

Starts a redis-server of its own and two gateways over it (configs/bench.toml), runs
`gamectl loadtest` with the players spread over both (GAMEGW_LT_HOSTS), opens `/admin/ui` in headless Chromium
(Playwright, the Debian `chromium`) once the swarm is up, and writes a PNG (default
docs/dashboard.png). Nothing here is measured: it is a picture of the page under load.

  .venv/bin/python loadtests/dashboard_screenshot.py [--players 1000] [--out docs/dashboard.png]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import REPO, Gateway, RedisProcess, SetupError, free_port_block, gamectl_path, raise_nofile


async def shoot(url: str, out: Path, wait_s: float) -> None:
    from playwright.async_api import async_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SetupError("chromium not found on PATH (apt-get install chromium)")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = await browser.new_page(viewport={"width": 1440, "height": 1000})
        await page.goto(url)
        await asyncio.sleep(wait_s)  # a few seconds of live rates
        await page.screenshot(path=str(out), full_page=False)
        await browser.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--players", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "dashboard.png")
    args = ap.parse_args()
    raise_nofile(4 * args.players + 1000)
    secret = secrets.token_hex(32)
    redis = RedisProcess()
    gateways: list[Gateway] = []
    swarm = None
    try:
        port = free_port_block(2)
        gateways = [Gateway(port + k, secret, REPO / "configs" / "bench.toml", None, redis=redis.url)
                    for k in range(2)]
        for gw in gateways:
            gw.wait_ready()
        env = {k: v for k, v in os.environ.items() if not k.startswith("GAMEGW_")}
        env.update(GAMEGW_JWT_SECRET=secret, GAMEGW_LT_HOSTS=",".join(g.url for g in gateways),
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
        log = open(Path(tempfile.gettempdir()) / "gamegw-dashboard-screenshot-loadtest.log", "w")
        swarm = subprocess.Popen(
            [gamectl_path(), "loadtest", "--host", gateways[0].url,
             "-u", str(args.players), "-r", str(max(1, args.players // 10)), "-t", "60s", "--room-size", "10",
             "--move-rate", "1"], env=env, stdout=log, stderr=log, cwd=REPO)
        link = json.loads(subprocess.run(
            [gamectl_path(), "dashboard", "--url", gateways[0].url, "--json"], env=env, capture_output=True,
            text=True, check=True).stdout)["url"]
        time.sleep(15 + args.players / 100)  # the swarm is spawned and playing
        asyncio.run(shoot(link, args.out, 6.0))
        print(f"wrote {args.out}")
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    finally:
        if swarm is not None:
            swarm.terminate()
            swarm.wait(30)
        for gw in gateways:
            gw.stop()
        redis.stop()


if __name__ == "__main__":
    main()
