"""Step time of forward gradients against backprop, side by side in one run.

Baydin et al.'s MNIST MLP 784-1024-1024-10, float32, softmax cross-entropy, one
SGD step (estimate + update) per call, on whatever CPU runs this. Every variant
is timed in the same process, interleaved round by round, and reported as the
median over rounds of (variant time / backprop time) in that round.

Variants: backprop (jax.grad); fwdgrad.fwd_grad with K = 1, 4, 16
(Rademacher, mean); and naive JAX baselines: jax.jvp with a full Gaussian
tangent, with jax.random.rademacher, and a plain jax.vmap of jax.jvp over K
tangents.

The user's path (``user_path`` in the JSON, :func:`run_user_path`): a user does not call
``fwd_grad`` and ``sgd.update`` by hand but chains ``fwdgrad.forward_gradient`` with
``optax.sgd`` and jits one training step that carries params and optimiser state from call
to call, against ``jax.grad`` + the same ``optax.sgd``. The estimator variants above measure
something narrower, which is where the earlier 0.91x (K = 1, batch 64) came from: their
step is ``fwd_grad`` straight into ``sgd.update``, so XLA fuses ``params - lr * d * v``
into one pass over the parameters and the estimate is never written out. Until stop 28
the transform added its non-finite policy as ``bbcore.refuse_nonfinite``: an ``all_finite``
reduction over the estimate and the loss, then a ``lax.cond`` whose branches return the
estimate or zeros, which materialised the parameter-sized estimate, read it again for the
check and again for the update (memory traffic of the order of the parameter count, 1.9M
floats here, the same at any batch, so it mattered most at small batches). It now decides on
the K coefficients and the loss and selects on scalars, so the estimate fuses into the
update again. The floor row (``jvp along a given tangent``) takes its tangent as an input
drawn once before timing: what K = 1 costs with free random numbers. The user-path run
still times ``fwd_grad`` + the old policy written by hand
(``lax.cond``), which shows what the change removed.

    python benchmarks/fwdgrad_speed.py [--quick] [--batches 64,256,1024] [--out PATH]
    python benchmarks/fwdgrad_speed.py --user-path-only --batches 64,256

Writes benchmarks/results/fwdgrad_speed.json and .png (or PATH.json / PATH.png).
"""

from __future__ import annotations

import argparse
import functools

import _common
import jax
import jax.numpy as jnp
import numpy as np
import optax

import fwdgrad
from fwdgrad import _tangents

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
    calls = {n: (lambda f=f: f(params, state, key)) for n, f in variants.items()}
    times = _common.interleaved(calls, rounds, iters)
    bp = np.array(times["backprop"])
    return {
        n: {
            "median_s": float(np.median(t)),
            "ratio_to_backprop": float(np.median(np.array(t) / bp)),
        }
        for n, t in times.items()
    }


def _user_paths(sgd) -> dict:
    """The user's path, ``chain(forward_gradient(...), sgd)``, in each variant timed."""

    def path(**kw):
        return optax.chain(fwdgrad.forward_gradient(seed=0, **kw), sgd)

    # Rank-one matrix tangents (s r^T) once per strategy: the loop takes x (s r^T) as
    # (x s) r^T, a matrix-vector product; "vmap" materialises the tangent, and is what "auto"
    # picks on a GPU, so there the loop row is the one to read. K = 4 once per strategy too:
    # "auto" is what a user gets (fwdgrad.resolve_strategy), the others what it chose from.
    return {
        "user path: chain(forward_gradient, sgd)": path(num_tangents=1),
        **{
            f"user path rank1 {s}: chain(forward_gradient(tangent='rank1'), sgd)": path(
                num_tangents=1, tangent="rank1", strategy=s
            )
            for s in ("auto", "loop", "vmap")
        },
        **{
            f"user path K=4 {s}: chain(forward_gradient, sgd)": path(num_tangents=4, strategy=s)
            for s in fwdgrad.STRATEGIES
        },
        "user path K=4 rank1 loop: chain(forward_gradient, sgd)": path(
            num_tangents=4, tangent="rank1", strategy="loop"
        ),
    }


