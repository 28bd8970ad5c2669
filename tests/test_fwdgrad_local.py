"""LocalMixer and LocalConvNet trained by the general activity-perturbed estimator (Ren et al., 2023).

References are hand-written here, independently of the library's forward code:
``jax.grad`` of the summed local losses with a stop-gradient between blocks.
With one unit per (patch, group) part every per-group, per-patch site is
estimated exactly; with larger groups the estimate is unbiased (5 standard
errors per coordinate, fixed seeds) and its variance matches the Rademacher
formula ``sum over parts (active - 1)|g_part|^2``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax import lax

import fwdgrad

B, SIDE, CLASSES = 6, 8, 3
X = jax.random.normal(jax.random.key(1), (B, SIDE * SIDE))
Y = jnp.arange(B, dtype=jnp.int32) % CLASSES


# --------------------------------------------------------------------------- references


def _ln(v, groups=1, on=True):
    if not on:
        return v
    g = v.reshape(*v.shape[:-1], groups, -1)
    g = (g - g.mean(-1, keepdims=True)) / jnp.sqrt(g.var(-1, keepdims=True) + 1e-5)
    return g.reshape(v.shape)


def _ce(logits):
    return optax.softmax_cross_entropy_with_integer_labels(logits, Y).mean()


def _head(h, hp, G, on):
    feats = _ln(h, G, on).reshape(B, -1, h.shape[-1]).mean(1)
    return feats @ hp["kernel"] + hp["bias"]


def _ref_mixer_total(params, cfg):
    """Sum of the blocks' mean CE; the mixer written out with swapaxes/matmul, not einsum."""
    G, on, s = cfg.num_groups, cfg.normalize, cfg.patch_size
    n = SIDE // s
    h = X.reshape(B, n, s, n, s).transpose(0, 1, 3, 2, 4).reshape(B, n * n, s * s)
    total = 0.0
    for i in sorted(params["blocks"]):
        p = params["blocks"][i]
        h = lax.stop_gradient(h)
        if i == 0:
            a = _ln(h, on=on and cfg.input_norm)
        else:
            tok = jnp.swapaxes(
                jnp.swapaxes(_ln(h, on=on), 1, 2) @ p["token"]["kernel"] + p["token"]["bias"], 1, 2
            )
            a = _ln(jax.nn.relu(_ln(tok, on=on)), on=on)
        a = _ln(jax.nn.relu(_ln(a @ p["channel"]["kernel"] + p["channel"]["bias"], on=on)), G, on)
        parts = [
            a[..., g * a.shape[-1] // G : (g + 1) * a.shape[-1] // G] @ p["group"]["kernel"][g]
            for g in range(G)
        ]
        z = _ln(jnp.concatenate(parts, -1) + p["group"]["bias"], G, on)
        h = jax.nn.relu(z if i == 0 else z + h)
        total = total + _ce(_head(h, p["head"], G, on))
    return total


def _ref_conv_total(params, cfg):
    """Sum of the blocks' mean CE; the conv net in NCHW/OIHW layout."""
    h = X.reshape(B, 1, SIDE, SIDE)
    total = 0.0
    for i in sorted(params["blocks"]):
        p = params["blocks"][i]
        h = lax.stop_gradient(h)
        if i > 0:
            h = h.reshape(B, h.shape[1], h.shape[2] // 2, 2, h.shape[3] // 2, 2).mean((3, 5))
        w = jnp.transpose(p["conv"]["kernel"], (3, 2, 0, 1))
        z = lax.conv_general_dilated(h, w, (1, 1), "SAME") + p["conv"]["bias"][:, None, None]
        z = jnp.moveaxis(_ln(jnp.moveaxis(z, 1, -1), on=cfg.normalize), -1, 1)
        h = jax.nn.relu(z)
        total = total + _ce(_head(jnp.moveaxis(h, 1, -1), p["head"], cfg.num_groups, cfg.normalize))
    return total


def _mixer(**kw):
    base = dict(
        image_shape=(SIDE, SIDE, 1),
        patch_size=4,
        num_blocks=2,
        channels=8,
        hidden=8,
        num_classes=CLASSES,
    )
    return fwdgrad.MixerConfig(**{**base, **kw})


def _conv(**kw):
    base = dict(image_shape=(SIDE, SIDE, 1), channels=(4, 4), num_classes=CLASSES)
    return fwdgrad.ConvNetConfig(**{**base, **kw})


NETS = {
    "mixer": (_mixer, fwdgrad.mixer_init, fwdgrad.mixer_grads, _ref_mixer_total),
    "conv": (_conv, fwdgrad.convnet_init, fwdgrad.convnet_grads, _ref_conv_total),
}


def _flat(tree, skip=()):
    leaves = [
        x
        for path, x in jax.tree_util.tree_leaves_with_path(tree)
        if not any(s in jax.tree_util.keystr(path) for s in skip)
    ]
    return np.concatenate([np.asarray(x, np.float64).ravel() for x in leaves])


def _samples(net, cfg, params, num, seed, **kw):
    grads_fn = NETS[net][2]
    keys = jax.random.split(jax.random.key(seed), num)

    def one(k):
        return jnp.concatenate(
            [x.ravel() for x in jax.tree.leaves(grads_fn(k, params, X, Y, cfg, **kw)[1])]
        )

    # lax.map in batches of 50, not one vmap over every key: with jax/jaxlib 0.10.2 on XLA:CPU a
    # jit(vmap) over >= 200 keys of grad-through-a-group-layer-norm returns wrong values for
    # some rows (eager vmap and batches of 100 agree with the single-key result)
    est = jax.jit(lambda ks: lax.map(one, ks, batch_size=50))(keys)
    return np.asarray(est, np.float64)


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("mask", [True, False])
def test_conv_group_size_one_is_exact_local_gradient(mask):
    cfg = _conv(num_groups=4, normalize=False)
    params = fwdgrad.convnet_init(jax.random.key(0), cfg)
    exact = jax.grad(_ref_conv_total)(params, cfg)
    losses, est = jax.jit(
        lambda k: fwdgrad.convnet_grads(k, params, X, Y, cfg, mask_tangents=mask)
    )(jax.random.key(3))
    ref = _flat(exact)
    assert np.count_nonzero(ref) > 0.5 * ref.size
    np.testing.assert_allclose(_flat(est), ref, rtol=0, atol=1e-5 * np.max(np.abs(ref)))
    np.testing.assert_allclose(
        float(jnp.sum(losses)), float(_ref_conv_total(params, cfg)), rtol=1e-5
    )


def test_mixer_group_size_one_is_exact_except_token_mixing():
    """Token-mixing sites feed every group of their patch, so only they stay random."""
    cfg = _mixer(num_groups=8, normalize=False)
    params = fwdgrad.mixer_init(jax.random.key(0), cfg)
    exact = jax.grad(_ref_mixer_total)(params, cfg)
    _, est = jax.jit(lambda k: fwdgrad.mixer_grads(k, params, X, Y, cfg))(jax.random.key(3))
    ref = _flat(exact, skip=("token",))
    assert np.count_nonzero(ref) > 0.5 * ref.size
    np.testing.assert_allclose(
        _flat(est, skip=("token",)), ref, rtol=0, atol=1e-5 * np.max(np.abs(ref))
    )


@pytest.mark.parametrize("input_norm", [True, False])
def test_mixer_input_norm_is_a_norm_of_each_raw_patch(input_norm):
    """On, block 0 sees each patch normalised alone: scaling and shifting one patch's pixels
    (a brighter or dimmer background) changes nothing. Off, the patch keeps its contrast."""
    cfg = _mixer(num_groups=2, input_norm=input_norm)
    params = fwdgrad.mixer_init(jax.random.key(0), cfg)
    losses = fwdgrad.mixer_local_losses(params, X, Y, cfg)
    np.testing.assert_allclose(
        float(jnp.sum(losses)), float(_ref_mixer_total(params, cfg)), rtol=1e-5
    )
    # patch (0, 0) of every image (rows and columns 0-3 of the 8x8 image), times 3 plus 0.5
    img = X.reshape(B, SIDE, SIDE)
    patch = (slice(None), slice(0, cfg.patch_size), slice(0, cfg.patch_size))
    moved = img.at[patch].set(3.0 * img[patch] + 0.5).reshape(B, -1)
    logits = fwdgrad.mixer_apply(params, X, cfg)
    moved_logits = fwdgrad.mixer_apply(params, moved, cfg)
    gap = float(jnp.max(jnp.abs(moved_logits - logits)))
    scale = float(jnp.max(jnp.abs(logits)))
    if input_norm:
        # a norm's rsqrt(var + 1e-5) moves by ~1e-5 / var of unit-variance noise
        assert gap < 1e-3 * scale, gap
    else:
        assert gap > 1e-2 * scale, gap


def test_mixer_input_norm_must_be_a_bool():
    with pytest.raises(TypeError, match="input_norm"):
        _mixer(input_norm=1)


# --------------------------------------------------------------------------- unbiasedness


@pytest.mark.parametrize(
    "net, kw",
    [
        ("mixer", dict(num_groups=2)),
        ("mixer", dict(num_groups=4, patch_loss=False)),
        ("conv", dict(num_groups=2)),
        ("conv", dict(num_groups=2, group_loss=False)),
    ],
)
def test_estimate_unbiased_for_groups_larger_than_one(net, kw):
    make, init, _, ref_total = NETS[net]
    cfg = make(**kw)
    params = init(jax.random.key(0), cfg)
    exact = _flat(jax.grad(ref_total)(params, cfg))
    S = 3000
    est = _samples(net, cfg, params, S, 11)
    se = est.std(0) / np.sqrt(S)
    # 5 standard errors per coordinate (fixed seed), plus float32 rounding: coordinates whose
    # parts hold one active unit are exact, and there two float32 forward codes (the library's
    # NHWC and this NCHW reference, through layer norms) differ by ~1e-5 of the gradient's scale
    assert np.all(np.abs(est.mean(0) - exact) < 5 * se + 1e-4 * np.max(np.abs(exact)))


def test_joint_site_perturbation_is_unbiased_too():
    cfg = _conv(num_groups=2)
    params = fwdgrad.convnet_init(jax.random.key(0), cfg)
    exact = _flat(jax.grad(_ref_conv_total)(params, cfg))
    S = 3000
    est = _samples("conv", cfg, params, S, 12, num_tangents=2, separate_sites=False)
    se = est.std(0) / np.sqrt(S)
    assert np.all(np.abs(est.mean(0) - exact) < 5 * se + 1e-4 * np.max(np.abs(exact)))


def test_global_loss_fg_a_unbiased_against_end_to_end_backprop():
    """block_loss=False: one loss at the end, every site perturbed (Ren et al.'s FG-A row)."""
    cfg = _mixer(num_groups=2, block_loss=False)
    params = fwdgrad.mixer_init(jax.random.key(0), cfg)

    def final_loss(p):
        return fwdgrad.mixer_local_losses(p, X, Y, cfg)[0]

    exact = _flat(jax.grad(final_loss)(params))
    # every site feeds the one loss, so these estimates are noisier than the local ones
    S = 8000
    est = _samples("mixer", cfg, params, S, 13)
    se = est.std(0) / np.sqrt(S)
    assert np.all(np.abs(est.mean(0) - exact) < 5 * se + 1e-4 * np.max(np.abs(exact)))
    # the first block's head is in no loss: zero, not noise
    _, one = fwdgrad.mixer_grads(jax.random.key(0), params, X, Y, cfg)
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(one["blocks"][0]["head"]))


# --------------------------------------------------------------------------- LG-FG-W


@pytest.mark.parametrize("net", ["mixer", "conv"])
def test_weight_perturbation_gives_each_block_its_own_directional_derivative(net):
    """perturb="weight" (Ren et al.'s LG-FG-W): block i's body gets ``(g_i . v_i) v_i`` with
    g_i the exact local gradient (the reference network's jax.grad) and v_i the tangent of
    the body's leaves drawn from ``fold_in(fold_in(key, i), 0)`` (fwdgrad.sample_tangents of
    the block without its head): nothing of another block's loss or tangent enters it, nor
    the head's. The head reads constant features and gets its exact gradient, as in Ren et
    al.'s code."""
    make, init, grads_fn, ref_total = NETS[net]
    cfg = make(num_groups=2)  # patch and group losses on: weight mode uses the whole loss
    params = init(jax.random.key(0), cfg)
    exact = jax.grad(ref_total)(params, cfg)
    key = jax.random.key(5)
    losses, est = jax.jit(lambda k, p: grads_fn(k, p, X, Y, cfg, perturb="weight"))(key, params)
    plain = fwdgrad.mixer_local_losses if net == "mixer" else fwdgrad.convnet_local_losses
    np.testing.assert_allclose(losses, plain(params, X, Y, cfg), rtol=1e-5)  # the blocks' own CE
    for i in sorted(params["blocks"]):
        body = {k: x for k, x in params["blocks"][i].items() if k != "head"}
        v = fwdgrad.sample_tangents(jax.random.fold_in(jax.random.fold_in(key, i), 0), body)
        g_body = {k: x for k, x in exact["blocks"][i].items() if k != "head"}
        g_v = [g * t for g, t in zip(jax.tree.leaves(g_body), jax.tree.leaves(v))]
        d = sum(jnp.sum(x) for x in g_v)
        want = _flat(jax.tree.map(lambda t, d=d: d * t, v))
        got = _flat({k: x for k, x in est["blocks"][i].items() if k != "head"})
        # d is a sum of n = sum(x.size) signed terms: float32 rounds it (and the gradients in
        # it, which jax.grad and the jvp reach by different conv and reduction orders) to
        # within n eps sum|g_j v_j|, the worst case of a float32 sum; the conv block's
        # reference was 35 eps of that magnitude sum from a float64 one on an AVX-512 Xeon.
        # Another block's derivative entering d would move it by O(|d|), far past this.
        n = sum(x.size for x in g_v)
        tol_d = n * np.finfo(np.float32).eps * float(sum(jnp.sum(jnp.abs(x)) for x in g_v))
        assert tol_d < 1e-2 * abs(float(d)), "the bound must stay far below a block's own d"
        np.testing.assert_allclose(got, want, rtol=0, atol=tol_d * np.max(np.abs(_flat(v))))
        head = _flat(exact["blocks"][i]["head"])
        np.testing.assert_allclose(
            _flat(est["blocks"][i]["head"]), head, rtol=1e-4, atol=1e-5 * np.max(np.abs(head))
        )


def test_weight_perturbation_finds_a_custom_blocks_head_from_its_sites():
    """For a block of the user's own, the parameters that reach no site (read off its jaxpr)
    get the exact gradient with the body held constant, whatever they are called; the body
    gets ``(g . v) v`` over its own leaves; a parameter in no loss gets zero."""
    x = jax.random.normal(jax.random.key(1), (6, 5))
    labels = jnp.arange(6) % 3
    params = {
        "a_body": jax.random.normal(jax.random.key(2), (5, 4)),
        "b_readout": jax.random.normal(jax.random.key(3), (4, 3)),
        "c_unused": jnp.ones((2,)),
        "d_bias": jnp.zeros((4,)),
    }

    def loss_of(p, h):
        z = h @ p["a_body"] + p["d_bias"]
        return z, optax.softmax_cross_entropy_with_integer_labels(
            jax.nn.relu(z) @ p["b_readout"], labels
        )

    def block(p, h, site):
        z, _ = loss_of(p, h)
        out = site(z, jax.nn.relu)
        ce = optax.softmax_cross_entropy_with_integer_labels(out @ p["b_readout"], labels)
        return out, ce[:, None, None]

    key = jax.random.key(7)
    _, (est,), _ = fwdgrad.local_fwd_grad([block], perturb="weight")(key, [params], x)
    exact = jax.grad(lambda p: jnp.mean(loss_of(p, x)[1]))(params)
    np.testing.assert_allclose(est["b_readout"], exact["b_readout"], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(est["c_unused"], 0.0)
    body = {"a_body": params["a_body"], "d_bias": params["d_bias"]}
    v = fwdgrad.sample_tangents(jax.random.fold_in(jax.random.fold_in(key, 0), 0), body)
    d = sum(jnp.sum(exact[k] * v[k]) for k in body)
    for k in body:
        np.testing.assert_allclose(est[k], d * v[k], rtol=1e-5, atol=1e-6)

    def readout_only(p, h, site):  # no parameter reaches the site: all exact, no tangent
        out = site(h, jax.nn.relu)
        ce = optax.softmax_cross_entropy_with_integer_labels(out[:, :3] * p, labels)
        return out, ce[:, None, None]

    scale = jnp.float32(0.7)
    _, (g,), _ = fwdgrad.local_fwd_grad([readout_only], perturb="weight")(key, [scale], x)
    want = jax.grad(
        lambda s: jnp.mean(
            optax.softmax_cross_entropy_with_integer_labels(jax.nn.relu(x)[:, :3] * s, labels)
        )
    )(scale)
    np.testing.assert_allclose(g, want, rtol=1e-5)


def test_weight_perturbation_unbiased_and_beats_the_summed_jvp():
    """Averaged over keys the LG-FG-W estimate is the local gradient; one weight-perturbed jvp
    of the summed local losses (what ren2023_mnist.py ran before) is unbiased too, but every
    block's estimate carries the other blocks' derivatives: its error is larger."""
    cfg = _mixer(num_groups=2, num_blocks=3)
    params = fwdgrad.mixer_init(jax.random.key(0), cfg)
    exact = _flat(jax.grad(_ref_mixer_total)(params, cfg))
    S = 2000
    est = _samples("mixer", cfg, params, S, 21, perturb="weight")
    se = est.std(0) / np.sqrt(S)
    assert np.all(np.abs(est.mean(0) - exact) < 5 * se + 1e-4 * np.max(np.abs(exact)))

    summed = fwdgrad.fwd_grad(lambda p: jnp.sum(fwdgrad.mixer_local_losses(p, X, Y, cfg)))
    keys = jax.random.split(jax.random.key(22), S)
    old = np.asarray(
        jax.jit(lambda ks: lax.map(lambda k: _flat_jnp(summed(k, params)), ks, batch_size=50))(
            keys
        ),
        np.float64,
    )
    err_new = np.mean(np.sum((est - exact) ** 2, axis=1))
    err_old = np.mean(np.sum((old - exact) ** 2, axis=1))
    assert err_new < 0.8 * err_old, (err_new, err_old)


def _flat_jnp(tree):
    return jnp.concatenate([x.ravel() for x in jax.tree.leaves(tree)])


def test_weight_perturbation_refuses_split_losses_and_unknown_names():
    def block(p, h, site):
        out = site(h * p)
        return out, jnp.zeros((h.shape[0], 2, 1)) + jnp.sum(out)

    with pytest.raises(ValueError, match=r"whole loss, shape \(B, 1, 1\)"):
        fwdgrad.local_fwd_grad([block], perturb="weight")(
            jax.random.key(0), [jnp.ones(())], jnp.ones((4, 3))
        )
    with pytest.raises(ValueError, match="perturb='weights' is not known"):
        fwdgrad.local_fwd_grad([block], perturb="weights")
    with pytest.raises(ValueError, match="perturb='node' is not known"):
        fwdgrad.local_forward_gradient(_mixer(), perturb="node")


# --------------------------------------------------------------------------- variance


def test_site_variance_matches_rademacher_theory():
    """A block whose parameter is added to the site, so its estimate is the site's estimate."""
    T, F, G = 4, 8, 2
    z0 = jax.random.normal(jax.random.key(5), (B, T, F))
    head = {
        "kernel": jax.random.normal(jax.random.key(6), (F, CLASSES)),
        "bias": jnp.zeros((CLASSES,)),
    }

    def block(p, h, site):
        out = site(h + p["shift"], jax.nn.relu)
        return out, fwdgrad.local_head_losses(out, head, Y, num_groups=G)

    def mean_ce(shift):
        out = jax.nn.relu(z0 + shift)
        return _ce(_head(out, head, G, True))

    shift = {"shift": jnp.zeros((B, T, F))}
    exact = np.asarray(jax.grad(mean_ce)(shift["shift"]), np.float64)
    g = fwdgrad.local_fwd_grad([block])
    keys = jax.random.split(jax.random.key(7), 4000)
    est = np.asarray(
        jax.jit(lambda ks: lax.map(lambda k: g(k, [shift], z0)[1][0]["shift"], ks, batch_size=50))(
            keys
        ),
        np.float64,
    )
    emp = np.mean(np.sum((est - exact) ** 2, axis=(1, 2, 3)))
    active = np.asarray(z0) > 0
    parts = lambda a: a.reshape(B, T, G, F // G)
    theory = np.sum((parts(active).sum(-1) - 1).clip(0) * (parts(exact) ** 2).sum(-1))
    assert abs(emp / theory - 1) < 0.1, (emp, theory)


# --------------------------------------------------------------------------- modules, transform, errors


@pytest.mark.parametrize(
    "cls, make, apply, grads",
    [
        (fwdgrad.LocalMixer, _mixer, fwdgrad.mixer_apply, fwdgrad.mixer_grads),
        (fwdgrad.LocalConvNet, _conv, fwdgrad.convnet_apply, fwdgrad.convnet_grads),
    ],
)
def test_nnx_module_matches_function_api(cls, make, apply, grads):
    cfg = make(num_groups=2)
    model = cls(cfg, rngs=nnx.Rngs(0))
    params = nnx.to_pure_dict(nnx.split(model, nnx.Param)[1])
    np.testing.assert_allclose(np.asarray(model(X)), np.asarray(apply(params, X, cfg)), rtol=1e-6)
    losses, g = jax.jit(lambda k: grads(k, params, X, Y, cfg))(jax.random.key(0))
    assert losses.shape == (2,) and jax.tree.structure(g) == jax.tree.structure(params)


def test_local_mlp_lives_in_fwdgrad_nnx():
    assert fwdgrad.LocalMLP is fwdgrad.nnx.LocalMLP


def test_transform_update_is_the_estimate_and_training_lowers_the_loss():
    cfg = _conv(num_groups=2, channels=(8, 8))  # a layer norm over groups of 2 units binarises
    params = fwdgrad.convnet_init(jax.random.key(0), cfg)
    tx = optax.chain(fwdgrad.local_forward_gradient(cfg, seed=3), optax.sgd(0.5))
    state = tx.init(params)
    est_tx, _ = fwdgrad.local_forward_gradient(cfg, seed=3).update(
        None, tx.init(params)[0], params, batch=(X, Y)
    )
    _, est = fwdgrad.convnet_grads(jax.random.fold_in(jax.random.key(3), 0), params, X, Y, cfg)
    np.testing.assert_array_equal(_flat(est_tx), _flat(est))

    @jax.jit
    def step(params, state):
        updates, state = tx.update(None, state, params, batch=(X, Y))
        return optax.apply_updates(params, updates), state

    before = float(jnp.sum(fwdgrad.convnet_local_losses(params, X, Y, cfg)))
    for _ in range(60):
        params, state = step(params, state)
    after = float(jnp.sum(fwdgrad.convnet_local_losses(params, X, Y, cfg)))
    # One noisy trajectory: after 30 steps it sat at 1.70 under the suite's XLA flags and at
    # 2.48 (a spike) under others, so the check waits for 60 steps, where seeds 3, 4, 5 under
    # both flag sets gave 0.99-1.63 from 2.45 (the floor 0.8 x 2.45 = 1.96).
    assert after < 0.8 * before, (before, after)


@pytest.mark.parametrize(
    "make, kw, match",
    [
        (_mixer, dict(num_groups=3), "num_groups=3 does not divide"),
        (_mixer, dict(patch_size=3), "patch_size=3 does not divide"),
        (_mixer, dict(hidden=12, num_groups=8), "does not divide hidden=12"),
        (_conv, dict(num_groups=3), "num_groups=3 does not divide"),
        (_conv, dict(channels=(4, 4, 4, 4, 4)), "pools"),
        (_conv, dict(kernel_size=2), "odd"),
    ],
)
def test_bad_configuration_refused_at_construction(make, kw, match):
    with pytest.raises(ValueError, match=match):
        make(**kw)


def test_block_losses_of_wrong_shape_refused():
    def block(p, h, site):
        return site(h * p), jnp.zeros((h.shape[0],))

    with pytest.raises(ValueError, match=r"losses of shape \(B, P, G\)"):
        fwdgrad.local_fwd_grad([block])(jax.random.key(0), [jnp.ones(())], jnp.ones((4, 3)))


def test_bfloat16_mixer_keeps_dtypes_and_jits_once():
    cfg = _mixer(num_groups=2)
    params = fwdgrad.mixer_init(jax.random.key(0), cfg, jnp.bfloat16)
    traces = []

    @jax.jit
    def f(k):
        traces.append(1)
        return fwdgrad.mixer_grads(k, params, X, Y, cfg, num_tangents=2)

    for s in range(3):
        losses, grads = f(jax.random.key(s))
    assert len(traces) == 1 and losses.dtype == jnp.float32
    for g, p in zip(jax.tree.leaves(grads), jax.tree.leaves(params)):
        assert g.dtype == jnp.bfloat16 and g.shape == p.shape
        assert np.all(np.isfinite(np.asarray(g, np.float32)))


def test_working_memory_flat_in_depth():
    """Each block's estimate finishes before the next block starts, so XLA's compiled working
    memory does not grow with depth the way backprop's does (it stores every activation)."""
    import dataclasses

    x = jax.random.normal(jax.random.key(1), (32, 256))
    y = jnp.zeros((32,), jnp.int32)

    def temp(f, p):
        return jax.jit(f).lower(p).compile().memory_analysis().temp_size_in_bytes

    fg, bp = {}, {}
    for depth in (2, 5):
        cfg = fwdgrad.ConvNetConfig(
            image_shape=(16, 16, 1), channels=(16,) * depth, pool=False, num_groups=4
        )
        glob = dataclasses.replace(cfg, block_loss=False, patch_loss=False, group_loss=False)
        p = fwdgrad.convnet_init(jax.random.key(0), cfg)
        fg[depth] = temp(lambda p: fwdgrad.convnet_grads(jax.random.key(0), p, x, y, cfg)[1], p)
        bp[depth] = temp(
            lambda p: jax.grad(lambda q: fwdgrad.convnet_local_losses(q, x, y, glob)[0])(p), p
        )
    # measured (test XLA flags): forward gradient 6.1 -> 6.7 MiB, backprop 4.6 -> 9.3 MiB
    assert fg[5] - fg[2] < 0.2 * (bp[5] - bp[2]), (fg, bp)
    assert fg[5] < 0.8 * bp[5], (fg, bp)
