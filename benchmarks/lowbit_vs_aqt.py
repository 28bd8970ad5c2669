"""lowbit vs Google's AQT (aqtp 0.9.0) on the same layer stack, side by side in one process.

AQT is not a dependency of this project: install it in its own venv and put the
repo on the path (same jax 0.10.2 there, so both libraries share one process)::

    python3 -m venv /tmp/aqtvenv && /tmp/aqtvenv/bin/pip install aqtp==0.9.0
    PYTHONPATH=. /tmp/aqtvenv/bin/python benchmarks/lowbit_vs_aqt.py [--repeats 7]

Model: MLP 784-1024-1024-10 (ReLU), batch 256, CPU, as a pure-JAX function whose
three layers call a pluggable ``dot_general``: ``lax.dot_general`` (float32),
``lowbit.dot_general`` (Sun et al. recipe) or AQT's ``fully_quantized`` INT4
``DotGeneral``. Step = loss, gradient, SGD update, jitted. Interleaved rounds;
the figure is the median over rounds of each step time divided by the float32
step of the same round. Also records whether ``jax.jvp`` through each works.
Writes ``benchmarks/results/lowbit_vs_aqt.{json,png}``.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import statistics
import time

import _common
import jax
import jax.numpy as jnp
from jax import lax

import lowbit

DN = (((1,), (0,)), ((), ()))


def init(key, widths=(784, 1024, 1024, 10)):
    params = []
    for k, (a, b) in zip(jax.random.split(key, len(widths) - 1), itertools.pairwise(widths)):
        params.append(
            {"w": jax.random.normal(k, (a, b)) / jnp.sqrt(jnp.float32(a)), "b": jnp.zeros((b,))}
        )
    return params


def apply(dg, params, x):
    h = x.reshape(x.shape[0], -1)
    for i, p in enumerate(params):
        h = dg(h, p["w"], DN) + p["b"]
        if i < len(params) - 1:
            h = jax.nn.relu(h)
    return h


def loss(dg, params, x, y):
    logits = apply(dg, params, x)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))


def make_step(dg):
    @jax.jit
    def step(params, x, y):
        g = jax.grad(functools.partial(loss, dg))(params, x, y)
        return jax.tree.map(lambda p, g: p - 0.05 * g, params, g)

    return step


def variants():
    from aqt.jax.v2 import config as aqt_config

    out = {
        "float32 (lax.dot_general)": lax.dot_general,
        "lowbit full recipe (INT4 fwd, FP4 radix-4 bwd, TPR)": functools.partial(
            lowbit.dot_general, config=lowbit.QuantConfig(activations=lowbit.UINT4)
        ),
        "lowbit, stochastic gradient rounding": functools.partial(
            lowbit.dot_general,
            config=lowbit.QuantConfig(activations=lowbit.UINT4, gradient_rounding="stochastic"),
        ),
        "lowbit forward only INT4": functools.partial(
            lowbit.dot_general,
            config=lowbit.QuantConfig(
                activations=lowbit.UINT4, gradients=lowbit.FLOAT32, two_phase=False
            ),
        ),
        "AQT fully_quantized INT4 fwd+bwd (nearest)": aqt_config.fully_quantized(
            fwd_bits=4, bwd_bits=4, use_stochastic_rounding=False
        ),
        "AQT INT4 forward only": aqt_config.fully_quantized(
            fwd_bits=4, bwd_bits=None, use_stochastic_rounding=False
        ),
    }
    return out


def plot(result: dict):
    """Bar chart of the step-time ratios (also runnable alone: ``--plot-only``)."""
    names = list(result["variants"])
    colors = [
        "gray" if n.startswith("float32") else "C0" if n.startswith("lowbit") else "C1"
        for n in names
    ]
    fig, _ = _common.ratio_bars(
        [n + ("" if result["variants"][n]["jvp"] == "ok" else "  [no jvp]") for n in names],
        [result["variants"][n]["median_ratio_to_float32"] for n in names],
        colors,
        xlabel="training step time / float32 step",
        title=f"MLP 784-1024-1024-10, batch {result['batch']}, median of {result['repeats']}",
    )
    fig.tight_layout()
    return fig


def main(argv=None):
    args = _common.parse_step_timing(argv, __doc__, "--plot-only", "redraw the PNG from the JSON")
    if args.plot_only:
        fig = plot(json.loads((_common.RESULTS / "lowbit_vs_aqt.json").read_text()))
        fig.savefig(_common.RESULTS / "lowbit_vs_aqt.png", dpi=110)
        return
    import aqt

    kx, ky, kp = jax.random.split(jax.random.key(0), 3)
    x = jax.random.uniform(kx, (args.batch, 784))
    y = jax.random.randint(ky, (args.batch,), 0, 10)
    params0 = init(kp)
    runs, jvp_ok = {}, {}
    for name, dg in variants().items():
        step = make_step(dg)
        p1 = step(params0, x, y)
        jax.block_until_ready(p1)
        runs[name] = [step, p1]
        try:
            v = jax.tree.map(jnp.ones_like, params0)
            jax.block_until_ready(
                jax.jit(lambda p, v: jax.jvp(lambda q: loss(dg, q, x, y), (p,), (v,)))(params0, v)
            )
            jvp_ok[name] = "ok"
        except Exception as e:
            jvp_ok[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    times = {n: [] for n in runs}
    for _ in range(args.repeats):
        for name, r in runs.items():
            step, prm = r
            t0 = time.perf_counter()
            for _ in range(args.iters):
                prm = step(prm, x, y)
            jax.block_until_ready(prm)
            times[name].append((time.perf_counter() - t0) / args.iters)
            r[1] = prm
    base = times["float32 (lax.dot_general)"]
    result = {
        "command": "PYTHONPATH=. /tmp/aqtvenv/bin/" + _common.command(argv),
        "machine": {
            **_common.machine(),
            "aqt": getattr(aqt, "__version__", "aqtp 0.9.0"),
            "load_avg_at_end": os.getloadavg(),
        },
        "batch": args.batch,
        "repeats": args.repeats,
        "iters_per_repeat": args.iters,
        "issue_reference_ratios": {
            "AQT INT4 fwd+bwd": 2.35,
            "AQT with SR": 3.08,
            "AQT forward only": 1.18,
        },
        "variants": {},
    }
    for name, ts in times.items():
        ratio = statistics.median([t / b for t, b in zip(ts, base)])
        result["variants"][name] = {
            "median_step_ms": 1e3 * statistics.median(ts),
            "median_ratio_to_float32": ratio,
            "jvp": jvp_ok[name],
            "all_step_ms": [1e3 * t for t in ts],
        }
        print(
            f"{name:55s} {1e3 * statistics.median(ts):8.2f} ms  x{ratio:.2f}  jvp: {jvp_ok[name]}",
            flush=True,
        )
    _common.save("lowbit_vs_aqt", result, plot(result), argv=argv)


if __name__ == "__main__":
    main()
