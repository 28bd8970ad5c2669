"""Activity perturbation with local losses (Ren, Kornblith, Liao, Hinton, ICLR 2023).

Weight perturbation (:func:`fwdgrad.fwd_grad`) guesses a direction in the space
of all n weights, so its variance grows with n. Ren et al. perturb the
*activations* instead: for a dense block ``z = x W + b`` each example's
pre-activation ``z_b`` (fan-out m entries) gets its own tangent ``u_b``, the
jvp gives the per-example directional derivative ``(grad_{z_b} l_b) . u_b`` and

    g_hat(z_b) = ((grad_{z_b} l_b) . u_b) u_b          (Ren et al., sec. 3, "FG-A")

estimates ``grad_{z_b} l_b`` with variance ``(m - 1)|grad|^2`` (Rademacher), not
``(n - 1)|grad|^2``. The weight gradient follows exactly from the local chain
rule of the block itself: ``g_hat(W) = x^T g_hat(z)``, ``g_hat(b) = sum_b g_hat(z_b)``.

Two variance reductions Ren et al. rely on are built in (both keep the estimate
unbiased):

* Masked tangents: a unit whose activation derivative is exactly zero (ReLU with
  ``z <= 0``) has ``grad_{z_j} l = 0``, so perturbing it adds only noise. With
  ``u * m``, ``m_j = [act'(z_j) != 0]``, the estimate ``((g . (u m)) (u m))`` is
  still unbiased for ``g`` and its variance is ``(m_active - 1)|g|^2``
  (Ren et al., sec. 3; for smooth activations ``m`` is all ones almost surely).
* Group-wise local losses (Ren et al., sec. 4, "local losses with groups"): a
  block's m units are split into G contiguous groups and group g's loss is the
  head's loss with the *other* groups' activations held constant. Its gradient
  with respect to ``z_g`` is the g-part of the block's gradient, so each group
  gets its own directional derivative ``(g_g . u_g) u_g``, all G of them from
  one jvp of the vector of G group losses. The variance falls from
  ``(m - 1)|g|^2`` to ``sum_g (m/G - 1)|g_g|^2``; G = m is exact local backprop
  through the linear head, G = 1 is plain FG-A.

Local greedy losses keep the directional derivative short-range: every block
has a small linear head and its own loss, and the block's input is a constant
(stop-gradient) for it, so nothing is propagated between blocks either way
(Ren et al., sec. 4; Belilovsky et al., 2019). The network's prediction is the
last block's head.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from bbcore.activations import ACTIVATIONS, activation_fn
from fwdgrad import _estimators, _tangents, _transforms

__all__ = [
    "ACTIVATIONS",
    "activity_fwd_grad",
    "local_mlp_grads",
    "local_mlp_apply",
    "activity_forward_gradient",
]


def _check_num_groups(num_groups: Any, width: int | None = None) -> int:
    """``num_groups`` must be a Python int >= 1 that divides ``width`` (if given)."""
    if isinstance(num_groups, bool) or not isinstance(num_groups, int):
        raise TypeError(
            f"num_groups={num_groups!r} must be a Python int >= 1 (it fixes the shapes "
            "traced, so it cannot be an array)"
        )
    if num_groups < 1:
        raise ValueError(f"num_groups={num_groups!r}: need at least one group")
    if width is not None and width % num_groups:
        raise ValueError(
            f"num_groups={num_groups} does not divide the block width {width}; the "
            "units are split into equal contiguous groups, so use a divisor of "
            f"{width}"
        )
    return num_groups


def activity_fwd_grad(
    fun: Callable, *, num_tangents: int = 1, tangent: str = "rademacher", num_groups: int = 1
) -> Callable:
    """Per-example activity-perturbed forward gradient (Ren et al., 2023, "FG-A").

    Args:
      fun: ``fun(z, *args) -> losses`` of shape ``(B,)`` (``num_groups=1``) or
        ``(B, G)``, where ``losses[b]`` depends on ``z[b]`` only (no batch
        statistics); ``z`` has shape ``(B, ..., m)``. With G > 1, ``losses[b, g]``
        is group g's loss (Ren et al., sec. 4): its gradient with respect to the
        g-th contiguous slice of z's last axis is taken as the g-part of the
        estimate, the other slices' entries are ignored for it.
      num_tangents: K tangents per example, averaged.
      tangent: ``"rademacher"`` or ``"gaussian"``.
      num_groups: G, must divide m.

    Returns:
      ``g(key, z, *args, tangent_mask=None) -> (loss, grad_z)``: the mean of
      ``losses`` (float32) and an estimate of its per-group gradient with respect
      to ``z`` (``z``'s shape and dtype), ``sum_g ((g_g . u_g) u_g)``; all B x G
      directional derivatives come from one jvp. ``tangent_mask`` (z's shape,
      bool or 0/1) multiplies the tangents: the estimate stays unbiased only if the
      true gradient is zero wherever the mask is zero (e.g. ``act'(z) == 0``).
    """
    K = _estimators.check_num_tangents(num_tangents)
    _tangents.check_tangent(tangent)
    G = _check_num_groups(num_groups)

    def grad_fn(key, z, *args, tangent_mask=None):
        z = jnp.asarray(z)
        if z.ndim < 1 or not jnp.issubdtype(z.dtype, jnp.floating):
            raise TypeError(
                f"z must be a float array with a leading batch axis; got {z.dtype}{z.shape}"
            )
        if G > 1 and z.ndim < 2:
            raise ValueError(f"num_groups={G} needs z of shape (B, ..., m); got {z.shape}")
        if G > 1:
            _check_num_groups(G, z.shape[-1])
        batch = z.shape[0]
        u = jax.vmap(
            lambda k: _tangents.sample_leaf(jax.random.fold_in(key, k), z.shape, z.dtype, tangent)
        )(jnp.arange(K, dtype=jnp.uint32))
        if tangent_mask is not None:
            tangent_mask = jnp.asarray(tangent_mask)
            if tangent_mask.shape != z.shape:
                raise ValueError(f"tangent_mask has shape {tangent_mask.shape}; need z's {z.shape}")
            u = u * tangent_mask.astype(u.dtype)

        def jvp(uk):
            return jax.jvp(lambda zz: fun(zz, *args), (z,), (uk,))

        losses, dl = jax.vmap(jvp, out_axes=(None, 0))(u)
        want = (batch,) if G == 1 else (batch, G)
        if losses.shape != want:
            what = "per-example losses" if G == 1 else f"per-example, per-group losses ({G} groups)"
            raise ValueError(
                f"fun must return {what} of shape {want} for z of shape {z.shape}; "
                f"got {losses.shape}"
            )
        # (K, B, ..., G, m/G): each group's slice is scaled by its own directional derivative.
        dl = dl.astype(jnp.float32).reshape(K, batch, *(1,) * (z.ndim - 2), G, 1)
        ug = u.astype(jnp.float32).reshape(K, *z.shape[:-1], G, z.shape[-1] // G)
        # d(mean loss)/dz_b = grad l_b / B: the 1/B of the mean, applied once here.
        est = (jnp.sum(dl * ug, axis=0) / jnp.float32(K * batch)).reshape(z.shape)
        return jnp.mean(losses.astype(jnp.float32)), est.astype(z.dtype)

    return grad_fn


def _per_example_ce(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def _check_local_params(params: Any) -> tuple[list, list]:
    try:
        layers, heads = params["layers"], params["heads"]
    except (TypeError, KeyError):
        raise ValueError(
            "local MLP params must be a dict {'layers': ..., 'heads': ...} as given by "
            "nnx.split(fwdgrad.LocalMLP(...), nnx.Param) -> to_pure_dict()"
        ) from None
    seq = lambda d: [d[k] for k in sorted(d)] if isinstance(d, dict) else list(d)
    layers, heads = seq(layers), seq(heads)
    if len(layers) != len(heads) or not layers:
        raise ValueError(
            f"local MLP params have {len(layers)} layers and {len(heads)} heads; "
            "need one head per layer (at least one)"
        )
    return layers, heads


def _dense(p, x):
    return x @ p["kernel"] + p["bias"]


def _block_losses(z, head, labels, act, num_groups):
    """Per-example local losses of a block, ``(B,)``, or its G group losses, ``(B, G)``.

    Group g's loss (Ren et al., 2023, sec. 4) is ``CE(head(a), y)`` with the
    activations outside group g held constant: same value as the block loss, but
    its jvp along u is ``grad_{z_g} l . u_g`` only. Because the head is linear the
    G variants share one primal head product: each adds the zero-valued
    ``(a_g - sg(a_g)) W_g`` whose tangent is group g's logit tangent.
    """
    a = act(z)
    if num_groups == 1:
        return _per_example_ce(_dense(head, a), labels)
    batch, width = a.shape
    a_const = jax.lax.stop_gradient(a)
    logits = _dense(head, a_const)
    w = head["kernel"].reshape(num_groups, width // num_groups, -1)
    own = jnp.einsum("bgk,gkc->bgc", (a - a_const).reshape(batch, num_groups, -1), w)
    return _per_example_ce(
        logits[:, None, :] + own, jnp.broadcast_to(labels[:, None], (batch, num_groups))
    )


def _active_mask(act, z):
    """``act'(z) != 0``: where the local gradient is exactly zero, so tangents there only add noise.

    Computed by a jvp, so it is ``z > 0`` for ReLU and (almost surely) all ones
    for smooth activations, whose derivative vanishes only where it underflows.
    """
    return jax.jvp(act, (z,), (jnp.ones_like(z),))[1] != 0


def _normalize(h: jax.Array) -> jax.Array:
    """Parameter-free layer norm of each example (float32 statistics, h's dtype).

    Without it, the inputs of later blocks grow as the noisy updates of earlier
    blocks scale their activations, and the greedy blocks diverge; Ren et al.
    (2023) normalise block inputs for the same reason.
    """
    h32 = h.astype(jnp.float32)
    mu = jnp.mean(h32, axis=-1, keepdims=True)
    var = jnp.var(h32, axis=-1, keepdims=True)
    return ((h32 - mu) * jax.lax.rsqrt(var + jnp.float32(1e-5))).astype(h.dtype)


def _block_input(h: jax.Array, i: int, normalize: bool) -> jax.Array:
    return _normalize(h) if (normalize and i > 0) else h


def local_mlp_apply(
    params: Any, x: jax.Array, *, activation: str | Callable = "relu", normalize: bool = True
) -> jax.Array:
    """Prediction of a local-loss MLP: the last block's head logits, ``(B, classes)``."""
    act = activation_fn(activation)
    layers, heads = _check_local_params(params)
    h = x.reshape(x.shape[0], -1).astype(layers[0]["kernel"].dtype)
    for i, layer in enumerate(layers):
        h = act(_dense(layer, _block_input(h, i, normalize)))
    return _dense(heads[-1], h)


def local_mlp_grads(
    key: jax.Array,
    params: Any,
    x: jax.Array,
    labels: jax.Array,
    *,
    activation: str | Callable = "relu",
    num_tangents: int = 1,
    tangent: str = "rademacher",
    normalize: bool = True,
    num_groups: int = 1,
    mask_tangents: bool = True,
    head_grad: str = "forward",
) -> tuple[jax.Array, Any]:
    """Local losses and activity-perturbed gradient estimates of a local-loss MLP.

    Block i: ``z_i = n(h_{i-1}) W_i + b_i``, ``h_i = act(z_i)``, local loss
    ``CE(head_i(h_i), labels)``; ``h_{i-1}`` is a constant for block i and ``n``
    a parameter-free layer norm for i > 0 (identity with ``normalize=False``). Both the
    block's pre-activation and its head's logits are perturbed per example
    (Ren et al., 2023, sec. 3, FG-A), and the weight estimates follow from
    ``x^T g_hat(z)``.

    Args:
      key: PRNG key; block i uses ``fold_in(key, 2i)`` and ``fold_in(key, 2i + 1)``.
      params: ``{"layers": {i: {"kernel", "bias"}}, "heads": {i: {"kernel", "bias"}}}``
        (``LocalMLP``'s parameters); kernels ``(in, out)``.
      x: inputs ``(B, ...)``, flattened per example. labels: int ``(B,)``.
      num_groups: G group-wise local losses per block (Ren et al., sec. 4): each
        of G contiguous groups of a block's units gets its own directional
        derivative, variance ``sum_g (m/G - 1)|g_g|^2`` instead of
        ``(m - 1)|g|^2``. Must divide every hidden width. G = width is exact
        local backprop through the head (a check, not a forward gradient).
      mask_tangents: multiply block tangents by ``act'(z) != 0`` (ReLU: ``z > 0``);
        unbiased because the gradient is zero there (Ren et al., sec. 3).
      head_grad: ``"forward"`` perturbs each head's logits like the blocks
        (variance ``(classes - 1)|g|^2`` per example); ``"exact"`` gives the head its
        true local gradient ``a^T (softmax - onehot) / B``: the head is one linear
        layer reading a constant, so this needs the loss's derivative at the
        logits only, no backward pass through any layer (our option, not Ren et al.'s
        estimator; the block weights are still forward-gradient estimates).

    Returns:
      ``(losses, grads)``: float32 local losses ``(num_blocks,)`` and unbiased
      estimates of the local losses' gradients (each block's input a constant),
      with the structure and dtypes of ``params``.
    """
    act, layers, heads, G = _check_local_mlp(params, activation, num_groups, head_grad)
    block_grad = activity_fwd_grad(
        lambda z, head, y: _block_losses(z, head, y, act, G),
        num_tangents=num_tangents,
        tangent=tangent,
        num_groups=G,
    )
    head_fg = activity_fwd_grad(
        lambda logits, y: _per_example_ce(logits, y), num_tangents=num_tangents, tangent=tangent
    )
    h = x.reshape(x.shape[0], -1).astype(layers[0]["kernel"].dtype)
    losses, g_layers, g_heads = [], [], []
    for i, (layer, head) in enumerate(zip(layers, heads)):
        h = _block_input(h, i, normalize)
        z = _dense(layer, h)
        mask = _active_mask(act, z) if mask_tangents else None
        loss, gz = block_grad(jax.random.fold_in(key, 2 * i), z, head, labels, tangent_mask=mask)
        a = act(z)
        if head_grad == "exact":
            gl = _ce_logit_grad(_dense(head, a), labels)
        else:
            _, gl = head_fg(jax.random.fold_in(key, 2 * i + 1), _dense(head, a), labels)
        g_layers.append(_dense_grads(layer, h, gz))
        g_heads.append(_dense_grads(head, a, gl))
        losses.append(loss)
        h = jax.lax.stop_gradient(a)
    return jnp.stack(losses), _rebuild(params, g_layers, g_heads)


def _check_local_mlp(params, activation, num_groups, head_grad) -> tuple[Callable, list, list, int]:
    """Validate :func:`local_mlp_grads`'s arguments; the activation, layers, heads and G."""
    act = activation_fn(activation)
    layers, heads = _check_local_params(params)
    G = _check_num_groups(num_groups)
    for layer in layers:
        _check_num_groups(G, layer["kernel"].shape[-1])
    _check_head_grad(head_grad)
    return act, layers, heads, G


def _rebuild(params: Any, g_layers: list, g_heads: list) -> Any:
    """The per-block gradients in ``params``'s layout (dicts keyed by block, or sequences)."""

    def rebuild(original, grads):
        if isinstance(original, dict):
            return {k: g for k, g in zip(sorted(original), grads)}
        return type(original)(grads)

    grads = dict(params)
    grads["layers"] = rebuild(params["layers"], g_layers)
    grads["heads"] = rebuild(params["heads"], g_heads)
    return grads


def _check_head_grad(head_grad: Any) -> str:
    if head_grad not in ("forward", "exact"):
        raise ValueError(f"head_grad={head_grad!r}: use 'forward' (perturbed logits) or 'exact'")
    return head_grad


def _ce_logit_grad(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """d mean_b CE(logits_b, y_b) / d logits = (softmax - onehot) / B, in logits' dtype."""
    p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    return ((p - onehot) / jnp.float32(logits.shape[0])).astype(logits.dtype)


def _dense_grads(p, x, gz):
    """Exact local chain rule of ``z = x W + b`` given the (estimated) ``dL/dz``."""
    x32, g32 = x.astype(jnp.float32), gz.astype(jnp.float32)
    return {
        "kernel": (x32.T @ g32).astype(p["kernel"].dtype),
        "bias": jnp.sum(g32, axis=0).astype(p["bias"].dtype),
    }


def activity_forward_gradient(
    *,
    activation: str | Callable = "relu",
    num_tangents: int = 1,
    tangent: str = "rademacher",
    seed: int = 0,
    normalize: bool = True,
    num_groups: int = 1,
    mask_tangents: bool = True,
    head_grad: str = "forward",
) -> optax.GradientTransformationExtraArgs:
    """Activity-perturbed local-loss forward gradients as an optax estimator transform.

    ``update(updates, state, params, *, batch, **extra)`` ignores ``updates``
    (may be ``None``) and returns :func:`local_mlp_grads` of ``params`` (a
    ``LocalMLP``'s parameters) on ``batch = (x, labels)``. ``loss_fn`` and other
    extra args are ignored: the local losses are defined by the model itself.
    ``activation`` and ``normalize`` must match the ``LocalMLP``'s; ``num_groups``
    (Ren et al., sec. 4), ``mask_tangents`` and ``head_grad`` as in :func:`local_mlp_grads`
    (``num_groups`` must divide every hidden width, checked at ``init``).
    State: :class:`fwdgrad.ForwardGradientState`. Non-finite policy as in
    :func:`fwdgrad.forward_gradient`: a NaN/inf local loss or estimate gives
    a zero update, leaves ``count`` as it was and increments ``nonfinite``.
    """
    activation_fn(activation)
    K = _estimators.check_num_tangents(num_tangents)
    _tangents.check_tangent(tangent)
    _transforms.check_seed(seed)
    G = _check_num_groups(num_groups)
    _check_head_grad(head_grad)

    def init_fn(params):
        layers, _ = _check_local_params(params)
        for layer in layers:
            _check_num_groups(G, layer["kernel"].shape[-1])
        return _transforms.ForwardGradientState(
            count=jnp.zeros((), jnp.int32),
            key=jax.random.key(seed),
            nonfinite=jnp.zeros((), jnp.int32),
        )

    def update_fn(updates, state, params=None, *, batch=None, **extra_args):
        del updates, extra_args
        if params is None:
            raise ValueError(
                "activity_forward_gradient needs params: tx.update(None, state, params, "
                "batch=(x, labels))"
            )
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise ValueError(
                "activity_forward_gradient needs the keyword extra arg batch=(x, labels); "
                f"got {type(batch).__name__}"
            )
        x, labels = batch
        key = jax.random.fold_in(state.key, state.count)
        losses, grads = local_mlp_grads(
            key,
            params,
            x,
            labels,
            activation=activation,
            num_tangents=K,
            tangent=tangent,
            normalize=normalize,
            num_groups=G,
            mask_tangents=mask_tangents,
            head_grad=head_grad,
        )
        return _transforms._advance(state, grads, losses)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
