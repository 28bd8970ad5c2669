"""Full-MNIST accuracy of the fwdgrad methods beside backprop, same model and budget.

Runs the registered methods ``backprop``, ``fwdgrad`` (weight perturbation,
K = 1), ``fwdgrad-orthogonal`` (K = 16) and ``fwdgrad-local`` (activity
perturbation with local losses) through ``beyondbp.train`` on the official
MNIST files: the MethodConfig's MLP (784-256-256-10; the local method adds one
256-10 head), batch 64, the same number of steps and data order for all.

    python benchmarks/fwdgrad_accuracy.py [--epochs 3] [--data-dir ../shared/data/mnist]

Writes benchmarks/results/fwdgrad_accuracy.json and .png. One method for many
epochs, evaluated every epoch, under another name (runs on CPU or GPU alike;
the registered rows' schedules span the whole run):

    python benchmarks/fwdgrad_accuracy.py --methods fwdgrad-local --epochs 30 \
        --eval-every-epoch --out fwdgrad_local_30ep
"""

from __future__ import annotations

import argparse
import time

import _common
import jax

from beyondbp import datasets, methods, train

METHODS = ("backprop", "fwdgrad", "fwdgrad-orthogonal", "fwdgrad-local")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    _common.add_data_dir(ap)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--widths", default="256,256", help="hidden widths, e.g. 1024,1024")
    _common.add_switch(
        ap, "--eval-every-epoch", "test accuracy after every epoch (default: 10 points per run)"
    )
    ap.add_argument(
        "--out",
        default="fwdgrad_accuracy",
        help="results name: benchmarks/results/<out>.json and .png",
    )
    args = ap.parse_args(argv)
    if not args.out or "/" in args.out or args.out.startswith("."):
        ap.error(f"--out {args.out!r}: give a plain file name stem, e.g. fwdgrad_local_30ep")
    widths = tuple(int(w) for w in args.widths.split(","))
    tr = datasets.load("mnist", "train", data_dir=args.data_dir)
    te = datasets.load("mnist", "test", data_dir=args.data_dir)
    per_epoch = datasets.num_batches(len(tr), 64)
    steps = args.epochs * per_epoch
    eval_every = per_epoch if args.eval_every_epoch else max(1, steps // 10)
    cfg = methods.MethodConfig(key=jax.random.key(0), steps=steps, widths=widths)
    arch = "-".join(map(str, (784, *widths, 10)))
    out = {
        "model": f"MLP {arch} (fwdgrad-local: + one {widths[-1]}-10 local head per hidden "
        "layer but the last, which is the prediction head), batch 64",
        "steps": steps,
        "steps_per_epoch": per_epoch,
        "results": {},
    }
    for name in args.methods.split(","):
        m = methods.get(name)
        t0 = time.perf_counter()
        h = train.train(
            m.build(cfg),
            tr,
            te,
            steps=steps,
            batch_size=64,
            seed=0,
            progress=False,
            eval_every=eval_every,
        )
        wall = time.perf_counter() - t0
        out["results"][name] = _row(m, h, wall, args.epochs)
        print(
            name,
            h["final_test_accuracy"],
            round(1e3 * h["step_time_s"], 2),
            "ms/step",
            round(wall / args.epochs, 1),
            "s/epoch (incl. compile and evals)",
            flush=True,
        )
        _common.save(args.out, out, argv=argv)  # after every method: partial runs keep it
    _common.save(args.out, out, plot(out, arch, args.epochs), argv=argv)


def _row(m, h: dict, wall: float, epochs: int) -> dict:
    """One method's result: accuracy and error per evaluation, step time, wall time."""
    return {
        "description": m.description,
        "final_test_accuracy": h["final_test_accuracy"],
        "test_error_pct": 100 * (1 - h["final_test_accuracy"]),
        "eval_steps": h["eval_steps"],
        "test_accuracy": h["test_accuracy"],
        "test_error_pct_per_eval": [100 * (1 - a) for a in h["test_accuracy"]],
        "step_time_ms": 1e3 * h["step_time_s"],
        "wall_s": wall,
        "wall_s_per_epoch": wall / epochs,
        "transform_refused_steps": h.get("transform_refused_steps"),
        "skipped_nonfinite_steps": h.get("skipped_nonfinite_steps"),
    }


def plot(out: dict, arch: str, epochs: int):
    """Test error against step, one line per method (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in out["results"].items():
        ax.plot(
            r["eval_steps"], [100 * (1 - a) for a in r["test_accuracy"]], marker="o", label=name
        )
    ax.set_yscale("log")
    ax.set_xlabel("step (batch 64)")
    ax.set_ylabel("test error (%)")
    ax.set_title(f"Full MNIST, {arch}, {epochs} epochs, same model and budget")
    ax.legend()
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
