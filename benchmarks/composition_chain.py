"""The DESIGN.md composition chain trained for long: how far weight-perturbation forward gradients
get once they are programmed onto devices.

    tx = optax.chain(fwdgrad.forward_gradient(num_tangents=4),
                     lowbit.quantize_updates(lowbit.RADIX4_FP4),
                     optax.sgd(LR),
                     analog.program(DEVICE, mixed_precision=MP))

Variants (``--variants``, comma-separated; all on one MLP, batch, seed and data order):

* ``as-written``: LR 1e-2, TAOX_RERAM, plain program (the chain exactly as DESIGN.md shows it);
* ``ideal``: LR 2e-3 (sized for the estimator's ``(n - 1)|g|^2 / K`` variance), IDEAL devices;
* ``taox``: LR 2e-3 on TAOX_RERAM, plain program;
* ``taox-mp``: LR 2e-3 on TAOX_RERAM with the digital accumulator
  (``mixed_precision=True``, Nandakumar et al. 2020);
* ``taox-mp-cosine``: as ``taox-mp`` with the rate on a cosine from 4e-3 to 0;
* ``taox-mp-cosine-2e-3``: the same from 2e-3;
* ``as-written-mp``: the chain as written with the accumulator on (LR 1e-2, TAOX_RERAM);
* ``ideal-1e-2``: LR 1e-2 on IDEAL devices (the estimator alone at the written rate);
* ``local-taox``: the chain with its first transform swapped for
  ``fwdgrad.activity_forward_gradient(num_tangents=4)`` (Ren et al., ICLR 2023:
  activity-perturbed forward gradients with local losses, on a ``fwdgrad.LocalMLP`` of the same
  widths) and ``optax.sgd(1e-3, momentum=0.9)``, plain ``program(TAOX_RERAM)``: the
  registered ``fwdgrad+lowbit+analog`` row's chain;
* ``local-taox-cosine``: the same with the rate on a cosine from 1e-3 to 0.

Steps run in jitted ``lax.scan`` chunks (one dispatch per evaluation interval, so the GPU is not
bound by per-step launches). Writes ``benchmarks/results/<out>.json`` and ``.png`` (test
accuracy against steps), rewriting the JSON after every evaluation.

    python benchmarks/composition_chain.py --steps 20000 --eval-every 2000 \
        --hidden 64
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from flax import nnx

matplotlib.use("Agg")
import _common
import matplotlib.pyplot as plt

import analog
import fwdgrad
import lowbit
from beyondbp import datasets, methods, models

VARIANTS = {
    "as-written": dict(lr=1e-2, device="TAOX_RERAM", mp=False),
    "ideal": dict(lr=2e-3, device="IDEAL", mp=False),
    "taox": dict(lr=2e-3, device="TAOX_RERAM", mp=False),
    "taox-mp": dict(lr=2e-3, device="TAOX_RERAM", mp=True),
    "taox-mp-cosine": dict(lr="cosine from 4e-3 to 0", device="TAOX_RERAM", mp=True),
    "taox-mp-cosine-2e-3": dict(lr="cosine from 2e-3 to 0", device="TAOX_RERAM", mp=True),
    "as-written-mp": dict(lr=1e-2, device="TAOX_RERAM", mp=True),
    "ideal-1e-2": dict(lr=1e-2, device="IDEAL", mp=False),
    # The same chain with the estimator swapped for Ren et al.'s activity-perturbed local
    # forward gradient (a LocalMLP: the same MLP plus a linear head per hidden layer).
    "local-taox": dict(lr=1e-3, device="TAOX_RERAM", mp=False, estimator="local"),
    "local-taox-cosine": dict(
        lr="cosine from 1e-3 to 0", device="TAOX_RERAM", mp=False, estimator="local"
    ),
}


def chain(lr, device, mp, seed, steps, estimator="weight", devices=None):
    """The DESIGN.md chain; ``device`` names an ``analog.presets`` model or an entry of
    ``devices`` (extra models by name, e.g. composition_chain_ablation.py's)."""
    if isinstance(lr, str):  # "cosine from PEAK to 0"
        lr = optax.cosine_decay_schedule(float(lr.split()[2]), steps)
    if estimator == "local":
        # as the registered fwdgrad+lowbit+analog row: K = 4 here, as the DESIGN chain's.
        first, sgd = (
            fwdgrad.activity_forward_gradient(num_tangents=4, seed=seed),
            optax.sgd(lr, momentum=0.9),
        )
    else:
        first, sgd = fwdgrad.forward_gradient(num_tangents=4, seed=seed), optax.sgd(lr)
    return optax.chain(
        first,
        lowbit.quantize_updates(lowbit.RADIX4_FP4, seed=seed + 1),
        sgd,
        analog.program(
            (devices or {}).get(device) or getattr(analog.presets, device),
            seed=seed + 2,
            mixed_precision=mp,
        ),
    )


def run(name, spec, tr, te, *, hidden, steps, eval_every, batch, seed, log, record, devices=None):
    """Train one variant; ``record(result)`` is called after every evaluation (partial runs
    keep what they measured)."""
    estimator = spec.get("estimator", "weight")
    if estimator == "local":
        apply, params = models.functional(fwdgrad.LocalMLP((784, *hidden, 10), rngs=nnx.Rngs(seed)))
    else:
        apply, params = models.mlp(jax.random.key(seed), (784, *hidden, 10))
    tx = chain(spec["lr"], spec["device"], spec["mp"], seed, steps, estimator, devices)
    state = tx.init(params)
    x_tr = jnp.asarray(tr.images.reshape(len(tr), -1), jnp.float32) / 255.0
    y_tr = jnp.asarray(tr.labels, jnp.int32)
    x_te = jnp.asarray(te.images.reshape(len(te), -1), jnp.float32) / 255.0
    y_te = jnp.asarray(te.labels, jnp.int32)
    per_epoch = len(tr) // batch

    perms = {}

    def order(start):
        """The chunk's (eval_every, batch) example indices: a fresh permutation per epoch,
        drawn once per epoch (not per step) and reused by every chunk it spans."""
        rows = []
        for i in range(start, start + eval_every):
            epoch, j = divmod(i, per_epoch)
            if epoch not in perms:
                perms.clear()
                perms[epoch] = np.asarray(
                    jax.random.permutation(
                        jax.random.fold_in(jax.random.key(seed + 7), epoch), len(tr)
                    )
                )
            rows.append(perms[epoch][j * batch : (j + 1) * batch])
        return jnp.asarray(np.stack(rows), jnp.int32)

    def one(carry, idx):
        params, state = carry
        x, y = x_tr[idx], y_tr[idx]
        loss_fn = lambda p: methods.cross_entropy(apply(p, x), y)
        # each estimator reads its own extra arg (loss_fn or batch) and ignores the other
        updates, state = tx.update(None, state, params, loss_fn=loss_fn, batch=(x, y))
        return (optax.apply_updates(params, updates), state), None

    @jax.jit
    def chunk(params, state, idx):
        (params, state), _ = jax.lax.scan(one, (params, state), idx)
        return params, state

    @jax.jit
    def accuracy(params):
        return jnp.mean((apply(params, x_te).argmax(-1) == y_te).astype(jnp.float32))

    curve, t0 = [], time.time()
    for start in range(0, steps, eval_every):
        params, state = chunk(params, state, order(start))
        acc = float(accuracy(params))
        curve.append((start + eval_every, acc))
        log(
            f"{name}: step {start + eval_every}: test accuracy {acc:.4f} ({time.time() - t0:.0f} s)"
        )
        finite = all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(params))
        result = {
            "spec": spec,
            "steps": [s for s, _ in curve],
            "test_accuracy": [a for _, a in curve],
            "final_test_accuracy": acc,
            "best_test_accuracy": max(a for _, a in curve),
            "params_finite": finite,
            "refused_steps": int(state[0].nonfinite) + int(state[-1].nonfinite),
            "partial": start + eval_every < steps,
            "wall_s": time.time() - t0,
        }
        record(result)
    return result


