"""Single-layer probes of the in-situ parity (issue 17, item 5), aihwkit's half.

Runs ONLY in aihwkit's own virtual environment (aihwkit 1.1.0, torch 2.10.0; no JAX)::

    /work/aihwkit-venv/bin/python benchmarks/aihwkit_parity_probe.py   # -> aihwkit_parity_probe_aihwkit
    .venv/bin/python benchmarks/aihwkit_parity_probe_ours.py          # ours + both -> aihwkit_parity_probe

Where ``aihwkit_parity.py insitu`` compares accuracies, these compare the pieces one tile at a
time, on the same inputs (:func:`probe_inputs`, numpy only, shared with our half):

* ``update``: one mini-batch update ``W -= lr sum_b d_b x_b^T`` (64 x 32 tile, batch 64,
  lr 0.1, aihwkit's default ``UpdateParameters``) repeated from the same ``W0``: the slope of the
  mean change against the closed form ``-lr d^T x`` and the mean over cross-points of the
  change's standard deviation, per device (ConstantStep, SoftBounds) with aihwkit's default
  spreads and with none.
* ``read``: the forward ``x W^T`` and backward ``d W`` reads of a 392 x 256 tile through the
  default ``IOParameters``: the error's mean and standard deviation against the exact product.
* ``program``: ``set_weights`` of a torch-initialised 392 x 256 matrix on the default
  ConstantStep: how many weights the devices' bounds change, and by how much at most.
* ``drift``: a zero-mean update (fresh random ``x`` and ``d`` of either sign, 300 times) from
  ``W0 = 0`` on SoftBounds with the default spreads: where the weights settle (their mean and
  standard deviation), that is the devices' symmetry points.

``--probe clipped`` (its own result, ``aihwkit_parity_probe_clipped_aihwkit``): the ``update``
probe on ConstantStep without spreads at the scales and rates :data:`CLIPPED`, one of which
asks for more coincidences than BL has slots.

``--probe tikitaka`` (its own result, ``aihwkit_parity_probe_tikitaka_aihwkit``): TTv2 on one
64 x 32 tile (``aihwkit_parity.insitu_config("ttv2_<device>")``, A's rate ``fast_lr`` 1, the
transfer rate 1 scaled by lr 0.1, one column of A read per mini-batch, transfers of at most 31
pulses), the same mini-batch ``(x, s d)`` 128 times from ``W0``: at steps 32, 64 and 128 the
slopes of A and of ``C - W0`` along the per-step direction ``G = -s d^T x``
(:func:`tikitaka_stats`) and the spread about them, per device, at each of :data:`TT_SPREADS`,
:data:`TT_REPS` fresh tiles each. Two scales :data:`TT_SCALES`: ``s = 0.1`` keeps A inside its
bounds and every transfer under 31 pulses; ``s = 2`` saturates A within about 30 steps, so that
transfers hit the 31-pulse cap (where an uncapped transfer moved C 75% faster).
"""

from __future__ import annotations

import itertools
import time

import numpy as np

LR = 0.1
REPS = 200
DRIFT_STEPS = 300
NO_SPREADS = {
    "dw_min_dtod": 0.0,
    "dw_min_std": 0.0,
    "up_down_dtod": 0.0,
    "w_max_dtod": 0.0,
    "w_min_dtod": 0.0,
}
#: ``--spreads nobounds``: aihwkit's default spreads without its bound spreads (w_max_dtod,
#: w_min_dtod), i.e. the spreads this package's device models have a counterpart for.
NO_BOUND_SPREADS = {"w_max_dtod": 0.0, "w_min_dtod": 0.0}


