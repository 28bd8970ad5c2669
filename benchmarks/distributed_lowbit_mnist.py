"""4-bit-compressed vs float32 data-parallel backprop on MNIST, 8 simulated devices.

Same model, seed, batches and optimiser; the only difference is the gradient
exchange: a float32 all-reduce, or ``lowbit.compressed_pmean`` (packed
RADIX4_FP4 codes, stochastic rounding; 8x fewer bytes). Claim: test accuracy
within 0.5 points of float32.

    .venv/bin/python benchmarks/distributed_lowbit_mnist.py --data-dir DIR   # or $BEYONDBP_DATA

Writes benchmarks/results/distributed_lowbit_mnist.{json,png}. Sets
XLA_FLAGS=--xla_force_host_platform_device_count=<devices> itself.
"""

from __future__ import annotations

import argparse
import os
import time

import _common  # benchmarks/_common.py: stdlib only, so XLA_FLAGS can still be set first


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--devices", type=int, default=8)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--widths", default="256,256")
    p.add_argument("--fmt", default="RADIX4_FP4")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    # before JAX is imported (below, and in the helpers): the simulated device count
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.devices}"
    )
    from beyondbp import datasets

    tr = datasets.load("mnist", "train", data_dir=args.data_dir)
    te = datasets.load("mnist", "test", data_dir=args.data_dir)
    results = {comm: _train(comm, tr, te, args) for comm in ("float32", "4bit")}
    diff = results["float32"]["final_test_accuracy"] - results["4bit"]["final_test_accuracy"]
    report = {
        "claim": "4-bit-compressed data-parallel accuracy within 0.5 points of float32",
        "accuracy_gap_points": 100 * diff,
        "holds": abs(100 * diff) <= 0.5,
        "devices": args.devices,
        "model": f"MLP 784-{args.widths.replace(',', '-')}-10 ReLU",
        "optimizer": "SGD momentum 0.9, lr 0.05 cosine",
        "epochs": args.epochs,
        "global_batch": args.batch_size,
        "format": args.fmt,
        "rounding": "stochastic",
        "seed": args.seed,
        "bytes_ratio": (
            results["float32"]["sent_bytes_per_device_per_step"]
            / results["4bit"]["sent_bytes_per_device_per_step"]
        ),
        "results": results,
    }
    _common.save(
        "distributed_lowbit_mnist", report, _plot(results, args.devices), argv=argv, dpi=120
    )
    print(f"gap {100 * diff:.2f} points; bytes ratio {report['bytes_ratio']:.2f}")


def _train(comm: str, tr, te, args) -> dict:
    """Data-parallel training with one gradient exchange (``"float32"`` or ``"4bit"``):
    test accuracy per epoch, step time, and the bytes the compiled step sends."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import lowbit
    from beyondbp import datasets, models
    from beyondbp import distributed as dist
    from beyondbp.methods import cross_entropy

    widths = tuple(int(w) for w in args.widths.split(","))
    apply, params0 = models.mlp(jax.random.key(args.seed), (784, *widths, 10))
    steps = args.epochs * datasets.num_batches(len(tr), args.batch_size)
    mesh = dist.make_mesh()

    def loss(p, batch):
        return cross_entropy(apply(p, batch[0]), batch[1])

    @jax.jit
    def correct(p, x, y, mask):
        return jnp.sum(((jnp.argmax(apply(p, x), -1) == y) & mask).astype(jnp.int32))

    def accuracy(p):
        hits = sum(
            int(correct(p, x, y, m))
            for x, y, m in datasets.batches(te, 1000, shuffle=False, remainder="pad")
        )
        return hits / len(te)

    tx = optax.sgd(optax.cosine_decay_schedule(0.05, steps), momentum=0.9)
    dp = dist.data_parallel(
        loss, tx, mesh=mesh, communication=comm, fmt=getattr(lowbit, args.fmt), seed=args.seed
    )
    state = dist.replicate(dp.init(params0), mesh)
    curve, times, t0 = [], [], time.perf_counter()
    per_epoch = steps // args.epochs
    for i, (x, y, _) in enumerate(
        datasets.batches(tr, args.batch_size, seed=args.seed, epochs=args.epochs)
    ):
        ts = time.perf_counter()
        state, l = dp.step(state, dist.shard((x, y), mesh))
        # Wait for every step: XLA:CPU runs simulated devices on a shared thread pool, and
        # several multi-device steps in flight can starve a collective's rendezvous.
        jax.block_until_ready(l)
        if i > 0 and i % 50 == 0:
            times.append(time.perf_counter() - ts)
        if (i + 1) % per_epoch == 0:
            curve.append(accuracy(state.params))
            print(f"{comm}: epoch {(i + 1) // per_epoch} test accuracy {curve[-1]:.4f}", flush=True)
    comm_bytes = dist.communication_bytes(dp.step, state, dist.shard((x, y), mesh))
    return {
        "test_accuracy_per_epoch": curve,
        "final_test_accuracy": curve[-1],
        "wall_time_s": time.perf_counter() - t0,
        "step_time_s_median": float(np.median(times)) if times else None,
        "sent_bytes_per_device_per_step": comm_bytes["sent_bytes"],
        "collective_operand_bytes_by_dtype": comm_bytes["by_dtype"],
    }


def _plot(results: dict, devices: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for comm, r in results.items():
        kb = r["sent_bytes_per_device_per_step"] / 1e3
        ax.plot(
            range(1, len(r["test_accuracy_per_epoch"]) + 1),
            r["test_accuracy_per_epoch"],
            marker="o",
            label=f"{comm} exchange ({kb:.0f} kB/step/device)",
        )
    ax.set(
        xlabel="epoch",
        ylabel="test accuracy",
        title=f"data-parallel backprop, {devices} simulated devices, MNIST",
    )
    ax.legend()
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
