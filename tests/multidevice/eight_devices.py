"""Every 8-device measurement in one process (run by tests/test_eight_devices.py).

``python tests/multidevice/eight_devices.py OUT.json [CHECK ...]`` under
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (see tests/_multidevice.py).
JAX is imported and each program compiled once for all checks; a check only
*measures* (differences, byte counts, raised errors) and returns JSON, and the
assertions, with their tolerances, live in tests/test_eight_devices.py. A
check that raises is reported with its traceback and the others still run.

Costs: XLA:CPU compilation dominates (seconds per program on 2 cores), so the
models are small, the equality checks share one single-device reference, the
HLO checks read the programs that the equality checks already compiled, and
the 1e7-parameter program is lowered from abstract parameters and compiled,
never run.
"""

from __future__ import annotations

import json
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

import analog
import fwdgrad
import lowbit
from analog import shard_chips, shard_tiles, sharded_mvm, sharded_mvm_transpose
from beyondbp import distributed as dist
from beyondbp import models
from beyondbp.methods import cross_entropy
from fwdgrad import sharded_forward_gradient
from lowbit import compressed_bytes, compressed_pmean

D = 8
CHECKS: dict = {}
SLOW: set = set()


def check(fn=None, *, slow=False):
    def reg(f):
        CHECKS[f.__name__] = f
        if slow:
            SLOW.add(f.__name__)
        return f

    return reg(fn) if fn is not None else reg


def _raised(fn) -> dict:
    """The exception ``fn()`` raises, as {"type", "message"} (None if it returns)."""
    try:
        fn()
    except Exception as e:
        return {"type": type(e).__name__, "message": str(e)}
    return {"type": None, "message": ""}


def _diffs(a, b) -> list:
    """Per leaf: [max |a - b|, max |b|] (float64 from float32 arrays)."""
    out = []
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        assert x.shape == y.shape, (x.shape, y.shape)
        out.append([float(np.max(np.abs(x - y))), float(np.max(np.abs(y)))])
    return out


def _mlp(widths, batch):
    apply, params = models.mlp(jax.random.key(0), widths)
    x = np.asarray(jax.random.normal(jax.random.key(1), (batch, widths[0])), np.float32)
    y = (np.arange(batch) % widths[-1]).astype(np.int32)

    def loss(p, b):
        return cross_entropy(apply(p, b[0]), b[1])

    return loss, params, (x, y)


def _nparams(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


# --------------------------------------------------------------------------- fwdgrad

# One MLP of ~1e5 parameters (784-128-10, 4 leaves) for the runs and the 1e5 HLO; the
# 1e7 model has the same leaves (784-12750-10) and is only compiled. Compile time grows
# with K x leaves (every device redraws all K tangents, unrolled), so K = D = 8.
FG_K, FG_SEED, FG_STEPS = 8, 7, 2
FG_SMALL, FG_LARGE, FG_BATCH = (784, 128, 10), (784, 12750, 10), 16


def _fg_step(tx, loss, batch, *, split_batch=False):
    opt = optax.sgd(0.05)

    @jax.jit
    def step(params, s, o, b):
        if split_batch:
            g, s = tx.update(None, s, params, loss_fn=loss, batch=b)
        else:
            g, s = tx.update(None, s, params, loss_fn=lambda p: loss(p, b))
        u, o = opt.update(g, o, params)
        return optax.apply_updates(params, u), s, o

    return step, opt


def _fg_run(tx, loss, params, batch, **kw):
    step, opt = _fg_step(tx, loss, batch, **kw)
    first = (params, tx.init(params), opt.init(params), batch)
    s, o = first[1:3]
    for _ in range(FG_STEPS):
        # one step in flight at a time: simulated devices share one thread pool, and a
        # starved collective rendezvous aborts the process (see beyondbp/distributed.py)
        params, s, o = jax.block_until_ready(step(params, s, o, batch))
    return params, step, first


_FG_REF: dict = {}


def _fg_reference(aggregate="mean", tangent="rademacher"):
    """forward_gradient (one device, all K tangents in one batch): the reference run."""
    if (aggregate, tangent) not in _FG_REF:
        loss, params, batch = _mlp(FG_SMALL, FG_BATCH)
        single = fwdgrad.forward_gradient(
            num_tangents=FG_K, seed=FG_SEED, aggregate=aggregate, tangent=tangent
        )
        _FG_REF[aggregate, tangent] = _fg_run(single, loss, params, batch)[0]
    return _FG_REF[aggregate, tangent]


def _fg_report(step, *args):
    """The collectives of ``step(*args)`` as compiled (cached when ``step`` ran on these args)."""
    r = dist.communication_bytes(step, *args)
    r["num_params"] = _nparams(args[0])
    return r


def _fg_tangent_parallel(aggregate, tangent="rademacher"):
    loss, params, batch = _mlp(FG_SMALL, FG_BATCH)
    mesh = Mesh(np.array(jax.devices()), ("tangent",))
    tx = sharded_forward_gradient(
        mesh=mesh,
        axis_name="tangent",
        num_tangents=FG_K,
        seed=FG_SEED,
        aggregate=aggregate,
        tangent=tangent,
    )
    out, step, first = _fg_run(tx, loss, params, batch)
    # the program that just ran, read back from the compilation cache (no recompilation)
    return {
        "diffs": _diffs(out, _fg_reference(aggregate, tangent)),
        "steps": FG_STEPS,
        "hlo": _fg_report(step, *first),
    }


@check
def fwdgrad_tangent_parallel():
    """8 devices x 1 tangent vs forward_gradient; also the 1e5-parameter step's collectives."""
    return _fg_tangent_parallel("mean")


@check(slow=True)
def fwdgrad_tangent_parallel_orthogonal():
    return _fg_tangent_parallel("orthogonal")


@check
def fwdgrad_tangent_parallel_rank1():
    """The same with rank-one tangents: each device redraws its tangents' sign factors."""
    return _fg_tangent_parallel("mean", "rank1")


@check
def fwdgrad_data_and_tangent_parallel():
    """A 2 (data) x 4 (tangent) mesh, batch split in 2, vs the same forward_gradient run."""
    loss, params, batch = _mlp(FG_SMALL, FG_BATCH)
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "tangent"))
    tx = sharded_forward_gradient(
        mesh=mesh, axis_name="tangent", num_tangents=FG_K, seed=FG_SEED, batch_axis_name="data"
    )
    out, _, _ = _fg_run(tx, loss, params, batch, split_batch=True)
    return {"diffs": _diffs(out, _fg_reference()), "steps": FG_STEPS}


