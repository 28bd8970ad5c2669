"""Baydin et al. (2022), "Gradients without Backpropagation", sec. 5, in its own set-up.

Forward gradient descent (FG: ``g = (grad f . v) v`` with one standard-normal tangent
``v`` per step, the paper's eq. 4 and Algorithm 1; :func:`fwdgrad.value_and_fwd_grad`)
against gradient descent on the exact gradient (BP: ``jax.value_and_grad``):

* **Test functions** (sec. 5.1): Beale and Rosenbrock, FG and exact gradient descent from
  the same start at the same learning rate; the trajectories on the contour plot. Starts,
  rates and iteration counts are :data:`FUNCTIONS` (ours, chosen so both reach the minimum).
* **MNIST** (sec. 5.2): multinomial logistic regression (784-10), the MLP 784-1024-1024-10
  (ReLU) and the paper's CNN (four 3x3 convolutions of 64 channels, unpadded, ReLU, 2x2 max
  pools after the second and fourth; linear 1024 (ReLU) and 10), cross entropy, minibatch
  64, plain SGD at ``eta_i = eta_0 exp(-i k)`` with ``k = 1e-4`` (sec. 5.2), PyTorch's
  default initialisation (uniform, +-1/sqrt(fan_in)), inputs in [0, 1], mean cross entropy.
  The initial rates ``eta_0`` are :data:`LR` (the paper's figure captions as we read them:
  1e-4 for logistic regression, 2e-5 for the MLP, 2e-4 for the CNN; the same for FG and
  BP). The paper's section 5 text was not in the stored corpora this was checked against;
  the public re-implementations agree on batch 64, ``k = 1e-4``, N(0, I) tangents, no
  momentum and ``eta_0 = 2e-4`` for the MLP and the CNN (orobix/fwdgrad ``configs/``,
  200 epochs; their CNN pads its convolutions, 3136 -> 1024 -> 10). The rates are flags
  (``--lr-logreg``, ``--lr-mlp``, ``--lr-cnn``). At the MLP's 2e-5 the decay caps the
  summed rate at ``eta_0 / k = 0.2``, so even BP cannot leave loss 2.3 by much (its
  first-order drop is ``sum eta_i |grad|^2``, ``|grad|^2 ~ 0.2`` at initialisation): the
  plateau at 2.29 is the rate, not a bug (BENCHMARKS.md).

BP and FG train side by side in one process, interleaved: the same batches, one jitted
``lax.scan`` of ``--chunk`` steps per method in turn (for ``--loop-models``, by default the
CNN, a Python loop over one jitted step: XLA:CPU ran the CNN's backprop step 15x slower
inside the scan's while loop), the order rotating chunk by chunk so no method always runs on
a warm cache, each chunk timed to its last result. FG runs twice: with
the paper's Gaussian tangents (``fg-gaussian``) and with this library's default Rademacher
tangents (``fg-rademacher``, same estimator, one random bit per entry). The training loss is
the minibatch loss before each update (what the paper plots), smoothed over ``--window``
steps. For every seed the script records the wall-clock time and the steps each method needs
to bring the smoothed loss down to every level of :data:`LADDER`, and the FG/BP ratios of
time per step and of time and steps to every level both reached. The headline is the lowest
level that BP and the FG variant reach in every seed, with mean and std over seeds of

    time ratio = (FG time per step / BP time per step) x (FG steps / BP steps)

so FG is "twice as fast" only where its step costs at most half of BP's and its noisier
steps need no more of them.

    python benchmarks/baydin2022.py --quick           # smoke: 60 steps, 1 seed
    nice -n 10 python benchmarks/baydin2022.py --window 40   # 3 seeds, STEPS per model

Writes ``benchmarks/results/baydin2022.json`` (after every run) and ``baydin2022.png``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import _common
import baydin2022_plot
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import fwdgrad
from beyondbp import datasets

#: Initial learning rates eta_0 (the same for FG and BP) and the decay constant k (sec. 5.2).
LR = {"logreg": 1e-4, "mlp": 2e-5, "cnn": 2e-4}
DECAY_K = 1e-4
BATCH = 64
#: Smoothed training losses whose first crossing is timed; the headline ratio is read at the
#: lowest level that BP and the FG variant reach in every seed (a fixed ladder, not fitted).
LADDER = (2.29, 2.28, 2.27, 2.26, 2.25, 2.2, 2.1, 2.0, 1.8, 1.5, 1.2, 1.0, 0.8, 0.6, 0.4, 0.3)
#: Default steps per model (--steps-<model>): what a loaded 2-core CPU runs in about an hour.
STEPS = {"logreg": 4000, "mlp": 400, "cnn": 60}
#: Test functions: (start, learning rate, iterations).
FUNCTIONS = {"beale": ((1.0, 1.0), 0.01, 2000), "rosenbrock": ((-1.5, 2.0), 5e-4, 10000)}


def beale(p):
    x, y = p[0], p[1]
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


def rosenbrock(p):
    return (1.0 - p[0]) ** 2 + 100.0 * (p[1] - p[0] ** 2) ** 2


def trajectory(f, start, lr, iters, key, forward: bool):
    """Iterates ``(iters + 1, 2)`` of (forward-)gradient descent on ``f`` from ``start``."""
    fg = fwdgrad.value_and_fwd_grad(f, tangent="gaussian")

    def body(p, i):
        g = fg(jax.random.fold_in(key, i), p)[1] if forward else jax.grad(f)(p)
        p = p - jnp.float32(lr) * g
        return p, p

    p0 = jnp.asarray(start, jnp.float32)
    _, ps = jax.jit(lambda p: lax.scan(body, p, jnp.arange(iters)))(p0)
    return np.concatenate([np.asarray(p0)[None], np.asarray(ps)])


def _uniform(key, shape, fan_in):
    # PyTorch's default for Linear and Conv2d: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    b = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, jnp.float32, -b, b)


def _dense(key, a, b):
    kw, kb = jax.random.split(key)
    return {"w": _uniform(kw, (a, b), a), "b": _uniform(kb, (b,), a)}


def _conv(key, cin, cout):
    kw, kb = jax.random.split(key)
    return {"w": _uniform(kw, (3, 3, cin, cout), 9 * cin), "b": _uniform(kb, (cout,), 9 * cin)}


def init(model: str, key) -> dict:
    """Parameters of ``"logreg"``, ``"mlp"`` or ``"cnn"``."""
    ks = jax.random.split(key, 6)
    if model == "logreg":
        return {"out": _dense(ks[0], 784, 10)}
    if model == "mlp":
        return {
            "h1": _dense(ks[0], 784, 1024),
            "h2": _dense(ks[1], 1024, 1024),
            "out": _dense(ks[2], 1024, 10),
        }
    convs = {f"c{i}": _conv(ks[i], 1 if i == 0 else 64, 64) for i in range(4)}
    return {**convs, "fc": _dense(ks[4], 1024, 1024), "out": _dense(ks[5], 1024, 10)}


def _pool(h):
    return lax.reduce_window(h, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def apply(model: str, params: dict, x: jax.Array) -> jax.Array:
    """Logits ``(B, 10)`` of a batch ``x`` ``(B, 28, 28, 1)`` in [0, 1]."""
    if model == "cnn":
        h = x.reshape(x.shape[0], 28, 28, 1)
        for i in range(4):
            p = params[f"c{i}"]
            h = lax.conv_general_dilated(
                h, p["w"], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
            h = jax.nn.relu(h + p["b"])
            h = _pool(h) if i in (1, 3) else h
        h = jax.nn.relu(h.reshape(h.shape[0], -1) @ params["fc"]["w"] + params["fc"]["b"])
    else:
        h = x.reshape(x.shape[0], -1)
        for name in ("h1", "h2") if model == "mlp" else ():
            h = jax.nn.relu(h @ params[name]["w"] + params[name]["b"])
    return h @ params["out"]["w"] + params["out"]["b"]


def make_chunk(model: str, lr0: float, forward: bool, tangent: str, scan: bool = True):
    """``(params, i0, key, xs, ys) -> (params, losses)``: ``len(xs)`` SGD steps, one jitted
    ``lax.scan``, or (``scan=False``, the same arithmetic) a Python loop of one jitted step."""

    def loss(p, x, y):
        logits = apply(model, p, x)
        return jnp.mean(
            jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, y[:, None], -1)[:, 0]
        )

    fg = fwdgrad.value_and_fwd_grad(loss, tangent=tangent)
    bp = jax.value_and_grad(loss)

    def body(carry, batch):
        p, i, key = carry
        x, y = batch
        value, g = fg(jax.random.fold_in(key, i), p, x, y) if forward else bp(p, x, y)
        rate = jnp.float32(lr0) * jnp.exp(-jnp.float32(DECAY_K) * i.astype(jnp.float32))
        p = jax.tree.map(lambda a, b: a - rate * b, p, g)
        return (p, i + 1, key), value

    @jax.jit
    def run(params, i0, key, xs, ys):
        (params, _, _), losses = lax.scan(body, (params, i0, key), (xs, ys))
        return params, losses

    step = jax.jit(body)

    def loop(params, i0, key, xs, ys):
        carry, losses = (params, i0, key), []
        for x, y in zip(xs, ys):
            carry, value = step(carry, (x, y))
            losses.append(value)
        return carry[0], jnp.stack(losses)

    return run if scan else loop


def smoothed(losses: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``window`` minibatch losses at every step (fewer at the start)."""
    c = np.cumsum(np.concatenate([[0.0], losses]))
    idx = np.arange(1, len(losses) + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def _chunks(train, steps, chunk, seed):
    stream = datasets.batches(train, BATCH, seed=seed, epochs=None)
    for _ in range(steps // chunk):
        xs, ys = zip(*[next(stream)[:2] for _ in range(chunk)])
        yield jnp.asarray(np.stack(xs)), jnp.asarray(np.stack(ys))


def train_pair(model: str, train, seed: int, args) -> dict:
    """BP and every FG variant from the same initial parameters on the same batches, their
    chunks interleaved (the order rotating chunk by chunk)."""
    lr0 = getattr(args, f"lr_{model}")
    p0 = init(model, jax.random.key(seed))
    scan = model not in args.loop_models
    runs = {"bp": make_chunk(model, lr0, False, "gaussian", scan)}
    runs.update({f"fg-{t}": make_chunk(model, lr0, True, t, scan) for t in args.tangents})
    names = list(runs)
    params = dict.fromkeys(runs, p0)
    key = jax.random.key(10_000 + seed)
    losses = {m: [] for m in runs}
    ends = {m: [0.0] for m in runs}  # cumulative wall time after every chunk
    steps = getattr(args, f"steps_{model}")
    for c, (xs, ys) in enumerate(_chunks(train, steps, args.chunk, seed)):
        i0 = jnp.int32(c * args.chunk)
        if c == 0:  # compile every variant outside the clock (a looped step: one step)
            n = len(xs) if scan else 1
            for m, run in runs.items():
                jax.block_until_ready(run(params[m], i0, key, xs[:n], ys[:n]))
        for m in names[c % len(names) :] + names[: c % len(names)]:
            t0 = time.perf_counter()
            params[m], out = runs[m](params[m], i0, key, xs, ys)
            losses[m].append(np.asarray(jax.block_until_ready(out)))
            ends[m].append(ends[m][-1] + time.perf_counter() - t0)
    return {m: _summary(np.concatenate(losses[m]), np.array(ends[m]), args) for m in runs}


def _summary(losses, ends, args) -> dict:
    n = args.chunk
    per_step = np.diff(ends) / n
    t = np.repeat(ends[:-1], n) + np.tile(np.arange(1, n + 1), len(per_step)) * np.repeat(
        per_step, n
    )  # the time at which every step finished, spread evenly within its chunk
    s = smoothed(losses, args.window)
    reached = {}
    for level in LADDER:
        hit = np.flatnonzero(s <= level)
        if hit.size:
            reached[str(level)] = {"steps": int(hit[0]) + 1, "time_s": float(t[hit[0]])}
    every = max(1, len(s) // 400)
    return {
        "reached": reached,
        "step_time_s": float(np.median(per_step)),
        "total_s": float(ends[-1]),
        "final_smoothed_loss": float(s[-1]),
        "nonfinite": bool(not np.all(np.isfinite(losses))),
        "curve": {
            "step": np.arange(1, len(s) + 1)[::every],
            "time_s": t[::every],
            "smoothed_loss": s[::every],
        },
    }


def _ratios(pair: dict) -> dict:
    """Every FG variant against BP: time per step, and time and steps to every common level."""
    bp, out = pair["bp"], {}
    for m, fg in pair.items():
        if m == "bp":
            continue
        common = [lv for lv in fg["reached"] if lv in bp["reached"]]
        out[m] = {
            "step_time": fg["step_time_s"] / bp["step_time_s"],
            "levels": {
                lv: {
                    "time": fg["reached"][lv]["time_s"] / bp["reached"][lv]["time_s"],
                    "steps": fg["reached"][lv]["steps"] / bp["reached"][lv]["steps"],
                }
                for lv in common
            },
        }
    return out


def _spread(values: list) -> dict:
    return {
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
        "values": values,
    }


def _aggregate(per_seed: list[dict]) -> dict:
    """Per FG variant: step-time ratio, and time and steps ratios at the lowest ladder level
    that BP and the variant reached in every seed (mean, std over seeds)."""
    out = {}
    for m in per_seed[0]["ratios"]:
        rs = [r["ratios"][m] for r in per_seed]
        common = [lv for lv in map(str, LADDER) if all(lv in r["levels"] for r in rs)]
        agg = {"step_time": _spread([r["step_time"] for r in rs]), "level": None}
        if common:
            lv = common[-1]
            agg.update(
                level=float(lv),
                time_to_level=_spread([r["levels"][lv]["time"] for r in rs]),
                steps_to_level=_spread([r["levels"][lv]["steps"] for r in rs]),
            )
        out[m] = agg
    return out


def run_functions(seed: int) -> dict:
    out = {}
    for name, (start, lr, iters) in FUNCTIONS.items():
        f = beale if name == "beale" else rosenbrock
        key = jax.random.key(seed)
        paths = {m: trajectory(f, start, lr, iters, key, m == "fg") for m in ("fg", "gd")}
        out[name] = {
            "start": start,
            "lr": lr,
            "iterations": iters,
            "final": {m: p[-1] for m, p in paths.items()},
            "final_value": {m: float(f(jnp.asarray(p[-1]))) for m, p in paths.items()},
            # about 1,000 iterates and the last: enough for the plot, a small JSON
            "path": {
                m: np.concatenate([p[:: max(1, iters // 1000)], p[-1:]]) for m, p in paths.items()
            },
        }
        print(name, {m: np.round(p[-1], 3).tolist() for m, p in paths.items()}, flush=True)
    return out


def plot(out: dict):
    """The result's figure (:mod:`baydin2022_plot`): trajectories on the test functions' contours,
    training loss against wall-clock time per MNIST model."""
    return baydin2022_plot.plot(out, {"beale": beale, "rosenbrock": rosenbrock})


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 60 steps, seed 0")
    ap.add_argument(
        "--steps",
        type=_common.positive_int,
        default=None,
        help="steps of every model (default: STEPS per model)",
    )
    ap.add_argument("--seeds", type=_common.int_list, default=(0, 1, 2))
    ap.add_argument("--models", default="logreg,mlp,cnn")
    ap.add_argument("--no-functions", action="store_true", help="skip Beale and Rosenbrock")
    ap.add_argument("--chunk", type=_common.positive_int, default=20, help="steps per timed call")
    ap.add_argument(
        "--loop-models",
        default="cnn",
        help="models stepped by a Python loop of one jitted step, not lax.scan (XLA:CPU "
        "ran the CNN's BP step 15x slower in the scan's while loop; BENCHMARKS.md)",
    )
    ap.add_argument("--window", type=_common.positive_int, default=100, help="loss smoothing")
    ap.add_argument(
        "--tangents",
        default="gaussian,rademacher",
        help="FG variants: the paper's gaussian, this library's default rademacher, and rank1 "
        "(rank-one sign matrices, s r^T, whose tangent products are matrix-vector products)",
    )
    for m in LR:
        ap.add_argument(f"--lr-{m}", type=float, default=LR[m])
        ap.add_argument(f"--steps-{m}", type=_common.positive_int, default=None)
    _common.add_data_dir(ap)
    ap.add_argument(
        "--out",
        default=str(_common.RESULTS / "baydin2022"),
        help="output path without extension (.json and .png are written)",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.seeds, args.window = 60, (0,), 20
    for m in LR:
        n = getattr(args, f"steps_{m}") or args.steps or STEPS[m]
        if n < args.chunk:
            ap.error(f"--steps-{m} must be at least --chunk ({args.chunk})")
        setattr(args, f"steps_{m}", n - n % args.chunk)
    args.tangents = [t for t in args.tangents.split(",") if t]
    for t in args.tangents:
        if t not in fwdgrad.WEIGHT_TANGENTS:
            ap.error(f"--tangents: {t!r} is not one of {list(fwdgrad.WEIGHT_TANGENTS)}")
    args.models = [m for m in args.models.split(",") if m]
    args.loop_models = [m for m in args.loop_models.split(",") if m]
    for m in args.loop_models:
        if m not in LR:
            ap.error(f"--loop-models: {m!r} is not one of {list(LR)}")
    for m in args.models:
        if m not in LR:
            ap.error(f"--models: {m!r} is not one of {list(LR)}")
    return args


def main(argv=None):
    args = parse(argv)
    name = _common.out_name(args.out)
    settings = {k: v for k, v in vars(args).items() if k != "data_dir"}
    out = {
        "paper": "Baydin, Pearlmutter, Syme, Wood, Torr (2022), sec. 5",
        "settings": settings,
        "batch": BATCH,
        "decay_k": DECAY_K,
        "mnist": {},
    }
    if not args.no_functions:
        out["functions"] = run_functions(0)
        _common.save(name, out)
    train = datasets.load("mnist", "train", data_dir=args.data_dir)
    for model in args.models:
        per_seed = []
        for seed in args.seeds:
            pair = train_pair(model, train, seed, args)
            per_seed.append({"seed": seed, **pair, "ratios": _ratios(pair)})
            print(
                model,
                seed,
                {
                    m: (round(v["step_time_s"], 5), round(v["final_smoothed_loss"], 3))
                    for m, v in pair.items()
                },
                {
                    m: (
                        round(r["step_time"], 2),
                        {lv: round(x["time"], 2) for lv, x in r["levels"].items()},
                    )
                    for m, r in per_seed[-1]["ratios"].items()
                },
                flush=True,
            )
            out["mnist"][model] = {
                "lr": getattr(args, f"lr_{model}"),
                "steps": getattr(args, f"steps_{model}"),
                "per_seed": per_seed,
                "ratios": _aggregate(per_seed),
            }
            _common.save(name, out)  # after every run: a stopped run keeps what it measured
    _common.save(name, out, plot(out))


if __name__ == "__main__":
    main()
