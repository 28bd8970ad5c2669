"""aihwkit side by side on accuracy (issue 17, item 5), this package's half: the digitally
trained network both inference models program, our drift curve, and the merged table.

Three steps; the middle one runs in aihwkit's own virtual environment
(``benchmarks/aihwkit_parity.py``)::

    .venv/bin/python benchmarks/aihwkit_parity_ours.py train      # -> aihwkit_parity_mlp.npz
    /work/aihwkit-venv/bin/python benchmarks/aihwkit_parity.py drift
    .venv/bin/python benchmarks/aihwkit_parity_ours.py drift      # ours + merge + table + PNG

``train``: one 784-256-128-10 ReLU MLP (biases on every layer) trained digitally with Adam on
MNIST (pixels / 255), saved as ``benchmarks/results/aihwkit_parity_mlp.npz`` (``w1..w3`` as
``(in, out)``, ``b1..b3``). Both simulators program exactly these weights.

``drift``: the network programmed on ``--seeds`` chips of ``analog.PCMNoiseModel`` and read at
1 s, 1 h, 1 day, 1 month and 1 year after programming, global drift compensation on and off
(``beyondbp.drift.accuracy_vs_time``), with the settings aihwkit's side uses (see
``aihwkit_parity.py``): g_max 25 uS, aihwkit's PCM constants, ideal forward pass (aihwkit
``forward.is_perfect``), digital biases, compensation read with the one-hot rows, and crossbar
tiles cut as aihwkit's ``TileModuleArray`` cuts these layers (784 inputs -> two tiles of 392
rows: ``max_input_size=392`` here; aihwkit splits a dimension into equal pieces of at most 512,
this package into 512-row tiles plus a remainder). A second curve with this package's default
512 + 272 split shows what that difference is worth. The merged result (both simulators, the
difference per time point, a markdown table) is ``benchmarks/results/aihwkit_parity_drift``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import math
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

matplotlib.use("Agg")
import _common
import matplotlib.pyplot as plt

import analog
from beyondbp import datasets, drift

WEIGHTS = _common.RESULTS / "aihwkit_parity_mlp.npz"
AIHWKIT_DRIFT = _common.RESULTS / "aihwkit_parity_aihwkit_drift.json"
WIDTHS = (784, 256, 128, 10)


def init(key: jax.Array) -> list[dict]:
    """PyTorch ``nn.Linear``'s default init (uniform +-1/sqrt(fan_in)) for weights and biases."""
    params = []
    for k, (n_in, n_out) in zip(jax.random.split(key, 3), itertools.pairwise(WIDTHS)):
        kw, kb = jax.random.split(k)
        lim = 1.0 / np.sqrt(n_in)
        params.append(
            {
                "w": jax.random.uniform(kw, (n_in, n_out), jnp.float32, -lim, lim),
                "b": jax.random.uniform(kb, (n_out,), jnp.float32, -lim, lim),
            }
        )
    return params


def apply(params: list[dict], x: jax.Array) -> jax.Array:
    """ReLU MLP; the last layer's outputs are the logits."""
    for i, p in enumerate(params):
        x = x @ p["w"] + p["b"]
        if i < len(params) - 1:
            x = jax.nn.relu(x)
    return x


def _mnist(split: str, data_dir):
    ds = datasets.load("mnist", split, data_dir=data_dir)
    x = ds.images.reshape(len(ds.labels), -1).astype(np.float32) / 255.0
    return ds, x, ds.labels.astype(np.int32)