@check
def fwdgrad_hlo_1e7():
    """The same training step for a 1e7-parameter MLP: lowered from shapes, compiled, never run."""
    # nnx.eval_shape builds the module from shapes: no 1e7 parameters are ever drawn
    apply, params = models.functional(
        nnx.eval_shape(lambda: models.MLP(FG_LARGE, rngs=nnx.Rngs(0)))
    )
    x = np.zeros((FG_BATCH, FG_LARGE[0]), np.float32)
    batch = (x, (np.arange(FG_BATCH) % FG_LARGE[-1]).astype(np.int32))

    def loss(p, b):
        return cross_entropy(apply(p, b[0]), b[1])

    mesh = Mesh(np.array(jax.devices()), ("tangent",))
    tx = sharded_forward_gradient(mesh=mesh, axis_name="tangent", num_tangents=FG_K, seed=FG_SEED)
    step, opt = _fg_step(tx, loss, batch)
    return _fg_report(step, params, tx.init(params), jax.eval_shape(opt.init, params), batch)


@check
def fwdgrad_errors():
    mesh = Mesh(np.array(jax.devices()), ("tangent",))
    loss, params, batch = _mlp((20, 16, 10), 12)
    mesh81 = Mesh(np.array(jax.devices()).reshape(8, 1), ("data", "tangent"))
    tx = sharded_forward_gradient(
        mesh=mesh81, axis_name="tangent", num_tangents=2, batch_axis_name="data"
    )
    return {
        "K_12": _raised(
            lambda: sharded_forward_gradient(mesh=mesh, axis_name="tangent", num_tangents=12)
        ),
        "batch_12": _raised(
            lambda: tx.update(None, tx.init(params), params, loss_fn=loss, batch=batch)
        ),
    }


# --------------------------------------------------------------------------- lowbit


