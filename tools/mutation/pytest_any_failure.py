"""pytest for mutmut 2's runner: exits 1 on any failure.

mutmut 2 counts a mutant as killed only when the test command exits with 1 (tests failed); a
mutant that breaks an import makes pytest exit with 2 (collection error) or 4 (conftest), which
mutmut would count as a survivor."""

from __future__ import annotations

import os
import sys

import pytest

if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())  # as `python -m pytest` does: `tests.conftest` imports
    sys.exit(0 if pytest.main(sys.argv[1:]) == 0 else 1)
