"""Merge ``benchmarks/baydin2022.py`` results of the same model and rate run as separate
processes (one seed each, to share a loaded machine), into one JSON and PNG with the mean
and std over all their seeds.

    python benchmarks/baydin2022_merge.py --out benchmarks/results/baydin2022_cnn \\
        benchmarks/results/baydin2022_cnn_seed0.json benchmarks/results/baydin2022_cnn_seed1.json

Every input keeps its own command and machine under ``sources``; each seed's FG/BP ratios
were timed inside its own process, so merging never compares times across processes.
"""

from __future__ import annotations

import argparse
import json

import _common
import baydin2022


def merge(results: list[dict]) -> dict:
    """One result with every model's ``per_seed`` concatenated and its ratios re-aggregated.

    Raises ``ValueError`` when two inputs disagree on a model's rate or steps, or repeat a seed.
    """
    out = {k: results[0][k] for k in ("paper", "settings", "batch", "decay_k")}
    out["mnist"], out["sources"] = (
        {},
        [{k: r.get(k) for k in ("command", "machine")} for r in results],
    )
    for r in results:
        for model, run in r["mnist"].items():
            have = out["mnist"].setdefault(
                model, {"lr": run["lr"], "steps": run["steps"], "per_seed": []}
            )
            if (have["lr"], have["steps"]) != (run["lr"], run["steps"]):
                raise ValueError(f"{model}: inputs differ in lr or steps; merge only equal set-ups")
            seeds = {s["seed"] for s in have["per_seed"]}
            if seeds & {s["seed"] for s in run["per_seed"]}:
                raise ValueError(f"{model}: a seed appears in two inputs")
            have["per_seed"] += run["per_seed"]
    for run in out["mnist"].values():
        run["per_seed"].sort(key=lambda s: s["seed"])
        run["ratios"] = baydin2022._aggregate(run["per_seed"])
    out["settings"]["seeds"] = sorted(
        {s["seed"] for m in out["mnist"].values() for s in m["per_seed"]}
    )
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inputs", nargs="+", help="baydin2022.py JSON results")
    ap.add_argument("--out", required=True, help="output path without extension")
    args = ap.parse_args(argv)
    results = []
    for path in args.inputs:
        with open(path) as f:
            results.append(json.load(f))
    out = merge(results)
    for model, run in out["mnist"].items():
        print(
            model, run["lr"], [s["seed"] for s in run["per_seed"]], json.dumps(run["ratios"])[:600]
        )
    _common.save(_common.out_name(args.out), out, baydin2022.plot(out))


if __name__ == "__main__":
    main()
