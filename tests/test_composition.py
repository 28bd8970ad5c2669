"""The three packages in one optax pipeline: the chain of ../shared/DESIGN.md ("Composition").

tx = optax.chain(fwdgrad.forward_gradient(num_tangents=4),
                 lowbit.quantize_updates(lowbit.RADIX4_FP4),
                 optax.sgd(1e-2),
                 analog.program(analog.presets.TAOX_RERAM))
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import analog
import fwdgrad
import lowbit
from beyondbp import datasets, methods, models


def design_chain(device=analog.presets.TAOX_RERAM, lr=1e-2, mixed_precision=False):
    return optax.chain(
        fwdgrad.forward_gradient(num_tangents=4),
        lowbit.quantize_updates(lowbit.RADIX4_FP4),
        optax.sgd(lr),
        analog.program(device, mixed_precision=mixed_precision),
    )


@pytest.fixture(scope="module")
def data():
    return datasets.load("mnist_small", "train"), datasets.load("mnist_small", "test")


def _accuracy(apply, params, test):
    x, y, _ = next(datasets.batches(test, len(test), shuffle=False))
    return float(jnp.mean((apply(params, x).argmax(-1) == y).astype(jnp.float32)))


def _jit_step(apply, tx, traces=None):
    """One jitted chain step. Both estimators' extra args are passed (``loss_fn`` for the
    weight-perturbation one, ``batch`` for the local one): each reads its own and ignores the
    other's. ``traces`` counts compilations."""

    @jax.jit
    def step(params, state, x, y):
        if traces is not None:
            traces.append(1)
        loss = lambda p: methods.cross_entropy(apply(p, x), y)
        updates, state = tx.update(None, state, params, loss_fn=loss, batch=(x, y))
        return optax.apply_updates(params, updates), state

    return step


def test_design_chain_runs_as_written_under_jit(data):
    apply, params = models.mlp(jax.random.key(0), (784, 64, 10))
    tx = design_chain()
    state = tx.init(params)
    traces = []
    step = _jit_step(apply, tx, traces)

    batches = datasets.batches(data[0], 64, epochs=None)
    for _ in range(4):
        x, y, _ = next(batches)
        params, state = step(params, state, x, y)
    assert len(traces) == 1, "the chain must not recompile from step to step"
    assert jax.tree.structure(params) == jax.tree.structure(
        models.mlp(jax.random.key(0), (784, 64, 10))[1]
    )
    for p in jax.tree.leaves(params):
        assert p.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(p)))
    # analog.program comes last: after apply_updates the params are what the devices hold
    prog = state[-1]
    assert isinstance(prog, analog.ProgramState)
    on_chip = jax.tree.map(
        lambda t, p: analog.read_weights(t).reshape(p.shape),
        prog.tiles,
        params,
        is_leaf=lambda t: isinstance(t, analog.Tiles),
    )
    for a, b in zip(jax.tree.leaves(on_chip), jax.tree.leaves(params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    # 4-bit grid reached the optimiser: the quantizer's state advanced once per step
    assert int(state[1].count) == 4 and int(state[0].count) == 4


def test_design_chain_trains_with_ideal_devices(data):
    """The DESIGN chain with ideal devices and a rate sized for K=4 forward gradients learns.

    Measured here (784-128-10, mnist_small): 55% after 500 steps, 78% after 3,000. On
    TAOX_RERAM the same chain stays near 20-35%: device asymmetry turns the estimator's zero-mean
    noise into drift (see beyondbp/methods/combined_rows.py and BENCHMARKS.md) unless the devices
    are programmed through the accumulator (next test).
    """
    before, after = _train_chain(
        data, (784, 128, 10), design_chain(device=analog.presets.IDEAL, lr=2e-3), 600
    )
    assert after > 0.45 and after > before + 0.3, (before, after)


def _train_chain(data, sizes, tx, steps):
    apply, params = models.mlp(jax.random.key(0), sizes)
    state = tx.init(params)
    step = _jit_step(apply, tx)

    before = _accuracy(apply, params, data[1])
    for _, (x, y, _) in zip(range(steps), datasets.batches(data[0], 64, epochs=None)):
        params, state = step(params, state, x, y)
    return before, _accuracy(apply, params, data[1])


# The two TaOx chains train for over a minute each on 2 cores: slow. The default suite keeps
# the ideal-device chain above, the accumulator's own tests (test_analog_program) and every
# combined row on unseen data (test_cross_data).
@pytest.mark.slow
def test_design_chain_on_taox_trains_with_the_mixed_precision_accumulator(data):
    """On TAOX_RERAM the plain chain's zero-mean pulse noise drifts the devices (measured here,
    784-64-10, rate 2e-3, 800 steps: 15.2%); programming through the digital accumulator
    (``program(mixed_precision=True)``, Nandakumar et al. 2020) keeps it training (53.4%).
    Full MNIST, 240k steps with a cosine rate: 87.9% (BENCHMARKS.md, composition section)."""
    _, plain = _train_chain(data, (784, 64, 10), design_chain(lr=2e-3), 800)
    _, mixed = _train_chain(data, (784, 64, 10), design_chain(lr=2e-3, mixed_precision=True), 800)
    assert mixed > 0.45 and mixed > plain + 0.1, (plain, mixed)


@pytest.mark.slow
def test_all_three_chain_with_local_forward_gradients_trains_on_taox(data):
    """The DESIGN chain with its estimator swapped for Ren et al.'s activity-perturbed local
    forward gradient (``fwdgrad.activity_forward_gradient`` on a ``fwdgrad.LocalMLP``), still
    4-bit updates, SGD and plain ``program(TAOX_RERAM)``: the perturbed dimension is a block's
    width, not every weight, so the devices receive mostly signal and train without the
    accumulator. Full MNIST, 784-256-256-10, 10 epochs with a cosine rate: 92.1% test accuracy
    (``benchmarks/composition_chain.py --variants local-taox-cosine``, BENCHMARKS.md). Here
    (784-128-10, mnist_small, 800 steps): 82.5%; the weight-perturbation chain on the same
    devices stays near 15% (previous test)."""
    apply, params = models.functional(fwdgrad.LocalMLP((784, 128, 10), rngs=nnx.Rngs(0)))
    tx = optax.chain(
        fwdgrad.activity_forward_gradient(num_tangents=4, seed=0),
        lowbit.quantize_updates(lowbit.RADIX4_FP4, seed=1),
        optax.sgd(1e-3, momentum=0.9),
        analog.program(analog.presets.TAOX_RERAM, seed=2),
    )
    state = tx.init(params)
    traces = []
    step = _jit_step(apply, tx, traces)  # the same call as the weight-perturbation chain's

    before = _accuracy(apply, params, data[1])
    for _, (x, y, _) in zip(range(800), datasets.batches(data[0], 64, epochs=None)):
        params, state = step(params, state, x, y)
    after = _accuracy(apply, params, data[1])
    assert len(traces) == 1
    assert int(state[-1].nonfinite) == 0 and int(state[0].nonfinite) == 0
    assert after > 0.75 and after > before + 0.5, (before, after)
