"""Activity-perturbed forward gradients for any network of blocks with local losses.

Ren, Kornblith, Liao, Hinton, "Scaling Forward Gradient With Local Losses"
(ICLR 2023), secs. 3-4: instead of guessing a direction in weight space, every
block perturbs its pre-activations ("sites") with its own random tangent ``u``,
one jvp gives the directional derivatives ``d = grad_z l . u`` of the block's
local losses, and

    g_hat(z) = d u                                  (FG-A, Ren et al., sec. 3)

estimates the local loss's gradient at the site. A block's local loss is split
into many losses, each of which depends on a small part of the site (Ren et al.,
sec. 4), so each part gets its own directional derivative and the variance
falls with the part's size:

* per example (always): example b's loss depends only on example b's activations;
* per patch (``patch_loss``): the loss of patch p is the block's loss with every
  other patch held constant;
* per group (``group_loss``): the loss of channel group g likewise.

``losses[b, p, g]`` is therefore example b's loss as a function of patch p and
group g only: the same value everywhere, a different directional derivative in
each entry. A site entry adds up the derivatives of every loss entry it feeds
(``per_patch`` / ``per_group`` say whether the block after the site keeps
patches / groups apart); the sum over the entries of a loss's gradient is the
full gradient, so the estimate is unbiased for the gradient of
``mean_b l_b``, and exact when every (patch, group) part of a site holds one
unit. Tangents on units whose activation has zero slope (ReLU off) are dropped:
their gradient is exactly zero, so the estimate stays unbiased and the
variance falls (Ren et al., sec. 3).

The parameters follow from the estimated site gradients by the chain rule of
the one layer that produced each site, with that layer's input held constant
(``jax.vjp`` of that layer only: nothing propagates from one site to another,
nor between blocks, whose inputs are constants). A block's head reads constant
features, so it gets its exact local gradient, as in Ren et al.'s code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from fwdgrad import _estimators, _tangents, _transforms

__all__ = [
    "local_fwd_grad",
    "local_head_losses",
    "local_forward_gradient",
    "head_logits",
    "chain_blocks",
    "config_blocks",
    "network_grads",
    "net_logits",
    "net_grads",
    "NetworkConfig",
    "block_list",
    "identity_site",
    "chain_logits",
    "mean_losses",
]

Block = Callable[..., tuple[jax.Array, jax.Array]]


class _Site(NamedTuple):
    shape: tuple[int, ...]
    dtype: Any
    per_patch: bool
    per_group: bool


def _identity(z):
    return z


def _slope_nonzero(activation, z):
    """``activation'(z) != 0`` (elementwise activation), from a jvp at the primal ``z``."""
    z = lax.stop_gradient(z)
    return jax.jvp(activation, (z,), (jnp.ones_like(z),))[1] != 0


def _check_losses(losses: Any, batch: int) -> jax.Array:
    if not hasattr(losses, "shape") or len(losses.shape) != 3 or losses.shape[0] != batch:
        raise ValueError(
            "a block must return losses of shape (B, P, G): example, patch, group "
            f"(P = G = 1 without patch- or group-wise losses); got "
            f"{getattr(losses, 'shape', type(losses).__name__)} for a batch of {batch}"
        )
    return losses


def _discover(block, p, h):
    """The sites a block marks, in order (shapes, dtypes, flags), by an abstract trace."""
    sites: list[_Site] = []

    def record(z, activation=None, *, per_patch=True, per_group=True):
        sites.append(_Site(tuple(z.shape), z.dtype, bool(per_patch), bool(per_group)))
        return (activation or _identity)(z)

    _, losses = jax.eval_shape(lambda p, h: block(p, h, record), p, h)
    _check_losses(losses, h.shape[0])
    return sites


