"""Accuracy against time after programming a digitally trained MLP on a PCM chip (issue 17,
item 3), with and without hardware-aware training, with and without global drift compensation.

The inference model is aihwkit's ``PCMLikeNoiseModel`` (Nandakumar et al., ICECS 2019) as
``analog.PCMNoiseModel`` with aihwkit's constants; compensation is aihwkit's
``GlobalDriftCompensation``. An MLP (default 784-256-128-10, ReLU) is trained digitally with
Adam twice from the same initial weights and data order: plainly, and with hardware-aware
training (``analog.noisy_params``: every forward pass sees a fresh draw of the programmed
weights, straight-through gradient; Joshi et al., Nature Communications 2020). Each trained
network is programmed on ``--seeds`` chips and read at 1 s, 1 h, 1 day, 1 month and 1 year
after programming (``beyondbp.drift.accuracy_vs_time``); biases stay digital.

    .venv/bin/python benchmarks/analog_drift.py [--dataset mnist] [--epochs 3] \
        [--seeds 0,1,2] [--noise-scale 1.0] [--hwa-scale 1.0] [--out analog_drift]

Writes benchmarks/results/<out>.{json,png} (default analog_drift). ``--dataset mnist_small``
(bundled) is a quick run; ``--noise-scale 3`` evaluates (and trains) against a chip with three
times aihwkit's programming and read noise, where the network is no longer insensitive to it.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import matplotlib
import numpy as np
import optax

matplotlib.use("Agg")
import _common
import matplotlib.pyplot as plt

import analog
from beyondbp import datasets, drift, models


def _train(args, train_ds, model, hwa: bool):
    """Adam on cross-entropy; with ``hwa`` the loss sees ``analog.noisy_params``."""
    apply, params = models.mlp(jax.random.key(args.init_seed), args.widths)
    tx = optax.adam(args.lr)
    opt_state = tx.init(params)
    hwa_model = dataclasses.replace(model, prog_noise_scale=model.prog_noise_scale * args.hwa_scale)

    def loss(p, x, y, key):
        if hwa:
            p = analog.noisy_params(key, p, hwa_model)
        return models.cross_entropy(apply(p, x), y)

    @jax.jit
    def step(p, s, x, y, key):
        g = jax.grad(loss)(p, x, y, key)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    key = jax.random.key(args.init_seed + 1000)
    t0 = time.perf_counter()
    batches = datasets.batches(train_ds, args.batch, seed=args.init_seed, epochs=args.epochs)
    for i, (x, y, _) in enumerate(batches):
        params, opt_state = step(params, opt_state, x, y, jax.random.fold_in(key, i))
    jax.block_until_ready(params)
    return apply, params, time.perf_counter() - t0


def _plot(results, times, noise_scale):
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, r in results.items():
        for comp, style in (("compensated", "-"), ("uncompensated", "--")):
            c = r[comp]
            ax.errorbar(
                times, np.asarray(c["mean"]) * 100, yerr=np.asarray(c["std"]) * 100,
                ls=style, marker="o", capsize=3, label=f"{name}, {comp}",
            )  # fmt: skip
        ax.axhline(r["digital"] * 100, color="gray", lw=0.6)
    ax.set_xscale("log")
    ax.set_xticks(times, list(drift.TIMES))
    ax.set_xlabel("time since programming")
    ax.set_ylabel("test accuracy (%)")
    scale = "" if noise_scale == 1 else f", noise x{noise_scale:g}"
    ax.set_title(f"PCM drift (aihwkit PCMLikeNoiseModel{scale}): mean ± std over chips")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist", choices=("mnist", "mnist_small"))
    _common.add_data_dir(ap)
    ap.add_argument("--widths", type=_common.int_list, default=(784, 256, 128, 10))
    ap.add_argument("--epochs", type=_common.positive_int, default=3)
    ap.add_argument("--batch", type=_common.positive_int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--init-seed", type=int, default=0)
    ap.add_argument("--seeds", type=_common.int_list, default=(0, 1, 2))
    ap.add_argument(
        "--noise-scale",
        type=float,
        default=1.0,
        help="multiplies the chip's programming and read noise (a noisier chip than aihwkit's fit)",
    )
    ap.add_argument(
        "--hwa-scale",
        type=float,
        default=1.0,
        help="extra factor on the programming noise injected during hardware-aware training",
    )
    ap.add_argument("--out", default="analog_drift")
    args = ap.parse_args(argv)

    train_ds = datasets.load(args.dataset, "train", data_dir=args.data_dir)
    test_ds = datasets.load(args.dataset, "test", data_dir=args.data_dir)
    x_test = test_ds.images.astype(np.float32) / 255.0
    y_test = test_ds.labels.astype(np.int32)
    s = args.noise_scale
    model = analog.PCMNoiseModel(prog_noise_scale=s, read_noise_scale=s)
    times = list(drift.TIMES.values())
    results: dict = {}
    out = {"config": {**vars(args), "model": dataclasses.asdict(model), "times": drift.TIMES}}
    for name, hwa in (("digital training", False), ("hardware-aware training", True)):
        apply, params, train_s = _train(args, train_ds, model, hwa)
        r: dict = {"train_s": train_s}
        for comp in (True, False):
            t0 = time.perf_counter()
            c = drift.accuracy_vs_time(
                apply, params, x_test, y_test, model=model, times=times, seeds=args.seeds,
                compensate=comp,
            )  # fmt: skip
            c["eval_s"] = time.perf_counter() - t0
            r["digital"] = c["digital"]
            r["compensated" if comp else "uncompensated"] = c
            print(
                f"{name:24s} comp={comp!s:5s} digital {c['digital']:.4f} | "
                + " ".join(
                    f"{k} {m:.4f}±{s:.4f}" for k, m, s in zip(drift.TIMES, c["mean"], c["std"])
                ),
                flush=True,
            )
        results[name] = r
        out["results"] = results
        _common.save(args.out, out, argv=argv)
    _common.save(args.out, out, _plot(results, times, args.noise_scale), argv=argv)


if __name__ == "__main__":
    main()
