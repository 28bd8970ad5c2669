"""One table runs every gradient transform of the toolkit through the same contract.

The contract (../shared/DESIGN.md, "Composition"): every transform works under
``jax.jit`` without recompiling from step to step, inside ``optax.chain`` and
``optax.inject_hyperparams``, keeps the params' pytree structure and dtypes
(float32 and bfloat16), and passes unknown keyword extra args through.

Add a transform, add a row to ``ROWS``. A row says how to build the transform
(``make``), the factory and numeric hyper-parameters for ``inject_hyperparams``,
and, when the default quadratic problem does not fit, its own params and extra
args (the analog local rule needs an energy network and ``batch=(x, y)``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest


def default_params(dtype) -> dict:
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    return {
        "dense": {
            "kernel": jax.random.normal(k1, (3, 4)).astype(dtype),
            "bias": jnp.zeros((4,), dtype),
        },
        "out": {"kernel": jax.random.normal(k2, (4, 2)).astype(dtype) * 0.5},
        "scale": jax.random.normal(k3, ()).astype(dtype),
    }


def default_batch(dtype):
    x = jax.random.normal(jax.random.key(1), (5, 3)).astype(dtype)
    y = jax.random.normal(jax.random.key(2), (5, 2)).astype(dtype)
    return x, y


def default_loss(params, batch):
    x, y = batch
    h = jnp.tanh(x @ params["dense"]["kernel"] + params["dense"]["bias"])
    out = (h @ params["out"]["kernel"]) * params["scale"]
    return jnp.mean(((out - y) ** 2).astype(jnp.float32))


def default_extra(params, dtype) -> dict:
    batch = default_batch(dtype)
    return {"loss_fn": lambda p: default_loss(p, batch), "batch": batch}


@dataclasses.dataclass(frozen=True)
class Row:
    """One transform under contract.

    factory/hparams: ``factory(**hparams)`` builds the transform; it is also
    wrapped with ``optax.inject_hyperparams(factory)(**hparams)``.
    estimator: True for transforms that ignore incoming updates (they get None).
    params/extra: builders for the problem the transform runs on.
    """

    name: str
    factory: Callable[..., Any]
    hparams: dict = dataclasses.field(default_factory=dict)
    estimator: bool = False
    params: Callable[[Any], Any] = default_params
    extra: Callable[[Any, Any], dict] = default_extra
    dtypes: tuple = (jnp.float32, jnp.bfloat16)
    strict: bool = True  # False only for third-party transforms that are not strict-safe

    def make(self):
        return self.factory(**self.hparams)


ROWS: list[Row] = [
    Row("optax.sgd", optax.sgd, {"learning_rate": 0.1}),
    Row("optax.adam", optax.adam, {"learning_rate": 1e-3}, strict=False),
]

# Rows of the toolkit's own packages are appended below, one block per package.
# --- fwdgrad rows ---
import fwdgrad  # noqa: E402


def _fwdgrad_local_params(dtype):
    from flax import nnx

    model = fwdgrad.LocalMLP((3, 4, 2), rngs=nnx.Rngs(0), param_dtype=dtype)
    return nnx.split(model, nnx.Param)[1].to_pure_dict()


def _fwdgrad_local_extra(params, dtype):
    x = jax.random.normal(jax.random.key(1), (5, 3)).astype(dtype)
    y = jnp.array([0, 1, 1, 0, 1], jnp.int32)
    return {"loss_fn": lambda p: jnp.float32(0.0), "batch": (x, y)}


def _fwdgrad_static(num_tangents, aggregate="mean"):
    """forward_gradient with its tangent count fixed: K sets the traced shapes, so it cannot
    be an injected (traced) hyper-parameter (plain users pass static_args=("num_tangents",))."""

    def factory(*, tangent="rademacher", seed=0):
        return fwdgrad.forward_gradient(
            num_tangents=num_tangents, tangent=tangent, aggregate=aggregate, seed=seed
        )

    return factory


ROWS += [
    Row(
        "fwdgrad.forward_gradient",
        _fwdgrad_static(1),
        {"tangent": "rademacher", "seed": 3},
        estimator=True,
    ),
    Row(
        "fwdgrad.forward_gradient-orthogonal-K4",
        _fwdgrad_static(4, "orthogonal"),
        {"tangent": "gaussian"},
        estimator=True,
    ),
    Row(  # rank-one tangents, through the matrix-vector path and the factors' Gram matrix
        "fwdgrad.forward_gradient-rank1-orthogonal-K2",
        _fwdgrad_static(2, "orthogonal"),
        {"tangent": "rank1", "seed": 2},
        estimator=True,
    ),
    Row(
        "fwdgrad.activity_forward_gradient",
        lambda *, activation="relu", seed=0: fwdgrad.activity_forward_gradient(
            activation=activation, num_tangents=2, seed=seed
        ),
        {"activation": "tanh", "seed": 1},
        estimator=True,
        params=_fwdgrad_local_params,
        extra=_fwdgrad_local_extra,
    ),
]
# --- lowbit rows ---
import lowbit  # noqa: E402

ROWS += [
    Row("lowbit.quantize_updates", lowbit.quantize_updates, {"fmt": lowbit.RADIX4_FP4, "seed": 3}),
    Row(
        "lowbit.quantize_updates-e2m1-nearest-delayed",
        lowbit.quantize_updates,
        {"fmt": lowbit.E2M1, "rounding": "nearest", "scaling": "delayed", "seed": 0},
    ),
]
# --- analog rows ---
import analog  # noqa: E402


def _energy_params(dtype):
    return [
        {"kernel": p["kernel"].astype(dtype), "bias": p["bias"].astype(dtype)}
        for p in analog.init_energy_network(jax.random.key(0), (3, 5, 2))
    ]


def _energy_extra(params, dtype):
    x = jax.random.uniform(jax.random.key(1), (4, 3)).astype(dtype)
    return {"batch": (x, jnp.asarray([0, 1, 1, 0], jnp.int32))}


def _program_taox(seed=0):
    return analog.program(analog.presets.TAOX_RERAM, tile_shape=(2, 2), seed=seed)


def _program_ideal(w_max):
    return analog.program(analog.presets.IDEAL, pulse="deterministic", w_max=w_max)


def _program_mixed(seed=0):
    return analog.program(
        analog.presets.TAOX_RERAM, tile_shape=(2, 2), seed=seed, mixed_precision=True
    )


def _eqprop(beta):
    # relaxation sweep counts are loop bounds (static), so only beta is a hyper-parameter here;
    # with inject_hyperparams on the real factory pass static_args=("free_steps", "nudged_steps")
    return analog.equilibrium_propagation(beta=beta, free_steps=20, nudged_steps=10)


ROWS += [
    Row("analog.program-taox", _program_taox, {"seed": 3}),
    Row("analog.program-ideal-deterministic", _program_ideal, {"w_max": 2.0}),
    Row("analog.program-taox-mixed-precision", _program_mixed, {"seed": 3}),
    Row(
        "analog.equilibrium_propagation",
        _eqprop,
        {"beta": 0.3},
        estimator=True,
        params=_energy_params,
        extra=_energy_extra,
    ),
]


def _analog_layer(tiki: bool):
    """A 3 -> 2 analog layer on TaOx tiles: read through TaOx periphery for pulsed SGD, or
    with Tiki-Taka's fast array (exact reads)."""
    from flax import nnx

    opts = {"fast_device": analog.presets.TAOX_RERAM} if tiki else {"io": analog.presets.TAOX_IO}
    layer = analog.nnx.Linear(
        3,
        2,
        batch_size=5,
        rngs=nnx.Rngs(0),
        device=analog.presets.TAOX_RERAM,
        tile_shape=(2, 2),
        **opts,
    )
    return nnx.split(layer)


