"""The ``--merge`` step of benchmarks whose runs are split across processes (one per recipe or
row and seed, as ``benchmarks/gpu_scale_session.sh`` runs them): the merged table must equal the
statistics of the union of the runs, computed here by hand, and overlaps or mismatched settings
must be refused rather than silently overwritten."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _bench import import_benchmark

SHARED = {
    "dataset": "fashion_mnist",
    "batch_size": 128,
    "budget": {"epochs": 3},
    "test_examples": 10000,
    "optimizer": "sgd",
}


def _recipes_part(path, model, recipe, seed, acc, **over):
    run = {"final_test_accuracy": acc, "test_accuracy": [acc], "eval_steps": [1], "steps": 1}
    part = {**SHARED, **over, "models": {model: {"runs": {recipe: {str(seed): run}}}}}
    path.write_text(json.dumps(part))
    return path


def test_lowbit_recipes_merge_equals_hand_statistics(tmp_path):
    lr = import_benchmark("lowbit_recipes")
    accs = {"float32": [0.87, 0.86, 0.875], "NVFP4_2025": [0.85, 0.86, 0.84]}
    files = [
        _recipes_part(tmp_path / f"{r}_{s}.json", "resnet", r, s, a)
        for r, vals in accs.items()
        for s, a in enumerate(vals)
    ]
    out = lr.merge(files, str(tmp_path / "merged.json"))
    summ = out["models"]["resnet"]["summary"]
    for r, vals in accs.items():
        assert summ[r]["mean"] == pytest.approx(np.mean(vals))
        assert summ[r]["std"] == pytest.approx(np.std(vals, ddof=1))
        assert summ[r]["seeds"] == [0, 1, 2]
    assert out["seeds"] == [0, 1, 2]
    assert list(out["models"]["resnet"]["runs"]) == ["float32", "NVFP4_2025"]  # RECIPES order
    assert json.loads((tmp_path / "merged.json").read_text())["merged_from"] == [
        str(f) for f in files
    ]


def test_lowbit_recipes_merge_refuses_overlap_and_mismatch(tmp_path):
    lr = import_benchmark("lowbit_recipes")
    a = _recipes_part(tmp_path / "a.json", "vit", "SUN2020", 0, 0.8)
    b = _recipes_part(tmp_path / "b.json", "vit", "SUN2020", 0, 0.7)
    with pytest.raises(SystemExit, match="seed 0 is in two files"):
        lr.merge([a, b], str(tmp_path / "m.json"))
    c = _recipes_part(tmp_path / "c.json", "vit", "SUN2020", 1, 0.7, budget={"epochs": 15})
    with pytest.raises(SystemExit, match="budget"):
        lr.merge([a, c], str(tmp_path / "m.json"))


def _ren_part(path, arch, row, seed, err, epochs=20, backend="cpu", **extra):
    settings = {"seeds": str(seed), "epochs": epochs, "warmup_epochs": 2, "batch_size": 128}
    settings |= {"lr": 0.05, "wd": 1e-4, "num_tangents": 1, "quick": False, **extra}
    part = {
        "settings": settings,
        "machine": {"backend": backend},
        "per_seed": {arch: {row: [{"test_error_pct": err, "wall_s": 1.0, "steps": 1}]}},
    }
    path.write_text(json.dumps(part))
    return path


def test_ren_merge_table(tmp_path):
    ren = import_benchmark("ren2023_mnist")
    errs = [2.55, 2.30, 2.49]
    files = [
        _ren_part(tmp_path / f"lg{s}.json", "M/1/16", "LG-FG-A", s, e) for s, e in enumerate(errs)
    ]
    files.append(_ren_part(tmp_path / "bp.json", "M/1/16", "BP", 0, 1.6))
    out = ren.merge(files, str(tmp_path / "ren"))
    row = out["table"]["M/1/16"]["LG-FG-A"]
    assert row["mean"] == pytest.approx(np.mean(errs))
    assert row["std"] == pytest.approx(np.std(errs, ddof=1))
    assert row["seeds"] == [0, 1, 2] and row["paper"] == 2.55
    assert out["table"]["M/1/16"]["BP"]["std"] == 0.0  # one seed: no spread claimed
    assert (tmp_path / "ren.png").is_file()
    other = _ren_part(tmp_path / "x.json", "M/1/16", "BP", 1, 1.5, epochs=50)
    with pytest.raises(SystemExit, match="settings"):
        ren.merge([files[0], other], str(tmp_path / "ren2"))
    # a CPU run that names its data set merges with a GPU run from before --dataset existed
    cpu = _ren_part(tmp_path / "w.json", "M/1/16", "FG-W", 0, 13.0, dataset="mnist")
    gpu = _ren_part(tmp_path / "g.json", "M/1/16", "BP", 0, 1.6, backend="gpu")
    both = ren.merge([gpu, cpu], str(tmp_path / "ren3"))
    assert set(both["table"]["M/1/16"]) == {"BP", "FG-W"}
    assert {m["backend"] for m in both["machines"].values()} == {"cpu", "gpu"}
    fashion = _ren_part(tmp_path / "f.json", "M/1/16", "BP", 1, 9.0, dataset="fashion_mnist")
    with pytest.raises(SystemExit, match="settings"):
        ren.merge([gpu, fashion], str(tmp_path / "ren4"))
