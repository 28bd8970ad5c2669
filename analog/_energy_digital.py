"""The digital side of the energy comparison: arithmetic plus the data movement of a stated dataflow.

A digital accelerator's energy at scale is dominated by moving weights and activations through
SRAM and DRAM, not by the multiply-adds (Horowitz, "Computing's energy problem (and what we can
do about it)", ISSCC 2014: a 64-bit DRAM access costs ~350x an FP32 multiply-add at 45 nm). An
in-memory crossbar removes exactly that movement, so a fair analog-vs-digital ratio has to count
it. This module holds per-operation energies of two technology sets (:data:`HOROWITZ_45NM`,
:data:`JOUPPI_7NM`), a weight-stationary dataflow with a stated on-chip buffer
(:class:`DigitalEnergyModel`) and the operation counts of a training or inference step of a
layered network under that dataflow (:func:`digital_counts`).

The dataflow (stated, and deliberately kind to the digital side):
- A ``pe_rows x pe_cols`` weight-stationary array (a TPU-like systolic array, Jouppi et al.,
  ISCA 2017): each weight is fetched once per pass over the batch and reused by all ``batch``
  examples; the streamed operand is re-read once per column block of the array, partial sums
  are read-modified-written once per row block in accumulator SRAM.
- One on-chip buffer of ``buffer_bytes``. Activations that must be kept (all layers' for a
  training step, two live layers for inference) take it first; what does not fit is written to
  and read back from DRAM once. Weights get the rest: a fraction ``min(1, room / weight bytes)``
  stays resident and is read from SRAM, the rest streams from DRAM at every use (pinned, the best
  static allocation; LRU on a cyclic sweep larger than the cache would hit nothing).
- Each SRAM access costs one read of an array of ``sram_array_bytes`` (the buffer is banked;
  wires between banks are not counted). Writes are charged as reads (Horowitz gives one access
  energy). Memory energies scale with bits moved from the 64-bit access of the sources.
- Biases, control, instruction fetch, leakage and the host are not counted.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import NamedTuple

__all__ = [
    "OpEnergies",
    "HOROWITZ_45NM",
    "JOUPPI_7NM",
    "DigitalEnergyModel",
    "DigitalCounts",
    "DEFAULT_DIGITAL_MODEL",
    "digital_counts",
    "digital_joules",
    "DTYPE_BITS",
]

DTYPE_BITS = {"fp32": 32, "bf16": 16, "int8": 8}
_KIB = 1024


def _check_positive_number(owner: str, name: str, v, *, allow_zero: bool = False) -> None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if not ok or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{owner}: {name}={v!r} must be a finite number {bound}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OpEnergies:
    """Joules per operation of one technology set; memory energies are per 64-bit access.

    Multiplies and adds of fp32, bf16 and int8; int32 add (the accumulator of int8 MACs);
    SRAM read of a 64-bit word from an 8 KB, 32 KB and 1 MB array; DRAM read of a 64-bit word.
    ``source`` names where the numbers come from.
    """

    name: str
    source: str
    mult_fp32: float
    add_fp32: float
    mult_bf16: float
    add_bf16: float
    mult_int8: float
    add_int8: float
    add_int32: float
    sram_8kb: float
    sram_32kb: float
    sram_1mb: float
    dram: float

    def __post_init__(self):
        for name in ("name", "source"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(
                    f"OpEnergies: {name}={getattr(self, name)!r} must be a "
                    "non-empty string (what the numbers are and where from)"
                )
        for f in dataclasses.fields(self):
            if f.type in ("float", float):
                _check_positive_number("OpEnergies", f.name, getattr(self, f.name))
        if not (self.sram_8kb <= self.sram_32kb <= self.sram_1mb):
            raise ValueError(
                f"OpEnergies {self.name}: SRAM energies must not fall with array "
                f"size: 8 KB {self.sram_8kb}, 32 KB {self.sram_32kb}, "
                f"1 MB {self.sram_1mb}"
            )

    def sram_per_access(self, array_bytes: float) -> float:
        """Joules per 64-bit read of an SRAM array of ``array_bytes``: the three cited points,
        log-log interpolated between them, the 8 KB value below 8 KB and the 32 KB-1 MB power
        law beyond 1 MB (energy grows with wire length, ~ sqrt(capacity), Horowitz 2014)."""
        pts = [(8 * _KIB, self.sram_8kb), (32 * _KIB, self.sram_32kb), (1024 * _KIB, self.sram_1mb)]
        if array_bytes <= pts[0][0]:
            return self.sram_8kb
        (s0, e0), (s1, e1) = (pts[0], pts[1]) if array_bytes <= pts[1][0] else (pts[1], pts[2])
        slope = math.log(e1 / e0) / math.log(s1 / s0)
        return e0 * (array_bytes / s0) ** slope


# Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014, Fig. 1.1.9
# (45 nm, 0.9 V): integer add 8b 0.03 pJ, 32b 0.1 pJ; multiply 8b 0.2 pJ; FP16 add 0.4 pJ,
# multiply 1.1 pJ; FP32 add 0.9 pJ, multiply 3.7 pJ; cache read of 64 bits: 8 KB 10 pJ,
# 32 KB 20 pJ, 1 MB 100 pJ; DRAM 1.3-2.6 nJ per 64 bits (the low end is taken: kind to digital).
# The figure has no bfloat16; FP16's numbers stand in (bf16's 8-bit significand multiplier is
# smaller than FP16's 11-bit one, so this overstates bf16 slightly).
# Jouppi et al., "Ten Lessons From Three Generations Shaped Google's TPUv4i", ISCA 2021, Table 2
# (the same operations at 7 nm): add int8 0.007 pJ, int32 0.03, bf16 0.11, fp32 0.38; multiply
# int8 0.07, bf16 0.21, fp32 1.31; SRAM 64-bit read 8 KB 7.5 pJ, 32 KB 8.5 pJ, 1 MB 14 pJ;
# HBM2 250-450 pJ per 64 bits (the midpoint 350 pJ is taken; DDR3/4 stays 1.3 nJ).
# Joules per operation, the two sources side by side: (Horowitz 45 nm, Jouppi 7 nm).
_TABLE = {
    "mult_fp32": (3.7e-12, 1.31e-12),
    "add_fp32": (0.9e-12, 0.38e-12),
    "mult_bf16": (1.1e-12, 0.21e-12),
    "add_bf16": (0.4e-12, 0.11e-12),
    "mult_int8": (0.2e-12, 0.07e-12),
    "add_int8": (0.03e-12, 0.007e-12),
    "add_int32": (0.1e-12, 0.03e-12),
    "sram_8kb": (10e-12, 7.5e-12),
    "sram_32kb": (20e-12, 8.5e-12),
    "sram_1mb": (100e-12, 14e-12),
    "dram": (1.3e-9, 350e-12),
}

#: Per-operation energies at 45 nm: Horowitz, "Computing's energy problem", ISSCC 2014, Fig. 1.1.9.
HOROWITZ_45NM = OpEnergies(
    name="horowitz-45nm",
    source="Horowitz, ISSCC 2014, Fig. 1.1.9 (45 nm); bf16 = FP16 figures; DRAM low end 1.3 nJ",
    **{op: joules[0] for op, joules in _TABLE.items()},
)

#: Per-operation energies at 7 nm: Jouppi et al., ISCA 2021, Table 2 (DRAM: HBM2 midpoint).
JOUPPI_7NM = OpEnergies(
    name="jouppi-7nm",
    source="Jouppi et al., ISCA 2021, Table 2 (7 nm); DRAM = HBM2 midpoint 350 pJ/64 b",
    **{op: joules[1] for op, joules in _TABLE.items()},
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DigitalEnergyModel:
    """A digital accelerator: per-operation energies, number format and the dataflow's sizes.

    ops: technology set (:data:`HOROWITZ_45NM` or :data:`JOUPPI_7NM`).
    dtype: ``"fp32"``, ``"bf16"`` or ``"int8"`` for weights, activations and multiplies; MACs
      accumulate in fp32 (fp32, bf16) or int32 (int8), as TPUs and tensor cores do.
    buffer_bytes: on-chip buffer shared by weights and activations (default 16 MiB: between
      a TPUv4i core's 16 MiB vector memory + 128 MiB CMEM and an A100's 40 MB L2).
    sram_array_bytes: size of one SRAM bank, which sets the energy of an access (default 1 MiB,
      Horowitz's largest point).
    pe_rows, pe_cols: the weight-stationary array (default 128 x 128, a TPU MXU).
    periphery_sram_bytes: the local buffer of an analog tile's periphery (default 8 KB), used
      for the analog chip's own digital work (see ``analog.energy_report``).
    """

    ops: OpEnergies = HOROWITZ_45NM
    dtype: str = "fp32"
    buffer_bytes: int = 16 * 1024 * _KIB
    sram_array_bytes: int = 1024 * _KIB
    pe_rows: int = 128
    pe_cols: int = 128
    periphery_sram_bytes: int = 8 * _KIB

    def __post_init__(self):
        if not isinstance(self.ops, OpEnergies):
            raise TypeError(
                f"DigitalEnergyModel: ops={self.ops!r}; pass an analog.OpEnergies "
                "such as analog.HOROWITZ_45NM"
            )
        if self.dtype not in DTYPE_BITS:
            raise ValueError(
                f"DigitalEnergyModel: dtype={self.dtype!r}; use one of {sorted(DTYPE_BITS)}"
            )
        for name in (
            "buffer_bytes",
            "sram_array_bytes",
            "pe_rows",
            "pe_cols",
            "periphery_sram_bytes",
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"DigitalEnergyModel: {name}={v!r} must be a positive int")

    @property
    def bits(self) -> int:
        return DTYPE_BITS[self.dtype]

    @property
    def e_mult(self) -> float:
        return getattr(self.ops, f"mult_{self.dtype}")

    @property
    def e_acc(self) -> float:
        """Energy of the add of a MAC: fp32 accumulation for floats, int32 for int8."""
        return self.ops.add_int32 if self.dtype == "int8" else self.ops.add_fp32

    @property
    def e_sram_word(self) -> float:
        return self.ops.sram_per_access(self.sram_array_bytes) * self.bits / 64

    @property
    def e_dram_word(self) -> float:
        return self.ops.dram * self.bits / 64


#: :class:`DigitalEnergyModel` with its defaults: the digital baseline of the energy tables.
DEFAULT_DIGITAL_MODEL = DigitalEnergyModel()


class DigitalCounts(NamedTuple):
    """Operation counts of digital work (Python floats).

    mults / adds: multiplies and adds (a MAC is one of each; the add is the accumulator's).
    sram_words / dram_words: words of the model's dtype read or written in SRAM / DRAM.
    """

    mults: float = 0.0
    adds: float = 0.0
    sram_words: float = 0.0
    dram_words: float = 0.0

    def __add__(self, other: DigitalCounts) -> DigitalCounts:  # type: ignore[override]
        return DigitalCounts(*(a + b for a, b in zip(self, other)))

    def scale(self, f: float) -> DigitalCounts:
        return DigitalCounts(*(a * f for a in self))


def digital_joules(
    counts: DigitalCounts,
    model: DigitalEnergyModel = DEFAULT_DIGITAL_MODEL,
    *,
    sram_word: float | None = None,
) -> dict:
    """Joules of ``counts``: ``compute`` (mults x e_mult + adds x e_acc), ``sram``, ``dram``,
    ``total``; ``sram_word`` overrides the per-word SRAM energy (a smaller local array)."""
    e_sram = model.e_sram_word if sram_word is None else sram_word
    out = {
        "compute": counts.mults * model.e_mult + counts.adds * model.e_acc,
        "sram": counts.sram_words * e_sram,
        "dram": counts.dram_words * model.e_dram_word,
    }
    out["total"] = out["compute"] + out["sram"] + out["dram"]
    return out


def check_network(
    owner: str, layer_sizes: Sequence[int], batch: int
) -> tuple[tuple[int, ...], int]:
    """Validated ``(layer_sizes, batch)``: at least two positive int sizes, a positive int batch."""
    sizes = tuple(layer_sizes) if isinstance(layer_sizes, (list, tuple)) else None
    if (
        sizes is None
        or len(sizes) < 2
        or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in sizes)
    ):
        raise ValueError(
            f"{owner}: layer_sizes={layer_sizes!r} must be a list or tuple of at "
            "least two positive ints, e.g. (784, 500, 10)"
        )
    if not isinstance(batch, int) or isinstance(batch, bool) or batch <= 0:
        raise ValueError(f"{owner}: batch={batch!r} must be a positive int (examples per step)")
    return sizes, batch


def _stream_gemm(b: int, k: int, n: int, model: DigitalEnergyModel) -> DigitalCounts:
    """``(b, k) @ (k, n)`` with the ``(k, n)`` matrix stationary; its own fetch not included.

    The streamed ``(b, k)`` operand is re-read once per column block, the ``(b, n)`` partial sums
    are written once per row block and read back for all but the first."""
    row_blocks = -(-k // model.pe_rows)
    col_blocks = -(-n // model.pe_cols)
    sram = b * k * col_blocks + b * n * (2 * row_blocks - 1)
    return DigitalCounts(mults=b * k * n, adds=b * k * n, sram_words=sram)


def _outer_gemm(b: int, k: int, n: int, model: DigitalEnergyModel) -> DigitalCounts:
    """``(k, b) @ (b, n)`` output-stationary (a weight gradient): both operands streamed, each
    re-read once per block of the other's dimension; the output leaves the array once."""
    row_blocks = -(-k // model.pe_rows)
    col_blocks = -(-n // model.pe_cols)
    return DigitalCounts(
        mults=b * k * n, adds=b * k * n, sram_words=b * k * col_blocks + b * n * row_blocks
    )


def _weight_traffic(words: float, resident: float) -> DigitalCounts:
    return DigitalCounts(sram_words=words * resident, dram_words=words * (1.0 - resident))


def _placement(
    kept_act_words: float, weight_words: float, model: DigitalEnergyModel
) -> tuple[float, float]:
    """(activation words spilled to DRAM, fraction of weights resident on chip)."""
    cap = model.buffer_bytes * 8 / model.bits  # buffer capacity in words
    spill = max(0.0, kept_act_words - cap)
    room = max(0.0, cap - kept_act_words)
    return spill, min(1.0, room / weight_words)


def digital_counts(
    layer_sizes: Sequence[int],
    batch: int,
    *,
    algorithm: str = "backprop",
    model: DigitalEnergyModel = DEFAULT_DIGITAL_MODEL,
    sweeps: int | None = None,
) -> DigitalCounts:
    """Counts of one step of a layered network on the digital accelerator ``model`` describes.

    Args:
      layer_sizes: ``(n_0, ..., n_L)``: weight layers ``W_k`` of shape ``(n_(k-1), n_k)``.
      batch: examples per step.
      algorithm: ``"backprop"``: a training step (forward; input-gradient pass for every layer
        but the first; weight gradient, output-stationary, fused with the SGD update, which reads
        and writes each weight once and spends a multiply and an add on it; one elementwise op
        per unit for the nonlinearity and one for its derivative). ``"inference"``: the forward
        pass. ``"eqprop"``: the same Equilibrium-Propagation step the crossbars run, done
        digitally (``sweeps`` relaxation sweeps, each a forward product of every layer and a
        transposed one of every layer but the first, three elementwise ops per unit; then the
        two outer products and the update).
      model: the accelerator.
      sweeps: relaxation sweeps, for ``"eqprop"`` only.

    Returns:
      :class:`DigitalCounts` of one step.
    """
    sizes, b = check_network("digital_counts", layer_sizes, batch)
    if not isinstance(model, DigitalEnergyModel):
        raise TypeError(f"digital_counts: model={model!r}; pass an analog.DigitalEnergyModel")
    if algorithm not in ("backprop", "inference", "eqprop"):
        raise ValueError(
            f"digital_counts: algorithm={algorithm!r}; use 'backprop', 'inference' or 'eqprop'"
        )
    if (algorithm == "eqprop") != (sweeps is not None):
        raise ValueError(
            "digital_counts: pass sweeps= (a positive int) for algorithm='eqprop' and only then"
        )
    if sweeps is not None and (
        not isinstance(sweeps, int) or isinstance(sweeps, bool) or sweeps <= 0
    ):
        raise ValueError(f"digital_counts: sweeps={sweeps!r} must be a positive int")
    layers = list(itertools.pairwise(sizes))
    weight_words = float(sum(k * n for k, n in layers))
    if algorithm == "inference":
        kept = 2.0 * b * max(sizes)  # the live input and output of one layer
    elif algorithm == "backprop":
        kept = float(b * sum(sizes))  # every layer's activations, for the backward pass
    else:
        kept = 3.0 * b * sum(sizes[1:]) + b * sizes[0]  # free, +beta, -beta states
    spill, resident = _placement(kept, weight_words, model)
    total = DigitalCounts(dram_words=2.0 * spill)  # spilled once, read back once
    for i, (k, n) in enumerate(layers):
        if algorithm == "inference":
            total += _stream_gemm(b, k, n, model) + _weight_traffic(k * n, resident)
            total += DigitalCounts(adds=b * n)
        elif algorithm == "backprop":
            total += _stream_gemm(b, k, n, model) + _weight_traffic(k * n, resident)
            if i > 0:
                total += _stream_gemm(b, n, k, model) + _weight_traffic(k * n, resident)
            total += _outer_gemm(b, k, n, model)
            total += DigitalCounts(mults=k * n, adds=k * n) + _weight_traffic(2 * k * n, resident)
            total += DigitalCounts(adds=2 * b * n)
        else:
            per_sweep = _stream_gemm(b, k, n, model) + _weight_traffic(k * n, resident)
            if i > 0:
                per_sweep += _stream_gemm(b, n, k, model) + _weight_traffic(k * n, resident)
            per_sweep += DigitalCounts(adds=3 * b * n)
            assert sweeps is not None  # checked above: eqprop always has sweeps
            total += per_sweep.scale(sweeps)
            total += _outer_gemm(b, k, n, model).scale(2.0)
            total += DigitalCounts(mults=k * n, adds=k * n) + _weight_traffic(2 * k * n, resident)
    return total
