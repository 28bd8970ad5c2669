"""LocalConvNet: conv blocks with a local head each, for 28x28 inputs, function API.

Block i: ``z = LN(conv(h) + b)`` (a ``kernel_size`` SAME convolution, then a
parameter-free layer norm over channels at every pixel), ``out = relu(z)``, and
a local head reading ``out`` (layer norm per channel group, mean over pixels,
linear: :func:`fwdgrad._heads.head_logits`). The next block reads a 2x2 average
pool of ``out`` (when ``pool``), a constant for it under local losses. The
pre-activation ``z`` is the block's perturbation site for
:func:`fwdgrad.local_fwd_grad` (Ren, Kornblith, Liao, Hinton, ICLR 2023, sec. 3,
activity perturbation; sec. 4, local losses): every pixel is a patch and the
head's groups keep the channel groups apart, so patch- and group-wise losses
apply. ``block_loss``, ``patch_loss`` and ``group_loss`` switch as in
:class:`fwdgrad.MixerConfig`.

Parameters: ``{"blocks": {i: {"conv": {"kernel" (k, k, in, out), "bias" (out,)},
"head": {"kernel" (out, classes), "bias" (classes,)}}}}``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from fwdgrad import _networks
from fwdgrad._mixer import _check_groups, _dense_init, _norm, _relu
from fwdgrad._networks import _check_flags, _positive_int
from fwdgrad._networks import network_apply as convnet_apply
from fwdgrad._networks import network_blocks as convnet_blocks
from fwdgrad._networks import network_local_grads as convnet_grads
from fwdgrad._networks import network_local_logits as convnet_local_logits
from fwdgrad._networks import network_local_losses as convnet_local_losses

__all__ = [
    "ConvNetConfig",
    "convnet_init",
    "convnet_apply",
    "convnet_local_logits",
    "convnet_local_losses",
    "convnet_blocks",
    "convnet_grads",
]


def convnet_init(key: jax.Array, config: ConvNetConfig, dtype: Any = jnp.float32) -> dict:
    """Initial parameters of a LocalConvNet: He-normal kernels, zero biases."""
    c = ConvNetConfig.check(config)
    k, blocks, cin = c.kernel_size, {}, c.image_shape[2]
    for i, cout in enumerate(c.channels):
        kc, kh = jax.random.split(jax.random.fold_in(key, i))
        blocks[i] = {
            "conv": {
                "kernel": _dense_init(kc, k * k * cin, (k, k, cin, cout)).astype(dtype),
                "bias": jnp.zeros((cout,), dtype),
            },
            "head": {
                "kernel": _dense_init(kh, cout, (cout, c.num_classes)).astype(dtype),
                "bias": jnp.zeros((c.num_classes,), dtype),
            },
        }
        cin = cout
    return {"blocks": blocks}


def _images(config: ConvNetConfig, x: jax.Array) -> jax.Array:
    if math.prod(x.shape[1:]) != math.prod(config.image_shape):
        raise ValueError(
            f"LocalConvNet expects images of {config.image_shape}, got input of shape {x.shape}"
        )
    return x.reshape(x.shape[0], *config.image_shape)


def _pool(h: jax.Array) -> jax.Array:
    b, height, width, c = h.shape
    return jnp.mean(h.reshape(b, height // 2, 2, width // 2, 2, c), axis=(2, 4))


def _body(config: ConvNetConfig, i: int, p: Any, h: jax.Array, site) -> jax.Array:
    if i > 0 and config.pool:
        h = _pool(h)
    z = (
        lax.conv_general_dilated(
            h, p["conv"]["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        + p["conv"]["bias"]
    )
    return site(_norm(z) if config.normalize else z, _relu)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConvNetConfig(_networks.NetworkConfig):
    """Shape and local losses of a LocalConvNet. Validated at construction.

    Attributes:
      image_shape: ``(height, width, channels)``; height and width must halve
        evenly before every pooled block.
      channels: output channels of each conv block, e.g. ``(32, 64, 64)``.
      kernel_size: odd side of the square kernels.
      pool: 2x2 average pool between blocks.
      num_classes: outputs of every head.
      num_groups: channel groups; must divide every block's channels.
      normalize: the parameter-free layer norms (off only for checks with one
        unit per group, where a norm over one unit is zero).
      block_loss, patch_loss, group_loss: the local losses (as ``MixerConfig``).
    """

    channels: tuple[int, ...] = (32, 64, 64)
    kernel_size: int = 3
    pool: bool = True

    def __post_init__(self):
        super().__post_init__()
        height, width, _ = self.image_shape
        if not isinstance(self.channels, (tuple, list)) or not self.channels:
            raise ValueError(f"channels={self.channels!r} must be a non-empty tuple of ints")
        object.__setattr__(self, "channels", tuple(self.channels))
        for c in self.channels:
            _positive_int("channels", c)
        _positive_int("kernel_size", self.kernel_size)
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={self.kernel_size} must be odd (SAME padding, centred)")
        _check_flags(self, "pool")
        for i, c in enumerate(self.channels):
            _check_groups(self.num_groups, **{f"channels[{i}]": c})
        if self.pool:
            for i in range(1, len(self.channels)):
                if height % 2 or width % 2:
                    raise ValueError(
                        f"block {i} pools a {height}x{width} map by 2x2; use fewer "
                        "blocks, pool=False, or an image side divisible by "
                        f"{2 ** (len(self.channels) - 1)}"
                    )
                height, width = height // 2, width // 2

    @property
    def num_blocks(self) -> int:
        return len(self.channels)

    model_name = "LocalConvNet"
    first_layer = "conv"
    images = _images
    body = _body
