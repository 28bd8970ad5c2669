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
from jax.extend.core import Literal

from fwdgrad import _estimators, _tangents, _transforms

__all__ = ["local_fwd_grad", "local_forward_gradient"]

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


def identity_site(z, activation=None, **_):
    """A ``site`` that perturbs nothing: the plain forward pass of a block."""
    return (activation or _identity)(z)


def _site_leaves(block, leaves, treedef, h) -> list[bool]:
    """For each of a block's parameter leaves, whether some site's pre-activation depends on it.

    Read off the block's jaxpr: a forward dependence walk from the leaves to the
    sites' ``z``. Any equation passes every input's dependence to every output, so
    a leaf may be counted as reaching a site when it does not (then it is perturbed
    rather than given its exact gradient: still unbiased), never the other way.
    """

    def site_values(*xs):
        zs: list[jax.Array] = []

        def record(z, activation=None, **_):
            zs.append(z)
            return (activation or _identity)(z)

        block(jax.tree.unflatten(treedef, list(xs)), h, record)
        return zs

    jaxpr = jax.make_jaxpr(site_values)(*leaves).jaxpr
    deps: dict[Any, frozenset[int]] = {v: frozenset((i,)) for i, v in enumerate(jaxpr.invars)}

    def of(v) -> frozenset[int]:
        return frozenset() if isinstance(v, Literal) else deps.get(v, frozenset())

    for eqn in jaxpr.eqns:
        d = frozenset().union(*(of(v) for v in eqn.invars))
        for v in eqn.outvars:
            deps[v] = d
    reached = frozenset().union(*(of(v) for v in jaxpr.outvars))
    return [i in reached for i in range(len(leaves))]


def _block_weight_estimate(block, p, h, key, K, tangent):
    """Weight perturbation of one block's own local loss (Ren et al. 2023, LG-FG-W).

    The parameters that reach one of the block's sites (its body) get their own tangents
    and the directional derivative of this block's loss alone, so no block's estimate
    carries another block's noise (a single weight-perturbed jvp of the summed local losses
    would give every block the sum of all blocks' derivatives). The parameters after every
    site (the head) read constant features: they get their exact local gradient, as in
    Ren et al.'s code (``update_forward_grad_weights`` perturbs the main layers only and
    differentiates the classifiers exactly) and as the activity estimator does. The loss
    must be the block's whole loss, ``(B, 1, 1)``: the patch- and group-wise split of the
    activity estimator holds the head constant in every part, so no sum or mean of the parts
    has the whole loss's gradient in both the head and the body.

    Body leaf ``i`` (counted over the body leaves only, in ``jax.tree.leaves`` order) draws
    its tangents from ``fold_in(key, i)``, as :func:`fwdgrad.fwd_grad` would for the body alone.
    """
    leaves, treedef = jax.tree.flatten(p)
    body = _site_leaves(block, leaves, treedef, h)

    def with_part(part: list, in_body: bool) -> Any:
        """``p`` with its body (or head) leaves replaced by ``part``, in order."""
        it = iter(part)
        return jax.tree.unflatten(
            treedef, [next(it) if b == in_body else x for x, b in zip(leaves, body)]
        )

    def objective(q):
        out, losses = block(q, h, identity_site)
        losses = _check_losses(losses, h.shape[0])
        if losses.shape[1:] != (1, 1):
            raise ValueError(
                f"perturb='weight' needs each block's whole loss, shape (B, 1, 1); got "
                f"{losses.shape}. Build the blocks without patch- or group-wise losses "
                "(patch_loss=False, group_loss=False); the network functions do this for you"
            )
        loss = jnp.mean(losses.astype(jnp.float32))
        return loss, (loss, out)

    estimator = _estimators.value_and_fwd_grad(
        lambda part: objective(with_part(part, True)),
        num_tangents=K,
        tangent=tangent,
        has_aux=True,
    )
    if any(body):
        (_, (loss, out)), g_body = estimator(key, [x for x, b in zip(leaves, body) if b])
    else:  # nothing reaches a site: every parameter is a head's, and exact
        _, (loss, out) = objective(p)
        g_body = []
    g_head = jax.grad(lambda part: objective(with_part(part, False))[0])(
        [x for x, b in zip(leaves, body) if not b]
    )
    gb, gh = iter(g_body), iter(g_head)
    grads = jax.tree.unflatten(treedef, [next(gb) if b else next(gh) for b in body])
    return loss, jax.tree.map(lambda g, x: g.astype(jnp.result_type(x)), grads, p), out


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
    perturb: str = "activity",
) -> Callable:
    """Local-loss forward gradients of a network of blocks (Ren et al., 2023).

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
      tangent: ``"rademacher"`` or ``"gaussian"``; ``"rank1"`` too with ``perturb="weight"``.
      mask_tangents: drop tangents where ``activation'(z) == 0``.
      separate_sites: each site of a block gets its own K directional
        derivatives (one jvp per site and tangent, batched), so no site's
        estimate carries the others' noise and one unit per (patch, group) part
        gives the exact local gradient. ``False``: one jvp per tangent perturbs
        every site of the block at once (Ren et al.'s code; cheaper by the
        number of sites, unbiased, noisier).
      perturb: ``"activity"`` (default; LG-FG-A, Ren et al. sec. 3 and the above) or
        ``"weight"`` (LG-FG-W): every block perturbs its own parameters and takes the
        directional derivative of its own local loss (Baydin et al. 2022, eq. 4, per block).
        Only parameters that reach a site are perturbed; the heads get their exact local
        gradient, as under ``"activity"`` and in Ren et al.'s code. ``mask_tangents`` and
        ``separate_sites`` do not apply; each block's losses must be its whole loss,
        ``(B, 1, 1)``, and its tangent is not split further per patch or group.

    Returns:
      ``g(key, params, x) -> (losses, grads, out)``: the blocks' float32 mean
      local losses ``(num_blocks,)``, unbiased estimates of each block's local
      loss gradient with ``params``'s structure and dtypes (``params`` a
      sequence, one entry per block), and the last block's output. Block i draws
      its tangents from ``fold_in(key, i)``.
    """
    perturb = check_perturb(perturb)
    blocks, K = _check_local_fwd_grad(
        blocks, num_tangents, tangent, mask_tangents, separate_sites, perturb
    )

    def grad_fn(key, params, x):
        key = _estimators.as_key(key)
        if not isinstance(params, (list, tuple)) or len(params) != len(blocks):
            raise ValueError(
                f"params must be a list or tuple with one entry per block "
                f"({len(blocks)}); got {type(params).__name__}"
            )
        h, losses, grads = x, [], []
        for i, (block, p) in enumerate(zip(blocks, params)):
            h, bkey = lax.stop_gradient(h), jax.random.fold_in(key, i)
            if perturb == "weight":
                loss, g, h = _block_weight_estimate(block, p, h, bkey, K, tangent)
            else:
                loss, g, h = _block_estimate(
                    block, p, h, bkey, K, tangent, mask_tangents, separate_sites
                )
            h = _after(h, g)
            losses.append(loss)
            grads.append(g)
        return jnp.stack(losses), type(params)(grads), h

    return grad_fn


