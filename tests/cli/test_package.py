"""What the wheel installs: one import package, ``gamegw``, and a ``gamectl`` that answers.

The wheel is built from this checkout (pip, with build isolation as a user's pip would), unpacked
into a fresh folder, and run from there, so what is checked is the wheel and not the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from gamegw import __version__

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # from a copy of what the wheel is made of: an in-tree build would reuse a stale build/
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("gamegw", "server", "gamectl"):
        shutil.copytree(REPO / name, source / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(source)],
                   check=True, capture_output=True, timeout=300)
    [built] = out.glob("gamegw-*.whl")
    return built


def test_the_wheel_installs_one_import_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"gamegw", f"gamegw-{__version__}.dist-info"}
    # the gateway, the CLI and what gamectl loadtest runs are in; the benchmarks and tests are not
    assert {"gamegw/server/app.py", "gamegw/server/state/rooms_redis.py", "gamegw/gamectl/main.py",
            "gamegw/gamectl/players/locustfile.py"} <= set(names)
    assert not [n for n in names if "bench_" in n or "/tests/" in n or "conftest" in n]
    # the dashboard's page, modules and style: the gateway serves them from the package itself
    static = REPO / "server" / "dashboard" / "static"
    shipped = {f"gamegw/server/dashboard/static/{f.name}" for f in static.iterdir()}
    assert {"gamegw/server/dashboard/static/index.html", "gamegw/server/dashboard/static/app.js"} <= shipped
    assert shipped <= set(names)


def test_the_wheel_registers_the_games_that_ship_as_plugins(wheel: Path) -> None:
    archive = zipfile.ZipFile(wheel)
    assert "gamegw/games.py" in archive.namelist()  # the API a game package imports
    entry_points = archive.read(f"gamegw-{__version__}.dist-info/entry_points.txt").decode()
    section = entry_points.split("[gamegw.games]")[1].split("[")[0]
    assert sorted(line.strip() for line in section.strip().splitlines()) == [
        "arena = gamegw.server.rules.arena:Arena", "relay = gamegw.server.rules.relay:Relay"]


def test_gamectl_from_the_wheel_answers_its_version(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    # the wheel's own modules first; its dependencies come from this environment
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c", "import gamegw.gamectl.main as m; print(m.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=True)
    assert where.stdout.strip() == str(target / "gamegw" / "gamectl" / "main.py")
    run = subprocess.run([sys.executable, "-m", "gamegw.gamectl.main", "--version"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert (run.returncode, run.stdout, run.stderr) == (0, f"gamectl (gamegw) {__version__}\n", "")
    # the dashboard's assets, as the installed gateway reads them
    page = subprocess.run([sys.executable, "-c", "from gamegw.server.dashboard.routes import STATIC, asset; "
                           "print(len(asset('index.html')), *(len(asset(n)) > 0 for n in STATIC))"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=True)
    size, *found = page.stdout.split()
    assert int(size) > 500 and found == ["True"] * 4


def test_the_installed_gamectl_answers_its_version() -> None:
    gamectl = Path(sys.executable).with_name("gamectl")
    run = subprocess.run([str(gamectl), "--version"], capture_output=True, text=True, timeout=60)
    assert (run.returncode, run.stdout) == (0, f"gamectl (gamegw) {__version__}\n")
    # from the installed metadata, that is pyproject.toml's version, not the checkout's fallback
    assert __version__ == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