def probe_inputs() -> dict:
    """The probes' inputs (weights stored ``(out, in)``, as aihwkit holds them)."""
    rng = np.random.default_rng(0)
    n_in, n_out, b = 64, 32, 64
    x = rng.random((b, n_in)) * (rng.random((b, n_in)) < 0.3)  # sparse, in [0, 1]: pixels
    lim = 1.0 / 28.0  # torch's nn.Linear init for 784 inputs
    drift = rng.random((DRIFT_STEPS, 2, b, n_in)) * (rng.random((DRIFT_STEPS, 2, b, n_in)) < 0.3)
    return {
        "x": x.astype(np.float32),
        "d": (rng.normal(size=(b, n_out)) * 3e-3).astype(np.float32),
        "w0": rng.uniform(-0.1, 0.1, (n_out, n_in)).astype(np.float32),
        "w_read": rng.uniform(-lim, lim, (256, 392)).astype(np.float32),
        "x_read": (rng.random((64, 392)) * (rng.random((64, 392)) < 0.2)).astype(np.float32),
        "d_read": (rng.normal(size=(64, 256)) * 1e-3).astype(np.float32),
        # zero-mean updates: x of either sign (difference of two sparse draws), d Gaussian
        "x_drift": (drift[:, 0] - drift[:, 1]).astype(np.float32),
        "d_drift": (rng.normal(size=(DRIFT_STEPS, b, n_out)) * 3e-3).astype(np.float32),
    }


TT_STEPS, TT_REPS, TT_AT, TT_SCALES = 128, 8, (32, 64, 128), (0.1, 2.0)
#: ``--probe clipped``: (x scale, d scale, lr) of the update probe past BL. At x5, d5, lr 1 the
#: largest pair asks for more coincidences than BL 31 has slots, so update management decides
#: which side is truncated; the others stay below it.
CLIPPED = ((1.0, 1.0, 0.1), (1.0, 1.0, 1.0), (5.0, 5.0, 1.0), (5.0, 1.0, 1.0))


def clipped_stats(dws: np.ndarray, p: dict, case: tuple) -> dict:
    """:func:`update_stats` of one :data:`CLIPPED` case (the closed form at its lr)."""
    sx, sd, lr = case
    exp = -lr * (np.float32(sd) * p["d"]).T @ (np.float32(sx) * p["x"])
    m = dws.mean(0)
    return {
        "slope": float((m * exp).sum() / (exp * exp).sum()),
        "std_per_crosspoint": float(dws.std(0).mean()),
    }


TT_DEVICES = ("constant_step", "soft_bounds", "exp_step")
#: The probe's spreads (``aihwkit_parity.SPREAD_SETS`` keys): ``nobounds`` is aihwkit's default
#: less its bound spreads, the spreads ours model (ours' ``default``), so that a difference left
#: at ``default`` can be told from one the bound spreads make.
TT_SPREADS = ("none", "default", "nobounds")


def tikitaka_stats(a: np.ndarray, c: np.ndarray, p: dict, scale: float) -> dict:
    """``a``, ``c``: ``(reps, len(TT_AT), out, in)`` fast array A and slow array C at the steps
    :data:`TT_AT` -> per step: the mean over reps of each array's slope along ``G = -s d^T x``
    (A's grows by one G a step until its bounds) and of the standard deviation about
    ``slope G`` (device spreads and pulse noise), for A and for ``C - W0``."""
    g = -(np.float32(scale) * p["d"]).T @ p["x"]
    out = {}
    for i, t in enumerate(TT_AT):
        row = {}
        for name, m in (("A", a[:, i]), ("C", c[:, i] - p["w0"])):
            slope = (m * g).sum(axis=(1, 2)) / (g * g).sum()
            err = m - slope[:, None, None] * g
            row[f"{name}_slope"] = float(slope.mean())
            row[f"{name}_err_std"] = float(err.std(axis=(1, 2)).mean())
        out[str(t)] = row
    return out


