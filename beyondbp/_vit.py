"""A small Vision Transformer (Dosovitskiy et al., ICLR 2021) for 28x28 images, flax nnx.

Non-overlapping ``patch x patch`` patches are flattened and embedded by one dense layer (the
same GEMM as the paper's strided convolution), a learned position embedding is added, and
``depth`` pre-norm encoder blocks follow (Xiong et al. 2020: ``x + attn(LN(x))``, then
``x + mlp(LN(x))``, GELU MLP). Tokens are averaged before the final norm and classifier (global
average pooling instead of a class token, as in Beyer et al. 2022, "Better plain ViT baselines
for ImageNet-1k"). With patch 4 a 28x28 image is 49 tokens.

Every weight GEMM is an ``nnx.Linear``, so ``lowbit.apply_rules`` can quantize each one: the
patch embedding (``embed``), the fused query/key/value projection and the output projection
of each attention (``blocks/<i>/attn/qkv``, ``blocks/<i>/attn/out``), the two MLP layers
(``blocks/<i>/mlp1``, ``blocks/<i>/mlp2``) and the classifier (``head``). The two products of
attention itself (``Q K^T`` and ``softmax V``) multiply activations by activations and stay in
float32, as in NVIDIA's NVFP4 recipe (2025, section 4), which quantizes the linear layers only;
so do the layer norms and the softmax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["ViT", "Attention", "EncoderBlock"]


class Attention(nnx.Module):
    """Multi-head self-attention with a fused QKV projection (Vaswani et al. 2017, eq. 1)."""

    def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs):
        self.heads = heads
        self.qkv = nnx.Linear(width, 3 * width, rngs=rngs)
        self.out = nnx.Linear(width, width, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, w = x.shape
        d = w // self.heads
        q, k, v = jnp.split(self.qkv(x).reshape(b, t, 3, self.heads, d), 3, axis=2)
        q, k, v = (a[:, :, 0] for a in (q, k, v))  # (b, t, heads, d)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * (d**-0.5)
        p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(x.dtype)
        y = jnp.einsum("bhqk,bkhd->bqhd", p, v).reshape(b, t, w)
        return self.out(y)


class EncoderBlock(nnx.Module):
    """Pre-norm transformer block: ``x + attn(LN(x))``, then ``x + mlp2(gelu(mlp1(LN(x))))``."""

    def __init__(self, width: int, heads: int, mlp_dim: int, *, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(width, rngs=rngs)
        self.attn = Attention(width, heads, rngs=rngs)
        self.norm2 = nnx.LayerNorm(width, rngs=rngs)
        self.mlp1 = nnx.Linear(width, mlp_dim, rngs=rngs)
        self.mlp2 = nnx.Linear(mlp_dim, width, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp2(jax.nn.gelu(self.mlp1(self.norm2(x))))


class ViT(nnx.Module):
    """Vision Transformer for ``(batch, H, W[, C])`` images with ``H`` and ``W`` divisible by ``patch``.

    Args:
      num_classes: outputs of the classifier.
      image_size: ``(H, W)`` of the inputs (28x28 by default), fixes the number of tokens.
      in_channels: channels of the input images.
      patch: side of the square patches (4: 49 tokens for 28x28).
      depth: number of encoder blocks (4).
      width: token width (128).
      heads: attention heads (4; must divide ``width``).
      mlp_dim: hidden width of each block's MLP (default ``2 * width``).
      rngs: ``nnx.Rngs`` for initialisation.
    """

    def __init__(
        self,
        num_classes: int = 10,
        *,
        image_size: tuple[int, int] = (28, 28),
        in_channels: int = 1,
        patch: int = 4,
        depth: int = 4,
        width: int = 128,
        heads: int = 4,
        mlp_dim: int | None = None,
        rngs: nnx.Rngs,
    ):
        for name, v in (("patch", patch), ("depth", depth), ("width", width), ("heads", heads)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}={v!r}: need a positive integer")
        if width % heads:
            raise ValueError(f"heads={heads} must divide width={width}")
        h, w = (int(s) for s in image_size)
        if h % patch or w % patch:
            raise ValueError(
                f"patch={patch} must divide the image size {(h, w)}; e.g. patch 4 or 7 for 28x28"
            )
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes={num_classes!r}: need an integer >= 2")
        mlp_dim = 2 * width if mlp_dim is None else mlp_dim
        self.patch, self.in_channels, self.image_size = patch, in_channels, (h, w)
        tokens = (h // patch) * (w // patch)
        self.embed = nnx.Linear(patch * patch * in_channels, width, rngs=rngs)
        self.position = nnx.Param(
            nnx.initializers.normal(0.02)(rngs.params(), (tokens, width), jnp.float32)
        )
        self.blocks = nnx.List(
            [EncoderBlock(width, heads, mlp_dim, rngs=rngs) for _ in range(depth)]
        )
        self.norm = nnx.LayerNorm(width, rngs=rngs)
        self.head = nnx.Linear(width, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim == 3 and self.in_channels == 1:
            x = x[..., None]
        if x.ndim != 4 or x.shape[1:] != (*self.image_size, self.in_channels):
            raise ValueError(
                f"ViT expects images (batch, {self.image_size[0]}, {self.image_size[1]}, "
                f"{self.in_channels}), got shape {x.shape}"
            )
        b, h, w, c = x.shape
        p = self.patch
        x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        x = self.embed(x.reshape(b, (h // p) * (w // p), p * p * c))
        x = x + self.position[...].astype(x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x.mean(axis=1)))
