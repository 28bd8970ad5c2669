"""Cosine similarity of forward-gradient estimates with the exact gradient.

Against the number of tangents K and the model size n, for both tangent
distributions and both aggregations, on ReLU MLPs (784-h-10, h in 16, 64, 256)
with a fixed MNIST-like random batch. Theory (isotropic tangents): for the mean
of K forward gradients E[cos] ~ sqrt(K / (K + n)); for the orthogonal
projection onto K random directions cos ~ sqrt(K / n). Each point is the mean
over 32 independent keys.

    python benchmarks/fwdgrad_cosine.py

Writes benchmarks/results/fwdgrad_cosine.json and .png.
"""

from __future__ import annotations

import argparse

import _common
import jax
import jax.numpy as jnp
import numpy as np
import optax

import fwdgrad

HIDDEN = (16, 64, 256)
KS = (1, 4, 16, 64)


def model(h):
    k1, k2 = jax.random.split(jax.random.key(h))
    params = {
        "w1": jax.random.normal(k1, (784, h)) * jnp.sqrt(2 / 784),
        "b1": jnp.zeros((h,)),
        "w2": jax.random.normal(k2, (h, 10)) * jnp.sqrt(1 / h),
        "b2": jnp.zeros((10,)),
    }
    x = jax.random.uniform(jax.random.key(1), (64, 784))
    y = jax.random.randint(jax.random.key(2), (64,), 0, 10)

    def loss(p):
        z = jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
        return optax.softmax_cross_entropy_with_integer_labels(z, y).mean()

    return params, loss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--out",
        default=str(_common.RESULTS / "fwdgrad_cosine"),
        help="output path without extension (.json and .png are written)",
    )
    ap.add_argument(
        "--hidden", default=",".join(map(str, HIDDEN)), help="hidden widths to measure, e.g. 256"
    )
    args = ap.parse_args()
    name = _common.out_name(args.out)
    hidden = tuple(int(h) for h in args.hidden.split(","))
    out = {"matmul_precision": jax.config.jax_default_matmul_precision or "default", "results": []}
    for h in hidden:
        params, loss = model(h)
        n = sum(p.size for p in jax.tree.leaves(params))
        exact = jax.grad(loss)(params)
        for tangent in fwdgrad.TANGENTS:
            for agg in fwdgrad.AGGREGATES:
                for K in KS:
                    fg = fwdgrad.fwd_grad(loss, num_tangents=K, tangent=tangent, aggregate=agg)
                    # keys one after another (lax.map): a vmap over 32 keys would hold
                    # 32 x K parameter-sized tangents at once, gigabytes for n = 200k at K = 64
                    cos = jax.jit(
                        lambda ks: jax.lax.map(
                            lambda k: fwdgrad.cosine_similarity(fg(k, params), exact), ks
                        )
                    )(jax.random.split(jax.random.key(7), 32))
                    theory = np.sqrt(K / n) if agg == "orthogonal" else np.sqrt(K / (K + n))
                    out["results"].append(
                        {
                            "hidden": h,
                            "n": n,
                            "tangent": tangent,
                            "aggregate": agg,
                            "K": K,
                            "cosine_mean": float(cos.mean()),
                            "cosine_std": float(cos.std()),
                            "theory": float(theory),
                        }
                    )
                    print(out["results"][-1], flush=True)
        # Written after every model size, so a run stopped part-way keeps what it measured.
        _common.save(name, out)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, agg in zip(axes, fwdgrad.AGGREGATES):
        for h in hidden:
            for tangent, ls in zip(fwdgrad.TANGENTS, ("-", "--")):
                rows = [
                    r
                    for r in out["results"]
                    if r["hidden"] == h and r["tangent"] == tangent and r["aggregate"] == agg
                ]
                ax.errorbar(
                    [r["K"] for r in rows],
                    [r["cosine_mean"] for r in rows],
                    [r["cosine_std"] for r in rows],
                    ls=ls,
                    marker="o",
                    label=f"n={rows[0]['n']}, {tangent}",
                )
            ax.plot([r["K"] for r in rows], [r["theory"] for r in rows], "k:", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tangents K")
        ax.set_title(f"aggregate={agg!r} (dotted: theory)")
    axes[0].set_ylabel("cosine(estimate, exact gradient)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    _common.save(name, out, fig)


if __name__ == "__main__":
    main()
