"""The local-loss image networks of the ``fwdgrad-mixer`` / ``fwdgrad-conv`` rows, by fixed rules,
and the same networks for end-to-end training (``beyondbp compare --model mixer|conv``).

Ren, Kornblith, Liao, Hinton, "Scaling Forward Gradient With Local Losses" (ICLR 2023), sec. 5:
the LocalMixer, and a conv net with a local head per block (``fwdgrad.MixerConfig``,
``fwdgrad.ConvNetConfig``). :func:`mixer_config` and :func:`conv_config` size them from the
example shape and the configured widths; :func:`end_to_end` runs the same blocks (the forward
functions of :mod:`fwdgrad`, not a second copy of the architecture) with only the last block's
head, so backprop trains exactly the network the forward-gradient rows train, minus the local
heads that only local losses need (Ren et al.'s BP rows, Table 3).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax

import fwdgrad
from beyondbp._not_applicable import NotApplicable
from fwdgrad._heads import head_logits
from fwdgrad._networks import block_list, identity_site

__all__ = [
    "LOCAL_GROUP_SIZE",
    "CONV_CHANNELS",
    "NAMES",
    "local_num_groups",
    "image_shape",
    "mixer_config",
    "conv_config",
    "end_to_end",
    "build",
]

#: The local-loss networks by name (``beyondbp compare --model``).
NAMES = ("mixer", "conv")
#: Units per local-loss group, at least (Ren et al. 2023, sec. 4: group-wise losses).
LOCAL_GROUP_SIZE = 8
#: Output channels of the conv blocks (a 2x2 average pool before blocks 1, 2).
CONV_CHANNELS = (32, 64, 64)


def local_num_groups(widths: Sequence[int]) -> int:
    """Groups per block: the smallest group of at least ``LOCAL_GROUP_SIZE`` units that
    divides every hidden width (one group when a width is smaller than that)."""
    g = math.gcd(*widths)
    size = next(s for s in range(min(LOCAL_GROUP_SIZE, g), g + 1) if g % s == 0)
    return g // size


def image_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    """``(height, width, channels)`` of image examples; a ValueError for any other shape."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3:
        raise ValueError(
            f"the local-loss image networks (mixer, conv) need (height, width[, channels]) "
            f"inputs; input_shape={tuple(input_shape)!r}"
        )
    return shape[0], shape[1], shape[2]


def mixer_config(
    input_shape: Sequence[int], widths: Sequence[int], num_classes: int
) -> fwdgrad.MixerConfig:
    """The LocalMixer for these examples, by fixed rules.

    * patches: the smallest divisor ``s`` of the image side with ``s >= side / 4``
      (7x7 patches on 28x28 and on 14x14 images: 16 and 4 patches);
    * one mixer block per configured hidden width, at least two (block 0 embeds
      the patches and has no token mixing);
    * channels and hidden units: the largest configured width;
    * channel groups of at least ``LOCAL_GROUP_SIZE`` units (:func:`local_num_groups`);
    * all three local losses on (LG-FG-A, Ren et al. 2023, Table 3);
    * no norm of the raw patches (``input_norm=False``, Ren et al.'s code's default): a norm
      over one 7x7 patch scales a patch of background noise up to the size of a stroke. On
      MNIST and Fashion-MNIST the background is exactly 0 and the norm leaves it at 0; on
      1,500 rendered shapes on a noisy background it held end-to-end backprop of this network
      at 62.6% against 89.8% without it, and LG-BP at 55.9% against 77.5% (seed 0;
      BENCHMARKS.md, "Stop 33: the two rows that missed on the small data set").
    """
    h, w, c = image_shape(input_shape)
    side = math.gcd(h, w)
    patch = next(s for s in range(1, side + 1) if side % s == 0 and 4 * s >= side)
    channels = max(widths)
    return fwdgrad.MixerConfig(
        image_shape=(h, w, c),
        patch_size=patch,
        num_blocks=max(2, len(widths)),
        channels=channels,
        num_classes=num_classes,
        num_groups=local_num_groups((channels,)),
        input_norm=False,
    )


def conv_config(input_shape: Sequence[int], num_classes: int) -> fwdgrad.ConvNetConfig:
    """The LocalConvNet for these examples, by fixed rules.

    ``CONV_CHANNELS`` 3x3 blocks, cut to as many as the image can be halved for
    (three on 28x28, two on 14x14, whose 7x7 map does not halve), channel groups
    of at least ``LOCAL_GROUP_SIZE`` units, all three local losses on.
    """
    shape = image_shape(input_shape)
    h, w, blocks = shape[0], shape[1], 1
    while blocks < len(CONV_CHANNELS) and h % 2 == 0 and w % 2 == 0:
        blocks, h, w = blocks + 1, h // 2, w // 2
    channels = CONV_CHANNELS[:blocks]
    return fwdgrad.ConvNetConfig(
        image_shape=shape,
        channels=channels,
        num_classes=num_classes,
        num_groups=local_num_groups(channels),
    )


def end_to_end(
    config: fwdgrad.MixerConfig | fwdgrad.ConvNetConfig, key: jax.Array
) -> tuple[Callable[[Any, jax.Array], jax.Array], dict]:
    """``(apply, params)`` of a local-loss network trained end to end: one classifier at the end.

    The parameters are the network's initial ones (``fwdgrad.mixer_init`` /
    ``fwdgrad.convnet_init``, the same key giving the same weights) without the local
    heads of every block but the last; ``apply`` runs every block unperturbed and with no
    stop-gradient between blocks, then the last block's head (group norm, mean over
    positions, linear: ``fwdgrad._heads.head_logits``), so the gradient of a loss on its
    logits reaches every block (Ren et al. 2023, Table 3's BP rows).
    """
    blocks = (
        fwdgrad.mixer_init(key, config)
        if isinstance(config, fwdgrad.MixerConfig)
        else fwdgrad.convnet_init(key, config)
    )["blocks"]
    last = max(blocks)
    params = {
        "blocks": {
            i: (p if i == last else {k: v for k, v in p.items() if k != "head"})
            for i, p in blocks.items()
        }
    }

    def apply(params, x):
        seq = block_list(params, config.num_blocks, config.model_name)
        h = config.inputs(x, seq)
        for i, p in enumerate(seq):
            h = config.body(i, p, h, identity_site)
        return head_logits(h, seq[-1]["head"], config.num_groups, config.normalize)

    return apply, params


def build(
    name: str,
    key: jax.Array,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    widths: Sequence[int] = (256, 256),
    recipe=None,
) -> tuple[Callable[[Any, jax.Array], jax.Array], dict]:
    """``(apply, params)`` of ``"mixer"`` or ``"conv"`` for examples of ``input_shape``,
    trained end to end (:func:`end_to_end`); ``widths`` size the mixer (:func:`mixer_config`).

    These networks are plain functions of parameter dicts, not nnx layers, so a ``lowbit``
    ``recipe`` has nothing to replace: ``recipe`` must be ``None``.
    """
    if recipe is not None:
        raise NotApplicable(
            f"model={name!r} is built from fwdgrad's functional blocks, not nnx layers, so a "
            "lowbit recipe cannot be applied to it"
        )
    if name == "mixer":
        config: Any = mixer_config(input_shape, widths, num_classes)
    elif name == "conv":
        config = conv_config(input_shape, num_classes)
    else:
        raise ValueError(f"model={name!r}: use one of {NAMES}")
    return end_to_end(config, key)