def _directional(block, p, h, u, mask_tangents):
    """Losses ``(B, P, G)``, their K directional derivatives ``(K, B, P, G)``, output, masks."""

    def perturbed(eps):
        it, masks = iter(eps), []

        def site(z, activation=None, *, per_patch=True, per_group=True):
            del per_patch, per_group
            act = activation or _identity
            z = z + next(it)  # zero in the primal: the jvp's tangent enters here
            masks.append(_slope_nonzero(act, z) if mask_tangents else None)
            return act(z)

        out, losses = block(p, h, site)
        return losses.astype(jnp.float32), (out, masks)

    zeros = [jnp.zeros(x.shape[1:], x.dtype) for x in u]

    def one(uk):
        return jax.jvp(perturbed, (zeros,), (uk,), has_aux=True)

    return jax.vmap(one, out_axes=(None, 0, None))(u)


def _site_estimate(dl: jax.Array, u: jax.Array, mask, site: _Site) -> jax.Array:
    """Estimate of ``d mean_b l_b / d z`` at one site from the loss entries' derivatives.

    ``dl``: ``(K, B, P, G)``; ``u``: ``(K, *site.shape)``. Entry ``(b, t, f)`` of the
    site (position t, feature f) gets ``sum_k sum_{p, g it feeds} dl[k, b, p, g] u[k, b, t, f]``.
    """
    K, B, P, G = dl.shape
    positions, features = math.prod(site.shape[1:-1]), site.shape[-1]
    d = dl if site.per_group else jnp.sum(dl, axis=3, keepdims=True)
    d = d if site.per_patch else jnp.sum(d, axis=2, keepdims=True)
    if d.shape[2] not in (1, positions):
        raise ValueError(
            f"a per-patch site of shape {site.shape} has {positions} positions but the "
            f"block's losses have {P} patches; give the losses one patch per position, "
            "P = 1, or mark the site per_patch=False"
        )
    if features % d.shape[3]:
        raise ValueError(
            f"a per-group site of shape {site.shape} has {features} features, not "
            f"divisible into the losses' {G} groups; mark it per_group=False"
        )
    v = u.astype(jnp.float32)
    if mask is not None:
        v = v * mask.astype(jnp.float32)
    v = v.reshape(K, B, positions, d.shape[3], features // d.shape[3])
    est = (
        jnp.einsum("kbpg,kbpgf->bpgf", d, v)
        if d.shape[2] == positions
        else jnp.einsum("kbg,kbpgf->bpgf", d[:, :, 0], v)
    )
    # d(mean_b l_b)/dz_b = grad l_b / B: the 1/B of the batch mean, applied here once.
    return (est / jnp.float32(K * B)).reshape(site.shape)


def _param_grads(block, p, h, estimates):
    """Each layer's parameters from its own site's estimate; heads by their exact local gradient."""

    def surrogate(p):
        it, acc = iter(estimates), []

        def site(z, activation=None, *, per_patch=True, per_group=True):
            del per_patch, per_group
            acc.append(jnp.sum(z.astype(jnp.float32) * next(it)))
            # constant downstream: a layer's parameters see only their own site's estimate
            return (activation or _identity)(lax.stop_gradient(z))

        _, losses = block(p, h, site)
        return jnp.mean(losses.astype(jnp.float32)) + sum(acc)

    return jax.grad(surrogate)(p)


def _block_estimate(block, p, h, key, K, tangent, mask_tangents, separate_sites):
    sites = _discover(block, p, h)
    S = len(sites)
    u = [
        jax.vmap(
            lambda k, j=j, s=s: _tangents.sample_leaf(
                jax.random.fold_in(jax.random.fold_in(key, j), k), s.shape, s.dtype, tangent
            )
        )(jnp.arange(K, dtype=jnp.uint32))
        for j, s in enumerate(sites)
    ]
    # tied to this block's input (an exact no-op for finite h), so that XLA draws them here
    # rather than hoisting every block's draws to the start, all alive at once
    u = [_after(uj, h) for uj in u]
    if separate_sites and S > 1:
        # batch entry (j, k) perturbs site j alone: each site gets its own K derivatives
        batched = [
            jnp.zeros((S, *uj.shape), uj.dtype).at[j].set(uj).reshape(S * K, *uj.shape[1:])
            for j, uj in enumerate(u)
        ]
        losses, dl, (out, masks) = _directional(block, p, h, batched, mask_tangents)
        dl = dl.reshape(S, K, *dl.shape[1:])
    else:
        losses, dl, (out, masks) = _directional(block, p, h, u, mask_tangents)
        dl = jnp.broadcast_to(dl, (S, *dl.shape))
    estimates = [
        _site_estimate(dl[j], uj, m, s) for j, (uj, m, s) in enumerate(zip(u, masks, sites))
    ]
    grads = _param_grads(block, p, h, estimates)
    grads = jax.tree.map(lambda g, x: g.astype(jnp.result_type(x)), grads, p)
    return jnp.mean(losses), grads, out


def _after(h: jax.Array, grads: Any) -> jax.Array:
    """``h``, made to depend on ``grads``: the next block starts after this one's estimates.

    Left alone, XLA's CPU scheduler runs the chain of block forwards first and
    every block's estimate afterwards, keeping every block's activations alive:
    memory would grow with depth like backprop's. ``0 * sum`` keeps the data
    dependence (XLA may not fold ``x * 0``: NaN/inf) for one read of the grads.
    """
    total = sum(jnp.sum(g, dtype=jnp.float32) for g in jax.tree.leaves(grads))
    return h + (total * jnp.zeros((), jnp.float32)).astype(h.dtype)


def local_fwd_grad(
    blocks: Sequence[Block],
    *,
    num_tangents: int = 1,
    tangent: str = "rademacher",
    mask_tangents: bool = True,
    separate_sites: bool = True,
) -> Callable:
    """Activity-perturbed local-loss forward gradients of a network of blocks (Ren et al., 2023).

    The one entry point for every local-loss network here (``LocalMixer``,
    ``LocalConvNet``, or your own). A block is
    ``block(params, h, site) -> (out, losses)``:

    * ``h``: the block's input, a constant (stop-gradient between blocks);
    * ``site(z, activation=None, *, per_patch=True, per_group=True)``: marks the
      pre-activation ``z`` (shape ``(B, ..., F)``: batch, positions, features)
      as a perturbation site and returns ``activation(z)`` (``activation`` must be
      elementwise; it may close over constants, e.g. a residual input). Flags:
      the computation after the site keeps patches / channel groups apart, so
      the site's position ``t`` / feature group ``g`` feeds only loss entries
      ``[:, t, :]`` / ``[:, :, g]``;
    * ``out``: the block's output, the next block's input;
    * ``losses``: ``(B, P, G)`` float, example b's loss as a function of patch p
      and group g only (:func:`local_head_losses` builds them).

    Args:
      blocks: the blocks, in order.
      num_tangents: K tangents per site, averaged.
      tangent: ``"rademacher"`` or ``"gaussian"``.
      mask_tangents: drop tangents where ``activation'(z) == 0``.
      separate_sites: each site of a block gets its own K directional
        derivatives (one jvp per site and tangent, batched), so no site's
        estimate carries the others' noise and one unit per (patch, group) part
        gives the exact local gradient. ``False``: one jvp per tangent perturbs
        every site of the block at once (Ren et al.'s code; cheaper by the
        number of sites, unbiased, noisier).

    Returns:
      ``g(key, params, x) -> (losses, grads, out)``: the blocks' float32 mean
      local losses ``(num_blocks,)``, unbiased estimates of each block's local
      loss gradient with ``params``'s structure and dtypes (``params`` a
      sequence, one entry per block), and the last block's output. Block i draws
      its tangents from ``fold_in(key, i)``.
    """
    blocks = tuple(blocks)
    if not blocks or not all(callable(b) for b in blocks):
        raise TypeError(
            "blocks must be a non-empty sequence of callables "
            "block(params, h, site) -> (out, losses)"
        )
    K = _estimators.check_num_tangents(num_tangents)
    _tangents.check_tangent(tangent)
    for name, flag in (("mask_tangents", mask_tangents), ("separate_sites", separate_sites)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name}={flag!r} must be a bool")

    def grad_fn(key, params, x):
        key = _estimators.as_key(key)
        if not isinstance(params, (list, tuple)) or len(params) != len(blocks):
            raise ValueError(
                f"params must be a list or tuple with one entry per block "
                f"({len(blocks)}); got {type(params).__name__}"
            )
        h, losses, grads = x, [], []
        for i, (block, p) in enumerate(zip(blocks, params)):
            loss, g, h = _block_estimate(
                block,
                p,
                lax.stop_gradient(h),
                jax.random.fold_in(key, i),
                K,
                tangent,
                mask_tangents,
                separate_sites,
            )
            h = _after(h, g)
            losses.append(loss)
            grads.append(g)
        return jnp.stack(losses), type(params)(grads), h

    return grad_fn


def chain_blocks(
    body: Callable, num_blocks: int, head_losses: Callable, *, block_loss: bool
) -> list:
    """Blocks for :func:`local_fwd_grad` from a network's block body and head.

    ``body(i, p, h, site) -> out`` runs block i; ``head_losses(p, out) ->
    (B, P, G)``. With ``block_loss`` one estimator block per network block;
    without, one block running the whole network (its parameters the list of
    every block's), the earlier blocks' sites feeding every patch and group of
    the last head, since the later blocks mix them.
    """

    def block(i):
        def run(p, h, site):
            out = body(i, p, h, site)
            return out, head_losses(p, out)

        return run

    if block_loss:
        return [block(i) for i in range(num_blocks)]

    def whole(ps, h, site):
        def mixed(z, activation=None, **_):
            return site(z, activation, per_patch=False, per_group=False)

        for i, p in enumerate(ps):
            h = body(i, p, h, site if i == len(ps) - 1 else mixed)
        return h, head_losses(ps[-1], h)

    return [whole]


def config_blocks(config: Any, labels: jax.Array) -> list:
    """:func:`chain_blocks` of a network config (``MixerConfig``, ``ConvNetConfig``).

    ``config`` supplies ``body(i, p, h, site)``, ``num_blocks``, ``num_groups``,
    ``normalize`` and the three loss switches; every head gives :func:`local_head_losses`.
    """

    def head_losses(p, out):
        return local_head_losses(
            out,
            p["head"],
            labels,
            num_groups=config.num_groups,
            patch_loss=config.patch_loss,
            group_loss=config.group_loss,
            normalize=config.normalize,
        )

    return chain_blocks(config.body, config.num_blocks, head_losses, block_loss=config.block_loss)


def network_grads(
    key: jax.Array,
    params: Any,
    seq: list,
    x: jax.Array,
    blocks: list,
    *,
    block_loss: bool,
    **kwargs,
) -> tuple[jax.Array, Any]:
    """:func:`local_fwd_grad` of :func:`chain_blocks` with the gradients in ``params``'s layout.

    ``params = {"blocks": {i: ...} or [...], ...}``; ``seq`` its blocks in order.
    """
    losses, grads, _ = local_fwd_grad(blocks, **kwargs)(key, seq if block_loss else [seq], x)
    grads = grads if block_loss else grads[0]
    original = params["blocks"]
    rebuilt = (
        {k: g for k, g in zip(sorted(original), grads)}
        if isinstance(original, dict)
        else type(original)(grads)
    )
    return losses, {**params, "blocks": rebuilt}


def _group_norm(x: jax.Array, num_groups: int) -> jax.Array:
    """Parameter-free layer norm within each channel group, float32 ``(B, T, G, C/G)``."""
    x = x.astype(jnp.float32).reshape(x.shape[0], -1, num_groups, x.shape[-1] // num_groups)
    mu = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.var(x, axis=-1, keepdims=True)
    return (x - mu) * lax.rsqrt(var + jnp.float32(1e-5))


def _head_input(x: jax.Array, num_groups: int, normalize: bool) -> jax.Array:
    if normalize:
        return _group_norm(x, num_groups)
    return x.astype(jnp.float32).reshape(x.shape[0], -1, num_groups, x.shape[-1] // num_groups)


def head_logits(x: jax.Array, head: Any, num_groups: int, normalize: bool = True) -> jax.Array:
    """A local head: layer norm per channel group, mean over positions, linear (float32 logits).

    Ren et al. (2023), sec. 4 and their code: the head reads the block output
    normalised within each group (so a group's tangent stays in its group),
    average-pooled over patches. ``x``: ``(B, ..., C)``; kernel ``(C, classes)``.
    ``normalize=False`` leaves the norm out (a norm over one unit is zero).
    """
    feats = jnp.mean(_head_input(x, num_groups, normalize), axis=1).reshape(x.shape[0], -1)
    return feats @ head["kernel"].astype(jnp.float32) + head["bias"].astype(jnp.float32)


def local_head_losses(
    x: jax.Array,
    head: Any,
    labels: jax.Array,
    *,
    num_groups: int = 1,
    patch_loss: bool = True,
    group_loss: bool = True,
    normalize: bool = True,
) -> jax.Array:
    """Per-example, per-patch, per-group cross-entropy losses of a local head, ``(B, P, G)``.

    Entry ``[b, p, g]`` has the value of example b's loss ``CE(head(x_b), y_b)``
    (:func:`head_logits`) and, as a function of ``x``, depends on patch p's
    group-g features only (Ren et al., 2023, sec. 4, their fused operator): its
    tangent is ``(softmax - onehot) . W_g^T dx_{p,g} / T`` after the group norm,
    with the error ``softmax - onehot`` and the head held constant. P is the
    number of positions T of ``x`` with ``patch_loss`` (else 1), G is
    ``num_groups`` with ``group_loss`` (else 1). Use with :func:`local_fwd_grad`;
    ``jax.grad`` of their mean is *not* the block loss's gradient (use the plain
    cross entropy of :func:`head_logits` for that).
    """
    labels = jnp.asarray(labels)
    xn = _head_input(x, num_groups, normalize)  # (B, T, G, C/G)
    const = lax.stop_gradient(xn)
    logits = jnp.mean(const, axis=1).reshape(x.shape[0], -1) @ head["kernel"].astype(
        jnp.float32
    ) + head["bias"].astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    err = jax.nn.softmax(logits) - jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    # the error at the head's input, per group: (B, G, C/G), a constant
    back = lax.stop_gradient(err @ head["kernel"].astype(jnp.float32).T).reshape(
        x.shape[0], num_groups, -1
    )
    live = xn - const  # zero, with x's tangent
    if not patch_loss:
        live = jnp.mean(live, axis=1, keepdims=True)
    else:
        live = live / jnp.float32(xn.shape[1])
    own = jnp.einsum("btgc,bgc->btg", live, back)
    if not group_loss:
        own = jnp.sum(own, axis=2, keepdims=True)
    return ce[:, None, None] + own


def block_list(params: Any, num_blocks: int, model: str) -> list:
    """``params["blocks"]`` (a dict keyed by block index, or a sequence) as a list in order."""
    try:
        blocks = params["blocks"]
    except (TypeError, KeyError):
        raise ValueError(
            f"{model} params must be {{'blocks': {{i: ...}}}} as given by its init "
            f"function or nnx.split(fwdgrad.{model}(...), nnx.Param)"
        ) from None
    seq = [blocks[k] for k in sorted(blocks)] if isinstance(blocks, dict) else list(blocks)
    if len(seq) != num_blocks:
        raise ValueError(f"{model} params have {len(seq)} blocks, the config {num_blocks}")
    return seq


def identity_site(z, activation=None, **_):
    """A ``site`` that perturbs nothing: the plain forward pass of a block."""
    return activation(z) if activation is not None else z


def chain_logits(
    body: Callable, seq: list, h: jax.Array, *, num_groups: int, normalize: bool, block_loss: bool
) -> list[jax.Array]:
    """Every block's head logits, a stop-gradient before every block under ``block_loss``."""
    out = []
    for i, p in enumerate(seq):
        if block_loss:
            h = lax.stop_gradient(h)
        h = body(i, p, h, identity_site)
        out.append(head_logits(h, p["head"], num_groups, normalize))
    return out


def mean_losses(logits: list[jax.Array], labels: jax.Array, block_loss: bool) -> jax.Array:
    """Mean cross entropy of every head, or of the last only without ``block_loss``."""
    logits = logits if block_loss else logits[-1:]
    return jnp.stack(
        [jnp.mean(optax.softmax_cross_entropy_with_integer_labels(l, labels)) for l in logits]
    )


def net_logits(config: Any, params: Any, x: jax.Array) -> list[jax.Array]:
    """Every head's logits of a network config (``config.inputs``, ``config.body``)."""
    seq = block_list(params, config.num_blocks, config.model_name)
    return chain_logits(
        config.body,
        seq,
        config.inputs(x, seq),
        num_groups=config.num_groups,
        normalize=config.normalize,
        block_loss=config.block_loss,
    )


def net_grads(
    config: Any, key: jax.Array, params: Any, x: jax.Array, labels: jax.Array, **kwargs
) -> tuple[jax.Array, Any]:
    """:func:`network_grads` of a network config's :func:`config_blocks`."""
    seq = block_list(params, config.num_blocks, config.model_name)
    return network_grads(
        key,
        params,
        seq,
        config.inputs(x, seq),
        config_blocks(config, labels),
        block_loss=config.block_loss,
        **kwargs,
    )


class NetworkConfig:
    """What :func:`net_logits` and :func:`net_grads` need of a network config (a mixin).

    Subclasses set ``model_name``, ``first_layer`` (the first block's layer whose
    kernel dtype the input takes), ``images(x)`` (the first block's input from
    raw images) and ``body(i, p, h, site)`` (block i's output), and have the
    fields ``num_blocks``, ``num_groups``, ``normalize`` and the loss switches.
    """

    model_name: str
    first_layer: str

    def inputs(self, x: jax.Array, seq: list) -> jax.Array:
        """The first block's input from images ``x``, in the parameters' dtype."""
        return self.images(x).astype(seq[0][self.first_layer]["kernel"].dtype)

    def local_grads(self, key, params, x, labels, **kwargs):
        """:func:`net_grads` of this configuration (for :func:`local_forward_gradient`)."""
        return net_grads(self, key, params, x, labels, **kwargs)


def local_forward_gradient(
    model: Any,
    *,
    num_tangents: int = 1,
    tangent: str = "rademacher",
    seed: int = 0,
    mask_tangents: bool = True,
    separate_sites: bool = True,
) -> optax.GradientTransformationExtraArgs:
    """:func:`local_fwd_grad` of a local-loss model as an optax estimator transform.

    ``model``: a config with ``local_grads(key, params, x, labels, *, num_tangents,
    tangent, mask_tangents, separate_sites) -> (losses, grads)`` (``fwdgrad.MixerConfig``,
    ``fwdgrad.ConvNetConfig``). ``update(updates, state, params, *, batch)``
    ignores ``updates`` and returns the estimate for ``batch = (x, labels)``.
    State and non-finite policy as :func:`fwdgrad.forward_gradient`.
    """
    if not callable(getattr(model, "local_grads", None)):
        raise TypeError(
            f"model={model!r} has no local_grads method; pass a fwdgrad.MixerConfig "
            "or fwdgrad.ConvNetConfig"
        )
    K = _estimators.check_num_tangents(num_tangents)
    _tangents.check_tangent(tangent)
    _transforms.check_seed(seed)

    def update_fn(updates, state, params=None, *, batch=None, **extra_args):
        del updates, extra_args
        if params is None or not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise ValueError(
                "local_forward_gradient needs params and the keyword extra arg "
                "batch=(x, labels): tx.update(None, state, params, batch=(x, y))"
            )
        losses, grads = model.local_grads(
            _transforms._step_key(state),
            params,
            *batch,
            num_tangents=K,
            tangent=tangent,
            mask_tangents=mask_tangents,
            separate_sites=separate_sites,
        )
        return _transforms._advance(state, grads, losses)

    return optax.GradientTransformationExtraArgs(_transforms._init_state(seed), update_fn)
