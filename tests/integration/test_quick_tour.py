"""The README's quick tour runs as pasted (issue 15).

The fenced ``bash``, ``js`` and ``python`` blocks under ``## Quick tour`` in README.md are
taken as they are written and run the way the README tells a newcomer to: the bash block in a
shell, the Node block saved as ``tour.js`` and run with ``node``, the Python block saved as
``tour.py`` and run with ``.venv/bin/python``, all in that one shell, so that what the bash block
exports is what the snippets see. The gateway is ``gamectl serve`` in the development profile
(no configuration, its key in a state directory of the test's own), as step 1 of the README
runs it.

What the test changes, and only this: the gateway listens on a free port instead of 8000, and
the shell has ``GAME_URL`` set to it, which the snippets read as the README says (their default,
``http://127.0.0.1:8000``, is what a newcomer gets). ``.venv`` in the shell's folder is the
virtualenv running the tests, and ``NODE_PATH`` points at ``tests/js/node_modules`` (the
``npm install socket.io-client`` the README asks for). ``TOKEN`` is removed from the environment,
so that only the README's own ``export`` can provide it.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import GatewayProcess, eventually, free_port
from tests.integration.test_js_client import JS_DIR, node_client  # noqa: F401  (a fixture)

README = Path(__file__).resolve().parents[2] / "README.md"
TOUR_TIMEOUT_S = 60


def tour_blocks(text: str) -> dict[str, str]:
    """The fenced blocks under ``## Quick tour`` (up to the next ``## `` heading), by language."""
    section = text.split("\n## Quick tour\n", 1)[1].split("\n## ", 1)[0]
    blocks: dict[str, str] = {}
    for lang, body in re.findall(r"^```(\w+)\n(.*?)^```$", section, flags=re.S | re.M):
        assert lang not in blocks, f"two ```{lang} blocks in the quick tour: the test runs one of each"
        blocks[lang] = body
    assert set(blocks) == {"bash", "js", "python"}, f"the quick tour's blocks: {sorted(blocks)}"
    return blocks


def dev_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """An environment with no gateway configuration: the development profile, keyed in tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAMEGW_") and k not in ("TOKEN", "GAME_URL")}
    env.update({"XDG_STATE_HOME": str(tmp_path / "state"), **extra})
    return env


async def run_shell(script: str, cwd: Path, env: dict[str, str]) -> tuple[int, str, str, float]:
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec("bash", "-c", script, cwd=cwd, env=env, start_new_session=True,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), TOUR_TIMEOUT_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)  # the shell and the node / python it started
        out, err = await proc.communicate()
        pytest.fail(f"the quick tour did not finish within {TOUR_TIMEOUT_S} s\n"
                    f"stdout: {out.decode()[-3000:]}\nstderr: {err.decode()[-3000:]}")
    return proc.returncode or 0, out.decode(), err.decode(), time.monotonic() - started


def sections(out: str) -> dict[str, list[str]]:
    """The shell's output, split at the ``=== name`` markers the test puts between the blocks."""
    parts: dict[str, list[str]] = {}
    current = "bash"
    for line in out.splitlines():
        if line.startswith("=== "):
            current = line[4:]
            continue
        parts.setdefault(current, []).append(line)
    return parts


def one(lines: list[str], label: str, parse: Callable[[str], Any]) -> Any:
    """The one line that starts with ``label`` + a space followed by a JSON / Python object, parsed."""
    found = [line[len(label) + 1:] for line in lines if line.startswith(label + " {")]
    assert len(found) == 1, f"expected one {label!r} line in:\n" + "\n".join(lines)
    return parse(found[0])


async def test_the_quick_tour_runs_as_pasted(tmp_path: Path, node_client: str, figure: Callable[[str], None]) -> None:  # noqa: F811
    blocks = tour_blocks(README.read_text())
    work = tmp_path / "tour"
    work.mkdir()
    (work / ".venv").symlink_to(sys.prefix)  # the README's commands say .venv/bin/...
    (work / "tour.js").write_text(blocks["js"])
    (work / "tour.py").write_text(blocks["python"])

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dev_env(tmp_path, GAME_URL=url, NODE_PATH=str(JS_DIR / "node_modules"),
                  PATH=f"{Path(node_client).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    server = GatewayProcess(dev_env(tmp_path), port, "dev")
    try:
        await server.ready()
        script = (f"set -e\n{blocks['bash']}\necho\necho '=== js'\nnode tour.js\n"
                  "echo '=== python'\n.venv/bin/python tour.py\n")
        rc, out, err, took = await run_shell(script, work, env)
        assert rc == 0, f"the quick tour exited {rc}\nstdout: {out[-3000:]}\nstderr: {err[-3000:]}"
        figure(f"quick tour: {took:.2f} s")
        parts = sections(out)

        health = json.loads(parts["bash"][0])
        assert health["status"] == "ok"

        js = parts.get("js", [])
        session = one(js, "session", json.loads)
        assert session["user"] == "alice" and session["resumed"] is False and session["rooms"] == []
        join = one(js, "join", json.loads)
        assert join == {"ok": True, "room": "lobby", "seq": 0, "members": ["alice"]}
        ack = one(js, "move ack", json.loads)
        assert ack == {"ok": True, "seq": 1}
        move = one(js, "move", json.loads)
        assert (move["room"], move["seq"], move["user"], move["action"]) == ("lobby", 1, "alice", {"x": 1})
        sync = one(js, "sync", json.loads)
        assert sync["ok"] is True and sync["complete"] is True and [e["seq"] for e in sync["events"]] == [1]
        assert not any(line.startswith("token_") for line in js), js

        py = parts.get("python", [])
        pjoin = one(py, "join", ast.literal_eval)
        # Node's alice left the lobby for good (its last member), so the room starts again at 0
        assert pjoin == {"ok": True, "room": "lobby", "seq": 0, "members": ["alice"]}
        pack = one(py, "move ack", ast.literal_eval)
        assert pack == {"ok": True, "seq": 1}
        pmove = one(py, "move", ast.literal_eval)
        assert (pmove["seq"], pmove["user"], pmove["action"]) == (1, "alice", {"x": 1})

        # Both snippets end with a leave: nothing is left waiting in grace for alice.
        async def nobody_left() -> bool:
            listing = await run_shell(".venv/bin/gamectl connections ls --json --url $GAME_URL", work, env)
            assert listing[0] == 0, listing
            return json.loads(listing[1]) == {"connections": []}

        await eventually(nobody_left, timeout=5, interval=0.2)
    finally:
        server.close()

