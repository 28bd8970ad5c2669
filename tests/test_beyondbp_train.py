"""beyondbp.train: the loop trains, takes estimator transforms, compiles once."""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from beyondbp import datasets, methods, train


@pytest.fixture(scope="module")
def data():
    return datasets.load("mnist_small", "train"), datasets.load("mnist_small", "test")


def _cfg(**kw):
    return methods.MethodConfig(key=jax.random.key(0), widths=(64,), **kw)


def test_backprop_trains_on_bundled_data(data, tmp_path):
    setup = methods.get("backprop").build(_cfg(steps=300))
    h = train.train(
        setup, *data, steps=300, batch_size=64, progress=False, json_path=tmp_path / "h.json"
    )
    assert h["final_test_accuracy"] > 0.85
    assert h["train_loss"][-1] < h["train_loss"][0]
    written = json.loads((tmp_path / "h.json").read_text())
    assert written["final_test_accuracy"] == h["final_test_accuracy"]
    assert "params" not in written and written["memory"]["temp"] is not None


def test_history_json_is_written_after_every_evaluation(data, tmp_path, monkeypatch):
    """A long run stopped part-way keeps its evaluations: the JSON is rewritten after each one
    (marked partial) and completed at the end, always through a temporary name."""
    seen = []
    real = train.write_json

    def spy(hist, path):
        out = real(hist, path)
        seen.append(json.loads(pathlib.Path(path).read_text()))
        return out

    monkeypatch.setattr(train, "write_json", spy)
    setup = methods.get("backprop").build(_cfg(steps=6))
    train.train(
        setup,
        *data,
        steps=6,
        batch_size=64,
        eval_every=2,
        progress=False,
        json_path=tmp_path / "h.json",
    )
    assert [len(h["test_accuracy"]) for h in seen] == [1, 2, 3]
    assert [h.get("partial", False) for h in seen] == [True, True, False]
    assert seen[-1]["final_test_accuracy"] == seen[-1]["test_accuracy"][-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.json"]


def _counting_estimator(counter):
    """An estimator transform that reads loss_fn (like fwdgrad) and counts its traces."""

    def init(params):
        return optax.EmptyState()

    def update(updates, state, params=None, *, loss_fn, **extra):
        counter.append(1)
        assert updates is None  # the loop must not compute backprop gradients for it
        g = jax.grad(loss_fn)(params)
        return jax.tree.map(lambda x: -0.1 * x, g), state

    return optax.GradientTransformationExtraArgs(init, update)


def test_estimator_transform_gets_loss_fn_and_no_gradients(data):
    base = methods.get("backprop").build(_cfg(steps=40))
    counter = []
    setup = methods.Setup(
        params=base.params, apply=base.apply, tx=_counting_estimator(counter), needs_grad=False
    )
    h5 = train.train(setup, *data, steps=5, progress=False)
    traces_short = len(counter)
    h = train.train(setup, *data, steps=40, progress=False)
    # traced once per run (the memory analysis and the step share the trace),
    # independent of the number of steps
    assert traces_short == 1 and len(counter) == 2
    # and the estimator's updates are applied: 40 steps of SGD(0.1) learn, 5 barely do.
    # Measured over init seeds 0-2: 40 steps 74-77% test accuracy against 25-43% after 5
    # (chance 10%), and the training loss falls from ln(10) ~ 2.3 to ~0.9. The margins
    # (>= 60%, >= 20 points over the short run, loss below 60% of its start) leave room for
    # summation-order differences between CPUs but fail a loop that drops or misapplies updates.
    assert h["final_test_accuracy"] >= 0.6, h["final_test_accuracy"]
    assert h["final_test_accuracy"] >= h5["final_test_accuracy"] + 0.2, (
        h["final_test_accuracy"],
        h5["final_test_accuracy"],
    )
    first, last = np.mean(h["train_loss"][:5]), np.mean(h["train_loss"][-5:])
    assert last < 0.6 * first, (first, last)


def test_batch_extra_arg_is_the_current_batch(data):
    seen = []

    def init(params):
        return optax.EmptyState()

    def update(updates, state, params=None, *, batch, **extra):
        x, y = batch
        seen.append((x.shape, y.shape, x.dtype, y.dtype))
        return jax.tree.map(jnp.zeros_like, params), state

    base = methods.get("backprop").build(_cfg(steps=3))
    setup = methods.Setup(
        params=base.params,
        apply=base.apply,
        tx=optax.GradientTransformationExtraArgs(init, update),
        needs_grad=False,
    )
    train.train(setup, *data, steps=3, batch_size=32, progress=False)
    assert seen[-1] == ((32, 28, 28, 1), (32,), jnp.float32, jnp.int32)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({}, "exactly one of steps= or epochs="),
        ({"steps": 10, "epochs": 1}, "exactly one of steps= or epochs="),
        ({"steps": 0}, "steps=0"),
        ({"epochs": -1}, "epochs=-1"),
        ({"steps": 5, "batch_size": 100000}, "larger than the 10000 training examples"),
        ({"steps": 5, "eval_every": 0}, "eval_every=0"),
    ],
)
def test_bad_arguments(data, kwargs, match):
    setup = methods.get("backprop").build(_cfg())
    with pytest.raises(ValueError, match=match):
        train.train(setup, *data, progress=False, **kwargs)


