"""Where ``fwdgrad-local`` loses accuracy against backprop: the local losses or the estimator.

Every variant trains the row's network (``fwdgrad.LocalMLP``, 784-256-256-10 with a linear head
per hidden layer and a layer norm on the second block's input) with the row's optimizer, Adam
3e-3 on a cosine to 0 over the run; only the gradient differs:

* ``exact local``: ``jax.grad`` of the sum of the local losses, each block's input a constant
  (Ren et al. 2023, sec. 4; Belilovsky et al. 2019): the ceiling of any forward-gradient
  estimate of those losses. If it trails backprop, the gap is the greedy local losses;
* ``end-to-end backprop``: ``jax.grad`` of the last head's loss through both blocks;
* forward-gradient estimates (``fwdgrad.activity_forward_gradient``, ReLU-masked Rademacher
  tangents, group-wise local losses, Ren et al. sec. 3-4) with ``K`` tangents per example,
  groups of ``d`` units, and heads either forward-perturbed (``(10 - 1)|g|^2`` noise on the
  logits) or given their exact local gradient. Each records the block estimate's second moment
  ``1 + (d - 1) / K`` in units of ``|g|^2`` (Baydin et al. 2022, Thm. 1).

The registered ``backprop`` row (SGD 0.05, momentum 0.9, cosine to 0) is trained beside them.

    python benchmarks/fwdgrad_local_gap.py --dataset fashion_mnist --data-dir DIR [--epochs 1]

Writes ``benchmarks/results/fwdgrad_local_gap_<dataset>_<epochs>ep.json`` and ``.png``.
"""

from __future__ import annotations

import pathlib
import sys
import time

import jax
import optax
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _common

import fwdgrad
from beyondbp import methods, models, train
from beyondbp.methods import fwdgrad_rows
from fwdgrad._activity import _block_input, _dense

#: (label, tangents K, group size d, head gradient) of the forward-gradient variants; the last
#: is the registered row (K from fwdgrad_rows.local_num_tangents, exact heads).
ESTIMATES = (
    ("K=1, groups of 8, perturbed heads (the row before)", 1, 8, "forward"),
    ("K=1, groups of 8, exact heads", 1, 8, "exact"),
    ("K=4, groups of 8, exact heads", 4, 8, "exact"),
    ("K=16, groups of 8, perturbed heads", 16, 8, "forward"),
    ("K=1, groups of 2, exact heads", 1, 2, "exact"),
    ("K=7, groups of 8, exact heads (the row now)", 7, 8, "exact"),
)


def local_losses(params, x, y):
    """Sum of the blocks' head losses, each block reading a stop-gradient input (the row's
    network, ``fwdgrad.LocalMLP``'s ``local_logits``, written on the parameter dict)."""
    h, total = x.reshape(x.shape[0], -1), 0.0
    for i in sorted(params["layers"]):
        h = jax.nn.relu(
            _dense(params["layers"][i], _block_input(jax.lax.stop_gradient(h), i, True))
        )
        logits = _dense(params["heads"][i], h)
        total = total + optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return total


def exact_local_gradient() -> optax.GradientTransformationExtraArgs:
    """``jax.grad`` of :func:`local_losses` on ``batch=(x, y)`` (the incoming updates ignored)."""

    def update(updates, state, params=None, *, batch=None, **extra):
        del updates, extra
        return jax.grad(local_losses)(params, *batch), state

    return optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)


def local_setup(cfg: methods.MethodConfig, gradient: str, *, k=1, group=8, head="forward"):
    net = fwdgrad.LocalMLP((cfg.num_inputs, *cfg.widths, cfg.num_classes), rngs=nnx.Rngs(cfg.seed))
    apply, params = models.functional(net)
    adam = fwdgrad_rows.adam_cosine(fwdgrad_rows.LR_LOCAL_ADAM)(cfg)
    if gradient == "backprop":
        return methods.Setup(params=params, apply=apply, tx=adam, needs_grad=True)
    if gradient == "exact":
        est = exact_local_gradient()
    else:
        est = fwdgrad.activity_forward_gradient(
            seed=cfg.seed,
            num_groups=min(cfg.widths) // group,
            num_tangents=k,
            head_grad=head,
        )
    return methods.Setup(params=params, apply=apply, tx=optax.chain(est, adam), needs_grad=False)


def main(argv=None) -> int:
    args, tr, te, steps, cfg = _common.ablation_setup(__doc__.split("\n")[0], argv, epochs=True)
    runs = [
        ("backprop (the registered row)", methods.get("backprop").build(cfg), {}),
        ("exact local gradients", local_setup(cfg, "exact"), {"second_moment": 1.0}),
        ("end-to-end backprop, same network", local_setup(cfg, "backprop"), {}),
    ]
    for label, k, d, head in ESTIMATES:
        setup = local_setup(cfg, "forward", k=k, group=d, head=head)
        runs.append(
            (
                label,
                setup,
                {"tangents": k, "group": d, "head_grad": head, "second_moment": 1 + (d - 1) / k},
            )
        )
    rows = []
    for label, setup, extra in runs:
        t0 = time.time()
        h = train.train(
            setup, tr, te, steps=steps, batch_size=args.batch_size, seed=args.seed, progress=False
        )
        rows.append(
            {
                "variant": label,
                **extra,
                "test_accuracy": h["final_test_accuracy"],
                "step_time_s": h["step_time_s"],
                "wall_s": time.time() - t0,
            }
        )
        print(rows[-1], flush=True)
    result = {
        "dataset": args.dataset,
        "seed": args.seed,
        "epochs": args.epochs,
        "steps": steps,
        "rows": rows,
    }
    name = f"fwdgrad_local_gap_{args.dataset}_{args.epochs}ep"
    _common.save(name, result, plot(rows, args.dataset, args.epochs))
    return 0


def plot(rows: list[dict], dataset: str, epochs: int):
    """Test accuracy of every variant, one bar each, backprop's as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.barh([r["variant"] for r in rows], [r["test_accuracy"] for r in rows], color="tab:blue")
    ax.axvline(rows[0]["test_accuracy"], color="k", lw=1, ls="--")
    lo = min(r["test_accuracy"] for r in rows)
    ax.set(
        xlim=(lo - 0.02, 1.0 if lo > 0.9 else rows[0]["test_accuracy"] + 0.02),
        xlabel=f"test accuracy after {epochs} epoch(s)",
        title=f"fwdgrad-local's gap to backprop on {dataset}: local losses or estimator",
    )
    ax.invert_yaxis()
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    sys.exit(main())
