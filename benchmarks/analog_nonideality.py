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

The device sweeps use an ideal periphery so that only the device factor changes. Within one
seed every run has the same data order and initial weights; ``--seeds 0,1,2`` repeats the
whole sweep per seed (initial weights, data order, device variation and pulse noise all change)
and plots one line per seed with the median. ``--beta`` and ``--lr-decay`` select the nudge and
the cosine rate of ``benchmarks/analog_mnist.py`` (default: beta 0.2, constant rates, the ideal
``analog-eqprop`` row's; the registered TaOx row uses ``--beta 0.5 --lr-decay``).

    .venv/bin/python benchmarks/analog_nonideality.py [--steps 600] [--dataset mnist_small] \
        [--seeds 0,1,2] [--beta 0.5] [--lr-decay] [--out analog_nonideality]

Writes benchmarks/results/<out>.{json,png} (default analog_nonideality).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import _common
import matplotlib.pyplot as plt

import analog
from beyondbp import datasets, methods, train
from beyondbp.methods import analog_rows

TAOX = analog.presets.TAOX_RERAM

SWEEPS = {
    "write noise (dw_min_std)": ("dw_min_std", (0.0, 0.5, 1.0, 2.0)),
    "asymmetry (up_down)": ("up_down", (0.0, 0.1, 0.3, 0.5)),
    "stuck fraction (on + off)": ("stuck", (0.0, 0.01, 0.05, 0.1)),
    "read noise (per tile output)": ("read_noise", (0.0, 0.01, 0.05)),
}


def _setup(cfg, factor, value, beta=analog_rows.BETA, lr_decay=False):
    device, io = TAOX, None
    steps = dict(free_steps=analog_rows.FREE_STEPS, nudged_steps=analog_rows.NUDGED_STEPS)
    if factor == "stuck":
        device = dataclasses.replace(TAOX, stuck_on=value / 2, stuck_off=value / 2)
    elif factor == "read_noise":
        io = dataclasses.replace(analog.presets.TAOX_IO, read_noise=value)
        steps = dict(
            free_steps=analog_rows.TAOX_FREE_STEPS, nudged_steps=analog_rows.TAOX_NUDGED_STEPS
        )
    else:
        device = dataclasses.replace(TAOX, **{factor: value})
    # w_max=None: the device range is sized from the initial weights, as analog-eqprop-taox does
    return analog_rows.build_eqprop(
        cfg,
        device=device,
        io=io,
        tol=None,
        w_max=None,
        beta=beta,
        lr_decay_steps=cfg.steps if lr_decay else None,
        **steps,
    )


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.merge:
        _merge(args, argv)
        return
    seeds = [int(x) for x in args.seeds.split(",")]
    tr = datasets.load(args.dataset, "train", data_dir=args.data_dir)
    te = datasets.load(args.dataset, "test", data_dir=args.data_dir)
    only = set(args.only.split(",")) if args.only else None
    results = {}
    for title, (factor, values) in SWEEPS.items():
        if only is not None and factor not in only:
            continue
        rows = [_run_value(factor, v, seeds, tr, te, args) for v in values]
        results[title] = {"factor": factor, "runs": rows}
    out = {
        "config": vars(args),
        "baseline_device": repr(TAOX),
        "baseline_io": repr(analog.presets.TAOX_IO),
        "results": results,
    }
    _common.save(args.out, out, plot(out), argv=argv, dpi=120)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--dataset", default="mnist_small")
    _common.add_data_dir(ap)
    ap.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    ap.add_argument(
        "--beta",
        type=float,
        default=analog_rows.BETA,
        help=f"nudge strength (default {analog_rows.BETA}, the ideal row's; the "
        f"registered TaOx row uses {analog_rows.TAOX_BETA})",
    )
    _common.add_switch(
        ap, "--lr-decay", "per-layer rates on a cosine to 10%% of themselves over the run"
    )
    ap.add_argument("--out", default="analog_nonideality", help="result file name")
    ap.add_argument(
        "--only",
        default=None,
        help="comma-separated factors to run (dw_min_std, up_down, stuck, read_noise); default all",
    )
    ap.add_argument(
        "--merge",
        default=None,
        help="comma-separated result names to combine into --out (runs nothing): "
        "for sweeps split over processes with --only",
    )
    return ap


def _merge(args, argv) -> None:
    """Combine the named results into ``--out`` (a sweep split over processes with ``--only``)."""
    parts = [json.loads((_common.RESULTS / f"{n}.json").read_text()) for n in args.merge.split(",")]
    merged = dict(parts[0], results={}, command=[p["command"] for p in parts])
    for p in parts:
        merged["results"].update(p["results"])
    _common.save(args.out, merged, plot(merged), argv=argv, dpi=120)


def _run_value(factor, v, seeds, tr, te, args) -> dict:
    """One point of a sweep: ``factor`` at ``v``, trained once per seed; accuracies and times."""
    row = {
        "value": v,
        "seeds": seeds,
        "test_accuracy_per_seed": [],
        "step_time_s": [],
        "wall_s": [],
    }
    for seed in seeds:
        cfg = methods.MethodConfig(
            key=jax.random.key(seed),
            input_shape=tr.input_shape,
            num_classes=tr.num_classes,
            steps=args.steps,
        )
        t0 = time.perf_counter()
        h = train.train(
            _setup(cfg, factor, v, args.beta, args.lr_decay),
            tr,
            te,
            steps=args.steps,
            batch_size=args.batch_size,
            seed=seed,
            eval_every=args.steps,
            progress=False,
            desc=f"{factor}={v}",
        )
        row["test_accuracy_per_seed"].append(h["final_test_accuracy"])
        row["step_time_s"].append(h["step_time_s"])
        row["wall_s"].append(time.perf_counter() - t0)
        print(
            f"{factor:12s} {v:<6} seed {seed} acc {h['final_test_accuracy']:.4f} "
            f"({row['wall_s'][-1]:.0f} s)",
            flush=True,
        )
    accs = np.asarray(row["test_accuracy_per_seed"])
    row.update(
        test_accuracy=float(accs.mean()),
        test_accuracy_min=float(accs.min()),
        test_accuracy_max=float(accs.max()),
    )
    return row


def plot(out: dict):
    results, cfg = out["results"], out["config"]
    seeds = [int(x) for x in str(cfg.get("seeds", cfg.get("seed", 0))).split(",")]
    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.2), squeeze=False)
    lowest = min(
        min(x.get("test_accuracy_per_seed", [x["test_accuracy"]]))
        for r in results.values()
        for x in r["runs"]
    )
    for ax, (title, r) in zip(axes[0], results.items()):
        xs = [x["value"] for x in r["runs"]]
        per_seed = [x.get("test_accuracy_per_seed", [x["test_accuracy"]]) for x in r["runs"]]
        # One line per seed: between-seed spread (a seed stuck on a plateau) is as large as
        # the factors' effects, and a mean would hide which it is.
        for k in range(len(per_seed[0])):
            ax.plot(
                xs,
                [a[k] for a in per_seed],
                "o-",
                alpha=0.6,
                lw=1,
                label=f"seed {seeds[k]}" if k < len(seeds) else None,
            )
        ax.plot(xs, [float(np.median(a)) for a in per_seed], "k_", ms=14, mew=2, label="median")
        ax.set(
            title=title,
            xlabel=r["factor"],
            ylabel="test accuracy",
            ylim=(max(0.0, lowest - 0.05), 1.0),
        )
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(
        f"784-500-10 energy network, activity-difference rule, {cfg['steps']} steps on "
        f"{cfg['dataset']} (others at TAOX_RERAM); seeds {seeds}",
        fontsize=9,
    )
    fig.tight_layout()
    plt.close(fig)  # not kept by pyplot; the caller saves it
    return fig


if __name__ == "__main__":
    main()
