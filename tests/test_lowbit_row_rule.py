"""The ``lowbit`` row's per-layer rule (beyondbp/methods/lowbit_rows.py, CLASSIFIER_8BIT):
the classifier layer in Sun et al.'s 8 bits, every other layer 4-bit (issue 16)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import lowbit
from beyondbp import methods, models
from beyondbp.methods import combined_rows, lowbit_rows


def _cfg(widths=(32, 32), num_classes=10):
    return methods.MethodConfig(
        key=jax.random.key(0), input_shape=(8, 8), widths=widths, num_classes=num_classes, steps=10
    )


def _batch(n=64, d=64, classes=10, seed=1):
    kx, ky = jax.random.split(jax.random.key(seed))
    return jax.random.uniform(kx, (n, d), jnp.float32), jax.random.randint(ky, (n,), 0, classes)


def test_rule_puts_only_the_last_layer_in_8_bits():
    m = models.MLP((64, 32, 32, 10), rngs=nnx.Rngs(0))
    report = lowbit.plan_rules(m, lowbit_rows.CLASSIFIER_8BIT)
    assert [a.path for a in report.assignments] == ["layers/0", "layers/1", "layers/2"]
    eight = lowbit.recipes.SUN2020_8BIT
    row = lowbit_rows.ROW_4BIT
    assert [a.config for a in report.assignments] == [row, row, eight]
    # the 8-bit layer's gradients are FP8 E5M2, the others radix-2 logarithmic FP4; the 4-bit
    # layers are the paper's RECIPE with a float activation scale per sample, per-channel
    # GradScale and radix-2 gradients (no TPR on one grid), nothing else changed
    assert eight.gradients.name == "E5M2" and row.gradients == lowbit.RADIX2_FP4
    assert row.activation_scaling == "sample" and row.gradient_scaling == "channel"
    assert not row.two_phase
    paper = {
        "activation_scaling": "max",
        "gradient_scaling": "max",
        "gradients": lowbit.RADIX4_FP4,
        "two_phase": True,
    }
    assert dataclasses.replace(row, **paper) == lowbit_rows.RECIPE


def _grads(apply, params, x, y):
    return jax.grad(lambda p: models.cross_entropy(apply(p, x), y))(params)


def test_row_and_lowbit_analog_use_the_rule_and_fwdgrad_lowbit_stays_all_4_bit():
    cfg = _cfg()
    x, y = _batch()
    a_rule, p = cfg.build_model(recipe=lowbit_rows.CLASSIFIER_8BIT)
    a_all4, _ = models.mlp4bit(cfg.key, (64, 32, 32, 10), config=lowbit_rows.RECIPE)
    g_rule, g_all4 = _grads(a_rule, p, x, y), _grads(a_all4, p, x, y)
    # the two models differ (8-bit vs 4-bit classifier): their gradients are not equal
    assert not np.array_equal(g_rule["layers"][0]["kernel"], g_all4["layers"][0]["kernel"])
    for name, ref in (("lowbit", g_rule), ("lowbit+analog", g_rule), ("fwdgrad+lowbit", g_all4)):
        setup = methods.get(name).build(cfg)
        np.testing.assert_array_equal(setup.params["layers"][0]["kernel"], p["layers"][0]["kernel"])
        g = _grads(setup.apply, setup.params, x, y)
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref)):
            np.testing.assert_array_equal(a, b, err_msg=name)
    # a config other than the row's (an ablation) still goes into every layer, as before
    a_f32, _ = lowbit_rows.build_model(cfg, lowbit.QuantConfig.float32())
    a_ref, _ = models.mlp(cfg.key, (64, 32, 32, 10))
    np.testing.assert_array_equal(a_f32(p, x), a_ref(p, x))
    assert combined_rows.lowbit_rows is lowbit_rows


def _cosine(a, b):
    a, b = a.ravel(), b.ravel()
    return float(a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))


def test_8bit_classifier_keeps_the_backward_signal_to_the_first_layer():
    # The cause the rule removes: the classifier's FP4 input-gradient GEMM, dA = Q(dL/dlogits)
    # W^T, feeds every earlier layer. Against the straight-through gradient of the same forward
    # with float32 backward GEMMs, the first layer's 4-bit gradient points further away when
    # the classifier's gradients are FP4 than when they are FP8 (Fashion-MNIST at
    # initialisation, benchmarks/lowbit_gap_ablation.py: cosine 0.69 against 0.85).
    cfg = _cfg(widths=(256, 256))
    x, y = _batch(n=256)
    all4 = lowbit.Recipe(name="all4", rules=(lowbit.Rule(config=lowbit_rows.RECIPE),))
    cos = {}
    for name, recipe in (("all4", all4), ("rule", lowbit_rows.CLASSIFIER_8BIT)):
        apply_q, p = cfg.build_model(recipe=recipe)
        ref = lowbit.Recipe(
            name="ref",
            rules=tuple(
                lowbit.Rule(
                    config=dataclasses.replace(r.config, gradients=lowbit.FLOAT32, two_phase=False),
                    select=r.select,
                )
                for r in recipe.rules
            ),
        )
        apply_r, _ = cfg.build_model(recipe=ref)
        gq, gr = _grads(apply_q, p, x, y), _grads(apply_r, p, x, y)
        cos[name] = _cosine(gq["layers"][0]["kernel"], gr["layers"][0]["kernel"])
    # here (uniform pixels, random labels) 0.28 against 0.73; the margin is half that gap, and a
    # rule that changed nothing would give equal values
    assert cos["rule"] > cos["all4"] + 0.2, cos
    assert cos["rule"] > 0.6, cos


class _Record(nnx.Module):
    """Calls ``inner`` and keeps the smallest input value it was given."""

    def __init__(self, inner):
        self.inner = inner
        self.low = nnx.Variable(jnp.array(jnp.inf, jnp.float32))

    def __call__(self, x):
        self.low[...] = jnp.minimum(self.low[...], jnp.min(x))
        return self.inner(x)


def test_resnet_4_bit_layers_take_unsigned_activations_and_read_relu_outputs():
    # SUN2020_RELU gives the ResNet's 4-bit layers UINT4 activations, which is right only if
    # each of them reads a ReLU output (the stem and the 1x1 projections are 8-bit INT8)
    resnet = models.ResNet(depth=8, rngs=nnx.Rngs(0))
    report = lowbit.plan_rules(resnet, lowbit_rows.SUN2020_RELU)
    four = [a.path for a in report.assignments if a.config.weights.bits == 4]
    eight = [a for a in report.assignments if a.config.weights.bits == 8]
    assert four and eight
    assert all(a.config.activations == lowbit.UINT4 for a in report.assignments if a.path in four)
    assert all(a.config.activations == lowbit.INT8 for a in eight)
    recorders = []
    for path in four:
        *parents, name = path.split("/")
        owner = resnet
        for part in parents:
            owner = owner[int(part)] if part.isdigit() else getattr(owner, part)
        rec = _Record(getattr(owner, name))
        setattr(owner, name, rec)
        recorders.append(rec)
    x = jax.random.normal(jax.random.key(3), (4, 28, 28), jnp.float32)  # signed pixels too
    resnet(x)
    assert all(float(r.low[...]) >= 0.0 for r in recorders)
    # the row builds the ResNet with this recipe
    cfg = dataclasses.replace(_cfg(), input_shape=(28, 28, 1), model="resnet")
    setup = methods.get("lowbit").build(cfg)
    xb = jax.random.uniform(jax.random.key(4), (2, 28, 28, 1), jnp.float32)
    yb = jnp.array([1, 2])
    got = jax.tree.leaves(_grads(setup.apply, setup.params, xb, yb))
    # gradients, not logits: each block's last norm starts at scale 0 (the blocks start as
    # identities), so at initialisation the logits do not see the blocks' convolutions
    for recipe, same in ((lowbit_rows.SUN2020_RELU, True), (lowbit.recipes.SUN2020, False)):
        apply_ref, p_ref = cfg.build_model(recipe=recipe)
        ref = jax.tree.leaves(_grads(apply_ref, p_ref, xb, yb))
        equal = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(got, ref))
        assert equal == same, recipe.name
