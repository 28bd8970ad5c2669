"""Energy accounting: count analog operations, convert them to joules beside a digital estimate.

Counts live in an :class:`EnergyLedger` (a NamedTuple of float32 scalars, so it sits in optax
state with a fixed structure and jit never recompiles). The transforms add to it as they run:
``equilibrium_propagation`` counts every crossbar read of its relaxation phases, ``program``
every programming pulse. :func:`energy_report` multiplies counts by the named per-operation
constants of an :class:`EnergyModel`, each with its source, and puts the digital estimate of the
same computation (FLOPs x joules per FLOP) next to it, so the claim of Yi et al. (Nature
Electronics 6, 45-51, 2023) that crossbar training costs orders of magnitude less energy than a
GPU can be checked rather than quoted.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["EnergyLedger", "EnergyModel", "energy_report", "DEFAULT_ENERGY_MODEL"]

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
    def zeros(cls) -> "EnergyLedger":
        z = jnp.zeros((), _F32)
        return cls(z, z, z, z, z, z)

    def __add__(self, other: "EnergyLedger") -> "EnergyLedger":  # type: ignore[override]
        return EnergyLedger(*(a + b for a, b in zip(self, other)))


@dataclasses.dataclass(frozen=True, kw_only=True)
class EnergyModel:
    """Joules per operation; each default states its source and arithmetic.

    e_cell_read: one device read. V_read = 0.2 V across a ~50 uS cell for a 10 ns read:
      V^2 G t = 0.04 * 5e-5 * 1e-8 = 2e-14 J (order of NeuroSim's array read energy per cell,
      Chen, Peng, Yu, IEEE TCAD 37(12), 2018).
    e_dac: one 8-bit input conversion/driver event, ~0.1 pJ (NeuroSim 1-bit-per-cycle drivers
      times 8 cycles are of this order; assumed).
    e_adc: one 8-bit SAR conversion, ~1 pJ (Walden figure of merit ~ 4 fJ/conversion-step,
      x 256 steps; Murmann, "ADC Performance Survey 1997-2023").
    e_pulse: one SET/RESET programming pulse on a 1T1R ReRAM cell, ~1.5 V x 50 uA x 100 ns
      = 7.5 pJ (order of the pulse energies reported for TaOx/HfOx ReRAM; assumed).
    e_digital_flop: a GPU's system-level energy per FP32 FLOP: NVIDIA A100, 19.5 TFLOP/s FP32
      at 400 W TDP -> ~2e-11 J/FLOP (datasheet). Arithmetic alone is ~4.6 pJ at 45 nm
      (Horowitz, ISSCC 2014: 3.7 pJ FP32 multiply + 0.9 pJ add), without any memory traffic.
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


DEFAULT_ENERGY_MODEL = EnergyModel()


def energy_report(ledger: EnergyLedger, model: EnergyModel = DEFAULT_ENERGY_MODEL) -> dict:
    """Joules per step of the analog computation beside the digital estimate of the same step.

    Args:
      ledger: counts accumulated over ``ledger.steps`` steps (add ledgers with ``+``).
      model: per-operation energies.

    Returns:
      dict of Python floats: ``steps``; per-step ``counts_per_step`` and ``joules_per_step``
      broken down by operation; ``analog_j_per_step``; ``digital_j_per_step``; ``ratio``
      (digital / analog, > 1 means the crossbar spends less).
    """
    if not isinstance(ledger, EnergyLedger):
        raise TypeError(f"energy_report: ledger must be an analog.EnergyLedger, got "
                        f"{type(ledger).__name__}")
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
    digital = per["digital_flops"] * model.e_digital_flop
    return {
        "steps": c["steps"],
        "counts_per_step": per,
        "joules_per_step": joules,
        "analog_j_per_step": analog,
        "digital_j_per_step": digital,
        "ratio": digital / analog if analog > 0 else float("inf"),
        "model": dataclasses.asdict(model),
    }
