"""Run ``beyondbp compare`` the way the command-line tests do, and read back what it wrote."""

from __future__ import annotations

import json
from pathlib import Path

from beyondbp import cli


def run_compare(capsys, out: Path, *options: str) -> tuple[str, dict]:
    """``beyondbp compare *options --out out --no-progress``, asserting exit status 0.

    Returns the printed table and the parsed ``out/compare.json``.
    """
    rc = cli.main(["compare", *options, "--out", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    return capsys.readouterr().out, json.loads((out / "compare.json").read_text())
