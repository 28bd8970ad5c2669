"""Single-layer probes of the in-situ parity (issue 17, item 5), this package's half.

Run after ``aihwkit_parity_probe.py`` (aihwkit's venv, see its docstring for the probes)::

    .venv/bin/python benchmarks/aihwkit_parity_probe_ours.py   # -> aihwkit_parity_probe.json

The same inputs (``aihwkit_parity_probe.probe_inputs``) on one tile of ours, per device
configuration:

* ``none``: devices without spreads (aihwkit's ``NO_SPREADS``);
* ``default``: ``aihwkit_parity_insitu_ours.ours_device``'s mapping of aihwkit's default spreads onto a
  differential pair (what the in-situ parity runs);
* ``range_spread``: the mapping the in-situ parity used before (``bounds_dtod=0.3``, each
  spread per device of the pair as aihwkit gives it per weight), kept to show what it did.

The forward and backward reads go through ``analog._insitu.managed_read``, the read of
``analog.nnx.Linear`` (noise and bound management), with a fresh key per repetition.

``--probe clipped``: the update probe past BL (``aihwkit_parity_probe.CLIPPED``), after
aihwkit's half with the same flag; -> ``aihwkit_parity_probe_clipped``.

``--probe tikitaka`` (after aihwkit's half with the same flag; -> ``aihwkit_parity_probe_tikitaka``):
``analog.tiki_taka`` as ``aihwkit_parity_insitu_ours.tiki_taka_as_aihwkit`` sets it, on one
``analog.nnx.Linear(64, 32, fast_device=...)`` fed the probe's ``(x, d / 10)`` through its tap
gradient, a fresh pulse seed per repetition (the devices' spreads are one draw: ours are a
chip, drawn once; aihwkit draws a new tile each repetition).
"""

from __future__ import annotations

import itertools
import json
import time

import _common
import aihwkit_parity_probe as probe
import jax
import jax.numpy as jnp
import numpy as np
from aihwkit_parity_insitu_ours import AIHWKIT_IO, AIHWKIT_UPDATE, AIHWKIT_W_MAX, ours_device

import analog
from analog._insitu import Wiring, managed_read

RANGE_SPREAD = {"dw_min_dtod": 0.3, "dw_min_std": 0.3, "up_down_dtod": 0.01, "bounds_dtod": 0.3}


def device(name: str, spreads: str) -> analog.Device:
    if spreads != "range_spread":
        return ours_device(name, spreads)
    cls = analog.ConstantStep if name == "constant_step" else analog.SoftBounds
    return cls(dw_min=0.001 / (2 * AIHWKIT_W_MAX), **RANGE_SPREAD)


def tiles_of(w_out_in: np.ndarray, dev: analog.Device, seed: int = 1) -> analog.Tiles:
    w = jnp.asarray(w_out_in.T)
    return analog.init_tiles(jax.random.key(seed), w, dev, w.shape, w_max=AIHWKIT_W_MAX)


def update_probe(p: dict, dev: analog.Device) -> dict:
    tiles = tiles_of(p["w0"], dev)
    w_set = analog.read_weights(tiles)

    def once(k):
        new, _ = analog.pulse_update(tiles, p["x"], -p["d"], probe.LR, k, update=AIHWKIT_UPDATE)
        return analog.read_weights(new) - w_set

    keys = jax.random.split(jax.random.key(2), probe.REPS)
    dws = np.asarray(jax.lax.map(jax.jit(once), keys)).transpose(0, 2, 1)
    return probe.update_stats(dws, p["x"], p["d"])


def program_probe(p: dict, dev: analog.Device) -> dict:
    err = np.abs(np.asarray(analog.read_weights(tiles_of(p["w_read"], dev))).T - p["w_read"])
    return {"fraction_changed": float((err > 1e-6).mean()), "max_error": float(err.max())}


def read_probe(p: dict) -> dict:
    w = jnp.asarray(p["w_read"].T)
    wt = w.reshape(1, *w.shape)[None]  # one tile: (R, C, rows, cols) = (1, 1, 392, 256)
    wiring = Wiring(io_forward=AIHWKIT_IO, io_backward=AIHWKIT_IO)
    keys = jax.random.split(jax.random.key(3), probe.REPS)
    out = {}
    for name, v, transpose, exact in (
        ("forward", p["x_read"], False, p["x_read"] @ p["w_read"].T),
        ("backward", p["d_read"], True, p["d_read"] @ p["w_read"]),
    ):
        f = jax.jit(lambda k, v=v, t=transpose: managed_read(wt, v, AIHWKIT_IO, k, t, wiring))
        out[name] = probe.read_stats(np.asarray(jax.lax.map(f, keys)), exact)
    return out


