"""Reference: float32 backprop MLP 784-1024-1024-10 on full MNIST (target >= 98% test accuracy).

    .venv/bin/python benchmarks/foundation_backprop_mnist.py   # MNIST from --data-dir or $BEYONDBP_DATA

Writes benchmarks/results/foundation_backprop_mnist.{json,png}.
"""

from __future__ import annotations

import argparse

import _common
import jax
import optax

from beyondbp import datasets, methods


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_data_dir(p)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    tr = datasets.load("mnist", "train", data_dir=args.data_dir)
    te = datasets.load("mnist", "test", data_dir=args.data_dir)
    steps = args.epochs * datasets.num_batches(len(tr), args.batch_size)
    cfg = methods.MethodConfig(key=jax.random.key(args.seed), widths=(1024, 1024), steps=steps)
    apply, params = cfg.build_model()
    sched = optax.cosine_decay_schedule(0.05, steps)
    setup = methods.Setup(params=params, apply=apply, tx=optax.sgd(sched, momentum=0.9))
    h = _common.train_history(
        setup,
        tr,
        te,
        args,
        steps=steps,
        eval_every=steps // args.epochs,
        desc="backprop 784-1024-1024-10",
    )
    h.update(
        {
            "model": "MLP 784-1024-1024-10 ReLU",
            "optimizer": "SGD momentum 0.9, lr 0.05 cosine",
            "epochs": args.epochs,
        }
    )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([s / (steps // args.epochs) for s in h["eval_steps"]], h["test_accuracy"], marker="o")
    ax.axhline(0.98, ls="--", c="gray", label="target 98%")
    ax.set(
        xlabel="epoch", ylabel="test accuracy", title="backprop MLP 784-1024-1024-10, full MNIST"
    )
    ax.legend()
    fig.tight_layout()
    _common.save("foundation_backprop_mnist", h, fig, argv=argv, dpi=120)
    print(
        f"final test accuracy {h['final_test_accuracy']:.4f}; step {h['step_time_s'] * 1e3:.2f} ms"
    )


if __name__ == "__main__":
    main()
