"""Command-line bad inputs, tried as a new user would: each ends in one ``beyondbp: error: ...``
line and exit status 2, never a traceback, and output paths are refused before any training."""

from __future__ import annotations

import errno
import os
import pathlib
import sys

import pytest

from beyondbp import checkpoint, cli
from beyondbp import train as train_mod

TINY = ["--steps", "2", "--widths", "8", "--batch-size", "16", "--no-progress"]


def _a_file(tmp_path):
    f = tmp_path / "a_file"
    f.write_text("not a directory")
    return str(f)


def _read_only_dir(tmp_path):
    d = tmp_path / "read_only"
    d.mkdir()
    d.chmod(0o500)
    return str(d)


# (id, argv builder, expected text in the error line). Paths that cannot hold the outputs must
# be refused before training starts: the rows run with training replaced by a failure.
def _row(row_id, argv, match, **kw):
    return pytest.param(argv, match, id=row_id, **kw)


PATH_ROWS = [
    _row(
        "compare-out-uncreatable",
        lambda t: [
            "compare",
            "--methods",
            "backprop",
            "--steps",
            "5",
            "--out",
            "/proc/forbidden/x",
        ],
        "--out /proc/forbidden/x: cannot create the directory",
    ),
    _row(
        "train-checkpoint-uncreatable",
        lambda t: ["train", "--checkpoint-dir", "/proc/forbidden"],
        "--checkpoint-dir /proc/forbidden: cannot create the directory",
    ),
    _row(
        "train-out-uncreatable",
        lambda t: ["train", "--out", "/proc/forbidden/run"],
        "--out /proc/forbidden/run: cannot create the directory",
    ),
    _row(
        "compare-out-under-a-file",
        lambda t: ["compare", "--methods", "backprop", "--out", _a_file(t) + "/sub"],
        "cannot create the directory (Not a directory)",
    ),
    _row(
        "compare-out-is-a-file",
        lambda t: ["compare", "--methods", "backprop", "--out", _a_file(t)],
        "is a file, not a directory",
    ),
    _row(
        "train-checkpoint-is-a-file",
        lambda t: ["train", "--checkpoint-dir", _a_file(t)],
        "is a file, not a directory",
    ),
    _row(
        "train-out-is-a-file",
        lambda t: ["train", "--out", _a_file(t)],
        "is a file, not a directory",
    ),
    # an existing directory nobody can create files in, root included (procfs)
    _row(
        "compare-out-unwritable-proc",
        lambda t: ["compare", "--methods", "backprop", "--out", "/proc/self"],
        "--out /proc/self: cannot write into the directory",
    ),
    _row(
        "train-checkpoint-unwritable-proc",
        lambda t: ["train", "--checkpoint-dir", "/proc/self"],
        "--checkpoint-dir /proc/self: cannot write into the directory",
    ),
    _row(
        "train-checkpoint-read-only-mode",
        lambda t: ["train", "--checkpoint-dir", _read_only_dir(t)],
        "cannot write into the directory (Permission denied)",
        marks=pytest.mark.skipif(
            os.geteuid() == 0,
            reason="root ignores mode bits (the /proc rows cover an unwritable directory for root)",
        ),
    ),
]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # no traceback, no usage text
    assert err[0].startswith("beyondbp: error: "), err
    return err[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
@pytest.mark.parametrize("argv,match", PATH_ROWS)
def test_bad_output_path_refused_before_training(argv, match, tmp_path, capsys, monkeypatch):
    def no_training(*a, **k):
        raise AssertionError("training started before the output paths were checked")

    monkeypatch.setattr(train_mod, "train", no_training)
    rc = cli.main(argv(tmp_path) + ["--no-progress"])
    line = _one_error_line(capsys)
    assert rc == 2
    assert match in line, line


def test_probe_leaves_no_directory_behind(tmp_path, capsys, monkeypatch):
    """--out is creatable, --checkpoint-dir is not: the run is refused and the directories the
    check created for --out are gone again."""
    monkeypatch.setattr(train_mod, "train", lambda *a, **k: pytest.fail("trained"))
    out = tmp_path / "new" / "deeper"
    rc = cli.main(["train", "--out", str(out), "--checkpoint-dir", "/proc/forbidden"] + TINY)
    assert rc == 2 and "--checkpoint-dir /proc/forbidden" in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("full_from", ["runs_so_far.json", "compare.json"])
def test_disk_full_writing_compare_json(tmp_path, capsys, monkeypatch, full_from):
    """A full disk (the JSON writer raises ENOSPC): one line naming the file. The first file a
    comparison writes is its record of the runs finished so far, after the first run: a disk
    full from the start stops it there, not after every row has trained for nothing; one that
    fills up later fails on compare.json."""
    real = train_mod.write_json

    def full(hist, path):
        if pathlib.Path(path).name != full_from and full_from == "compare.json":
            return real(hist, path)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(train_mod, "write_json", full)
    out = tmp_path / "cmp"
    rc = cli.main(["compare", "--methods", "backprop", "--out", str(out)] + TINY)
    line = _one_error_line(capsys)
    assert rc == 2
    assert (
        line == f"beyondbp: error: could not write {out / full_from}: {os.strerror(errno.ENOSPC)}"
    )


def test_disk_full_writing_a_checkpoint(tmp_path, capsys, monkeypatch):
    """ENOSPC from the checkpoint's fsync (where delayed allocation reports a full disk): one
    line, and no partial temporary file left in the checkpoint directory."""
    real_fsync = os.fsync

    def full(fd):
        real_fsync(fd)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.os, "fsync", full)
    ck = tmp_path / "ck"
    rc = cli.main(["train", "--checkpoint-dir", str(ck), "--out", str(tmp_path / "out")] + TINY)
    line = _one_error_line(capsys)
    assert rc == 2 and os.strerror(errno.ENOSPC) in line, line
    assert sorted(p.name for p in ck.iterdir()) == []


def test_disk_full_writing_history(tmp_path, capsys, monkeypatch):
    """ENOSPC from the history writer of ``train`` (the real write_json, its file write mocked):
    one line, and the partial ``.tmp`` removed."""
    import pathlib

    real_write_text = pathlib.Path.write_text

    def full(self, data, *a, **k):  # the disk fills part way through the file
        real_write_text(self, data[: len(data) // 2], *a, **k)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(pathlib.Path, "write_text", full)
    out = tmp_path / "out"
    rc = cli.main(["train", "--out", str(out)] + TINY)
    line = _one_error_line(capsys)
    assert rc == 2 and f"history.json.tmp: {os.strerror(errno.ENOSPC)}" in line, line
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())


@pytest.mark.parametrize(
    "argv,match",
    [
        (["compare", "--steps", "0"], "must be a positive integer"),
        (["compare", "--steps", "ten"], "is not an integer"),
        (["compare", "--dataset", "imagenet"], "invalid choice: 'imagenet'"),
        (["compare", "--widths", "a,b"], "comma-separated integers"),
        (["compare", "--steps", "5", "--epochs", "1"], "not allowed with argument"),
        (["train", "--seed", "-1"], "a seed is a non-negative integer"),
        (["compare", "--seeds", "1,1"], "give distinct comma-separated seeds"),
        (["train", "--model", "rnn"], "invalid choice: 'rnn'"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_usage_errors_end_in_the_same_line(argv, match, capsys):
    """argparse's errors end in the same ``beyondbp: error:`` line (after the usage line)."""
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("beyondbp: error: ") and match in last, last
