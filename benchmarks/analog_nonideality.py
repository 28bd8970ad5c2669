"""Training-time accuracy against device non-idealities (issue 6, "plot accuracy against read
noise, write noise, asymmetry and stuck-device fraction").

The 784-500-10 energy network of ``analog-eqprop`` is trained with the activity-difference rule
(Yi et al., Nature Electronics 2023; Laborieux et al. 2021 centered nudge) and its updates are
programmed onto devices. One factor is swept at a time, the others held at the ``TAOX_RERAM``
preset's values:

- write noise: the per-pulse cycle-to-cycle spread ``dw_min_std``;
- asymmetry: ``up_down`` (up steps ``dw_min (1 + a)``, down ``dw_min (1 - a)``);
- stuck devices: ``stuck_on = stuck_off = f / 2``;
- read noise: additive Gaussian noise per tile output of ``TAOX_IO`` (8-bit DAC/ADC), with the
  other device values at TaOx; this is the slow path (every relaxation sweep reads the 500x10
  crossbar through the noisy periphery).

The device sweeps use an ideal periphery so that only the device factor changes. Every run has
the same seed, data order and initial weights.

    .venv/bin/python benchmarks/analog_nonideality.py [--steps 600] [--dataset mnist_small]

Writes benchmarks/results/analog_nonideality.{json,png}.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import time

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import analog  # noqa: E402
from beyondbp import _methods_analog, compare, datasets, methods, train  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
TAOX = analog.presets.TAOX_RERAM

SWEEPS = {
    "write noise (dw_min_std)": ("dw_min_std", (0.0, 0.5, 1.0, 2.0)),
    "asymmetry (up_down)": ("up_down", (0.0, 0.1, 0.3, 0.5)),
    "stuck fraction (on + off)": ("stuck", (0.0, 0.01, 0.05, 0.1)),
    "read noise (per tile output)": ("read_noise", (0.0, 0.01, 0.05)),
}


def _setup(cfg, factor, value):
    device, io = TAOX, None
    steps = dict(free_steps=_methods_analog.FREE_STEPS, nudged_steps=_methods_analog.NUDGED_STEPS)
    if factor == "stuck":
        device = dataclasses.replace(TAOX, stuck_on=value / 2, stuck_off=value / 2)
    elif factor == "read_noise":
        io = dataclasses.replace(analog.presets.TAOX_IO, read_noise=value)
        steps = dict(free_steps=_methods_analog.TAOX_FREE_STEPS,
                     nudged_steps=_methods_analog.TAOX_NUDGED_STEPS)
    else:
        device = dataclasses.replace(TAOX, **{factor: value})
    # w_max=None: the device range is sized from the initial weights, as analog-eqprop-taox does
    return _methods_analog.build_eqprop(cfg, device=device, io=io, tol=None, w_max=None, **steps)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--dataset", default="mnist_small")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default=None, help="comma-separated factors to run "
                    "(dw_min_std, up_down, stuck, read_noise); default all")
    args = ap.parse_args(argv)
    tr = datasets.load(args.dataset, "train", data_dir=args.data_dir)
    te = datasets.load(args.dataset, "test", data_dir=args.data_dir)
    cfg = methods.MethodConfig(key=jax.random.key(args.seed), input_shape=tr.input_shape,
                               num_classes=tr.num_classes, steps=args.steps)
    only = set(args.only.split(",")) if args.only else None
    results = {}
    for title, (factor, values) in SWEEPS.items():
        if only is not None and factor not in only:
            continue
        rows = []
        for v in values:
            t0 = time.perf_counter()
            h = train.train(_setup(cfg, factor, v), tr, te, steps=args.steps,
                            batch_size=args.batch_size, seed=args.seed,
                            eval_every=args.steps, progress=False, desc=f"{factor}={v}")
            rows.append({"value": v, "test_accuracy": h["final_test_accuracy"],
                         "step_time_s": h["step_time_s"], "wall_s": time.perf_counter() - t0})
            print(f"{factor:12s} {v:<6} acc {h['final_test_accuracy']:.4f} "
                  f"({rows[-1]['wall_s']:.0f} s)", flush=True)
        results[title] = {"factor": factor, "runs": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    train.write_json({"config": vars(args), "baseline_device": repr(TAOX),
                      "baseline_io": repr(analog.presets.TAOX_IO), "results": results,
                      "machine": compare.machine()}, RESULTS / "analog_nonideality.json")
    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.2), squeeze=False)
    for ax, (title, r) in zip(axes[0], results.items()):
        ax.plot([x["value"] for x in r["runs"]], [x["test_accuracy"] for x in r["runs"]], "o-")
        ax.set(title=title, xlabel=r["factor"], ylabel="test accuracy", ylim=(0, 1))
        ax.grid(alpha=0.3)
    fig.suptitle(f"784-500-10 energy network, activity-difference rule, {args.steps} steps on "
                 f"{args.dataset} (others at TAOX_RERAM)", fontsize=9)
    fig.tight_layout()
    fig.savefig(RESULTS / "analog_nonideality.png", dpi=120)


if __name__ == "__main__":
    main()
