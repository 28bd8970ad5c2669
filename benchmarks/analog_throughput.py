"""Simulation throughput: MVMs/s and pulsed updates/s as the tile count grows, and samples/s of
analog SGD on a 784-500-10 network side by side with IBM's aihwkit (issue 6's workload).

Writes benchmarks/results/analog_throughput.json and .png. Medians of repeats; timings are of
jitted calls after compilation, on whatever CPU runs this (see "machine" in the JSON).

    .venv/bin/python benchmarks/analog_throughput.py --repeats 5 \
        --aihwkit-python /tmp/aihwkit-venv/bin/python --rounds 5

The ``*_compact`` rows run the compact device state (16-bit conductances, 8-bit device codes);
the JSON also holds the memory bandwidth of a large copy and the traffic floor of both states.

With --aihwkit-python (a Python with aihwkit 1.1.0 installed, see benchmarks/aihwkit_baseline.py)
the MLP workload of this package and aihwkit's are timed in alternating rounds in the same
session (same load), torch limited to 2 threads; the ratio of medians is recorded.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import subprocess
import tempfile
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import _common
import matplotlib.pyplot as plt

import analog
from analog import presets

KEY = lambda i: jax.random.key(i, impl="rbg")


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
        rows.append(
            {
                "n": n,
                "tiles": tiles,
                "batch": batch,
                "mvm_per_s": batch / t_mvm,
                "tile_mvm_per_s": batch * tiles / t_mvm,
                "updates_per_s": batch / t_upd,
                "tile_updates_per_s": batch * tiles / t_upd,
            }
        )
        print(rows[-1], flush=True)
    return rows


def load_mnist(n: int):
    """The first n MNIST training images (pixels / 255) and labels, or uniform random data of
    the same shape when the files are absent (throughput does not depend much on the values,
    but zero pixels make trains sparse, so real data is the default, as for aihwkit). The
    files are found as beyondbp.datasets finds them ($BEYONDBP_DATA, the user cache)."""
    from beyondbp import datasets

    try:
        ds = datasets.load("mnist", "train", download=False)
        x = ds.images.reshape(len(ds), -1)[:n] / 255.0
        return x.astype(np.float32), ds.labels[:n].astype(np.int32), "mnist"
    except datasets.DatasetError:
        rng = np.random.default_rng(0)
        return rng.random((n, 784), np.float32), np.arange(n, dtype=np.int32) % 10, "uniform"


#: aihwkit 1.1.0 ConstantStepDevice() defaults translated to a differential pair on a [0, 1]
#: conductance range: dw_min 0.001 on aihwkit's weight range [-0.6, 0.6] (width 1.2) -> 0.001/1.2
#: of the range (with w_max 0.6 one pulse pair moves a weight by 0.001, as one aihwkit pulse
#: does), dw_min_dtod 0.3, dw_min_std 0.3 (per pulse), up_down 0, up_down_dtod 0.01, bound
#: spread 0.3 (aihwkit's w_max_dtod = w_min_dtod = 0.3).
AIHWKIT_CONSTANT_STEP = analog.ConstantStep(
    dw_min=0.001 / 1.2, dw_min_dtod=0.3, dw_min_std=0.3, up_down_dtod=0.01, bounds_dtod=0.3
)


def make_mlp_sgd(
    device,
    batch: int = 20,
    bl: int = 31,
    impl: str = "fast",
    n_batches: int = 100,
    bl_management: bool = False,
    compact: bool = False,
):
    """Analog SGD as aihwkit runs it: forward mvm, backward mvm_transpose, pulsed update per layer.

    784-500-10 without biases, sigmoid hidden layer, softmax cross-entropy error, lr 0.01,
    BL 31, batch 20, ideal IO, 64x64 tiles; the tiles are donated to each jitted step (updated
    in place, as aihwkit does), the batch and key chosen inside the step. ``bl_management``:
    per-sample train lengths, as aihwkit's default ``update_bl_management=True``. ``compact``:
    the compact device state (``init_tiles(..., compact=True)``: 16-bit conductances, 8-bit
    device codes). Returns ``run(steps) -> seconds``.
    """
    x_all, y_all, data = load_mnist(batch * n_batches)
    xs = jnp.asarray(x_all.reshape(n_batches, batch, 784))
    ys = jax.nn.one_hot(jnp.asarray(y_all.reshape(n_batches, batch)), 10)
    w1 = jax.random.uniform(KEY(0), (784, 500), jnp.float32, -1, 1) / np.sqrt(784)
    w2 = jax.random.uniform(KEY(1), (500, 10), jnp.float32, -1, 1) / np.sqrt(500)
    state = [
        analog.init_tiles(KEY(2), w1, device, w_max=0.6, compact=compact),
        analog.init_tiles(KEY(3), w2, device, w_max=0.6, compact=compact),
    ]

    # The batch and the key are picked inside the jitted step from a step counter kept on the
    # device: creating a key or slicing a batch eagerly costs more host time than the step.
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(t1, t2, i, xs, ys, base):
        x, y = xs[i % n_batches], ys[i % n_batches]
        k1, k2 = jax.random.split(jax.random.fold_in(base, i))
        h = jax.nn.sigmoid(analog.mvm(t1, x))
        o = analog.mvm(t2, h)
        e = jax.nn.softmax(o) - y
        dh = analog.mvm_transpose(t2, e) * h * (1 - h)
        t2, _ = analog.pulse_update(
            t2, h, -e, 0.01, k2, bl=bl, impl=impl, bl_management=bl_management
        )
        t1, _ = analog.pulse_update(
            t1, x, -dh, 0.01, k1, bl=bl, impl=impl, bl_management=bl_management
        )
        return t1, t2, i + 1

    base = KEY(1000)
    state.append(jnp.zeros((), jnp.int32))

    def run(steps: int) -> float:
        t0 = time.perf_counter()
        t1, t2, i = state
        for _ in range(steps):
            t1, t2, i = step(t1, t2, i, xs, ys, base)
        jax.block_until_ready((t1, t2))
        state[:] = [t1, t2, i]
        return time.perf_counter() - t0

    run(2)  # compile
    return run, data


def run_aihwkit(python: str, batches: int, configs: str) -> dict:
    script = pathlib.Path(__file__).resolve().parent / "aihwkit_baseline.py"
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "aihwkit.json"
        subprocess.run(
            [
                python,
                str(script),
                "--repeats",
                "1",
                "--batches",
                str(batches),
                "--warmup",
                "10",
                "--threads",
                "2",
                "--configs",
                configs,
                "--json",
                str(out),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return json.loads(out.read_text())


def side_by_side(
    rounds: int, batches: int, aihwkit_python: str | None, batch: int = 20, bl: int = 31
):
    # constant_step_bl_managed shortens each sample's trains as aihwkit's default does
    # (update_bl_management=True); constant_step keeps BL 31 slots for every sample.
    # *_compact: the same with the compact device state (init_tiles(..., compact=True)).
    ours = {
        "constant_step": make_mlp_sgd(AIHWKIT_CONSTANT_STEP, batch, bl),
        "constant_step_bl_managed": make_mlp_sgd(
            AIHWKIT_CONSTANT_STEP, batch, bl, bl_management=True
        ),
        "constant_step_bl_managed_compact": make_mlp_sgd(
            AIHWKIT_CONSTANT_STEP, batch, bl, bl_management=True, compact=True
        ),
        "taox_reram_expstep": make_mlp_sgd(presets.TAOX_RERAM, batch, bl),
        "taox_reram_expstep_compact": make_mlp_sgd(presets.TAOX_RERAM, batch, bl, compact=True),
    }
    data = ours["constant_step"][1]
    ref_run, _ = make_mlp_sgd(AIHWKIT_CONSTANT_STEP, batch, bl, impl="reference")
    aih_configs = (
        "constant_step,constant_step_fixed_bl31,constant_step_perfect_io,"
        "constant_step_perfect_io_fixed_bl31,reram_es_preset"
    )
    rates = {f"ours_{k}": [] for k in ours}
    rates["ours_constant_step_reference_impl"] = []
    aih_meta = None
    for r in range(rounds):
        if aihwkit_python:
            res = run_aihwkit(aihwkit_python, batches, aih_configs)
            aih_meta = {k: v for k, v in res.items() if k != "configs"}
            for name, v in res["configs"].items():
                rates.setdefault(f"aihwkit_{name}", []).append(v["samples_per_s"])
        for name, (run, _) in ours.items():
            rates[f"ours_{name}"].append(batch * batches / run(batches))
        if r < 2:  # the old path: ~3 s a step
            rates["ours_constant_step_reference_impl"].append(batch * 2 / ref_run(2))
        print({k: round(v[-1], 1) for k, v in rates.items() if v}, flush=True)
    med = {k: float(np.median(v)) for k, v in rates.items()}
    out = {
        "batch": batch,
        "bl": bl,
        "data": data,
        "timed_batches_per_round": batches,
        "rounds": rounds,
        "samples_per_s_median": med,
        "samples_per_s_rounds": rates,
        "aihwkit_run": aih_meta,
    }
    if "aihwkit_constant_step" in med:
        # (ours, aihwkit's setting): the bl_managed pairs are like for like, both shortening
        # the trains per sample (update BL management)
        pairs = (
            ("", "default"),
            ("", "fixed_bl31"),
            ("", "perfect_io"),
            ("", "perfect_io_fixed_bl31"),
            ("_bl_managed", "default"),
            ("_bl_managed", "perfect_io"),
            ("_bl_managed_compact", "default"),
            ("_bl_managed_compact", "perfect_io"),
        )
        for ours_, theirs in pairs:
            aih = "aihwkit_constant_step" + ("" if theirs == "default" else f"_{theirs}")
            out[f"ratio_constant_step{ours_}_vs_aihwkit_{theirs}"] = (
                med[f"ours_constant_step{ours_}"] / med[aih]
            )
    out["ratio_compact_vs_float32"] = {
        "constant_step_bl_managed": med["ours_constant_step_bl_managed_compact"]
        / med["ours_constant_step_bl_managed"],
        "taox_reram_expstep": med["ours_taox_reram_expstep_compact"]
        / med["ours_taox_reram_expstep"],
    }
    return out


def layer1_update(rounds: int, calls: int = 20, batch: int = 20, bl: int = 31) -> dict:
    """Milliseconds per pulsed update of the workload's layer 1 alone (784x500 on 13x8 tiles,
    ConstantStep as aihwkit's, BL 31 managed, MNIST-like x), float32 state against compact,
    interleaved rounds; the minimum of wall time and of this process's CPU time per call."""
    x_all, _, _ = load_mnist(batch)
    x = jnp.asarray(x_all)
    d = jax.random.normal(KEY(7), (batch, 500), jnp.float32) * 0.02
    w = jax.random.uniform(KEY(0), (784, 500), jnp.float32, -1, 1) / np.sqrt(784)
    cfg = analog.UpdateConfig(bl=bl, bl_management=True)

    @functools.partial(jax.jit, donate_argnums=0)
    def step(t, i):
        return analog.pulse_update(t, x, d, 0.01, jax.random.fold_in(KEY(8), i), update=cfg)[0]

    state = {
        c: analog.init_tiles(KEY(2), w, AIHWKIT_CONSTANT_STEP, w_max=0.6, compact=c == "compact")
        for c in ("float32", "compact")
    }
    wall = {c: [] for c in state}
    cpu = {c: [] for c in state}
    for r in range(rounds + 1):  # the first round compiles
        for c in state:
            t, w0, c0 = state[c], time.perf_counter(), time.process_time()
            for i in range(calls):
                t = step(t, i)
            jax.block_until_ready(t)
            state[c] = t
            if r:
                wall[c].append(1e3 * (time.perf_counter() - w0) / calls)
                cpu[c].append(1e3 * (time.process_time() - c0) / calls)
    return {
        "calls_per_round": calls,
        "rounds": rounds,
        "wall_ms_min": {c: min(v) for c, v in wall.items()},
        "cpu_ms_min": {c: min(v) for c, v in cpu.items()},
        "wall_ms_rounds": wall,
        "cpu_ms_rounds": cpu,
    }