def drift_probe(p: dict, dev: analog.Device) -> dict:
    tiles = tiles_of(np.zeros_like(p["w0"]), dev)

    def body(t, inputs):
        x, d, k = inputs
        return analog.pulse_update(t, x, -d, probe.LR, k, update=AIHWKIT_UPDATE)[0], None

    keys = jax.random.split(jax.random.key(4), probe.DRIFT_STEPS)
    final, _ = jax.lax.scan(jax.jit(body), tiles, (p["x_drift"], p["d_drift"], keys))
    return probe.drift_stats(np.asarray(analog.read_weights(final)).T)


def tikitaka_probe(p: dict, dev: analog.Device, scale: float) -> dict:
    """TTv2 on one tile, ``probe.TT_STEPS`` updates, ``probe.TT_REPS`` repetitions, each on a
    freshly drawn tile (its own device spreads and pulse seed), as aihwkit's half builds a new
    tile per repetition."""
    import optax
    from aihwkit_parity_insitu_ours import AIHWKIT_FAST_LR, AIHWKIT_MAX_TRANSFER_PULSES
    from flax import nnx

    x, d = jnp.asarray(p["x"]), jnp.float32(scale) * jnp.asarray(p["d"])

    def arrays(q):
        cb = q["crossbar"].get_value()
        return analog.read_weights(cb.fast).T, analog.read_weights(cb.tiles).T

    def run(seed):
        layer = analog.nnx.Linear(
            64, 32, batch_size=64, device=dev, io=AIHWKIT_IO, tile_shape=(392, 512),
            w_max=AIHWKIT_W_MAX, kernel_init=lambda *_: jnp.asarray(p["w0"].T),
            fast_device=dev, rngs=nnx.Rngs(seed + 1),
        )  # fmt: skip
        graphdef, params = nnx.split(layer)
        # the loss is linear in the output, so the tap's gradient is exactly [x, d]
        grads = jax.grad(lambda q: jnp.sum(nnx.merge(graphdef, q)(x) * d))(params)
        tx = analog.tiki_taka(
            AIHWKIT_FAST_LR, transfer_every=64, transfer_lr=probe.LR, update=AIHWKIT_UPDATE,
            transfer_io=AIHWKIT_IO, max_transfer_pulses=AIHWKIT_MAX_TRANSFER_PULSES, seed=seed,
        )  # fmt: skip
        step = jax.jit(lambda q, s: tx.update(grads, s, q))
        q, s, snaps = params, tx.init(params), []
        for t in range(1, probe.TT_STEPS + 1):
            u, s = step(q, s)
            q = optax.apply_updates(q, u)
            if t in probe.TT_AT:
                snaps.append([np.asarray(v) for v in arrays(q)])
        return snaps

    runs = [run(r) for r in range(probe.TT_REPS)]
    a = np.asarray([[snap[0] for snap in r] for r in runs])
    c = np.asarray([[snap[1] for snap in r] for r in runs])
    return probe.tikitaka_stats(a, c, p, scale)


def tikitaka_main() -> None:
    theirs = json.loads(
        (_common.RESULTS / "aihwkit_parity_probe_tikitaka_aihwkit.json").read_text()
    )
    p = probe.probe_inputs()
    lines = [
        "| device, spreads, scale | step | A slope (aihwkit / ours) | A spread | C slope | C spread |"
    ]
    lines.append("|---|---|---|---|---|---|")
    ours = {}
    stats = ("A_slope", "A_err_std", "C_slope", "C_err_std")
    runs = itertools.product(probe.TT_DEVICES, probe.TT_SPREADS, probe.TT_SCALES)
    for dev, spreads, scale in runs:
        key = f"{dev}_{spreads}_x{scale}"
        ours[key] = tikitaka_probe(p, ours_device(dev, spreads), scale)
        for t, o in ours[key].items():
            a = theirs["runs"][key][t]
            cells = [f"{a[k]:.4g} / {o[k]:.4g}" for k in stats]
            lines.append(f"| {dev}, {spreads}, {scale} | {t} | " + " | ".join(cells) + " |")
        print(key, ours[key], flush=True)
    out = {"ours": ours, "aihwkit": theirs, "table": "\n".join(lines)}
    print(out["table"])
    _common.save("aihwkit_parity_probe_tikitaka", out)


