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
import itertools
import json
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

matplotlib.use("Agg")
import _common
import matplotlib.pyplot as plt
from aihwkit_parity_insitu_ours import PAIR_GAINS, WIDTHS, _mnist, insitu_cmd

import analog
from beyondbp import datasets, drift

WEIGHTS = _common.RESULTS / "aihwkit_parity_mlp.npz"
AIHWKIT_DRIFT = _common.RESULTS / "aihwkit_parity_aihwkit_drift.json"


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
        "--only-seeds",
        type=_common.int_list,
        default=(),
        help="insitu: only these of aihwkit's seeds (default: all of them)",
    )
    ap.add_argument(
        "--pair-gains",
        choices=PAIR_GAINS,
        default="independent",
        help="insitu: a pair's two devices draw their own step scales, or share one drawn at "
        "aihwkit's per-weight spread, or also mirror their asymmetries "
        "(aihwkit_parity_insitu_ours.PAIR_GAINS)",
    )
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
