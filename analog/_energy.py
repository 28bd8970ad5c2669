"""Energy accounting: count analog operations, convert them to joules beside digital estimates.

Counts live in an :class:`EnergyLedger` (a NamedTuple of float32 scalars, so it sits in optax
state with a fixed structure and jit never recompiles). The transforms add to it as they run:
``equilibrium_propagation`` counts every crossbar read of its relaxation phases, ``program``
every programming pulse; :func:`crossbar_counts` gives the same counts in closed form for any
size. :func:`energy_report` multiplies counts by the named per-operation constants of an
:class:`EnergyModel`, each with its source, adds the analog periphery's own digital work, and
puts the digital accelerator's step next to it with its data movement counted
(:mod:`analog._energy_digital`: SRAM and DRAM traffic of a weight-stationary dataflow), so the
claim of Yi et al. (Nature Electronics 6, 45-51, 2023) that crossbar training costs orders of
magnitude less energy than digital hardware can be checked rather than quoted.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from analog._energy_digital import (
    DEFAULT_DIGITAL_MODEL,
    DigitalCounts,
    DigitalEnergyModel,
    _check_positive_number,
    _outer_gemm,
    check_network,
    digital_counts,
    digital_joules,
)

_F32 = jnp.float32


class EnergyLedger(NamedTuple):
    """Operation counts (float32 scalars; float so that an epoch's counts cannot overflow).

    steps: optimiser steps counted.
    cell_reads: device reads (one per cross-point per MVM; both devices of a pair count).
    dac: digital-to-analog conversions (one per driven row or column of a tile per MVM).
    adc: analog-to-digital conversions (one per read column or row of a tile per MVM).
    pulses: programming pulses sent to devices.
    digital_flops: FLOPs a digital processor would spend on the same step.
    """

    steps: jax.Array
    cell_reads: jax.Array
    dac: jax.Array
    adc: jax.Array
    pulses: jax.Array
    digital_flops: jax.Array

    @classmethod
    def zeros(cls) -> EnergyLedger:
        z = jnp.zeros((), _F32)
        return cls(**{f: z for f in cls._fields})

    def __add__(self, other: EnergyLedger) -> EnergyLedger:  # type: ignore[override]
        return EnergyLedger(**{f: a + b for f, a, b in zip(self._fields, self, other)})


@dataclasses.dataclass(frozen=True, kw_only=True)
class EnergyModel:
    """Joules per analog operation; each default states its source and arithmetic.

    e_cell_read: one device read. V_read = 0.2 V across a ~50 uS cell for a 10 ns read:
      V^2 G t = 0.04 * 5e-5 * 1e-8 = 2e-14 J (order of NeuroSim's array read energy per cell,
      Chen, Peng, Yu, IEEE TCAD 37(12), 2018).
    e_dac: one 8-bit input conversion/driver event, ~0.1 pJ (NeuroSim 1-bit-per-cycle drivers
      times 8 cycles are of this order; assumed).
    e_adc: one 8-bit SAR conversion, ~1 pJ (Walden figure of merit ~ 4 fJ/conversion-step,
      x 256 steps; Murmann, "ADC Performance Survey 1997-2023").
    e_pulse: one SET/RESET programming pulse on a 1T1R ReRAM cell, ~1.5 V x 50 uA x 100 ns
      = 7.5 pJ (order of the pulse energies reported for TaOx/HfOx ReRAM; assumed).
    e_digital_flop: the arithmetic-only digital estimate kept for ``digital_j_per_step``: a GPU's
      system-level energy per FP32 FLOP, NVIDIA A100, 19.5 TFLOP/s FP32 at 400 W TDP -> ~2e-11
      J/FLOP (datasheet). The data-movement model of the digital side is
      :class:`analog.DigitalEnergyModel` (``energy_report(..., network=, batch=)``).
    """

    e_cell_read: float = 2e-14
    e_dac: float = 1e-13
    e_adc: float = 1e-12
    e_pulse: float = 7.5e-12
    e_digital_flop: float = 2e-11

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0:
                raise ValueError(f"EnergyModel: {f.name}={v!r} must be a number >= 0 (joules)")


#: :class:`EnergyModel` with its cited defaults (NeuroSim-class periphery, TaOx-like cells).
DEFAULT_ENERGY_MODEL = EnergyModel()


def _check_tiles(owner: str, tile_shape) -> tuple[int, int]:
    ok = (
        isinstance(tile_shape, (tuple, list))
        and len(tile_shape) == 2
        and all(isinstance(t, int) and not isinstance(t, bool) and t > 0 for t in tile_shape)
    )
    if not ok:
        raise ValueError(f"{owner}: tile_shape={tile_shape!r} must be a pair of positive ints")
    return tuple(tile_shape)


def _check_sweeps(owner: str, name: str, v, *, allow_zero: bool) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0 or (v == 0 and not allow_zero):
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{owner}: {name}={v!r} must be a {kind} int")
    return v


def crossbar_counts(
    layer_sizes: Sequence[int],
    batch: int,
    *,
    free_steps: int,
    nudged_steps: int = 0,
    centered: bool = True,
    tile_shape=(64, 64),
    pulses: float = 0.0,
) -> EnergyLedger:
    """Closed-form ledger of one EqProp step (or, with ``nudged_steps=0``, one inference) on
    crossbars: what ``equilibrium_propagation`` + ``program`` record for that step.

    Each weight matrix ``(K, N)`` sits on ``ceil(K/rows) x ceil(N/cols)`` tiles of differential
    pairs (two devices per cross-point, padding included). A sweep of the relaxation reads every
    matrix forward (rows driven by DACs, columns digitised by ADCs) and every matrix but the
    first also transposed (columns driven, rows digitised). A training step runs
    ``free_steps + (2 if centered else 1) * nudged_steps`` sweeps (Scellier & Bengio 2017;
    Laborieux et al. 2021) and its digital equivalent adds the two outer products of the update,
    ``4 batch K N`` FLOPs per layer. ``pulses`` (data-dependent, measured) is copied in.

    Returns:
      :class:`EnergyLedger` with ``steps = 1``.
    """
    sizes, b = check_network("crossbar_counts", layer_sizes, batch)
    th, tw = _check_tiles("crossbar_counts", tile_shape)
    free_steps = _check_sweeps("crossbar_counts", "free_steps", free_steps, allow_zero=False)
    nudged_steps = _check_sweeps("crossbar_counts", "nudged_steps", nudged_steps, allow_zero=True)
    _check_positive_number("crossbar_counts", "pulses", pulses, allow_zero=True)
    sweeps = free_steps + (2 if centered else 1) * nudged_steps
    cells = dac = adc = flops = 0.0
    for i, (k, n) in enumerate(itertools.pairwise(sizes)):
        tiles = math.ceil(k / th) * math.ceil(n / tw)
        # forward read: every tile's rows driven, its columns converted
        cells += 2.0 * b * tiles * th * tw
        dac += b * tiles * th
        adc += b * tiles * tw
        flops += 2.0 * b * k * n
        if i > 0:  # transposed read: columns driven, rows converted
            cells += 2.0 * b * tiles * th * tw
            dac += b * tiles * tw
            adc += b * tiles * th
            flops += 2.0 * b * k * n
    update_flops = 4.0 * b * sum(k * n for k, n in itertools.pairwise(sizes))
    f = jnp.asarray
    return EnergyLedger(
        steps=f(1.0, _F32),
        cell_reads=f(cells * sweeps, _F32),
        dac=f(dac * sweeps, _F32),
        adc=f(adc * sweeps, _F32),
        pulses=f(float(pulses), _F32),
        digital_flops=f(flops * sweeps + (update_flops if nudged_steps else 0.0), _F32),
    )


def periphery_update_counts(
    layer_sizes: Sequence[int],
    batch: int,
    update: str,
    digital: DigitalEnergyModel = DEFAULT_DIGITAL_MODEL,
) -> DigitalCounts:
    """Digital work of an analog chip's periphery to turn one EqProp step into device pulses.

    ``"dense"`` (what :func:`analog.program` does): the update matrix is formed digitally, two
    outer products over the batch per layer (``2 batch K N`` MACs, output-stationary on a
    ``pe_rows x pe_cols`` engine, states streamed from the periphery's local buffer), then one
    multiply (learning rate over step size) and one add (rounding) per weight give the pulse
    counts. ``"rank1"``: the outer products happen in the array by stochastic pulse coincidence
    (Gokmen & Vlasov, Front. Neurosci. 10:333, 2016): per example, phase and layer the periphery
    only scales and encodes its ``K + N`` row and column activities (one multiply and one
    buffer read each).
    """
    sizes, b = check_network("periphery_update_counts", layer_sizes, batch)
    layers = list(itertools.pairwise(sizes))
    if update == "dense":
        total = DigitalCounts()
        for k, n in layers:
            total += _outer_gemm(b, k, n, digital).scale(2.0)
            total += DigitalCounts(mults=k * n, adds=k * n)
        return total
    if update == "rank1":
        enc = 2.0 * b * sum(k + n for k, n in layers)
        return DigitalCounts(mults=enc, sram_words=enc)
    raise ValueError(f"periphery_update_counts: update={update!r}; use 'dense' or 'rank1'")


def _periphery_joules(per: dict, digital: DigitalEnergyModel, upd: DigitalCounts | None) -> dict:
    """The analog chip's own digital work: every ADC output is accumulated (an int32 add: the
    partial sums of a column's row tiles, the neuron's update); every conversion moves one 8-bit
    word (the converters' width) through the tile's local buffer, an SRAM array of
    ``periphery_sram_bytes`` (DAC inputs read from it, ADC outputs written to it); plus the
    update's work (``upd``, None for inference) with the buffer's reads at ``digital.dtype``."""
    e_local = digital.ops.sram_per_access(digital.periphery_sram_bytes)
    out = {
        "periphery_accumulate": per["adc"] * digital.ops.add_int32,
        "periphery_buffer": (per["adc"] + per["dac"]) * e_local * 8 / 64,
        "periphery_update": 0.0,
    }
    if upd is not None:
        out["periphery_update"] = digital_joules(
            upd, digital, sram_word=e_local * digital.bits / 64
        )["total"]
    return out


def _check_report_args(ledger, model, digital, network, batch, update):
    """:func:`energy_report`'s argument checks; returns ``(network, batch)`` normalised."""
    if not isinstance(ledger, EnergyLedger):
        raise TypeError(
            f"energy_report: ledger must be an analog.EnergyLedger, got {type(ledger).__name__}"
        )
    if not isinstance(model, EnergyModel):
        raise TypeError(f"energy_report: model={model!r}; pass an analog.EnergyModel")
    if not isinstance(digital, DigitalEnergyModel):
        raise TypeError(f"energy_report: digital={digital!r}; pass an analog.DigitalEnergyModel")
    if (network is None) != (batch is None):
        raise ValueError(
            "energy_report: pass network= and batch= together (the layer sizes "
            "and the examples per step the ledger counted), or neither"
        )
    if update not in ("dense", "rank1", None):
        raise ValueError(f"energy_report: update={update!r}; use 'dense', 'rank1' or None")
    if network is not None:
        network, batch = check_network("energy_report", network, batch)
    return network, batch


def _digital_baseline(network, batch, baseline: str, digital: DigitalEnergyModel) -> dict:
    """:func:`energy_report`'s digital side: the ``baseline`` step with its data movement."""
    if baseline not in ("backprop", "inference"):
        raise ValueError(
            f"energy_report: baseline={baseline!r}; use 'backprop' or "
            "'inference' (for the relaxation done digitally use "
            "analog.digital_counts(..., algorithm='eqprop', sweeps=...))"
        )
    counts = digital_counts(network, batch, algorithm=baseline, model=digital)
    dig = digital_joules(counts, digital)
    dig.update(
        baseline=baseline,
        counts=counts._asdict(),
        dtype=digital.dtype,
        technology=digital.ops.name,
        buffer_bytes=digital.buffer_bytes,
    )
    return dig


def energy_report(
    ledger: EnergyLedger,
    model: EnergyModel = DEFAULT_ENERGY_MODEL,
    *,
    network: Sequence[int] | None = None,
    batch: int | None = None,
    digital: DigitalEnergyModel = DEFAULT_DIGITAL_MODEL,
    baseline: str = "backprop",
    update: str | None = "dense",
) -> dict:
    """Joules per step of the analog computation beside digital estimates of the same step.

    Args:
      ledger: counts accumulated over ``ledger.steps`` steps (add ledgers with ``+``).
      model: per-operation analog energies.
      network, batch: the layer sizes and batch of the step. With them the report adds the
        digital accelerator's step with its data movement (``baseline`` under ``digital``'s
        dataflow) and the analog periphery's update work (``update``).
      digital: the digital accelerator (:class:`analog.DigitalEnergyModel`); its technology set
        also prices the analog periphery's digital work.
      baseline: ``"backprop"`` (a digital training step) or ``"inference"`` (a forward pass);
        see :func:`analog.digital_counts`, which also counts ``"eqprop"`` (the same relaxation
        done digitally; it needs the sweep count).
      update: how the periphery turns an update into pulses, ``"dense"`` or ``"rank1"``
        (:func:`analog.periphery_update_counts`); None for an inference ledger.

    Returns:
      dict of Python floats. Always: ``steps``; per-step ``counts_per_step``; ``joules_per_step``
      (cell_reads, dac, adc, pulses); ``analog_j_per_step`` (their sum: the crossbar's own
      energy); ``digital_j_per_step`` (arithmetic only, FLOPs x ``e_digital_flop``) and
      ``ratio`` (digital / analog of those two); ``analog``: the breakdown with the periphery's
      digital work (accumulate, buffer, and update when ``network`` is given) and its ``total``.
      With ``network``: ``digital``, the baseline's ``compute``, ``sram``, ``dram``, ``total``
      and its ``counts``; ``ratio_with_data_movement`` = digital total / analog total.
    """
    network, batch = _check_report_args(ledger, model, digital, network, batch, update)
    c = {k: float(v) for k, v in ledger._asdict().items()}
    steps = max(c["steps"], 1.0)
    per = {k: v / steps for k, v in c.items() if k != "steps"}
    joules = {
        "cell_reads": per["cell_reads"] * model.e_cell_read,
        "dac": per["dac"] * model.e_dac,
        "adc": per["adc"] * model.e_adc,
        "pulses": per["pulses"] * model.e_pulse,
    }
    analog = sum(joules.values())
    flops_digital = per["digital_flops"] * model.e_digital_flop
    upd = (
        periphery_update_counts(network, batch, update, digital)
        if network is not None and update is not None
        else None
    )
    breakdown = dict(joules, **_periphery_joules(per, digital, upd))
    breakdown["total"] = sum(breakdown.values())
    out = {
        "steps": c["steps"],
        "counts_per_step": per,
        "joules_per_step": joules,
        "analog_j_per_step": analog,
        "digital_j_per_step": flops_digital,
        "ratio": flops_digital / analog if analog > 0 else float("inf"),
        "analog": breakdown,
        "model": dataclasses.asdict(model),
    }
    if network is not None:
        dig = _digital_baseline(network, batch, baseline, digital)
        out["digital"] = dig
        out["ratio_with_data_movement"] = (
            dig["total"] / breakdown["total"] if breakdown["total"] > 0 else float("inf")
        )
    return out