def trace_row(t: int, losses: list[float], layers: list[tuple]) -> dict:
    """One row of an in-situ training trace, the same in both simulators
    (``aihwkit_parity.py insitu --trace N``): step ``t``, the mean training loss of the last
    ``len(losses)`` steps and, per analog layer ``(C, C0, A, H, w_max)`` (A and H None without
    Tiki-Taka; any layout, the statistics are means over elements): mean ``|C - C0|`` (how far
    the weights moved), mean ``|A|``, the fraction of A within 5% of its bound ``w_max`` (A
    saturated) and mean ``|H|`` (TTv2's buffer, in weight units)."""
    rows = []
    for c, c0, a, h, w_max in layers:
        row = {"dC": float(np.abs(c - c0).mean())}
        if a is not None:
            row |= {
                "A": float(np.abs(a).mean()),
                "A_sat": float((np.abs(a) >= 0.95 * w_max).mean()),
            }
        if h is not None:
            row["H"] = float(np.abs(h).mean())
        rows.append(row)
    return {"t": t, "loss": float(np.mean(losses)), "layers": rows}


def update_stats(dws: np.ndarray, x: np.ndarray, d: np.ndarray) -> dict:
    """``dws``: ``(reps, out, in)`` changes of one update -> slope against ``-lr d^T x``, mean
    ``|E dW|`` and ``|closed form|``, and the mean over cross-points of ``std(dW)``."""
    exp = -LR * (d.T @ x)
    m = dws.mean(0)
    return {
        "slope": float((m * exp).sum() / (exp * exp).sum()),
        "mean_abs_change": float(np.abs(m).mean()),
        "mean_abs_closed_form": float(np.abs(exp).mean()),
        "std_per_crosspoint": float(dws.std(0).mean()),
    }


def read_stats(y: np.ndarray, exact: np.ndarray) -> dict:
    e = y - exact
    return {"mean_error": float(e.mean()), "std_error": float(e.std())}


def drift_stats(w: np.ndarray) -> dict:
    return {"mean": float(w.mean()), "std": float(w.std()), "max_abs": float(np.abs(w).max())}


def _tile(device, n_out: int, n_in: int):
    from aihwkit.simulator.configs import SingleRPUConfig
    from aihwkit.simulator.tiles import AnalogTile

    tile = AnalogTile(n_out, n_in, SingleRPUConfig(device=device))
    tile.set_learning_rate(LR)
    return tile


def tikitaka_main() -> None:
    """``--probe tikitaka`` (module docstring), aihwkit's half."""
    import _common
    import aihwkit
    import aihwkit_parity as parity
    import torch
    from aihwkit.simulator.tiles import AnalogTile

    torch.set_num_threads(1)
    torch.manual_seed(0)
    p = probe_inputs()
    x = torch.from_numpy(p["x"])
    out: dict = {"aihwkit": aihwkit.__version__, "steps": TT_STEPS, "reps": TT_REPS, "runs": {}}
    for dev, spreads, scale in itertools.product(TT_DEVICES, TT_SPREADS, TT_SCALES):
        d = torch.from_numpy(np.float32(scale) * p["d"])
        a = np.zeros((TT_REPS, len(TT_AT), 32, 64), np.float32)
        c = np.zeros_like(a)
        for r in range(TT_REPS):
            tile = AnalogTile(32, 64, parity.insitu_config(f"ttv2_{dev}", spreads))
            tile.set_learning_rate(LR)
            tile.set_weights(torch.from_numpy(p["w0"]))
            for t in range(1, TT_STEPS + 1):
                tile.update(x, d)
                if t in TT_AT:
                    hp = tile.get_hidden_parameters()
                    a[r, TT_AT.index(t)] = hp["hidden_weights_0"].numpy()
                    c[r, TT_AT.index(t)] = hp["hidden_weights_1"].numpy()
        key = f"{dev}_{spreads}_x{scale}"
        out["runs"][key] = tikitaka_stats(a, c, p, scale)
        print(key, out["runs"][key], flush=True)
    _common.save("aihwkit_parity_probe_tikitaka_aihwkit", out)


