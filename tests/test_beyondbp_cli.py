"""The ``beyondbp`` command line: compare writes table, PNGs and JSON; bad options fail clearly."""

from __future__ import annotations

import subprocess
import sys

from _cli import run_compare

from beyondbp import cli


def test_compare_writes_outputs(tmp_path, capsys):
    out = tmp_path / "cmp"
    table, data = run_compare(
        capsys, out, "--methods", "backprop", "--steps", "30", "--widths", "32"
    )
    assert "| backprop |" in table and "time/backprop" in table
    assert data["rows"][0]["method"] == "backprop" and data["rows"][0]["step_time_rel"] == 1.0
    assert data["config"]["steps"] == 30
    for png in ("learning_curves.png", "accuracy_vs_cost.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_method_is_one_line_error(tmp_path, capsys):
    rc = cli.main(
        ["compare", "--methods", "backprop,telepathy", "--steps", "2", "--out", str(tmp_path)]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "unknown method 'telepathy'" in err and "known methods" in err
    assert len(err.strip().splitlines()) == 1


def test_missing_dataset_files_is_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("BEYONDBP_DATA", raising=False)
    import beyondbp.datasets as ds

    monkeypatch.setattr(
        ds.urllib.request,
        "urlopen",
        lambda *a, **k: (_ for _ in ()).throw(ds.urllib.error.URLError("offline")),
    )
    rc = cli.main(
        [
            "compare",
            "--methods",
            "backprop",
            "--steps",
            "2",
            "--dataset",
            "mnist",
            "--data-dir",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "not found in" in err and "--data-dir" in err


def test_console_script_help():
    r = subprocess.run(
        [sys.executable, "-m", "beyondbp.cli", "compare", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0
    for opt in ("--dataset", "--data-dir", "--steps", "--epochs", "--methods", "--seed", "--out"):
        assert opt in r.stdout


def test_method_without_cnn_variant_is_skipped_not_fatal(tmp_path, capsys):
    rc = cli.main(
        [
            "compare",
            "--methods",
            "backprop,fwdgrad-local",
            "--model",
            "cnn",
            "--steps",
            "3",
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "| fwdgrad-local | skipped:" in out and "| backprop |" in out
