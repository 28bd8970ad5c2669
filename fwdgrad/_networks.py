"""Networks of blocks with a local head each, from a config: what LocalMixer and LocalConvNet share.

A config (``MixerConfig``, ``ConvNetConfig``: a :class:`NetworkConfig`) supplies its blocks'
body ``body(i, p, h, site)`` and the loss switches; this module chains the blocks for
:func:`fwdgrad.local_fwd_grad` (:func:`chain_blocks`), runs them forward for every head's
logits (:func:`chain_logits`), and holds the function API both networks export
(``mixer_apply`` / ``convnet_apply`` and their kin are the functions here). Ren, Kornblith,
Liao, Hinton (ICLR 2023), secs. 3-4.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import jax
import jax.numpy as jnp
import optax
from jax import lax

from fwdgrad._heads import head_logits, local_head_losses
from fwdgrad._local import identity_site, local_fwd_grad

__all__ = [
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
    "check_network_config",
    "network_local_logits",
    "network_apply",
    "network_local_losses",
    "network_blocks",
    "network_local_grads",
]


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
    if kwargs.get("perturb") == "weight":
        # weight perturbation differentiates each block's whole loss (local_fwd_grad)
        config = dataclasses.replace(config, patch_loss=False, group_loss=False)
    return network_grads(
        key,
        params,
        seq,
        config.inputs(x, seq),
        config_blocks(config, labels),
        block_loss=config.block_loss,
        **kwargs,
    )


_C = TypeVar("_C", bound="NetworkConfig")


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive int")
    return value


def _check_image_shape(image_shape: Any) -> tuple[int, int, int]:
    shape = tuple(image_shape) if isinstance(image_shape, (tuple, list)) else ()
    if len(shape) != 3 or any(
        isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape
    ):
        raise ValueError(
            f"image_shape={image_shape!r} must be (height, width, channels), e.g. (28, 28, 1)"
        )
    return shape


def _check_flags(obj: Any, *names: str) -> None:
    for name in names:
        if not isinstance(getattr(obj, name), bool):
            raise TypeError(f"{name}={getattr(obj, name)!r} must be a bool")


@dataclasses.dataclass(frozen=True, kw_only=True)
class NetworkConfig:
    """The fields every local-loss network config has, and what :func:`net_logits` and
    :func:`net_grads` need of one (``MixerConfig`` and ``ConvNetConfig`` extend it).

    Subclasses set ``model_name``, ``first_layer`` (the first block's layer whose
    kernel dtype the input takes), ``images(x)`` (the first block's input from
    raw images) and ``body(i, p, h, site)`` (block i's output), have ``num_blocks``,
    and check their own fields after this class's ``__post_init__``.

    Attributes:
      image_shape: ``(height, width, channels)`` of an input image.
      num_classes: outputs of every head.
      num_groups: channel groups (each network says what they must divide).
      block_loss, patch_loss, group_loss: the local losses (``MixerConfig``'s module docstring).
      normalize: the parameter-free layer norms (off only for checks with one
        unit per group, where a norm over one unit is zero).
    """

    model_name: ClassVar[str]
    first_layer: ClassVar[str]

    image_shape: tuple[int, int, int] = (28, 28, 1)
    num_classes: int = 10
    num_groups: int = 1
    block_loss: bool = True
    patch_loss: bool = True
    group_loss: bool = True
    normalize: bool = True

    def __post_init__(self):
        object.__setattr__(self, "image_shape", _check_image_shape(self.image_shape))
        for name in ("num_classes", "num_groups"):
            _positive_int(name, getattr(self, name))
        _check_flags(self, "normalize", "block_loss", "patch_loss", "group_loss")

    @classmethod
    def check(cls: type[_C], config: Any) -> _C:
        """``config`` itself if it is a ``cls``; a TypeError naming ``cls`` otherwise."""
        if not isinstance(config, cls):
            raise TypeError(f"config={config!r} is not a fwdgrad.{cls.__name__}")
        return config

    def images(self, x: jax.Array) -> jax.Array:
        """The first block's input from raw images ``x``; each network defines its own."""
        raise NotImplementedError(f"{type(self).__name__} must define images(x)")

    def inputs(self, x: jax.Array, seq: list) -> jax.Array:
        """The first block's input from images ``x``, in the parameters' dtype."""
        return self.images(x).astype(seq[0][self.first_layer]["kernel"].dtype)

    def local_grads(self, key, params, x, labels, **kwargs):
        """:func:`net_grads` of this configuration (for :func:`local_forward_gradient`)."""
        return net_grads(self, key, params, x, labels, **kwargs)


# The function API of every local-loss network: ``fwdgrad.mixer_apply`` and
# ``fwdgrad.convnet_apply`` (and their kin) are these functions under the network's name.


def check_network_config(config: Any) -> NetworkConfig:
    """Accept a local-loss network config (``fwdgrad.MixerConfig``, ``fwdgrad.ConvNetConfig``)."""
    if not isinstance(config, NetworkConfig):
        raise TypeError(
            f"config={config!r} is not a local-loss network config; pass a "
            "fwdgrad.MixerConfig or a fwdgrad.ConvNetConfig"
        )
    return config


def network_local_logits(params: Any, x: jax.Array, config: NetworkConfig) -> list[jax.Array]:
    """Every block's head logits (float32), with a stop-gradient between blocks when ``block_loss``."""
    return net_logits(check_network_config(config), params, x)


def network_apply(params: Any, x: jax.Array, config: NetworkConfig) -> jax.Array:
    """Prediction of a local-loss network: the last block's head logits, ``(B, classes)`` float32."""
    return network_local_logits(params, x, config)[-1]


def network_local_losses(
    params: Any, x: jax.Array, labels: jax.Array, config: NetworkConfig
) -> jax.Array:
    """Mean cross entropy of every head ``(num_blocks,)``; their sum is the local objective.

    With ``block_loss`` each block's loss sees only its own block (stop-gradient
    between blocks), so ``jax.grad`` of the sum is local backprop ("LG-BP"). Ren et al.'s
    LG-FG-W is ``network_local_grads(..., perturb="weight")``, not :func:`fwdgrad.fwd_grad`
    of the sum: that gives every block the sum of all blocks' directional derivatives, so
    each block's estimate carries every other block's noise. Without, only the
    last head's loss is returned (shape ``(1,)``): the global objective.
    """
    logits = network_local_logits(params, x, config)
    return mean_losses(logits, labels, config.block_loss)


def network_blocks(config: NetworkConfig, labels: jax.Array) -> list:
    """The blocks of :func:`fwdgrad.local_fwd_grad` for this network and these labels.

    With ``block_loss`` one per network block; without, one that runs the whole
    network (:func:`config_blocks`).
    """
    return config_blocks(check_network_config(config), labels)


def network_local_grads(
    key: jax.Array,
    params: Any,
    x: jax.Array,
    labels: jax.Array,
    config: NetworkConfig,
    *,
    num_tangents: int = 1,
    tangent: str = "rademacher",
    mask_tangents: bool = True,
    separate_sites: bool = True,
    perturb: str = "activity",
) -> tuple[jax.Array, Any]:
    """Local losses and forward-gradient estimates of a local-loss network.

    :func:`fwdgrad.local_fwd_grad` over :func:`network_blocks`: with ``block_loss``,
    ``perturb="activity"`` is Ren et al.'s LG-FG-A and ``"weight"`` their LG-FG-W; without,
    FG-A and FG-W. Returns the float32 local losses and estimates with ``params``'s
    structure and dtypes.
    """
    return net_grads(
        check_network_config(config),
        key,
        params,
        x,
        labels,
        num_tangents=num_tangents,
        tangent=tangent,
        mask_tangents=mask_tangents,
        separate_sites=separate_sites,
        perturb=perturb,
    )
