"""aihwkit side by side on in-situ training (issue 17, item 5), this package's half.

``aihwkit_parity.py insitu`` (in aihwkit's own virtual environment) trains its configurations
and writes their accuracies; ``aihwkit_parity_ours.py insitu --aihwkit NAME`` (this module's
:func:`insitu_cmd`) trains the same network, devices, IO, update and budget here and writes the
two side by side. With ``aihwkit_parity.py insitu --trace N`` both sides also record a training
trace (the loss and per-layer statistics of C, A and H every N steps), and the compare JSON
holds both, with a plot of them.
"""

from __future__ import annotations

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
import aihwkit_parity_probe as probe
import matplotlib.pyplot as plt

import analog
from analog._pulsed_sgd import is_crossbar
from beyondbp import datasets, models

#: The in-situ network (aihwkit_parity.py's ``WIDTHS``).
WIDTHS = (784, 256, 128, 10)


def _mnist(split: str, data_dir):
    ds = datasets.load("mnist", split, data_dir=data_dir)
    x = ds.images.reshape(len(ds.labels), -1).astype(np.float32) / 255.0
    return ds, x, ds.labels.astype(np.int32)


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
#: side by side on accuracy"), except on the mirrored pair (``pair_gains="mirrored"``), which
#: takes aihwkit's per-weight bounds as they are (:func:`aihwkit_tile_bounds`).
_SPREADS = {
    "dw_min_dtod": 0.3 * math.sqrt(2.0),
    "dw_min_std": 0.3 * math.sqrt(2.0),
    "up_down_dtod": 0.01 * math.sqrt(2.0),
}

#: ``pair_gains``: ``"independent"`` (the default, as every figure before stop 38 was measured):
#: each device of a pair draws its own step scale, at :data:`_SPREADS`' sqrt(2) times aihwkit's
#: spread. A pair then reaches its bound at the pace of its slower device: on one saturated
#: Tiki-Taka tile A moved 3% less than aihwkit's and spread 4% less
#: (``aihwkit_parity_probe_tikitaka.json``, ConstantStep, nobounds, x2). ``"shared"``: both
#: devices take one step scale, drawn at aihwkit's spread (0.3), so that a weight's gain is
#: aihwkit's one device's and saturates as it does; the pulse noise and the asymmetry stay
#: per device. ``"mirrored"``: the shared step scale, and the pair's two asymmetries one draw
#: at aihwkit's spread (0.01), G- taking the opposite sign of G+, so that raising the weight
#: steps both devices by ``1 + u`` and lowering it by ``1 - u``: the pair is aihwkit's one
#: device with asymmetry ``u``. With independent asymmetries (0.01 sqrt 2 each) the weight's
#: asymmetry is aihwkit's, but each device drifts towards its own bound sqrt(2) times faster
#: than aihwkit's weight does, and the pair's common mode drifts too: a device of a busy
#: pair (Tiki-Taka's A) reaches its bound before the weight reaches its own. Only
#: ``"mirrored"`` can hold aihwkit's bound spreads (:func:`aihwkit_pair_bounds`): with
#: ``spreads="default"`` it gets them, on both arrays.
PAIR_GAINS = ("independent", "shared", "mirrored")
#: aihwkit's ``PulsedDevice.w_max_dtod`` and ``w_min_dtod``: each weight's bounds
#: ``w_max (1 + 0.3 z1)`` and ``w_min (1 + 0.3 z2)``, drawn independently.
AIHWKIT_BOUNDS_DTOD = 0.3
#: The smallest bound kept, relative to the nominal: a draw below -3.17 sigma (about one bound
#: in 1,300) would put the bound within 5% of w = 0 or past it, and the pair could not hold
#: w = 0. How aihwkit treats such a draw was not checked.
_BOUND_FLOOR = 0.05


