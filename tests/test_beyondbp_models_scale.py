"""beyondbp.models.resnet / vit: shapes, training, per-layer rules, jvp and jit through 4 bits.

Training and autodiff tests use small instances (ResNet-8 at 8/16/16 channels, a one-block
ViT of width 32) so that XLA:CPU compiles them in seconds; the layer-path, rule and shape
checks run on the full-size ResNet-20 and ViT with ``jax.eval_shape`` / ``plan_rules`` (no
compilation).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _tolerance import assert_close_ulps
from flax import nnx

import lowbit
from beyondbp import datasets, models
from lowbit import recipes

SMALL_RESNET = dict(depth=8, widths=(8, 16, 16), groups=4)
SMALL_VIT = dict(patch=7, depth=1, width=32, heads=2)


def _batch(n=16, shape=(28, 28, 1)):
    """Images in [0, 1] whose label is visible: half noise, half a per-class template."""
    y = jax.random.randint(jax.random.key(1), (n,), 0, 10)
    templates = jax.random.uniform(jax.random.key(2), (10, *shape))
    x = 0.5 * jax.random.uniform(jax.random.key(0), (n, *shape)) + 0.5 * templates[y]
    return x, y


def _mnist_batch(n: int):
    """The first ``n`` images of the bundled MNIST subset, in [0, 1]."""
    ds = datasets.load("mnist_small", "train")
    x = ds.images[:n].astype(np.float32).reshape(-1, *ds.input_shape) * np.float32(1 / 255)
    return jnp.asarray(x), jnp.asarray(ds.labels[:n].astype(np.int32))


def _n_params(params) -> int:
    return sum(int(p.size) for p in jax.tree.leaves(params))


def test_resnet20_and_vit_shapes_and_sizes():
    apply, params = models.resnet(jax.random.key(0))
    # He et al. (2016), Table 6: ResNet-20 has 0.27M parameters (option A shortcuts); the two
    # 1x1 projections add 16*32 + 32*64 = 2560 weights, GroupNorm 2 per channel.
    assert 265_000 < _n_params(params) < 280_000
    out = jax.eval_shape(apply, params, jnp.zeros((5, 28, 28, 1)))
    assert out.shape == (5, 10) and out.dtype == jnp.float32
    assert params["blocks"][3]["shortcut"]["kernel"].shape == (1, 1, 16, 32)
    assert params["blocks"][8]["conv2"]["kernel"].shape == (3, 3, 64, 64)
    # any H x W x C: the network ends in global average pooling
    apply3, p3 = models.resnet(jax.random.key(0), 32, 100, in_channels=3)
    assert jax.eval_shape(apply3, p3, jnp.zeros((2, 32, 32, 3))).shape == (2, 100)
    assert jax.eval_shape(apply, params, jnp.zeros((2, 28, 28))).shape == (2, 10)
    apply, params = models.vit(jax.random.key(0))
    assert params["embed"]["kernel"].shape == (16, 128)  # 4x4 patches, width 128
    assert params["position"].shape == (49, 128)  # 7x7 tokens
    assert len(params["blocks"]) == 4 and params["blocks"][0]["attn"]["qkv"]["kernel"].shape == (
        128,
        384,
    )
    assert jax.eval_shape(apply, params, jnp.zeros((3, 28, 28, 1))).shape == (3, 10)
    apply, params = models.vit(jax.random.key(0), 5, image_size=(32, 32), in_channels=3)
    assert jax.eval_shape(apply, params, jnp.zeros((2, 32, 32, 3))).shape == (2, 5)


def test_bad_shapes_fail_at_construction_or_call():
    with pytest.raises(ValueError, match="6n\\+2"):
        models.ResNet(21, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="groups"):
        models.ResNet(20, groups=5, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="shortcut"):
        models.ResNet(20, shortcut="dense", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="divide width"):
        models.ViT(width=130, heads=4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="patch=5"):
        models.ViT(patch=5, rngs=nnx.Rngs(0))
    apply, params = models.resnet(jax.random.key(0), **SMALL_RESNET)
    with pytest.raises(ValueError, match="expects images"):
        apply(params, jnp.zeros((2, 28, 28, 3)))
    apply, params = models.vit(jax.random.key(0), **SMALL_VIT)
    with pytest.raises(ValueError, match="expects images"):
        apply(params, jnp.zeros((2, 32, 32, 1)))


def _eight_or_four(report, eight: set[str]) -> None:
    for a in report.assignments:
        want = recipes.SUN2020_8BIT if a.path in eight else recipes.SUN2020_4BIT
        assert a.config == want, (a.path, lowbit.describe(a.config))


def test_sun2020_keeps_stem_head_and_1x1_shortcuts_in_8_bits():
    m = models.ResNet(rngs=nnx.Rngs(0))
    report = lowbit.plan_rules(m, recipes.SUN2020)
    assert len(report.assignments) == 1 + 9 * 2 + 2 + 1
    eight = {"stem", "head", "blocks/3/shortcut", "blocks/6/shortcut"}
    _eight_or_four(report, eight)
    assert [report.assignments[i].rule for i in (0, 9, 21)] == [0, 2, 1]  # first/pointwise/last
    v = models.ViT(rngs=nnx.Rngs(0))
    vr = lowbit.plan_rules(v, recipes.SUN2020)
    assert [a.path for a in vr.assignments][:3] == [
        "embed",
        "blocks/0/attn/qkv",
        "blocks/0/attn/out",
    ]
    _eight_or_four(vr, {"embed", "head"})
    # NVFP4_2025: the last 15% of the 18 layers (3: the last MLP and the head) stay float32
    nr = lowbit.plan_rules(v, recipes.NVFP4_2025)
    cfgs = [a.config for a in nr.assignments]
    assert cfgs[-3:] == [None] * 3 and all(c == recipes.NVFP4_2025_CONFIG for c in cfgs[:-3])
    assert [a.path for a in nr.assignments][-3:] == ["blocks/3/mlp1", "blocks/3/mlp2", "head"]
    # MXFP4: every layer, the 1x1 shortcuts included
    mr = lowbit.plan_rules(m, recipes.MXFP4)
    assert all(a.config == recipes.MXFP4_CONFIG for a in mr.assignments)


BUILDERS = {
    "resnet": (models.resnet, models.resnet4bit, SMALL_RESNET),
    "vit": (models.vit, models.vit4bit, SMALL_VIT),
}


def _module(kind: str, seed: int):
    if kind == "resnet":
        kw = dict(SMALL_RESNET)
        return models.ResNet(kw.pop("depth"), rngs=nnx.Rngs(seed), **kw)
    return models.ViT(rngs=nnx.Rngs(seed), **SMALL_VIT)


@pytest.mark.parametrize("kind", ["resnet", "vit"])
def test_4bit_builders_run_the_recipe_and_keep_the_float_weights(kind):
    build, build4, kw = BUILDERS[kind]
    x, _ = _batch(4)
    apply, params = build(jax.random.key(3), **kw)
    apply4, params4 = build4(jax.random.key(3), **kw)
    jax.tree.map(np.testing.assert_array_equal, params, params4)  # same key, same weights
    # the 4-bit apply is the module after lowbit.apply_rules(SUN2020): the same numbers
    m = _module(kind, int(jax.random.randint(jax.random.key(3), (), 0, 2**31 - 1)))
    lowbit.apply_rules(m, recipes.SUN2020)
    y4 = apply4(params4, x)
    np.testing.assert_array_equal(y4, m(x))
    assert not np.array_equal(y4, apply(params, x))  # and it does quantize


def _train(apply, params, x, y, steps, lr):
    tx = optax.sgd(lr, momentum=0.9)
    traces = []

    @jax.jit
    def step(params, state):
        traces.append(1)  # runs once per trace, not per call
        loss, g = jax.value_and_grad(lambda p: models.cross_entropy(apply(p, x), y))(params)
        upd, state = tx.update(g, state, params)
        return optax.apply_updates(params, upd), state, loss

    state = tx.init(params)
    losses = []
    for _ in range(steps):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    return losses, len(traces), step


@pytest.mark.parametrize(
    "kind,recipe",
    [
        ("resnet", None),
        ("resnet", recipes.SUN2020),
        pytest.param("resnet", recipes.NVFP4_2025, marks=pytest.mark.slow),
        ("vit", recipes.SUN2020),
        ("vit", recipes.MXFP4),
    ],
    ids=["resnet-f32", "resnet-sun2020", "resnet-nvfp4", "vit-sun2020", "vit-mxfp4"],
)
def test_a_few_steps_lower_the_loss_and_jit_compiles_once(kind, recipe):
    build = models.resnet if kind == "resnet" else models.vit
    apply, params = build(
        jax.random.key(0), recipe=recipe, **(SMALL_RESNET if kind == "resnet" else SMALL_VIT)
    )
    x, y = _mnist_batch(32)
    losses, traces, step = _train(apply, params, x, y, steps=15, lr=0.1)
    assert all(np.isfinite(losses))
    # memorising one batch; GroupNorm before global pooling makes convnets slow starters here
    # (about 2.33 -> 2.15 in 15 steps for ResNet-8), so the margin is 0.1 nats
    assert np.mean(losses[-3:]) < losses[0] - 0.1, losses
    assert traces == 1 and step._cache_size() == 1  # fifteen calls, one compilation


def _float_gradients(recipe: lowbit.Recipe) -> lowbit.Recipe:
    """``recipe`` with the same forward quantizers and float32 gradients (the STE model)."""
    rules = tuple(
        dataclasses.replace(
            r, config=dataclasses.replace(r.config, gradients=lowbit.FLOAT32, two_phase=False)
        )
        for r in recipe.rules
    )
    return dataclasses.replace(recipe, name=recipe.name + "_STE", rules=rules)


def _loss_and_tangent_inputs(kind, recipe):
    build, _, kw = BUILDERS[kind]
    apply, params = build(jax.random.key(0), recipe=recipe, **kw)
    x, y = _batch(16)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(5), len(leaves))
    v = jax.tree.unflatten(treedef, [jax.random.normal(k, p.shape) for k, p in zip(keys, leaves)])
    return (lambda p: models.cross_entropy(apply(p, x), y)), params, v


@pytest.mark.parametrize("kind", ["resnet", "vit"])
def test_jvp_through_sun2020_is_the_straight_through_derivative(kind):
    # SUN2020 reuses the forward's INT4/INT8 operands in both backward GEMMs, so with its
    # gradient quantizer switched off the backward pass is the exact straight-through
    # gradient; jax.jvp through the 4-bit model must give its directional derivative.
    loss, params, v = _loss_and_tangent_inputs(kind, recipes.SUN2020)
    value, tangent = jax.jit(lambda p, v: jax.jvp(loss, (p,), (v,)))(params, v)
    np.testing.assert_array_equal(value, jax.jit(loss)(params))
    ste_loss, _, _ = _loss_and_tangent_inputs(kind, _float_gradients(recipes.SUN2020))
    g = jax.jit(jax.grad(ste_loss))(params)
    terms = [a * b for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(v))]
    gv = sum(jnp.sum(t) for t in terms)
    magnitude = sum(jnp.sum(jnp.abs(t)) for t in terms)
    # forward and reverse mode sum every layer's products in different orders; a few
    # thousand float32 ulps of the summed magnitude covers the reordering of ~1e5 terms
    assert_close_ulps(tangent, gv, ulps=4096, magnitude=magnitude)
    assert abs(float(gv)) > 1e-3 * float(magnitude)  # not a vacuous comparison of zeros


@pytest.mark.slow
def test_jvp_through_nvfp4_vit_agrees_with_its_4bit_gradient():
    # NVFP4's weight-gradient GEMM re-quantizes A along the batch axis (and rotates it), so its
    # backward pass is not the forward's exact STE gradient; jvp must still be finite and
    # agree with the 4-bit gradient's directional derivative in sign and within 30%.
    loss, params, v = _loss_and_tangent_inputs("vit", recipes.NVFP4_2025)
    _, tangent = jax.jit(lambda p, v: jax.jvp(loss, (p,), (v,)))(params, v)
    g = jax.jit(jax.grad(loss))(params)
    gv = sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(v)))
    assert np.isfinite(float(tangent)) and abs(float(tangent) - float(gv)) <= 0.3 * abs(float(gv))


def test_registry_rows_and_cli_know_the_models():
    from beyondbp import cli, methods

    parser = cli.build_parser()
    for command in ("compare", "train"):
        for m in models.NAMES:
            assert parser.parse_args([command, "--model", m]).model == m
    with pytest.raises(ValueError, match="resnet"):
        methods.MethodConfig(key=jax.random.key(0), model="transformer")
    x = jnp.zeros((2, 28, 28, 1))
    for m in ("resnet", "vit"):
        cfg = methods.MethodConfig(key=jax.random.key(0), model=m)
        ref = methods.get("backprop").build(cfg)
        for name in ("lowbit", "lowbit-nvfp4", "lowbit-mxfp4"):
            s = methods.get(name).build(cfg)
            jax.tree.map(np.testing.assert_array_equal, s.params, ref.params)  # same init
            assert jax.eval_shape(s.apply, s.params, x).shape == (2, 10)
    with pytest.raises(methods.NotApplicable, match="model='resnet'"):
        methods.get("fwdgrad-local").build(
            methods.MethodConfig(key=jax.random.key(0), model="resnet")
        )