#: What a local-loss estimator perturbs: pre-activations (LG-FG-A) or each block's weights
#: (LG-FG-W), Ren et al. (2023), Table 3's rows.
PERTURBS = ("activity", "weight")


def check_perturb(perturb: Any) -> str:
    """Validate a ``perturb`` name (raises ``ValueError`` naming the valid ones)."""
    if not isinstance(perturb, str) or perturb not in PERTURBS:
        raise ValueError(f"perturb={perturb!r} is not known; use one of {PERTURBS}")
    return perturb


def _check_local_fwd_grad(
    blocks, num_tangents, tangent, mask_tangents, separate_sites, perturb
) -> tuple[tuple[Block, ...], int]:
    """Validate :func:`local_fwd_grad`'s arguments; return the blocks as a tuple and K."""
    blocks = tuple(blocks)
    if not blocks or not all(callable(b) for b in blocks):
        raise TypeError(
            "blocks must be a non-empty sequence of callables "
            "block(params, h, site) -> (out, losses)"
        )
    K = _estimators.check_num_tangents(num_tangents)
    _tangents.check_tangent(tangent, weight=perturb == "weight")
    for name, flag in (("mask_tangents", mask_tangents), ("separate_sites", separate_sites)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name}={flag!r} must be a bool")
    return blocks, K


def local_forward_gradient(
    model: Any,
    *,
    num_tangents: int = 1,
    tangent: str = "rademacher",
    seed: int = 0,
    mask_tangents: bool = True,
    separate_sites: bool = True,
    perturb: str = "activity",
) -> optax.GradientTransformationExtraArgs:
    """:func:`local_fwd_grad` of a local-loss model as an optax estimator transform.

    ``model``: a config with ``local_grads(key, params, x, labels, *, num_tangents,
    tangent, mask_tangents, separate_sites, perturb) -> (losses, grads)`` (``fwdgrad.MixerConfig``,
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
    perturb = check_perturb(perturb)
    _tangents.check_tangent(tangent, weight=perturb == "weight")
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
            perturb=perturb,
        )
        return _transforms._advance(state, grads, losses)

    return optax.GradientTransformationExtraArgs(_transforms._init_state(seed), update_fn)
