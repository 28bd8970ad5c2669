"""Why two registered recipes failed on data they were not tuned on, measured: one epoch each.

1. ``analog-eqprop`` (ideal devices): the raw per-layer rates against normalised (NLMS) steps,
   crossed with clipped against linear output units. Also the output layer's LMS step
   ``lr (1 + mean |h|^2)`` at initialisation for each data set: LMS is stable below 2.
2. ``lowbit``: a constant rate against the cosine over the run, beside float32 backprop with
   both schedules.

    python benchmarks/robust_recipes_ablation.py --dataset fashion_mnist --data-dir DIR [--seed 0]

Writes ``benchmarks/results/robust_recipes_ablation_<dataset>.json`` and ``.png``.
"""

from __future__ import annotations

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _common

import analog
from beyondbp import methods, train
from beyondbp.methods import analog_rows, lowbit_rows


def output_lms_step(ds, rates, n=512) -> float:
    """``lr_out * (1 + mean |h|^2)`` of a fresh network's free phase on ``n`` images."""
    x = jnp.asarray(ds.images[:n].reshape(n, -1), jnp.float32) / 255.0
    p = analog.init_energy_network(
        jax.random.key(0), (x.shape[1], analog_rows.HIDDEN, ds.num_classes)
    )
    zeros = (jnp.zeros((n, analog_rows.HIDDEN)), jnp.zeros((n, ds.num_classes)))
    (h, _), _ = analog.relax(
        p, x, zeros, jnp.zeros((n, ds.num_classes)), 0.0, analog_rows.FREE_STEPS
    )
    return float(rates[1] * (1.0 + jnp.mean(jnp.sum(h**2, axis=1))))


def dead_outputs(setup, params, ds, n=2000) -> int:
    out = np.asarray(setup.apply(params, ds.images[:n].reshape(n, -1).astype(np.float32) / 255))
    return int((out <= 0).all(0).sum())


def main(argv=None) -> int:
    args, tr, te, steps, cfg = _common.ablation_setup(__doc__.split("\n")[0], argv)

    def run(setup):
        h = train.train(
            setup, tr, te, steps=steps, batch_size=args.batch_size, seed=args.seed, progress=False
        )
        return h

    rows = []
    for normalize, rates in ((False, analog_rows.LAYER_LR), (True, analog_rows.NLMS_RATES)):
        for linear in (False, True):
            setup = analog_rows.build_eqprop(
                cfg, normalize=normalize, rates=rates, linear_output=linear
            )
            h = run(setup)
            rows.append(
                {
                    "row": "analog-eqprop",
                    "normalize": normalize,
                    "rates": list(rates),
                    "linear_output": linear,
                    "test_accuracy": h["final_test_accuracy"],
                    "dead_outputs": dead_outputs(setup, h["params"], te),
                }
            )
            print(rows[-1], flush=True)
    for name in ("backprop", "lowbit"):
        for sched in ("constant", "cosine"):
            lr = lowbit_rows.LR if sched == "constant" else lowbit_rows.rate(steps)
            apply, params = lowbit_rows.build_model(cfg) if name == "lowbit" else cfg.build_model()
            h = run(methods.Setup(params=params, apply=apply, tx=optax.sgd(lr, momentum=0.9)))
            rows.append({"row": name, "schedule": sched, "test_accuracy": h["final_test_accuracy"]})
            print(rows[-1], flush=True)
    result = {
        "dataset": args.dataset,
        "seed": args.seed,
        "steps": steps,
        "rows": rows,
        "output_lms_step_raw_rates": output_lms_step(tr, analog_rows.LAYER_LR),
        "nlms_output_step": analog_rows.NLMS_RATES[1],
    }
    fig = plot(rows, args.dataset, args.seed)
    _common.save(f"robust_recipes_ablation_{args.dataset}", result, fig)
    return 0


def plot(rows: list[dict], dataset: str, seed: int):
    """Test accuracy of every row, one bar each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    labels = [
        (
            f"eqprop {'NLMS' if r['normalize'] else 'raw'} {'linear' if r['linear_output'] else 'clipped'}"
            if r["row"] == "analog-eqprop"
            else f"{r['row']} {r['schedule']}"
        )
        for r in rows
    ]
    ax.barh(labels, [r["test_accuracy"] for r in rows], color="tab:blue")
    ax.set(
        xlabel="test accuracy after one epoch",
        xlim=(0, 1),
        title=f"{dataset}, seed {seed}: what each fixed rule changes",
    )
    for i, r in enumerate(rows):
        ax.text(r["test_accuracy"] + 0.01, i, f"{r['test_accuracy']:.3f}", va="center", fontsize=8)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    raise SystemExit(main())