@check
def lowbit_compressed_pmean():
    """compressed_pmean in one program: 256 stochastic keys (unbiased, same on every device)
    and on-grid inputs that all devices agree on (nearest and stochastic: exact)."""
    mesh = dist.make_mesh()
    tree = {
        "w": jax.random.normal(jax.random.key(4), (D, 40)) * jnp.float32(1e-3),
        "b": jax.random.normal(jax.random.key(6), (D, 3)),
    }
    keys = jax.random.split(jax.random.key(5), 256)
    grid = lowbit.quantize(
        jax.random.normal(jax.random.key(2), (64,)), lowbit.RADIX4_FP4, scale=jnp.float32(1 / 16)
    )

    def local(t, g, k):
        t, g = jax.tree.map(lambda a: a[0], (t, g))
        many = jax.vmap(lambda kk: compressed_pmean(t, "data", key=kk))(keys)
        near = compressed_pmean(g, "data", rounding="nearest")
        stoch = compressed_pmean(g, "data", rounding="stochastic", key=k)
        return jax.tree.map(lambda a: a[None], (many, near, stoch))

    fn = jax.jit(
        jax.shard_map(local, mesh=mesh, in_specs=(P("data"), P("data"), P()), out_specs=P("data"))
    )
    many, near, stoch = jax.block_until_ready(
        fn(tree, {"x": jnp.broadcast_to(grid, (D, 64))}, jax.random.key(3))
    )
    out = {"keys": len(keys)}
    for name, leaf in many.items():
        leaf = np.asarray(leaf)  # (devices, keys, ...)
        exact = np.asarray(tree[name]).mean(0)
        err = np.abs(leaf[0].mean(0) - exact)
        se = leaf[0].std(0) / np.sqrt(len(keys))
        out[name] = {
            "devices_identical": bool(np.array_equal(leaf, np.broadcast_to(leaf[:1], leaf.shape))),
            # unbiased: err <= 5 se + 1e-7 max|exact| everywhere, i.e. this is <= 1
            "max_err_over_bound": float(np.max(err / (5 * se + 1e-7 * np.abs(exact).max()))),
        }
    grid = np.asarray(grid)
    out["grid_nearest_exact"] = bool(all(np.array_equal(np.asarray(r), grid) for r in near["x"]))
    out["grid_stochastic_exact"] = bool(
        all(np.array_equal(np.asarray(r), grid) for r in stoch["x"])
    )
    return out


# ~1e5 parameters: the float32 run doubles as the float32 HLO, and the per-chunk scales
# of the 4-bit program are noise next to the codes.
LB_WIDTHS, LB_BATCH, LB_STEPS = (256, 384, 10), 32, 2


def _lb_tx():
    return optax.sgd(0.1, momentum=0.9)


@check
def lowbit_data_parallel():
    """float32 data parallel (2 steps) vs one device; bytes of it and of the 4-bit program."""
    mesh = dist.make_mesh()
    loss, params, batch = _mlp(LB_WIDTHS, LB_BATCH)
    reports = {}
    dp = dist.data_parallel(loss, _lb_tx(), mesh=mesh)
    first = (dist.replicate(dp.init(params), mesh), dist.shard(batch, mesh))
    state = first[0]
    for _ in range(LB_STEPS):
        state, _ = jax.block_until_ready(dp.step(state, first[1]))
    reports["float32"] = dist.communication_bytes(dp.step, *first)  # cached: no recompile

    @jax.jit
    def ref_step(p, s):
        u, s = _lb_tx().update(jax.grad(loss)(p, batch), s, p)
        return optax.apply_updates(p, u), s

    ref_p, ref_s = params, _lb_tx().init(params)
    for _ in range(LB_STEPS):
        ref_p, ref_s = ref_step(ref_p, ref_s)

    dp4 = dist.data_parallel(loss, _lb_tx(), mesh=mesh, communication="4bit")
    reports["4bit"] = dist.communication_bytes(  # compiled, never run
        dp4.step, dist.replicate(dp4.init(params), mesh), dist.shard(batch, mesh)
    )
    return {
        "diffs": _diffs(state.params, ref_p),
        "steps": LB_STEPS,
        "reports": reports,
        "num_params": _nparams(params),
        "expected_4bit": compressed_bytes(params, D),
    }


@check(slow=True)
def lowbit_4bit_trains():
    mesh = dist.make_mesh()
    loss, params, batch = _mlp((30, 24, 10), 32)
    dp = dist.data_parallel(loss, optax.sgd(0.1), mesh=mesh, communication="4bit")
    state = dist.replicate(dp.init(params), mesh)
    sharded = dist.shard(batch, mesh)
    losses = []
    for _ in range(15):
        state, l = jax.block_until_ready(dp.step(state, sharded))
        losses.append(float(l))
    return {"losses": losses}


@check
def lowbit_errors():
    mesh = dist.make_mesh()
    return {
        "wide_format": _raised(
            lambda: dist.data_parallel(
                lambda p, b: jnp.float32(0),
                optax.sgd(0.1),
                mesh=mesh,
                communication="4bit",
                fmt=lowbit.E4M3,
            )
        )
    }


# --------------------------------------------------------------------------- analog