def ours_device(
    name: str, spreads: str = "default", array: str = "slow", pair_gains: str = "independent"
):
    """The device of an aihwkit configuration name; None where no model of ours matches.
    ``spreads="none"``: nominal devices (aihwkit_parity.py's ``NO_SPREADS``); ``"nobounds"``
    (aihwkit's default less its bound spreads) is ``"default"`` here, which has none of those
    (the mirrored pair adds them to the built layers: :func:`aihwkit_pair_bounds`);
    ``"slow_only"`` / ``"fast_only"``: :data:`_SPREADS` for ``array`` ``"slow"`` (the weight's
    C) or ``"fast"`` (Tiki-Taka's A) only. ``pair_gains``: :data:`PAIR_GAINS` (with
    ``"shared"`` or ``"mirrored"``, :func:`share_pair_gains` must then be applied to the built
    layers)."""
    on = spreads in ("default", "nobounds") or spreads == f"{array}_only"
    kw = dict(_SPREADS) if on else {}
    if on and pair_gains != "independent":  # one draw per weight: aihwkit's, not sqrt(2) x
        kw["dw_min_dtod"] = 0.3
        if pair_gains == "mirrored":
            kw["up_down_dtod"] = 0.01
    if name.endswith("constant_step"):
        return analog.ConstantStep(dw_min=0.001 / (2 * AIHWKIT_W_MAX), **kw)
    if name.endswith("soft_bounds"):
        return analog.SoftBounds(dw_min=0.001 / (2 * AIHWKIT_W_MAX), **kw)
    if name.endswith("exp_step"):  # pair vs single device: BENCHMARKS.md, "ExpFitStep"
        return analog.ExpFitStep(dw_min=0.001 / (2 * AIHWKIT_W_MAX), **kw)
    return None


def share_tile_gains(tiles, mirror: bool = False):
    """``tiles`` with each G- device at its G+ partner's step scale, and with ``mirror`` at the
    opposite of its asymmetry (None stays None)."""
    if tiles is None:
        return None
    var = tiles.var_minus._replace(dw_scale=tiles.var_plus.dw_scale)
    if mirror:
        var = var._replace(up_down=-tiles.var_plus.up_down)
    return dataclasses.replace(tiles, var_minus=var)


def aihwkit_tile_bounds(tiles, key: jax.Array, soft: bool):
    """``tiles`` (a mirrored pair: :func:`share_tile_gains` with ``mirror``) given aihwkit's
    per-weight bounds: ``w_max_ij = w_max (1 + 0.3 z1)``, ``w_min_ij = w_min (1 + 0.3 z2)``
    (:data:`AIHWKIT_BOUNDS_DTOD`), each clipping the weight where aihwkit's device clips.

    The mirrored pair sits at ``c +- w / (2 w_scale)`` about the mid-range ``c``, so G+ gets
    the bounds ``c + [w_min_ij, w_max_ij] / (2 w_scale)`` and G- their mirror image: both
    devices reach their bounds when the weight reaches its own. With ``soft`` (SoftBounds)
    aihwkit's step is ``dw g (1 + u) (1 - w / w_max_ij)`` up and ``dw g (1 - u) (1 - w /
    w_min_ij)`` down (its ``slope_up = -dwmin_up / max_bound`` per device, not the mean
    bound's; checked on aihwkit 1.1.0's hidden parameters), while ours steps ``2 dw s (1 +- a)``
    times the distance to the device's bound over its range ``R``; so each device takes
    ``s (1 + a) = g (1 + u) R / (2 w_max_ij)`` and ``s (1 - a) = g (1 - u) R / (2 |w_min_ij|)``,
    which is aihwkit's rule pulse for pulse. ConstantStep's steps do not depend on the bounds.
    ExpStep's (:class:`analog.ExpFitStep`) depend on them through ``z = 2 a w / (w_max_ij -
    w_min_ij) + b``, which ExpFitStep measures from the nominal mid-range ``c`` over each
    device's own range: G+ gets aihwkit's ``z`` exactly, and G-, holding ``-w``, the mirror
    image ``z(-w)``, as it does without bound spreads. Returns None for None."""
    if tiles is None:
        return None
    dev, ws = tiles.device, tiles.w_scale
    z = jax.random.normal(key, (2, *tiles.g_plus.shape), jnp.float32)
    spread = lambda zi: AIHWKIT_W_MAX * jnp.maximum(1.0 + AIHWKIT_BOUNDS_DTOD * zi, _BOUND_FLOOR)
    w_max, w_min = spread(z[0]), -spread(z[1])
    vp, vm = tiles.var_plus, tiles.var_minus
    if soft:
        r = w_max - w_min
        up = vp.dw_scale * (1.0 + vp.up_down) * r / (2.0 * w_max)
        down = vp.dw_scale * (1.0 - vp.up_down) * r / (-2.0 * w_min)
        total = up + down  # zero for a device whose gain draw was truncated at zero
        asym = jnp.where(total > 0, (up - down) / jnp.where(total > 0, total, 1.0), 0.0)
        scale = 0.5 * total
        vp, vm = (
            vp._replace(dw_scale=scale, up_down=asym),
            vm._replace(dw_scale=scale, up_down=-asym),
        )
    c = 0.5 * (dev.g_min + dev.g_max)
    vp = vp._replace(g_min=c + w_min / (2 * ws), g_max=c + w_max / (2 * ws))
    vm = vm._replace(g_min=c - w_max / (2 * ws), g_max=c - w_min / (2 * ws))
    half = 0.5 * (tiles.g_plus - tiles.g_minus)
    return dataclasses.replace(
        tiles, g_plus=dev.clip(c + half, vp), g_minus=dev.clip(c - half, vm),
        var_plus=vp, var_minus=vm,
    )  # fmt: skip


