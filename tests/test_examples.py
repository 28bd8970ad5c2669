"""Every script in examples/ runs as written (short budget) and prints a sane accuracy."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

EXAMPLES = sorted((pathlib.Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


def test_there_are_examples():
    assert len(EXAMPLES) >= 1


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(script):
    assert len(script.read_text().splitlines()) < 60, f"{script.name} should stay under 60 lines"
    # forward gradients learn more per second than per step: give them more (cheap) steps
    steps, floor = ("600", 0.3) if "fwdgrad" in script.name else ("150", 0.5)
    env = dict(os.environ, EXAMPLE_STEPS=steps, JAX_PLATFORMS="cpu")
    r = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=script.parent.parent,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    acc = re.findall(r"test accuracy ([0-9.]+)", r.stdout)
    assert acc, f"{script.name} printed no test accuracy: {r.stdout[-500:]}"
    assert float(acc[-1]) > floor, f"{script.name} did not learn: {r.stdout[-500:]}"