def test_setup_type_checked(data):
    with pytest.raises(TypeError, match=r"beyondbp.methods.Setup"):
        train.train(optax.sgd(0.1), *data, steps=1)


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown method 'nope'; known methods: backprop"):
        methods.get("nope")
    with pytest.raises(ValueError, match="already registered"):
        methods.register(methods.get("backprop"))
    with pytest.raises(ValueError, match="model='transformer'"):
        methods.MethodConfig(key=jax.random.key(0), model="transformer")


def test_compiled_memory_reports_bytes():
    m = train.compiled_memory(lambda a: (a @ a.T).sum(), jnp.ones((64, 32)))
    assert m["argument"] == 64 * 32 * 4 and m["peak"] >= m["argument"]


def _poison_at(bad_steps):
    """SGD that emits NaN updates on the given step numbers (counted in its own state)."""

    def init(params):
        return jnp.zeros((), jnp.int32)

    def update(updates, count, params=None, **extra):
        poison = jnp.isin(count, jnp.asarray(bad_steps))
        out = jax.tree.map(lambda g: jnp.where(poison, jnp.nan, -0.05 * g), updates)
        return out, count + 1

    return optax.GradientTransformationExtraArgs(init, update)


def test_nonfinite_updates_are_skipped_and_state_is_not_advanced(data):
    base = methods.get("backprop").build(_cfg(steps=10))
    setup = methods.Setup(params=base.params, apply=base.apply, tx=_poison_at([3, 7]))
    step = jax.jit(train.make_step(setup))
    params, state = setup.params, setup.tx.init(setup.params)
    x, y, _ = next(datasets.batches(data[0], 32))
    for i in range(5):
        before = (params, state)
        params, state, ok = step(params, state, x, y)
        if i == 3:
            # the poisoned step is not applied and the transform's own counter did not move:
            # so it retries from the same state, and is poisoned again (count is still 3)
            assert not bool(ok)
            assert int(state) == int(before[1])
            for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(before[0])):
                assert bool(jnp.array_equal(a, b))
            break
        assert bool(ok)
    assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(params))


def test_train_counts_skipped_steps(data):
    base = methods.get("backprop").build(_cfg(steps=10))

    def init(params):
        return jnp.zeros((), jnp.int32)

    def update(updates, count, params=None, **extra):  # NaN on every even step
        bad = (count % 2) == 0
        return jax.tree.map(lambda g: jnp.where(bad, jnp.inf, -0.05 * g), updates), count + 1

    setup = methods.Setup(
        params=base.params, apply=base.apply, tx=optax.GradientTransformationExtraArgs(init, update)
    )
    h = train.train(setup, *data, steps=10, progress=False)
    # count starts at 0 (bad, not applied, so count stays 0): every step is rejected
    assert h["skipped_nonfinite_steps"] == 10
    for a, b in zip(jax.tree.leaves(h["params"]), jax.tree.leaves(base.params)):
        assert bool(jnp.array_equal(a, b))


def test_history_reports_the_transforms_refusals(data):
    """A transform that refuses a non-finite step itself shows up in the history by state path."""
    import fwdgrad

    base = methods.get("backprop").build(_cfg(steps=6))

    def loss(logits, y):  # NaN for the batch whose first label is odd: refused by forward_gradient
        bad = (y[0] % 2) == 1
        return jnp.where(bad, jnp.nan, methods.cross_entropy(logits, y))

    setup = methods.Setup(
        params=base.params,
        apply=base.apply,
        loss=loss,
        needs_grad=False,
        tx=optax.chain(fwdgrad.forward_gradient(num_tangents=2), optax.sgd(1e-3)),
    )
    h = train.train(setup, data[0], steps=12, batch_size=16, seed=1, progress=False)
    batches = datasets.batches(data[0], 16, seed=1, epochs=None)
    expected = sum(int(next(batches)[1][0]) % 2 for _ in range(12))
    assert 0 < expected < 12
    ((path, refused),) = h["transform_refused_steps"].items()
    assert "nonfinite" in path and refused == expected
    assert h["skipped_nonfinite_steps"] == 0  # the transform refused first: zeros are finite
