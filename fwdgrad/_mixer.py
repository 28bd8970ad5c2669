"""LocalMixer (Ren, Kornblith, Liao, Hinton, ICLR 2023, sec. 5 and their Algorithm 2), function API.

An MLP-Mixer built for local learning: the image is cut into patches and
embedded, then every block mixes tokens (across patches, per channel) and
channels (a dense layer, then a grouped linear layer: channel group g of the
hidden units feeds only output group g), with parameter-free layer norms where
Ren et al. put them (on the block input, block 0's switched by ``input_norm``; after every
linear layer before its ReLU, between the channel-mixing layers within each group, and per
group before the head), a residual connection into the last ReLU, and a local head per block
(:func:`fwdgrad._heads.head_logits`). Block 0 has no token mixing: its first
layer embeds the patches.

Pre-activations after each post-linear layer norm are the perturbation sites
of :func:`fwdgrad.local_fwd_grad`. Three switches, independent of each other:

* ``block_loss``: every block has its own loss and reads a constant input
  (local greedy losses); off, the whole network is one block with one loss at
  the end (Ren et al.'s FG-A rows) and the earlier blocks' sites see all of it.
* ``patch_loss``: one loss per patch (Ren et al.'s spatial loss).
* ``group_loss``: one loss per channel group (``num_groups`` groups).

Parameters: ``{"blocks": {i: {"token"?, "channel", "group", "head"}}}``, each
layer ``{"kernel", "bias"}``: token ``(P, P)``, channel ``(in, hidden)``,
group ``(G, hidden/G, channels/G)``, head ``(channels, classes)``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from fwdgrad import _networks
from fwdgrad._networks import _positive_int
from fwdgrad._networks import network_apply as mixer_apply
from fwdgrad._networks import network_blocks as mixer_blocks
from fwdgrad._networks import network_local_grads as mixer_grads
from fwdgrad._networks import network_local_logits as mixer_local_logits
from fwdgrad._networks import network_local_losses as mixer_local_losses

__all__ = [
    "MixerConfig",
    "mixer_init",
    "mixer_apply",
    "mixer_local_logits",
    "mixer_local_losses",
    "mixer_blocks",
    "mixer_grads",
]


def _check_groups(num_groups: int, **widths: int) -> None:
    for name, width in widths.items():
        if width % num_groups:
            raise ValueError(
                f"num_groups={num_groups} does not divide {name}={width}; channel "
                f"groups are equal contiguous slices, so use a divisor of {width}"
            )


def _dense_init(key, fan_in, shape):
    # He-normal: the layers feed ReLUs through parameter-free layer norms.
    return jax.random.normal(key, shape, jnp.float32) * jnp.float32(math.sqrt(2.0 / fan_in))


def _layer(key, fan_in, kernel_shape, bias_shape, dtype):
    return {
        "kernel": _dense_init(key, fan_in, kernel_shape).astype(dtype),
        "bias": jnp.zeros(bias_shape, dtype),
    }


def mixer_init(key: jax.Array, config: MixerConfig, dtype: Any = jnp.float32) -> dict:
    """Initial parameters of a LocalMixer: He-normal kernels, zero biases."""
    c = MixerConfig.check(config)
    G, P = c.num_groups, c.num_patches
    assert c.hidden is not None  # MixerConfig.__post_init__ fills it in
    blocks = {}
    for i in range(c.num_blocks):
        kt, kc, kg, kh = jax.random.split(jax.random.fold_in(key, i), 4)
        fan_in = c.patch_features if i == 0 else c.channels
        b = {
            "channel": _layer(kc, fan_in, (fan_in, c.hidden), (c.hidden,), dtype),
            "group": _layer(
                kg, c.hidden // G, (G, c.hidden // G, c.channels // G), (c.channels,), dtype
            ),
            "head": _layer(kh, c.channels, (c.channels, c.num_classes), (c.num_classes,), dtype),
        }
        if i > 0:
            b = {"token": _layer(kt, P, (P, P), (P,), dtype), **b}
        blocks[i] = b
    return {"blocks": blocks}


def _patches(config: MixerConfig, x: jax.Array) -> jax.Array:
    """``(B, ...)`` images -> ``(B, P, patch_size**2 * channels)`` patch vectors."""
    height, width, chans = config.image_shape
    if math.prod(x.shape[1:]) != height * width * chans:
        raise ValueError(
            f"LocalMixer expects images of {config.image_shape}, got input of shape {x.shape}"
        )
    s = config.patch_size
    x = x.reshape(x.shape[0], height // s, s, width // s, s, chans)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(x.shape[0], config.num_patches, -1)


def _norm(x: jax.Array, num_groups: int = 1) -> jax.Array:
    """Parameter-free layer norm over the last axis, within ``num_groups`` equal slices."""
    x32 = x.astype(jnp.float32).reshape(*x.shape[:-1], num_groups, x.shape[-1] // num_groups)
    mu = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.var(x32, axis=-1, keepdims=True)
    return ((x32 - mu) * lax.rsqrt(var + jnp.float32(1e-5))).reshape(x.shape).astype(x.dtype)


def _no_norm(x: jax.Array, num_groups: int = 1) -> jax.Array:
    del num_groups
    return x


def _linear(p, x):
    return x @ p["kernel"] + p["bias"]


def _group_linear(p, x, num_groups):
    xg = x.reshape(*x.shape[:-1], num_groups, -1)
    y = jnp.einsum("bpgi,gio->bpgo", xg, p["kernel"])
    return y.reshape(*x.shape[:-1], -1) + p["bias"]


def _relu(z):
    return jax.nn.relu(z)


def _body(config: MixerConfig, i: int, p: Any, h: jax.Array, site) -> jax.Array:
    """Block i's output ``(B, P, channels)`` from its input; ``site`` marks the pre-activations."""
    G = config.num_groups
    norm = _norm if config.normalize else _no_norm
    if i == 0:
        # Ren et al.'s begin_ln: a norm of each raw patch. Off (input_norm=False), a patch keeps
        # its contrast: normalised alone, a patch of background noise is scaled up to the size
        # of a stroke (beyondbp.models_local.mixer_config turns it off for that reason).
        a = norm(h) if config.input_norm else h
    else:
        t = norm(h)
        # token mixing: patch q of the output reads every patch of the same channel
        z = jnp.einsum("bpc,pq->bqc", t, p["token"]["kernel"]) + p["token"]["bias"][:, None]
        a = norm(site(norm(z), _relu, per_group=False))
    a = site(norm(_linear(p["channel"], a)), _relu)
    z = norm(_group_linear(p["group"], norm(a, G), G), G)
    if i == 0:
        return site(z, _relu)
    return site(z + h, _relu)  # the residual joins before the last ReLU (a site marks the sum)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MixerConfig(_networks.NetworkConfig):
    """Shape and local losses of a LocalMixer (Ren et al., 2023). Validated at construction.

    Ren et al.'s names read ``size/patches/groups``: ``S/1/1`` is one patch per
    image (a deep MLP) with one group, ``M/1/16`` the wider net with 16 groups.

    Attributes:
      image_shape: ``(height, width, channels)`` of an input image.
      patch_size: side of a square patch; must divide height and width.
      num_blocks: mixer blocks, each with its own head.
      channels: features per patch after every block.
      hidden: hidden units of the channel-mixing layers (default ``channels``).
      num_classes: outputs of every head.
      num_groups: channel groups; must divide ``channels`` and ``hidden``.
      normalize: the parameter-free layer norms (off only for checks with one
        unit per group, where a norm over one unit is zero).
      input_norm: the norm of block 0's input, each raw patch on its own (Ren et al.'s
        ``begin_ln``, on in their ImageNet config; their code's flag defaults to off). On by
        default, as this config has always built it; it applies only with ``normalize``.
      block_loss, patch_loss, group_loss: the local losses (module docstring).
    """

    patch_size: int = 7
    num_blocks: int = 2
    channels: int = 64
    hidden: int | None = None
    input_norm: bool = True

    def __post_init__(self):
        super().__post_init__()
        _networks._check_flags(self, "input_norm")
        height, width, _ = self.image_shape
        for name in ("patch_size", "num_blocks", "channels"):
            _positive_int(name, getattr(self, name))
        if self.hidden is None:
            object.__setattr__(self, "hidden", self.channels)
        _positive_int("hidden", self.hidden)
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"patch_size={self.patch_size} does not divide the {height}x{width} "
                "image; use a common divisor of height and width (28: 1, 2, 4, 7, 14, 28)"
            )
        _check_groups(self.num_groups, channels=self.channels, hidden=self.hidden)

    @property
    def num_patches(self) -> int:
        height, width, _ = self.image_shape
        return (height // self.patch_size) * (width // self.patch_size)

    @property
    def patch_features(self) -> int:
        return self.patch_size * self.patch_size * self.image_shape[2]

    model_name = "LocalMixer"
    first_layer = "channel"
    images = _patches
    body = _body
