"""Ren et al. (ICLR 2023), Table 3, MNIST: LocalMixer S/1/1 and M/1/16, rows BP, FG-W, FG-A, LG-FG-W, LG-FG-A.

Ren, Kornblith, Liao, Hinton, "Scaling Forward Gradient With Local Losses".
Every row trains the same :class:`fwdgrad.MixerConfig` network; only the
gradient differs:

* ``BP``: ``jax.grad`` of the last head's loss, end to end (no local losses);
* ``FG-W``: :func:`fwdgrad.mixer_grads` with one global loss and ``perturb="weight"``:
  the body's weights are perturbed, the classifier reads constant features and gets its
  exact gradient, as in Ren et al.'s code (``update_forward_grad_weights`` differentiates
  the classification layers exactly). Until stop 40 this row was :func:`fwdgrad.fwd_grad`
  of the whole loss, classifier included (52.8% test error at 5 epochs, S/1/1);
* ``FG-A``: :func:`fwdgrad.mixer_grads` with one global loss (activity perturbation);
* ``LG-FG-W``: :func:`fwdgrad.mixer_grads` with ``perturb="weight"``: every block
  perturbs its own weights and takes the directional derivative of its own
  block-wise loss (stop-gradient between blocks; the weight tangent is split per
  block, not further per patch or group as Ren et al.'s code does). Until stop 35
  this row was ``fwd_grad`` of the *summed* local losses, which gives every block
  the sum of all blocks' derivatives (73% test error at 5 epochs); until stop 40 the
  heads were perturbed too (68%);
* ``LG-FG-A``: ``mixer_grads`` with block-, patch- and group-wise local losses.

Optimiser and schedule follow the form of the official code's public config
(``local_forward_gradient/configs/supervised.py``): SGD with momentum 0.9, a
linear warm-up then cosine decay, weight decay 1e-4 on kernels. Its learning
rate and epoch counts are ImageNet's; the MNIST values here are flags
(``--lr``, ``--epochs``, ``--warmup-epochs``). The sizes ``S`` and ``M`` below
are our reading of the paper's naming (size/patches/groups: one 28x28 patch,
so the mixer is an MLP with grouped layers); check them against the paper's
appendix before quoting a comparison.

    python benchmarks/ren2023_mnist.py --quick            # smoke run: subset, 1 epoch, 1 seed
    python benchmarks/ren2023_mnist.py --seeds 0,1,2      # the reproduction (hours on CPU)
    python benchmarks/ren2023_mnist.py --dataset fashion_mnist --data-dir DIR --archs M/1/16 \
        --rows BP,LG-FG-A                                  # Ren's set-up on Fashion-MNIST

Writes ``benchmarks/results/ren2023_mnist.json`` (every seed's test error, mean
and std per row beside the paper's figure, the command line, the machine) and
a PNG of the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fwdgrad
from beyondbp import datasets

RESULTS = pathlib.Path(__file__).resolve().parent / "results"

# Ren et al. (2023), Table 3, MNIST test error (%); LG-FG-W is not quoted here.
PAPER = {
    "S/1/1": {"BP": 2.66, "FG-W": 9.25, "FG-A": 3.24, "LG-FG-W": None, "LG-FG-A": 3.24},
    "M/1/16": {"BP": 2.41, "FG-W": 8.56, "FG-A": 3.76, "LG-FG-W": None, "LG-FG-A": 2.55},
}
ARCHS = {
    "S/1/1": dict(patch_size=28, num_blocks=2, channels=256, num_groups=1),
    "M/1/16": dict(patch_size=28, num_blocks=4, channels=512, num_groups=16),
}
ROWS = ("BP", "FG-W", "FG-A", "LG-FG-W", "LG-FG-A")
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def _configs(arch: str, quick: bool) -> tuple[fwdgrad.MixerConfig, fwdgrad.MixerConfig]:
    """(global, local) configs of one architecture; ``--quick`` shrinks the widths 8x."""
    kw = dict(ARCHS[arch])
    if quick:
        kw["channels"] = max(kw["num_groups"] * 2, kw["channels"] // 8)
    local = fwdgrad.MixerConfig(image_shape=(28, 28, 1), **kw)
    glob = dataclasses.replace(local, block_loss=False, patch_loss=False, group_loss=False)
    return glob, local


def _estimator(row: str, glob, local, num_tangents: int):
    """``grads(key, params, x, y)`` of one row."""

    def final(p, x, y):
        return fwdgrad.mixer_local_losses(p, x, y, glob)[0]

    if row == "BP":
        return lambda key, p, x, y: jax.grad(final)(p, x, y)
    cfg = glob if row in ("FG-W", "FG-A") else local
    perturb = "weight" if row.endswith("-W") else "activity"
    return lambda key, p, x, y: fwdgrad.mixer_grads(
        key, p, x, y, cfg, num_tangents=num_tangents, perturb=perturb
    )[1]


def _optimizer(lr: float, steps: int, warmup: int, wd: float):
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, max(1, warmup), max(steps, warmup + 1))
    kernels = lambda p: jax.tree_util.tree_map_with_path(
        lambda path, _: jax.tree_util.keystr(path).endswith("['kernel']"), p
    )
    return optax.chain(
        optax.add_decayed_weights(wd, mask=kernels), optax.sgd(schedule, momentum=0.9)
    )


def _norm(dataset: str, train) -> tuple[float, float]:
    """Pixel mean and std the inputs are standardised with: the usual MNIST constants on MNIST
    (Ren et al.'s code), else the training images' own (a rule, not a per-data-set number)."""
    if dataset == "mnist":
        return MNIST_MEAN, MNIST_STD
    x = np.asarray(train.images, np.float64) / 255.0  # the scale datasets.batches feeds
    return float(x.mean()), float(x.std())


def _prep(x: np.ndarray, norm: tuple[float, float]) -> jnp.ndarray:
    return (jnp.asarray(x, jnp.float32) - norm[0]) / norm[1]


def _test_error(params, cfg, test, norm, batch=1000) -> float:
    apply = jax.jit(lambda p, x: jnp.argmax(fwdgrad.mixer_apply(p, x, cfg), -1))
    wrong = n = 0
    for x, y, m in datasets.batches(test, batch, shuffle=False, remainder="pad"):
        pred = np.asarray(apply(params, _prep(x, norm)))
        wrong += int(np.sum((pred != y) & m))
        n += int(np.sum(m))
    return 100.0 * wrong / n


def run_one(arch, row, seed, train, test, args) -> dict:
    glob, local = _configs(arch, args.quick)
    cfg = local if row.startswith("LG") else glob
    params = fwdgrad.mixer_init(jax.random.key(seed), cfg)
    per_epoch = datasets.num_batches(len(train), args.batch_size)
    steps = args.epochs * per_epoch
    tx = _optimizer(args.lr, steps, args.warmup_epochs * per_epoch, args.wd)
    state = tx.init(params)
    grads = _estimator(row, glob, local, args.num_tangents)

    @jax.jit
    def step(params, state, key, x, y):
        updates, state = tx.update(grads(key, params, x, y), state, params)
        return optax.apply_updates(params, updates), state

    key = jax.random.key(1000 + seed)
    t0 = time.perf_counter()
    for i, (x, y, _) in enumerate(
        datasets.batches(train, args.batch_size, seed=seed, epochs=args.epochs)
    ):
        params, state = step(
            params, state, jax.random.fold_in(key, i), _prep(x, args.norm), jnp.asarray(y)
        )
    jax.block_until_ready(params)
    wall = time.perf_counter() - t0
    err = _test_error(params, cfg, test, args.norm)
    print(
        f"{arch:7s} {row:8s} seed {seed}: test error {err:.2f}%  ({wall:.0f} s, {steps} steps)",
        flush=True,
    )
    return {"test_error_pct": err, "wall_s": wall, "steps": steps}


def _subset(ds, n):
    return dataclasses.replace(ds, images=ds.images[:n], labels=ds.labels[:n]) if n else ds


def _row(arch: str, row: str, runs: list[dict], dataset: str = "mnist") -> dict:
    """Mean and sample std (ddof 1) of one row's test errors, beside the paper's figure (MNIST's
    Table 3; none for other data sets)."""
    errs = [r["test_error_pct"] for r in runs]
    return {
        "mean": float(np.mean(errs)),
        "std": float(np.std(errs, ddof=1)) if len(errs) > 1 else 0.0,
        "seeds": [r.get("seed") for r in runs],
        "paper": PAPER[arch][row] if dataset == "mnist" else None,
    }


def merge(paths, name: str) -> dict:
    """One table from runs split across processes (one per row and seed on a GPU,
    ``benchmarks/gpu_scale_session.sh``); the runs must share their settings but the seed."""
    out: dict = {"merged_from": [str(p) for p in paths], "per_seed": {}, "table": {}}
    for path in paths:
        part = json.loads(pathlib.Path(path).read_text())
        # files written before --dataset existed are MNIST runs
        settings = {"dataset": "mnist"} | {
            k: v for k, v in part["settings"].items() if k in _SHARED
        }
        if out.setdefault("settings", settings) != settings:
            raise SystemExit(f"--merge: {path} has settings {settings}, others {out['settings']}")
        out.setdefault("machine", part["machine"])
        # runs merged from several machines (CPU rows beside a GPU session's) keep each one's
        out.setdefault("machines", {})[str(path)] = part["machine"]
        seeds = [int(x) for x in str(part["settings"]["seeds"]).split(",")]
        for arch, rows in part["per_seed"].items():
            for row, runs in rows.items():
                have = out["per_seed"].setdefault(arch, {}).setdefault(row, [])
                have += [{"seed": s, **r} for r, s in zip(runs, seeds)]
    for arch, rows in out["per_seed"].items():
        out["table"][arch] = {
            r: _row(
                arch,
                r,
                sorted(rows[r], key=lambda x: x["seed"]),
                out["settings"].get("dataset", "mnist"),
            )
            for r in ROWS
            if r in rows
        }
    _finish(out, name)
    return out


def _finish(out: dict, name: str) -> None:
    """Write ``RESULTS/<name>.json`` and its PNG, and print the table."""
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2))
    _plot(out, RESULTS / f"{name}.png")
    for arch, table in out["table"].items():
        for row, r in table.items():
            print(f"{arch:7s} {row:8s} ours {r['mean']:.2f} ± {r['std']:.2f}   paper {r['paper']}")


#: settings that runs merged into one table must share (the seed may differ)
_SHARED = ("dataset", "epochs", "warmup_epochs", "batch_size", "lr", "wd", "num_tangents", "quick")


def _plot(out, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(out["table"]), figsize=(5 * len(out["table"]), 3.5), squeeze=False
    )
    for ax, (arch, rows) in zip(axes[0], out["table"].items()):
        names = list(rows)
        ours = [rows[r]["mean"] for r in names]
        std = [rows[r]["std"] for r in names]
        paper = [np.nan if rows[r]["paper"] is None else rows[r]["paper"] for r in names]
        xs = np.arange(len(names))
        ax.bar(xs - 0.2, ours, 0.4, yerr=std, label="ours (mean ± std)")
        ax.bar(xs + 0.2, paper, 0.4, label="Ren et al. 2023")
        ax.set_xticks(xs, names)
        ax.set_ylabel("MNIST test error (%)")
        ax.set_title(arch)
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 2,048 training and 1,000 test examples, 1 epoch, seed 0, widths / 8",
    )
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--warmup-epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--wd", type=float, default=1e-4)
    ap.add_argument("--num-tangents", type=int, default=1)
    ap.add_argument(
        "--dataset",
        default="mnist",
        choices=("mnist", "fashion_mnist", "idx"),
        help="28x28 IDX data: MNIST (the paper's Table 3) or Ren's set-up on another set",
    )
    ap.add_argument(
        "--data-dir",
        default=None,
        help="IDX directory (default: beyondbp.datasets' search path)",
    )
    ap.add_argument("--out", default="ren2023_mnist")
    ap.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="put these result files' runs (split across processes) into one table --out",
    )
    args = ap.parse_args()
    if args.merge:
        merge(args.merge, args.out)
        return
    archs, rows = args.archs.split(","), args.rows.split(",")
    for a in archs:
        if a not in ARCHS:
            ap.error(f"--archs: {a!r} is not one of {list(ARCHS)}")
    for r in rows:
        if r not in ROWS:
            ap.error(f"--rows: {r!r} is not one of {list(ROWS)}")
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    if args.quick:
        args.epochs, args.warmup_epochs = 1, 0
    train = datasets.load(args.dataset, "train", data_dir=args.data_dir)
    test = datasets.load(args.dataset, "test", data_dir=args.data_dir)
    if tuple(train.input_shape) != (28, 28, 1):
        ap.error(f"--dataset {args.dataset}: images {train.input_shape}; the mixers need 28x28x1")
    if args.quick:
        train, test = _subset(train, 2048), _subset(test, 1000)
    args.norm = _norm(args.dataset, train)
    out = {
        "command": "python benchmarks/ren2023_mnist.py " + " ".join(sys.argv[1:]),
        "machine": {
            "backend": jax.default_backend(),
            "device": str(jax.devices()[0]),
            "platform": platform.platform(),
        },
        "settings": vars(args),
        "archs": {a: dataclasses.asdict(_configs(a, args.quick)[1]) for a in archs},
        "per_seed": {},
        "table": {},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    for arch in archs:
        out["per_seed"][arch], out["table"][arch] = {}, {}
        for row in rows:
            runs = [run_one(arch, row, s, train, test, args) for s in seeds]
            out["per_seed"][arch][row] = [{**r, "seed": s} for r, s in zip(runs, seeds)]
            out["table"][arch][row] = _row(arch, row, out["per_seed"][arch][row], args.dataset)
            (RESULTS / f"{args.out}.json").write_text(json.dumps(out, indent=2))
    _finish(out, args.out)


if __name__ == "__main__":
    main()
