"""Full-MNIST accuracy of the analog methods (784-500-10 energy network; MLP for analog-sgd).

Runs one registered method through ``beyondbp.train`` and writes
``benchmarks/results/analog_mnist_<method>.json`` (history, energy report, residuals) and a PNG
of test accuracy against epochs.

    .venv/bin/python benchmarks/analog_mnist.py --method analog-eqprop --epochs 10
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import matplotlib

matplotlib.use("Agg")
import _common
import matplotlib.pyplot as plt

import analog
from beyondbp import datasets, methods
from beyondbp.methods import analog_rows


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--method", default="analog-eqprop")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--data", default="mnist")
    _common.add_data_dir(ap)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-limit", type=int, default=None)
    ap.add_argument(
        "--read-noise",
        type=float,
        default=None,
        help="analog-eqprop-taox only: override TAOX_IO.read_noise (0 = none; read "
        "noise costs ~6M Gaussian draws per step on CPU)",
    )
    _common.add_switch(
        ap,
        "--lr-decay",
        "analog-eqprop-taox only: per-layer rates follow a cosine to 10%% of "
        "themselves over the run",
    )
    _common.add_switch(
        ap,
        "--mixed-precision",
        "analog-eqprop-taox only: program through a digital accumulator "
        "(analog.program(mixed_precision=True), Nandakumar et al. 2020)",
    )
    ap.add_argument(
        "--beta",
        type=float,
        default=None,
        help="analog-eqprop-taox only: nudge strength (default with the other "
        f"options: {analog_rows.BETA}, the ideal row's; without any option "
        f"the registered row runs: beta {analog_rows.TAOX_BETA} and "
        "--lr-decay)",
    )
    ap.add_argument(
        "--out",
        default=None,
        help="result name (benchmarks/results/NAME.json/.png); default from the method and options",
    )
    return ap


def _setup(args, cfg, steps):
    """The registered method, or the TaOx row rebuilt with the command line's options."""
    if not (
        args.read_noise is not None
        or args.lr_decay
        or args.mixed_precision
        or args.beta is not None
    ):
        return methods.get(args.method).build(cfg)
    io = analog.presets.TAOX_IO
    if args.read_noise is not None:
        io = dataclasses.replace(io, read_noise=args.read_noise)
    return analog_rows.build_eqprop(
        cfg,
        device=analog.presets.TAOX_RERAM,
        io=io,
        tol=None,
        free_steps=analog_rows.TAOX_FREE_STEPS,
        nudged_steps=analog_rows.TAOX_NUDGED_STEPS,
        w_max=None,
        lr_decay_steps=steps if args.lr_decay else None,
        mixed_precision=args.mixed_precision,
        beta=analog_rows.BETA if args.beta is None else args.beta,
    )


def main(argv=None):
    ap = _parser()
    args = ap.parse_args(argv)
    taox_options = (
        args.read_noise is not None
        or args.lr_decay
        or args.mixed_precision
        or args.beta is not None
    )
    if args.method != "analog-eqprop-taox" and taox_options:
        ap.error(
            "--read-noise, --lr-decay, --mixed-precision and --beta apply to "
            "--method analog-eqprop-taox only"
        )
    tr = datasets.load(args.data, "train", data_dir=args.data_dir)
    te = datasets.load(args.data, "test", data_dir=args.data_dir)
    if args.train_limit:
        tr = datasets.Dataset(
            tr.name, tr.split, tr.images[: args.train_limit], tr.labels[: args.train_limit]
        )
    per_epoch = len(tr) // args.batch_size
    steps = args.epochs * per_epoch
    setup = _setup(args, methods.MethodConfig(key=jax.random.key(args.seed), steps=steps), steps)
    tag = (
        args.method
        + ("" if args.read_noise is None else f"-rn{args.read_noise:g}")
        + ("-decay" if args.lr_decay else "")
        + ("-mp" if args.mixed_precision else "")
        + ("" if args.beta is None else f"-beta{args.beta:g}")
        + (f"-seed{args.seed}" if args.seed else "")
    )
    name = args.out or "analog_mnist_" + tag
    t0 = time.time()
    # json_path: an interrupted run keeps every evaluation it made
    hist = _common.train_history(
        setup,
        tr,
        te,
        args,
        steps=steps,
        eval_every=per_epoch,
        log_every=500,
        progress=True,
        desc=args.method,
        time_steps=False,
        json_path=_common.RESULTS / f"{name}.json",
    )
    hist.update(epochs=args.epochs, train_examples=len(tr), wall_s=time.time() - t0)
    fig = plt.figure(figsize=(5, 3.5))
    ep = [s / per_epoch for s in hist["eval_steps"]]
    plt.plot(ep, [100 * a for a in hist["test_accuracy"]], "o-", label=args.method)
    plt.xlabel("epoch")
    plt.ylabel("test accuracy (%)")
    plt.title(f"{args.method}, full {args.data}")
    plt.grid(alpha=0.3)
    plt.legend()
    plt.tight_layout()
    _common.save(name, hist, fig, argv=argv, dpi=100)
    print(
        json.dumps(
            {
                "method": args.method,
                "final_test_accuracy": hist["final_test_accuracy"],
                "wall_s": hist["wall_s"],
            }
        )
    )


if __name__ == "__main__":
    main()