def table(ours: dict, theirs: dict) -> str:
    lines = ["| probe | aihwkit | ours (default) | ours (range_spread, before) | ours (none) |"]
    lines.append("|---|---|---|---|---|")
    for key, stat in (
        ("constant_step", "slope"),
        ("constant_step", "std_per_crosspoint"),
        ("soft_bounds", "slope"),
        ("soft_bounds", "std_per_crosspoint"),
    ):
        a = theirs["update"][f"{key}_default"][stat]
        o = {s: ours["update"][f"{key}_{s}"][stat] for s in ("default", "range_spread", "none")}
        lines.append(
            f"| update {key} {stat} | {a:.4g} | {o['default']:.4g} | {o['range_spread']:.4g} "
            f"| {o['none']:.4g} (aihwkit none {theirs['update'][f'{key}_none'][stat]:.4g}) |"
        )
    for stat in ("fraction_changed", "max_error"):
        a, o = theirs["program"][stat], ours["program"]
        lines.append(
            f"| program {stat} | {a:.3g} | {o['default'][stat]:.3g} "
            f"| {o['range_spread'][stat]:.3g} | - |"
        )
    for stat in ("mean", "std"):
        a, o = theirs["drift"][stat], ours["drift"]
        lines.append(
            f"| soft-bounds drift from 0, weights' {stat} | {a:.3g} | {o['default'][stat]:.3g} "
            f"| {o['range_spread'][stat]:.3g} | - |"
        )
    for name in ("forward", "backward"):
        a, o = theirs["read"][name]["std_error"], ours["read"][name]["std_error"]
        lines.append(f"| {name} read error std | {a:.4g} | {o:.4g} (same IO for all) | | |")
    return "\n".join(lines)


def clipped_main() -> None:
    """``--probe clipped`` (``aihwkit_parity_probe.CLIPPED``), our half, beside aihwkit's."""
    theirs = json.loads((_common.RESULTS / "aihwkit_parity_probe_clipped_aihwkit.json").read_text())
    p = probe.probe_inputs()
    tiles = tiles_of(p["w0"], device("constant_step", "none"))
    w_set = analog.read_weights(tiles)
    lines = [
        "| x scale, d scale, lr | slope (aihwkit / ours) | std per cross-point |",
        "|---|---|---|",
    ]
    ours = {}
    for case in probe.CLIPPED:
        sx, sd, lr = case
        x, d = np.float32(sx) * p["x"], np.float32(sd) * p["d"]

        def once(k, x=x, d=d, lr=lr):
            new, _ = analog.pulse_update(tiles, x, -d, lr, k, update=AIHWKIT_UPDATE)
            return analog.read_weights(new) - w_set

        keys = jax.random.split(jax.random.key(5), probe.REPS)
        dws = np.asarray(jax.lax.map(jax.jit(once), keys)).transpose(0, 2, 1)
        ours[str(case)] = o = probe.clipped_stats(dws, p, case)
        a = theirs["cases"][str(case)]
        lines.append(
            f"| {sx:g}, {sd:g}, {lr:g} | {a['slope']:.4f} / {o['slope']:.4f} "
            f"| {a['std_per_crosspoint']:.5f} / {o['std_per_crosspoint']:.5f} |"
        )
    out = {"ours": ours, "aihwkit": theirs, "table": "\n".join(lines)}
    print(out["table"])
    _common.save("aihwkit_parity_probe_clipped", out)


def main() -> None:
    if probe.run_single_probe("our", {"tikitaka": tikitaka_main, "clipped": clipped_main}):
        return
    t0 = time.perf_counter()
    theirs = json.loads((_common.RESULTS / "aihwkit_parity_probe_aihwkit.json").read_text())
    p = probe.probe_inputs()
    ours: dict = {"update": {}, "program": {}, "drift": {}}
    for name in ("constant_step", "soft_bounds"):
        for spreads in ("none", "default", "range_spread"):
            ours["update"][f"{name}_{spreads}"] = update_probe(p, device(name, spreads))
            print(name, spreads, ours["update"][f"{name}_{spreads}"], flush=True)
    for spreads in ("default", "range_spread"):
        ours["program"][spreads] = program_probe(p, device("constant_step", spreads))
        ours["drift"][spreads] = drift_probe(p, device("soft_bounds", spreads))
    ours["read"] = read_probe(p)
    ours["seconds"] = time.perf_counter() - t0
    out = {"ours": ours, "aihwkit": theirs, "table": table(ours, theirs)}
    print(out["table"])
    _common.save("aihwkit_parity_probe", out)


if __name__ == "__main__":
    main()