def train(args) -> None:
    """Adam on cross-entropy, ``--epochs`` epochs, batch ``--batch``; saves the npz."""
    train_ds, _, _ = _mnist("train", args.data_dir)
    _, x_test, y_test = _mnist("test", args.data_dir)
    params = init(jax.random.key(args.seed))
    tx = optax.adam(args.lr)
    state = tx.init(params)

    def loss(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(apply(p, x), y).mean()

    @jax.jit
    def step(p, s, x, y):
        g = jax.grad(loss)(p, x.reshape(x.shape[0], -1), y)  # batches are in [0, 1]
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    t0 = time.perf_counter()
    for x, y, _ in datasets.batches(train_ds, args.batch, seed=args.seed, epochs=args.epochs):
        params, state = step(params, state, x, y)
    acc = float(jnp.mean(jnp.argmax(apply(params, x_test), -1) == y_test))
    arrays = {f"{k}{i + 1}": np.asarray(p[k]) for i, p in enumerate(params) for k in ("w", "b")}
    np.savez(WEIGHTS, **arrays, test_accuracy=np.float32(acc))
    print(f"trained in {time.perf_counter() - t0:.1f} s, digital test accuracy {acc:.4f}")
    print(f"saved {WEIGHTS}")


def load_params() -> tuple[list[dict], float]:
    """The saved network as ``apply``'s params, and its digital test accuracy."""
    z = np.load(WEIGHTS)
    params = [{"w": jnp.asarray(z[f"w{i}"]), "b": jnp.asarray(z[f"b{i}"])} for i in (1, 2, 3)]
    return params, float(z["test_accuracy"])


def weight_error(programmed, params, t: float, model, seed: int) -> list[list[float]]:
    """Per layer: ``||W_t - W|| / ||W||`` and ``sum|W_t| / sum|W|`` of one chip read at ``t``
    (uncompensated), as ``aihwkit_parity.py``'s ``weight_error``."""
    read = analog.params_at(jax.random.key(seed), programmed, t, model, compensate=False)
    out = []
    for r, p in zip(read, params):
        w_t, w = np.asarray(r["w"]), np.asarray(p["w"])
        out.append(
            [
                float(np.linalg.norm(w_t - w) / np.linalg.norm(w)),
                float(np.abs(w_t).sum() / np.abs(w).sum()),
            ]
        )
    return out


def _ours(params, x, y, model, seeds) -> dict:
    out = {}
    for comp in (True, False):
        t0 = time.perf_counter()
        r = drift.accuracy_vs_time(
            apply, params, x, y, model=model, times=list(drift.TIMES.values()),
            seeds=seeds, compensate=comp,
        )  # fmt: skip
        r["eval_s"] = time.perf_counter() - t0
        out["compensated" if comp else "uncompensated"] = r
        print(f"ours tiles {model.max_input_size} comp={comp}: "
              + " ".join(f"{m:.4f}" for m in r["mean"]), flush=True)  # fmt: skip
    out["weight_error"] = [
        [
            weight_error(
                analog.program_params(jax.random.key(s), params, model), params, t, model, s
            )
            for t in drift.TIMES.values()
        ]
        for s in seeds
    ]
    return out


def table(ours: dict, theirs: dict) -> str:
    """Markdown: per time point, mean ± std (%) of each side and ours - aihwkit (points)."""
    lines = [
        "| compensation | time | ours (%) | aihwkit (%) | ours - aihwkit (points) |",
        "|---|---|---|---|---|",
    ]
    for comp in ("compensated", "uncompensated"):
        o, a = ours[comp], theirs[comp]
        for i, name in enumerate(drift.TIMES):
            d = 100 * (o["mean"][i] - a["mean"][i])
            lines.append(
                f"| {'on' if comp == 'compensated' else 'off'} | {name} "
                f"| {100 * o['mean'][i]:.2f} ± {100 * o['std'][i]:.2f} "
                f"| {100 * a['mean'][i]:.2f} ± {100 * a['std'][i]:.2f} | {d:+.2f} |"
            )
    return "\n".join(lines)


def _plot(curves: dict, digital: float):
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    times = list(drift.TIMES.values())
    for (name, comp), c in curves.items():
        ax.errorbar(
            times, np.asarray(c["mean"]) * 100, yerr=np.asarray(c["std"]) * 100,
            ls="-" if comp == "compensated" else "--", marker="o", capsize=3,
            label=f"{name}, {comp}",
        )  # fmt: skip
    ax.axhline(digital * 100, color="gray", lw=0.6, label="digital")
    ax.set_xscale("log")
    ax.set_xticks(times, list(drift.TIMES))
    ax.set_xlabel("time since programming")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("PCM drift, same programmed MLP: this package vs aihwkit 1.1 (mean ± std, chips)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def drift_cmd(args) -> None:
    """Ours at aihwkit's tile split and at our default split -> ``aihwkit_parity_ours_drift``."""
    params, digital = load_params()
    _, x, y = _mnist("test", args.data_dir)
    matched = analog.PCMNoiseModel(g_max=25.0, max_input_size=392, max_output_size=512)
    default = analog.PCMNoiseModel(g_max=25.0)
    out: dict = {
        "weights": str(WEIGHTS.relative_to(_common.RESULTS.parent.parent)),
        "digital_test_accuracy": digital,
        "times": drift.TIMES,
        "seeds": args.seeds,
        "ours_model": dataclasses.asdict(matched),
        "ours": _ours(params, x, y, matched, args.seeds),
        "ours_default_tiles_512": _ours(params, x, y, default, args.seeds),
    }
    _common.save("aihwkit_parity_ours_drift", out)


def _mean_error(err) -> list[list[float]]:
    """``[seed][time][layer][stat]`` -> mean over seeds of ``||W_t - W|| / ||W||``,
    ``[time][layer]``."""
    return np.asarray(err)[..., 0].mean(0).tolist()


def _six_chips(comps) -> dict:
    """Seeds 0-5 on both sides, where the runs for seeds 3-5 exist (aihwkit's
    ``--seeds 3,4,5 --out aihwkit_parity_aihwkit_drift_seeds345``, ours ``--seeds 0,...,9``
    saved as ``aihwkit_parity_ours_drift_10chips``): the means and their difference."""
    more = _common.RESULTS / "aihwkit_parity_aihwkit_drift_seeds345.json"
    ten = _common.RESULTS / "aihwkit_parity_ours_drift_10chips.json"
    if not (more.is_file() and ten.is_file()):
        return {}
    first = json.loads(AIHWKIT_DRIFT.read_text())["runs"]["perfect_io"]
    extra = json.loads(more.read_text())["runs"]["perfect_io"]
    ours = json.loads(ten.read_text())["ours"]
    out: dict = {}
    for c in comps:
        if c not in extra:
            continue
        a = np.asarray(first[c]["accuracy"] + extra[c]["accuracy"]) * 100
        o = np.asarray(ours[c]["accuracy"][:6]) * 100
        out[c] = {
            "ours_mean": o.mean(0).tolist(),
            "ours_std": o.std(0).tolist(),
            "aihwkit_mean": a.mean(0).tolist(),
            "aihwkit_std": a.std(0).tolist(),
            "difference_points": (o.mean(0) - a.mean(0)).tolist(),
        }
        print(c, "6 chips, ours - aihwkit:", np.round(o.mean(0) - a.mean(0), 2))
    return {"six_chips": out}


def merge_cmd(args) -> None:
    """Both sides' drift JSONs -> ``aihwkit_parity_drift`` (JSON, PNG, markdown table)."""
    ours = json.loads((_common.RESULTS / "aihwkit_parity_ours_drift.json").read_text())
    theirs = json.loads(AIHWKIT_DRIFT.read_text())
    perfect = theirs["runs"]["perfect_io"]
    comps = ("compensated", "uncompensated")
    out = {
        "digital_test_accuracy": ours["digital_test_accuracy"],
        "aihwkit_digital_test_accuracy": theirs["digital"],
        "times": ours["times"],
        "seeds": ours["seeds"],
        "difference_points": {
            c: [100 * (o - a) for o, a in zip(ours["ours"][c]["mean"], perfect[c]["mean"])]
            for c in comps
        },
        "weight_rel_error": {
            "ours": _mean_error(ours["ours"]["weight_error"]),
            "aihwkit": _mean_error(perfect["uncompensated"]["weight_error"]),
        },
        "table": table(ours["ours"], perfect),
        "ours": ours,
        "aihwkit": theirs,
    }
    out.update(_six_chips(comps))
    print(out["table"])
    curves = {("ours", c): ours["ours"][c] for c in comps}
    curves.update({("aihwkit", c): perfect[c] for c in comps})
    dio = _common.RESULTS / "aihwkit_parity_aihwkit_drift_default_io.json"
    if dio.is_file():  # context: aihwkit's default forward IO instead of an exact forward
        out["aihwkit_default_io"] = json.loads(dio.read_text())
        runs = out["aihwkit_default_io"]["runs"]["default_io"]
        curves.update({("aihwkit default IO", c): runs[c] for c in comps if c in runs})
    _common.save("aihwkit_parity_drift", out, _plot(curves, ours["digital_test_accuracy"]))


# --- in-situ training: this package's side of aihwkit_parity.py insitu ----------------------
#: aihwkit's default IOParameters as an IOConfig: inp_res 1/126 over [-1, 1] (63 levels a
#: sign: 7 signed bits), out_res 1/510 over [-12, 12] (255 a sign: 9 bits), out_noise 0.06;
#: noise (abs-max) and iterative bound management are the layer's defaults.
AIHWKIT_IO = analog.IOConfig(inp_bits=7, inp_bound=1.0, out_bits=9, out_bound=12.0, read_noise=0.06)
#: aihwkit's default UpdateParameters: desired_bl 31, stochastic compressed trains, update
#: management and update BL management on.
AIHWKIT_UPDATE = analog.UpdateConfig(bl=31, update_management=True, bl_management=True)
#: aihwkit's device weight range [-0.6, 0.6] (w_max = -w_min = 0.6): a differential pair with
#: w_max 0.6 spans it; one aihwkit step dw_min (in weight units, width 1.2) is a pulse on the
#: pair, so each device's step is dw_min / 1.2 of its range (analog._presets' rule).
AIHWKIT_W_MAX = 0.6
#: aihwkit's default spreads (dw_min_dtod 0.3, dw_min_std 0.3, up_down_dtod 0.01) are per
#: weight, one device each; ours draw them per device of the pair, and a weight's step is the
#: mean of its two devices' steps, so each is given sqrt(2) times aihwkit's value for the same
#: spread per weight (``aihwkit_parity_probe``: the update's spread per cross-point). aihwkit's
#: bound spreads (w_max_dtod, w_min_dtod 0.3) scale each bound about w = 0, which stays inside
#: every device's range; ``bounds_dtod`` spreads a device's range above a fixed g_min instead,
#: which moves each device's symmetry point with its range and pulls every soft-bounds weight
#: towards its own: none of our spreads is theirs, so none is given (BENCHMARKS.md, "aihwkit
#: side by side on accuracy").
_SPREADS = {
    "dw_min_dtod": 0.3 * math.sqrt(2.0),
    "dw_min_std": 0.3 * math.sqrt(2.0),
    "up_down_dtod": 0.01 * math.sqrt(2.0),
}


def ours_device(name: str, spreads: str = "default"):
    """The device of an aihwkit configuration name; None where no model of ours matches.
    ``spreads="none"``: nominal devices (aihwkit_parity.py's ``NO_SPREADS``)."""
    kw = _SPREADS if spreads == "default" else {}
    if name.endswith("constant_step"):
        return analog.ConstantStep(dw_min=0.001 / (2 * AIHWKIT_W_MAX), **kw)
    if name.endswith("soft_bounds"):
        return analog.SoftBounds(dw_min=0.001 / (2 * AIHWKIT_W_MAX), **kw)
    if name.endswith("exp_step"):  # pair vs single device: BENCHMARKS.md, "ExpFitStep"
        return analog.ExpFitStep(dw_min=0.001 / (2 * AIHWKIT_W_MAX), **kw)
    return None


#: aihwkit's TransferCompound defaults: ``fast_lr`` 1 (A's updates take this rate, whatever
#: the SGD rate), ``transfer_lr`` 1 with ``scale_transfer_lr`` (a transfer's rate is
#: ``transfer_lr`` times the SGD rate).
AIHWKIT_FAST_LR = 1.0
#: The most pulses one transfer sends to a device of C in aihwkit: its transfer pulse train's
#: ``desired_BL``, 31 for both compounds as ``aihwkit_parity.insitu_config`` sets them
#: (``TransferCompound``'s default ``transfer_update``; ``BufferedTransferCompound`` clamps
#: its buffer's whole steps to it). The steps beyond stay in our H, as in aihwkit's buffer.
AIHWKIT_MAX_TRANSFER_PULSES = 31


def tiki_taka_as_aihwkit(lr: float, batch: int, params, seed: int, max_pulses: int | None = None):
    """``analog.tiki_taka`` set as aihwkit_parity.py's TransferCompound: A pulsed at
    :data:`AIHWKIT_FAST_LR`, a row of A read every mini-batch through aihwkit's transfer read
    (default IO, noise and bound management off: :data:`AIHWKIT_IO`, which ``mvm`` reads
    unmanaged) and moved into C at ``lr`` (``transfer_lr`` 1 scaled by the SGD rate), gamma 0,
    digital biases at ``lr``. Ours is TTv2: the transfer goes through the digital buffer H (whole
    steps of C, the rest kept), aihwkit's TransferCompound pulses the read into C stochastically;
    the expected change of C is the same. ``max_pulses``: the cap on one transfer's pulses
    (:data:`AIHWKIT_MAX_TRANSFER_PULSES`)."""
    from analog._insitu import Crossbar

    digital = jax.tree.map(
        lambda p: not isinstance(p, Crossbar), params, is_leaf=lambda p: isinstance(p, Crossbar)
    )
    return optax.chain(
        optax.masked(optax.scale(lr / AIHWKIT_FAST_LR), digital),  # biases: -lr g
        analog.tiki_taka(
            AIHWKIT_FAST_LR,
            transfer_every=batch,
            transfer_lr=lr,
            update=AIHWKIT_UPDATE,
            transfer_io=AIHWKIT_IO,
            max_transfer_pulses=max_pulses,
            seed=seed,
        ),
    )


def insitu_ours(
    name: str,
    seed: int,
    data,
    *,
    lr: float,
    batch: int,
    samples: int,
    activation: str = "sigmoid",
    spreads: str = "default",
    epochs: int = 1,
    widths: tuple[int, ...] = WIDTHS,
) -> dict:
    """Train aihwkit_parity.py's configuration ``name`` with this package; test accuracy.

    ``widths`` (784-256-128-10 unless aihwkit's file says), ``activation`` (sigmoid or relu),
    log-softmax + NLL, digital biases, weights initialised as torch's ``nn.Linear`` (uniform
    +-1/sqrt(fan_in)), tiles of at most 392 x 512 (aihwkit's ``TileModuleArray`` cuts 784
    inputs into two 392-row tiles), aihwkit's default IO forward and backward,
    ``analog.pulsed_sgd`` or :func:`tiki_taka_as_aihwkit` with :data:`AIHWKIT_UPDATE`. The same
    ``samples`` first images of a permutation seeded by ``seed`` (numpy's
    ``default_rng(seed)``) as aihwkit's side, in the same order every one of ``epochs`` epochs.
    """
    from flax import nnx

    from beyondbp import models

    device = ours_device(name, spreads)
    if device is None:
        raise ValueError(f"{name}: no device model of this package matches aihwkit's")
    tt = name.startswith(("tiki_taka_", "ttv2_"))  # one algorithm of ours, TTv2 (docstring)
    uniform = lambda k, shape, dtype: jax.random.uniform(
        k, shape, dtype, -1 / np.sqrt(shape[0]), 1 / np.sqrt(shape[0])
    )
    layer = functools.partial(
        analog.nnx.Linear, batch_size=batch, device=device, io=AIHWKIT_IO,
        tile_shape=(392, 512), w_max=AIHWKIT_W_MAX, kernel_init=uniform,
        fast_device=device if tt else None,
    )  # fmt: skip
    model = models.MLP(widths, activation=activation, linear=layer, rngs=nnx.Rngs(seed))
    graphdef, params = nnx.split(model)
    if tt:
        tx = tiki_taka_as_aihwkit(lr, batch, params, seed, AIHWKIT_MAX_TRANSFER_PULSES)
    else:
        tx = analog.pulsed_sgd(lr, update=AIHWKIT_UPDATE, seed=seed)
    state = tx.init(params)

    def loss(p, x, y):
        logits = nnx.merge(graphdef, p)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(p, s, x, y):
        u, s = tx.update(jax.grad(loss)(p, x, y), s, p)
        return optax.apply_updates(p, u), s

    (xtr, ytr), (xte, yte) = data
    order = np.random.default_rng(seed).permutation(xtr.shape[0])[:samples]
    t0 = time.perf_counter()
    for _, i in itertools.product(range(epochs), range(0, order.shape[0] - batch + 1, batch)):
        idx = order[i : i + batch]
        params, state = step(params, state, xtr[idx], ytr[idx])
    jax.block_until_ready(params)
    train_s = time.perf_counter() - t0
    predict = jax.jit(lambda p, x: jnp.argmax(nnx.merge(graphdef, p)(x), -1))
    n = xte.shape[0] // batch * batch
    correct = sum(
        int(jnp.sum(predict(params, xte[i : i + batch]) == yte[i : i + batch]))
        for i in range(0, n, batch)
    )
    # whole batches of the layer's batch size: the first 9,984 of the 10,000 test images at 64
    return {"accuracy": correct / n, "train_s": train_s, "test_images": n}


def insitu_cmd(args) -> None:
    """Our side of every configuration aihwkit's insitu JSON holds (same budget and seeds)."""
    theirs = json.loads((_common.RESULTS / f"{args.aihwkit}.json").read_text())
    spreads = theirs.get("spreads", "default")
    _, xtr, ytr = _mnist("train", args.data_dir)
    _, xte, yte = _mnist("test", args.data_dir)
    data = ((xtr, ytr), (xte, yte))
    budget = {"lr": theirs["lr"], "batch": theirs["batch"], "samples": theirs["train_samples"],
              "activation": theirs.get("activation", "sigmoid"), "epochs": theirs.get("epochs", 1),
              "widths": tuple(theirs.get("widths", WIDTHS))}  # fmt: skip
    out: dict = {"aihwkit": theirs, "configs": {}, "io": str(AIHWKIT_IO),
                 "update": str(AIHWKIT_UPDATE)}  # fmt: skip
    for name, a in theirs["configs"].items():
        if args.configs and name not in args.configs.split(","):
            continue
        if ours_device(name, spreads) is None:
            out["configs"][name] = {"ours": None, "reason": "no matching device model"}
            continue
        runs = []
        for seed in theirs["seeds"][: len(a["runs"])]:
            runs.append(insitu_ours(name, seed, data, **budget, spreads=spreads))
            print(name, seed, runs[-1], flush=True)
        out["configs"][name] = side_by_side(runs, a)
        _common.save(args.out or "aihwkit_parity_insitu_compare", out)


def side_by_side(runs: list[dict], theirs: dict) -> dict:
    """Our runs of one configuration beside aihwkit's mean and std: ours' mean and std (over
    seeds) and the difference in points."""
    accs = [r["accuracy"] for r in runs]
    return {
        "ours_runs": runs,
        "ours_mean": float(np.mean(accs)),
        "ours_std": float(np.std(accs)),
        "aihwkit_mean": theirs["mean"],
        "aihwkit_std": theirs["std"],
        "difference_points": 100 * (float(np.mean(accs)) - theirs["mean"]),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=("train", "drift", "merge", "insitu"))
    _common.add_data_dir(ap)
    ap.add_argument("--epochs", type=_common.positive_int, default=3)
    ap.add_argument("--batch", type=_common.positive_int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0, help="initialisation and data order")
    ap.add_argument("--seeds", type=_common.int_list, default=(0, 1, 2), help="chips")
    ap.add_argument("--configs", default="", help="insitu: only these (default: all of aihwkit's)")
    ap.add_argument("--out", default=None, help="insitu: result name")
    ap.add_argument(
        "--aihwkit",
        default="aihwkit_parity_insitu",
        help="insitu: the aihwkit result to match (its settings, seeds and spreads)",
    )
    args = ap.parse_args(argv)
    args.seeds = list(args.seeds)
    {"train": train, "drift": drift_cmd, "merge": merge_cmd, "insitu": insitu_cmd}[args.step](args)


if __name__ == "__main__":
    main()
