"""Full-MNIST accuracy of the fwdgrad methods beside backprop, same model and budget.

Runs the registered methods ``backprop``, ``fwdgrad`` (weight perturbation,
K = 1), ``fwdgrad-orthogonal`` (K = 16) and ``fwdgrad-local`` (activity
perturbation with local losses) through ``beyondbp.train`` on the official
MNIST files: the MethodConfig's MLP (784-256-256-10; the local method adds one
256-10 head), batch 64, the same number of steps and data order for all.

    python benchmarks/fwdgrad_accuracy.py [--epochs 3] [--data-dir ../shared/data/mnist]

Writes benchmarks/results/fwdgrad_accuracy.json and .png.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import jax

from beyondbp import datasets, methods, train

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
METHODS = ("backprop", "fwdgrad", "fwdgrad-orthogonal", "fwdgrad-local")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--data-dir", default=str(pathlib.Path(__file__).resolve().parents[2]
                                              / "shared" / "data" / "mnist"))
    ap.add_argument("--methods", default=",".join(METHODS))
    args = ap.parse_args()
    tr = datasets.load("mnist", "train", data_dir=args.data_dir)
    te = datasets.load("mnist", "test", data_dir=args.data_dir)
    steps = args.epochs * datasets.num_batches(len(tr), 64)
    cfg = methods.MethodConfig(key=jax.random.key(0), steps=steps)
    out = {"command": f"python benchmarks/fwdgrad_accuracy.py --epochs {args.epochs}",
           "model": "MLP 784-256-256-10 (fwdgrad-local: + one 256-10 local head), batch 64",
           "steps": steps, "results": {}}
    for name in args.methods.split(","):
        m = methods.get(name)
        h = train.train(m.build(cfg), tr, te, steps=steps, batch_size=64, seed=0, progress=False,
                        eval_every=max(1, steps // 10))
        out["results"][name] = {"description": m.description,
                                "final_test_accuracy": h["final_test_accuracy"],
                                "test_error_pct": 100 * (1 - h["final_test_accuracy"]),
                                "eval_steps": h["eval_steps"], "test_accuracy": h["test_accuracy"],
                                "step_time_ms": 1e3 * h["step_time_s"]}
        print(name, h["final_test_accuracy"], round(1e3 * h["step_time_s"], 2), "ms/step", flush=True)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "fwdgrad_accuracy.json").write_text(json.dumps(out, indent=2))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in out["results"].items():
        ax.plot(r["eval_steps"], [100 * (1 - a) for a in r["test_accuracy"]], marker="o", label=name)
    ax.set_yscale("log")
    ax.set_xlabel("step (batch 64)")
    ax.set_ylabel("test error (%)")
    ax.set_title(f"Full MNIST, {args.epochs} epochs, same model and budget")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "fwdgrad_accuracy.png", dpi=110)


if __name__ == "__main__":
    main()