def main(argv=None, *, variants=None, devices=None, out="composition_chain"):
    """Run the variants named by ``--variants`` (default: all of ``variants``).

    ``variants`` (default :data:`VARIANTS`) and ``devices`` (extra device models by name) let
    another script run its own table through the same loop without editing this module.
    """
    variants = VARIANTS if variants is None else variants
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--variants", default=",".join(variants))
    ap.add_argument("--steps", type=_common.positive_int, default=20000)
    ap.add_argument("--eval-every", type=_common.positive_int, default=2000)
    ap.add_argument("--batch-size", type=_common.positive_int, default=64)
    ap.add_argument(
        "--hidden", type=_common.int_list, default=(64,), help="hidden widths, comma-separated"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default="mnist")
    _common.add_data_dir(ap)
    ap.add_argument("--out", default=out)
    args = ap.parse_args(argv)
    if args.steps % args.eval_every:
        ap.error("--steps must be a multiple of --eval-every")
    names = [v for v in args.variants.split(",") if v]
    for v in names:
        if v not in variants:
            ap.error(f"unknown variant {v!r}; choose from {', '.join(variants)}")
    try:
        tr = datasets.load(args.data, "train", data_dir=args.data_dir)
        te = datasets.load(args.data, "test", data_dir=args.data_dir)
    except datasets.DatasetError as e:
        print(f"{e}; using the bundled mnist_small instead", file=sys.stderr)
        tr, te = datasets.load("mnist_small", "train"), datasets.load("mnist_small", "test")
    if not 0 < args.batch_size <= len(tr):
        ap.error(f"--batch-size must be in [1, {len(tr)}] (the training set's size)")
    out = {
        "command": _common.command(argv),
        "machine": _common.machine(),
        "data": f"{tr.name} ({len(tr)} train, {len(te)} test)",
        "model": [784, *args.hidden, 10],
        "batch": args.batch_size,
        "seed": args.seed,
        "results": {},
    }

    def record(name):
        def write(result):
            out["results"][name] = result
            _common.save(args.out, out)  # after every evaluation: partial runs keep it

        return write

    for name in names:
        run(
            name,
            variants[name],
            tr,
            te,
            hidden=args.hidden,
            steps=args.steps,
            eval_every=args.eval_every,
            batch=args.batch_size,
            seed=args.seed,
            log=lambda s: print(s, flush=True),
            record=record(name),
            devices=devices,
        )
    fig = plt.figure(figsize=(6, 4))
    for name, r in out["results"].items():
        plt.plot(r["steps"], [100 * a for a in r["test_accuracy"]], "o-", ms=3, label=name)
    plt.axhline(90, color="k", lw=0.8, ls="--")
    plt.xlabel(f"step (batch {args.batch_size})")
    plt.ylabel("test accuracy (%)")
    plt.title(f"DESIGN chain, MLP {out['model']}, {tr.name}")
    plt.grid(alpha=0.3)
    plt.legend(fontsize=8)
    plt.tight_layout()
    _common.save(args.out, out, fig, dpi=100)
    print(json.dumps({k: round(v["final_test_accuracy"], 4) for k, v in out["results"].items()}))


if __name__ == "__main__":
    main()
