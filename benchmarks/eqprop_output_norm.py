"""Why ``analog-eqprop`` stalled on the 1,500 rendered shapes, measured per epoch.

The ideal-device row with the Glorot-uniform output kernel (``output_norm=None``, the row
before ``analog_rows.OUTPUT_NORM``) against the registered row (output kernel at spectral norm
``OUTPUT_NORM``). After every epoch, on the test images' free phase: accuracy, the energy
model's cost, the fraction of hidden activities at 0 and at 1, the hidden units saturated
(at 0 or at 1) on every test image, which get no activity difference and so are dead, the
residual of the last relaxation sweep and the output kernel's spectral norm.

    python -m beyondbp.synthetic DIR --train 1500 --test 1000
    python benchmarks/eqprop_output_norm.py --data-dir DIR [--epochs 15] [--seed 0]

Writes ``benchmarks/results/eqprop_output_norm_<dataset>.json``.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _common

import analog
from beyondbp import datasets, methods, train
from beyondbp.methods import analog_rows


def free_phase_stats(params, x, y, num_classes: int) -> dict:
    """Free-phase statistics of ``params`` on ``x`` (see the module docstring)."""
    n = x.shape[0]
    zeros = (jnp.zeros((n, analog_rows.HIDDEN)), jnp.zeros((n, num_classes)))
    (h, o), res = analog.relax(
        params,
        x,
        zeros,
        jnp.zeros((n, num_classes)),
        0.0,
        analog_rows.FREE_STEPS,
        linear_output=True,
    )
    h, o = np.asarray(h), np.asarray(o)
    t = np.eye(num_classes)[y]
    return {
        "test_accuracy": float((o.argmax(-1) == y).mean()),
        "cost": float(0.5 * np.mean(np.sum((o - t) ** 2, -1))),
        "hidden_at_0": float((h <= 0).mean()),
        "hidden_at_1": float((h >= 1).mean()),
        "dead_hidden_units": int(((h <= 0).all(0) | (h >= 1).all(0)).sum()),
        "free_residual": float(res),
        "max_abs_output": float(np.abs(o).max()),
        "output_spectral_norm": float(np.linalg.norm(np.asarray(params[-1]["kernel"]), 2)),
    }


def run(tr, te, seed: int, epochs: int, output_norm, batch_size: int = 64) -> list[dict]:
    """Train the ideal row ``epochs`` epochs; the statistics before and after every epoch."""
    cfg = methods.MethodConfig(
        key=jax.random.key(seed),
        input_shape=tr.input_shape,
        num_classes=tr.num_classes,
        steps=datasets.num_batches(len(tr), batch_size) * epochs,
    )
    setup = analog_rows.build_eqprop(cfg, output_norm=output_norm)
    step = jax.jit(train.make_step(setup))
    params, state = setup.params, setup.tx.init(setup.params)
    x = jnp.asarray(te.images.reshape(len(te), -1), jnp.float32) / 255.0
    y = np.asarray(te.labels)
    rows = [{"epoch": 0, **free_phase_stats(params, x, y, tr.num_classes)}]
    for ep in range(epochs):
        for xb, yb, _ in datasets.batches(tr, batch_size, seed=seed * 1000 + ep):
            params, state, _ = step(params, state, jnp.asarray(xb), jnp.asarray(yb))
        rows.append({"epoch": ep + 1, **free_phase_stats(params, x, y, tr.num_classes)})
        print(output_norm, rows[-1], flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="idx", choices=datasets.NAMES)
    _common.add_data_dir(ap)
    ap.add_argument("--epochs", type=_common.positive_int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    tr = datasets.load(args.dataset, "train", data_dir=args.data_dir)
    te = datasets.load(args.dataset, "test", data_dir=args.data_dir)
    result = {
        "dataset": args.dataset,
        "seed": args.seed,
        "epochs": args.epochs,
        "glorot_output": run(tr, te, args.seed, args.epochs, None),
        f"output_norm_{analog_rows.OUTPUT_NORM}": run(
            tr, te, args.seed, args.epochs, analog_rows.OUTPUT_NORM
        ),
    }
    _common.save(f"eqprop_output_norm_{args.dataset}", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
