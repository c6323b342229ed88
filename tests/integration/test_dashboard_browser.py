"""The dashboard in a real browser: headless Chromium (the system's, driven by Playwright) opens
the page with its token in the fragment, against real gateways and real players."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from playwright.async_api import Browser, Dialog, Page, async_playwright, expect

from gamegw.server.state.registry import Connection, MemoryRegistry
from tests.conftest import make_settings, start_gateway
from tests.integration.test_examples import chromium


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"])
        yield launched
        await launched.close()


async def open_page(browser: Browser, url: str, token: str) -> tuple[Page, list[str]]:
    """The dashboard at ``url`` with ``token`` in its fragment; every confirmation is accepted
    and its text kept."""
    page = await browser.new_page()
    asked: list[str] = []

    async def confirm(dialog: Dialog) -> None:
        asked.append(dialog.message)
        await dialog.accept()

    page.on("dialog", confirm)
    await page.goto(f"{url}/admin/ui#token={token}")
    return page, asked


async def test_the_dashboard_lists_players_kicks_one_and_shows_the_rates(cluster_factory, players, browser) -> None:
    a_gw, b_gw = await cluster_factory(2)
    alice = await players(a_gw.url, a_gw.token("alice"))
    bob = await players(b_gw.url, b_gw.token("bob"))
    assert (await alice.call("join", {"room": "lobby"}))["ok"]
    for room in ("lobby", "duel"):
        assert (await bob.call("join", {"room": room}))["ok"]

    page, asked = await open_page(browser, a_gw.url, a_gw.token("dashboard", role="admin"))
    assert "token" not in page.url  # out of the address bar (and of the history) once read
    alice_row = page.locator('#connections tr[data-user="alice"]')
    bob_row = page.locator('#connections tr[data-user="bob"]')
    await expect(alice_row.locator("td.instance")).to_have_text("inst-1")
    await expect(alice_row.locator("td.rooms")).to_have_text("lobby")
    await expect(bob_row.locator("td.instance")).to_have_text("inst-2")
    await expect(bob_row.locator("td.rooms")).to_have_text("duel, lobby")
    await expect(bob_row.locator("td.transport")).to_have_text("websocket")
    await expect(page.locator("#instances tr[data-instance]")).to_have_count(2)
    await expect(page.locator('#instances tr[data-instance="inst-2"] td.rss')).to_have_text(re.compile(r"MiB$"))
    await expect(page.locator('#rooms tr[data-room="lobby"] td.members')).to_have_text("2: alice, bob")

    # a player who connects now shows up, without a reload
    carol = await players(b_gw.url, b_gw.token("carol"))
    assert (await carol.call("join", {"room": "duel"}))["ok"]
    await expect(page.locator('#connections tr[data-user="carol"] td.rooms')).to_have_text("duel")

    # moves on both instances: the rates show them within a few seconds
    async def play() -> None:
        n = 0
        while True:
            n += 1
            await alice.call("move", {"room": "lobby", "action": {"n": n}})
            await carol.call("move", {"room": "duel", "action": {"n": n}})
            await asyncio.sleep(0.02)

    playing = asyncio.create_task(play())
    try:
        started = time.monotonic()
        await expect(page.locator("#rate-moves")).to_have_text(re.compile(r"^[1-9]\d*\.\d$"), timeout=5000)
        assert time.monotonic() - started < 5
        await expect(page.locator("#rate-deliveries")).to_have_text(re.compile(r"^[1-9]\d*\.\d$"))
        await expect(page.locator("#rate-p99")).to_have_text(re.compile(r"^\d+\.\d\d$"))
        await expect(page.locator('#rooms tr[data-room="duel"] td.rate')).to_have_text(re.compile(r"^[1-9]\d*\.\d$"))
        await expect(page.locator('#instances tr[data-instance="inst-1"] td.moves')).to_have_text(
            re.compile(r"^[1-9]\d*\.\d$"))
    finally:
        playing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await playing

    await bob_row.locator("button.kick").click()
    await expect(bob_row).to_have_count(0)
    assert asked == ["Kick bob? All of their connections close with 4503 kicked (their client must not reconnect)."]
    await expect(page.locator("#action-result")).to_have_text("kicked 1 connection(s) of bob")
    [reason] = await bob.wait_for("disconnect_reason")
    assert reason["code"] == 4503
    await expect(alice_row).to_have_count(1)
    await expect(page.locator('#rooms tr[data-room="lobby"] td.members')).to_have_text("1: alice")


async def test_a_revoked_token_loses_the_page_at_once(cluster_factory, players, browser) -> None:
    a_gw, b_gw = await cluster_factory(2)
    await players(b_gw.url, b_gw.token("alice"))
    page, _ = await open_page(browser, a_gw.url, a_gw.token("dashboard", role="admin"))
    await expect(page.locator('#connections tr[data-user="alice"]')).to_have_count(1)

    async with aiohttp.ClientSession() as http:
        async with http.post(b_gw.url + "/admin/revoke", json={"user": "dashboard"},
                             headers={"Authorization": f"Bearer {b_gw.token('root', role='admin')}"}) as resp:
            assert resp.status == 200
    await expect(page.locator("#signed-out")).to_be_visible(timeout=2000)
    await expect(page.locator("#signed-out-reason")).to_have_text("token_invalid: token revoked")
    await expect(page.locator("#live")).to_be_hidden()
    await expect(page.locator("#connections tbody tr")).to_have_count(0)
    assert await page.evaluate("document.body.dataset.state") == "signed-out"
    await page.reload()  # the token is gone from the tab too
    await expect(page.locator("#signed-out-reason")).to_have_text(re.compile("^token_missing"))


async def test_an_expired_token_loses_the_page(gateway, players, browser) -> None:
    await players(gateway.url, gateway.token("alice"))
    page, _ = await open_page(browser, gateway.url, gateway.token("dashboard", role="admin", ttl_s=3))
    await expect(page.locator('#connections tr[data-user="alice"]')).to_have_count(1)
    await expect(page.locator("#signed-out-reason")).to_have_text("token_expired: token expired", timeout=5000)
    await expect(page.locator("#connections tbody tr")).to_have_count(0)


async def test_ten_thousand_connections_page_and_filter(browser) -> None:
    registry = MemoryRegistry()
    now = time.time()
    for n in range(10_000):
        await registry.add(Connection(sid=f"s{n:05d}", user_id=f"u{n:05d}", instance_id="test-1", address="127.0.0.1",
                                      connected_at=now - 10_000 + n, last_seen=now, transport="websocket",
                                      rooms={f"room-{n % 500}"}))
    gw = await start_gateway(make_settings(), registry=registry)
    try:
        started = time.monotonic()
        page, _ = await open_page(browser, gw.url, gw.token("ops", role="admin"))
        pager = page.locator("#connections-pager .where")
        await expect(pager).to_have_text("1\u2013100 of 10000", timeout=10_000)
        opened_s = time.monotonic() - started
        await expect(page.locator("#connections tbody tr")).to_have_count(100)
        await page.locator('#connections-pager [data-step="1"]').click()
        await expect(pager).to_have_text("101\u2013200 of 10000")
        await expect(page.locator("#connections tbody tr").first).to_have_attribute("data-user", "u00100")
        await page.fill("#filter-user", "u09999")
        await expect(page.locator("#connections tbody tr")).to_have_count(1)
        await page.fill("#filter-user", "")
        await page.fill("#filter-room", "room-7")  # room-7, room-70..79, room-700.. (only < 500 exist)
        await expect(page.locator("#connections-count")).to_have_text("220 of 10000")
        await page.fill("#filter-room", "")
        await page.fill("#filter-instance", "test-1")
        await expect(page.locator("#connections-count")).to_have_text("10000 of 10000")
        await expect(page.locator("#rooms-count")).to_have_text("500")
        assert opened_s < 8, opened_s
    finally:
        await gw.aclose()
