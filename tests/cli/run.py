"""Running ``gamectl`` as a subprocess from async tests, so that in-process gateways keep serving."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.conftest import TEST_SECRET

GAMECTL = str(Path(sys.executable).with_name("gamectl"))


async def start_gamectl(*args: str, **env: str) -> asyncio.subprocess.Process:
    """``gamectl ARGS`` started with the test key and no other GAMEGW_ variable, its output piped."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GAMEGW_")}
    environ.update({"GAMEGW_JWT_SECRET": TEST_SECRET, "COLUMNS": "200", **env})
    return await asyncio.create_subprocess_exec(GAMECTL, *args, env=environ, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)


async def gamectl(*args: str, timeout: float = 30, **env: str) -> tuple[int, str, str]:
    """``gamectl ARGS`` with the test key and no other GAMEGW_ variable; (exit code, stdout, stderr)."""
    proc = await start_gamectl(*args, **env)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