NOISY = analog.IOConfig(
    inp_bits=6, inp_bound=3.0, out_bits=8, out_bound=10.0, read_noise=0.05, w_noise=0.02
)


def _rbg(i):
    # rbg keys for the inputs: XLA:CPU compiles their kernels faster than threefry's
    return jax.random.key(i, impl="rbg")


def _analog_setup():
    mesh = Mesh(np.array(jax.devices()), ("chip",))
    w = jax.random.normal(_rbg(0), (40, 60)) * jnp.float32(0.1)
    # 3 x 8 tiles of 16 x 8: one column of tiles per simulated chip
    tiles = analog.init_tiles(_rbg(1), w, analog.presets.TAOX_RERAM, (16, 8))
    return mesh, w, tiles


@check
def analog_tiles_over_chips():
    """sharded_mvm / sharded_mvm_transpose (noisy periphery) vs analog.mvm / mvm_transpose."""
    mesh, _, tiles = _analog_setup()
    st = shard_tiles(tiles, mesh, "chip")
    x = jax.random.normal(_rbg(2), (4, 40))
    d = jax.random.normal(_rbg(3), (4, 60))
    # threefry noise keys (the default): the same bits under any vmap batch size; rbg's not
    k = jax.random.key(4)

    @jax.jit
    def sharded(t, x, d, k):
        return (
            sharded_mvm(t, x, NOISY, k, mesh=mesh, axis_name="chip"),
            sharded_mvm_transpose(t, d, NOISY, k, mesh=mesh, axis_name="chip"),
        )

    @jax.jit
    def single(t, x, d, k):
        return analog.mvm(t, x, NOISY, k), analog.mvm_transpose(t, d, NOISY, k)

    a, b = sharded(st, x, d, k), single(tiles, x, d, k)
    return {
        "grid": list(tiles.grid),
        "mvm": _diffs(a[0], b[0])[0],
        "mvm_transpose": _diffs(a[1], b[1])[0],
    }


@check
def analog_chip_ensemble():
    """16 chips (independent device variation) split over 8 devices vs jax.vmap on one."""
    mesh, w, _ = _analog_setup()
    keys = jax.random.split(jax.random.key(5), 16)  # threefry: see above
    chips = jax.vmap(lambda k: analog.init_tiles(k, w, analog.presets.TAOX_RERAM, (16, 8)))(keys)
    x = jax.random.normal(_rbg(6), (4, 40))

    def read(t):
        return analog.mvm(t, x)

    a = jax.jit(shard_chips(read, mesh=mesh, axis_name="chip"))(chips)
    b = jax.jit(jax.vmap(read))(chips)
    return {"shape": list(a.shape), "diff": _diffs(a, b)[0]}


@check
def analog_errors():
    mesh, w, tiles = _analog_setup()
    odd = analog.init_tiles(_rbg(1), w, analog.presets.IDEAL, (16, 20))  # 3 tile columns
    return {
        "odd_columns": _raised(lambda: shard_tiles(odd, mesh, "chip")),
        "bad_axis": _raised(
            lambda: sharded_mvm(tiles, jnp.ones((1, 40)), mesh=mesh, axis_name="data")
        ),
        "bad_width": _raised(
            lambda: sharded_mvm(tiles, jnp.ones((1, 41)), mesh=mesh, axis_name="chip")
        ),
        "no_key": _raised(
            lambda: sharded_mvm(tiles, jnp.ones((1, 40)), NOISY, mesh=mesh, axis_name="chip")
        ),
        "chips_12": _raised(
            lambda: shard_chips(lambda t: t, mesh=mesh, axis_name="chip")(jnp.ones((12, 3)))
        ),
    }


# --------------------------------------------------------------------------- runner


def main(out: str, names: list[str]) -> None:
    if jax.device_count() != D:
        raise SystemExit(
            f"{jax.device_count()} devices: run with "
            "XLA_FLAGS=--xla_force_host_platform_device_count=8"
        )
    names = names or [n for n in CHECKS if n not in SLOW]
    results = {}
    for name in names:
        t = time.perf_counter()
        try:
            with jax.numpy_dtype_promotion("strict"):
                results[name] = {"ok": True, "value": CHECKS[name]()}
        except Exception:
            results[name] = {"ok": False, "error": traceback.format_exc()}
        results[name]["seconds"] = round(time.perf_counter() - t, 2)
        print(f"{name}: {results[name]['seconds']} s", flush=True)
        with open(out, "w") as f:  # rewritten after each check: a timeout keeps the finished
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