def copy_bandwidth(mbytes: int = 256, repeats: int = 7) -> dict:
    """Memory bandwidth of a large array copy (numpy and a jitted jax copy), bytes read plus
    written per second, best of ``repeats``: the figure a memory-bound update is held to."""
    a = np.ones(mbytes * 2**20 // 4, np.float32)
    b = np.empty_like(a)
    best_np = min(_timed(lambda: np.copyto(b, a)) for _ in range(repeats))
    # a fused elementwise pass, one read and one write, into the donated input's buffer (a
    # fresh output would time the page faults of 256 MB of new memory instead)
    f = jax.jit(lambda x: x + 1.0, donate_argnums=0)
    box = [f(jnp.asarray(a))]

    def step():
        box[0] = jax.block_until_ready(f(box[0]))

    best_jax = min(_timed(step) for _ in range(repeats))
    return {
        "array_mbytes": mbytes,
        "numpy_copy_gb_per_s": 2 * a.nbytes / best_np / 1e9,
        "jax_elementwise_gb_per_s": 2 * a.nbytes / best_jax / 1e9,
    }


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def traffic_floor(sgd: dict, bandwidth_gb_s: float, batch: int = 20) -> dict:
    """Bytes per weight a training step reads and writes, and the samples/s that traffic alone
    would allow at ``bandwidth_gb_s`` (BENCHMARKS.md's floor), for both device states.

    Per padded weight (a pair of devices): the update reads and writes both conductances and
    reads every per-device parameter (float32: 2 x (4 + 4 + 4 x 4 + 2) = 52 bytes; compact,
    three 1-byte codes: 2 x (2 + 2 + 3) = 14); the coincidence counts of a managed update are
    one float32 product written once and read by both passes (12 bytes, either state); the
    forward and backward reads each read both conductances (float32 16, compact 8)."""
    weights = 832 * 512 + 512 * 64  # 784x500 and 500x10 on 64x64 tiles, padded
    parts = {
        "float32": {"device_update": 52, "counts": 12, "forward_backward_reads": 16},
        "compact": {"device_update": 14, "counts": 12, "forward_backward_reads": 8},
    }
    out: dict = {"padded_weights": weights, "bytes_per_weight_per_step": parts}
    for k, p in parts.items():
        seconds = weights * sum(p.values()) / (bandwidth_gb_s * 1e9)
        out[f"{k}_floor_ms_per_step"] = 1e3 * seconds
        out[f"{k}_ceiling_samples_per_s"] = batch / seconds
    aih = sgd["samples_per_s_median"].get("aihwkit_constant_step")
    if aih:
        out["target_5x_aihwkit_samples_per_s"] = 5 * aih
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5, help="alternating side-by-side rounds")
    ap.add_argument("--batches", type=int, default=100, help="timed batches per round")
    ap.add_argument(
        "--aihwkit-python",
        default=None,
        help="python of a venv with aihwkit 1.1.0 (else only this package is timed)",
    )
    ap.add_argument(
        "--name",
        default="analog_throughput",
        help="result name under benchmarks/results/ (JSON and PNG)",
    )
    ap.add_argument(
        "--update-only",
        action="store_true",
        help="time only layer 1's pulsed update, float32 against compact state "
        "(writes <name>_update.json with the copy bandwidth)",
    )
    args = ap.parse_args(argv)
    if args.update_only:
        res = {"layer1_update": layer1_update(args.rounds), "memory_bandwidth": copy_bandwidth()}
        print(res, flush=True)
        _common.save(f"{args.name}_update", res, argv=argv)
        return
    rows = tile_sweep(args.repeats)
    sgd = side_by_side(args.rounds, args.batches, args.aihwkit_python)
    print(sgd, flush=True)
    bandwidth = copy_bandwidth()
    sgd["memory_bandwidth"] = bandwidth
    sgd["traffic_floor"] = traffic_floor(sgd, bandwidth["numpy_copy_gb_per_s"])
    print(bandwidth, sgd["traffic_floor"], flush=True)
    # shared with other jobs, load not controlled: the load average says how busy it was
    out = {
        "tile_sweep": rows,
        "mlp_784_500_10_analog_sgd": sgd,
        "machine": {**_common.machine(), "load_average_at_end": os.getloadavg()[0]},
        "statistic": "median over repeats / rounds",
    }
    _common.save(args.name, out, plot(out), argv=argv, dpi=100)