def _user_steps(x, y):
    """Jitted ``(params, state) -> (params, state)`` steps of the user's path and its parts."""
    import bbcore

    sgd = optax.sgd(1e-3)

    def loss_fn(p):
        return loss(p, x, y)

    def chained(tx, grads_of):
        @jax.jit
        def step(params, state):
            u, state = tx.update(grads_of(params), state, params, loss_fn=loss_fn)
            return optax.apply_updates(params, u), state

        return step

    fg = fwdgrad.fwd_grad(loss_fn)
    vfg = fwdgrad.value_and_fwd_grad(loss_fn)
    key = jax.random.key(0)

    def guarded(params):  # the transform's non-finite policy, written out
        value, g = vfg(key, params)
        return jax.lax.cond(
            bbcore.all_finite(g, value), lambda: g, lambda: jax.tree.map(jnp.zeros_like, g)
        )

    # The floor of any K = 1 estimator that writes its tangent out: one tangent drawn before
    # timing and passed in, then jvp along it and d * v into the update (no draw at all).
    v0 = _tangents.sample_tangents(jax.random.key(5), init(jax.random.key(0)))

    def given_tangent(params):
        d = jax.jvp(loss_fn, (params,), (v0,))[1]
        return jax.tree.map(lambda t: d * t, v0)

    return {
        "backprop: jax.grad + optax.sgd": (chained(sgd, jax.grad(loss_fn)), sgd),
        **{
            name: (chained(optax.with_extra_args_support(tx), lambda p: None), tx)
            for name, tx in _user_paths(sgd).items()
        },
        "fwd_grad + optax.sgd (the narrower step)": (chained(sgd, lambda p: fg(key, p)), sgd),
        "fwd_grad + non-finite cond + optax.sgd": (chained(sgd, guarded), sgd),
        "floor: jvp along a given tangent + optax.sgd (no draw)": (
            chained(sgd, given_tangent),
            sgd,
        ),
    }


def run_user_path(batch, rounds, iters):
    """Median over interleaved rounds of (variant step time / backprop step time), K = 1,
    params and optimiser state carried from step to step as in a training loop."""
    x = jax.random.uniform(jax.random.key(1), (batch, 784))
    y = jax.random.randint(jax.random.key(2), (batch,), 0, 10)
    p0 = init(jax.random.key(0))
    variants = _user_steps(x, y)
    carry = {n: (p0, tx.init(p0)) for n, (_, tx) in variants.items()}

    def step(n, f):  # carries params and state from call to call, as a training loop does
        carry[n] = f(*carry[n])
        return carry[n]

    times = _common.interleaved(
        {n: functools.partial(step, n, f) for n, (f, _) in variants.items()}, rounds, iters
    )
    bp = np.array(times["backprop: jax.grad + optax.sgd"])
    return {
        n: {
            "median_s": float(np.median(t)),
            "ratio_to_backprop": float(np.median(np.array(t) / bp)),
            "ratio_spread": [float(q) for q in np.percentile(np.array(t) / bp, [25, 75])],
        }
        for n, t in times.items()
    }


def _plot_user_path(user_path: dict):
    """Ratio to backprop per variant and batch, interquartile range as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(next(iter(user_path.values())))
    fig, ax = plt.subplots(figsize=(11, 5.5))
    w = 0.8 / len(user_path)
    for i, (b, res) in enumerate(user_path.items()):
        r = np.array([res[n]["ratio_to_backprop"] for n in names])
        lo, hi = np.array([res[n]["ratio_spread"] for n in names]).T
        ax.bar(np.arange(len(names)) + i * w, r, w, yerr=[r - lo, hi - r], label=f"batch {b}")
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xticks(
        np.arange(len(names)) + 0.4 - w / 2,
        [n.split(":")[0] for n in names],
        fontsize=7,
        rotation=30,
        ha="right",
    )
    ax.set(
        ylabel="step time / backprop's (median, IQR)", title="Forward gradient on the user's path"
    )
    ax.legend()
    fig.tight_layout()
    return fig


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
        "--user-path-only",
        action="store_true",
        help="time only the user's path (chain(forward_gradient, sgd) vs jax.grad + sgd)",
    )
    ap.add_argument("--rounds", type=_common.positive_int, default=None)
    ap.add_argument(
        "--out",
        default=str(_common.RESULTS / "fwdgrad_speed"),
        help="output path without extension (.json and .png are written)",
    )
    args = ap.parse_args()
    name = _common.out_name(args.out)
    batches = (64,) if args.quick else tuple(int(b) for b in args.batches.split(","))
    out = {"model": "MLP 784-1024-1024-10, float32, ReLU, softmax CE, SGD step", "results": {}}
    if args.user_path_only and name == _common.out_name(_common.RESULTS / "fwdgrad_speed"):
        name = "fwdgrad_speed_user_path"  # do not overwrite the full run's results
    out["backend"] = jax.default_backend()
    out["auto_strategy"] = {
        f"K={k}": fwdgrad.resolve_strategy("auto", k, init(jax.random.key(0))) for k in (1, 4)
    }
    out["user_path"] = {}
    for b in batches:
        rounds = args.rounds or (15 if b <= 256 else 7)
        out["user_path"][str(b)] = run_user_path(b, rounds, 10 if b <= 256 else 3)
        print(
            b,
            "user path:",
            {n: round(r["ratio_to_backprop"], 3) for n, r in out["user_path"][str(b)].items()},
            flush=True,
        )
        _common.save(name, out)
    if args.user_path_only:
        _common.save(name, out, _plot_user_path(out["user_path"]))
        return
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