def _analog_params(dtype, tiki=False):
    from flax import nnx

    state = nnx.to_pure_dict(_analog_layer(tiki)[1])
    # the crossbar's conductances stay float32 whatever the model's dtype; the digital bias
    # and the scale follow it
    state["bias"] = state["bias"].astype(dtype)
    return {"layer": state, "scale": jnp.asarray(0.7, dtype)}


def _analog_extra(params, dtype, tiki=False):
    from flax import nnx

    graphdef = _analog_layer(tiki)[0]
    x, y = default_batch(dtype)

    def loss_fn(p):
        out = nnx.merge(graphdef, p["layer"])(x) * p["scale"]
        return jnp.mean(((out - y) ** 2).astype(jnp.float32))

    return {"loss_fn": loss_fn, "batch": (x, y)}


def _pulsed_sgd(learning_rate, seed=0):
    return analog.pulsed_sgd(learning_rate, update=analog.UpdateConfig(bl=8), seed=seed)


def _tiki_taka(learning_rate, transfer_lr=1.0, chop_probability=0.0, seed=0):
    return analog.tiki_taka(
        learning_rate,
        transfer_every=5,
        transfer_lr=transfer_lr,
        chop_probability=chop_probability,
        update=analog.UpdateConfig(bl=8),
        seed=seed,
    )


