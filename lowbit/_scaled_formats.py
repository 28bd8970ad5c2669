"""Block-scaled formats as data: :class:`ScaledFormat`, :class:`ExponentFormat` and presets.

A :class:`ScaledFormat` pairs an element :class:`~lowbit.Format` with a rule
for its scales (per tensor, per channel, or per block of ``N`` elements, or
``N x B`` tiles) and the format the scales are stored in (:data:`E8M0`,
E4M3, float32). The quantizer and codes are in :mod:`lowbit._blocks`, which
states the scale rules; the layout and scale arithmetic in
:mod:`lowbit._block_scales`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from lowbit._formats import E2M1, E4M3, Format

__all__ = ["ExponentFormat", "E8M0", "ScaledFormat", "MXFP4", "NVFP4", "GRANULARITIES"]

GRANULARITIES = ("tensor", "channel", "block")
_PARTIAL = ("pad", "error")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExponentFormat:
    """An unsigned exponent-only scale format: code ``c`` is ``2^(c - bias)``, the top code NaN.

    OCP MX v1.0's E8M0 (``bits=8, bias=127``): scales ``2^-127 .. 2^127``, code
    ``0xFF`` NaN, no zero and no sign.
    """

    name: str
    bits: int = 8
    bias: int = 127

    def __post_init__(self):
        if not (isinstance(self.bits, int) and 2 <= self.bits <= 8):
            raise ValueError(f"ExponentFormat(bits={self.bits!r}): need an int in 2..8")
        lo, hi = -self.bias, 2**self.bits - 2 - self.bias
        if lo < -127 or hi > 127:
            raise ValueError(
                f"ExponentFormat(bias={self.bias}): exponents {lo}..{hi} must lie "
                "in -127..127 (float32's range)"
            )

    @property
    def min_exponent(self) -> int:
        return -self.bias

    @property
    def max_exponent(self) -> int:
        return 2**self.bits - 2 - self.bias

    @property
    def nan_code(self) -> int:
        return 2**self.bits - 1

    def values(self) -> np.ndarray:
        """All code values in float64 (exact; 2^-127 is below float32's normals), NaN last."""
        out = 2.0 ** (np.arange(2**self.bits, dtype=np.float64) - self.bias)
        out[-1] = np.nan
        return out


#: OCP MX v1.0 shared scale: 8-bit biased exponent, 2^-127..2^127, 0xFF = NaN.
E8M0 = ExponentFormat(name="E8M0")


def _scale_range_ok(fmt: Format) -> bool:
    return fmt.kind == "float" and fmt.max_value / fmt.min_value >= 2.0**16


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScaledFormat:
    """An element format plus how its scales are laid out and stored.

    Attributes:
      name: label for reprs and reports.
      element: the element :class:`Format` (E2M1, INT4, E4M3, ...; not FLOAT32).
      granularity: ``"tensor"`` (one scale), ``"channel"`` (one scale per index
        of the non-contraction axes: per output channel of a weight, per row
        of an activation) or ``"block"``.
      block_size: for ``"block"``: ``N`` (blocks of ``N`` consecutive elements
        along the contraction axis) or ``(N, B)`` (2-D tiles: ``N`` along the
        contraction axis times ``B`` along the channel axis, so a weight and
        its transpose share every block, as in NVIDIA's 16x16 weight tiles).
      scale_format: :data:`E8M0`, a float :class:`Format` with at least 2^16
        of dynamic range (E4M3, E5M2), or :data:`lowbit.FLOAT32`.
      tensor_scale: add NVFP4's second-level float32 per-tensor scale, so the
        narrow block scales stay in range; needs a narrow float scale format.
      partial_blocks: ``"pad"`` (a last block shorter than ``N`` is scaled on
        its own elements, as if zero-padded) or ``"error"``.
      prescale: a factor in ``(0, 1]`` applied to each block after its E8M0 scale
        is chosen and undone (``1 / prescale``) on decode, once per GEMM output
        like a tensor scale. OCP MX v1.0's scale puts the block amax at
        ``[4, 8)`` times the scale, so elements above 6 saturate; Tseng et al.,
        "Training LLMs with MXFP4" (arXiv 2502.20586, 2025) use ``3/4``, which
        maps the amax to ``[3, 6)``: nothing saturates, so stochastic rounding
        stays unbiased. Only with an :class:`ExponentFormat` scale.

    Raises:
      TypeError / ValueError: at construction, naming the field and the fix.
    """

    name: str
    element: Format
    granularity: str = "block"
    block_size: Any = 32
    scale_format: Any = E8M0
    tensor_scale: bool = False
    partial_blocks: str = "pad"
    prescale: float = 1.0

    def __post_init__(self):
        if not isinstance(self.element, Format) or self.element.is_float32:
            raise TypeError(
                f"ScaledFormat(element={self.element!r}): need a quantized "
                "lowbit.Format such as lowbit.E2M1 or lowbit.INT4"
            )
        if self.granularity not in GRANULARITIES:
            raise ValueError(
                f"ScaledFormat(granularity={self.granularity!r}): use one of {GRANULARITIES}"
            )
        if self.granularity == "block":
            bs = self.block_size
            bs = (bs,) if isinstance(bs, int) and not isinstance(bs, bool) else bs
            if (
                not isinstance(bs, tuple)
                or len(bs) not in (1, 2)
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in bs)
            ):
                raise ValueError(
                    f"ScaledFormat(block_size={self.block_size!r}): need a positive "
                    "int N or a pair (N, B) of positive ints"
                )
        if self.partial_blocks not in _PARTIAL:
            raise ValueError(
                f"ScaledFormat(partial_blocks={self.partial_blocks!r}): use one of {_PARTIAL}"
            )
        sf = self.scale_format
        if isinstance(sf, ExponentFormat):
            pass
        elif isinstance(sf, Format):
            if not (sf.is_float32 or _scale_range_ok(sf)):
                raise ValueError(
                    f"ScaledFormat(scale_format={sf.name}): it cannot hold the range of scales "
                    f"(kind={sf.kind!r}, max/min = {sf.max_value / sf.min_value:g} < 2^16); use "
                    "lowbit.E8M0, lowbit.E4M3 or lowbit.FLOAT32"
                )
        else:
            raise TypeError(
                f"ScaledFormat(scale_format={sf!r}): need lowbit.E8M0, lowbit.E4M3 "
                "(a lowbit.Format) or lowbit.FLOAT32"
            )
        if not isinstance(self.tensor_scale, bool):
            raise TypeError(f"ScaledFormat(tensor_scale={self.tensor_scale!r}): need a bool")
        if self.tensor_scale and not (isinstance(sf, Format) and not sf.is_float32):
            raise ValueError(
                f"ScaledFormat(tensor_scale=True) needs a narrow float scale format "
                f"such as lowbit.E4M3 (got {getattr(sf, 'name', sf)}): a power-of-two "
                "or float32 scale already covers float32's range"
            )

        pre = self.prescale
        if isinstance(pre, bool) or not isinstance(pre, (int, float)) or not 0.0 < pre <= 1.0:
            raise ValueError(
                f"ScaledFormat(prescale={pre!r}): need a float in (0, 1] (Tseng et al. 2025 use "
                "0.75)"
            )
        if pre != 1.0 and not isinstance(sf, ExponentFormat):
            raise ValueError(
                f"ScaledFormat(prescale={pre!r}) needs a power-of-two scale (lowbit.E8M0): a "
                f"{getattr(sf, 'name', sf)} scale is already amax / max_elem, nothing saturates"
            )

    @property
    def split_scale(self) -> bool:
        """Whether decoding multiplies by a float32 scalar besides the block scales (a
        two-level tensor scale, or ``1 / prescale``), applied once to a GEMM's output."""
        return self.tensor_scale or self.prescale != 1.0

    @property
    def block(self) -> tuple[int, int] | None:
        """``(N, B)`` for block granularity (``B = 1`` for 1-D blocks), else ``None``."""
        if self.granularity != "block":
            return None
        bs = self.block_size
        return (bs, 1) if isinstance(bs, int) else (bs[0], bs[1] if len(bs) == 2 else 1)

    @property
    def bits_per_element(self) -> float:
        """Average storage per element at full blocks (codes plus block scales)."""
        n = self.block
        sbits = (
            32
            if (isinstance(self.scale_format, Format) and self.scale_format.is_float32)
            else self.scale_format.bits
        )
        return self.element.bits + (sbits / (n[0] * n[1]) if n else 0.0)


#: OCP MX v1.0 MXFP4: E2M1 elements, one E8M0 power-of-two scale per 32 elements.
MXFP4 = ScaledFormat(name="MXFP4", element=E2M1, block_size=32, scale_format=E8M0)
#: NVIDIA NVFP4: E2M1 elements, an E4M3 scale per 16 elements, and a float32 per-tensor scale.
NVFP4 = ScaledFormat(
    name="NVFP4", element=E2M1, block_size=16, scale_format=E4M3, tensor_scale=True
)
