"""``beyondbp compare --seeds``: every row per seed, mean ± std, every per-seed value kept."""

from __future__ import annotations

import _synthetic
import numpy as np
import pytest
from _cli import run_compare

from beyondbp import cli, compare


def test_seeds_table_json_and_plots(tmp_path, capsys):
    out = tmp_path / "cmp"
    runs = ("--methods", "backprop,lowbit", "--seeds", "0,1,2")
    table, data = run_compare(capsys, out, *runs, "--steps", "20", "--widths", "16")
    assert "mean ± std" in table and "seeds [0, 1, 2]" in table
    assert data["config"]["seeds"] == [0, 1, 2]
    assert len(data["runs"]) == 6 and {r["seed"] for r in data["runs"]} == {0, 1, 2}
    for row in data["rows"]:
        per_seed = [r["test_accuracy"] for r in data["runs"] if r["method"] == row["method"]]
        assert row["test_accuracy_per_seed"] == per_seed
        assert row["test_accuracy"] == pytest.approx(np.mean(per_seed))
        assert row["test_accuracy_std"] == pytest.approx(np.std(per_seed, ddof=1))
        assert len(row["step_time_per_seed_s"]) == 3
        assert f"{row['test_accuracy']:.4f} ± {row['test_accuracy_std']:.4f}" in table
        assert len(set(per_seed)) > 1  # the seeds really differ (init, data order)
    for png in ("learning_curves.png", "accuracy_vs_cost.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_spread_marker_flags_rows_whose_seeds_disagree():
    runs = [
        {
            "method": "backprop",
            "seed": s,
            "test_accuracy": a,
            "step_time_s": 1e-3,
            "memory_bytes": 1,
            "temp_bytes": 1,
            "energy_per_step_j": None,
            "digital_energy_per_step_j": None,
            "wall_time_s": 1.0,
            "history": {"loss_kind": "cross-entropy"},
        }
        for s, a in enumerate([0.90, 0.91, 0.84])
    ]
    row = compare._aggregate("backprop", runs)
    assert row["spread_flag"] and row["test_accuracy_per_seed"] == [0.90, 0.91, 0.84]
    assert not compare._aggregate("backprop", runs[:2])["spread_flag"]


@pytest.mark.parametrize(
    "seeds,match",
    [
        ([], "distinct non-negative"),
        ([0, 0], "distinct"),
        ([-1], "non-negative"),
        (["a"], "list of integers"),
    ],
)
def test_bad_seeds_fail_before_any_training(seeds, match):
    with pytest.raises(ValueError, match=match):
        compare.compare(["backprop"], steps=2, seeds=seeds)


@pytest.mark.parametrize(
    "argv,match",
    [
        (["compare", "--seeds", "0,0"], "distinct"),
        (["compare", "--seeds", "x"], "is not an integer"),
        (["compare", "--seed", "-3"], "non-negative"),
    ],
)
def test_bad_seed_options(argv, match, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2 and match in capsys.readouterr().err


def test_idx_dataset_from_the_command_line(tmp_path, capsys):
    d = _synthetic.write_shapes(tmp_path / "kmnist-like", train=300, test=100, size=20)
    idx = ("--methods", "backprop", "--dataset", "idx", "--data-dir", str(d), "--steps", "10")
    _, data = run_compare(capsys, tmp_path / "o", *idx, "--widths", "16")
    assert data["config"]["input_shape"] == [20, 20, 1] and data["config"]["num_classes"] == 10
    # a broken file: one line naming the file and the problem, exit status 2
    (d / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    rc = cli.main(["compare", *idx, "--out", str(tmp_path / "o2"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("beyondbp: error: ")
    assert "train-labels-idx1-ubyte.gz" in err[0] and "truncated or corrupt" in err[0]


def test_an_interrupted_comparison_keeps_the_runs_it_finished(tmp_path, monkeypatch):
    import json

    from beyondbp import methods
    from beyondbp.methods import _registry

    def interrupted(cfg):
        raise KeyboardInterrupt  # the user's Ctrl-C, or a job's time limit, during this row

    row = methods.Method("interrupted", "stops the comparison", build=interrupted)
    monkeypatch.setitem(_registry.REGISTRY, "interrupted", row)
    out = tmp_path / "cmp"
    kw = {"steps": 5, "widths": (8,), "progress": False, "out": out}
    with pytest.raises(KeyboardInterrupt):
        compare.compare(["backprop", "interrupted"], seeds=[3], **kw)
    kept = json.loads((out / compare.PARTIAL).read_text())["runs"]
    assert [(r["method"], r["seed"]) for r in kept] == [("backprop", 3)]
    assert len(kept[0]["history"]["train_loss"]) > 0 and not (out / "compare.json").exists()


def _interrupt_after_backprop(out, monkeypatch, **kw):
    """A comparison of backprop and a row that raises KeyboardInterrupt (seed 3): the partial
    file then holds backprop's run."""
    from beyondbp import methods
    from beyondbp.methods import _registry

    def interrupted(cfg):
        raise KeyboardInterrupt

    row = methods.Method("interrupted", "stops the comparison", build=interrupted)
    monkeypatch.setitem(_registry.REGISTRY, "interrupted", row)
    with pytest.raises(KeyboardInterrupt):
        compare.compare(["backprop", "interrupted"], seeds=[3], out=out, **kw)


def test_resume_keeps_finished_runs_and_refuses_to_overwrite_them(tmp_path, monkeypatch):
    import json

    out = tmp_path / "cmp"
    kw = {"steps": 5, "widths": (8,), "progress": False}
    _interrupt_after_backprop(out, monkeypatch, **kw)
    kept = json.loads((out / compare.PARTIAL).read_text())["runs"][0]
    # started again without resume: refused before any data is read, the file untouched
    with pytest.raises(ValueError, match=r"runs_so_far.json holds .* pass --resume"):
        compare.compare(["backprop"], seeds=[3], out=out, **kw)
    # other settings: refused, naming the setting that differs
    with pytest.raises(ValueError, match=r"steps 5 there, 6 now"):
        compare.compare(["backprop"], seeds=[3], out=out, resume=True, **{**kw, "steps": 6})
    # resumed with one more seed and another row: backprop seed 3 is kept, not trained again
    # (its wall time is the first process's), the rest run; the partial file is then removed
    res = compare.compare(["backprop", "fwdgrad"], seeds=[3, 4], out=out, resume=True, **kw)
    got = {(r["method"], r["seed"]): r for r in res["runs"]}
    assert set(got) == {("backprop", 3), ("fwdgrad", 3), ("backprop", 4), ("fwdgrad", 4)}
    assert got[("backprop", 3)]["wall_time_s"] == kept["wall_time_s"]
    assert got[("backprop", 4)]["wall_time_s"] != kept["wall_time_s"]
    assert res["config"]["kept_runs"] == [["backprop", 3]]
    assert (out / "compare.json").exists() and not (out / compare.PARTIAL).exists()


def test_resume_keeps_runs_not_asked_for(tmp_path, monkeypatch):
    """Resumed with fewer rows than were kept: the others go to compare.json's
    ``other_kept_runs`` (the partial file is removed, so nothing may be dropped)."""
    out = tmp_path / "cmp"
    kw = {"steps": 5, "widths": (8,), "progress": False}
    _interrupt_after_backprop(out, monkeypatch, **kw)
    res = compare.compare(["fwdgrad"], seeds=[3], out=out, resume=True, **kw)
    assert [(r["method"], r["seed"]) for r in res["other_kept_runs"]] == [("backprop", 3)]
    assert [r["method"] for r in res["rows"]] == ["fwdgrad"]


def test_resume_refuses_a_file_it_cannot_check(tmp_path):
    out = tmp_path / "cmp"
    out.mkdir()
    (out / compare.PARTIAL).write_text('{"runs": []}')  # written before resume existed
    with pytest.raises(ValueError, match="no settings to check"):
        compare.compare(["backprop"], steps=5, widths=(8,), progress=False, out=out, resume=True)


def test_resume_from_the_command_line(tmp_path, monkeypatch, capsys):
    out = tmp_path / "cmp"
    _interrupt_after_backprop(out, monkeypatch, steps=5, widths=(8,), progress=False)
    args = ["compare", "--methods", "backprop", "--steps", "5", "--widths", "8", "--seeds", "3"]
    args += ["--out", str(out), "--no-progress"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pass --resume" in err[0], err
    assert cli.main([*args, "--resume"]) == 0
    assert (out / "compare.json").exists() and not (out / compare.PARTIAL).exists()
