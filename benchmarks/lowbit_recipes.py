"""lowbit recipes at today's scale: ResNet-20 and a small ViT, float32 against five 4-bit recipes.

    .venv/bin/python benchmarks/lowbit_recipes.py --data-dir ../shared/data/fashion_mnist \\
        --epochs 15 --seeds 0,1,2                       # the issue's budget (GPU: minutes)
    .venv/bin/python benchmarks/lowbit_recipes.py --steps 50 --seeds 0 --models resnet  # smoke

Rows (``lowbit.recipes``, applied by ``lowbit.apply_rules`` to the same model):

* ``float32``;
* ``SUN2020``: Sun et al. (NeurIPS 2020) INT4 weights/activations, radix-4 FP4 gradients with
  GradScale and two-phase rounding, first/last layer and 1x1 convolutions in 8 bits;
* ``SUN2020_RELU``: SUN2020 with unsigned (UINT4, PACT-like) activations in the 4-bit layers,
  whose inputs are ReLU outputs on the ResNet (the ``lowbit`` row's ResNet recipe,
  ``beyondbp.methods.lowbit_rows.SUN2020_RELU``; on the ViT, whose 4-bit layers read signed
  values, it is not the paper's choice);
* ``SUN2020_ALL_4BIT``: the same without the 8-bit exceptions;
* ``SUN2020_E2M1_GRADIENTS``: SUN2020 with E2M1 instead of radix-4 gradients;
* ``NVFP4_2025``: NVIDIA's 2025 NVFP4 recipe; ``MXFP4``: OCP MXFP4 in every GEMM.

Every row: same model, seeds, data order and optimizer (SGD momentum 0.9, lr 0.05 on a cosine
to 0, the ``lowbit`` row's schedule). Accuracy is the mean ± std (ddof 1) over ``--seeds``.
Step times are measured side by side after training: every recipe's jitted training step on
the same batch of ``--batch-size``, in interleaved rounds (so machine load hits every row
alike), the median per row and its ratio to float32. Writes
``benchmarks/results/lowbit_recipes.{json,png}`` (or ``--out``), the JSON after every run.
Runs split across processes (``benchmarks/gpu_scale_session.sh``: one per recipe and seed)
are put side by side with ``--merge FILE... --out PATH``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import statistics
import time

import _common
import jax
import numpy as np
import optax

import lowbit
from beyondbp import datasets, methods, train
from beyondbp.methods import lowbit_rows
from lowbit import recipes

RECIPES = {
    "float32": None,
    "SUN2020": recipes.SUN2020,
    # the `lowbit` row's ResNet recipe: SUN2020 with UINT4 (PACT-like) activations after ReLU
    "SUN2020_RELU": lowbit_rows.SUN2020_RELU,
    "SUN2020_ALL_4BIT": recipes.SUN2020_ALL_4BIT,
    "SUN2020_E2M1_GRADIENTS": recipes.SUN2020_E2M1_GRADIENTS,
    "NVFP4_2025": recipes.NVFP4_2025,
    "MXFP4": recipes.MXFP4,
}
#: Ablations of the ResNet's SUN2020_RELU, run only when named in ``--recipes``: the MLP row's
#: stop-31 gradients (LUQ's radix-2 logarithmic FP4, one grid, no two-phase rounding), and the
#: whole MLP row rule (also a float activation scale per sample and a GradScale per channel) in
#: the 4-bit layers, the paper's 8-bit exceptions kept.
ABLATIONS = {
    "SUN2020_RELU_RADIX2": lowbit.Recipe(
        name="SUN2020_RELU_RADIX2",
        rules=lowbit_rows.SUN2020_RELU.rules[:-1]
        + (
            lowbit.Rule(
                config=dataclasses.replace(
                    lowbit_rows.RECIPE, gradients=lowbit.RADIX2_FP4, two_phase=False
                )
            ),
        ),
        description="SUN2020_RELU with radix-2 logarithmic FP4 gradients (LUQ)",
    ),
    "SUN2020_RELU_ROW": lowbit.Recipe(
        name="SUN2020_RELU_ROW",
        rules=lowbit_rows.SUN2020_RELU.rules[:-1] + (lowbit.Rule(config=lowbit_rows.ROW_4BIT),),
        description="SUN2020's 8-bit exceptions, the MLP row's ROW_4BIT in the 4-bit layers",
    ),
}
#: every name ``--recipes`` accepts, in table order
ALL_RECIPES = {**RECIPES, **ABLATIONS}
#: which gradient format each 4-bit row uses (for the "which format wins" line)
FAMILY = {
    "SUN2020": "radix-4 FP4",
    "SUN2020_RELU": "radix-4 FP4",
    "SUN2020_RELU_RADIX2": "radix-2 FP4",
    "SUN2020_RELU_ROW": "radix-2 FP4",
    "SUN2020_ALL_4BIT": "radix-4 FP4",
    "SUN2020_E2M1_GRADIENTS": "E2M1",
    "NVFP4_2025": "block-scaled",
    "MXFP4": "block-scaled",
}


def _setup(model: str, recipe: str, seed: int, steps: int, shape, classes: int) -> methods.Setup:
    cfg = methods.MethodConfig(
        key=jax.random.key(seed),
        model=model,
        input_shape=shape,
        num_classes=classes,
        steps=steps,
    )
    apply, params = cfg.build_model(recipe=ALL_RECIPES[recipe])
    tx = optax.sgd(lowbit_rows.rate(steps), momentum=0.9)
    return methods.Setup(params=params, apply=apply, tx=tx)


def run(model, recipe, seed, tr, te, args) -> dict:
    steps = args.steps or args.epochs * datasets.num_batches(len(tr), args.batch_size)
    setup = _setup(model, recipe, seed, steps, tr.input_shape, tr.num_classes)
    return _common.train_summary(
        setup,
        tr,
        te,
        steps=steps,
        batch_size=args.batch_size,
        seed=seed,
        evals=args.evals,
        desc=f"{model} {recipe} s{seed}",
    )


def time_side_by_side(model: str, names, tr, args) -> dict:
    """Median step time per recipe over interleaved rounds, and its ratio to float32."""
    batch = next(datasets.batches(tr, args.batch_size, seed=0))
    x, y = batch[0], batch[1]
    steps, states = {}, {}
    for n in names:
        s = _setup(model, n, 0, 1000, tr.input_shape, tr.num_classes)
        steps[n] = jax.jit(train.make_step(s))
        states[n] = (s.params, s.tx.init(s.params))
        jax.block_until_ready(steps[n](*states[n], x, y))  # compile outside the clock
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.timing_repeats):
        for n in names:
            p, o = states[n]
            t0 = time.perf_counter()
            for _ in range(args.timing_iters):
                p, o, _ok = steps[n](p, o, x, y)
            jax.block_until_ready(p)
            times[n].append((time.perf_counter() - t0) / args.timing_iters)
    med = {n: statistics.median(t) for n, t in times.items()}
    ref = med.get("float32")
    return {
        n: {
            "step_time_s": med[n],
            "per_round_s": times[n],
            "ratio_to_float32": None if ref is None else med[n] / ref,
        }
        for n in names
    }


def summarise(rows: dict) -> dict:
    """Mean ± std per recipe, and which gradient/format family wins (or that the spread hides it)."""
    out = {}
    for n, runs in rows.items():
        acc = np.array([r["final_test_accuracy"] for r in runs.values()], np.float64)
        out[n] = {
            "mean": float(acc.mean()),
            "std": float(acc.std(ddof=1)) if acc.size > 1 else 0.0,
            "seeds": [int(s) for s in runs],
        }
    four = sorted((n for n in out if n in FAMILY), key=lambda n: -out[n]["mean"])
    if len(four) >= 2:
        a, b = four[0], four[1]
        gap = out[a]["mean"] - out[b]["mean"]
        spread = max(out[a]["std"], out[b]["std"])
        hidden = len(out[a]["seeds"]) < 2 or gap <= spread
        out["_winner"] = {
            "best": a,
            "family": FAMILY[a],
            "runner_up": b,
            "gap_points": 100 * gap,
            "spread_points": 100 * spread,
            "verdict": (
                f"{a} ({FAMILY[a]}) leads {b} by {100 * gap:.2f} points"
                + (
                    f", within the seed spread ({100 * spread:.2f}): the difference is hidden"
                    if hidden
                    else f", more than the seed spread ({100 * spread:.2f})"
                )
            ),
        }
    return out


def table(result: dict) -> str:
    lines = []
    for model, res in result["models"].items():
        lines += [
            f"\n{model}",
            "| recipe | test acc (mean ± std) | step ms | x float32 |",
            "|---|---|---|---|",
        ]
        for n, s in res.get("summary", {}).items():
            if n.startswith("_"):
                continue
            t = res.get("timing", {}).get(n, {})
            ms = "-" if not t else f"{1e3 * t['step_time_s']:.1f}"
            ratio = t.get("ratio_to_float32")
            lines.append(
                f"| {n} | {100 * s['mean']:.2f} ± {100 * s['std']:.2f} | {ms} | "
                f"{'-' if ratio is None else f'{ratio:.2f}'} |"
            )
        if "_winner" in res.get("summary", {}):
            lines.append(res["summary"]["_winner"]["verdict"])
    return "\n".join(lines)


def plot(result: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(result["models"])
    fig, axes = plt.subplots(2, len(models), figsize=(6 * len(models), 7), squeeze=False)
    for j, m in enumerate(models):
        summ = {n: s for n, s in result["models"][m].get("summary", {}).items() if n[0] != "_"}
        names = list(summ)
        acc = [100 * summ[n]["mean"] for n in names]
        err = [100 * summ[n]["std"] for n in names]
        ax = axes[0, j]
        ax.barh(
            range(len(names)),
            acc,
            xerr=err,
            color=["gray" if n == "float32" else "C0" for n in names],
        )
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set(xlabel="test accuracy % (mean ± std over seeds)", title=f"{m}: accuracy")
        if acc:
            ax.set_xlim(max(0.0, min(acc) - 5), min(100.0, max(acc) + 2))
        timing = result["models"][m].get("timing", {})
        tn = [n for n in names if timing.get(n, {}).get("ratio_to_float32") is not None]
        ax = axes[1, j]
        ax.barh(range(len(tn)), [timing[n]["ratio_to_float32"] for n in tn], color="C1")
        ax.set_yticks(range(len(tn)), tn, fontsize=8)
        ax.axvline(1.0, c="k", lw=1)
        ax.set(xlabel="step time / float32 (side by side, median)", title=f"{m}: step time")
    fig.tight_layout()
    return fig


def merge(paths, out: str, argv=None) -> dict:
    """One result from several runs' JSONs (runs split across processes, e.g. one per recipe
    and seed on a GPU): their runs side by side, summarised again, table and plot.

    The runs must share the data set, batch size and budget; a (model, recipe, seed) that two
    files hold is an error, not a silent overwrite.
    """
    result: dict = {"merged_from": [str(x) for x in paths], "models": {}}
    for path in paths:
        part = json.loads(pathlib.Path(path).read_text())
        for k in ("dataset", "batch_size", "budget", "test_examples", "optimizer"):
            if result.setdefault(k, part[k]) != part[k]:
                raise SystemExit(f"--merge: {path} has {k}={part[k]!r}, others {result[k]!r}")
        result.setdefault("machines", []).append(part.get("machine"))
        for model, res in part["models"].items():
            runs = result["models"].setdefault(model, {"runs": {}})["runs"]
            for n, by_seed in res["runs"].items():
                for seed, r in by_seed.items():
                    if seed in runs.setdefault(n, {}):
                        raise SystemExit(f"--merge: {model} {n} seed {seed} is in two files")
                    runs[n][seed] = r
    for res in result["models"].values():
        res["runs"] = {n: res["runs"][n] for n in ALL_RECIPES if n in res["runs"]}
        res["summary"] = summarise(res["runs"])
    result["seeds"] = sorted(
        {int(s) for res in result["models"].values() for r in res["runs"].values() for s in r}
    )
    print(table(result))
    _common.save(_common.out_name(out), result, plot(result), argv=argv)
    return result


def _args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="merge these result files (runs split across processes) into --out, then stop",
    )
    _common.add_data_dir(p)
    p.add_argument("--dataset", default="fashion_mnist")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=_common.positive_int, default=None)
    budget.add_argument("--epochs", type=_common.positive_int, default=15)
    p.add_argument("--batch-size", type=_common.positive_int, default=128)
    p.add_argument("--seeds", type=_common.int_list, default=(0, 1, 2))
    p.add_argument("--models", default="resnet,vit")
    p.add_argument("--recipes", default=",".join(RECIPES))
    p.add_argument("--timing-repeats", type=_common.positive_int, default=5)
    p.add_argument("--timing-iters", type=_common.positive_int, default=3)
    p.add_argument("--no-timing", action="store_true", help="skip the side-by-side step timing")
    p.add_argument(
        "--evals", type=_common.positive_int, default=5, help="test evaluations per run (>= 1)"
    )
    p.add_argument(
        "--test-examples",
        type=_common.positive_int,
        default=None,
        help="evaluate on the first N test images only (smoke runs; default: all)",
    )
    p.add_argument(
        "--out",
        default=str(_common.RESULTS / "lowbit_recipes.json"),
        help="result path (.json; .png beside it)",
    )
    args = p.parse_args(argv)
    for n in args.recipes.split(","):
        if n not in ALL_RECIPES:
            p.error(f"--recipes: {n!r} is not one of {list(ALL_RECIPES)}")
    for m in args.models.split(","):
        if m not in ("resnet", "vit", "mlp", "cnn"):
            p.error(f"--models: {m!r} is not one of resnet, vit, mlp, cnn")
    return args


def main(argv=None):
    args = _args(argv)
    if args.merge:
        merge(args.merge, args.out, argv)
        return
    tr = datasets.load(args.dataset, "train", data_dir=args.data_dir)
    te = datasets.load(args.dataset, "test", data_dir=args.data_dir)
    if args.test_examples is not None:
        n = args.test_examples
        te = dataclasses.replace(te, images=te.images[:n], labels=te.labels[:n])
    names = args.recipes.split(",")
    save_as = _common.out_name(args.out)
    result = {
        "dataset": args.dataset,
        "batch_size": args.batch_size,
        "seeds": list(args.seeds),
        "budget": {"steps": args.steps} if args.steps else {"epochs": args.epochs},
        "test_examples": len(te),
        "optimizer": "SGD momentum 0.9, lr 0.05 on a cosine to 0 (lowbit_rows.rate)",
        "models": {},
    }
    for model in args.models.split(","):
        res = result["models"].setdefault(model, {"runs": {}})
        for seed in args.seeds:  # seed-major: a partial run has every recipe on the first seed
            for n in names:
                r = run(model, n, seed, tr, te, args)
                res["runs"].setdefault(n, {})[str(seed)] = r
                res["summary"] = summarise(res["runs"])
                print(
                    f"{model} {n:24s} seed {seed} acc {r['final_test_accuracy']:.4f} "
                    f"({r['steps']} steps, {r['wall_s']:.0f} s)",
                    flush=True,
                )
                _common.save(save_as, result, argv=argv)
        if not args.no_timing:
            res["timing"] = time_side_by_side(model, names, tr, args)
            _common.save(save_as, result, argv=argv)
    print(table(result))
    _common.save(save_as, result, plot(result), argv=argv)


if __name__ == "__main__":
    main()