def plot(out: dict):
    rows, sgd = out["tile_sweep"], out["mlp_784_500_10_analog_sgd"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8))
    tiles = [r["tiles"] for r in rows]
    ax.loglog(tiles, [r["tile_mvm_per_s"] for r in rows], "o-", label="tile-MVMs/s (TAOX_IO)")
    ax.loglog(
        tiles, [r["tile_updates_per_s"] for r in rows], "s-", label="tile pulsed updates/s (BL 31)"
    )
    ax.set_xlabel("tiles (64x64)")
    ax.set_ylabel("per second")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    med = sgd["samples_per_s_median"]
    names = list(med)
    colors = ["tab:orange" if n.startswith("aihwkit") else "tab:blue" for n in names]
    bx.barh(range(len(names)), [med[n] for n in names], color=colors)
    bx.set_yticks(range(len(names)), [n.replace("_", " ") for n in names], fontsize=7)
    bx.set_xscale("log")
    bx.set_xlabel("samples/s (median), 784-500-10, batch 20, BL 31")
    ratio = sgd.get("ratio_constant_step_vs_aihwkit_default")
    if ratio:
        bx.set_title(f"constant step: {ratio:.1f}x aihwkit 1.1.0 (same session)", fontsize=9)
    bx.grid(alpha=0.3, axis="x")
    plt.tight_layout()
    return fig


if __name__ == "__main__":
    main()
