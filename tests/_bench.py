"""Importing a benchmark script as a module, for tests of its pieces (the scripts are not a
package: they run as ``python benchmarks/x.py`` and import their siblings by name)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def import_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module, with ``benchmarks/`` on the path while it loads
    (so its ``import _common`` works) and removed again afterwards."""
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))
