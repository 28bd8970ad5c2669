"""Simulation throughput: MVMs/s and pulsed updates/s as the tile count grows, and samples/s of
analog SGD on a 784-500-10 network (the workload aihwkit's figure in issue 6 refers to).

Writes benchmarks/results/analog_throughput.json and .png. Medians of repeats; timings are of
jitted calls after compilation, on whatever CPU runs this (see "machine" in the JSON).

    .venv/bin/python benchmarks/analog_throughput.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import analog  # noqa: E402
from analog import presets  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
KEY = lambda i: jax.random.key(i, impl="rbg")  # noqa: E731


def median_time(fn, args, calls: int, repeats: int) -> float:
    out = fn(*args)
    jax.block_until_ready(out)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            out = fn(*args)
        jax.block_until_ready(out)
        ts.append((time.perf_counter() - t0) / calls)
    return float(np.median(ts))


def tile_sweep(repeats: int, batch: int = 20, bl: int = 31):
    rows = []
    for n in (64, 128, 256, 512, 1024):
        w = jax.random.normal(KEY(0), (n, n), jnp.float32) * 0.05
        t = analog.init_tiles(KEY(1), w, presets.TAOX_RERAM)
        x = jax.random.uniform(KEY(2), (batch, n), jnp.float32)
        d = jax.random.normal(KEY(3), (batch, n), jnp.float32) * 0.01
        f_mvm = jax.jit(lambda t, x, k: analog.mvm(t, x, presets.TAOX_IO, k))
        f_upd = jax.jit(lambda t, x, d, k: analog.pulse_update(t, x, d, 0.01, k, bl=bl)[0])
        t_mvm = median_time(f_mvm, (t, x, KEY(4)), 20, repeats)
        t_upd = median_time(f_upd, (t, x, d, KEY(5)), 5, repeats)
        tiles = t.grid[0] * t.grid[1]
        rows.append({"n": n, "tiles": tiles, "batch": batch,
                     "mvm_per_s": batch / t_mvm, "tile_mvm_per_s": batch * tiles / t_mvm,
                     "updates_per_s": batch / t_upd, "tile_updates_per_s": batch * tiles / t_upd})
        print(rows[-1], flush=True)
    return rows


def mlp_sgd(repeats: int, batch: int = 20, bl: int = 31):
    """Analog SGD as aihwkit runs it: forward mvm, backward mvm_transpose, pulsed update per layer.

    Device: ConstantStep with aihwkit's ConstantStepDevice defaults translated to a differential
    pair (dw_min 0.001 of range, 30% device-to-device step spread, 30% per-pulse noise), ideal IO
    apart from that; BL 31, batch 20, sigmoid hidden layer, softmax cross-entropy error.
    """
    dev = analog.ConstantStep(dw_min=0.001, dw_min_dtod=0.3, dw_min_std=0.3, bounds_dtod=0.3)
    w1 = jax.random.normal(KEY(0), (784, 500)) * 0.05
    w2 = jax.random.normal(KEY(1), (500, 10)) * 0.05
    t1 = analog.init_tiles(KEY(2), w1, dev, w_max=0.6)
    t2 = analog.init_tiles(KEY(3), w2, dev, w_max=0.6)
    x = jax.random.uniform(KEY(4), (batch, 784))
    y = jax.nn.one_hot(jnp.arange(batch) % 10, 10)

    @jax.jit
    def step(t1, t2, k):
        k1, k2 = jax.random.split(k)
        h = jax.nn.sigmoid(analog.mvm(t1, x))
        o = analog.mvm(t2, h)
        e = jax.nn.softmax(o) - y
        dh = analog.mvm_transpose(t2, e) * h * (1 - h)
        t2, _ = analog.pulse_update(t2, h, -e, 0.01, k2, bl=bl)
        t1, _ = analog.pulse_update(t1, x, -dh, 0.01, k1, bl=bl)
        return t1, t2

    dt = median_time(step, (t1, t2, KEY(5)), 10, repeats)
    return {"batch": batch, "bl": bl, "samples_per_s": batch / dt, "step_s": dt,
            "aihwkit_reference_samples_per_s": 1700,
            "aihwkit_reference_source": "issue 6 text (aihwkit 1.1.0, ConstantStep, batch 20, "
                                        "this CPU class); not re-measured here",
            "ratio_vs_aihwkit_reference": batch / dt / 1700}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rows = tile_sweep(args.repeats)
    sgd = mlp_sgd(args.repeats)
    print(sgd, flush=True)
    out = {"tile_sweep": rows, "mlp_784_500_10_analog_sgd": sgd,
           "machine": f"{platform.machine()} {os.cpu_count()} cpus, jax {jax.__version__} "
                      f"{jax.devices()[0].platform}; shared with other jobs (load not controlled)",
           "command": f"python benchmarks/analog_throughput.py --repeats {args.repeats}",
           "statistic": "median over repeats"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "analog_throughput.json").write_text(json.dumps(out, indent=1))
    fig, ax = plt.subplots(figsize=(5, 3.5))
    tiles = [r["tiles"] for r in rows]
    ax.loglog(tiles, [r["tile_mvm_per_s"] for r in rows], "o-", label="tile-MVMs/s (TAOX_IO)")
    ax.loglog(tiles, [r["tile_updates_per_s"] for r in rows], "s-",
              label="tile pulsed updates/s (BL 31)")
    ax.set_xlabel("tiles (64x64)")
    ax.set_ylabel("per second")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    plt.tight_layout()
    plt.savefig(RESULTS / "analog_throughput.png", dpi=100)


if __name__ == "__main__":
    main()
