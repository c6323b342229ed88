"""The benchmark scripts point at files that exist (a moved locustfile once left bench_soak
starting Locust on a path that was gone)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

LOADTESTS = Path(__file__).resolve().parents[2] / "loadtests"
SCRIPTS = sorted(p.stem for p in LOADTESTS.glob("bench_*.py"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_script_files_exist(script: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(LOADTESTS))
    module = importlib.import_module(script)
    try:
        paths = {name: value for name, value in vars(module).items()
                 if name.isupper() and isinstance(value, Path) and value.suffix in (".py", ".js", ".toml")}
        for name, path in paths.items():
            assert path.is_file(), f"{script}.{name} = {path} does not exist"
    finally:
        sys.modules.pop(script, None)


def test_bench_soak_runs_gamectl_players(monkeypatch: pytest.MonkeyPatch) -> None:
    from gamegw.gamectl.loadtest import LOCUSTFILE

    monkeypatch.syspath_prepend(str(LOADTESTS))
    try:
        assert importlib.import_module("bench_soak").LOCUSTFILE == LOCUSTFILE
    finally:
        sys.modules.pop("bench_soak", None)