def share_pair_gains(params, mirror: bool = False):
    """Every crossbar's pairs share one step scale (``pair_gains="shared"``; with ``mirror``,
    ``"mirrored"``: :data:`PAIR_GAINS`), on the weight's array and on Tiki-Taka's fast array."""

    share = functools.partial(share_tile_gains, mirror=mirror)
    return _map_crossbars(
        params, lambda _, p: dataclasses.replace(p, tiles=share(p.tiles), fast=share(p.fast))
    )


def _map_crossbars(params, fn):
    """``params`` with every crossbar ``p`` replaced by ``fn(i, p)``, ``i`` its leaf index."""
    leaves, treedef = jax.tree.flatten(params, is_leaf=is_crossbar)
    return jax.tree.unflatten(
        treedef, [fn(i, p) if is_crossbar(p) else p for i, p in enumerate(leaves)]
    )


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
    digital = jax.tree.map(lambda p: not is_crossbar(p), params, is_leaf=is_crossbar)
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
    trace_every: int = 0,
    pair_gains: str = "independent",
) -> dict:
    """Train aihwkit_parity.py's configuration ``name`` with this package; test accuracy.

    ``widths`` (784-256-128-10 unless aihwkit's file says), ``activation`` (sigmoid or relu),
    log-softmax + NLL, digital biases, weights initialised as torch's ``nn.Linear`` (uniform
    +-1/sqrt(fan_in)), tiles of at most 392 x 512 (aihwkit's ``TileModuleArray`` cuts 784
    inputs into two 392-row tiles), aihwkit's default IO forward and backward, no error passed
    down from an output read at the ADC bound (``zero_grad_at_bound``, aihwkit's
    ``handle_output_bound``), ``analog.pulsed_sgd`` or :func:`tiki_taka_as_aihwkit` with
    :data:`AIHWKIT_UPDATE`. The same
    ``samples`` first images of a permutation seeded by ``seed`` (numpy's
    ``default_rng(seed)``) as aihwkit's side, in the same order every one of ``epochs`` epochs.
    ``trace_every`` N > 0 adds a ``trace`` as aihwkit_parity.py's ``--trace N`` records it.
    ``pair_gains``: one of :data:`PAIR_GAINS`.
    """
    from flax import nnx

    graphdef, params, tx = _network(
        name, seed, lr=lr, batch=batch, activation=activation, spreads=spreads,
        widths=widths, pair_gains=pair_gains,
    )  # fmt: skip
    state = tx.init(params)

    def loss(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(nnx.merge(graphdef, p)(x), y).mean()

    @jax.jit
    def step(p, s, x, y):
        value, grads = jax.value_and_grad(loss)(p, x, y)
        u, s = tx.update(grads, s, p)
        return optax.apply_updates(p, u), s, value

    (xtr, ytr), (xte, yte) = data
    order = np.random.default_rng(seed).permutation(xtr.shape[0])[:samples]
    c0, trace, losses = [c for c, *_ in _layer_arrays(params)], [], []
    t0 = time.perf_counter()
    for _, i in itertools.product(range(epochs), range(0, order.shape[0] - batch + 1, batch)):
        idx = order[i : i + batch]
        params, state, value = step(params, state, xtr[idx], ytr[idx])
        if trace_every:  # a host sync per step: only when tracing
            losses.append(float(value))
            if len(losses) % trace_every == 0:
                trace.append(probe.trace_row(len(losses), losses[-trace_every:],
                    [(c, c_0, *rest) for (c, *rest), c_0 in zip(_layer_arrays(params), c0)]))  # fmt: skip
    jax.block_until_ready(params)
    train_s = time.perf_counter() - t0
    predict = jax.jit(lambda p, x: jnp.argmax(nnx.merge(graphdef, p)(x), -1))
    n = xte.shape[0] // batch * batch  # whole batches of the tap's size: 9,984 images at 64
    correct = sum(
        int(jnp.sum(predict(params, xte[i : i + batch]) == yte[i : i + batch]))
        for i in range(0, n, batch)
    )
    out = {"accuracy": correct / n, "train_s": train_s, "test_images": n}
    return out | ({"trace": trace} if trace_every else {})


def aihwkit_pair_bounds(params, key: jax.Array, soft: bool):
    """:func:`aihwkit_tile_bounds` on every crossbar's arrays (the weight's and Tiki-Taka's
    fast one), each from its own key."""

    def bound(i, p):
        k_slow, k_fast = jax.random.split(jax.random.fold_in(key, i))
        return dataclasses.replace(
            p,
            tiles=aihwkit_tile_bounds(p.tiles, k_slow, soft),
            fast=aihwkit_tile_bounds(p.fast, k_fast, soft),
        )

    return _map_crossbars(params, bound)


def _network(name, seed, *, lr, batch, activation, spreads, widths, pair_gains):
    """``(graphdef, params, tx)`` of :func:`insitu_ours`'s network and update for ``name``."""
    from flax import nnx

    device = ours_device(name, spreads, pair_gains=pair_gains)
    if device is None:
        raise ValueError(f"{name}: no device model of this package matches aihwkit's")
    tt = name.startswith(("tiki_taka_", "ttv2_"))  # one algorithm of ours, TTv2 (docstring)
    uniform = lambda k, shape, dtype: jax.random.uniform(
        k, shape, dtype, -1 / np.sqrt(shape[0]), 1 / np.sqrt(shape[0])
    )
    layer = functools.partial(
        analog.nnx.Linear, batch_size=batch, device=device, io=AIHWKIT_IO,
        tile_shape=(392, 512), w_max=AIHWKIT_W_MAX, kernel_init=uniform,
        fast_device=ours_device(name, spreads, "fast", pair_gains) if tt else None,
        zero_grad_at_bound=True,
    )  # fmt: skip
    model = models.MLP(widths, activation=activation, linear=layer, rngs=nnx.Rngs(seed))
    graphdef, params = nnx.split(model)
    if pair_gains != "independent":
        params = share_pair_gains(params, mirror=pair_gains == "mirrored")
    if pair_gains == "mirrored" and spreads == "default":  # aihwkit's bound spreads too
        params = aihwkit_pair_bounds(params, jax.random.key(seed), name.endswith("soft_bounds"))
    if tt:
        tx = tiki_taka_as_aihwkit(lr, batch, params, seed, AIHWKIT_MAX_TRANSFER_PULSES)
    else:
        tx = analog.pulsed_sgd(lr, update=AIHWKIT_UPDATE, seed=seed)
    return graphdef, params, tx


def _layer_arrays(params) -> list[tuple]:
    """Per analog layer ``(C, A, H, w_max)`` as numpy arrays (A and H None without a fast
    array): the exact reads of the slow and fast tiles and the TTv2 buffer."""

    def arrays(cb):
        read = lambda t: None if t is None else np.asarray(analog.read_weights(t))
        h = None if cb.buffer is None else np.asarray(cb.buffer)
        return read(cb.tiles), read(cb.fast), h, AIHWKIT_W_MAX

    return [arrays(p) for p in jax.tree.leaves(params, is_leaf=is_crossbar) if is_crossbar(p)]


def insitu_cmd(args) -> None:
    """Our side of every configuration aihwkit's insitu JSON holds (same budget and seeds)."""
    theirs = json.loads((_common.RESULTS / f"{args.aihwkit}.json").read_text())
    spreads = theirs.get("spreads", "default")
    _, xtr, ytr = _mnist("train", args.data_dir)
    _, xte, yte = _mnist("test", args.data_dir)
    data = ((xtr, ytr), (xte, yte))
    budget = {"lr": theirs["lr"], "batch": theirs["batch"], "samples": theirs["train_samples"],
              "activation": theirs.get("activation", "sigmoid"), "epochs": theirs.get("epochs", 1),
              "widths": tuple(theirs.get("widths", WIDTHS)),
              "trace_every": theirs.get("trace_every", 0)}  # fmt: skip
    out: dict = {"aihwkit": theirs, "configs": {}, "io": str(AIHWKIT_IO),
                 "update": str(AIHWKIT_UPDATE), "pair_gains": args.pair_gains}  # fmt: skip
    for name, a in theirs["configs"].items():
        if args.configs and name not in args.configs.split(","):
            continue
        if ours_device(name, spreads) is None:
            out["configs"][name] = {"ours": None, "reason": "no matching device model"}
            continue
        runs, seeds = [], theirs["seeds"][: len(a["runs"])]
        if args.only_seeds:  # a subset of aihwkit's seeds, compared with its runs on them
            keep = [i for i, s in enumerate(seeds) if s in args.only_seeds]
            seeds, a = [seeds[i] for i in keep], _their_runs(a, keep)
        for seed in seeds:
            runs.append(
                insitu_ours(name, seed, data, **budget, spreads=spreads, pair_gains=args.pair_gains)
            )
            print(name, seed, {k: v for k, v in runs[-1].items() if k != "trace"}, flush=True)
            out["configs"][name] = side_by_side(runs, a)  # saved every seed: a stop keeps them
            _common.save(args.out or "aihwkit_parity_insitu_compare", out, None)
    if out["configs"]:  # the plot once, at the end
        _common.save(args.out or "aihwkit_parity_insitu_compare", out, _trace_plot(out))


def _their_runs(theirs: dict, keep: list[int]) -> dict:
    """aihwkit's configuration ``theirs`` restricted to its runs ``keep`` (mean and std anew)."""
    if not keep:
        raise ValueError("--only-seeds: none of these seeds is in aihwkit's file")
    runs = [theirs["runs"][i] for i in keep]
    accs = [r["accuracy"] for r in runs]
    return {"runs": runs, "mean": float(np.mean(accs)), "std": float(np.std(accs))}


def _mean_trace(runs: list[dict], key: str, layer: int | None = None):
    """Steps and the mean over runs of one trace statistic (a layer's, or the loss)."""
    traces = [r["trace"] for r in runs]
    pick = (lambda row: row[key]) if layer is None else (lambda row: row["layers"][layer][key])
    return [row["t"] for row in traces[0]], np.mean([[pick(row) for row in t] for t in traces], 0)


def _trace_plot(out: dict):
    """Training traces side by side (loss; per layer mean |C - C0|, A at its bound and |H|;
    means over seeds), one row per traced configuration; None when nothing was traced."""
    rows = [(n, c) for n, c in out["configs"].items() if c.get("ours_runs", [{}])[0].get("trace")]
    if not rows:
        return None
    keys = (("dC", "mean |C - C0|"), ("A_sat", "fraction of A at its bound"), ("H", "mean |H|"))
    fig, axes = plt.subplots(len(rows), 4, figsize=(16, 3.2 * len(rows)), squeeze=False)
    for (name, c), ax in zip(rows, axes):
        theirs = out["aihwkit"]["configs"][name]["runs"]
        for side, runs, style in (("aihwkit", theirs, "--"), ("ours", c["ours_runs"], "-")):
            ax[0].plot(*_mean_trace(runs, "loss"), style, label=side)
            for i, layer in enumerate(runs[0]["trace"][0]["layers"]):
                for a, (key, _) in zip(ax[1:], keys):
                    if key in layer:
                        a.plot(*_mean_trace(runs, key, i), style, color=f"C{i}",
                               label=f"{side}, layer {i + 1}")  # fmt: skip
        for a, title in zip(ax, ("training loss", *(t for _, t in keys))):
            a.set_title(f"{name}: {title}", fontsize=9)
            a.set_xlabel("step")
            a.legend(fontsize=7) if a.lines else a.set_axis_off()
    fig.tight_layout()
    return fig


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
