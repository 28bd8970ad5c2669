"""lowbit accuracy: 4-bit training vs float32 on full MNIST (MLP and CNN) plus ablations.

    .venv/bin/python benchmarks/lowbit_accuracy.py --data-dir ../shared/data/mnist [--epochs 3]

Same model, seed, data order, optimizer (SGD momentum 0.9, lr 0.05 cosine) and
budget for every row; only the ``lowbit.QuantConfig`` changes. Rows: float32;
the full recipe (INT4 weights with SAWB, UINT4 activations, radix-4 FP4
gradients with GradScale and TPR, nearest rounding); and one ablation each:
without GradScale, without TPR, E2M1 instead of radix-4 FP4 for gradients,
stochastic instead of nearest gradient rounding. Issue target: the recipe within
0.5 points of float32. Writes ``benchmarks/results/lowbit_accuracy.{json,png}``
(the JSON is rewritten after every run, so a partial run keeps what it finished).
"""

from __future__ import annotations

import argparse
import json

import _common
import jax
import optax

import lowbit
from beyondbp import datasets, methods
from beyondbp.methods import lowbit_rows as ml

RECIPE = ml.RECIPE
VARIANTS = {
    "float32": None,
    "4-bit recipe": RECIPE,
    "no GradScale": lowbit.QuantConfig(activations=lowbit.UINT4, gradient_scaling="none"),
    "no TPR (even grid twice)": lowbit.QuantConfig(activations=lowbit.UINT4, two_phase=False),
    "E2M1 gradients (no TPR)": lowbit.QuantConfig(
        activations=lowbit.UINT4, gradients=lowbit.E2M1, two_phase=False
    ),
    "stochastic gradient rounding": lowbit.QuantConfig(
        activations=lowbit.UINT4, gradient_rounding="stochastic"
    ),
}


def run(model: str, name: str, tr, te, epochs: int, batch: int, seed: int) -> dict:
    steps = epochs * datasets.num_batches(len(tr), batch)
    cfg = methods.MethodConfig(
        key=jax.random.key(seed), model=model, widths=(1024, 1024), steps=steps
    )
    config = VARIANTS[name]
    apply, params = cfg.build_model() if config is None else ml.build_model(cfg, config)
    tx = optax.sgd(optax.cosine_decay_schedule(0.05, steps), momentum=0.9)
    setup = methods.Setup(params=params, apply=apply, tx=tx)
    summary = _common.train_summary(
        setup,
        tr,
        te,
        steps=steps,
        batch_size=batch,
        seed=seed,
        evals=epochs,
        desc=f"{model} {name}",
    )
    return {**summary, "config": repr(config)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_data_dir(p)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", default="mlp,cnn")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument(
        "--out",
        default=str(_common.RESULTS / "lowbit_accuracy.json"),
        help="result path (.json; .png beside it); an existing file is updated",
    )
    args = p.parse_args(argv)
    tr = datasets.load(args.dataset, "train", data_dir=args.data_dir)
    te = datasets.load(args.dataset, "test", data_dir=args.data_dir)
    save_as = _common.out_name(args.out)
    out = _common.RESULTS / f"{save_as}.json"
    result = json.loads(out.read_text()) if out.exists() else {}
    # this run's command and machine replace those of the file it updates
    result.update(
        {
            "command": _common.command(argv),
            "machine": _common.machine(),
            "dataset": args.dataset,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "optimizer": "SGD momentum 0.9, lr 0.05 cosine",
        }
    )
    for model in args.models.split(","):
        result.setdefault(model, {})
        for name in args.variants.split(","):
            r = run(model, name, tr, te, args.epochs, args.batch_size, args.seed)
            result[model][name] = r
            print(
                f"{model} {name:32s} acc {r['final_test_accuracy']:.4f}  "
                f"step {r['step_time_s'] * 1e3:.1f} ms  wall {r['wall_s']:.0f} s",
                flush=True,
            )
            _common.save(save_as, result)
    _common.save(save_as, result, plot(result))


def plot(result: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in ("mlp", "cnn") if m in result]
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, m in zip(axes[0], models):
        names = list(result[m])
        acc = [100 * result[m][n]["final_test_accuracy"] for n in names]
        ax.barh(range(len(names)), acc, color=["gray" if n == "float32" else "C0" for n in names])
        ax.set_yticks(range(len(names)), names, fontsize=8)
        if "float32" in result[m]:
            ref = 100 * result[m]["float32"]["final_test_accuracy"]
            ax.axvline(ref - 0.5, ls="--", c="r", lw=1, label="float32 - 0.5 pt")
            ax.legend(fontsize=8)
        # zoom on the interesting range; collapsed runs (no GradScale) are labelled at the edge
        lo = min([a for a in acc if a > 90] + [97]) - 1.5
        ax.set_xlim(lo, 100)
        for i, a in enumerate(acc):
            ax.text(
                max(a, lo),
                i,
                f" {a:.2f}" + (" (off scale)" if a < lo else ""),
                va="center",
                fontsize=8,
            )
        ax.set(
            title=f"{m.upper()} on {result.get('dataset')}, {result.get('epochs')} epochs",
            xlabel="test accuracy (%)",
        )
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