def clipped_main() -> None:
    """``--probe clipped``: the update of a ConstantStep tile without spreads at each of
    :data:`CLIPPED`, ``REPS`` times from ``W0`` (aihwkit's half)."""
    import _common
    import aihwkit
    import torch
    from aihwkit.simulator.configs import ConstantStepDevice

    torch.set_num_threads(1)
    torch.manual_seed(0)
    p = probe_inputs()
    out: dict = {"aihwkit": aihwkit.__version__, "reps": REPS, "cases": {}}
    for case in CLIPPED:
        sx, sd, lr = case
        x = torch.from_numpy(np.float32(sx) * p["x"])
        d = torch.from_numpy(np.float32(sd) * p["d"])
        tile = _tile(ConstantStepDevice(**NO_SPREADS), 32, 64)
        tile.set_learning_rate(lr)
        dws = []
        for _ in range(REPS):
            tile.set_weights(torch.from_numpy(p["w0"]))
            w_set = tile.get_weights()[0].numpy()
            tile.update(x, d)
            dws.append(tile.get_weights()[0].numpy() - w_set)
        out["cases"][str(case)] = clipped_stats(np.asarray(dws), p, case)
        print(case, out["cases"][str(case)], flush=True)
    _common.save("aihwkit_parity_probe_clipped_aihwkit", out)


def run_single_probe(half: str, mains: dict) -> bool:
    """``--probe NAME``: run ``mains[NAME]`` and return True; False for ``--probe all`` (the
    default: the caller runs the original probes). Both halves parse their command line here."""
    import argparse

    ap = argparse.ArgumentParser(description=f"{half} half of the single-tile probes")
    ap.add_argument("--probe", choices=("all", *mains), default="all")
    which = ap.parse_args().probe
    if which != "all":
        mains[which]()
    return which != "all"


def main() -> None:
    if run_single_probe("aihwkit's", {"tikitaka": tikitaka_main, "clipped": clipped_main}):
        return
    import _common
    import aihwkit
    import torch
    from aihwkit.simulator.configs import ConstantStepDevice, SoftBoundsDevice

    torch.set_num_threads(1)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    p = probe_inputs()
    tt = {k: torch.from_numpy(v) for k, v in p.items()}
    out: dict = {"aihwkit": aihwkit.__version__, "lr": LR, "reps": REPS, "update": {}}
    devices = {"constant_step": ConstantStepDevice, "soft_bounds": SoftBoundsDevice}
    for name, cls in devices.items():
        for spreads in ("none", "default"):
            tile = _tile(cls(**(NO_SPREADS if spreads == "none" else {})), 32, 64)
            dws = []
            for _ in range(REPS):
                tile.set_weights(tt["w0"])
                w_set = tile.get_weights()[0].numpy()
                tile.update(tt["x"], tt["d"])
                dws.append(tile.get_weights()[0].numpy() - w_set)
            out["update"][f"{name}_{spreads}"] = update_stats(np.asarray(dws), p["x"], p["d"])
            print(name, spreads, out["update"][f"{name}_{spreads}"], flush=True)
    tile = _tile(ConstantStepDevice(), 256, 392)
    tile.set_weights(tt["w_read"])
    err = np.abs(tile.get_weights()[0].numpy() - p["w_read"])
    out["program"] = {"fraction_changed": float((err > 1e-6).mean()), "max_error": float(err.max())}
    w = tile.get_weights()[0].numpy()
    fwd = [tile.forward(tt["x_read"]).detach().numpy() for _ in range(REPS)]
    bwd = [tile.backward(tt["d_read"]).detach().numpy() for _ in range(REPS)]
    out["read"] = {
        "forward": read_stats(np.asarray(fwd), p["x_read"] @ w.T),
        "backward": read_stats(np.asarray(bwd), p["d_read"] @ w),
    }
    tile = _tile(SoftBoundsDevice(), 32, 64)
    tile.set_weights(torch.zeros(32, 64))
    for i in range(DRIFT_STEPS):
        tile.update(tt["x_drift"][i], tt["d_drift"][i])
    out["drift"] = drift_stats(tile.get_weights()[0].numpy())
    out["seconds"] = time.perf_counter() - t0
    print({k: out[k] for k in ("program", "read", "drift")})
    _common.save("aihwkit_parity_probe_aihwkit", out)


if __name__ == "__main__":
    main()
