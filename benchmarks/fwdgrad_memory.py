"""Working memory of forward gradients against backprop (compiled temp bytes).

A 1024-wide ReLU MLP at batch 2048 with depth 4 and 16, float32. For each
program (one gradient or gradient estimate, params and batch as inputs) the
XLA-compiled ``memory_analysis().temp_size_in_bytes`` is recorded: the scratch
memory beyond inputs and outputs. Variants: backprop (jax.grad), a naive
jax.jvp with all tangents drawn up front, and fwdgrad.fwd_grad with K = 1 and
K = 4 (and K = 4 in chunks of 1, which recomputes the primal per tangent).
Nothing is executed, so the numbers are exact and machine-independent for a
given XLA version and backend.

    python benchmarks/fwdgrad_memory.py

Writes benchmarks/results/fwdgrad_memory.json and .png.
"""

from __future__ import annotations

import _common
import jax

import fwdgrad
from beyondbp import hlo

WIDTH, BATCH = 1024, 2048


def problem(depth):
    return hlo.relu_mlp_probe(depth, WIDTH, BATCH)


def temp_mib(fn, *args):
    return hlo.temp_bytes(fn, *args) / 2**20


def naive_jvp(f):
    def g(p, x, key):
        t = fwdgrad.sample_tangents(key, p)
        _, d = jax.jvp(lambda q: f(q, x), (p,), (t,))
        return jax.tree.map(lambda v: d * v, t)

    return g


def main():
    key = jax.random.key(0)
    out = {
        "problem": f"ReLU MLP, width {WIDTH}, batch {BATCH}, float32; compiled temp MiB",
        "results": {},
    }
    for depth in (4, 16):
        f, params, x = problem(depth)
        r = {
            "backprop": temp_mib(jax.grad(f), params, x),
            "naive jax.jvp": temp_mib(naive_jvp(f), params, x, key),
        }
        for K, chunk in ((1, None), (4, None), (4, 1)):
            fg = fwdgrad.fwd_grad(f, num_tangents=K, chunk_size=chunk)
            name = f"fwdgrad K={K}" + (f" chunk {chunk}" if chunk else "")
            r[name] = temp_mib(lambda p, x, k, fg=fg: fg(k, p, x), params, x, key)
        out["results"][str(depth)] = {
            n: {"temp_mib": v, "ratio_to_backprop": v / r["backprop"]} for n, v in r.items()
        }
        print(
            depth, {n: (round(v, 1), round(v / r["backprop"], 3)) for n, v in r.items()}, flush=True
        )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(out["results"]["4"])
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, depth in enumerate(("4", "16")):
        ax.bar(
            np.arange(len(names)) + 0.4 * i,
            [out["results"][depth][n]["temp_mib"] for n in names],
            0.4,
            label=f"depth {depth}",
        )
    ax.set_xticks(np.arange(len(names)) + 0.2, names, rotation=20, ha="right")
    ax.set_ylabel("compiled temp memory (MiB)")
    ax.set_title(f"Working memory, {WIDTH}-wide MLP, batch {BATCH}")
    ax.legend()
    fig.tight_layout()
    _common.save("fwdgrad_memory", out, fig)


if __name__ == "__main__":
    main()
