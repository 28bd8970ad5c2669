"""CIFAR-style residual network (He et al., CVPR 2016, section 4.2) for small images, flax nnx.

ResNet-``6n+2``: a 3x3 stem convolution, three stages of ``n`` basic blocks (two 3x3
convolutions each) at 16, 32 and 64 channels, the second and third stage starting with stride
2, global average pooling and a dense classifier. He et al.'s CIFAR ResNet-20 has ``n = 3``
(about 0.27M parameters); on 28x28 inputs the feature maps are 28, 14 and 7 pixels wide.

Two choices differ from the paper, for 4-bit training:

* **GroupNorm instead of BatchNorm** (Wu & He, ECCV 2018). BatchNorm keeps running statistics,
  mutable state that the toolkit's pure ``apply(params, x)`` (used by ``fwdgrad``'s
  ``jax.jvp``, ``analog.program`` and the trainer) cannot carry, and it computes something
  different in training (batch statistics) and evaluation (running averages): with 4-bit
  GEMMs the running averages are taken over quantized activations whose statistics drift as
  the per-tensor scales change, which adds a train/eval mismatch on top of the rounding error.
  GroupNorm normalises each example on its own, the same way in training and evaluation,
  keeps the range every 4-bit activation quantizer sees bounded, and is exact under
  ``jax.jvp`` and ``jax.vmap``. Like Sun et al. (NeurIPS 2020), who kept normalisation in
  higher precision, it runs in float32: only the convolutions and the classifier are GEMMs
  that lowbit quantizes.
* **Projection shortcuts** (the paper's option B: a strided 1x1 convolution and a norm) where
  the shape changes, by default. They are the 1x1 convolutions that Sun et al.'s recipe
  keeps in 8 bits (``lowbit.recipes.SUN2020``'s ``pointwise`` rule). ``shortcut="pad"`` gives
  the paper's parameter-free option A (stride-2 subsampling and zero channel padding).

The last norm of each block starts with a zero scale (Goyal et al. 2017, "Accurate, Large
Minibatch SGD", section 5.1), so every block starts as the identity.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["ResNet", "BasicBlock", "SHORTCUTS"]

SHORTCUTS = ("projection", "pad")

_he = nnx.initializers.he_normal()


def _norm(channels: int, groups: int, rngs: nnx.Rngs, *, zero: bool = False) -> nnx.GroupNorm:
    if channels % groups:
        raise ValueError(
            f"groups={groups}: GroupNorm needs it to divide every stage's channel count "
            f"({channels} does not divide); use e.g. 8 for widths (16, 32, 64)"
        )
    init = nnx.initializers.zeros_init() if zero else nnx.initializers.ones_init()
    return nnx.GroupNorm(channels, num_groups=groups, scale_init=init, rngs=rngs)


class BasicBlock(nnx.Module):
    """``relu(norm2(conv2(relu(norm1(conv1(x))))) + shortcut(x))`` (He et al. 2016, Fig. 2)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        *,
        groups: int,
        shortcut: str,
        rngs: nnx.Rngs,
    ):
        conv = lambda i, o, k, s: nnx.Conv(
            i, o, (k, k), strides=s, padding="SAME", use_bias=False, kernel_init=_he, rngs=rngs
        )
        self.conv1 = conv(in_channels, out_channels, 3, stride)
        self.norm1 = _norm(out_channels, groups, rngs)
        self.conv2 = conv(out_channels, out_channels, 3, 1)
        self.norm2 = _norm(out_channels, groups, rngs, zero=True)
        changes = stride != 1 or in_channels != out_channels
        self.stride, self.pad = stride, out_channels - in_channels
        self.project = changes and shortcut == "projection"
        self.shortcut = conv(in_channels, out_channels, 1, stride) if self.project else None
        self.norm_shortcut = _norm(out_channels, groups, rngs) if self.project else None

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.relu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        if self.shortcut is not None and self.norm_shortcut is not None:
            s = self.norm_shortcut(self.shortcut(x))
        else:
            # option A: subsample with the block's stride, pad the new channels with zeros
            s = x[:, :: self.stride, :: self.stride, :]
            s = jnp.pad(s, ((0, 0), (0, 0), (0, 0), (0, self.pad)))
        return jax.nn.relu(h + s)


class ResNet(nnx.Module):
    """ResNet-``depth`` for ``(batch, H, W[, C])`` images (He et al. 2016, CIFAR variant).

    Args:
      depth: ``6n + 2`` (20, 32, 44, 56, 110); 20 by default.
      num_classes: outputs of the classifier.
      in_channels: channels of the input images (1 for MNIST-like data, 3 for CIFAR).
      widths: channels of the three stages (16, 32, 64 in the paper).
      groups: GroupNorm groups (must divide every width).
      shortcut: ``"projection"`` (1x1 convolution where the shape changes) or ``"pad"``.
      rngs: ``nnx.Rngs`` for initialisation.

    Layer paths (for ``lowbit.Rule`` patterns): ``stem``, ``blocks/<i>/conv1``,
    ``blocks/<i>/conv2``, ``blocks/<i>/shortcut`` (projection blocks), ``head``.
    """

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        *,
        in_channels: int = 1,
        widths: Sequence[int] = (16, 32, 64),
        groups: int = 8,
        shortcut: str = "projection",
        rngs: nnx.Rngs,
    ):
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(
                f"depth={depth!r}: a CIFAR ResNet has depth 6n+2 with n >= 1 (8, 14, 20, 32, ...)"
            )
        widths = tuple(widths)
        if len(widths) != 3 or any(not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"widths={widths!r}: need three positive channel counts")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes={num_classes!r}: need an integer >= 2")
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels={in_channels!r}: need a positive integer")
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut={shortcut!r}: use one of {SHORTCUTS}")
        if shortcut == "pad" and any(b < a for a, b in itertools.pairwise(widths)):
            raise ValueError("shortcut='pad' needs non-decreasing widths (it pads channels)")
        self.in_channels, self.depth = in_channels, depth
        self.stem = nnx.Conv(
            in_channels, widths[0], (3, 3), padding="SAME", use_bias=False, kernel_init=_he,
            rngs=rngs,
        )  # fmt: skip
        self.stem_norm = _norm(widths[0], groups, rngs)
        n = (depth - 2) // 6
        blocks, cin = [], widths[0]
        for stage, w in enumerate(widths):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(
                    BasicBlock(cin, w, stride, groups=groups, shortcut=shortcut, rngs=rngs)
                )
                cin = w
        self.blocks = nnx.List(blocks)
        self.head = nnx.Linear(widths[-1], num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim == 3 and self.in_channels == 1:
            x = x[..., None]
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(
                f"ResNet expects images (batch, H, W, {self.in_channels}), got shape {x.shape}"
            )
        h = jax.nn.relu(self.stem_norm(self.stem(x)))
        for block in self.blocks:
            h = block(h)
        return self.head(h.mean(axis=(1, 2)))