ROWS += [
    Row(
        "analog.tiki_taka",
        _tiki_taka,
        {"learning_rate": 0.05, "transfer_lr": 0.5, "chop_probability": 0.5, "seed": 3},
        params=functools.partial(_analog_params, tiki=True),
        extra=functools.partial(_analog_extra, tiki=True),
    ),
    Row(
        "analog.pulsed_sgd",
        _pulsed_sgd,
        {"learning_rate": 0.05, "seed": 3},
        params=_analog_params,
        extra=_analog_extra,
    ),
]


def _incoming_updates(row: Row, params, extra):
    if row.estimator:
        return None
    # A real gradient so that transforms which look at magnitudes see realistic input.
    return (
        jax.grad(extra["loss_fn"])(params)
        if "loss_fn" in extra
        else jax.tree.map(lambda p: jnp.full_like(p, 0.01), params)
    )


def _run_steps(tx, row, params, extra, n=3):
    """Jitted update + apply, n steps; returns params, state and trace count."""
    traces = []

    @jax.jit
    def step(params, state):
        traces.append(1)
        ex = row.extra(params, jax.tree.leaves(params)[0].dtype)
        upd = _incoming_updates(row, params, ex)
        updates, state = tx.update(upd, state, params, **ex)
        return optax.apply_updates(params, updates), state, updates

    state = tx.init(params)
    for _ in range(n):
        params, state, updates = step(params, state)
    return params, state, updates, len(traces)


def _marks(row):
    return () if row.strict else (pytest.mark.standard_promotion,)


def _rows():
    return [pytest.param(r, id=r.name, marks=_marks(r)) for r in ROWS]


def _cases():
    return [
        pytest.param(r, d, id=f"{r.name}-{jnp.dtype(d).name}", marks=_marks(r))
        for r in ROWS
        for d in r.dtypes
    ]


@pytest.mark.parametrize("row,dtype", _cases())
def test_jit_no_recompile_keeps_structure_and_dtype(row, dtype):
    params = row.params(dtype)
    extra = row.extra(params, dtype)
    tx = row.make()
    new_params, state, updates, traces = _run_steps(tx, row, params, extra, n=3)
    assert traces == 1, f"{row.name} retraced {traces} times in 3 jitted steps"
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    assert jax.tree.structure(new_params) == jax.tree.structure(params)
    for p, u, q in zip(
        jax.tree.leaves(params), jax.tree.leaves(updates), jax.tree.leaves(new_params)
    ):
        assert u.dtype == p.dtype, f"{row.name}: update dtype {u.dtype} != param dtype {p.dtype}"
        assert q.dtype == p.dtype
        assert u.shape == p.shape
        assert bool(jnp.all(jnp.isfinite(q.astype(jnp.float32))))
    # the state's structure does not change from step to step (no recompilation needed)
    assert jax.tree.structure(state) == jax.tree.structure(tx.init(params))


@pytest.mark.parametrize("row", _rows())
def test_inside_chain(row):
    dtype = jnp.float32
    params = row.params(dtype)
    extra = row.extra(params, dtype)
    alone = row.make()
    chained = optax.chain(row.make(), optax.scale(-0.5))
    upd = _incoming_updates(row, params, extra)
    u1, _ = alone.update(upd, alone.init(params), params, **extra)
    u2, _ = chained.update(upd, chained.init(params), params, **extra)
    for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
        np.testing.assert_allclose(np.asarray(b), -0.5 * np.asarray(a), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("row", _rows())
def test_inject_hyperparams(row):
    dtype = jnp.float32
    params = row.params(dtype)
    extra = row.extra(params, dtype)
    tx = optax.inject_hyperparams(row.factory)(**row.hparams)
    state = tx.init(params)
    for name, value in row.hparams.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            assert name in state.hyperparams
    upd = _incoming_updates(row, params, extra)
    u_inj, _ = jax.jit(lambda s: tx.update(upd, s, params, **extra))(state)
    ref = row.make()
    u_ref, _ = ref.update(upd, ref.init(params), params, **extra)
    for a, b in zip(jax.tree.leaves(u_inj), jax.tree.leaves(u_ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("row", _rows())
def test_passes_unknown_extra_args(row):
    dtype = jnp.float32
    params = row.params(dtype)
    extra = dict(row.extra(params, dtype), some_unknown_arg=jnp.ones(()), another=3)
    tx = optax.chain(optax.with_extra_args_support(row.make()), optax.identity())
    upd = _incoming_updates(row, params, extra)
    updates, _ = tx.update(upd, tx.init(params), params, **extra)
    assert jax.tree.structure(updates) == jax.tree.structure(params)
