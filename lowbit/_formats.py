"""Number formats as data: frozen, keyword-only dataclasses and preset values.

A :class:`Format` describes a grid of representable values and how codes map
onto it. Two kinds cover everything in Sun et al., "Ultra-Low Precision 4-bit
Training of Deep Neural Networks" (NeurIPS 2020) and the OCP 8-bit/4-bit
floats:

* ``kind="int"``: integers. Signed formats use two's complement codes but the
  quantization grid is the symmetric range ``[-(2^(b-1) - 1), 2^(b-1) - 1]``
  (INT4: -7..7), as SAWB and Sun et al. do, so that ``quantize(-x) ==
  -quantize(x)``; the one extra code (INT4's ``0b1000`` = -8) decodes to -8
  but is never produced by :func:`lowbit.quantize` or :func:`lowbit.encode`.
* ``kind="float"``: sign-magnitude floats with ``radix = 2^r``, ``exponent_bits``
  and ``mantissa_bits``. Exponent field ``e >= 1`` gives ``radix^(e - bias) *
  (1 + m / 2^M)``; ``e = 0`` gives the subnormals ``radix^(1 - bias) * m / 2^M``
  (only zero when ``M = 0``). Radix 4 is Sun et al.'s logarithmic radix-4
  FP4 (section 3, "radix-4 FP4 format [1,3,0]"); it must have ``M = 0``,
  otherwise the grid would have gaps between ``2 radix^k`` and ``radix^(k+1)``.

Non-finite codes (``nonfinite``): ``"none"`` (every code is a finite value:
E2M1), ``"negzero"`` (the sign-only code ``1 000...`` is NaN, so zero has a
single code: RADIX4_FP4), ``"fn"`` (only ``S 1..1 1..1`` is NaN: E4M3,
OCP "fn"), ``"ieee"`` (top exponent reserved for inf/NaN: E5M2).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

_KINDS = ("int", "float")
_NONFINITE = ("none", "negzero", "fn", "ieee")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Format:
    """A quantization grid and its code table (see the module docstring).

    Attributes:
      name: label used in reprs, plots and error messages.
      kind: ``"int"`` or ``"float"``.
      bits: total code width, 2..8 for quantized formats (32 only for :data:`FLOAT32`).
      signed: whether negative values exist (``"float"`` formats are always signed).
      exponent_bits / mantissa_bits / bias / radix: the ``"float"`` layout.
      nonfinite: which codes are NaN/inf, one of ``"none"``, ``"negzero"``, ``"fn"``, ``"ieee"``.

    Raises:
      ValueError: at construction, for any inconsistent field, naming the field,
        its value and what is valid.
    """

    name: str
    kind: str
    bits: int
    signed: bool = True
    exponent_bits: int = 0
    mantissa_bits: int = 0
    bias: int = 0
    radix: int = 2
    nonfinite: str = "none"

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"Format(kind={self.kind!r}): use one of {_KINDS}")
        if not isinstance(self.bits, int) or isinstance(self.bits, bool):
            raise TypeError(f"Format(bits={self.bits!r}): need an int")
        if self.nonfinite not in _NONFINITE:
            raise ValueError(f"Format(nonfinite={self.nonfinite!r}): use one of {_NONFINITE}")
        if self.kind == "int":
            if not 2 <= self.bits <= 8:
                raise ValueError(f"Format(bits={self.bits}): integer formats need 2 <= bits <= 8")
            if self.exponent_bits or self.mantissa_bits or self.nonfinite != "none":
                raise ValueError(
                    f"Format {self.name!r}: kind='int' takes no exponent_bits/mantissa_bits "
                    f"and nonfinite='none' (got {self.exponent_bits}, {self.mantissa_bits}, "
                    f"{self.nonfinite!r})"
                )
            return
        # float
        if not self.signed:
            raise ValueError(
                f"Format {self.name!r}: kind='float' formats are signed (signed=False given)"
            )
        if self.radix not in (2, 4, 16):
            raise ValueError(
                f"Format(radix={self.radix!r}): use 2, 4 or 16 (a power of two "
                "keeps rounding exact on the float's bits)"
            )
        if self.exponent_bits < 1:
            raise ValueError(f"Format(exponent_bits={self.exponent_bits!r}): need >= 1")
        if self.mantissa_bits < 0:
            raise ValueError(f"Format(mantissa_bits={self.mantissa_bits!r}): need >= 0")
        if self.radix > 2 and self.mantissa_bits != 0:
            raise ValueError(
                f"Format(radix={self.radix}, mantissa_bits={self.mantissa_bits}): radix > 2 "
                "needs mantissa_bits=0 (a logarithmic format); otherwise the grid has gaps"
            )
        if self.bits != 1 + self.exponent_bits + self.mantissa_bits:
            raise ValueError(
                f"Format(bits={self.bits}): a float needs bits = 1 + exponent_bits + mantissa_bits "
                f"= {1 + self.exponent_bits + self.mantissa_bits}"
            )
        if self.bits > 8 and not self.is_float32:
            raise ValueError(
                f"Format(bits={self.bits}): quantized floats have at most 8 bits; "
                "use FLOAT32 for no quantization"
            )
        if self.nonfinite == "negzero" and self.mantissa_bits != 0:
            raise ValueError("nonfinite='negzero' is only defined for mantissa_bits=0 formats")
        if self.nonfinite == "ieee" and self.exponent_bits < 2:
            raise ValueError("nonfinite='ieee' needs exponent_bits >= 2")
        if not self.is_float32:
            # Emulation is exact only if every grid value and every half-step is a
            # normal float32: check the two ends.
            lo = self.log2_radix * (1 - self.bias) - self.mantissa_bits - 1
            hi = self.log2_radix * (self.max_exponent_field - self.bias) + 2
            if lo < -126 or hi > 127:
                raise ValueError(
                    f"Format {self.name!r}: bias={self.bias} puts the grid outside float32's "
                    f"normal range (2^{lo} .. 2^{hi}); exact emulation needs -126..127"
                )

    # ---- derived properties -------------------------------------------------
    @property
    def is_float32(self) -> bool:
        """True for the identity format (no quantization)."""
        return (
            self.kind == "float"
            and self.radix == 2
            and self.exponent_bits >= 8
            and self.mantissa_bits >= 23
        )

    @property
    def log2_radix(self) -> int:
        return int(math.log2(self.radix))

    @property
    def max_exponent_field(self) -> int:
        """Largest exponent field that holds finite values."""
        top = 2**self.exponent_bits - 1
        return top - 1 if self.nonfinite == "ieee" else top

    @property
    def max_int(self) -> int:
        """Largest integer on an ``"int"`` grid (7 for INT4, 15 for UINT4)."""
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    @property
    def max_value(self) -> float:
        """Largest finite value on the quantization grid (saturation point)."""
        if self.kind == "int":
            return float(self.max_int)
        if self.is_float32:
            return float(np.finfo(np.float32).max)
        m = self.mantissa_bits
        top_mant = 2**m - 1
        if self.nonfinite == "fn":
            top_mant -= 1  # S.1111.111 is NaN
        return float(
            2.0 ** (self.log2_radix * (self.max_exponent_field - self.bias)) * (1 + top_mant / 2**m)
        )

    @property
    def min_value(self) -> float:
        """Smallest positive value on the grid (the smallest subnormal if any)."""
        if self.kind == "int":
            return 1.0
        if self.is_float32:
            return float(np.finfo(np.float32).smallest_subnormal)
        return float(2.0 ** (self.log2_radix * (1 - self.bias) - self.mantissa_bits))

    def values(self) -> np.ndarray:
        """All ``2^bits`` code values (float32, NaN for NaN codes, inf for inf codes).

        Index ``c`` is the value of code ``c``. Not defined for :data:`FLOAT32`.
        """
        if self.is_float32:
            raise ValueError("FLOAT32 is the identity format; it has no code table")
        return _code_table(self).copy()


@functools.cache
def _code_table(fmt: Format) -> np.ndarray:
    """Decode every code of ``fmt`` in numpy float64, then float32 (exact here)."""
    n = 2**fmt.bits
    out = np.zeros(n, np.float64)
    for c in range(n):
        if fmt.kind == "int":
            out[c] = c - n if (fmt.signed and c >= n // 2) else c
            continue
        sign = -1.0 if c >> (fmt.bits - 1) else 1.0
        e = (c >> fmt.mantissa_bits) & (2**fmt.exponent_bits - 1)
        m = c & (2**fmt.mantissa_bits - 1)
        r = fmt.log2_radix
        top_e = 2**fmt.exponent_bits - 1
        if fmt.nonfinite == "ieee" and e == top_e:
            out[c] = sign * np.inf if m == 0 else np.nan
        elif (fmt.nonfinite == "fn" and e == top_e and m == 2**fmt.mantissa_bits - 1) or (
            fmt.nonfinite == "negzero" and c == 1 << (fmt.bits - 1)
        ):
            out[c] = np.nan
        elif e == 0:
            out[c] = sign * 2.0 ** (r * (1 - fmt.bias)) * m / 2**fmt.mantissa_bits
        else:
            out[c] = sign * 2.0 ** (r * (e - fmt.bias)) * (1 + m / 2**fmt.mantissa_bits)
    table = out.astype(np.float32)
    table.setflags(write=False)
    return table


def int_format(bits: int, *, signed: bool = True, name: str | None = None) -> Format:
    """An integer grid: symmetric ``[-(2^(b-1)-1), 2^(b-1)-1]`` if signed, else ``[0, 2^b-1]``."""
    return Format(
        name=name or f"{'INT' if signed else 'UINT'}{bits}", kind="int", bits=bits, signed=signed
    )


def float_format(
    exponent_bits: int,
    mantissa_bits: int,
    bias: int,
    *,
    nonfinite: str = "none",
    name: str | None = None,
) -> Format:
    """A radix-2 sign-magnitude float with subnormals (OCP-style ``E<e>M<m>``)."""
    return Format(
        name=name or f"E{exponent_bits}M{mantissa_bits}",
        kind="float",
        bits=1 + exponent_bits + mantissa_bits,
        exponent_bits=exponent_bits,
        mantissa_bits=mantissa_bits,
        bias=bias,
        nonfinite=nonfinite,
    )


def log_format(
    radix: int,
    exponent_bits: int,
    bias: int,
    *,
    nonfinite: str = "negzero",
    name: str | None = None,
) -> Format:
    """A logarithmic format: values 0 and ``+-radix^(e - bias)`` for ``e = 1..2^E - 1``.

    Sun et al. (2020), section 3: radix-4 FP4 is ``log_format(4, 3, 4)``; the
    code with exponent field 0 is zero and its negative twin is NaN
    (``nonfinite="negzero"``) so that zero has exactly one code.
    """
    return Format(
        name=name or f"radix{radix}-E{exponent_bits}",
        kind="float",
        bits=1 + exponent_bits,
        exponent_bits=exponent_bits,
        mantissa_bits=0,
        bias=bias,
        radix=radix,
        nonfinite=nonfinite,
    )


#: Sun et al. (2020) radix-4 FP4 [1,3,0]: 0 and +-4^k, k = -3..3; code 0 = zero, code 8 = NaN.
RADIX4_FP4 = log_format(4, 3, 4, name="RADIX4_FP4")
#: Radix-2 FP4 [1,3,0]: 0 and +-2^k, k = -3..3; code 0 = zero, code 8 = NaN. The logarithmic
#: gradient format of LUQ (Chmiel et al., "Accurate Neural Training with 4-bit Matrix
#: Multiplications at Standard Formats", ICLR 2023, section 4). Half of radix-4's log step (a
#: value's nearest-rounding error at most 1/3 of it, against 3/5 on radix-4's grid) for a
#: quarter of its range (2^6 against 4^6): the better trade once each channel has its own scale
#: (``QuantConfig(gradient_scaling="channel")``), when one tensor's range no longer has to fit.
RADIX2_FP4 = log_format(2, 3, 4, name="RADIX2_FP4")
#: Signed 4-bit integer, symmetric grid -7..7 (two's complement codes).
INT4 = int_format(4, name="INT4")
#: Unsigned 4-bit integer 0..15 (activations after ReLU, PACT).
UINT4 = int_format(4, signed=False, name="UINT4")
#: Signed 8-bit integer, symmetric grid -127..127.
INT8 = int_format(8, name="INT8")
#: OCP MX FP4 E2M1: 0, 0.5, 1, 1.5, 2, 3, 4, 6 and negatives; no NaN or inf.
E2M1 = float_format(2, 1, 1, name="E2M1")
#: OCP FP8 E4M3 ("fn"): max 448, NaN at S.1111.111, no inf.
E4M3 = float_format(4, 3, 7, nonfinite="fn", name="E4M3")
#: OCP FP8 E5M2: IEEE-like, max 57344, inf and NaN.
E5M2 = float_format(5, 2, 15, nonfinite="ieee", name="E5M2")
#: The identity format: quantizing to it returns the input unchanged.
FLOAT32 = Format(
    name="FLOAT32",
    kind="float",
    bits=32,
    exponent_bits=8,
    mantissa_bits=23,
    bias=127,
    nonfinite="ieee",
)
