"""``--model mixer`` and ``--model conv``: the fwdgrad-mixer / fwdgrad-conv networks trained end to
end (beyondbp/models_local.py), and the tangent count of those two rows.

Backprop through ``models.build("conv" | "mixer")`` must be the rows' own network (same key,
same weights, same logits as ``fwdgrad.convnet_apply`` / ``fwdgrad.mixer_apply``) with only the
last head, must send gradient to the first block (no stop-gradient between blocks), and must
learn 128 rendered 14x14 shapes in 60 steps of batch 32 (the loss below 80% of its start and
0.25 below chance, ln 10).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _learns import assert_learns

import fwdgrad
from beyondbp import cli, methods, models, models_local
from beyondbp.methods import fwdgrad_rows
from beyondbp.synthetic import shapes


def _cfg(model, input_shape=(14, 14, 1), widths=(32,), steps=60):
    return methods.MethodConfig(
        key=jax.random.key(0), input_shape=input_shape, widths=widths, steps=steps, model=model
    )


def _data(n=128):
    x_np, y_np = shapes(n, seed=3, size=14)
    return (
        jnp.asarray(x_np[..., None].astype(np.float32) / np.float32(255)),
        jnp.asarray(y_np.astype(np.int32)),
    )


@pytest.mark.parametrize(
    "model, init, apply, make",
    [
        ("conv", fwdgrad.convnet_init, fwdgrad.convnet_apply, fwdgrad_rows.conv_config),
        ("mixer", fwdgrad.mixer_init, fwdgrad.mixer_apply, fwdgrad_rows.mixer_config),
    ],
)
def test_same_network_as_the_fwdgrad_row_without_local_heads(model, init, apply, make):
    cfg = _cfg(model)
    e2e_apply, params = cfg.build_model()
    config = make(cfg)
    full = init(cfg.key, config)
    last = config.num_blocks - 1
    for i, block in full["blocks"].items():
        expected = set(block) if i == last else set(block) - {"head"}
        assert set(params["blocks"][i]) == expected
        for name in expected:
            for a, b in zip(
                jax.tree.leaves(params["blocks"][i][name]), jax.tree.leaves(block[name])
            ):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    x, y = _data(16)
    ours = jax.jit(e2e_apply)(params, x)
    theirs = jax.jit(lambda p, x: apply(p, x, config))(full, x)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-5, atol=1e-5)
    grads = jax.jit(jax.grad(lambda p: models.cross_entropy(e2e_apply(p, x), y)))(params)
    first = grads["blocks"][0][config.first_layer]["kernel"]
    assert float(jnp.max(jnp.abs(first))) > 0  # end to end: the first block gets gradient


@pytest.mark.parametrize("model", ["conv", "mixer"])
def test_backprop_learns_in_a_few_steps(model):
    steps, n, b = 60, 128, 32
    setup = methods.get("backprop").build(_cfg(model, steps=steps))
    x_all, y_all = _data(n)
    assert_learns(setup, x_all, y_all, steps=steps, batch=b, name=f"backprop --model {model}")


def test_bad_inputs_get_clear_errors():
    key = jax.random.key(0)
    for name in models_local.NAMES:
        with pytest.raises(ValueError, match="input_shape"):
            models.build(name, key, (196,), 10)
        with pytest.raises(methods.NotApplicable, match="lowbit recipe"):
            models.build(name, key, (28, 28, 1), 10, recipe=object())
    with pytest.raises(ValueError, match="patch_size=5 does not divide"):
        models_local.end_to_end(fwdgrad.MixerConfig(image_shape=(28, 28, 1), patch_size=5), key)
    with pytest.raises(ValueError, match="pools a 7x7 map"):
        fwdgrad.ConvNetConfig(image_shape=(14, 14, 1), channels=(8, 8, 8))
    with pytest.raises(ValueError, match="model='conv3'"):
        models_local.build("conv3", key, (28, 28, 1), 10)


def test_cli_offers_every_model():
    parser = cli.build_parser()
    compare = next(
        a for a in parser._subparsers._group_actions if isinstance(a, argparse._SubParsersAction)
    ).choices["compare"]
    choices = next(a.choices for a in compare._actions if "--model" in a.option_strings)
    assert tuple(choices) == models.NAMES


def test_row_tangents_follow_the_moment_bound():
    # groups of 16 units (64 channels in 4 groups): 1 + 15/15 = 2; groups of 8: 1 + 7/7 = 2
    assert fwdgrad_rows.net_num_tangents(fwdgrad_rows.conv_config(_cfg("mlp", (28, 28, 1)))) == 15
    mixer = fwdgrad_rows.mixer_config(_cfg("mlp", (28, 28, 1), (256, 256)))
    assert fwdgrad_rows.net_num_tangents(mixer) == 7
