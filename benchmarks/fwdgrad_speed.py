"""Step time of forward gradients against backprop, side by side in one run.

Baydin et al.'s MNIST MLP 784-1024-1024-10, float32, softmax cross-entropy, one
SGD step (estimate + update) per call, on whatever CPU runs this. Every variant
is timed in the same process, interleaved round by round, and reported as the
median over rounds of (variant time / backprop time) in that round.

Variants: backprop (jax.grad); fwdgrad.forward_gradient with K = 1, 4, 16
(Rademacher, mean); and naive JAX baselines: jax.jvp with a full Gaussian
tangent, with jax.random.rademacher, and a plain jax.vmap of jax.jvp over K
tangents.

    python benchmarks/fwdgrad_speed.py [--quick] [--batches 64,256,1024] [--out PATH]

Writes benchmarks/results/fwdgrad_speed.json and .png (or PATH.json / PATH.png).
"""

from __future__ import annotations

import argparse
import time

import _common
import jax
import jax.numpy as jnp
import numpy as np
import optax

import fwdgrad

WIDTHS = (784, 1024, 1024, 10)


def init(key):
    ks = jax.random.split(key, len(WIDTHS) - 1)
    return [
        {"w": jax.random.normal(k, (a, b)) * jnp.sqrt(2.0 / a), "b": jnp.zeros((b,))}
        for k, a, b in zip(ks, WIDTHS[:-1], WIDTHS[1:])
    ]


def loss(params, x, y):
    h = x
    for p in params[:-1]:
        h = jax.nn.relu(h @ p["w"] + p["b"])
    logits = h @ params[-1]["w"] + params[-1]["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def make_variants(x, y, vmap_baseline=True):
    sgd = optax.sgd(1e-3)

    def stepper(grad_fn):
        @jax.jit
        def step(params, opt_state, key):
            g = grad_fn(params, key)
            u, opt_state = sgd.update(g, opt_state, params)
            return optax.apply_updates(params, u), opt_state

        return step

    def naive(sample):
        def grad_fn(p, key):
            leaves, td = jax.tree.flatten(p)
            t = jax.tree.unflatten(
                td, [sample(jax.random.fold_in(key, i), l.shape) for i, l in enumerate(leaves)]
            )
            _, d = jax.jvp(lambda q: loss(q, x, y), (p,), (t,))
            return jax.tree.map(lambda v: d * v, t)

        return grad_fn

    def vmap_jvp(K):
        def grad_fn(p, key):
            def one(k):
                t = fwdgrad.sample_tangents(jax.random.fold_in(key, k), p)
                _, d = jax.jvp(lambda q: loss(q, x, y), (p,), (t,))
                return jax.tree.map(lambda v: d * v, t)

            return jax.tree.map(lambda a: a.mean(0), jax.vmap(one)(jnp.arange(K, dtype=jnp.uint32)))

        return grad_fn

    v = {"backprop": stepper(lambda p, k: jax.grad(loss)(p, x, y))}
    for K in (1, 4, 16):
        fg = fwdgrad.fwd_grad(loss, num_tangents=K)
        v[f"fwdgrad K={K}"] = stepper(lambda p, k, fg=fg: fg(k, p, x, y))
    v["naive jvp, gaussian"] = stepper(naive(lambda k, s: jax.random.normal(k, s)))
    v["naive jvp, jax.random.rademacher"] = stepper(
        naive(lambda k, s: jax.random.rademacher(k, s, jnp.float32))
    )
    # The plain-vmap baselines materialise K parameter-sized tangents; on a small CPU they take
    # minutes per round at batch 1024, so large-batch sweeps may leave them out.
    for K in (4, 16) if vmap_baseline else ():
        v[f"vmap of jvp K={K}"] = stepper(vmap_jvp(K))
    return v, sgd


def run(batch, rounds, iters, vmap_baseline=True):
    x = jax.random.uniform(jax.random.key(1), (batch, 784))
    y = jax.random.randint(jax.random.key(2), (batch,), 0, 10)
    params = init(jax.random.key(0))
    variants, sgd = make_variants(x, y, vmap_baseline)
    state = sgd.init(params)
    key = jax.random.key(3)
    for f in variants.values():  # compile
        jax.block_until_ready(f(params, state, key))
    times = {n: [] for n in variants}
    for _ in range(rounds):
        for n, f in variants.items():
            t0 = time.perf_counter()
            for _ in range(iters):
                out = f(params, state, key)
            jax.block_until_ready(out)
            times[n].append((time.perf_counter() - t0) / iters)
    bp = np.array(times["backprop"])
    return {
        n: {
            "median_s": float(np.median(t)),
            "ratio_to_backprop": float(np.median(np.array(t) / bp)),
        }
        for n, t in times.items()
    }


def main():
    ap = argparse.ArgumentParser()
    _common.add_switch(ap, "--quick", "batch 64 only")
    ap.add_argument("--batches", default="64,256,1024")
    ap.add_argument(
        "--vmap-baseline-max-batch",
        type=int,
        default=1 << 30,
        help="time the plain vmap-of-jvp baselines only up to this batch size",
    )
    ap.add_argument(
        "--out",
        default=str(_common.RESULTS / "fwdgrad_speed"),
        help="output path without extension (.json and .png are written)",
    )
    args = ap.parse_args()
    name = _common.out_name(args.out)
    batches = (64,) if args.quick else tuple(int(b) for b in args.batches.split(","))
    out = {"model": "MLP 784-1024-1024-10, float32, ReLU, softmax CE, SGD step", "results": {}}
    for b in batches:
        rounds, iters = (7, 5) if b <= 256 else (5, 2)
        out["results"][str(b)] = run(b, rounds, iters, b <= args.vmap_baseline_max_batch)
        print(
            b,
            {n: round(r["ratio_to_backprop"], 2) for n, r in out["results"][str(b)].items()},
            flush=True,
        )
        # Written after every batch size, so a run stopped part-way keeps what it measured.
        _common.save(name, out)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(next(iter(out["results"].values())))  # the first (smallest) batch has them all
    fig, ax = plt.subplots(figsize=(10, 4.5))
    w = 0.8 / len(batches)
    for i, b in enumerate(out["results"]):
        ax.bar(
            np.arange(len(names)) + i * w,
            [out["results"][b].get(n, {}).get("ratio_to_backprop", np.nan) for n in names],
            w,
            label=f"batch {b}",
        )
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(
        np.arange(len(names)) + w * (len(batches) - 1) / 2, names, rotation=30, ha="right"
    )
    ax.set_ylabel("step time / backprop step time")
    ax.set_yscale("log")
    ax.set_title("Forward gradient vs backprop, MLP 784-1024-1024-10 (median of rounds)")
    ax.legend()
    fig.tight_layout()
    _common.save(name, out, fig)


if __name__ == "__main__":
    main()
